"""The app's contract, declared once: modelInputs (every error names its field and says why, in words a caller can
act on), the answer and the error body. Validation and the OpenAPI document both derive from these models."""

import os
import re
import secrets
from dataclasses import dataclass, fields
from typing import Annotated, Any, Literal

from PIL import Image
from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from . import families, fetching, images, prompts, schedulers

SEED_LIMIT = 2**64
HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+(/[\w./-]+\.safetensors)?$")  # owner/repo, or owner/repo/file.safetensors
MIN_STRENGTH = 0.01  # one step at this strength takes a 100-step schedule; schedulers stop at 1000
OPERATOR_LIMITS = {"num_inference_steps": "max_steps", "num_images": "max_images"}  # field -> Limits attribute


def hub_endpoint() -> str:
    """Where hub ids are fetched from at run time: Hugging Face, or the mirror HF_ENDPOINT names."""
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")


@dataclass(frozen=True)
class Limits:
    """What one request may ask of the loaded model: the operator's bounds plus the model's native size."""

    native_width: int
    native_height: int
    max_pixels: int
    max_side: int
    max_steps: int
    max_images: int
    max_prompt_chars: int
    max_input_pixels: int
    max_image_bytes: int
    controlnet: bool = False
    inpainting_only: bool = False  # an inpainting checkpoint: its UNet needs image and mask_image
    family: str = "sd"  # families.Family.name: what the model can take follows
    default_steps: int = 25
    default_guidance_scale: float = 7.0
    guidance: bool = True  # False: a guidance-distilled model (FLUX.1-schnell, the turbos) takes guidance_scale <= 1
    size_multiple: int = 8  # each side a multiple of it: 16 for SD 3 and FLUX.1 (whole latent patches)
    clip_layers: int = 12  # the layers of the model's shallowest CLIP text encoder (0: not a CLIP-only model)
    max_loras: int = 4
    loras: tuple[str, ...] = ()  # the baked LoRAs' names
    lora_hosts: str = ""  # the hosts LoRAs may be fetched from at run time (fetching.Allowed)
    image_hosts: str = ""  # the hosts input images may be fetched from, by URL
    image_fetch_timeout_s: float = 10
    bucket: bool = False  # S3_BUCKET set: images may be answered as URLs (output "url", the default then)

    @property
    def flow_matching(self) -> bool:
        return self.model_family.flow_matching

    @property
    def negative_prompt(self) -> bool:
        return self.model_family.negative_prompt

    @property
    def model_family(self) -> families.Family:
        return families.named(self.family)

    @classmethod
    def from_settings(cls, settings: Any, **model: Any) -> "Limits":
        """The operator's bounds as Settings holds them (same names), plus what the loaded model says."""
        bounds = {f.name: getattr(settings, f.name) for f in fields(cls) if f.name.startswith("max_")}
        return cls(**bounds, lora_hosts=settings.lora_hosts, image_hosts=settings.image_hosts,
                   image_fetch_timeout_s=settings.image_fetch_timeout_s, bucket=bool(settings.s3_bucket), **model)

    @property
    def lora_allowed(self) -> fetching.Allowed:
        return fetching.Allowed.parse(self.lora_hosts)

    @property
    def image_allowed(self) -> fetching.Allowed:
        return fetching.Allowed.parse(self.image_hosts)

    @property
    def pixel_budget(self) -> int:
        # The model's own size is always admitted, whatever MAX_PIXELS says.
        return max(self.max_pixels, self.native_width * self.native_height)


class InputError(ValueError):
    """A caller's mistake: `errors` lists (field, message) pairs."""

    def __init__(self, errors: list[tuple[str, str]]):
        self.errors = errors
        super().__init__("; ".join(f"{field}: {message}" for field, message in errors))


OutputFormat = Literal["png", "jpeg", "webp"]
Mode = Literal["txt2img", "img2img", "inpaint", "controlnet"]
DataUri = Annotated[str, Field(pattern=r"^data:image/(png|jpeg|webp);base64,")]

# On the wire an image is text; the validator below decodes it.
InputImage = Annotated[Image.Image, WithJsonSchema({
    "type": "string", "description": "a PNG, JPEG or WebP image: a data:image/...;base64 URI, plain base64, or an "
                                     "https:// URL on a host the deployment allows (IMAGE_HOSTS)"})]


