"""The project's processes as a user starts them (app.py, gateway.py, redis-server), on free ports: shared by the
tests and by bench.loadtest, so that the load test runs exactly what the tests run.

Nothing started here outlives what started it. Every process is started by spawn(): it gets SIGKILL when the process
that started it dies, however that dies (a test's timeout, an out-of-memory kill, a crash), so that a chain of them
(pytest's worker, bench.soak, the replicas it starts) goes down together. A tool that starts processes of its own,
run() runs in a process group of its own, and ends that group whatever the tool's end.
"""

import ctypes
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
TEST_KEY = "test-key-0123456789"  # gateways refuse keys under 16 characters
# PyTorch runs a thread per core in every process. The tests, the load test and the soak run many processes on one
# machine (replicas, gateways, pytest's workers): with two threads each on 2 cores, OpenMP's threads waited for one
# another at every barrier while the others held the cores (a float32 suite: 86 CPU-minutes, 47 minutes; two test
# files, 453 s against 160 s with one thread each). One thread each, unless OMP_NUM_THREADS says otherwise.
THREADS = os.environ.get("OMP_NUM_THREADS") or "1"
_PR_SET_PDEATHSIG = 1


def _dies_with_its_parent(nofile: int | None = None) -> Callable[[], None] | None:
    """What the child runs before its program: the open-files limit, and Linux's parent-death signal. The signal
    comes when the thread that started the child ends, so it is armed only from the main thread (a thread that ended
    before its process would take the child with it); processes started elsewhere are stopped by their owners."""
    armed = sys.platform == "linux" and threading.current_thread() is threading.main_thread()
    if not armed and nofile is None:
        return None
    parent = os.getpid()
    prctl = ctypes.CDLL(None, use_errno=True).prctl if armed else None  # looked up here: the child only calls it

    def before_exec() -> None:
        if nofile is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))
        if prctl is not None:
            prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
            if os.getppid() != parent:  # the parent died before the signal was armed
                os._exit(1)

    return before_exec


def spawn(args: list[str], nofile: int | None = None, **popen) -> subprocess.Popen:
    """subprocess.Popen, the child ending with its parent (above), under `ulimit -n nofile` if given."""
    return subprocess.Popen(args, preexec_fn=_dies_with_its_parent(nofile), **popen)


def run(args: list[str], timeout: float, **popen) -> subprocess.CompletedProcess:
    """subprocess.run(args, capture_output=True, text=True) for a tool that starts processes of its own (bench.soak):
    in a process group of its own, which is killed when the tool returns, times out, or the caller is interrupted
    (pytest-timeout's signal), so that what the tool left running ends with it."""
    with spawn(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
               **popen) as process:
        try:
            out, err = process.communicate(timeout=timeout)
        finally:
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return subprocess.CompletedProcess(args, process.returncode, out, err)


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
        self.args, self.env = args, {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": THREADS, **env}
        name = args[1] if args[0] == "-m" else Path(args[0]).stem
        self.log_path = tmp / f"{name}-{host}-{self.port}.log"
        self.start()

    def start(self) -> None:
        self._log = self.log_path.open("ab")
        self.proc = spawn([sys.executable, "-u", *self.args], self.nofile, cwd=ROOT, env=self.env, stdout=self._log,
                          stderr=subprocess.STDOUT)

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
        self.proc = spawn(["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.folder),
                           "--databases", "256", "--save", "", "--appendonly", "yes", "--appendfsync", "always"],
                          stdout=subprocess.DEVNULL)
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
    """`python3 .runpod/handler.py --rp_serve_api` (app.py under RunPod's name for it): the app as a RunPod Serverless
    worker, behind the runpod SDK's own local test API (/run, /runsync, /status/{id}), which hands each job to the
    worker's handler as RunPod's queue would."""

    def __init__(self, tmp: Path, env: dict):
        port = free_port()
        argv = [".runpod/handler.py", "--rp_serve_api", "--rp_api_host", "127.0.0.1", "--rp_api_port", str(port)]
        super().__init__(tmp, argv, env, port)
