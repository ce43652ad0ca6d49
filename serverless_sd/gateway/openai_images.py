"""OpenAI's Images API on the gateway, for the `openai` SDK and the tools built on it (Open WebUI, LibreChat, LiteLLM):
POST /v1/images/generations, POST /v1/images/edits (multipart), GET /v1/models.

Each call is one job through the same queue as Banana's API. The key comes as `Authorization: Bearer KEY`. Errors
are OpenAI's body, `{"error": {"message", "type", "param", "code"}}`, with its status codes, so that the SDK raises
its own typed exceptions (BadRequestError, AuthenticationError, NotFoundError, RateLimitError) with our message.
"""

import base64
import io
import re
import time
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, File, Form, Request, UploadFile
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from .generation import Generations, Refused, bearer_key

OWNER = "sd-serverless-template"
# OpenAI's own image models: tools hard-wired to one (LibreChat's DALL-E 3 tool) get the served model.
OPENAI_MODELS = ("dall-e-2", "dall-e-3", "gpt-image-1")
# modelInputs field -> the OpenAI parameter it came from, so that the app's error names what the caller sent.
PARAMS = {"prompt": "prompt", "num_images": "n", "width": "size", "height": "size", "width, height": "size",
          "output_format": "output_format", "image": "image", "mask_image": "mask", "output": "response_format"}
ERROR_TYPES = {400: "invalid_request_error", 401: "invalid_request_error", 404: "invalid_request_error",
               413: "invalid_request_error", 429: "rate_limit_exceeded"}
MAX_MASK_PIXELS = 4096 * 4096
MASK = "PNG with transparency where the image is repainted (OpenAI's convention); without alpha, white repaints"
SIZE = re.compile(r"^(\d{2,5})x(\d{2,5})$")

Size = Annotated[str | None, Field(description='"WIDTHxHEIGHT" (multiples of 8) or "auto": the model\'s own size')]
ResponseFormat = Annotated[Literal["b64_json", "url"] | None, Field(
    description="b64_json (the default here); url needs object storage, which this gateway does not have")]


class ImageGeneration(BaseModel):
    """POST /v1/images/generations. `quality`, `style`, `background`, `moderation`, `output_compression` and
    `user` are accepted and ignored: the model has no such settings."""

    model_config = ConfigDict(extra="forbid", strict=True)

    prompt: str = Field(min_length=1)
    model: str | None = None
    n: int = 1
    size: Size = None
    response_format: ResponseFormat = None
    output_format: Literal["png", "jpeg", "webp"] | None = None
    quality: str | None = None
    style: str | None = None
    background: str | None = None
    moderation: str | None = None
    output_compression: int | None = None
    user: str | None = None


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorBody(BaseModel):
    error: ErrorDetail


ERRORS = {status: {"model": ErrorBody, "description": description} for status, description in (
    (400, "a wrong input; `param` names it"), (401, "no key, or a wrong one"), (404, "a model this gateway does "
    "not serve"), (413, "a body past --max-body-bytes"), (429, "the queue is full"), (500, "the job failed"),
    (503, "the job store is unavailable"), (504, "the job did not end in time"))}


class ImageData(BaseModel):
    b64_json: str | None = None
    url: str | None = None


class ImagesResponse(BaseModel):
    created: int
    data: list[ImageData]
    output_format: str
    size: str


class Model(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = 0
    owned_by: str = OWNER


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Model]


def error_response(refused: Refused) -> JSONResponse:
    code = {401: "invalid_api_key", 404: "model_not_found"}.get(refused.status)
    body = {"error": {"message": refused.message, "type": ERROR_TYPES.get(refused.status, "server_error"),
                      "param": refused.field, "code": code}}
    return JSONResponse(body, status_code=refused.status)


