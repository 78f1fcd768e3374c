"""`ps` shows what a loaded quantized model holds: its packed weights, less than the bf16 model's."""

from ollama_img import load_pipeline
from ollama_img.store import Store
from tests.fixtures.engine_env import EngineEnv


def test_ps_shows_the_resident_size_of_a_quantized_model(tmp_path, tiny_folder):
    env = EngineEnv(tmp_path)
    try:
        sizes = {}
        for name, extra in (("plain", []), ("small", ["--quantize", "int4"])):
            created = env.cli("create", name, "-f", str(tiny_folder), *extra)
            assert created.returncode == 0, created.stderr
            ran = env.cli("run", name, "a cat", "--size", "32x32", "--steps", "1", "--no-open")
            assert ran.returncode == 0, ran.stderr
            with env.http() as http:
                models = http.get("/api/ps").json()["models"]
            sizes[name] = next(m["size"] for m in models if m["name"] == f"{name}:latest")
            assert env.cli("stop", name).returncode == 0
        store = Store(env.env["OLLAMA_IMG_MODELS"])
        assert sizes["small"] == load_pipeline("small", store=store).resident_bytes
        assert sizes["small"] < sizes["plain"] == load_pipeline("plain", store=store).resident_bytes
    finally:
        env.close()
