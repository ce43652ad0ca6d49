"""app.py over real HTTP: the handler's answers, determinism, per-image seeds, formats, Potassium's routes."""

import base64
import io

import numpy as np
import pytest
from PIL import Image

FAST = {"num_inference_steps": 2}


def decode(uri: str, mime: str = "image/png") -> Image.Image:
    prefix = f"data:{mime};base64,"
    assert uri.startswith(prefix), uri[:40]
    image = Image.open(io.BytesIO(base64.b64decode(uri[len(prefix):], validate=True)))
    image.load()
    return image


def pixels(uri: str) -> np.ndarray:
    return np.asarray(decode(uri).convert("RGB"), dtype=np.int16)


def generate(app, **inputs) -> dict:
    response = app.post({"prompt": "a lighthouse at dusk", **FAST, **inputs})
    assert response.status_code == 200, response.text
    return response.json()


@pytest.mark.parametrize("app_name", ["sd_app", "sdxl_app"])
def test_default_answer_is_one_png_at_native_size(app_name, request):
    answer = generate(request.getfixturevalue(app_name), seed=1)
    image = decode(answer["image_base64"])
    assert image.format == "PNG" and image.size == (64, 64)
    assert answer["images"] == [answer["image_base64"]]
    assert answer["seed"] == 1 and answer["seeds"] == [1]
    assert (answer["width"], answer["height"], answer["num_inference_steps"]) == (64, 64, 2)
    assert set(answer["timings"]) == {"inference_ms", "encode_ms", "total_ms"}


@pytest.mark.parametrize("app_name", ["sd_app", "sdxl_app"])
def test_width_and_height_are_honoured(app_name, request):
    answer = generate(request.getfixturevalue(app_name), width=128, height=72)
    assert decode(answer["image_base64"]).size == (128, 72)
    assert (answer["width"], answer["height"]) == (128, 72)


@pytest.mark.parametrize("output_format, mime, pil_format", [
    ("png", "image/png", "PNG"), ("jpeg", "image/jpeg", "JPEG"), ("webp", "image/webp", "WEBP"),
])
def test_output_formats(sd_app, output_format, mime, pil_format):
    answer = generate(sd_app, output_format=output_format, num_images=2)
    assert len(answer["images"]) == 2
    for uri in answer["images"]:
        assert decode(uri, mime).format == pil_format


def test_same_inputs_and_seed_give_the_same_image(sd_app):
    assert generate(sd_app, seed=42)["image_base64"] == generate(sd_app, seed=42)["image_base64"]


@pytest.mark.parametrize("change", [
    {"seed": 43}, {"prompt": "a red bicycle"}, {"negative_prompt": "fog"}, {"guidance_scale": 2.0},
    {"num_inference_steps": 3},
])
def test_each_input_changes_the_image(sd_app, change):
    base = pixels(generate(sd_app, seed=42)["image_base64"])
    changed = pixels(generate(sd_app, **{"seed": 42, **change})["image_base64"])
    assert np.abs(base - changed).max() > 0


def test_old_field_names_are_accepted(sd_app):
    new = generate(sd_app, seed=5, negative_prompt="fog", num_images=2)
    old = generate(sd_app, seed=5, negative="fog", num_images_per_prompt=2)
    assert new["images"] == old["images"]


@pytest.mark.parametrize("app_name", ["sd_app", "sdxl_app"])
def test_every_image_of_a_batch_regenerates_alone_from_its_seed(app_name, request):
    app = request.getfixturevalue(app_name)
    batch = generate(app, seed=1000, num_images=3)
    assert batch["seeds"] == [1000, 1001, 1002]
    batch_pixels = [pixels(uri) for uri in batch["images"]]
    for i, seed in enumerate(batch["seeds"]):
        alone = pixels(generate(app, seed=seed)["image_base64"])
        assert_same_image(alone, batch_pixels[i])
        assert np.abs(alone - batch_pixels[(i + 1) % 3]).mean() > 5  # its neighbours are other images


def assert_same_image(a: np.ndarray, b: np.ndarray) -> None:
    """Equal but for rounding: a batch of 3 and a batch of 1 round their products differently (by a level or two
    in 255 in bf16); an image from another seed differs by tens of levels on average."""
    difference = np.abs(a - b)
    assert difference.max() <= 3 and difference.mean() < 0.5, (difference.max(), difference.mean())


def test_random_seeds_span_64_bits_and_are_reported_usably(sd_app):
    answers = [generate(sd_app, num_images=2) for _ in range(3)]
    seeds = [seed for answer in answers for seed in answer["seeds"]]
    assert len(set(seeds)) == 6 and all(0 <= seed < 2**64 for seed in seeds)
    assert max(seeds) >= 2**32  # 6 draws all under 2^32 from a 64-bit range: about 1 chance in 2^192
    again = generate(sd_app, seed=answers[0]["seeds"][1])
    assert_same_image(pixels(again["image_base64"]), pixels(answers[0]["images"][1]))


def test_largest_seed_wraps_to_zero_for_the_next_image(sd_app):
    assert generate(sd_app, seed=2**64 - 1, num_images=2)["seeds"] == [2**64 - 1, 0]


def test_potassium_routes_keep_working(sd_app):
    import httpx

    for route in ("/__status__", "/_k/status"):
        status = httpx.get(sd_app.url + route).json()
        assert set(status) == {"gpu_available", "sequence_number", "idle_time", "inference_time"}
    assert httpx.post(sd_app.url + "/_k/warmup").json() == {"warm": True}
