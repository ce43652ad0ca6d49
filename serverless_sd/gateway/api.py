"""The HTTP routes: POST /start/v4 and /check/v4 (with or without the trailing slash), Banana's fields exactly.

Every failure is HTTP 200 with a message containing "error", as Banana's clients expect.

The key is checked before a body is parsed: from a header (`Authorization: Bearer KEY` or `X-Banana-API-Key`),
or else looked for in the raw bytes, so that a caller without a valid key cannot make the gateway build the
objects of a 32 MB body; parsing itself runs off the event loop, a few bodies at a time.
"""

import asyncio
import hmac
import json
import math
import re
from collections.abc import Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, NamedTuple

import uvicorn
from fastapi import Depends, FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse
from pydantic import BaseModel, Field, ValidationError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import logs, origin
from . import a1111, answers, openai_images
from .answers import Envelope
from .bodies import CheckBody, StartBody
from .config import GatewayConfig, parse_args
from .dispatch import Dispatcher
from .generation import Generations, Refused, bearer_key
from .jobs import QUEUED, RUNNING, Job, owner_of, work
from .stores import QueueFull, open_store
from .webhooks import Webhooks

# Where a body names its key: any "apiKey": "..." in it. Only a filter (the parsed top-level field decides).
API_KEY_IN_BODY = re.compile(rb'"apiKey"\s*:\s*"([^"\\]{0,256})"')
MISSING_KEY = "error: apiKey: required (in the body, or as the header Authorization: Bearer KEY)"
PARSERS = 2  # bodies parsed at once: 8 x 32 MB of JSON objects at once made the gateway unresponsive


PLAYGROUND = (Path(__file__).parent / "playground.html").read_text()
# The page talks only to this gateway; its images are data: URIs.
CSP = ("default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src data: blob:; "
       "connect-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'")


class Health(BaseModel):
    ok: bool
    backends: dict[str, bool]


class Scale(BaseModel):
    """How much work waits for the replicas: the number an autoscaler scales them on (KEDA's metrics-api scaler
    reads `work`). One gateway fronts one model's replicas, so its totals are that model's; the modelKey callers
    send is a credential, never published."""

    work: int = Field(description="jobs queued and running: the replicas worth having, one job each")
    queued: int
    running: int
    replicas: int = Field(description="replicas this gateway knows now (resolved from --backend)")


class ErrorBody(BaseModel):
    error: str


class Sent(NamedTuple):
    """What a route's body dependency hands the route."""

    body: BaseModel
    api_key: str
    inputs: str | None  # modelInputs as JSON text, forwarded to a replica as is


class Rejected(Exception):
    """A request the gateway answers with an error message (and HTTP 200): raised anywhere in a route."""

    @classmethod
    def unknown(cls, call_id: str) -> "Rejected":
        return cls(f"error: callID {call_id[:80]!r} does not exist")


