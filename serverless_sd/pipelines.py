"""The Stable Diffusion pipeline: loaded once, then one generation per request, one generator per image."""

import inspect
import itertools
import json
import time
from collections.abc import Callable
from dataclasses import dataclass

import diffusers
import numpy as np
import torch
from diffusers import (
    AutoPipelineForImage2Image,
    AutoPipelineForInpainting,
    AutoPipelineForText2Image,
    DiffusionPipeline,
)
from PIL import Image

from . import families, images, logs, prompts, schedulers, seeds, weights
from .cold_start import COLD_START
from .compiled import Cache, Compiled, allow_variants, fuse_projections
from .cuda_graphs import CudaGraphed
from .families import Family, FamilyError
from .loras import Library as LoraLibrary
from .previews import Previewer
from .progress import Tracker
from .schema import Answer, GenerateInputs, InputError, Limits, parse
from .settings import Settings, SettingsError
from .storage import Bucket


def choose_device(setting: str) -> torch.device:
    if setting == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("DEVICE=cuda but no CUDA device is visible")
    return torch.device("cuda" if setting != "cpu" and torch.cuda.is_available() else "cpu")


def choose_dtype(setting: str, device: torch.device, family: Family) -> torch.dtype:
    if setting != "auto":
        return getattr(torch, setting)
    if device.type == "cuda":
        return torch.bfloat16 if family.bf16 else torch.float16
    # bf16 halves memory traffic and runs on AVX-512-BF16/AMX units; without them it is slower than fp32.
    return torch.bfloat16 if torch.ops.mkldnn._is_mkldnn_bf16_supported() else torch.float32


@dataclass
class Generation:
    inputs: GenerateInputs
    family: str
    images: list[Image.Image]
    seeds: list[int]
    nsfw: list[bool]
    inference_ms: float

    def answer(self, bucket: Bucket | None = None) -> dict:
        """The answer: the images encoded once, as data URIs or, stored in the bucket, as URLs (StorageError if the
        bucket refuses them)."""
        started = time.perf_counter()
        output_format = self.inputs.output_format
        encoded = [images.encode(image, output_format) for image in self.images]
        timings = {"inference_ms": round(self.inference_ms, 1),
                   "encode_ms": round((time.perf_counter() - started) * 1000, 1)}
        if bucket is not None and self.inputs.output != "base64":  # "url", the default where a bucket is
            started = time.perf_counter()
            stored = bucket.store(encoded, output_format)
            where = {"image_urls": stored.urls, "urls_expire_at": stored.expires_at}
            timings["store_ms"] = round((time.perf_counter() - started) * 1000, 1)
        else:
            uris = [images.data_uri(data, output_format) for data in encoded]
            where = {"image_base64": uris[0], "images": uris}
        width, height = self.images[0].size
        answer = Answer(
            **where, seed=self.seeds[0], seeds=self.seeds, nsfw=self.nsfw,
            mode=self.inputs.mode, family=self.family, width=width, height=height,
            num_inference_steps=self.inputs.num_inference_steps, guidance_scale=self.inputs.guidance_scale,
            output_format=output_format, loras=self.inputs.loras, timings=timings,
        )
        return answer.model_dump(exclude={name for name in OUTPUT_FIELDS if getattr(answer, name) is None})


OUTPUT_FIELDS = ("image_base64", "images", "image_urls", "urls_expire_at")  # absent, not null, where not answered


