"""The image as a RunPod Serverless worker: the runpod SDK's local test API over HTTP, RunPod's job shapes, our
handler and messages, and test.py as a RunPod client."""

import os
import subprocess
import sys

import httpx
import pytest

from testkit.processes import ROOT, RunPodWorker

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
