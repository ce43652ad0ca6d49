"""What the CPU and GPU benchmarks share: the SD-1.5-sized model, app.py and plain diffusers in their own processes."""

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from testkit.processes import AppProcess, RedisServer, free_port

ROOT = Path(__file__).resolve().parent.parent


def cpu_arguments(runs: int) -> argparse.Namespace:
    """The CPU benchmarks' options: --model (the SD-1.5-sized model's folder), --out (results), --runs."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", type=Path, default=ROOT / "bench" / "models" / "sd15-random")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--runs", type=int, default=runs)
    return parser.parse_args()


@contextmanager
def tiny_fleet(replicas: int) -> Iterator[tuple[Path, RedisServer, list[AppProcess]]]:
    """The load runs' set-up: a temporary folder, a Redis server, and `replicas` app.py replicas of the tests' tiny
    model, ready; the replicas and Redis are stopped at the end (what the caller starts on top, it stops)."""
    from testkit import model_factory

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        model = model_factory.save_tiny_sd(tmp / "tiny-sd")
        redis = RedisServer(tmp)
        fleet = [AppProcess(tmp, {"MODEL_ID": str(model)}) for _ in range(replicas)]
        try:
            for replica in fleet:
                replica.wait_ready()
            yield tmp, redis, fleet
        finally:
            for replica in fleet:
                replica.stop()
            redis.stop()


def conclude(result: dict, problems: list[str], out: Path, name: str) -> None:
    """A run's end: its result, with ok, written to out/<name>.json and printed; exit 1 naming each problem."""
    result["ok"] = not problems
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    if problems:
        raise SystemExit(f"{name} failed: " + "; ".join(problems))


def sd15_folder(folder: Path) -> Path:
    """SD 1.5's architecture with random weights, fp16 safetensors (about 2 GB), built once."""
    if not (folder / "model_index.json").exists():
        from testkit import model_factory

        model_factory.save_sd15_sized(folder)
    return folder


def with_root_on_path() -> dict[str, str]:
    """This environment with the repository first on PYTHONPATH, and what was on it kept (on the lent GPU machine:
    the carried wheels' folder)."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}


def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version()}


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class App:
    """python3 app.py on a free port; `cold_s` is from the process's start to /__status__ answering."""

    def __init__(self, model: Path, script: str = "app.py", timeout: float = 600, **env: str):
        self.url = f"http://127.0.0.1:{free_port()}"
        self.log = tempfile.TemporaryFile("w+")
        started = time.perf_counter()
        self.proc = subprocess.Popen(
            [sys.executable, "-u", script], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=self.log, text=True,
            env={**os.environ, "MODEL_ID": str(model), "PORT": self.url.rsplit(":", 1)[1], "HOST": "127.0.0.1",
                 "HF_HUB_OFFLINE": "1", **env},
        )
        while True:
            if self.proc.poll() is not None:
                self.log.seek(0)
                raise RuntimeError(f"{script} exited: {self.log.read()[-3000:]}")
            if time.perf_counter() - started > timeout:
                self.stop()
                raise TimeoutError(f"{script} not ready after {timeout} s")
            try:
                urllib.request.urlopen(self.url + "/__status__", timeout=1)
                break
            except OSError:
                time.sleep(0.02)
        self.cold_s = time.perf_counter() - started

    def generate(self, **inputs) -> tuple[float, dict]:
        body = json.dumps({"prompt": "a lighthouse at dusk", "seed": 0, **inputs}).encode()
        started = time.perf_counter()
        with urllib.request.urlopen(urllib.request.Request(self.url + "/", body), timeout=1800) as response:
            answer = json.loads(response.read())
        return time.perf_counter() - started, answer

    def stop(self) -> float:
        rss = peak_rss_mb(self.proc.pid)
        self.proc.terminate()
        self.proc.wait(30)
        return rss


def plain_diffusers(model: Path, **options) -> dict:
    """bench/plain_diffusers.py in a fresh process: what a user gets from diffusers' defaults."""
    args = [sys.executable, str(ROOT / "bench" / "plain_diffusers.py"), "--model", str(model)]
    for key, value in options.items():
        flag = f"--{key.replace('_', '-')}"
        args += [flag] if value is True else [flag, str(value)]
    started = time.perf_counter()
    out = subprocess.run(args, capture_output=True, text=True, timeout=1800,
                         env=with_root_on_path())
    if out.returncode:
        raise RuntimeError(out.stderr[-3000:])
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["process_s"] = time.perf_counter() - started
    return result


class Plain:
    """bench/plain_diffusers.py --serve: a plain pipeline kept loaded, one image each time run() is called."""

    def __init__(self, model: Path, **options):
        args = [sys.executable, str(ROOT / "bench" / "plain_diffusers.py"), "--model", str(model), "--serve"]
        for key, value in options.items():
            args += [f"--{key.replace('_', '-')}", str(value)]
        self.proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT,
                                     env=with_root_on_path())
        self.cold_s = self._read()["cold_s"]  # loaded and warmed up

    def run(self) -> float:
        self.proc.stdin.write("run\n")
        self.proc.stdin.flush()
        return self._read()["s"]

    def generate(self, **inputs) -> tuple[float, dict]:
        """One generation with these inputs: its seconds, and {"images": [the first as a data URI]}."""
        self.proc.stdin.write(json.dumps(inputs) + "\n")
        self.proc.stdin.flush()
        answer = self._read()
        return answer["s"], answer

    def stop(self) -> float:
        """Peak RSS in MiB."""
        self.proc.stdin.close()
        result = self._read()
        self.proc.wait(60)
        return result["peak_rss_mb"]

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"plain_diffusers.py exited with {self.proc.wait(60)}")
        return json.loads(line)


def median(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[len(ordered) // 2]