def create_app(config: GatewayConfig) -> FastAPI:
    store = open_store(config.store, config.result_ttl, config.max_queued, config.max_queued_bytes)
    webhooks = Webhooks(config.webhook_hosts,
                        config.webhook_secret.get_secret_value() if config.webhook_secret else None)
    dispatcher = Dispatcher(store, config.backends, config.job_timeout, config.lease, webhooks, config.resolve_every,
                            config.max_tries)
    keys = [key.get_secret_value().encode() for key in config.api_keys]
    parsers = asyncio.Semaphore(PARSERS)
    loopback_listener = config.loopback_only()

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        logs.event("gateway_ready", backends=config.backends, store=config.store.split("@")[-1])
        await dispatcher.start()
        yield
        await dispatcher.stop()
        await store.close()

    app = FastAPI(title="Banana v4 gateway", version="1", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.dispatcher = dispatcher
    app.add_middleware(BodyLimit, limit=config.max_body_bytes)
    app.add_middleware(SameSite, loopback_listener=loopback_listener)
    # OpenAI's and AUTOMATIC1111's APIs: each generation waits out its queue time limit, then its run time limit.
    generations = Generations(dispatcher, config.model_name, 2 * config.job_timeout + 10)

    @app.exception_handler(Rejected)
    @app.exception_handler(QueueFull)
    async def rejected(_: Request, rejection: Exception) -> JSONResponse:
        return JSONResponse(answers.error(str(rejection)))  # HTTP 200, as Banana answered every failure

    @app.exception_handler(Refused)
    async def refused_in_its_apis_shape(request: Request, refused: Refused) -> JSONResponse:
        return _shape(request.url.path)(refused)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException):
        if request.url.path.startswith("/v1/"):  # OpenAI's clients read its error body, whatever went wrong
            response = openai_images.error_response(Refused(error.status_code, str(error.detail)))
            response.headers.update(error.headers or {})  # a 405's Allow
            return response
        return await http_exception_handler(request, error)

    @app.exception_handler(RequestValidationError)
    async def invalid_body(request: Request, error: RequestValidationError) -> JSONResponse:
        first = error.errors()[0] if error.errors() else {"loc": (), "msg": "invalid body"}
        field = ".".join(str(part) for part in first["loc"][1:]) or "body"
        return _shape(request.url.path)(Refused(400, f"{field}: {first['msg']}", field))

    @app.exception_handler(RedisConnectionError)
    @app.exception_handler(RedisTimeoutError)
    async def store_unavailable(_: Request, error: Exception) -> JSONResponse:
        # Still down after the store's own retries (about 15 s): nothing was accepted, so the caller may try again.
        logs.event("store_unavailable", error=type(error).__name__)
        return JSONResponse(answers.error("error: the job store is unavailable, try again shortly"))

    async def parse(request: Request, schema: type[BaseModel]) -> Sent:
        """The body, validated, the key it was sent with (from a header or the body), and its modelInputs as JSON."""
        header_key = header_api_key(request)
        if header_key is not None and not authorized(header_key.encode()):
            raise Rejected("error: invalid apiKey")
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > config.max_body_bytes:
            raise Rejected(f"error: body: larger than {config.max_body_bytes} bytes")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > config.max_body_bytes:
                raise Rejected(f"error: body: larger than {config.max_body_bytes} bytes")
        if header_key is None and keys:
            candidates = API_KEY_IN_BODY.findall(body)[:16]
            if not candidates:
                raise Rejected(MISSING_KEY)
            if not any([authorized(found) for found in candidates]):
                raise Rejected("error: invalid apiKey")
        async with parsers:
            data, inputs = await asyncio.to_thread(_load_json, bytes(body))
        try:
            parsed = schema.model_validate(data)
        except ValidationError as error:
            problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg'].lower()}"
                                 for e in error.errors(include_url=False))
            raise Rejected(f"error: {problems}") from None
        api_key = header_key if header_key is not None else parsed.apiKey
        if api_key is None:
            raise Rejected(MISSING_KEY)
        if header_key is None and not authorized(api_key.encode()):
            raise Rejected("error: invalid apiKey")
        return Sent(parsed, api_key, inputs)

    def authorized(api_key: bytes) -> bool:
        if not keys:
            return True  # only on loopback: parse_args refuses to listen further without keys
        return any([hmac.compare_digest(api_key, key) for key in keys])

    def unauthorized(request: Request) -> JSONResponse | None:
        """The operational routes (/metrics, /healthz, /scale) take the key as a header, like Prometheus' bearer
        auth, and answer 401 without it: monitoring reads status codes, not Banana's envelope."""
        key = header_api_key(request)
        if keys and (key is None or not authorized(key.encode())):
            return JSONResponse(ErrorBody(error="send an API key as Authorization: Bearer KEY").model_dump(),
                                status_code=401)
        return None

    def sent(schema: type[BaseModel]) -> Callable:
        """The dependency that reads a route's body: the key first, then the bounded body, parsed off the loop."""
        async def read(request: Request) -> Sent:
            return await parse(request, schema)
        return read

    def banana(path: str, summary: str, body: type[BaseModel]) -> Callable:
        """POST path and path/ (Banana's clients send both): the body documented from its model (it is read by
        `sent`, not by FastAPI, so that the key is checked first), every answer Banana's envelope."""
        def decorate(endpoint: Callable) -> Callable:
            for route in (path, path + "/"):
                operation = path.strip("/").replace("/", "_") + ("_slash" if route.endswith("/") else "")
                app.post(route, summary=summary, operation_id=operation,
                         responses={200: {"model": Envelope, "description": 'Banana\'s envelope; every failure '
                                                                           'too, its message containing "error"'}},
                         openapi_extra={"requestBody": {"required": True, "content": {
                             "application/json": {"schema": body.model_json_schema()}}}})(endpoint)
            return endpoint
        return decorate

    async def owned(call_id: str, api_key: str) -> Job:
        """The job, if this key started it: any other key is told it does not exist."""
        job = await store.get(call_id)
        if job is None or not hmac.compare_digest(job.owner, owner_of(api_key)):
            raise Rejected.unknown(call_id)
        return job

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def playground() -> HTMLResponse:
        return HTMLResponse(PLAYGROUND, headers={"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff"})

    @app.get("/inputs.json", include_in_schema=False)
    async def inputs_schema():
        """modelInputs as the replicas document them (bounds, defaults, scheduler names): the playground's form
        reads them here instead of keeping a copy."""
        if dispatcher.inputs_schema is None:
            return JSONResponse({"error": "no replica has answered yet"}, status_code=503)
        return dispatcher.inputs_schema

    @app.get("/loras", include_in_schema=False)
    async def loras():
        """The replicas' baked LoRAs (the app's GET /loras), for the playground's picker and any client."""
        if dispatcher.loras is None:
            return JSONResponse({"error": "no replica has answered yet"}, status_code=503)
        return dispatcher.loras

    @app.get("/metrics", include_in_schema=False)
    async def metrics(request: Request):
        if refused := unauthorized(request):
            return refused
        text = dispatcher.metrics.render(await dispatcher.counted(), dispatcher.healthy)
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4")

    @banana("/cancel/v4", "Cancel a queued or running job", CheckBody)
    async def cancel(sent_body: Annotated[Sent, Depends(sent(CheckBody))]) -> dict:
        body, api_key, _ = sent_body
        job = await owned(body.callID, api_key)
        cancelled = await dispatcher.cancel(job)
        if cancelled is None:
            raise Rejected(f"error: callID {body.callID[:80]!r} has already ended ({job.state})")
        answer = answers.job_answer(cancelled, None)
        answer["message"] = "cancelled"
        return answer

    @app.get("/healthz", summary="Which replicas are up", responses={
        200: {"model": Health}, 401: {"model": ErrorBody, "description": "keys are configured and none was sent"}})
    async def healthz(request: Request):
        if refused := unauthorized(request):
            return refused
        return {"ok": True, "backends": dispatcher.healthy}

    @app.get("/scale", summary="The scale signal: jobs queued and running (for KEDA or any autoscaler)", responses={
        200: {"model": Scale}, 401: {"model": ErrorBody, "description": "keys are configured and none was sent"}})
    async def scale(request: Request):
        if refused := unauthorized(request):
            return refused
        counts = await dispatcher.counted()
        return Scale(work=work(counts), queued=counts.get(QUEUED, 0), running=counts.get(RUNNING, 0),
                     replicas=len(dispatcher.healthy))

    @app.get("/livez", summary="The gateway answers (for a liveness probe without a key)")
    async def livez() -> dict:
        """For a liveness probe that carries no key: the event loop answers. Says nothing else."""
        return {"ok": True}

    app.include_router(openai_images.router(generations, authorized, config.model_name))
    app.include_router(a1111.router(generations, authorized, config.model_name))

    @banana("/start/v4", "Start a job (and wait for it unless startOnly)", StartBody)
    async def start(request: Request, sent_body: Annotated[Sent, Depends(sent(StartBody))]) -> dict:
        body, api_key, inputs = sent_body
        if config.model_key and not hmac.compare_digest(body.modelKey.encode(),
                                                        config.model_key.get_secret_value().encode()):
            raise Rejected("error: unknown modelKey")
        if body.webhook and (refusal := webhooks.refusal(body.webhook)):
            raise Rejected(f"error: {refusal}")
        job = await dispatcher.submit(Job(model_key=body.modelKey, owner=owner_of(api_key), webhook=body.webhook),
                                      inputs)
        if not body.startOnly:
            job = await dispatcher.wait(job.call_id, config.sync_timeout, request.is_disconnected)
        answer = answers.job_answer(job, await store.result(job), await store.position(job), await store.progress(job))
        if not job.done:
            answer["message"] = ""  # Banana's start said "" until the call finished
        return answer

    @banana("/check/v4", "A job's state or result (longPoll waits for the end)", CheckBody)
    async def check(request: Request, sent_body: Annotated[Sent, Depends(sent(CheckBody))]) -> dict:
        body, api_key, _ = sent_body
        job = await owned(body.callID, api_key)
        if body.longPoll:
            job = await dispatcher.wait(body.callID, config.long_poll, request.is_disconnected)
        if job is None:  # forgotten (its tombstone lapsed) while we waited
            raise Rejected.unknown(body.callID)
        return answers.job_answer(job, await store.result(job), await store.position(job), await store.progress(job))

    return app


