"""The published OpenAPI documents (GET /openapi.json on the app and on the gateway), and schemathesis run
against each live server: the app with every check (its "image" format drawn as real images by
testkit/schemathesis_hooks.py; the test deployment's MAX_SIDE squared fits its pixel budget, so that the one rule
JSON Schema cannot say is implied); the gateway's Banana API with every check but "invalid data is refused with a
4xx", since Banana's protocol answers invalid data with HTTP 200 and a message containing "error"; its OpenAI and
AUTOMATIC1111 APIs with every check but "valid data is accepted", since the replica's limits bound them."""

import base64
import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
import jsonschema
import pytest
from PIL import Image

from serverless_sd import images
from serverless_sd.settings import Settings
from testkit.processes import ROOT

SCHEMATHESIS = Path(sys.executable).parent / "schemathesis"


def schemathesis(base_url: str, operations: int, examples: int = 60, exempt: str | None = None,
                 paths: str | None = None, hooks: bool = True) -> None:
    run = subprocess.run(
        [str(SCHEMATHESIS), "run", f"{base_url}/openapi.json", "--url", base_url, "--checks", "all",
         *(["--exclude-checks", exempt] if exempt else []), *(["--include-path-regex", paths] if paths else []),
         "--max-examples", str(examples), "--seed", "1", "--workers", "1", "--request-timeout", "120",
         "--phases", "examples,coverage,fuzzing", "--suppress-health-check", "all"],
        capture_output=True, text=True, timeout=900, cwd=ROOT,
        env={**{k: v for k, v in os.environ.items() if k != "SCHEMATHESIS_HOOKS"}, "PYTHONPATH": str(ROOT),
             **({"SCHEMATHESIS_HOOKS": "testkit.schemathesis_hooks"} if hooks else {})})
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    assert re.search(rf"Tested: {operations}\n", run.stdout), run.stdout[-3000:]
    generated, passed = map(int, re.search(r"(\d+) generated, (\d+) passed", run.stdout).groups())
    assert generated == passed >= operations * 10


def test_the_apps_document_carries_its_limits(limited_app):
    document = httpx.get(limited_app.url + "/openapi.json").json()
    fields = document["paths"]["/"]["post"]["requestBody"]["content"]["application/json"]["schema"]["properties"]
    assert fields["num_inference_steps"]["maximum"] == 2 and fields["prompt"]["maxLength"] == 100
    assert fields["width"]["anyOf"][0] == {"type": "integer", "minimum": 64, "maximum": 128, "multipleOf": 8}
    assert set(document["paths"]["/"]["post"]["responses"]) == {"200", "413", "422", "500"}
    lora = fields["loras"]["items"]  # the baked names; no URL field where nothing is fetched
    assert fields["loras"]["maxItems"] == 2 and lora["properties"]["name"]["anyOf"] == [
        {"type": "string", "enum": ["ink", "style"]}] and "url" not in lora["properties"]


def test_schemathesis_against_the_app(limited_app):
    schemathesis(limited_app.url, operations=2)  # POST / and GET /progress


def test_a_generic_validator_refuses_what_no_image_can_be(limited_app):
    document = httpx.get(limited_app.url + "/openapi.json").json()
    fields = document["paths"]["/"]["post"]["requestBody"]["content"]["application/json"]["schema"]["properties"]
    too_long = "A" * (images.max_base64_chars(Settings.model_fields["max_image_bytes"].default) + 4)
    png = base64.b64encode(images.encode(Image.new("RGB", (8, 8)), "png")).decode()
    for name in ("image", "mask_image", "control_image"):
        valid = jsonschema.Draft202012Validator(fields[name]).is_valid
        assert valid(png) and valid("data:image/png;base64," + png) and valid("data:image/webp;base64," + png)
        assert valid(None)
        for wrong in ("", "0", "not base64 at all", png[:-1], "data:image/gif;base64," + png, "data:image/png," + png,
                      "https://example.com/a.png",  # no IMAGE_HOSTS here: no URL is fetched
                      too_long):  # past MAX_IMAGE_BYTES
            assert not valid(wrong), (name, wrong[:40])


def test_schemathesis_without_our_hooks_against_the_app(limited_app):
    """As a user would run it, without testkit's hooks: the image and prompt formats mean nothing to it. Every check
    but one: it draws images as the base64 strings the document states (random bytes, no image) and prompts with
    unpaired brackets, which the app refuses with a 422 naming the field. No JSON Schema can say that a string
    decodes as an image; test_schemathesis_against_the_app checks valid data is accepted, with real images."""
    schemathesis(limited_app.url, operations=2, hooks=False, exempt="positive_data_acceptance")


def test_schemathesis_against_a_flux_app(start_app, models):
    """FLUX.1-schnell's document takes fields away (negative prompts, clip_skip) and bounds guidance at 1."""
    flux = start_app({"MODEL_ID": str(models["flux"]), "CONTROLNET_ID": str(models["flux_controlnet"]),
                      "MAX_STEPS": "2", "MAX_SIDE": "128", "MAX_PIXELS": "16384", "MAX_IMAGES": "2",
                      "MAX_PROMPT_CHARS": "100", "MAX_INPUT_PIXELS": "40000", "MAX_BODY_BYTES": "65536"})
    schemathesis(flux.url, operations=2)


@pytest.fixture(scope="module")
def gateway(start_gateway, limited_app):
    return start_gateway([limited_app.url])


def test_schemathesis_against_the_gateways_banana_api(gateway):
    # Every route, with and without its trailing slash, /healthz, /scale and /livez (FastAPI's document).
    schemathesis(gateway.url, operations=9, examples=30, exempt="negative_data_rejection", paths="^/(?!v1/|sdapi/)")


def test_schemathesis_against_the_gateways_openai_and_a1111_apis(gateway):
    # Their errors are 4xx as those APIs answer them; what they accept is bounded by the replica's own limits
    # (MAX_SIDE, MAX_STEPS, MAX_IMAGES: its document), which the gateway's cannot state, hence the one exemption.
    schemathesis(gateway.url, operations=9, examples=20, exempt="positive_data_acceptance", paths="^/(v1|sdapi)/")


def test_the_gateway_document_is_fastapis_and_imports_nothing_of_the_apps_side():
    code = ("import sys; from serverless_sd.gateway.api import create_app; "
            "from serverless_sd.gateway.config import parse_args; "
            "paths = create_app(parse_args(['--backend', 'http://x'])).openapi()['paths']; "
            "print(sorted(paths)); print(sorted(m for m in ('torch', 'PIL', 'serverless_sd.schema', "
            "'serverless_sd.openapi') if m in sys.modules))")
    run = subprocess.run([sys.executable, "-W", "error::UserWarning", "-c", code], capture_output=True, text=True,
                         timeout=60, cwd=Path(__file__).resolve().parent.parent)
    assert run.returncode == 0, run.stderr
    paths, imported = run.stdout.splitlines()
    assert paths == str(sorted(["/start/v4", "/start/v4/", "/check/v4", "/check/v4/", "/cancel/v4", "/cancel/v4/",
                                "/healthz", "/livez", "/scale", "/v1/images/generations", "/v1/images/edits",
                                "/v1/models", "/sdapi/v1/txt2img", "/sdapi/v1/img2img", "/sdapi/v1/sd-models",
                                "/sdapi/v1/samplers", "/sdapi/v1/options", "/sdapi/v1/progress"]))
    assert imported == "[]"
