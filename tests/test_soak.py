"""The short version of `make soak` (bench.soak): 300 requests and 300 jobs under `ulimit -n 256`, where Potassium
0.5.0, leaking four descriptors a request, stopped answering at request 59."""

import json
import sys

from testkit import processes


def test_short_soak_open_files_memory_and_store_stay_flat_and_no_job_is_lost(tmp_path):
    out = tmp_path / "soak.json"
    result = processes.run([sys.executable, "-m", "bench.soak", "--requests", "300", "--jobs", "300",
                            "--result-ttl", "5", "--out", str(out)], timeout=900, cwd=processes.ROOT)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["replica"]["ok"] and report["replica"]["samples"][-1]["request"] == 300
    gateway = report["gateway"]
    assert gateway["completed"] == 300 and gateway["lost"] == 0 and not gateway["ran_more_than_once"]
    assert gateway["redis_mb"]["after_expiry"] - gateway["redis_mb"]["start"] < 8
