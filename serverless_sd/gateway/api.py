"""The HTTP routes: POST /start/v4 and /check/v4 (with or without the trailing slash), Banana's fields exactly.

Every failure is HTTP 200 with a message containing "error", as Banana's clients expect.
"""

import hmac
import json
from contextlib import asynccontextmanager
from pathlib import Path

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse
from pydantic import BaseModel, ValidationError
from redis.exceptions import ConnectionError as RedisConnectionError, TimeoutError as RedisTimeoutError

from .. import logs, openapi
from . import answers
from .bodies import CheckBody, StartBody
from .config import GatewayConfig, parse_args
from .dispatch import Dispatcher
from .jobs import Job
from .stores import open_store
from .webhooks import Webhooks


PLAYGROUND = (Path(__file__).parent / "playground.html").read_text()
# The page talks only to this gateway; its images are data: URIs.
CSP = ("default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src data: blob:; "
       "connect-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'")


class Rejected(Exception):
    """A request the gateway answers with an error message (and HTTP 200): raised anywhere in a route."""

    @classmethod
    def unknown(cls, call_id: str) -> "Rejected":
        return cls(f"error: callID {call_id[:80]!r} does not exist")


def create_app(config: GatewayConfig) -> FastAPI:
    store = open_store(config.store)
    webhooks = Webhooks(config.webhook_hosts,
                        config.webhook_secret.get_secret_value() if config.webhook_secret else None)
    dispatcher = Dispatcher(store, config.backends, config.job_timeout, config.lease, config.result_ttl, webhooks)

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        logs.event("gateway_ready", backends=config.backends, store=config.store.split("@")[-1])
        await dispatcher.start()
        yield
        await dispatcher.stop()
        await store.close()

    app = FastAPI(title="Banana v4 gateway", lifespan=lifespan, docs_url=None, redoc_url=None)
    document = openapi.gateway_document()
    app.openapi = lambda: document  # served at /openapi.json: FastAPI cannot see bodies parsed by hand
    app.state.dispatcher = dispatcher

    @app.exception_handler(Rejected)
    async def rejected(_: Request, rejection: Rejected) -> JSONResponse:
        return JSONResponse(answers.error(str(rejection)))  # HTTP 200, as Banana answered every failure

    @app.exception_handler(RedisConnectionError)
    @app.exception_handler(RedisTimeoutError)
    async def store_unavailable(_: Request, error: Exception) -> JSONResponse:
        # Still down after the store's own retries (about 15 s): nothing was accepted, so the caller may try again.
        logs.event("store_unavailable", error=type(error).__name__)
        return JSONResponse(answers.error("error: the job store is unavailable, try again shortly"))

    async def parse(request: Request, schema: type[BaseModel]) -> BaseModel:
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > config.max_body_bytes:
            raise Rejected(f"error: body: larger than {config.max_body_bytes} bytes")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > config.max_body_bytes:
                raise Rejected(f"error: body: larger than {config.max_body_bytes} bytes")
        try:
            data = json.loads(body, parse_constant=_not_json)
        except (ValueError, RecursionError):
            raise Rejected("error: body: not valid JSON") from None
        try:
            parsed = schema.model_validate(data)
        except ValidationError as error:
            problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg'].lower()}"
                                 for e in error.errors(include_url=False))
            raise Rejected(f"error: {problems}") from None
        if not authorized(parsed.apiKey):
            raise Rejected("error: invalid apiKey")
        return parsed

    def authorized(api_key: str) -> bool:
        if not config.api_keys:
            return True  # only on loopback: parse_args refuses to listen further without keys
        matches = [hmac.compare_digest(api_key.encode(), key.get_secret_value().encode()) for key in config.api_keys]
        return any(matches)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def playground() -> HTMLResponse:
        return HTMLResponse(PLAYGROUND, headers={"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff"})

    @app.get("/metrics", response_class=PlainTextResponse, include_in_schema=False)
    async def metrics() -> PlainTextResponse:
        text = dispatcher.metrics.render(await store.counts(), dispatcher.healthy)
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4")

    @app.post("/cancel/v4")
    @app.post("/cancel/v4/", include_in_schema=False)
    async def cancel(request: Request) -> dict:
        body = await parse(request, CheckBody)
        job = await store.get(body.callID)
        if job is None:
            raise Rejected.unknown(body.callID)
        cancelled = await dispatcher.cancel(job)
        if cancelled is None:
            raise Rejected(f"error: callID {body.callID[:80]!r} has already ended ({job.state})")
        answer = answers.job_answer(cancelled)
        answer["message"] = "cancelled"
        return answer

    @app.get("/healthz")
    async def healthz() -> dict:
        return {"ok": True, "backends": dispatcher.healthy}

    @app.post("/start/v4")
    @app.post("/start/v4/", include_in_schema=False)
    async def start(request: Request) -> dict:
        body = await parse(request, StartBody)
        if config.model_key and not hmac.compare_digest(body.modelKey.encode(),
                                                        config.model_key.get_secret_value().encode()):
            raise Rejected("error: unknown modelKey")
        if body.webhook and (refusal := webhooks.refusal(body.webhook)):
            raise Rejected(f"error: {refusal}")
        job = await dispatcher.submit(Job(model_key=body.modelKey, inputs=body.modelInputs, webhook=body.webhook))
        if not body.startOnly:
            job = await dispatcher.wait(job.call_id, config.sync_timeout, request.is_disconnected)
        answer = answers.job_answer(job, await store.position(job))
        if not job.done:
            answer["message"] = ""  # Banana's start said "" until the call finished
        return answer

    @app.post("/check/v4")
    @app.post("/check/v4/", include_in_schema=False)
    async def check(request: Request) -> dict:
        body = await parse(request, CheckBody)
        job = await dispatcher.wait(body.callID, config.long_poll if body.longPoll else 0, request.is_disconnected)
        if job is None:
            raise Rejected.unknown(body.callID)
        return answers.job_answer(job, await store.position(job))

    return app


def _not_json(constant: str) -> None:
    # Python's json reads NaN and Infinity; JSON has neither, so neither could be sent on to a replica.
    raise ValueError(f"{constant} is not JSON")


def main(argv: list[str] | None = None) -> None:
    config = parse_args(argv)
    logs.setup()
    uvicorn.run(create_app(config), host=config.host, port=config.port, access_log=False, log_level="warning")
