from pathlib import Path

import pytest

from serverless_sd.weights import WeightsError, fp16_variant, local_variant, locate


@pytest.mark.parametrize("files, variant", [
    (["unet/diffusion_pytorch_model.fp16.safetensors", "unet/diffusion_pytorch_model.safetensors"], "fp16"),
    (["unet/diffusion_pytorch_model.safetensors", "unet/diffusion_pytorch_model.fp16.bin"], None),
    ([], None),
])
def test_fp16_variant(files, variant):
    assert fp16_variant(files) == variant


def test_a_local_folder_is_used_as_it_is(models):
    assert locate(str(models["sd"]), Path("/nonexistent")) == models["sd"]
    assert local_variant(models["sd"]) is None


def test_locate_never_downloads(tmp_path):
    with pytest.raises(WeightsError, match="run `python3 download.py`"):
        locate("someone/not-baked", tmp_path)
