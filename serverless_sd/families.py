"""What differs between the model families this template serves: SD 1.x/2.x, SDXL, SD 3/3.5 and FLUX.1.

A family is read from the model's own model_index.json, before anything is loaded, so that the loader can choose
the dtype and the components to leave out. Everything family-specific is said here; pipelines.py and schema.py ask.
"""

import json
from dataclasses import dataclass
from pathlib import Path


class FamilyError(RuntimeError):
    """The model is not one this template serves: the message says what is."""


@dataclass(frozen=True)
class Family:
    name: str  # as the API reports it
    title: str  # as messages name it
    pipelines: tuple[str, ...]  # the classes a model_index.json of this family names (diffusers' AutoPipeline maps)
    denoiser: str  # the pipeline's attribute that runs every step: "unet" or "transformer"
    flow_matching: bool  # flow-matching schedulers only (schedulers.FLOW)
    negative_prompt: bool  # FLUX.1 is guidance-distilled: it has no unconditional pass to steer away from
    steps: int  # default num_inference_steps, as the model cards recommend
    guidance_scale: float  # default guidance_scale
    controlnet: str  # diffusers' ControlNet class for this family
    bf16: bool  # on CUDA too: FLUX.1 and SD 3.5 overflow in float16 (black or noisy images)
    clip_prompts: bool  # CLIP alone reads the prompt: weights, prompts past 77 tokens and clip_skip (prompts.py)
    preview_decoder: str  # the tiny autoencoder (madebyollin's TAESD) that decodes this family's latents for previews
    # COMPILE=1 fuses the attention's QKV projections where diffusers' fused processor computes what the unfused one
    # does. Not SD 3: its FusedJointAttnProcessor2_0 skips the QK RMSNorms of SD 3.5 Large and Medium (other images)
    # and fails on SD 3.5 Medium's dual-attention layers (no encoder_hidden_states there).
    fuse_qkv: bool = True
    # SDXL's VAE overflows in float16: its pipelines cast it to float32 and back around every decode and encode, where
    # its config says force_upcast (pipelines.vae_in_bf16 serves it in bf16 instead).
    vae_upcast: bool = False

    def denoiser_of(self, pipe):
        return getattr(pipe, self.denoiser)


FAMILIES = (
    Family("sd", "SD 1.x/2.x", ("StableDiffusionPipeline", "StableDiffusionImg2ImgPipeline",
                                "StableDiffusionInpaintPipeline"),
           "unet", False, True, 25, 7.0, "ControlNetModel", False, True, "madebyollin/taesd"),
    Family("sdxl", "SDXL", ("StableDiffusionXLPipeline", "StableDiffusionXLImg2ImgPipeline",
                            "StableDiffusionXLInpaintPipeline"),
           "unet", False, True, 25, 7.0, "ControlNetModel", False, True, "madebyollin/taesdxl", vae_upcast=True),
    Family("sd3", "SD 3", ("StableDiffusion3Pipeline", "StableDiffusion3Img2ImgPipeline",
                           "StableDiffusion3InpaintPipeline"),
           "transformer", True, True, 28, 7.0, "SD3ControlNetModel", True, False, "madebyollin/taesd3", fuse_qkv=False),
    Family("flux", "FLUX.1", ("FluxPipeline", "FluxImg2ImgPipeline", "FluxInpaintPipeline"),
           "transformer", True, False, 28, 3.5, "FluxControlNetModel", True, False, "madebyollin/taef1"),
)

NAMES = tuple(family.name for family in FAMILIES)

# Checkpoints whose cards recommend other settings than their family's: (steps, guidance_scale). A guidance_scale
# of 0 marks a guidance-distilled model, which takes none (schema refuses guidance_scale > 1 for it).
KNOWN_MODELS = {
    "stabilityai/stable-diffusion-3.5-medium": (40, 4.5),
    "stabilityai/stable-diffusion-3.5-large": (28, 3.5),
    "stabilityai/stable-diffusion-3.5-large-turbo": (4, 0.0),
    "stabilityai/sdxl-turbo": (1, 0.0),
    "stabilityai/sd-turbo": (1, 0.0),
}


def named(name: str) -> Family:
    return next(family for family in FAMILIES if family.name == name)


def of(folder: Path) -> Family:
    """The family of the diffusers pipeline saved in folder, from the class its model_index.json names."""
    class_name = json.loads((folder / "model_index.json").read_text()).get("_class_name", "")
    for family in FAMILIES:
        if class_name in family.pipelines:
            return family
    served = ", ".join(f"{f.title} ({f.pipelines[0]})" for f in FAMILIES)
    raise FamilyError(f"the model in {folder} is a {class_name or 'pipeline of no named class'}: this template "
                      f"serves {served}")


def components(folder: Path) -> set[str]:
    """The components the pipeline in folder declares (text_encoder_3, safety_checker, ...), present or not."""
    return {name for name, value in json.loads((folder / "model_index.json").read_text()).items()
            if isinstance(value, list)}


@dataclass(frozen=True)
class Defaults:
    steps: int
    guidance_scale: float
    guidance: bool  # False: a guidance-distilled model (FLUX.1-schnell, the turbos); guidance_scale <= 1 only


def defaults(family: Family, model_id: str, denoiser_config, steps: int | None = None,
             guidance_scale: float | None = None) -> Defaults:
    """The model's defaults: the operator's (DEFAULT_STEPS, DEFAULT_GUIDANCE_SCALE), else the model card's, else
    the family's. FLUX.1-schnell is told from FLUX.1-dev by its transformer: it has no guidance embedding."""
    if family.name == "flux" and not denoiser_config.get("guidance_embeds", True):
        card = (4, 0.0)
    else:
        card = KNOWN_MODELS.get(model_id.strip("/"), (family.steps, family.guidance_scale))
    guidance_scale = card[1] if guidance_scale is None else guidance_scale
    return Defaults(steps or card[0], guidance_scale, guidance=guidance_scale > 0)
