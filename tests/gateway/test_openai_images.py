"""OpenAI's Images API on the gateway, driven by the `openai` SDK from PyPI, unchanged, against two replicas of the
tests' tiny model: its calls, its typed errors carrying our messages, and the same jobs as Banana's API."""

import base64
import io

import httpx
import openai
import pytest
from PIL import Image

from testkit.processes import TEST_KEY

MODEL = "stable-diffusion"


@pytest.fixture(scope="module")
def gateway(start_gateway, sd_replicas):
    return start_gateway([a.url for a in sd_replicas], "--api-key", TEST_KEY)


@pytest.fixture(scope="module")
def client(gateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key=TEST_KEY, max_retries=0, timeout=120)


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def decoded(b64: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(b64)))


def test_generate_returns_n_images_of_the_size_asked(client, gateway):
    answer = client.images.generate(model=MODEL, prompt="a lighthouse", n=2, size="64x64",
                                    response_format="b64_json")
    assert len(answer.data) == 2 and answer.size == "64x64" and answer.output_format == "png"
    assert all(decoded(image.b64_json).size == (64, 64) for image in answer.data)
    assert answer.data[0].b64_json != answer.data[1].b64_json
    assert "a lighthouse" not in gateway.logs()


def test_generate_without_model_or_size_takes_the_served_models_own(client):
    answer = client.images.generate(prompt="a lighthouse")
    assert len(answer.data) == 1 and decoded(answer.data[0].b64_json).format == "PNG"


def test_models_lists_the_served_model_and_openais_names_are_answered_by_it(client):
    assert [model.id for model in client.models.list()] == [MODEL]
    answer = client.images.generate(model="dall-e-3", prompt="a lighthouse", size="64x64", quality="hd",
                                    style="vivid", response_format="b64_json")  # as LibreChat's DALL-E 3 tool asks
    assert decoded(answer.data[0].b64_json).size == (64, 64)


def test_edit_with_a_mask_inpaints_and_without_one_redraws(client):
    picture = Image.effect_noise((64, 64), 60).convert("RGB")
    mask = Image.new("RGBA", (64, 64), (0, 0, 0, 255))
    mask.paste((0, 0, 0, 0), (0, 0, 32, 64))  # transparent: repaint the left half
    inpainted = client.images.edit(image=("in.png", png(picture), "image/png"), mask=("mask.png", png(mask),
                                   "image/png"), prompt="a red door", size="64x64")
    redrawn = client.images.edit(image=("in.png", png(picture), "image/png"), prompt="a red door", size="64x64")
    a, b = decoded(inpainted.data[0].b64_json), decoded(redrawn.data[0].b64_json)
    assert a.size == b.size == (64, 64) and a.tobytes() != b.tobytes()


@pytest.mark.parametrize(("call", "error", "param", "words"), [
    ({"size": "100x100"}, openai.BadRequestError, "size", "multiple of 8"),
    ({"size": "big"}, openai.BadRequestError, "size", "WIDTHxHEIGHT"),
    ({"n": 99}, openai.BadRequestError, "n", "at most"),
    ({"model": "sdxl-turbo"}, openai.NotFoundError, "model", "serves 'stable-diffusion'"),
    ({"response_format": "url"}, openai.BadRequestError, "response_format", "stores no images"),
    ({"extra_body": {"bogus": 1}}, openai.BadRequestError, "bogus", "extra inputs"),
])
def test_a_bad_input_is_the_sdks_own_error_with_our_message(client, call, error, param, words):
    with pytest.raises(error) as raised:
        client.images.generate(prompt="a lighthouse", **call)
    assert raised.value.body["param"] == param and words.lower() in raised.value.message.lower()


def test_response_format_url_answers_the_buckets_urls(start_gateway, start_app, models, s3):
    app = start_app({"MODEL_ID": str(models["sd"]), **s3.env(s3.bucket("openai-images"))})
    gateway = start_gateway([app.url], "--api-key", TEST_KEY)
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=TEST_KEY, max_retries=0)
    answer = client.images.generate(prompt="a lighthouse", n=2, size="64x64", response_format="url")
    assert [item.b64_json for item in answer.data] == [None, None]
    assert all(httpx.get(item.url).content[:4] == b"\x89PNG" for item in answer.data)
    inline = client.images.generate(prompt="a lighthouse", size="64x64", response_format="b64_json")
    assert inline.data[0].b64_json and inline.data[0].url is None  # b64_json still, where a bucket is configured


def test_a_wrong_key_is_an_authentication_error(gateway):
    stranger = openai.OpenAI(base_url=gateway.url + "/v1", api_key="wrong-key-0123456789", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        stranger.images.generate(prompt="a lighthouse")
    with pytest.raises(openai.AuthenticationError):
        stranger.models.list()


def test_a_body_past_the_bound_is_413_in_openais_shape(gateway):
    answer = httpx.post(gateway.url + "/v1/images/generations", headers={"Authorization": f"Bearer {TEST_KEY}"},
                        json={"prompt": "x" * (33 * 1024 * 1024)}, timeout=60)
    assert answer.status_code == 413 and "larger than" in answer.json()["error"]["message"]


def test_the_routes_are_in_the_gateways_openapi_document(gateway):
    paths = httpx.get(gateway.url + "/openapi.json").json()["paths"]
    assert {"/v1/images/generations", "/v1/images/edits", "/v1/models"} <= set(paths)
