"""make bench-families: what each model family weighs, and SD 3 and FLUX.1 on this CPU against plain diffusers.

1. Weights: every component of each family's reference checkpoint built from its published architecture on
   PyTorch's meta device (no memory, no download), its parameters counted, at 2 bytes each (fp16/bf16).
2. Seconds per image on this CPU, SD 3 and FLUX.1 with their real widths but few layers (random weights): the
   app's pipeline code (StableDiffusion.generate) against plain diffusers in fp32 (its default) and bf16, in one
   process, run in turns, best of the runs.
3. DROP_T5: SD 3's prompt encoding with a T5 encoder of T5-XXL's real size against none.

Writes bench/results/families.json and prints the tables for BENCHMARKS.md.
"""

import argparse
import json
import time
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    AutoPipelineForText2Image,
    FlowMatchEulerDiscreteScheduler,
    FluxPipeline,
    FluxTransformer2DModel,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextModel, CLIPTextModelWithProjection, T5Config, T5EncoderModel

from bench.common import ROOT, machine
from serverless_sd.pipelines import StableDiffusion
from serverless_sd.schema import parse
from serverless_sd.settings import Settings
from testkit.model_factory import (
    CLIP_L,
    FLOW_LATENTS,
    byte_level_tokenizer,
    sd15_unet,
    sd_vae,
    t5_tokenizer,
    text_encoder_config,
)

CLIP_G = text_encoder_config(1280, 32, 20, 1280, 49408, hidden_act="gelu")  # OpenCLIP bigG's text encoder
T5_XXL = {"d_model": 4096, "d_ff": 10240, "d_kv": 64, "num_heads": 64, "num_layers": 24, "vocab_size": 32128,
          "feed_forward_proj": "gated-gelu"}
SD3_5_MEDIUM = {"sample_size": 128, "patch_size": 2, "in_channels": 16, "num_layers": 24, "attention_head_dim": 64,
                "num_attention_heads": 24, "joint_attention_dim": 4096, "caption_projection_dim": 1536,
                "pooled_projection_dim": 2048, "out_channels": 16, "pos_embed_max_size": 384,
                "dual_attention_layers": tuple(range(13)), "qk_norm": "rms_norm"}
SD3_5_LARGE = {**SD3_5_MEDIUM, "num_layers": 38, "num_attention_heads": 38, "caption_projection_dim": 2432,
               "pos_embed_max_size": 192, "dual_attention_layers": ()}
FLUX_1 = {"patch_size": 1, "in_channels": 64, "num_layers": 19, "num_single_layers": 38, "attention_head_dim": 128,
          "num_attention_heads": 24, "joint_attention_dim": 4096, "pooled_projection_dim": 768,
          "guidance_embeds": True, "axes_dims_rope": (16, 56, 56)}


def flow_vae(**extra) -> AutoencoderKL:
    """SD 3's and FLUX.1's autoencoder: 16 latent channels, shifted and scaled."""
    return sd_vae(16, **FLOW_LATENTS, **extra)


def sdxl_unet() -> UNet2DConditionModel:
    return UNet2DConditionModel(
        sample_size=128, block_out_channels=(320, 640, 1280), transformer_layers_per_block=(1, 2, 10),
        attention_head_dim=(5, 10, 20), cross_attention_dim=2048, addition_embed_type="text_time",
        addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816, use_linear_projection=True,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"))


REFERENCE = {  # family: (checkpoint, {component: builder})
    "sd": ("stable-diffusion-v1-5", {"unet": sd15_unet, "vae": sd_vae,
                                     "text_encoder": lambda: CLIPTextModel(text_encoder_config(*CLIP_L))}),
    "sdxl": ("stable-diffusion-xl-base-1.0", {
        "unet": sdxl_unet, "vae": sd_vae, "text_encoder": lambda: CLIPTextModel(text_encoder_config(*CLIP_L)),
        "text_encoder_2": lambda: CLIPTextModelWithProjection(CLIP_G)}),
    "sd3": ("stable-diffusion-3.5-medium", {
        "transformer": lambda: SD3Transformer2DModel(**SD3_5_MEDIUM), "vae": flow_vae,
        "text_encoder": lambda: CLIPTextModelWithProjection(text_encoder_config(*CLIP_L)),
        "text_encoder_2": lambda: CLIPTextModelWithProjection(CLIP_G),
        "text_encoder_3": lambda: T5EncoderModel(T5Config(**T5_XXL))}),
    "sd3-large": ("stable-diffusion-3.5-large", {"transformer": lambda: SD3Transformer2DModel(**SD3_5_LARGE)}),
    "flux": ("FLUX.1-dev / FLUX.1-schnell", {
        "transformer": lambda: FluxTransformer2DModel(**FLUX_1), "vae": flow_vae,
        "text_encoder": lambda: CLIPTextModel(text_encoder_config(*CLIP_L)),
        "text_encoder_2": lambda: T5EncoderModel(T5Config(**T5_XXL))}),
}


def weights() -> dict:
    counted = {}
    for family, (checkpoint, builders) in REFERENCE.items():
        with torch.device("meta"):
            parameters = {name: sum(p.numel() for p in build().parameters()) for name, build in builders.items()}
        counted[family] = {"checkpoint": checkpoint, "parameters": parameters}
    # SD 3.5 Large shares Medium's encoders and VAE.
    counted["sd3-large"]["parameters"] |= {k: v for k, v in counted["sd3"]["parameters"].items() if k != "transformer"}
    for entry in counted.values():
        total = sum(entry["parameters"].values())
        entry["gb_16bit"] = round(total * 2 / 1e9, 2)
        t5 = next((v for k, v in entry["parameters"].items() if k == "text_encoder_3"), 0)
        if t5:
            entry["gb_16bit_drop_t5"] = round((total - t5) * 2 / 1e9, 2)
    return counted


def small_sd3(folder: Path) -> Path:
    """SD 3.5 Medium's widths (transformer, CLIP-L, VAE), 4 transformer layers, small CLIP-G and T5 stand-ins."""
    if not (folder / "model_index.json").exists():
        torch.manual_seed(0)
        StableDiffusion3Pipeline(
            transformer=SD3Transformer2DModel(**{**SD3_5_MEDIUM, "num_layers": 4, "dual_attention_layers": (0, 1),
                                                 "joint_attention_dim": 1024, "pooled_projection_dim": 768 + 64}),
            vae=flow_vae(), scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
            text_encoder=CLIPTextModelWithProjection(text_encoder_config(*CLIP_L)),
            tokenizer=byte_level_tokenizer(49408),
            text_encoder_2=CLIPTextModelWithProjection(text_encoder_config(64, 2, 4, 64, 49408)),
            tokenizer_2=byte_level_tokenizer(49408),
            text_encoder_3=T5EncoderModel(T5Config(d_model=1024, d_ff=1024, d_kv=64, num_heads=4, num_layers=2,
                                                   vocab_size=128)), tokenizer_3=t5_tokenizer(),
        ).save_pretrained(folder)
    return folder


def small_flux(folder: Path) -> Path:
    """FLUX.1-schnell's widths (transformer, CLIP-L, VAE), 2 double and 4 single blocks, a small T5 stand-in."""
    if not (folder / "model_index.json").exists():
        torch.manual_seed(0)
        FluxPipeline(
            transformer=FluxTransformer2DModel(**{**FLUX_1, "num_layers": 2, "num_single_layers": 4,
                                                  "guidance_embeds": False, "joint_attention_dim": 256}),
            vae=flow_vae(use_quant_conv=False, use_post_quant_conv=False),
            scheduler=FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                                      base_image_seq_len=256, max_image_seq_len=4096),
            text_encoder=CLIPTextModel(text_encoder_config(*CLIP_L)), tokenizer=byte_level_tokenizer(49408),
            text_encoder_2=T5EncoderModel(T5Config(d_model=256, d_ff=512, d_kv=64, num_heads=4, num_layers=2,
                                                   vocab_size=128)), tokenizer_2=t5_tokenizer(),
        ).save_pretrained(folder)
    return folder


