"""Loading and generation choices: the dtype the CPU or GPU is served in (bf16 on a CPU that computes it gives what
fp32 gives, up to its rounding), warm-ups, inpainting checkpoints, guidance off, the VAE's slicing."""

import httpx
import numpy as np
import pytest
import torch
from diffusers import AutoPipelineForText2Image
from PIL import Image

from serverless_sd import families
from serverless_sd.pipelines import StableDiffusion, choose_device, choose_dtype
from serverless_sd.schema import parse
from serverless_sd.settings import Settings
from testkit import precision

from test_app import generate, pixels
from test_modes import uri


def test_dtype_choice():
    cpu, cuda, sd, flux = torch.device("cpu"), torch.device("cuda"), families.named("sd"), families.named("flux")
    assert choose_dtype("float32", cpu, sd) == torch.float32
    assert choose_dtype("auto", cuda, sd) == torch.float16
    assert choose_dtype("auto", cuda, flux) == torch.bfloat16  # FLUX.1 overflows in float16
    expected = torch.bfloat16 if torch.ops.mkldnn._is_mkldnn_bf16_supported() else torch.float32
    assert choose_dtype("auto", cpu, sd) == choose_dtype("auto", cpu, flux) == expected
    assert choose_device("cpu") == cpu


@pytest.mark.skipif(not precision.BF16_CPU, reason=precision.NO_BF16_REASON)
def test_bf16_on_a_cpu_that_computes_it_stays_close_to_the_fp32_reference(start_app, models, sd_app):
    """The path the app's default takes on a CPU with AVX-512 BF16 or AMX (DTYPE=auto): bf16 and channels_last."""
    bf16 = start_app({"MODEL_ID": str(models["sd"]), "DTYPE": "bfloat16"})
    reference = sd_app if precision.DTYPE == "float32" else start_app({"MODEL_ID": str(models["sd"]),
                                                                       "DTYPE": "float32"})
    for seed in (1, 2):
        default = pixels(generate(bf16, seed=seed, num_inference_steps=4)["image_base64"])
        fp32 = pixels(generate(reference, seed=seed, num_inference_steps=4)["image_base64"])
        difference = np.abs(default - fp32)
        assert difference.mean() < 2 and difference.max() < 24, (difference.mean(), difference.max())
    other_seed = pixels(generate(reference, seed=3, num_inference_steps=4)["image_base64"])
    assert np.abs(other_seed - fp32).mean() > 10  # what "not the same image" looks like


@pytest.mark.parametrize("dtype", ["bfloat16", "float32", "auto"])
def test_bf16_on_cpu_runs_channels_last_and_fp32_does_not(models, dtype):
    """auto: what the CPU computes natively, bf16 where it has AVX-512 BF16 or AMX, float32 elsewhere."""
    settings = Settings(model_id=str(models["sd"]), controlnet_id=str(models["controlnet"]), device="cpu", dtype=dtype)
    model = StableDiffusion.load(settings)
    served = {"auto": torch.bfloat16 if precision.BF16_CPU else torch.float32}.get(dtype) or getattr(torch, dtype)
    for conv in (model.pipe.unet.conv_in, model.pipe.vae.decoder.conv_in, model.controlnet.conv_in):
        assert conv.weight.is_contiguous(memory_format=torch.channels_last) is (served == torch.bfloat16)
    for module in (model.pipe.unet, model.pipe.vae, model.pipe.text_encoder, model.controlnet):
        assert {p.dtype for p in module.parameters()} == {served}


def test_the_warm_up_keeps_within_the_operators_limits(models, monkeypatch):
    """MAX_STEPS below the warm-up's 3 steps and a 1-character MAX_PROMPT_CHARS used to stop init (on a GPU)."""
    warmed = []
    generate_as_is = StableDiffusion.generate
    monkeypatch.setattr(StableDiffusion, "generate", lambda self, inputs: warmed.append(inputs) or generate_as_is(
        self, inputs))
    model = StableDiffusion.load(precision.settings(model_id=str(models["sd"]), warm_up="on", max_steps=2,
                                                    max_prompt_chars=1))
    assert model.warm_up() and [(i.num_inference_steps, i.mode) for i in warmed] == [(2, "txt2img")]
    assert not StableDiffusion.load(precision.settings(model_id=str(models["sd"]))).warm_up()  # auto: CUDA only
    assert len(warmed) == 1


