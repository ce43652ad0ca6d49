"""Shared fixtures: tiny random-weight models built once, and real app processes on free ports."""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

import model_factory

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class AppProcess:
    """`python3 app.py` (or another script) as a user starts it, on a free port, its stderr kept for the tests."""

    def __init__(self, tmp: Path, env: dict, script: str = "app.py"):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = tmp / f"app-{self.port}.log"
        self._log = self.log_path.open("wb")
        full_env = {**os.environ, "PORT": str(self.port), "HOST": "127.0.0.1", "HF_HUB_OFFLINE": "1", **env}
        self.proc = subprocess.Popen(
            [sys.executable, "-u", script], cwd=ROOT, env=full_env, stdout=self._log, stderr=subprocess.STDOUT
        )

    def wait_ready(self, timeout: float = 180) -> "AppProcess":
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"app exited with {self.proc.returncode}:\n{self.logs()}")
            try:
                if httpx.get(f"{self.url}/__status__", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"app not ready after {timeout} s:\n{self.logs()}")

    def post(self, inputs, **kwargs) -> httpx.Response:
        return httpx.post(self.url + "/", json=inputs, timeout=120, **kwargs)

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")

    def events(self, name: str = "request") -> list[dict]:
        """Our structured log lines: whole lines of JSON, none prefixed or split."""
        found = []
        for line in self.logs().splitlines():
            if line.startswith("{"):
                record = json.loads(line)
                if record.get("event") == name:
                    found.append(record)
        return found

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._log.close()


@pytest.fixture(scope="session")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {
        "sd": model_factory.save_tiny_sd(root / "tiny-sd"),
        "sdxl": model_factory.save_tiny_sdxl(root / "tiny-sdxl"),
    }


@pytest.fixture(scope="session")
def start_app(tmp_path_factory):
    """Start app processes; all are stopped at the end of the session."""
    started: list[AppProcess] = []
    tmp = tmp_path_factory.mktemp("apps")

    def start(env: dict, script: str = "app.py", wait: bool = True) -> AppProcess:
        app = AppProcess(tmp, env, script)
        started.append(app)
        return app.wait_ready() if wait else app

    yield start
    for app in started:
        app.stop()


@pytest.fixture(scope="session")
def sd_app(start_app, models) -> AppProcess:
    return start_app({"MODEL_ID": str(models["sd"])})


@pytest.fixture(scope="session")
def sdxl_app(start_app, models) -> AppProcess:
    return start_app({"MODEL_ID": str(models["sdxl"])})
