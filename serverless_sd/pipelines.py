"""The Stable Diffusion pipeline: loaded once, then one generation per request, one generator per image."""

import time
from dataclasses import dataclass

import torch
from diffusers import AutoPipelineForText2Image, DiffusionPipeline
from PIL import Image

from . import images, weights
from .cuda_graphs import CudaGraphed
from .schema import GenerateInputs, Limits
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
    inference_ms: float

    def answer(self) -> dict:
        started = time.perf_counter()
        uris = [images.to_data_uri(image, self.inputs.output_format) for image in self.images]
        width, height = self.images[0].size
        return {
            "image_base64": uris[0],
            "images": uris,
            "seed": self.seeds[0],
            "seeds": self.seeds,
            "width": width,
            "height": height,
            "num_inference_steps": self.inputs.num_inference_steps,
            "guidance_scale": self.inputs.guidance_scale,
            "output_format": self.inputs.output_format,
            "timings": {
                "inference_ms": round(self.inference_ms, 1),
                "encode_ms": round((time.perf_counter() - started) * 1000, 1),
            },
        }


class StableDiffusion:
    """One loaded pipeline (SD 1.x, 2.x or SDXL: AutoPipeline picks the class from model_index.json)."""

    def __init__(self, pipe: DiffusionPipeline, settings: Settings):
        self.pipe = pipe
        self.device = pipe.device
        native = pipe.unet.config.sample_size * pipe.vae_scale_factor
        self.limits = Limits(
            native_width=native, native_height=native, max_pixels=settings.max_pixels, max_side=settings.max_side,
            max_steps=settings.max_steps, max_images=settings.max_images, max_prompt_chars=settings.max_prompt_chars,
        )

    @classmethod
    def load(cls, settings: Settings) -> "StableDiffusion":
        folder = weights.locate(settings.model_id, settings.models_dir)
        device = choose_device(settings.device)
        pipe = AutoPipelineForText2Image.from_pretrained(
            folder, dtype=choose_dtype(settings.dtype, device), variant=weights.local_variant(folder),
            local_files_only=True, device_map=device.type,  # weights go straight to the GPU, no CPU copy first
        )
        pipe.set_progress_bar_config(disable=True)
        model = cls(pipe, settings)
        if settings.compile:
            model.compile()
        elif device.type == "cuda" and settings.cuda_graphs:
            pipe.unet.forward = CudaGraphed(pipe.unet.forward)
        if device.type == "cuda":
            model.warm_up()
        return model

    def compile(self) -> None:
        """COMPILE=1: torch.compile the UNet and the VAE decoder, with CUDA graphs. The first call at each new
        size or batch compiles again (a minute or more); the warm-up at init compiles the native size, batch 1."""
        self.pipe.unet.fuse_qkv_projections()
        self.pipe.unet.to(memory_format=torch.channels_last)
        self.pipe.vae.to(memory_format=torch.channels_last)
        self.pipe.unet = torch.compile(self.pipe.unet, mode="reduce-overhead", fullgraph=True)
        self.pipe.vae.decode = torch.compile(self.pipe.vae.decode, mode="reduce-overhead", fullgraph=True)

    def warm_up(self) -> None:
        """Run the native size once at init, so that the first caller does not pay for CUDA's and cuDNN's set-up,
        the CUDA graph's capture (second call) or the compile: three steps."""
        self.generate(GenerateInputs.model_validate(
            {"prompt": "warm-up", "num_inference_steps": 3, "seed": 0}, context={"limits": self.limits}))

    def generate(self, inputs: GenerateInputs) -> Generation:
        width, height = inputs.size(self.limits)
        seeds = inputs.seeds()
        # CPU generators: the same seed gives the same image on any GPU or CPU.
        generators = [torch.Generator("cpu").manual_seed(seed) for seed in seeds]
        started = time.perf_counter()
        with torch.inference_mode():
            result = self.pipe(
                prompt=inputs.prompt, negative_prompt=inputs.negative_prompt, width=width, height=height,
                num_inference_steps=inputs.num_inference_steps, guidance_scale=inputs.guidance_scale,
                num_images_per_prompt=inputs.num_images, generator=generators,
            )
        return Generation(inputs, result.images, seeds, (time.perf_counter() - started) * 1000)
