"""Memory planning: how much a model load may use, and how it runs inside that (no MLX here).

- `budget`: the bytes the engine may use, from `OLLAMA_IMG_GPU_MEMORY` / `serve --gpu-memory` or the
  device's free memory;
- `profile`: what a family declares about its components' memory (weights, working sets);
- `plan`: the pure function that picks, per load and request, what is resident and how each part runs;
- `device`: asking MLX and the OS what the device has free, and holding MLX to the plan.
"""
