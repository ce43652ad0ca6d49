"""AUTOMATIC1111's web UI API (/sdapi/v1) on the gateway, for webuiapi, SillyTavern, Open WebUI's Automatic1111
engine, Discord bots and painting-app plugins: txt2img, img2img, sd-models, samplers, options, progress.

Each generation is one job through the same queue as Banana's API. A1111's clients send every option it has; the
ones below are honoured, the others accepted and ignored, except two that would change the image and cannot be
honoured (hires fix, an inverted mask): those are refused. Its usual auth, HTTP basic, carries our API key as the
password (any user name); a bearer key works too. Errors: 422 with FastAPI's `detail` list for a wrong input (as A1111's
own validation answers), 401 with `WWW-Authenticate: Basic`, and A1111's `{"error", "detail", "errors"}` for
the rest.
"""

import base64
import json
import re
import time
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from .. import schedulers
from .generation import Generations, Refused, bearer_key

# modelInputs field -> the A1111 parameter it came from, so that the app's error names what the caller sent.
PARAMS = {"prompt": "prompt", "negative_prompt": "negative_prompt", "num_inference_steps": "steps",
          "guidance_scale": "cfg_scale", "width": "width", "height": "height", "width, height": "width",
          "num_images": "batch_size", "seed": "seed", "scheduler": "sampler_name", "image": "init_images",
          "mask_image": "mask", "strength": "denoising_strength", "clip_skip": "override_settings"}
# A1111's LoRA syntax in the prompt: <lora:name:scale> (a second number, the text encoder's own scale in some
# forks, is not told apart: the first is taken).
LORA_TAG = re.compile(r"<lora:([^:<>]+)(?::(-?\d+(?:\.\d+)?))?(?::-?\d+(?:\.\d+)?)?>")


def lora_tags(prompt: str) -> tuple[str, list[dict]]:
    """The prompt without its <lora:...> tags, and the LoRAs they name, with their scales (1 when not written)."""
    loras = [{"name": name.strip(), "scale": float(scale) if scale else 1.0}
             for name, scale in LORA_TAG.findall(prompt)]
    text = re.sub(r"\s*,(?:\s*,)+", ",", LORA_TAG.sub("", prompt)).strip(" ,\t\n")  # no commas left alone
    return text or prompt, loras


class Txt2Img(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)  # its other options: accepted, ignored (module note)

    prompt: str = Field(min_length=1)
    negative_prompt: str = ""
    steps: int | None = Field(None, description="the model's default when absent")
    cfg_scale: float | None = Field(None, allow_inf_nan=False, description="the model's default when absent")
    width: int = 512
    height: int = 512
    seed: int = Field(-1, description="-1: random")
    sampler_name: str | None = Field(None, description="as GET /sdapi/v1/samplers lists them; absent: the model's")
    sampler_index: str | None = Field(None, description="older clients' sampler_name")
    scheduler: str | None = Field(None, description='"Automatic", or "Karras" with a DPM++ sampler')
    batch_size: int = 1
    n_iter: int = Field(1, description="batches: batch_size x n_iter images, within the app's MAX_IMAGES")
    enable_hr: Literal[False] = Field(False, description="hires fix: not supported")
    override_settings: dict = Field({}, description="CLIP_stop_at_last_layers is read (clip_skip); the rest ignored")


class Img2Img(Txt2Img):
    init_images: list[str] = Field(min_length=1, description="the picture, base64 (the first is used)")
    mask: str | None = Field(None, description="inpainting: white is repainted")
    denoising_strength: float = Field(0.75, allow_inf_nan=False)
    inpainting_mask_invert: Literal[0] = Field(0, description="an inverted mask (1) is not supported")


class ValidationDetail(BaseModel):
    loc: list[str]
    msg: str
    type: str


class Invalid(BaseModel):
    detail: list[ValidationDetail]


class Failure(BaseModel):
    error: str
    detail: str
    body: str
    errors: str


