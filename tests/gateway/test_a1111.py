"""AUTOMATIC1111's API on the gateway, driven by `webuiapi` from PyPI, unchanged, against two replicas of the tests'
tiny model: txt2img, img2img, the listings, progress, its errors with our messages, and the same jobs as Banana's."""

import base64
import io
import threading
import time

import httpx
import pytest
import webuiapi
from PIL import Image

from serverless_sd.gateway.a1111 import lora_tags
from testkit.processes import TEST_KEY

FAST = {"prompt": "a lighthouse", "width": 64, "height": 64, "steps": 2}


@pytest.fixture(scope="module")
def gateway(start_gateway, sd_replicas):
    return start_gateway([a.url for a in sd_replicas], "--api-key", TEST_KEY, "--model-name", "tiny-sd")


@pytest.fixture(scope="module")
def api(gateway) -> webuiapi.WebUIApi:
    return webuiapi.WebUIApi(host="127.0.0.1", port=gateway.port, username="anyone", password=TEST_KEY)


def test_txt2img_answers_images_and_the_seeds_in_info(api, gateway):
    result = api.txt2img(**{**FAST, "prompt": "a lighthouse, secret-7781"}, seed=5, batch_size=2,
                         sampler_name="Euler a")
    assert "secret-7781" not in gateway.logs()
    assert [image.size for image in result.images] == [(64, 64), (64, 64)]
    assert result.info["all_seeds"] == [5, 6] and result.info["seed"] == 5
    assert result.info["sampler_name"] == "Euler a" and result.parameters["prompt"] == "a lighthouse, secret-7781"


def test_seed_minus_one_is_random_and_a_seed_gives_the_image_banana_s_api_gives(api, gateway):
    drawn = api.txt2img(**FAST, seed=-1)
    assert 0 <= drawn.info["seed"] < 2**64
    through_a1111 = api.txt2img(**FAST, seed=11, sampler_name="DPM++ 2M", scheduler="Karras")
    banana = gateway.start_job({"prompt": "a lighthouse", "width": 64, "height": 64, "num_inference_steps": 2,
                                "seed": 11, "scheduler": "dpm++_2m_karras"}, start_only=False)
    uri = banana["modelOutputs"][0]["images"][0]
    buffer = io.BytesIO()
    through_a1111.image.save(buffer, format="PNG")
    assert Image.open(io.BytesIO(base64.b64decode(uri.partition(",")[2]))).tobytes() == through_a1111.image.tobytes()


def test_clip_skip_as_a1111_clients_set_it(api):
    plain = api.txt2img(**FAST, seed=3).image.tobytes()
    assert api.txt2img(**FAST, seed=3, override_settings={"CLIP_stop_at_last_layers": 1}).image.tobytes() == plain
    assert api.txt2img(**FAST, seed=3, override_settings={"CLIP_stop_at_last_layers": 2}).image.tobytes() != plain


@pytest.mark.parametrize("prompt, text, loras", [
    ("a lighthouse <lora:pixel-art:0.8>", "a lighthouse", [{"name": "pixel-art", "scale": 0.8}]),
    ("<lora:ink>, a lighthouse, <lora:style:-0.5:0.3>", "a lighthouse",
     [{"name": "ink", "scale": 1.0}, {"name": "style", "scale": -0.5}]),
    ("a <lighthouse>", "a <lighthouse>", []),
    ("a, <lora:x:1>, lighthouse", "a, lighthouse", [{"name": "x", "scale": 1.0}]),
    ("<lora:only:1>", "<lora:only:1>", [{"name": "only", "scale": 1.0}]),  # nothing else: the prompt stays
])
def test_a1111s_lora_tags_become_loras(prompt, text, loras):
    assert lora_tags(prompt) == (text, loras)


def test_img2img_and_inpainting(api):
    picture = Image.effect_noise((64, 64), 60).convert("RGB")
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (0, 0, 32, 64))
    redrawn = api.img2img(images=[picture], prompt="a red door", width=64, height=64, steps=4, seed=3,
                          denoising_strength=0.6)
    inpainted = api.img2img(images=[picture], mask_image=mask, prompt="a red door", width=64, height=64, steps=4,
                            seed=3, denoising_strength=0.6)
    assert redrawn.image.size == inpainted.image.size == (64, 64)
    assert redrawn.image.tobytes() != inpainted.image.tobytes()


def test_listings(api):
    names = [sampler["name"] for sampler in api.get_samplers()]
    assert "Euler a" in names and "DPM++ 2M Karras" in names
    assert [model["title"] for model in api.get_sd_models()] == ["tiny-sd"]
    assert api.get_options()["sd_model_checkpoint"] == "tiny-sd"


def test_progress_follows_the_callers_latest_job(api):
    worker = threading.Thread(target=api.txt2img, kwargs={**FAST, "steps": 60})
    worker.start()
    deadline, seen = time.monotonic() + 60, None
    while worker.is_alive() and time.monotonic() < deadline:
        progress = api.get_progress()
        if progress["state"]["job"].startswith("call_"):
            seen = progress
            break
        time.sleep(0.05)
    worker.join()
    assert seen is not None and 0.0 <= seen["progress"] < 1.0
    assert api.get_progress()["state"]["job"] == ""  # ended: nothing in progress


def test_progress_tells_the_replicas_steps_and_preview(start_gateway, preview_app):
    gateway = start_gateway([preview_app.url], "--api-key", TEST_KEY)
    api = webuiapi.WebUIApi(host="127.0.0.1", port=gateway.port, username="anyone", password=TEST_KEY)
    worker = threading.Thread(target=api.txt2img, kwargs={**FAST, "steps": 120, "sampler_name": "Euler"})
    worker.start()
    deadline, seen = time.monotonic() + 60, []
    while worker.is_alive() and time.monotonic() < deadline:
        progress = api.get_progress()
        if progress["state"]["sampling_step"] and progress["current_image"]:
            seen.append(progress)
        time.sleep(0.05)
    worker.join()
    assert seen, "no step and preview seen while the job ran"
    assert seen[0]["state"]["sampling_steps"] == 120 and 0 < seen[0]["progress"] < 1
    assert Image.open(io.BytesIO(base64.b64decode(seen[-1]["current_image"]))).format == "JPEG"


def test_a_wrong_key_is_refused(gateway):
    stranger = webuiapi.WebUIApi(host="127.0.0.1", port=gateway.port, username="anyone",
                                 password="wrong-key-0123456789")
    with pytest.raises(RuntimeError) as raised:
        stranger.txt2img(**FAST)
    assert raised.value.args[0] == 401
    assert httpx.get(gateway.url + "/sdapi/v1/samplers").headers["www-authenticate"] == "Basic"


@pytest.mark.parametrize(("inputs", "field", "words"), [
    ({"width": 100}, "width", "multiple of 8"),
    ({"steps": 0}, "steps", "greater than or equal to 1"),
    ({"sampler_name": "Nonsense"}, "sampler_name", "unknown scheduler"),
    ({"enable_hr": True}, "enable_hr", "Input should be False"),
    ({"prompt": ""}, "prompt", "at least 1 character"),
    ({"cfg_scale": "high"}, "cfg_scale", "valid number"),
    ({"prompt": "a lighthouse <lora:nope:0.5>"}, "prompt", "loras.0.name: unknown LoRA 'nope'"),
])
def test_a_bad_input_is_a1111s_422_naming_the_field(api, inputs, field, words):
    with pytest.raises(RuntimeError) as raised:
        api.txt2img(**{**FAST, **inputs})
    status, text = raised.value.args
    assert status == 422 and field in text and words in text, text