class LoraChoice(BaseModel):
    """One LoRA and its scale: by name (baked into the image, or a hub id fetched at run time) or by URL."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    name: str | None = Field(None, min_length=1, max_length=200, description="a baked LoRA's name (GET /loras "
                             "lists them), or a hub id fetched at run time: owner/repo[/file.safetensors]")
    url: str | None = Field(None, min_length=1, max_length=2000, description="a .safetensors file's https:// URL, "
                            "fetched at run time from the hosts this deployment allows")
    scale: float = Field(1.0, ge=-4, le=4, allow_inf_nan=False, description="0: as if not sent")

    @field_validator("name")
    @classmethod
    def _known(cls, value: str | None, info: ValidationInfo) -> str | None:
        limits = _limits(info)
        if value is None or value in limits.loras:
            return value
        baked = ", ".join(limits.loras[:20]) or "none"
        if "/" not in value:
            raise ValueError(f"unknown LoRA {value[:60]!r} (this deployment has: {baked})")
        if not HUB_ID.match(value):
            raise ValueError("a hub id is owner/repo or owner/repo/file.safetensors")
        hub = hub_endpoint()
        if limits.lora_allowed.refusal(hub):
            raise ValueError(f"{value[:60]!r} is neither baked (this deployment has: {baked}) nor fetchable: this "
                             f"deployment fetches nothing from {hub} (its operator's LORA_HOSTS)")
        return value

    @field_validator("url")
    @classmethod
    def _allowed(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None and (reason := _limits(info).lora_allowed.refusal(value)):
            raise ValueError(reason)
        return value

    @model_validator(mode="after")
    def _one_source(self) -> "LoraChoice":
        if (self.name is None) == (self.url is None):
            raise _field_error("name", "send either name or url")
        return self


class GenerateInputs(BaseModel):
    """Text-to-image inputs. Strict types: "512" is not a width, true is not a step count, 512.5 is not a size."""

    model_config = ConfigDict(strict=True, extra="forbid", populate_by_name=True, frozen=True,
                              arbitrary_types_allowed=True)

    prompt: str = Field(min_length=1)
    negative_prompt: str | None = Field(None, validation_alias=AliasChoices("negative_prompt", "negative"))
    width: int | None = None
    height: int | None = None
    # Both always given by _model_defaults: the model's own defaults, which the app's OpenAPI document states.
    num_inference_steps: int = Field(25, ge=1)
    guidance_scale: float = Field(7.0, ge=0, le=30, allow_inf_nan=False)
    seed: int | None = Field(None, ge=0, lt=SEED_LIMIT)
    num_images: int = Field(1, ge=1, validation_alias=AliasChoices("num_images", "num_images_per_prompt"))
    output_format: OutputFormat = "png"
    output: Literal["base64", "url"] | None = Field(None, description='"base64": images in the answer as data URIs; '
                                                    '"url": stored in the deployment\'s bucket (S3_BUCKET) and '
                                                    'answered as URLs. Default: "url" where a bucket is configured')
    clip_skip: int | None = Field(None, ge=1, description="AUTOMATIC1111's Clip skip: 1 = CLIP's last layer (as none "
                                  "given), 2 = its penultimate, ... up to its layer count (SD 1.x/2.x and SDXL)")
    scheduler: Annotated[str | None, WithJsonSchema({"anyOf": [{"enum": schedulers.names()}, {"type": "null"}],
                                                     "description": "case-insensitive"})] = None
    # The mode follows from the images given: image (img2img), image + mask_image (inpainting), control_image.
    image: InputImage | None = None
    mask_image: InputImage | None = None
    strength: float = Field(0.8, ge=MIN_STRENGTH, le=1, allow_inf_nan=False)
    control_image: InputImage | None = None
    controlnet_conditioning_scale: float = Field(1.0, ge=0, le=2, allow_inf_nan=False)
    loras: list[LoraChoice] = Field(default_factory=list, description="LoRAs fused for this request, each at its "
                                    "scale (at most MAX_LORAS)")

    @model_validator(mode="before")
    @classmethod
    def _model_defaults(cls, data: Any, info: ValidationInfo) -> Any:
        # The model's defaults (families.defaults), and validated: a default steps past a lower MAX_STEPS is not run.
        if isinstance(data, dict):
            return {**default_values(_limits(info)), **data}
        return data

    @field_validator("width", "height", "num_inference_steps", "seed", "num_images", "clip_skip", mode="before")
    @classmethod
    def _integral(cls, value: Any) -> Any:
        # JSON does not tell 512 from 512.0 (JavaScript cannot even write the latter) and JSON Schema calls both an
        # integer: so is it here. 512.5 stays a number that is not an integer.
        return int(value) if isinstance(value, float) and value.is_integer() else value

    @field_validator("image", "mask_image", "control_image", mode="before")
    @classmethod
    def _decode(cls, value: Any, info: ValidationInfo) -> Image.Image | None:
        if value is None:
            return None
        if not isinstance(value, str):
            raise ValueError(f"must be a base64 string, a data URI or a URL (got {_json_type(value)})")
        limits = _limits(info)
        if value.startswith(("https://", "http://")):  # fetched now, from the hosts IMAGE_HOSTS lists only
            raw = fetching.fetch_bytes(value, limits.image_allowed, limits.max_image_bytes,
                                       limits.image_fetch_timeout_s)
            return images.from_bytes(raw, limits.max_input_pixels)
        return images.decode(value, limits.max_image_bytes, limits.max_input_pixels)

    @field_validator("scheduler")
    @classmethod
    def _scheduler(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return None
        family = _limits(info).model_family
        name = schedulers.canonical(value, family.flow_matching)
        if name is None:
            known = schedulers.known_names(family.flow_matching)
            raise ValueError(f"unknown scheduler {value[:40]!r} (known: {known})")
        if not schedulers.applies(name, family.flow_matching):
            kind = "a flow-matching model" if family.flow_matching else "not a flow-matching model"
            raise ValueError(f"{value[:40]!r} does not apply to this model ({family.title}, {kind}); its schedulers: "
                             f"{schedulers.known_names(family.flow_matching)}")
        return value

    @field_validator("prompt", "negative_prompt")
    @classmethod
    def _prompt_length(cls, value: str | None, info: ValidationInfo) -> str | None:
        limits = _limits(info)
        if value is not None and len(value) > limits.max_prompt_chars:
            raise ValueError(f"at most {limits.max_prompt_chars} characters (got {len(value)})")
        if value and limits.model_family.clip_prompts:
            prompts.weighted(value)  # raises PromptSyntaxError (a ValueError) saying where
        return value

    @field_validator("width", "height")
    @classmethod
    def _side(cls, value: int | None, info: ValidationInfo) -> int | None:
        limits = _limits(info)
        if value is None:
            return None
        step = limits.size_multiple
        if value % step:
            raise ValueError(f"must be a multiple of {step} (got {value}; try {max(64, round(value / step) * step)})")
        if not 64 <= value <= limits.max_side:
            raise ValueError(f"must be between 64 and {limits.max_side} (got {value})")
        return value

    @field_validator("loras")
    @classmethod
    def _lora_count(cls, value: list[LoraChoice], info: ValidationInfo) -> list[LoraChoice]:
        limit = _limits(info).max_loras
        if len(value) > limit:
            raise ValueError(f"at most {limit} LoRAs per request (got {len(value)})" if limit else
                             "this deployment takes no LoRAs (its operator's MAX_LORAS is 0)")
        return value

    @field_validator("num_inference_steps", "num_images")
    @classmethod
    def _operator_limit(cls, value: int, info: ValidationInfo) -> int:
        limit = getattr(_limits(info), OPERATOR_LIMITS[info.field_name])
        if value > limit:
            raise ValueError(f"at most {limit} (got {value})")
        return value

    @model_validator(mode="after")
    def _mode(self, info: ValidationInfo) -> "GenerateInputs":
        given = self.model_fields_set
        if self.mask_image is not None and self.image is None:
            raise _field_error("mask_image", "needs image: the picture whose white-masked part is repainted")
        if "strength" in given and self.image is None:
            raise _field_error("strength", "applies only with image (img2img or inpainting)")
        if self.control_image is not None and self.image is not None:
            raise _field_error("control_image", "cannot be combined with image; send one or the other")
        if _limits(info).inpainting_only and (self.image is None or self.mask_image is None):
            raise _field_error("image" if self.image is None else "mask_image",
                               "this deployment's model is an inpainting model: send image and mask_image")
        if self.control_image is not None and not _limits(info).controlnet:
            raise _field_error("control_image", "this deployment has no ControlNet (its operator sets CONTROLNET_ID)")
        if "controlnet_conditioning_scale" in given and self.control_image is None:
            raise _field_error("controlnet_conditioning_scale", "applies only with control_image")
        limits = _limits(info)
        if self.negative_prompt and not limits.negative_prompt:
            raise _field_error("negative_prompt", f"this model ({limits.model_family.title}) takes no negative "
                                                  "prompt: it is guidance-distilled; say in the prompt what the image "
                                                  "should show")
        if self.clip_skip is not None and not limits.model_family.clip_prompts:
            raise _field_error("clip_skip", f"applies to SD 1.x/2.x and SDXL, whose prompts CLIP alone reads; this "
                                            f"model is {limits.model_family.title}")
        if self.clip_skip is not None and self.clip_skip > limits.clip_layers:
            raise _field_error("clip_skip", f"at most {limits.clip_layers}, the layers of this model's text encoder "
                                            f"(got {self.clip_skip})")
        if self.output == "url" and not limits.bucket:
            raise _field_error("output", 'this deployment stores no images (its operator sets S3_BUCKET): send '
                                         '"base64" or leave output out')
        if self.guidance_scale > 1 and not limits.guidance:
            raise _field_error("guidance_scale", "this model is guidance-distilled (FLUX.1-schnell, a turbo model) "
                                                 "and takes no guidance: leave guidance_scale out, or send 0")
        return self

    @property
    def mode(self) -> Mode:
        if self.control_image is not None:
            return "controlnet"
        if self.image is None:
            return "txt2img"
        return "inpaint" if self.mask_image is not None else "img2img"

    @model_validator(mode="after")
    def _pixel_budget(self, info: ValidationInfo) -> "GenerateInputs":
        limits = _limits(info)
        width, height = self.size(limits)
        if width * height > limits.pixel_budget:
            raise PydanticCustomError(
                "pixel_budget",
                "{width}x{height} is {pixels} pixels, over the budget of {budget} pixels per image",
                {"width": width, "height": height, "pixels": width * height, "budget": limits.pixel_budget},
            )
        return self

    def size(self, limits: Limits) -> tuple[int, int]:
        """width and height when given; else the input image's size made usable (images.fit); else native."""
        source = self.image or self.control_image
        if source is not None:
            default = images.fit(source.size, limits.pixel_budget, limits.max_side, limits.size_multiple)
        else:
            default = (limits.native_width, limits.native_height)
        return self.width or default[0], self.height or default[1]

    def schedule_steps(self) -> int:
        """The schedule's length. img2img and inpainting run its last num_inference_steps x strength steps; where
        that is under one, the schedule is lengthened until one step runs, at the strength asked for (as
        AUTOMATIC1111 runs at least one)."""
        steps = self.num_inference_steps
        if self.image is not None:
            while int(steps * self.strength) < 1:
                steps += 1
        return steps

    def seeds(self) -> list[int]:
        """One seed per image; image i regenerates alone from seeds[i]."""
        if self.seed is None:
            return [secrets.randbits(64) for _ in range(self.num_images)]
        return [(self.seed + i) % SEED_LIMIT for i in range(self.num_images)]


