"""The RunPod Hub listing (.runpod/): hub.json and tests.json with the fields RunPod's publishing guide defines, and
each setting they give the worker as the app's own Settings read it. tests/test_runpod_worker.py runs every
tests.json input through the worker."""

import json
import re

import pytest

from serverless_sd.settings import Settings
from testkit.processes import ROOT

HUB = json.loads((ROOT / ".runpod/hub.json").read_text())
TESTS = json.loads((ROOT / ".runpod/tests.json").read_text())
# The guide's vocabulary (docs.runpod.io: hub/publishing-guide, references/gpu-types).
CATEGORIES = {"audio", "embedding", "language", "video", "image"}
INPUT_TYPES = {"string", "number", "boolean", "huggingface"}
GPU_POOLS = {"AMPERE_16", "AMPERE_24", "ADA_24", "AMPERE_48", "ADA_48_PRO", "AMPERE_80", "ADA_80_PRO", "HOPPER_141"}


def settings_with(key: str, value) -> Settings:
    """What the worker makes of an environment variable the Hub sets (as the string RunPod passes)."""
    assert key.lower() in Settings.model_fields, f"{key} is no setting of the app"
    return Settings.model_validate({key.lower(): str(value)})


def test_hub_json_has_the_guides_fields():
    assert isinstance(HUB["title"], str) and HUB["title"] and isinstance(HUB["description"], str)
    assert HUB["type"] == "serverless" and HUB["category"] == "image" in CATEGORIES
    config = HUB["config"]
    assert config["runsOn"] == "GPU" and isinstance(config["containerDiskInGb"], int) and config["gpuCount"] == 1
    assert set(config["gpuIds"].split(",")) <= GPU_POOLS
    assert set(config) <= {"runsOn", "endpointType", "containerDiskInGb", "gpuCount", "gpuIds",
                           "allowedCudaVersions", "env", "presets"}


def test_the_cuda_versions_allowed_are_the_images_and_newer():
    """A host whose driver is older than the image's CUDA cannot run it; every newer one can."""
    image = re.search(r"^FROM nvidia/cuda:(\d+)\.(\d+)\.", (ROOT / "Dockerfile").read_text(), re.M)
    ours = (int(image[1]), int(image[2]))
    for allowed in (HUB["config"]["allowedCudaVersions"], TESTS["config"]["allowedCudaVersions"]):
        versions = [tuple(int(part) for part in version.split(".")) for version in allowed]
        assert min(versions) == ours and len(versions) >= 3 and all(isinstance(v, str) for v in allowed)


def test_each_env_entry_is_a_setting_whose_input_the_app_accepts():
    for entry in HUB["config"]["env"]:
        if "value" in entry:
            settings_with(entry["key"], entry["value"])
            continue
        given = entry["input"]
        assert given["type"] in INPUT_TYPES and given["name"] and given["description"], entry
        values = [given[field] for field in ("default", "min", "max", "trueValue", "falseValue") if field in given]
        values += [option["value"] for option in given.get("options", [])]
        for value in values:
            settings_with(entry["key"], value)
        if given["type"] == "boolean":
            assert settings_with(entry["key"], given["trueValue"]).model_dump()[entry["key"].lower()] is True
            assert settings_with(entry["key"], given["falseValue"]).model_dump()[entry["key"].lower()] is False


def test_the_model_is_a_hugging_face_input_defaulting_to_the_one_in_the_image():
    """The Hub builds the Dockerfile with its defaults, so the image holds Settings' default model: that one works
    with no cached model, and tests.json runs it."""
    (model,) = [entry["input"] for entry in HUB["config"]["env"] if entry["key"] == "MODEL_ID"]
    baked = re.search(r"^ARG MODEL_ID=(\S+)$", (ROOT / "Dockerfile").read_text(), re.M)[1]
    assert model["type"] == "huggingface" and model["required"]
    assert model["default"] == Settings().model_id == baked
    assert TESTS["config"]["env"] == [{"key": "MODEL_ID", "value": baked}]


@pytest.mark.parametrize("family, model_id", [("SD 1.5", "prompthero/openjourney-v4"),
                                              ("SDXL", "stabilityai/stable-diffusion-xl-base-1.0"),
                                              ("SD 3.5 Medium", "stabilityai/stable-diffusion-3.5-medium"),
                                              ("FLUX.1 schnell", "black-forest-labs/FLUX.1-schnell")])
def test_a_preset_per_family_sets_only_settings_the_listing_offers(family, model_id):
    (preset,) = [preset for preset in HUB["config"]["presets"] if preset["name"].startswith(family + " ")]
    offered = {entry["key"] for entry in HUB["config"]["env"]}
    assert preset["defaults"]["MODEL_ID"] == model_id and set(preset["defaults"]) <= offered
    for key, value in preset["defaults"].items():
        settings_with(key, value)


def test_tests_json_has_the_guides_fields():
    names = [test["name"] for test in TESTS["tests"]]
    assert names and len(set(names)) == len(names)
    for test in TESTS["tests"]:
        assert set(test) <= {"name", "input", "timeout"} and isinstance(test["input"], dict)
        assert isinstance(test["timeout"], int) and test["timeout"] >= 60_000  # milliseconds: a first image cold
    config = TESTS["config"]
    assert config["gpuTypeId"] == "NVIDIA GeForce RTX 4090" and config["gpuCount"] == 1  # in the ADA_24 pool
    assert "ADA_24" in HUB["config"]["gpuIds"].split(",")

