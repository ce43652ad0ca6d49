"""Every environment variable and build argument the app reads, typed and bounded, in one place."""

import os
import tempfile
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, SecretStr, ValidationError, field_validator

from .fetching import Allowed

REPO_ROOT = Path(__file__).resolve().parent.parent


class SettingsError(ValueError):
    """Settings that parse but do not fit the model loaded: the app stops at start with this message."""


class Settings(BaseModel):
    """Read from the environment variable of the same name in upper case (MODEL_ID, PORT, ...)."""

    model_id: str = Field("prompthero/openjourney-v4", min_length=1)
    controlnet_id: str = ""
    safety_checker: bool = True
    models_dir: Path = REPO_ROOT / "models"
    # A host's cache of hub models, searched after MODELS_DIR: RunPod's cached models (the hub cache's own layout).
    cached_models_dir: Path = Path("/runpod-volume/huggingface-cache/hub")
    hf_token: SecretStr | None = None
    host: str = "0.0.0.0"
    port: int = Field(8000, ge=1, le=65535)
    device: Literal["auto", "cuda", "cpu"] = "auto"
    dtype: Literal["auto", "float16", "bfloat16", "float32"] = "auto"
    compile: bool = False
    # COMPILE=1 compiles these at the warm-up, and nothing after (compiled.py): sizes as WIDTHxHEIGHT (default: the
    # model's native size), each with each number of images; anything else runs on the CUDA-graph path.
    compile_sizes: str = Field("", pattern=r"^\s*(\d+x\d+\s*(,\s*\d+x\d+\s*)*)?$")
    compile_images: str = Field("1", pattern=r"^\s*\d+\s*(,\s*\d+\s*)*$")
    compile_cache: Path | None = None  # a folder that keeps compiled code between starts (compiled.Cache)
    cuda_graphs: bool = True
    warm_up: Literal["auto", "on", "off"] = "auto"  # auto: on CUDA, where the first request would pay set-up
    # The model's defaults for a request that leaves them out; unset: the model card's (families.defaults).
    default_steps: int | None = Field(None, ge=1)
    default_guidance_scale: float | None = Field(None, ge=0, le=30)
    drop_t5: bool = False  # SD 3 without its T5 text encoder: 9.5 GB less, prompts followed less closely
    cpu_offload: bool = False  # each model onto the GPU only while it runs: the last resort on a small card
    # LoRAs (loras.py): baked at build from LORA_IDS into LORAS_DIR (default: MODELS_DIR/loras); fetched at run time
    # only from the hosts LORA_HOSTS lists (fetching.py), into LORA_CACHE_DIR.
    lora_ids: str = ""
    loras_dir: Path | None = None
    max_loras: int = Field(4, ge=0)  # per request; 0: LoRAs off
    lora_hosts: str = ""
    max_lora_bytes: int = Field(1 << 30, ge=1024)
    lora_cache_dir: Path = Path(tempfile.gettempdir()) / "sd-serverless-loras"
    lora_cache_bytes: int = Field(8 << 30, ge=1024)
    lora_memory_bytes: int = Field(2 << 30, ge=0)
    fetch_timeout_s: float = Field(60, gt=0)
    # Input images by URL (image, mask_image, control_image): fetched only from the hosts IMAGE_HOSTS lists.
    image_hosts: str = ""
    image_fetch_timeout_s: float = Field(10, gt=0)
    # Progress (GET /progress, relayed by the gateway): a preview every PREVIEW_EVERY steps (0: none), decoded by a
    # tiny autoencoder, PREVIEW_DECODER (default: the family's TAESD), baked at build when PREVIEW_EVERY is set.
    preview_every: int = Field(0, ge=0)
    preview_decoder: str = ""
    preview_side: int = Field(256, ge=32, le=1024)
    # Images out to an S3-compatible bucket (storage.py): answered as URLs, presigned for S3_URL_EXPIRES_S unless
    # S3_PUBLIC_URL says where the bucket is served. Credentials: boto3's own (AWS_ACCESS_KEY_ID, ... or a role).
    s3_bucket: str = ""
    s3_endpoint_url: str = ""
    s3_region: str = ""
    s3_prefix: str = ""
    s3_url_expires_s: int = Field(3600, ge=1, le=7 * 24 * 3600)  # S3's own bound for a presigned URL: 7 days
    s3_public_url: str = ""
    log_prompts: bool = False
    # "plain": image_base64 without its data:image/...;base64, prefix, as the original template's clients decode it.
    image_base64: Literal["data_uri", "plain"] = "data_uri"
    stuck_after_s: float = Field(600, gt=0)  # GET /healthz fails once one request has run this long
    max_pixels: int = Field(1024 * 1024, ge=64 * 64)
    max_side: int = Field(2048, ge=64)
    max_steps: int = Field(150, ge=1)
    max_images: int = Field(4, ge=1)
    max_prompt_chars: int = Field(4000, ge=1)
    max_input_pixels: int = Field(4096 * 4096, ge=64 * 64)
    max_image_bytes: int = Field(16 * 1024 * 1024, ge=1024)
    max_body_bytes: int = Field(32 * 1024 * 1024, ge=1024)

    @field_validator("lora_hosts", "image_hosts")
    @classmethod
    def _allow_list(cls, value: str) -> str:
        Allowed.parse(value)  # raises, naming the entry
        return value

    def compile_size_list(self) -> list[tuple[int, int]]:
        return [tuple(int(side) for side in size.strip().split("x")) for size in self.compile_sizes.split(",")
                if size.strip()]

    def compile_image_counts(self) -> list[int]:
        return [int(count) for count in self.compile_images.split(",")]

    @property
    def loras_folder(self) -> Path:
        return self.loras_dir or self.models_dir / "loras"

    @property
    def model_places(self) -> tuple[Path, Path]:
        """Where a MODEL_ID (or CONTROLNET_ID, PREVIEW_DECODER) is looked for: what download.py baked in, then the
        host's cached models."""
        return (self.models_dir, self.cached_models_dir)

    @classmethod
    def from_env(cls) -> "Settings":
        values = {name: os.environ[name.upper()] for name in cls.model_fields if os.environ.get(name.upper())}
        try:
            return cls.model_validate(values)
        except ValidationError as error:
            problems = "; ".join(f"{e['loc'][0]}".upper() + f": {e['msg']}" for e in error.errors())
            raise SystemExit(f"invalid environment: {problems}") from None
