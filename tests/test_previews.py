"""Previews decoded by a tiny autoencoder, for each family's latents (SD 3's 16 channels, FLUX.1's packed ones)."""

import base64
import io

import numpy as np
import pytest
from PIL import Image

from serverless_sd import schema
from serverless_sd.pipelines import StableDiffusion
from testkit import precision


def previews_of(model: StableDiffusion, **inputs) -> list[str]:
    seen = []
    step = model.progress.step

    def spy(*args):
        result = step(*args)
        seen.append(model.progress.snapshot()["preview"])
        return result

    model.progress.step = spy
    model.generate(schema.parse({"prompt": "a lighthouse", "seed": 1, **inputs}, model.limits), "r")
    return list(dict.fromkeys(preview for preview in seen if preview))  # each made once, kept until the next


def image(preview: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(preview.partition(",")[2])))


@pytest.mark.parametrize("family", ["sd", "sd3", "flux"])
def test_each_family_previews_its_latents(models, family):
    decoder = models["taesd" if family == "sd" else "taef1"]
    model = StableDiffusion.load(precision.settings(model_id=str(models[family]), preview_every=1,
                                                    preview_decoder=str(decoder)))
    width, height = (96, 64) if family == "sd" else (128, 96)
    previews = previews_of(model, num_inference_steps=3, width=width, height=height)
    assert len(previews) >= 2  # one per step but the last, each different
    # The decoder upsamples as the model's VAE does: the preview has the image's shape (FLUX.1's unpacked rightly).
    assert {image(p).size for p in previews} == {(width, height)}
    assert np.asarray(image(previews[0])).std() > 0  # noise, as random weights make, not a blank


def test_no_preview_where_previews_are_off(models):
    model = StableDiffusion.load(precision.settings(model_id=str(models["sd"])))
    assert model.progress.preview is None and previews_of(model, num_inference_steps=3) == []


def test_previews_change_nothing_in_the_image(models):
    """They read the latents between steps and hand them back untouched (bench/gpu.py checks the same under CUDA
    graphs and COMPILE=1)."""
    inputs = {"prompt": "a lighthouse", "seed": 4, "num_inference_steps": 4}
    images = []
    for every in (0, 1):
        model = StableDiffusion.load(precision.settings(model_id=str(models["sd"]), preview_every=every,
                                                        preview_decoder=str(models["taesd"])))
        images.append(model.generate(schema.parse(inputs, model.limits), "r").answer()["image_base64"])
    assert images[0] == images[1]