class Detail(BaseModel):
    detail: str


ERRORS = {400: {"model": Detail, "description": "a body that cannot be read"},
          401: {"model": Detail, "description": "no key, or a wrong one (WWW-Authenticate: Basic)"},
          413: {"model": Failure, "description": "a body past --max-body-bytes"},
          422: {"model": Invalid, "description": "a wrong input; `loc` names it"},
          429: {"model": Failure, "description": "the queue is full"}, 500: {"model": Failure, "description":
          "the job failed"}, 503: {"model": Failure, "description": "the job store is unavailable"},
          504: {"model": Failure, "description": "the job did not end in time"}}


class Generated(BaseModel):
    images: list[str] = Field(description="base64 PNG (or the format the app is set to), without a data: prefix")
    parameters: dict
    info: str = Field(description="JSON text: seed, all_seeds, prompt, width, height, sampler_name, ...")


class Sampler(BaseModel):
    name: str
    aliases: list[str]
    options: dict = {}


class SdModel(BaseModel):
    title: str
    model_name: str
    hash: str | None = None
    sha256: str | None = None
    filename: str
    config: str | None = None


class ProgressState(BaseModel):
    skipped: bool = False
    interrupted: bool = False
    job: str = ""
    job_count: int = 0
    job_timestamp: str = "0"
    job_no: int = 0
    sampling_step: int = 0
    sampling_steps: int = 0


class Progress(BaseModel):
    progress: float = Field(description="0 to 1: steps done, as the replica tells them (else estimated from the mean "
                                        "run time of recent jobs)")
    eta_relative: float
    state: ProgressState
    current_image: str | None = None
    textinfo: str | None = None


def error_response(refused: Refused) -> JSONResponse:
    if refused.status == 401:
        return JSONResponse({"detail": refused.message}, status_code=401, headers={"WWW-Authenticate": "Basic"})
    if refused.status == 400:  # a wrong input: 422, as A1111's validation answers
        field = "prompt" if refused.field.startswith("loras") else PARAMS.get(refused.field, refused.field)
        return JSONResponse({"detail": [{"loc": ["body", field], "msg": refused.message, "type": "value_error"}]},
                            status_code=422)
    return JSONResponse({"error": "HTTPException", "detail": refused.message, "body": "", "errors": refused.message},
                        status_code=refused.status)


