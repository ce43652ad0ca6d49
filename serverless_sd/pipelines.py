"""The Stable Diffusion pipeline: loaded once, then one generation per request, one generator per image."""

import time
from dataclasses import dataclass

import torch
from diffusers import (
    AutoPipelineForImage2Image,
    AutoPipelineForInpainting,
    AutoPipelineForText2Image,
    ControlNetModel,
    DiffusionPipeline,
)
from PIL import Image

from . import images, schedulers, seeds, weights
from .cuda_graphs import CudaGraphed
from .schema import Answer, GenerateInputs, Limits
from .settings import Settings


def choose_device(setting: str) -> torch.device:
    if setting == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("DEVICE=cuda but no CUDA device is visible")
    return torch.device("cuda" if setting != "cpu" and torch.cuda.is_available() else "cpu")


def choose_dtype(setting: str, device: torch.device) -> torch.dtype:
    if setting != "auto":
        return getattr(torch, setting)
    if device.type == "cuda":
        return torch.float16
    # bf16 halves memory traffic and runs on AVX-512-BF16/AMX units; without them it is slower than fp32.
    return torch.bfloat16 if torch.ops.mkldnn._is_mkldnn_bf16_supported() else torch.float32


@dataclass
class Generation:
    inputs: GenerateInputs
    images: list[Image.Image]
    seeds: list[int]
    nsfw: list[bool]
    inference_ms: float

    def answer(self) -> dict:
        started = time.perf_counter()
        uris = [images.to_data_uri(image, self.inputs.output_format) for image in self.images]
        width, height = self.images[0].size
        return Answer(
            image_base64=uris[0], images=uris, seed=self.seeds[0], seeds=self.seeds, nsfw=self.nsfw,
            mode=self.inputs.mode, width=width, height=height, num_inference_steps=self.inputs.num_inference_steps,
            guidance_scale=self.inputs.guidance_scale, output_format=self.inputs.output_format,
            timings={"inference_ms": round(self.inference_ms, 1),
                     "encode_ms": round((time.perf_counter() - started) * 1000, 1)},
        ).model_dump()


