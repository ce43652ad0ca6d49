"""Shared fixtures: tiny random-weight models built once, and real app processes on free ports."""

import os
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, settings

from testkit import model_factory, precision
from testkit.processes import THREADS, AppProcess, GatewayProcess, RedisServer
from testkit.s3_server import S3Server

# One dtype for every app the tests start, whatever the CPU (testkit.precision): replicas inherit it from here.
os.environ["DTYPE"] = precision.DTYPE
# One thread for the models this worker runs itself, as for the processes it starts (testkit.processes.THREADS).
torch.set_num_threads(int(THREADS))

# `make test` replays the same cases every run (a red CI means a change broke something); `make fuzz` draws new ones.
SLOW_IS_FINE = [HealthCheck.too_slow, HealthCheck.data_too_large]
settings.register_profile("ci", deadline=None, derandomize=True, database=None, suppress_health_check=SLOW_IS_FINE)
settings.register_profile("fuzz", deadline=None, database=None, suppress_health_check=SLOW_IS_FINE)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(scope="session")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {
        "sd": model_factory.save_tiny_sd(root / "tiny-sd"),
        "sdxl": model_factory.save_tiny_sdxl(root / "tiny-sdxl"),
        "sd_checked": model_factory.save_tiny_sd(root / "tiny-sd-with-safety-checker", safety_checker=True),
        "controlnet": model_factory.save_tiny_controlnet(root / "tiny-controlnet"),
        "sd_inpainting": model_factory.save_tiny_sd_inpainting(root / "tiny-sd-inpainting"),
        "sd3": model_factory.save_tiny_sd3(root / "tiny-sd3"),
        "sd3_controlnet": model_factory.save_tiny_sd3_controlnet(root / "tiny-sd3-controlnet"),
        "flux": model_factory.save_tiny_flux(root / "tiny-flux-schnell"),
        "flux_controlnet": model_factory.save_tiny_flux_controlnet(root / "tiny-flux-controlnet"),
        "taesd": model_factory.save_tiny_preview_decoder(root / "tiny-taesd"),
        "taef1": model_factory.save_tiny_preview_decoder(root / "tiny-taef1", latent_channels=16, flow=True),
    }


@pytest.fixture(scope="session")
def start_app(tmp_path_factory):
    """Start app processes; all are stopped at the end of the session."""
    started: list[AppProcess] = []
    tmp = tmp_path_factory.mktemp("apps")

    def start(env: dict, script: str = "app.py", wait: bool = True, nofile: int | None = None,
              **where) -> AppProcess:
        app = _started(AppProcess(tmp, env, script, nofile, **where))
        started.append(app)
        return app.wait_ready() if wait else app

    yield start
    for app in started:
        app.stop()


@pytest.fixture(scope="session")
def start_gateway(tmp_path_factory):
    """Start gateway processes (SQLite store in a fresh folder unless given); all stopped at the end."""
    started: list[GatewayProcess] = []
    tmp = tmp_path_factory.mktemp("gateways")

    def start(backends: list[str], *flags: str, store: str | None = None, wait: bool = True,
              env: dict | None = None) -> GatewayProcess:
        store = store or f"sqlite:///{tmp_path_factory.mktemp('store')}/jobs.db"
        gateway = _started(GatewayProcess(tmp, backends, store, *flags, env=env))
        started.append(gateway)
        return gateway.wait_ready(60) if wait else gateway

    yield start
    for gateway in started:
        gateway.stop()


_TESTS_OWN: list = []  # replicas and gateways started by a test's own body


def _started(service):
    """Owned by the test when its body (or a helper it calls) started it; by a fixture when a fixture's setup did,
    even one first asked for by request.getfixturevalue: the nearer of the two on the stack decides."""
    frame = sys._getframe(2)
    while frame is not None:
        if frame.f_code.co_name == "call_fixture_func":  # pytest setting up a fixture
            return service
        if frame.f_code.co_name.startswith("test_"):
            _TESTS_OWN.append(service)
            return service
        frame = frame.f_back
    return service


@pytest.fixture(autouse=True)
def stop_what_the_test_started():
    """Replicas and gateways a test's body starts stop when it ends; a fixture's (even one first asked for by
    request.getfixturevalue) when its scope ends. A replica holds about 0.5 GB: kept to the end of the session,
    two workers' worth of them ran this 24 GB machine out of memory."""
    yield
    while _TESTS_OWN:
        _TESTS_OWN.pop().stop()


@pytest.fixture(autouse=True)
def compiled_code_stays_with_its_test():
    """dynamo counts compiled variants per code object (UNet2DConditionModel.forward), whichever model they were
    compiled for, up to its recompile limit: a replica holds its own model's, a test worker every test's."""
    yield
    torch._dynamo.reset()


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory):
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    yield server.url
    server.stop()


@pytest.fixture(scope="session")
def s3():
    """An S3-compatible server (moto's) that takes every write and serves presigned URLs."""
    server = S3Server()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def s3_enforcing():
    """One that enforces credentials and bucket policies: for buckets that refuse writes."""
    server = S3Server(enforce=True)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def sd_app(start_app, models) -> AppProcess:
    return start_app({"MODEL_ID": str(models["sd"])})


@pytest.fixture(scope="session")
def sd_replicas(start_app, models, sd_app) -> list[AppProcess]:
    """Two replicas of the tiny model, for the gateway's OpenAI and A1111 API tests."""
    return [sd_app, start_app({"MODEL_ID": str(models["sd"])})]


@pytest.fixture(scope="session")
def baked_loras(models, tmp_path_factory) -> Path:
    """A LORAS_DIR for the tiny SD model: "style" (PEFT's format) and "ink" (kohya's)."""
    folder = tmp_path_factory.mktemp("baked-loras")
    for seed, name in enumerate(("style", "ink")):
        model_factory.save_tiny_lora(models["sd"], folder / f"{name}.safetensors", seed=seed, kohya=bool(seed))
    return folder


@pytest.fixture(scope="session")
def controlnet_app(start_app, models, baked_loras) -> AppProcess:
    return start_app({"MODEL_ID": str(models["sd"]), "CONTROLNET_ID": str(models["controlnet"]),
                      "LORAS_DIR": str(baked_loras)})


@pytest.fixture(scope="session")
def sdxl_app(start_app, models) -> AppProcess:
    return start_app({"MODEL_ID": str(models["sdxl"])})


@pytest.fixture(scope="session")
def preview_app(start_app, models) -> AppProcess:
    """Previews every 2 steps, decoded by a tiny TAESD, at most 32 pixels a side."""
    return start_app({"MODEL_ID": str(models["sd"]), "PREVIEW_EVERY": "2", "PREVIEW_DECODER": str(models["taesd"]),
                      "PREVIEW_SIDE": "32"})


@pytest.fixture(scope="session")
def limited_app(start_app, models, baked_loras) -> AppProcess:
    """Tight limits (2 steps, 128x128 at most), so that whatever passes validation runs in a moment. MAX_SIDE
    squared is MAX_PIXELS: the per-side bound implies the pixel budget, which JSON Schema cannot state. Two baked
    LoRAs, for the fuzzers to choose."""
    return start_app({"MODEL_ID": str(models["sd"]), "CONTROLNET_ID": str(models["controlnet"]), "MAX_STEPS": "2",
                      "LORAS_DIR": str(baked_loras), "MAX_LORAS": "2",
                      "MAX_SIDE": "128", "MAX_PIXELS": "16384", "MAX_IMAGES": "2", "MAX_PROMPT_CHARS": "100",
                      "MAX_INPUT_PIXELS": "40000", "MAX_BODY_BYTES": "65536"})
