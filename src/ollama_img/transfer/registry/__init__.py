"""The OCI distribution API, as `pull` and `push` use it (see `pull`, `push`, `client`, `auth`).

A store name is a registry reference: `host/namespace/model:tag` is the repository `namespace/model` on
`host`, tag `tag` (ollama's default host is `registry.ollama.ai`).
"""