def test_an_inpainting_checkpoint_inpaints_and_refuses_the_other_modes_by_name(start_app, models):
    """Its UNet reads 9 channels: text-to-image used to crash it (the warm-up at init, on a GPU)."""
    app = start_app({"MODEL_ID": str(models["sd_inpainting"]), "WARM_UP": "on"})
    [warm_up] = app.events("warm_up")
    assert warm_up["thread"] != "MainThread"  # Potassium's worker thread, where the requests run
    picture = uri(Image.effect_noise((64, 64), 50).convert("RGB"))
    answer = generate(app, image=picture, mask_image=uri(Image.new("L", (64, 64), 255)), num_inference_steps=2)
    assert answer["mode"] == "inpaint"
    for inputs, field in (({}, "image"), ({"image": picture}, "mask_image")):
        refused = app.post({"prompt": "a", "num_inference_steps": 2, **inputs})
        assert refused.status_code == 422 and refused.json()["errors"][0]["field"] == field
        assert "inpainting model" in refused.json()["error"]
    document = httpx.get(app.url + "/openapi.json").json()
    schema = document["paths"]["/"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert {"prompt", "image", "mask_image"} <= set(schema["required"])


@pytest.mark.parametrize("scheduler", ["lcm", "tcd", "euler_trailing"])
def test_few_steps_without_guidance_run_the_unet_once_a_step_on_the_prompt_alone(models, scheduler):
    """guidance_scale 0 or 1 turns classifier-free guidance off: no unconditional pass, half the UNet's work."""
    model = StableDiffusion.load(precision.settings(model_id=str(models["sd"])))
    batches = []
    model.pipe.unet.register_forward_pre_hook(lambda module, args: batches.append(args[0].shape[0]))
    for guidance in (7.0, 1.0, 0.0):
        inputs = {"prompt": "a", "num_inference_steps": 4, "guidance_scale": guidance, "scheduler": scheduler}
        model.generate(parse(inputs, model.limits))
    assert batches == [2] * 4 + [1] * 4 + [1] * 4


def test_the_vae_decodes_a_batch_one_image_at_a_time_to_the_same_images(models):
    """A quarter of the decoder's peak memory for 4 images (SDXL's fp32 decoder at 1024x1024: near 12 GiB at once)."""
    model = StableDiffusion.load(Settings(model_id=str(models["sd"]), device="cpu", dtype="float32"))
    batches = []
    model.pipe.vae.decoder.register_forward_pre_hook(lambda module, args: batches.append(args[0].shape[0]))
    inputs = {"prompt": "a", "num_inference_steps": 2, "seed": 3}
    together = model.generate(parse({**inputs, "num_images": 3}, model.limits))
    assert batches == [1, 1, 1]
    model.pipe.vae.disable_slicing()
    at_once = model.generate(parse({**inputs, "num_images": 3}, model.limits))
    assert batches == [1, 1, 1, 3]
    for ours, theirs in zip(together.images, at_once.images, strict=True):
        assert np.abs(np.asarray(ours, dtype=np.int16) - np.asarray(theirs, dtype=np.int16)).max() <= 1


def test_sdxl_in_float16_serves_its_vae_in_bf16_and_casts_nothing_per_request(models):
    """diffusers casts SDXL's VAE to float32 and back around every decode and encode where it is float16 (335 MB
    reallocated each time at SDXL's size, new addresses under COMPILE=1): here it is bf16 from the start. float16 on
    the CPU stands in for CUDA's default: the rule is the dtype's, not the device's."""
    model = StableDiffusion.load(Settings(model_id=str(models["sdxl"]), device="cpu", dtype="float16"))
    vae = model.pipe.vae
    assert model.pipe.unet.dtype == torch.float16 and vae.dtype == torch.bfloat16 and not vae.config.force_upcast
    addresses = {name: p.data_ptr() for name, p in vae.named_parameters()}
    reached = []
    for part in (vae.encoder, vae.decoder):
        part.register_forward_pre_hook(lambda module, args: reached.append((type(module).__name__, args[0].dtype)))
    for inputs in ({}, {"image": uri(Image.effect_noise((64, 64), 50).convert("RGB"))}):  # txt2img, img2img
        model.generate(parse({"prompt": "a red cube", "num_inference_steps": 3, "seed": 4, **inputs}, model.limits))
    assert {name: p.data_ptr() for name, p in vae.named_parameters()} == addresses  # never cast and back
    assert reached == [("Decoder", torch.bfloat16), ("Encoder", torch.bfloat16), ("Decoder", torch.bfloat16)]
    # Plain diffusers' image (its VAE in float32 for the decode), within the decode's bf16 rounding.
    plain = AutoPipelineForText2Image.from_pretrained(models["sdxl"], torch_dtype=torch.float16)
    plain.set_progress_bar_config(disable=True)
    theirs = plain(prompt="a red cube", num_inference_steps=3, guidance_scale=7.0,
                   generator=torch.Generator().manual_seed(4)).images[0]
    ours = model.generate(parse({"prompt": "a red cube", "num_inference_steps": 3, "seed": 4}, model.limits)).images[0]
    difference = np.abs(np.asarray(ours, dtype=np.int16) - np.asarray(theirs, dtype=np.int16))
    assert difference.max() <= 4 and difference.mean() < 1, (difference.max(), difference.mean())
    # SD 1.x's pipelines decode in float16 as they are: its VAE is left alone.
    sd = StableDiffusion.load(Settings(model_id=str(models["sd"]), device="cpu", dtype="float16"))
    assert sd.pipe.vae.dtype == torch.float16
