"""Potassium, served without its known defects (see docs/api.md, "What we changed in Potassium's behaviour").

- an exception in a handler became a 500 with the Python traceback as its body: here, a JSON error without internals;
- a body that is not JSON got a 400 with an empty body: here, a 422 JSON error that says what is wrong;
- init() ran while the main thread busy-waited, starving the loader of the GIL: here, init() runs first, alone;
- request.headers printed every header (API keys included) when read: nothing here reads them;
- each request leaked four file descriptors (potassium/worker.py's FDRedirect), so a replica stopped answering after
  about 250 images under a 1024 limit: here, FDRedirect is replaced by LinePrefixer, below.
"""

import functools
import gc
import json
import logging
import os
import resource
import threading
import time
import traceback
from typing import Callable

import potassium.worker
import torch
from flask import Flask, current_app
from flask import Response as FlaskResponse
from flask import request as flask_request
from potassium import Request, Response
from werkzeug.exceptions import BadRequest, HTTPException

from . import compiled, cuda_graphs, logs, origin, runpod_worker
from .cold_start import COLD_START
from .families import FamilyError
from .recent import Recent
from .schema import ErrorBody, FieldError, InputError
from .settings import Settings, SettingsError
from .storage import StorageError
from .weights import WeightsError

# 422, not 400: Banana's 5.x/6.x clients retry a 400 ("over quota") for up to 5 minutes.
INPUT_ERROR_STATUS = 422
STATUS_ROUTES = ("GET /__status__ ", "GET /_k/status ", "GET /healthz ", "GET /progress ")


class LinePrefixer:
    """Potassium's FDRedirect (potassium/worker.py), same interface, without its leak.

    Potassium puts "[requestID ...] " before each line a handler prints by pointing the fd at a pipe read by a
    thread. Its set_prefix, called twice per request for stdout and for stderr, made a new pipe and thread each time
    and never closed its previous copy of the fd. Here one pipe and one thread serve the process's life, and
    set_prefix only changes the text.
    """

    def __init__(self, fd: int):
        self.prefix = b""
        self._out = os.dup(fd)
        read, write = os.pipe()
        os.dup2(write, fd)
        os.close(write)
        threading.Thread(target=self._pump, args=(read,), daemon=True).start()

    def set_prefix(self, prefix: str) -> None:
        self.prefix = prefix.encode()

    def _pump(self, read: int) -> None:
        with os.fdopen(read, "rb") as lines:
            for line in lines:
                os.write(self._out, self.prefix + line)


