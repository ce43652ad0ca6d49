"""The image as a RunPod Serverless worker: the runpod SDK's local test API over HTTP, RunPod's job shapes, our
handler and messages, and test.py as a RunPod client."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import psutil
import pytest

from testkit.processes import ROOT, THREADS, RunPodWorker, spawn

INPUTS = {"prompt": "a lighthouse", "num_inference_steps": 2, "seed": 5, "width": 64, "height": 64}


@pytest.fixture(scope="module")
def worker(models, tmp_path_factory):
    process = RunPodWorker(tmp_path_factory.mktemp("runpod"), {"MODEL_ID": str(models["sd"])})
    yield process.wait_ready()
    process.stop()


def test_runsync_answers_the_replicas_answer_as_the_jobs_output(worker, sd_app):
    job = httpx.post(worker.url + "/runsync", json={"input": INPUTS}, timeout=120).json()
    assert job["status"] == "COMPLETED", job
    direct = sd_app.post(INPUTS).json()
    assert job["output"]["images"] == direct["images"] and job["output"]["seeds"] == [5]  # same handler, same image


@pytest.mark.parametrize("test", json.loads((ROOT / ".runpod/tests.json").read_text())["tests"],
                         ids=lambda test: test["name"])
def test_each_hub_test_input_is_answered_200_with_its_images(worker, test):
    """What RunPod's Hub runs against a release (.runpod/tests.json), on a model of the baked one's family."""
    answer = httpx.post(worker.url + "/runsync", json={"input": test["input"]}, timeout=test["timeout"] / 1000)
    job = answer.json()
    assert answer.status_code == 200 and job["status"] == "COMPLETED", job
    images = job["output"]["images"]
    assert len(images) == test["input"].get("num_images", 1) and all(i.startswith("data:image/png;base64,")
                                                                      for i in images)
    assert job["output"]["seeds"][0] == test["input"]["seed"]


def test_run_then_status_gives_the_output(worker):
    queued = httpx.post(worker.url + "/run", json={"input": {**INPUTS, "seed": 6}}, timeout=30).json()
    assert queued["status"] == "IN_PROGRESS"
    job = httpx.post(f"{worker.url}/status/{queued['id']}", timeout=120).json()
    assert job["status"] == "COMPLETED" and job["output"]["seeds"] == [6]


@pytest.mark.parametrize(("inputs", "field"), [({"prompt": "x", "num_inference_steps": "many"}, "num_inference_steps"),
                                               ({"prompt": "x", "width": 100000}, "width"),
                                               ({"prompt": "x", "scheduler": "nope"}, "scheduler")])
def test_a_bad_input_is_a_failed_job_naming_the_field_and_the_worker_goes_on(worker, inputs, field):
    job = httpx.post(worker.url + "/runsync", json={"input": inputs}, timeout=60).json()
    assert job["status"] == "FAILED" and field in job["error"] and "Traceback" not in job["error"]
    assert httpx.post(worker.url + "/runsync", json={"input": INPUTS}, timeout=120).json()["status"] == "COMPLETED"
    assert worker.proc.poll() is None


def test_test_py_calls_a_runpod_endpoint(worker, tmp_path):
    env = {**os.environ, "RUNPOD_ENDPOINT_URL": worker.url, "RUNPOD_API_KEY": "rp-key"}
    result = subprocess.run([sys.executable, "test.py", "--steps", "1", "--seed", "3", "--width", "64", "--height",
                             "64", "--out", str(tmp_path)], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert [p.name.endswith("-3.png") for p in tmp_path.iterdir()] == [True]
    result = subprocess.run([sys.executable, "test.py", "--steps", "0", "--out", str(tmp_path)], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and "FAILED" in result.stderr and "num_inference_steps" in result.stderr


def test_neither_prompts_nor_images_go_to_the_workers_log(worker):
    job = httpx.post(worker.url + "/runsync", json={"input": {**INPUTS, "prompt": "secret-prompt-7781"}},
                     timeout=120).json()
    payload = job["output"]["images"][0].partition(",")[2]
    assert "secret-prompt-7781" not in worker.logs() and payload[:200] not in worker.logs()


class FakeRunPod(ThreadingHTTPServer):
    """RunPod's side of a worker, as the runpod SDK calls it: job-take hands out one job, job-stop has nothing, and
    every POST to job-done (progress while IN_PROGRESS, then the result) is recorded."""

    def __init__(self, job: dict):
        self.job, self.posted, self.done = job, [], threading.Event()
        super().__init__(("127.0.0.1", 0), _FakeRunPodHandler)

    def env(self) -> dict:
        base = f"http://127.0.0.1:{self.server_address[1]}"
        return {"RUNPOD_POD_ID": "worker-1", "RUNPOD_AI_API_KEY": "rp-key",
                "RUNPOD_WEBHOOK_GET_JOB": base + "/job-take/$RUNPOD_POD_ID?gpu=x",
                "RUNPOD_WEBHOOK_POST_OUTPUT": base + "/job-done/$RUNPOD_POD_ID/$ID?gpu=x",
                "RUNPOD_WEBHOOK_PING": base + "/ping/$RUNPOD_POD_ID?gpu=x"}


class _FakeRunPodHandler(BaseHTTPRequestHandler):
    def do_GET(self):
        server: FakeRunPod = self.server
        if self.path.startswith("/job-take/") and server.job is not None:
            body, server.job = json.dumps(server.job).encode(), None
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        time.sleep(0.5)  # no job: as RunPod's long poll would, not at once
        self.send_response(204)
        self.end_headers()

    def do_POST(self):
        server: FakeRunPod = self.server
        data = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        server.posted.append(data)
        if data.get("status") != "IN_PROGRESS":
            server.done.set()
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def test_runpod_sees_the_jobs_progress_then_its_output(models, tmp_path):
    """The worker as RunPod runs it (RUNPOD_WEBHOOK_GET_JOB set): the SDK's own worker loop against a stand-in for
    RunPod's job API. A job of 60 steps reports its steps while it runs, as RunPod's /status will show them."""
    runpod = FakeRunPod({"id": "job-7", "input": {**INPUTS, "num_inference_steps": 60, "width": 128, "height": 128}})
    threading.Thread(target=runpod.serve_forever, daemon=True).start()
    env = {**os.environ, "MODEL_ID": str(models["sd"]), "OMP_NUM_THREADS": THREADS, **runpod.env()}
    with (tmp_path / "worker.log").open("w") as log:  # a group of its own: the SDK's heartbeat is a child process
        worker = spawn([sys.executable, "app.py"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                       start_new_session=True)
    try:
        assert runpod.done.wait(300), (tmp_path / "worker.log").read_text()[-3000:]
    finally:
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait()
        runpod.shutdown()
    deadline = time.monotonic() + 30
    while [p for p in psutil.process_iter(["environ"]) if (p.info["environ"] or {}).get("RUNPOD_WEBHOOK_GET_JOB") ==
           runpod.env()["RUNPOD_WEBHOOK_GET_JOB"] and p.status() != psutil.STATUS_ZOMBIE]:
        assert time.monotonic() < deadline, "a process of the worker outlived it"
        time.sleep(0.1)
    *progress, result = runpod.posted
    assert result["output"]["seeds"] == [5] and len(result["output"]["images"]) == 1
    steps = [p["output"]["step"] for p in progress]
    totals = {p["output"]["total_steps"] for p in progress}  # the scheduler's count (PNDM: one more)
    assert progress and all(p["status"] == "IN_PROGRESS" for p in progress) and len(totals) == 1 and min(totals) >= 60
    assert steps == sorted(set(steps)) and 0 < steps[-1] <= 61 and all("eta_s" in p["output"] for p in progress[1:])