def _shape(path: str) -> Callable[[Refused], JSONResponse]:
    """The error shape of the API a path belongs to."""
    return openai_images.error_response if path.startswith("/v1/") else a1111.error_response


class SameSite:
    """Refuses another site's pages (origin.refusal), and beyond loopback a Host that is not loopback's, before any
    route runs. Plain ASGI, as BodyLimit: Starlette's @app.middleware("http") hides a client's disconnect from the
    route (request.is_disconnected never turns true), which held every long poll whose caller had left to its end."""

    def __init__(self, app, loopback_listener: bool):
        self.app, self.loopback_listener = app, loopback_listener

    async def __call__(self, scope, receive, send):
        refused = scope["type"] == "http" and origin.refusal(Headers(scope=scope), self.loopback_listener)
        if refused:
            return await JSONResponse(answers.error(f"error: {refused}"), status_code=403)(scope, receive, send)
        return await self.app(scope, receive, send)


class BodyLimit:
    """Bounds the bodies FastAPI reads itself (OpenAI's and A1111's routes; Banana's read theirs with a bound):
    past --max-body-bytes, declared or streamed, the answer is 413 in the API's own shape."""

    class TooLarge(Exception):
        pass

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not scope["path"].startswith(("/v1/", "/sdapi/")):
            return await self.app(scope, receive, send)
        refused = Refused(413, f"body: larger than {self.limit} bytes")
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.limit:
            return await _shape(scope["path"])(refused)(scope, receive, send)
        received = 0

        async def bounded():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.limit:
                raise BodyLimit.TooLarge
            return message

        try:
            await self.app(scope, bounded, send)
        except BodyLimit.TooLarge:
            await _shape(scope["path"])(refused)(scope, receive, send)


