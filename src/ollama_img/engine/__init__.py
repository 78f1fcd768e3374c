"""The engine: one long-lived process per user that holds models in memory and runs generations.

Nothing here is imported by the CLI at start-up except `spawn` and `client` (cheap); the server side
(Starlette, uvicorn, MLX) loads only in the engine process.
"""