def speed(folder: Path, runs: int, **inputs) -> dict:
    model = StableDiffusion.load(Settings(model_id=str(folder), device="cpu"))
    request = parse({"prompt": "a lighthouse on a cliff at dusk", "seed": 1, **inputs}, model.limits)
    plains = {}
    for dtype in ("float32", "bfloat16"):
        plains[dtype] = AutoPipelineForText2Image.from_pretrained(folder, torch_dtype=getattr(torch, dtype))
        plains[dtype].set_progress_bar_config(disable=True)
    call = {"prompt": request.prompt, "num_inference_steps": request.num_inference_steps,
            "guidance_scale": request.guidance_scale, "width": inputs["width"], "height": inputs["height"]}
    times: dict[str, list[float]] = {"app": [], "float32": [], "bfloat16": []}
    model.generate(request)
    for _ in range(runs):
        times["app"].append(model.generate(request).inference_ms / 1000)
        for dtype, plain in plains.items():
            started = time.perf_counter()
            plain(**call, generator=torch.Generator().manual_seed(1))
            times[dtype].append(time.perf_counter() - started)
    best = {name: min(values) for name, values in times.items()}
    return {"inputs": {**inputs, "guidance_scale": request.guidance_scale}, "s_per_image": best, "runs": times,
            "speedup_vs_plain_fp32": best["float32"] / best["app"],
            "speedup_vs_plain_bf16": best["bfloat16"] / best["app"]}


def t5_cost(folder: Path) -> dict:
    """SD 3's prompt encoding, bf16, with a T5-XXL-sized encoder (random weights) and with none (DROP_T5=1)."""
    pipe = AutoPipelineForText2Image.from_pretrained(folder, torch_dtype=torch.bfloat16)
    torch.manual_seed(0)
    with torch.device("meta"):
        t5 = T5EncoderModel(T5Config(**T5_XXL))
    t5 = t5.to_empty(device="cpu").to(torch.bfloat16)
    for parameter in t5.parameters():
        torch.nn.init.normal_(parameter, std=0.02)
    result = {}  # its weights: weights()["sd3"]
    prompt = "a lighthouse on a cliff at dusk, oil painting, " * 4
    for name, encoder in (("with_t5_s", t5), ("drop_t5_s", None)):
        pipe.text_encoder_3 = encoder
        with torch.inference_mode():
            pipe.encode_prompt(prompt, None, None, do_classifier_free_guidance=True)
            started = time.perf_counter()
            pipe.encode_prompt(prompt, None, None, do_classifier_free_guidance=True)
        result[name] = round(time.perf_counter() - started, 2)
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", type=Path, default=ROOT / "bench" / "models")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    sd3, flux = small_sd3(args.models / "sd3-small"), small_flux(args.models / "flux-small")
    r = {"machine": machine(), "weights": weights(),
         "sd3_cpu": speed(sd3, args.runs, width=256, height=256, num_inference_steps=4),
         "flux_cpu": speed(flux, args.runs, width=256, height=256, num_inference_steps=4),
         "drop_t5": t5_cost(sd3)}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "families.json").write_text(json.dumps(r, indent=2))
    print(json.dumps(r, indent=2))


if __name__ == "__main__":
    main()
