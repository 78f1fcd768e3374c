"""Models from the network: `pull` from Hugging Face and from OCI registries, `push` to registries.

    hub        pull a diffusers repo through huggingface_hub (its cache first), then import it as `create` does
    registry/  the OCI distribution API: client and auth, blob transfer (verified, resumed), pull, push
    progress   what a transfer reports while it runs (the CLI draws it; tests record it)

Everything written to the store goes through the store's own writer (`store.blobs.BlobWriter`) and
manifest writer under the store lock, so a pull obeys the same rules as `create`: temporary file, fsync,
rename, manifest last.
"""
