"""testkit.processes: nothing a test starts outlives it, however the test ends. A test that times out on purpose, in
a pytest run of its own, under both of pytest-timeout's methods: "signal" (the test is interrupted, its fixtures
torn down) and "thread" (the process exits on the spot, nothing of it runs after)."""

import json
import os
import sys
import textwrap
import time

import psutil
import pytest

from testkit import processes

INNER = """
import json, sys, pytest
from testkit.processes import GatewayProcess, RedisServer, free_port, run

NESTED = '''
import json, pathlib, sys, time
from testkit.processes import RedisServer
redis = RedisServer(pathlib.Path(sys.argv[2]))
pathlib.Path(sys.argv[1]).write_text(json.dumps({"tool": __import__("os").getpid(), "its_redis": redis.proc.pid}))
time.sleep(600)
'''


@pytest.fixture
def gateway(tmp_path):
    gateway = GatewayProcess(tmp_path, [f"http://127.0.0.1:{free_port()}"], f"sqlite:///{tmp_path}/jobs.db")
    yield gateway.wait_ready(300)
    gateway.stop()


@pytest.mark.timeout(TIMEOUT_S, method=METHOD)
def test_runs_past_its_time(gateway, tmp_path):
    redis = RedisServer(tmp_path)
    started = {"gateway": gateway.proc.pid, "redis": redis.proc.pid}
    (tmp_path / "started.json").write_text(json.dumps(started))
    # A tool that starts a server of its own (as bench.soak starts replicas), then hangs past the test's time.
    run([sys.executable, "-c", NESTED, PIDS, str(tmp_path)], timeout=600)
"""


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.mark.parametrize("method", ["signal", "thread"])
def test_a_test_stopped_by_its_timeout_leaves_nothing_running(tmp_path, method):
    nested = tmp_path / "nested.json"
    test_file = tmp_path / "test_inner.py"
    # The timeout counts from the test's body (timeout_func_only: the gateway's start is the fixture's): time for a
    # Redis and a Python that imports httpx and starts another, about a second here, ten times over.
    test_file.write_text(textwrap.dedent(INNER).replace("TIMEOUT_S", "10").replace("METHOD", repr(method))
                         .replace("PIDS", repr(str(nested))))
    result = processes.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-c", os.devnull,
                            "-o", "timeout_func_only=true", "--basetemp", str(tmp_path / "inner"), str(test_file)],
                           timeout=400, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(processes.ROOT)})
    assert result.returncode != 0 and "Timeout" in result.stdout + result.stderr, result.stdout[-2000:]
    started = json.loads(next((tmp_path / "inner").glob("*/started.json")).read_text()) | json.loads(
        nested.read_text())
    assert set(started) == {"gateway", "redis", "tool", "its_redis"}
    deadline = time.monotonic() + 30  # SIGKILL is delivered at once; the kernel may take a moment to reap
    while any(alive(pid) for pid in started.values()):
        assert time.monotonic() < deadline, {name: pid for name, pid in started.items() if alive(pid)}
        time.sleep(0.1)