class StableDiffusion:
    """One loaded model (SD 1.x/2.x, SDXL, SD 3 or FLUX.1: AutoPipeline picks the class from model_index.json), and
    a pipeline per mode sharing its weights (diffusers' from_pipe): txt2img, img2img, inpaint, and controlnet when
    loaded. What differs between the families is read from families.Family."""

    def __init__(self, pipe: DiffusionPipeline, settings: Settings, family: Family, controlnet=None,
                 previewer: Previewer | None = None):
        self.pipe = pipe
        self.family = family
        self.controlnet = controlnet
        self.model_scheduler = pipe.scheduler  # never run: each request gets a fresh scheduler built from it
        self.warm_ups: list[GenerateInputs] = []  # planned at load (plan_warm_ups), run on the serving thread
        self.compiled: list[Compiled] = []
        self.compile_cache: Cache | None = None
        self.offload_device: torch.device | None = None  # CPU_OFFLOAD: the device each model moves to while it runs
        self.offloaded_mode: str | None = None
        self.encoder = prompts.Encoder(pipe) if family.clip_prompts else None  # weights, long prompts, clip_skip
        self.loras = LoraLibrary(pipe, settings)
        self.progress = Tracker(previewer, settings.preview_every)
        self.bucket = Bucket.configured(settings)
        denoiser = family.denoiser_of(pipe)
        # An inpainting checkpoint's UNet also reads the mask and the masked picture (9 channels, not 4): it can
        # only inpaint, and the others modes are refused with a 422 (Limits.inpainting_only).
        inpainting_only = family.denoiser == "unet" and denoiser.config.in_channels == 9
        self.modes = {"inpaint": AutoPipelineForInpainting.from_pipe(pipe)}
        if not inpainting_only:
            self.modes |= {"txt2img": pipe, "img2img": AutoPipelineForImage2Image.from_pipe(pipe)}
        if controlnet is not None and not inpainting_only:
            self.modes["controlnet"] = AutoPipelineForText2Image.from_pipe(pipe, controlnet=controlnet)
        # The safety checker (SD 1.x/2.x checkpoints that ship one) runs here, once, on the images a mode returns:
        # a pipeline's own turns its images into PIL images for the checker, then again for its answer.
        self.safety = (getattr(pipe, "safety_checker", None), getattr(pipe, "feature_extractor", None))
        for mode in self.modes.values():
            mode.set_progress_bar_config(disable=True)
            if self.safety[0] is not None:
                mode.safety_checker = None
        # The VAE decodes a batch one image at a time: the same images, a quarter of the peak memory for 4 (SDXL's
        # fp32 decoder, 4 images at 1024x1024: near 12 GiB at once), for a few milliseconds each.
        if hasattr(pipe.vae, "use_slicing"):
            pipe.vae.enable_slicing()
        # Which inputs each mode's pipeline takes (SDXL's img2img takes no size; SD 3's ControlNet: control_image).
        self.takes = {name: set(inspect.signature(mode.__call__).parameters) for name, mode in self.modes.items()}
        native = (getattr(pipe, "default_sample_size", None) or denoiser.config.sample_size) * pipe.vae_scale_factor
        model_defaults = families.defaults(family, settings.model_id, denoiser.config, settings.default_steps,
                                           settings.default_guidance_scale)
        self.limits = Limits.from_settings(
            settings, native_width=native, native_height=native, controlnet="controlnet" in self.modes,
            inpainting_only=inpainting_only, family=family.name, default_steps=model_defaults.steps,
            default_guidance_scale=model_defaults.guidance_scale, guidance=model_defaults.guidance,
            size_multiple=size_multiple(family, pipe), clip_layers=self.encoder.layers if self.encoder else 0,
            loras=tuple(self.loras.baked))

    @classmethod
    def load(cls, settings: Settings, compile_backend: str | Callable = "inductor") -> "StableDiffusion":
        """compile_backend: torch.compile's, with COMPILE=1 (the tests' "eager" traces and guards as inductor does,
        without its code generation's minutes)."""
        folder = weights.locate(settings.model_id, settings.model_places, safety_checker=settings.safety_checker,
                                drop_t5=settings.drop_t5)
        family = families.of(folder)
        device = choose_device(settings.device)
        if device.type == "cuda":  # the context, made while the weights' reading goes on (cold_start.py)
            with COLD_START.phase("cuda_init"):
                torch.cuda.init()
                torch.empty(1, device=device)
        dtype = choose_dtype(settings.dtype, device, family)
        declared = families.components(folder)
        left_out = {}
        if "safety_checker" in declared and not settings.safety_checker:
            left_out |= {"safety_checker": None, "requires_safety_checker": False}
        if settings.drop_t5:
            if "text_encoder_3" not in declared:
                raise FamilyError(f"DROP_T5=1 applies to SD 3 models; this one is {family.title}, which needs its "
                                  "text encoders")
            left_out |= {"text_encoder_3": None, "tokenizer_3": None}
        if settings.controlnet_id:  # checked before anything loads: a wrong kind is a message, not a minute's wait
            controlnet_folder = weights.locate(settings.controlnet_id, settings.model_places, one_model=True,
                                               variable="CONTROLNET_ID")
            kind = json.loads((controlnet_folder / "config.json").read_text()).get("_class_name")
            if kind != family.controlnet:
                raise FamilyError(f"CONTROLNET_ID {settings.controlnet_id!r} is a {kind}: a {family.title} model "
                                  f"takes a {family.controlnet}")
        # bf16 on a CPU runs its convolutions faster in channels_last (oneDNN); fp32 on a CPU and eager CUDA run
        # slower (BENCHMARKS.md). To get there with one copy of each weight, not two, the weights load as they are
        # stored (memory-mapped) and are converted once, to bf16 and channels_last together.
        nhwc = device.type == "cpu" and dtype == torch.bfloat16
        stored = weights.stored_dtypes if nhwc else lambda _: {}
        # Weights go straight to the GPU, no CPU copy first; with CPU_OFFLOAD they stay in CPU memory.
        placement = "cpu" if settings.cpu_offload else device.type
        COLD_START.wait_for_weights()
        built = time.perf_counter()
        pipe = AutoPipelineForText2Image.from_pretrained(
            folder, dtype={"default": dtype, **stored(folder)}, variant=weights.local_variant(folder),
            local_files_only=True, use_safetensors=True,
            device_map=placement,
            **left_out,
        )
        controlnet = None
        if settings.controlnet_id:
            controlnet = getattr(diffusers, family.controlnet).from_pretrained(
                controlnet_folder, dtype=stored(controlnet_folder).get("", dtype),
                variant=weights.local_variant(controlnet_folder), local_files_only=True, use_safetensors=True,
                device_map=placement)
        if dtype == torch.float16 and family.vae_upcast and pipe.vae.config.force_upcast:
            vae_in_bf16(pipe.vae)
        previewer = Previewer.load(settings, family, pipe.vae.config.latent_channels, device, dtype)
        model = cls(pipe, settings, family, controlnet, previewer)
        if nhwc:
            model.to(dtype, torch.channels_last)
        if settings.cpu_offload:
            # Hooks move each model to the device as it runs, so a weight's address changes between calls: nothing
            # can be captured or compiled around it.
            model.offload_device = device
            logs.event("cpu_offload", compile=False, cuda_graphs=False)
        else:
            graphs = device.type == "cuda" and settings.cuda_graphs
            denoiser = family.denoiser_of(pipe)
            if settings.compile:
                if settings.compile_cache:
                    model.compile_cache = Cache(settings.compile_cache)
                    model.compile_cache.use()
                model.compile(compile_backend, fallback=CudaGraphed(denoiser.forward) if graphs else denoiser.forward)
            elif graphs:
                denoiser.forward = CudaGraphed(denoiser.forward)
        # COMPILE=1 compiles at the warm-up, whatever WARM_UP says: a request must never wait for a compile.
        wanted = settings.compile or settings.warm_up == "on" or (settings.warm_up == "auto" and device.type == "cuda")
        model.warm_ups = model.plan_warm_ups(settings) if wanted else []
        if model.compiled:
            allow_variants(len(model.warm_ups))
        COLD_START.note("build_modules", time.perf_counter() - built)
        return model

    def compile(self, backend: str | Callable, fallback: Callable) -> None:
        """COMPILE=1: torch.compile the denoiser (UNet or transformer) and the VAE decoder, with CUDA graphs; each
        variant is compiled at the warm-up, and afterwards what is not covered runs `fallback` in the denoiser's
        place (its CUDA graphs, or itself) and the VAE decoder as it is (compiled.py). QKV projections fused where
        the family's fused attention is exact (Family.fuse_qkv)."""
        denoiser = self.family.denoiser_of(self.pipe)
        if self.family.fuse_qkv and hasattr(denoiser, "fuse_qkv_projections"):
            fuse_projections(denoiser)
        vae = self.pipe.vae
        self.compiled = [Compiled(self.family.denoiser, denoiser.forward, fallback, backend),
                         Compiled("vae_decode", vae.decode, vae.decode, backend)]
        denoiser.forward, vae.decode = self.compiled

    def plan_warm_ups(self, settings: Settings) -> list[GenerateInputs]:
        """What the warm-up generates: the native size, one image; with COMPILE=1, each of COMPILE_SIZES (default:
        the native size) with each of COMPILE_IMAGES, the variants compiled ahead. Validated as requests are (an
        operator's size the model cannot take stops the app at start, naming it). Three steps (or MAX_STEPS, if
        fewer), in the mode the model serves by default (an inpainting model's is inpainting), with the model's
        default guidance."""
        native = (self.limits.native_width, self.limits.native_height)
        sizes, counts = [native], [1]
        if settings.compile:
            sizes, counts = settings.compile_size_list() or sizes, settings.compile_image_counts()
        plan = []
        for (width, height), count in itertools.product(sizes, counts):
            inputs = {"prompt": "a", "num_inference_steps": min(3, self.limits.max_steps), "seed": 0,
                      "width": width, "height": height, "num_images": count}
            if self.limits.inpainting_only:
                inputs |= {"image": images.to_data_uri(Image.new("RGB", (width, height)), "png"),
                           "mask_image": images.to_data_uri(Image.new("L", (width, height), 255), "png")}
            try:
                plan.append(parse(inputs, self.limits))
            except InputError as error:
                raise SettingsError(f"COMPILE_SIZES, COMPILE_IMAGES: {width}x{height} with {count} image(s) is not a "
                                    f"request this model takes ({error})") from None
        return plan

    def to(self, dtype: torch.dtype, memory_format: torch.memory_format) -> None:
        """Every module, shared by every mode, in dtype; memory_format applies to 4-D weights (convolutions)."""
        for module in [*self.pipe.components.values(), self.controlnet]:
            if isinstance(module, torch.nn.Module):
                module.to(dtype, memory_format=memory_format)

    def warm_up(self) -> bool:
        """Run the planned warm-ups (WARM_UP, by default on CUDA only; COMPILE=1), so that the first caller does not
        pay for CUDA's and cuDNN's set-up, the CUDA graph's capture (second call) or a compile; then seal the compiled
        functions. Called on the thread that will serve the requests: cuBLAS and cuDNN handles, and CUDA graph
        trees, are per thread."""
        for inputs in self.warm_ups:
            self.generate(inputs)
        for compiled in self.compiled:
            compiled.seal()
        if self.compile_cache:
            self.compile_cache.report()
        return bool(self.warm_ups)

    def flagged(self, images: list[Image.Image]) -> list[bool]:
        """Which images the safety checker flags (none where the model has none), from the images themselves."""
        checker, extractor = self.safety
        if checker is None:
            return [False] * len(images)
        parameter = next(checker.parameters())
        clip_input = extractor(images, return_tensors="pt").pixel_values.to(parameter.device, parameter.dtype)
        with torch.inference_mode():
            _, flags = checker(images=[np.asarray(image) for image in images], clip_input=clip_input)
        return [bool(flag) for flag in flags]

    def generate(self, inputs: GenerateInputs, request_id: str = "") -> Generation:
        """One request's images; its progress published (GET /progress) under request_id while they are made."""
        width, height = inputs.size(self.limits)
        self.progress.begin(request_id, (width, height))
        try:
            return self._generate(inputs, width, height)
        finally:
            self.progress.end()

    def _generate(self, inputs: GenerateInputs, width: int, height: int) -> Generation:
        self.loras.apply(inputs.loras)  # fused into the shared weights: every mode sees them
        image_seeds = inputs.seeds()
        pipe = self.modes[inputs.mode]
        takes = self.takes[inputs.mode]
        pipe.scheduler = schedulers.build(inputs.scheduler, self.model_scheduler, self.family.flow_matching)
        # Pipelines that take no size (SD's and SDXL's img2img) take it from the image: every input image is resized
        # to the output's size.
        options = {"width": width, "height": height} if "width" in takes else {}
        if inputs.image is not None:
            options.update(image=inputs.image.convert("RGB").resize((width, height), Image.LANCZOS),
                           strength=inputs.strength)
        if inputs.mask_image is not None:
            options["mask_image"] = inputs.mask_image.convert("L").resize((width, height), Image.BILINEAR)
        if inputs.control_image is not None:
            control = inputs.control_image.convert("RGB").resize((width, height), Image.LANCZOS)
            options.update({"control_image" if "control_image" in takes else "image": control,
                            "controlnet_conditioning_scale": inputs.controlnet_conditioning_scale})
        if self.offload_device is not None and self.offloaded_mode != inputs.mode:
            # The hooks chain this mode's models in its order (a ControlNet joins it), so each mode sets its own.
            pipe.enable_model_cpu_offload(device=self.offload_device)
            self.offloaded_mode = inputs.mode
        generators = [seeds.generator(seed) for seed in image_seeds]
        started = time.perf_counter()
        # Some pipelines also draw from the global generator (SD 3's ControlNet samples the control image's latents
        # without the request's generator): seeded from the request's seed, such images reproduce too.
        device = pipe._execution_device  # where the models run, offloaded or not
        with torch.random.fork_rng([device] if device.type == "cuda" else [], device_type=device.type), \
                torch.inference_mode():
            torch.manual_seed(image_seeds[0])
            # SD 1.x/2.x and SDXL: weights, long prompts and clip_skip (prompts.Encoder); SD 3 and FLUX.1 read text.
            text = self.encoder(inputs.prompt, inputs.negative_prompt, inputs.clip_skip) if self.encoder else {
                "prompt": inputs.prompt, "negative_prompt": inputs.negative_prompt or None}
            result = pipe(
                **text, num_inference_steps=inputs.schedule_steps(), guidance_scale=inputs.guidance_scale,
                num_images_per_prompt=inputs.num_images, generator=generators, **options,
                callback_on_step_end=self.progress.step, callback_on_step_end_tensor_inputs=["latents"],
            )
        # The safety checker blanks each image it flags, and flags it; the rest stand.
        nsfw = self.flagged(result.images)
        made = [Image.new("RGB", im.size) if flag else im for im, flag in zip(result.images, nsfw, strict=True)]
        return Generation(inputs, self.family.name, made, image_seeds, nsfw,
                          (time.perf_counter() - started) * 1000)


def vae_in_bf16(vae: torch.nn.Module) -> None:
    """SDXL's VAE overflows in float16, so its pipelines cast it to float32 and back around every decode and encode
    (about 335 MB of weights reallocated each time, twice the decode's memory; under COMPILE=1, new addresses
    re-record the decoder's graph). bfloat16 has float32's range: the VAE is served in it, cast once, and what reaches
    it (float16 latents, images) is cast on its way in."""
    vae.to(torch.bfloat16)
    vae.register_to_config(force_upcast=False)

    def to_bf16(module, args):
        return tuple(a.to(torch.bfloat16) if torch.is_tensor(a) and a.is_floating_point() else a for a in args)

    for entry in (vae.encoder, vae.post_quant_conv, vae.decoder):
        if entry is not None:
            entry.register_forward_pre_hook(to_bf16)


def size_multiple(family: Family, pipe: DiffusionPipeline) -> int:
    """What each side must be a multiple of: whole latent patches, the VAE's scale factor times SD 3's patch size or
    FLUX.1's 2x2 packing (16 for both); at least 8."""
    patch = {"sd3": getattr(pipe, "patch_size", 1), "flux": 2}.get(family.name, 1)
    return max(8, pipe.vae_scale_factor * patch)