class StableDiffusion:
    """One loaded model (SD 1.x, 2.x or SDXL: AutoPipeline picks the class from model_index.json), and a pipeline
    per mode sharing its weights (diffusers' from_pipe): txt2img, img2img, inpaint, and controlnet when loaded."""

    def __init__(self, pipe: DiffusionPipeline, settings: Settings, controlnet: ControlNetModel | None = None):
        self.pipe = pipe
        self.controlnet = controlnet
        self.model_scheduler = pipe.scheduler  # never run: each request gets a fresh scheduler built from it
        self.wants_warm_up = False
        # An inpainting checkpoint's UNet also reads the mask and the masked picture (9 channels, not 4): it can
        # only inpaint, and the others modes are refused with a 422 (Limits.inpainting_only).
        inpainting_only = pipe.unet.config.in_channels == 9
        self.modes = {"inpaint": AutoPipelineForInpainting.from_pipe(pipe)}
        if not inpainting_only:
            self.modes |= {"txt2img": pipe, "img2img": AutoPipelineForImage2Image.from_pipe(pipe)}
        if controlnet is not None and not inpainting_only:
            self.modes["controlnet"] = AutoPipelineForText2Image.from_pipe(pipe, controlnet=controlnet)
        for mode in self.modes.values():
            mode.set_progress_bar_config(disable=True)
        native = pipe.unet.config.sample_size * pipe.vae_scale_factor
        self.limits = Limits.from_settings(settings, native_width=native, native_height=native,
                                           controlnet="controlnet" in self.modes, inpainting_only=inpainting_only)

    @classmethod
    def load(cls, settings: Settings) -> "StableDiffusion":
        folder = weights.locate(settings.model_id, settings.models_dir, safety_checker=settings.safety_checker)
        device = choose_device(settings.device)
        dtype = choose_dtype(settings.dtype, device)
        no_checker = {} if settings.safety_checker else {"safety_checker": None, "requires_safety_checker": False}
        # bf16 on a CPU runs its convolutions faster in channels_last (oneDNN); fp32 on a CPU and eager CUDA run
        # slower (BENCHMARKS.md). To get there with one copy of each weight, not two, the weights load as they are
        # stored (memory-mapped) and are converted once, to bf16 and channels_last together.
        nhwc = device.type == "cpu" and dtype == torch.bfloat16
        stored = weights.stored_dtypes if nhwc else lambda _: {}
        pipe = AutoPipelineForText2Image.from_pretrained(
            folder, dtype={"default": dtype, **stored(folder)}, variant=weights.local_variant(folder),
            local_files_only=True, use_safetensors=True,
            device_map=device.type,  # weights go straight to the GPU, no CPU copy first
            **no_checker,
        )
        controlnet = None
        if settings.controlnet_id:
            controlnet_folder = weights.locate(settings.controlnet_id, settings.models_dir, controlnet=True)
            controlnet = ControlNetModel.from_pretrained(
                controlnet_folder, dtype=stored(controlnet_folder).get("", dtype),
                variant=weights.local_variant(controlnet_folder), local_files_only=True, use_safetensors=True,
                device_map=device.type)
        model = cls(pipe, settings, controlnet)
        if nhwc:
            model.to(dtype, torch.channels_last)
        if settings.compile:
            model.compile()
        elif device.type == "cuda" and settings.cuda_graphs:
            pipe.unet.forward = CudaGraphed(pipe.unet.forward)
        model.wants_warm_up = settings.warm_up == "on" or (settings.warm_up == "auto" and device.type == "cuda")
        return model

    def compile(self) -> None:
        """COMPILE=1: torch.compile the UNet and the VAE decoder, with CUDA graphs. The first call at each new
        size or batch compiles again (a minute or more); the warm-up at init compiles the native size, batch 1."""
        self.pipe.unet.fuse_qkv_projections()
        self.to(self.pipe.dtype, torch.channels_last)
        unet = torch.compile(self.pipe.unet, mode="reduce-overhead", fullgraph=True)
        for mode in self.modes.values():  # each mode's pipeline holds the UNet itself: give them all the compiled one
            mode.unet = unet
        self.pipe.vae.decode = torch.compile(self.pipe.vae.decode, mode="reduce-overhead", fullgraph=True)

    def to(self, dtype: torch.dtype, memory_format: torch.memory_format) -> None:
        """Every module, shared by every mode, in dtype; memory_format applies to 4-D weights (convolutions)."""
        for module in [*self.pipe.components.values(), self.controlnet]:
            if isinstance(module, torch.nn.Module):
                module.to(dtype, memory_format=memory_format)

    def warm_up(self) -> bool:
        """Run the native size once (WARM_UP; by default on CUDA only), so that the first caller does not pay for
        CUDA's and cuDNN's set-up, the CUDA graph's capture (second call) or the compile: three steps (or MAX_STEPS,
        if fewer), in the mode the model serves by default (an inpainting model's is inpainting). Called on the
        thread that will serve the requests: cuBLAS and cuDNN handles, and CUDA graph trees, are per thread."""
        if not self.wants_warm_up:
            return False
        inputs = {"prompt": "a", "num_inference_steps": min(3, self.limits.max_steps), "seed": 0}
        if self.limits.inpainting_only:
            size = (self.limits.native_width, self.limits.native_height)
            inputs |= {"image": images.to_data_uri(Image.new("RGB", size), "png"),
                       "mask_image": images.to_data_uri(Image.new("L", size, 255), "png")}
        self.generate(GenerateInputs.model_validate(inputs, context={"limits": self.limits}))
        return True

    def generate(self, inputs: GenerateInputs) -> Generation:
        width, height = inputs.size(self.limits)
        image_seeds = inputs.seeds()
        pipe = self.modes[inputs.mode]
        pipe.scheduler = schedulers.build(inputs.scheduler, self.model_scheduler)
        # img2img pipelines take their size from the image, so every input image is resized to the output's size.
        options = {} if inputs.mode == "img2img" else {"width": width, "height": height}
        if inputs.image is not None:
            options.update(image=inputs.image.convert("RGB").resize((width, height), Image.LANCZOS),
                           strength=inputs.strength)
        if inputs.mask_image is not None:
            options["mask_image"] = inputs.mask_image.convert("L").resize((width, height), Image.BILINEAR)
        if inputs.control_image is not None:
            options.update(image=inputs.control_image.convert("RGB").resize((width, height), Image.LANCZOS),
                           controlnet_conditioning_scale=inputs.controlnet_conditioning_scale)
        generators = [seeds.generator(seed) for seed in image_seeds]
        started = time.perf_counter()
        with torch.inference_mode():
            result = pipe(
                prompt=inputs.prompt, negative_prompt=inputs.negative_prompt,
                num_inference_steps=inputs.schedule_steps(), guidance_scale=inputs.guidance_scale,
                num_images_per_prompt=inputs.num_images, generator=generators, **options,
            )
        # The safety checker, where the model has one, blanks each flagged image and flags it; the rest stand.
        nsfw = [bool(flag) for flag in (getattr(result, "nsfw_content_detected", None) or [False] * len(image_seeds))]
        return Generation(inputs, result.images, image_seeds, nsfw, (time.perf_counter() - started) * 1000)
