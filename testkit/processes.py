"""The project's processes as a user starts them (app.py, gateway.py, redis-server), on free ports: shared by the
tests and by bench.loadtest, so that the load test runs exactly what the tests run."""

import json
import os
import resource
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
TEST_KEY = "test-key-0123456789"  # gateways refuse keys under 16 characters


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Service:
    """A process of this project as a user starts it, on a free port, its output kept for the tests."""

    ready_path = "/"

    def __init__(self, tmp: Path, args: list[str], env: dict, port: int | None = None, nofile: int | None = None,
                 host: str = "127.0.0.1"):
        self.nofile = nofile  # as `ulimit -n` would set it: the open-files limit containers give
        self.port = port or free_port()
        self.url = f"http://{host}:{self.port}"
        self.args, self.env = args, {**os.environ, "HF_HUB_OFFLINE": "1", **env}
        name = args[1] if args[0] == "-m" else Path(args[0]).stem
        self.log_path = tmp / f"{name}-{host}-{self.port}.log"
        self.start()

    def start(self) -> None:
        self._log = self.log_path.open("ab")
        def limit() -> None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (self.nofile, self.nofile))

        self.proc = subprocess.Popen([sys.executable, "-u", *self.args], cwd=ROOT, env=self.env, stdout=self._log,
                                     stderr=subprocess.STDOUT, preexec_fn=limit if self.nofile else None)

    def wait_ready(self, timeout: float = 180) -> "Service":
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.args[0]} exited with {self.proc.returncode}:\n{self.logs()}")
            try:
                if httpx.get(self.url + self.ready_path, timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"{self.args[0]} not ready after {timeout} s:\n{self.logs()}")

    def open_files(self) -> int:
        return len(os.listdir(f"/proc/{self.proc.pid}/fd"))

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
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()

    def kill(self) -> None:
        """As a crash would: no chance to clean up."""
        self.proc.kill()
        self.proc.wait()
        self._log.close()

    def restart(self) -> "Service":
        self.stop()
        self.start()
        return self.wait_ready()


class AppProcess(Service):
    """`python3 app.py` (or a script standing in for it)."""

    ready_path = "/__status__"

    def __init__(self, tmp: Path, env: dict, script: str = "app.py", nofile: int | None = None,
                 host: str = "127.0.0.1", port: int | None = None):
        """script: a file (app.py) or a module (testkit.fault_app), run from the repository's root. host: any
        127.x.y.z address, so that replicas of one set share a port as a headless Service's pods do."""
        port = port or free_port()
        args = [script] if script.endswith(".py") else ["-m", script]
        super().__init__(tmp, args, {"PORT": str(port), "HOST": host, **env}, port, nofile, host)

    def post(self, inputs, **kwargs) -> httpx.Response:
        return httpx.post(self.url + "/", json=inputs, timeout=120, **kwargs)


class GatewayProcess(Service):
    """`python3 gateway.py`, and Banana's v4 calls against it."""

    ready_path = "/livez"

    def __init__(self, tmp: Path, backends: list[str], store: str, *flags: str, env: dict | None = None,
                 nofile: int | None = None):
        port = free_port()
        args = ["gateway.py", "--port", str(port), "--store", store, *flags]
        for backend in backends:
            args += ["--backend", backend]
        super().__init__(tmp, args, env or {}, port, nofile)

    def call(self, route: str, body) -> dict:
        response = httpx.post(self.url + route, json=body, timeout=120)
        assert response.status_code == 200, response.text
        return response.json()

    def start_job(self, inputs: dict, start_only: bool = True, **fields) -> dict:
        return self.call("/start/v4/", {"apiKey": TEST_KEY, "modelKey": "test-model", "startOnly": start_only,
                                         "modelInputs": inputs, **fields})

    def check(self, call_id: str, long_poll: bool = False) -> dict:
        return self.call("/check/v4/", {"apiKey": TEST_KEY, "callID": call_id, "longPoll": long_poll})

    def result(self, call_id: str, timeout: float = 120) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            answer = self.check(call_id, long_poll=True)
            if answer["finished"]:
                return answer
        raise TimeoutError(call_id)


class RedisServer:
    """A real redis-server on a free port, every write on disk before it answers (so a kill -9 loses nothing)."""

    def __init__(self, folder: Path):
        self.port, self.folder = free_port(), folder
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.start()

    def start(self) -> None:
        self.proc = subprocess.Popen(["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
                                      "--dir", str(self.folder), "--databases", "256", "--save", "",
                                      "--appendonly", "yes",
                                      "--appendfsync", "always"], stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.05)
        raise TimeoutError("redis-server did not start")

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


class RunPodWorker(Service):
    """`python3 app.py --rp_serve_api`: the app as a RunPod Serverless worker, behind the runpod SDK's own local test
    API (/run, /runsync, /status/{id}), which hands each job to the worker's handler as RunPod's queue would."""

    def __init__(self, tmp: Path, env: dict):
        port = free_port()
        super().__init__(tmp, ["app.py", "--rp_serve_api", "--rp_api_host", "127.0.0.1", "--rp_api_port", str(port)],
                         env, port)
