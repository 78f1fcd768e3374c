"""Z-Image (Tongyi-MAI): a single-stream DiT on Qwen3 prompt embeddings and the Flux VAE."""