class Answer(BaseModel):
    """What POST / answers: every image as a data URI (image_base64: the first, the original template's field), or,
    with output "url", as URLs in the deployment's bucket instead."""

    image_base64: str | None = Field(None, description="the first image: a data:image/...;base64 URI (plain base64 "
                                                       "with IMAGE_BASE64=plain); absent with output url")
    images: list[DataUri] | None = Field(None, min_length=1, description="every image; absent with output url")
    image_urls: list[str] | None = Field(None, min_length=1, description='with output "url": every image\'s URL')
    urls_expire_at: int | None = Field(None, description="with output url: when the (presigned) URLs stop working, "
                                                         "unix seconds; absent for public URLs (S3_PUBLIC_URL)")
    seed: int = Field(ge=0, lt=SEED_LIMIT, description="the first image's seed")
    seeds: list[int] = Field(description="each image's own seed: image i regenerates alone from seeds[i]")
    nsfw: list[bool] = Field(description="per image: flagged (and blanked) by the model's safety checker")
    mode: Mode
    family: Literal[families.NAMES] = Field(description="the model's family: " + ", ".join(
        f"{family.name} ({family.title})" for family in families.FAMILIES))
    width: int
    height: int
    num_inference_steps: int
    guidance_scale: float
    output_format: OutputFormat
    loras: list[LoraChoice] = Field(default_factory=list, description="the LoRAs used, as sent")
    timings: dict[str, float] = Field(description="inference_ms, encode_ms, total_ms")