class Health:
    """What GET /healthz answers: 503 once the replica is stuck, so that the container's health check and
    Kubernetes' liveness probe restart it instead of leaving it listed and useless."""

    def __init__(self):
        self.busy_since: float | None = None  # while our handler runs
        self._unavailable_since: float | None = None

    def problem(self, potassium_status: dict, stuck_after_s: float) -> str | None:
        now = time.monotonic()
        if self.busy_since is not None and now - self.busy_since > stuck_after_s:
            return f"one request has run {now - self.busy_since:.0f} s, past STUCK_AFTER_S ({stuck_after_s:g} s)"
        # Potassium counts a request as running from before our handler starts to after it ends: a short gap
        # between the two is normal, a long one means its bookkeeping lost a request and it will never say
        # gpu_available again.
        if potassium_status.get("gpu_available") or self.busy_since is not None:
            self._unavailable_since = None
        elif self._unavailable_since is None:
            self._unavailable_since = now
        elif now - self._unavailable_since > 30:
            return "Potassium reports busy while no request runs"
        soft_limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        open_files = len(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else 0
        if soft_limit != resource.RLIM_INFINITY and open_files > 0.9 * soft_limit:
            return f"{open_files} files open, near the limit of {soft_limit}"
        return None


HEALTH = Health()  # one Potassium app, one handler running at a time, per process
RECENT = Recent()  # the answers to the requests a gateway sent (GET /answers/<request id>)


def sent_request_id(request: Request) -> str | None:
    """The X-Banana-Request-Id the caller sent, if it sent one, read without Potassium's header reader (which prints
    every header)."""
    return request.headers._headers.get("X_BANANA_REQUEST_ID")


def endpoint(settings: Settings) -> Callable:
    """Turn a handler returning a dict into one that always answers JSON, and logs one line per request."""

    def decorate(handler: Callable[[dict, Request], dict]) -> Callable[[dict, Request], Response]:
        @functools.wraps(handler)
        def wrapper(context: dict, request: Request) -> Response:
            started = time.perf_counter()
            HEALTH.busy_since = time.monotonic()
            request_id = str(request.id)[:64]  # the caller's X-Banana-Request-Id, when sent
            sent = bool(sent_request_id(request))
            if sent:
                RECENT.begin(request_id)
            fields = {"request_id": request_id, **logs.prompt_fields(request.json, settings.log_prompts)}
            try:
                answer = handler(context, request)
                status = 200
                fields.update(_summary(answer))
            except InputError as error:
                status, answer = INPUT_ERROR_STATUS, _error_body(str(error), error.errors)
                fields["error"] = str(error)
            except StorageError as error:  # the images were made, the bucket refused them: none is answered
                status, answer = 502, _error_body(str(error))
                fields["error"] = str(error)
            except torch.OutOfMemoryError:
                _free_memory()
                status, answer = 500, _error_body("out of GPU memory: ask for a smaller size or fewer images")
                fields["error"] = "out of memory"
            except Exception as error:  # noqa: BLE001 - the caller gets no internals, the operator gets the trace
                _free_memory()
                status, answer = 500, _error_body(f"internal error while generating (request id {request_id})")
                fields["error"] = f"{type(error).__name__}"
                # Where it failed, not the exception's message: that may quote the inputs, prompt included.
                fields["traceback"] = "".join(traceback.format_tb(error.__traceback__, limit=-8))
            finally:
                HEALTH.busy_since = None
            total_ms = round((time.perf_counter() - started) * 1000, 1)
            if status == 200:
                answer["timings"]["total_ms"] = total_ms
                if settings.image_base64 == "plain" and "image_base64" in answer:  # the original's clients decode it
                    answer["image_base64"] = answer["image_base64"].partition(",")[2]
            logs.event("request", status=status, total_ms=total_ms, **fields)
            COLD_START.first_request(total_ms / 1000)
            response = Response(status=status, json=answer)
            if sent:
                RECENT.keep(request_id, status, response.body)
            return response

        return wrapper

    return decorate


class Potassium(potassium.Potassium):
    """Potassium 0.5.0 as app.py uses it (`@app.init`, `@app.handler`, `app.serve()`), its defects mended.

    The one place in this project that touches Potassium's internals: its Flask app (`_flask_app`, hardened and
    given /openapi.json and /healthz), its init function (`_init_func`, run here first, alone, so that its
    busy-waiting main thread cannot starve the loader), its server's start (`_init_server`, after which
    `warm_up(context)` runs on its `_worker_pool`, the thread that serves the requests), its worker's FDRedirect
    (replaced by LinePrefixer) and, inside a RunPod Serverless worker, the handler of "/" (`_endpoints`, handed to
    the runpod SDK instead of serving HTTP). `documents` maps GET routes (/openapi.json, /loras, /progress) to what
    builds their JSON from the context, on each GET, once init() has loaded the model.
    """

    def __init__(self, name: str, settings: Settings, documents: dict[str, Callable[[dict], dict]],
                 warm_up: Callable[[dict], bool] = lambda context: False):
        super().__init__(name)
        self.settings = settings
        self.documents = documents
        self.warm_up = warm_up
        _harden(self._flask_app, settings, handled=lambda path: path in self._endpoints,
                get_only=lambda path: path in self.documents or path in ("/healthz", "/__status__") or
                path.startswith("/answers/"))

    def serve(self) -> None:
        settings = self.settings
        logs.setup()
        if not settings.log_prompts:
            logs.redact_library_warnings()
        potassium.worker.FDRedirect = LinePrefixer
        COLD_START.note("imports", COLD_START.since_start())
        started = time.perf_counter()
        try:
            context = self._init_func()
        except (WeightsError, FamilyError, SettingsError) as error:
            raise SystemExit(f"app.py: {error}") from None
        logs.event("ready", model_id=settings.model_id, init_s=round(time.perf_counter() - started, 2))
        if runpod_worker.wanted():
            progress = self.documents.get("/progress")
            runpod_worker.start(self._endpoints["/"].func, self._warmed(context),  # its jobs run on this thread
                                progress=(lambda: progress(context)) if progress else None)
            return
        self._init_func = lambda: context  # Potassium's own init now returns at once: no busy-wait worth the name
        self._context = context
        for route, build in self.documents.items():  # what the loaded model says of itself, built when asked
            self._flask_app.add_url_rule(route, route, lambda build=build: _json_response(200, build(context)),
                                         methods=["GET"])
        self._flask_app.add_url_rule("/healthz", "healthz", lambda: _healthz(settings), methods=["GET"])
        self._flask_app.add_url_rule("/answers/<request_id>", "answers", _answer, methods=["GET"])
        super().serve(host=settings.host, port=settings.port)

    def _init_server(self) -> None:
        super()._init_server()
        # Its worker pool is one thread, the one that serves every request: warm up there, the main thread waiting
        # on the result (not spinning, as Potassium's own start-up loop does, which slowed a warm-up 100-fold).
        self._worker_pool.apply(self._warmed, (self._context,))

    def _warmed(self, context: dict) -> dict:
        started = time.perf_counter()
        if self.warm_up(context):
            logs.event("warm_up", ms=round((time.perf_counter() - started) * 1000, 1),
                       thread=threading.current_thread().name)
        COLD_START.note("warm_up", time.perf_counter() - started)
        COLD_START.note("ready", COLD_START.since_start())
        return context


def _answer(request_id: str) -> FlaskResponse:
    """GET /answers/<request id>: 200 {"status": the HTTP status it was answered, "answer": its body} while kept; 202
    {"running": true} while it runs; 404 for a request id this replica does not know (or no longer keeps)."""
    kept = RECENT.get(request_id)
    if kept is True:
        return _json_response(202, {"running": True})
    if kept is False:
        return _json_response(404, _error_body(f"no answer kept for request id {request_id[:64]!r}"))
    status, body = kept
    return FlaskResponse(b'{"status": %d, "answer": %s}' % (status, body), status=200, mimetype="application/json")


def _healthz(settings: Settings) -> FlaskResponse:
    """200 while the replica can serve; 503 once it is stuck (Health). Only a loaded model answers at all."""
    status = current_app.view_functions["status"]().get_json()  # Potassium's own /__status__, as it would answer
    problem = HEALTH.problem(status, settings.stuck_after_s)
    if problem:
        logs.event("unhealthy", reason=problem)
        return _json_response(503, {"ok": False, "error": problem})  # not ErrorBody: probes read "ok"
    answer = {"ok": True, "busy": not status["gpu_available"], "cuda_graphs": cuda_graphs.status(),
              "compiled": compiled.status(), "cold_start": COLD_START.report()}
    if torch.cuda.is_available():  # what graphs, compiled code and the caching allocator hold, and the peak
        answer["gpu_memory_mb"] = {"allocated": torch.cuda.memory_allocated() >> 20,
                                   "reserved": torch.cuda.memory_reserved() >> 20,
                                   "peak_reserved": torch.cuda.max_memory_reserved() >> 20}
    return _json_response(200, answer)


def _harden(flask_app: Flask, settings: Settings, handled: Callable[[str], bool],
            get_only: Callable[[str], bool]) -> None:
    """handled: a POST route with a handler (app.py's "/"); get_only: a route that answers GET only."""
    flask_app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    # Load balancers poll the status routes every second or so, the gateway /progress twice a second while a job
    # runs: not worth a log line each.
    logging.getLogger("werkzeug").addFilter(
        lambda record: not any(route in record.getMessage() for route in STATUS_ROUTES))
    loopback_listener = origin.is_loopback(settings.host)

    @flask_app.before_request
    def refuse_other_sites():
        refused = origin.refusal(flask_request.headers, loopback_listener)
        return _json_response(403, _error_body(refused)) if refused else None

    @flask_app.before_request
    def get_only_routes():
        # Potassium's catch-all route takes POST on every path, so Flask would allow POST on the GET routes too.
        if not get_only(flask_request.path) or flask_request.method in ("GET", "HEAD"):
            return None
        response = (FlaskResponse(status=200) if flask_request.method == "OPTIONS"
                    else _json_response(405, _error_body("405 Method Not Allowed")))
        response.headers["Allow"] = "GET, HEAD, OPTIONS"
        return response

    @flask_app.before_request
    def parse_json_body():
        if flask_request.method != "POST" or flask_request.path.startswith("/_k/"):
            return None
        if not handled(flask_request.path):  # an unknown route: Potassium's catch-all answers 404
            return None
        try:
            # Parsed once here, whatever the Content-Type, and cached: Potassium's own get_json() reads the cache.
            flask_request.get_json(force=True)
        except (BadRequest, RecursionError):
            why = "empty" if not flask_request.get_data().strip() else "not valid JSON"
            error = f"body: {why}; send a JSON object of modelInputs"
            request_id = flask_request.headers.get("X-Banana-Request-Id", "")[:64]  # Flask's headers: nothing printed
            logs.event("request", status=INPUT_ERROR_STATUS, request_id=request_id, error=error)
            return _json_response(INPUT_ERROR_STATUS, _error_body(error))
        return None

    @flask_app.errorhandler(HTTPException)
    def http_error(error: HTTPException):
        if error.code == 413:
            return _json_response(413, _error_body(f"body: larger than {settings.max_body_bytes} bytes"))
        response = _json_response(error.code or 500, _error_body(f"{error.code} {error.name}"))
        if error.code == 405 and getattr(error, "valid_methods", None):
            response.headers["Allow"] = ", ".join(error.valid_methods)  # RFC 9110: a 405 names what is allowed
        return response


def _json_response(status: int, payload: dict) -> FlaskResponse:
    return FlaskResponse(json.dumps(payload), status=status, mimetype="application/json")


def _error_body(error: str, fields: list[tuple[str, str]] | None = None) -> dict:
    errors = [FieldError(field=field, message=message) for field, message in fields] if fields else None
    return ErrorBody(error=error, errors=errors).model_dump(exclude_none=True)


def _summary(answer: dict) -> dict:
    keys = ("width", "height", "num_inference_steps", "output_format")
    return {**{k: answer[k] for k in keys}, "images": len(answer["seeds"]), **answer["timings"]}


def _free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