def router(generations: Generations, authorized, model_name: str) -> APIRouter:
    routes = APIRouter(prefix="/v1", tags=["OpenAI Images API"], responses=ERRORS)

    def api_key(request: Request) -> str:
        key = bearer_key(request.headers) or ""
        if not authorized(key.encode()):
            raise Refused(401, "Incorrect API key provided: send the gateway's API key as Authorization: Bearer KEY")
        return key

    def model_inputs(prompt: str, model: str | None, n: int, size: str | None, response_format: str | None) -> dict:
        if model is not None and model != model_name and model not in OPENAI_MODELS:
            raise Refused(404, f"The model {model[:80]!r} does not exist: this gateway serves {model_name!r}", "model")
        # url: the replicas store the images in their bucket (S3_BUCKET); without one they refuse, naming output.
        inputs: dict[str, Any] = {"prompt": prompt, "num_images": n,
                                  "output": "url" if response_format == "url" else "base64"}
        if size not in (None, "auto"):
            if not (match := SIZE.match(size)):
                raise Refused(400, f"size must be WIDTHxHEIGHT, such as 512x512, or auto (got {size[:20]!r})", "size")
            inputs["width"], inputs["height"] = int(match[1]), int(match[2])
        return inputs

    async def generate(request: Request, inputs: dict, key: str) -> ImagesResponse:
        try:
            answer = await generations.run(inputs, key, request.is_disconnected)
        except Refused as refused:
            refused.field = PARAMS.get(refused.field, refused.field)
            raise
        return ImagesResponse(created=int(time.time()), output_format=answer["output_format"],
                              size=f"{answer['width']}x{answer['height']}",
                              data=[ImageData(url=url) for url in answer["image_urls"]] if "image_urls" in answer else
                          [ImageData(b64_json=uri.partition(",")[2]) for uri in answer["images"]])

    @routes.post("/images/generations", summary="Create images from a prompt (OpenAI's Images API)")
    async def generations_route(request: Request, body: ImageGeneration,
                                key: Annotated[str, Depends(api_key)]) -> ImagesResponse:
        inputs = model_inputs(body.prompt, body.model, body.n, body.size, body.response_format)
        if body.output_format:
            inputs["output_format"] = body.output_format
        return await generate(request, inputs, key)

    @routes.post("/images/edits", summary="Edit an image: inpainting with a mask, img2img without (multipart)")
    async def edits_route(request: Request, key: Annotated[str, Depends(api_key)],
                          image: Annotated[UploadFile, File(description="PNG, JPEG or WebP")],
                          prompt: Annotated[str, Form(min_length=1)],
                          mask: Annotated[UploadFile | None, File(description=MASK)] = None,
                          model: Annotated[str | None, Form()] = None, n: Annotated[int, Form()] = 1,
                          size: Annotated[str | None, Form()] = None,
                          response_format: Annotated[str | None, Form()] = None) -> ImagesResponse:
        inputs = model_inputs(prompt, model, n, size, response_format)
        inputs["image"] = base64.b64encode(await image.read()).decode()
        if mask is not None:
            inputs["mask_image"] = _repaint_where_transparent(await mask.read())
        return await generate(request, inputs, key)

    @routes.get("/models", summary="The model this gateway serves")
    async def models_route(_: Annotated[str, Depends(api_key)]) -> ModelList:
        return ModelList(data=[Model(id=model_name)])

    return routes


def _repaint_where_transparent(mask: bytes) -> str:
    """OpenAI's mask marks with transparency what to repaint; the app's, with white. A mask without an alpha
    channel is taken as the app's own (white repaints)."""
    from PIL import Image, UnidentifiedImageError  # the one route that needs Pillow loads it

    try:
        with Image.open(io.BytesIO(mask)) as opened:
            if opened.width * opened.height > MAX_MASK_PIXELS:  # read from the header, before any pixel
                raise Refused(400, f"mask: more than {MAX_MASK_PIXELS} pixels", "mask")
            converted = (opened.getchannel("A").point(lambda alpha: 255 if alpha < 128 else 0)
                         if "A" in opened.getbands() else opened.convert("L"))
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError):
        raise Refused(400, "mask: not a PNG, JPEG or WebP image", "mask") from None
    buffer = io.BytesIO()
    converted.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()