class FieldError(BaseModel):
    field: str
    message: str


class ErrorBody(BaseModel):
    """Every answer that is not 200: what went wrong; for a wrong input (422), each field at fault."""

    error: str
    errors: list[FieldError] | None = None


def default_values(limits: Limits) -> dict[str, Any]:
    """What a request that leaves them out gets: the model's defaults, within the operator's MAX_STEPS."""
    return {"num_inference_steps": min(limits.default_steps, limits.max_steps),
            "guidance_scale": limits.default_guidance_scale}


def _limits(info: ValidationInfo) -> Limits:
    return info.context["limits"]


def _field_error(field: str, message: str) -> PydanticCustomError:
    return PydanticCustomError("mode", "{field}: {message}", {"field": field, "message": message})


def parse(body: Any, limits: Limits) -> GenerateInputs:
    """Validate a request's modelInputs, raising InputError with every problem found."""
    if not isinstance(body, dict):
        raise InputError([("modelInputs", f"must be a JSON object, not {_json_type(body)}")])
    try:
        return GenerateInputs.model_validate(body, context={"limits": limits})
    except ValidationError as error:
        raise InputError([_describe(e) for e in error.errors()]) from None


def aliases() -> dict[str, str]:
    """Each other name a field answers to (negative: negative_prompt), as the model declares it."""
    return {alias: name for name, field in GenerateInputs.model_fields.items()
            if isinstance(field.validation_alias, AliasChoices)
            for alias in field.validation_alias.choices if alias != name}


