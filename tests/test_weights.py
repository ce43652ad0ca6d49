import shutil
from pathlib import Path

import pytest
import torch

from serverless_sd import weights
from serverless_sd.weights import WeightsError, half_variant, local_variant, locate


@pytest.mark.parametrize("files, variant", [
    (["unet/diffusion_pytorch_model.fp16.safetensors", "unet/diffusion_pytorch_model.safetensors"], "fp16"),
    (["unet/diffusion_pytorch_model.safetensors", "unet/diffusion_pytorch_model.fp16.bin"], None),
    (["transformer/diffusion_pytorch_model.bf16.safetensors", "transformer/diffusion_pytorch_model.safetensors"],
     "bf16"),
    (["a.bf16.safetensors", "a.fp16.safetensors"], "fp16"),
    ([], None),
])
def test_half_variant(files, variant):
    assert half_variant(files) == variant


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


def test_a_bf16_variant_beside_fp32_files_is_the_one_loaded(models, tmp_path):
    """FLUX.1- and SD 3-style repos publish bf16 where they publish a 16-bit variant at all."""
    from diffusers import AutoPipelineForText2Image

    from serverless_sd.pipelines import StableDiffusion
    from serverless_sd.settings import Settings

    shutil.copytree(models["sd3"], tmp_path, dirs_exist_ok=True)
    fp32 = AutoPipelineForText2Image.from_pretrained(models["sd3"])
    weight = fp32.transformer.proj_out.weight.detach().clone()
    fp32.to(torch.bfloat16).save_pretrained(tmp_path, variant="bf16")
    assert local_variant(tmp_path) == "bf16"
    assert set(weights.stored_dtypes(tmp_path).values()) == {torch.bfloat16}
    loaded = StableDiffusion.load(Settings(model_id=str(tmp_path), device="cpu", dtype="float32"))
    # The bf16 files' values, widened to fp32: not the fp32 files'.
    assert torch.equal(loaded.pipe.transformer.proj_out.weight, weight.bfloat16().float())
    assert not torch.equal(loaded.pipe.transformer.proj_out.weight, weight)
