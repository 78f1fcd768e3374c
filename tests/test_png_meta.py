from PIL import Image

from ollama_img import __version__
from ollama_img.png_meta import Recipe, encode_png, read_png_text


def test_the_recipe_travels_in_the_png(tmp_path):
    recipe = Recipe(
        prompt="a café at night, 月",  # not Latin-1: goes in an iTXt chunk
        negative_prompt="blurry",
        seed=42,
        steps=9,
        guidance=0.0,
        width=64,
        height=32,
        model="z-image:latest",
        digest="sha256:" + "ab" * 32,
    )
    data = encode_png(Image.new("RGB", (64, 32), "red"), recipe)
    path = tmp_path / "x.png"
    path.write_bytes(data)
    text = read_png_text(path)
    assert text["prompt"] == "a café at night, 月"
    assert text["negative_prompt"] == "blurry"
    assert text["seed"] == "42"
    assert text["steps"] == "9"
    assert float(text["guidance"]) == 0.0
    assert text["size"] == "64x32"
    assert text["model"] == "z-image:latest"
    assert text["model_digest"] == "sha256:" + "ab" * 32
    assert text["version"] == __version__
    with Image.open(path) as image:
        assert image.size == (64, 32)
    assert read_png_text(data) == text