def _describe(error: dict) -> tuple[str, str]:
    field = ".".join(str(part) for part in error["loc"]) or "modelInputs"
    kind = error["type"]
    if kind == "extra_forbidden" and field in aliases():
        return field, f"the same field as {aliases()[field]}: send one of the two"
    if kind == "extra_forbidden":
        model = LoraChoice if error["loc"][0] == "loras" else GenerateInputs
        known = ", ".join(sorted(model.model_fields))
        return field, f"unknown field (known fields: {known})"
    if kind == "missing":
        return field, "required"
    if kind == "pixel_budget":
        return "width, height", error["msg"]
    if kind == "mode":  # named by the model validator: a field of the model at loc (loras.0.name)
        return ".".join([*(str(part) for part in error["loc"]), error["ctx"]["field"]]), error["ctx"]["message"]
    if kind == "literal_error" and isinstance(error.get("input"), str):
        return field, f"{error['msg'][0].lower()}{error['msg'][1:]} (got {error['input'][:20]!r})"
    if kind == "list_type":  # JSON's word for it
        return field, f"must be an array (got {_json_type(error.get('input'))})"
    if kind == "model_type":
        return field, f"must be an object (got {_json_type(error.get('input'))})"
    if kind in ("int_type", "float_type", "string_type", "bool_type", "literal_error", "int_from_float"):
        return field, f"{error['msg'][0].lower()}{error['msg'][1:]} (got {_json_type(error.get('input'))})"
    message = error["msg"].removeprefix("Value error, ")
    return field, message[0].lower() + message[1:]


def _json_type(value: Any) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", int: "a number",
             float: "a number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)