def header_api_key(request: Request) -> str | None:
    key = bearer_key(request.headers)
    return key if key is not None else request.headers.get("x-banana-api-key")


def _load_json(body: bytes) -> tuple[object, str | None]:
    """A body as JSON that can be sent on as it came: no NaN or infinities (JSON has neither; Python reads both,
    and 1e999 as infinity), no lone surrogates (they cannot be encoded to forward). Returns it, and its modelInputs
    as the JSON text a replica will get: encoding them here, once, is also what checks them."""
    try:
        data = json.loads(body, parse_constant=_not_json, parse_float=_finite)
        text = None
        if isinstance(data, dict) and "modelInputs" in data:
            text = json.dumps(data["modelInputs"], ensure_ascii=False)
            text.encode()
            json.dumps({**data, "modelInputs": None}, ensure_ascii=False).encode()  # the rest: small
        else:
            json.dumps(data, ensure_ascii=False).encode()
    except UnicodeEncodeError:  # a ValueError too: first
        raise Rejected("error: body: a string holds a lone surrogate (\\ud800-\\udfff), which is not text") from None
    except (ValueError, RecursionError):
        raise Rejected("error: body: not valid JSON") from None
    return data, text


def _not_json(constant: str) -> None:
    raise ValueError(f"{constant} is not JSON")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} is beyond a double's range")
    return value


def main(argv: list[str] | None = None) -> None:
    config = parse_args(argv)
    logs.setup()
    uvicorn.run(create_app(config), host=config.host, port=config.port, access_log=False, log_level="warning")