def router(generations: Generations, authorized, model_name: str) -> APIRouter:
    routes = APIRouter(prefix="/sdapi/v1", tags=["AUTOMATIC1111 API"], responses=ERRORS)

    def api_key(request: Request) -> str:
        authorization = request.headers.get("authorization", "")
        key = request.headers.get("x-banana-api-key", "")
        if authorization[:6].lower() == "basic ":
            try:
                user, _, password = base64.b64decode(authorization[6:].strip()).decode().partition(":")
                key = password or user
            except ValueError:
                key = ""
        elif (bearer := bearer_key(request.headers)) is not None:
            key = bearer
        if not authorized(key.encode()):
            raise Refused(401, "Incorrect username or password: send the gateway's API key as the password")
        return key

    async def generate(request: Request, body: Txt2Img, key: str, inputs: dict) -> Generated:
        prompt, loras = lora_tags(body.prompt)
        inputs |= {"prompt": prompt, "output": "base64", "width": body.width, "height": body.height,
                   "num_images": body.batch_size * body.n_iter, **({"loras": loras} if loras else {})}
        if body.negative_prompt:
            inputs["negative_prompt"] = body.negative_prompt
        if body.steps is not None:
            inputs["num_inference_steps"] = body.steps
        if body.cfg_scale is not None:
            inputs["guidance_scale"] = body.cfg_scale
        clip_skip = body.override_settings.get("CLIP_stop_at_last_layers")
        if clip_skip != 1 and clip_skip is not None:  # 1, A1111's default, is none
            inputs["clip_skip"] = clip_skip
        if body.seed != -1:
            inputs["seed"] = body.seed
        if sampler := body.sampler_name or body.sampler_index:
            scheduler = (body.scheduler or "").strip()
            inputs["scheduler"] = sampler if scheduler.lower() in ("", "automatic") else f"{sampler} {scheduler}"
        answer = await generations.run(inputs, key, request.is_disconnected)
        seeds = answer["seeds"]
        info = {"prompt": body.prompt, "all_prompts": [body.prompt] * len(seeds),
                "negative_prompt": body.negative_prompt, "all_negative_prompts": [body.negative_prompt] * len(seeds),
                "seed": seeds[0], "all_seeds": seeds, "subseed": -1, "all_subseeds": [-1] * len(seeds),
                "width": answer["width"], "height": answer["height"],
                "sampler_name": inputs.get("scheduler", "model default"), "cfg_scale": answer["guidance_scale"],
                "steps": answer["num_inference_steps"], "batch_size": len(seeds), "sd_model_name": model_name,
                "job_timestamp": time.strftime("%Y%m%d%H%M%S"), "infotexts": []}
        return Generated(images=[uri.partition(",")[2] for uri in answer["images"]], info=json.dumps(info),
                         parameters=body.model_dump(exclude={"init_images", "mask"}))

    @routes.post("/txt2img", summary="Text to image (AUTOMATIC1111's API)")
    async def txt2img(request: Request, body: Txt2Img, key: Annotated[str, Depends(api_key)]) -> Generated:
        return await generate(request, body, key, {})

    @routes.post("/img2img", summary="Image to image, or inpainting with a mask (AUTOMATIC1111's API)")
    async def img2img(request: Request, body: Img2Img, key: Annotated[str, Depends(api_key)]) -> Generated:
        inputs = {"image": body.init_images[0], "strength": body.denoising_strength}
        if body.mask:
            inputs["mask_image"] = body.mask
        return await generate(request, body, key, inputs)

    @routes.get("/sd-models", summary="The model this gateway serves")
    async def sd_models(_: Annotated[str, Depends(api_key)]) -> list[SdModel]:
        return [SdModel(title=model_name, model_name=model_name, filename=model_name)]

    @routes.get("/samplers", summary="The samplers, by AUTOMATIC1111's names")
    async def samplers(_: Annotated[str, Depends(api_key)]) -> list[Sampler]:
        return [Sampler(name=name, aliases=[schedulers.canonical(name)]) for name in schedulers.A1111_SPELLINGS]

    @routes.get("/options", summary="The options A1111's clients read")
    async def options(_: Annotated[str, Depends(api_key)]) -> dict:
        return {"sd_model_checkpoint": model_name, "samples_format": "png", "sd_checkpoint_hash": None}

    @routes.get("/progress", summary="Progress of the caller's latest job: its steps, and a preview where the "
                                     "replicas make them")
    async def progress(key: Annotated[str, Depends(api_key)]) -> Progress:
        job = await generations.latest_job(key)
        if job is None or job.done:
            return Progress(progress=0.0, eta_relative=0.0, state=ProgressState())
        told = await generations.dispatcher.store.progress(job)
        if told:
            preview = told.get("preview")
            return Progress(progress=round(told["step"] / told["total_steps"], 3), eta_relative=told["eta_s"] or 0.0,
                            current_image=preview.partition(",")[2] if preview else None,
                            state=ProgressState(job=job.call_id, job_count=1, sampling_step=told["step"],
                                                sampling_steps=told["total_steps"]))
        mean = generations.dispatcher.metrics.mean_run_s()
        elapsed = time.time() - job.started if job.started else 0.0
        fraction = min(0.99, elapsed / mean) if mean and job.started else 0.0
        return Progress(progress=round(fraction, 3), eta_relative=round(max(0.0, (mean or 0.0) - elapsed), 2),
                        state=ProgressState(job=job.call_id, job_count=1))

    return routes
