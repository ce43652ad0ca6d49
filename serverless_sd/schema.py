"""modelInputs: one typed schema. Every error names its field and says why, in words a caller can act on."""

import secrets
from dataclasses import dataclass
from typing import Any, Literal

from pydantic_core import PydanticCustomError
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

SEED_LIMIT = 2**64


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

    @property
    def pixel_budget(self) -> int:
        # The model's own size is always admitted, whatever MAX_PIXELS says.
        return max(self.max_pixels, self.native_width * self.native_height)


class InputError(ValueError):
    """A caller's mistake: `errors` lists (field, message) pairs."""

    def __init__(self, errors: list[tuple[str, str]]):
        self.errors = errors
        super().__init__("; ".join(f"{field}: {message}" for field, message in errors))


class GenerateInputs(BaseModel):
    """Text-to-image inputs. Strict types: "512" is not a width, true is not a step count."""

    model_config = ConfigDict(strict=True, extra="forbid", populate_by_name=True, frozen=True)

    prompt: str = Field(min_length=1)
    negative_prompt: str | None = Field(None, validation_alias=AliasChoices("negative_prompt", "negative"))
    width: int | None = None
    height: int | None = None
    num_inference_steps: int = Field(25, ge=1)
    guidance_scale: float = Field(7.0, ge=0, le=30, allow_inf_nan=False)
    seed: int | None = Field(None, ge=0, lt=SEED_LIMIT)
    num_images: int = Field(1, ge=1, validation_alias=AliasChoices("num_images", "num_images_per_prompt"))
    output_format: Literal["png", "jpeg", "webp"] = "png"

    @field_validator("prompt", "negative_prompt")
    @classmethod
    def _prompt_length(cls, value: str | None, info: ValidationInfo) -> str | None:
        limit = _limits(info).max_prompt_chars
        if value is not None and len(value) > limit:
            raise ValueError(f"at most {limit} characters (got {len(value)})")
        return value

    @field_validator("width", "height")
    @classmethod
    def _side(cls, value: int | None, info: ValidationInfo) -> int | None:
        limits = _limits(info)
        if value is None:
            return None
        if value % 8:
            raise ValueError(f"must be a multiple of 8 (got {value}; try {max(64, round(value / 8) * 8)})")
        if not 64 <= value <= limits.max_side:
            raise ValueError(f"must be between 64 and {limits.max_side} (got {value})")
        return value

    @field_validator("num_inference_steps")
    @classmethod
    def _steps(cls, value: int, info: ValidationInfo) -> int:
        limit = _limits(info).max_steps
        if value > limit:
            raise ValueError(f"at most {limit} (got {value})")
        return value

    @field_validator("num_images")
    @classmethod
    def _images(cls, value: int, info: ValidationInfo) -> int:
        limit = _limits(info).max_images
        if value > limit:
            raise ValueError(f"at most {limit} (got {value})")
        return value

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
        return self.width or limits.native_width, self.height or limits.native_height

    def seeds(self) -> list[int]:
        """One seed per image; image i regenerates alone from seeds[i]."""
        if self.seed is None:
            return [secrets.randbits(64) for _ in range(self.num_images)]
        return [(self.seed + i) % SEED_LIMIT for i in range(self.num_images)]


def _limits(info: ValidationInfo) -> Limits:
    return info.context["limits"]


def parse(body: Any, limits: Limits) -> GenerateInputs:
    """Validate a request's modelInputs, raising InputError with every problem found."""
    if not isinstance(body, dict):
        raise InputError([("modelInputs", f"must be a JSON object, not {_json_type(body)}")])
    try:
        return GenerateInputs.model_validate(body, context={"limits": limits})
    except ValidationError as error:
        raise InputError([_describe(e) for e in error.errors()]) from None


def _describe(error: dict) -> tuple[str, str]:
    field = ".".join(str(part) for part in error["loc"]) or "modelInputs"
    kind = error["type"]
    if kind == "extra_forbidden":
        known = ", ".join(sorted(GenerateInputs.model_fields))
        return field, f"unknown field (known fields: {known})"
    if kind == "missing":
        return field, "required"
    if kind == "pixel_budget":
        return "width, height", error["msg"]
    if kind == "literal_error" and isinstance(error.get("input"), str):
        return field, f"{error['msg'][0].lower()}{error['msg'][1:]} (got {error['input'][:20]!r})"
    if kind in ("int_type", "float_type", "string_type", "bool_type", "literal_error", "int_from_float"):
        return field, f"{error['msg'][0].lower()}{error['msg'][1:]} (got {_json_type(error.get('input'))})"
    message = error["msg"].removeprefix("Value error, ")
    return field, message[0].lower() + message[1:]


def _json_type(value: Any) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", int: "a number", float: "a number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)
