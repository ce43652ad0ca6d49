from pathlib import Path

import pytest
import torch

from serverless_sd import weights
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


def test_stored_dtypes_read_the_first_floating_point_tensor_of_each_component(tmp_path):
    from safetensors.torch import save_file

    (tmp_path / "text_encoder").mkdir()
    (tmp_path / "unet").mkdir()
    # Sorted by name, the integer position ids come first: they must not decide the component's dtype.
    save_file({"a.position_ids": torch.arange(4), "b.weight": torch.zeros(2, dtype=torch.float16)},
              tmp_path / "text_encoder" / "model.safetensors")
    save_file({"conv.weight": torch.zeros(2, dtype=torch.bfloat16)},
              tmp_path / "unet" / "diffusion_pytorch_model.safetensors")
    (tmp_path / "tokenizer").mkdir()
    assert weights.stored_dtypes(tmp_path) == {"text_encoder": torch.float16, "unet": torch.bfloat16}
