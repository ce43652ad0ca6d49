"""Dispatch and faults with real processes: FIFO, one job per replica, replicas and gateways that die or hang."""

import os
import signal
import threading
import time

import httpx
import pytest

FAST = {"prompt": "a lighthouse", "num_inference_steps": 1}
SLOW = {"prompt": "a lighthouse", "num_inference_steps": 60}  # about 3 s on the tiny model here


def request_windows(app) -> dict[str, tuple[float, float]]:
    """call_id -> (start, end) of each request the app answered 200, from its own log."""
    return {e["request_id"]: (e["ts"] - e["total_ms"] / 1000, e["ts"]) for e in app.events() if e["status"] == 200}


def wait_for(gateway, call_id: str, state: str, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        answer = gateway.check(call_id)
        if answer.get("state") == state:
            return answer
        time.sleep(0.05)
    raise TimeoutError(f"{call_id} never {state}")


def keep_busy(app, steps: int = 150) -> threading.Thread:
    """Occupy a replica with a request of its own, so that the gateway sees it busy and routes elsewhere."""
    thread = threading.Thread(target=app.post, args=({**FAST, "num_inference_steps": steps},), daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while httpx.get(app.url + "/__status__").json()["gpu_available"]:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    return thread


@pytest.fixture(scope="module")
def replicas(start_app, models):
    return [start_app({"MODEL_ID": str(models["sd"])}) for _ in range(2)]


def test_jobs_run_fifo_on_one_replica(start_gateway, replicas):
    gateway = start_gateway([replicas[0].url])
    calls = [gateway.start_job({**FAST, "seed": i})["callID"] for i in range(6)]
    for call_id in calls:
        assert gateway.result(call_id)["message"] == "success"
    windows = request_windows(replicas[0])
    starts = [windows[call_id][0] for call_id in calls]
    assert starts == sorted(starts)


def test_as_many_jobs_at_once_as_replicas_and_never_two_on_one(start_gateway, replicas):
    gateway = start_gateway([r.url for r in replicas])
    calls = [gateway.start_job({**FAST, "num_inference_steps": 20, "seed": i})["callID"] for i in range(6)]
    for call_id in calls:
        assert gateway.result(call_id)["message"] == "success"
    per_replica = [sorted(request_windows(r)[c] for c in calls if c in request_windows(r)) for r in replicas]
    assert all(per_replica) and sum(map(len, per_replica)) == 6  # both replicas worked; each job ran once
    for windows in per_replica:
        assert all(end <= next_start + 0.01 for (_, end), (next_start, _) in zip(windows, windows[1:]))
    assert any(a[0] < b[1] and b[0] < a[1] for a in per_replica[0] for b in per_replica[1])  # in parallel


def test_a_replica_killed_mid_job_has_its_job_retried_on_another(start_gateway, start_app, models, replicas):
    doomed, healthy = start_app({"MODEL_ID": str(models["sd"])}), replicas[0]
    gateway = start_gateway([doomed.url, healthy.url])
    busy = keep_busy(healthy)
    call_id = gateway.start_job({**SLOW, "seed": 78})["callID"]
    wait_for(gateway, call_id, "running")
    doomed.kill()
    result = gateway.result(call_id)
    assert result["message"] == "success" and result["modelOutputs"][0]["seeds"] == [78]
    assert call_id in request_windows(healthy)
    assert f'"call_id": "{call_id}", "state": "running", "backend": "{doomed.url}"' in gateway.logs()
    busy.join()


def test_a_job_whose_replica_dies_twice_is_an_error(start_gateway, start_app, models):
    doomed = start_app({"MODEL_ID": str(models["sd"])})
    gateway = start_gateway([doomed.url])
    call_id = gateway.start_job(SLOW)["callID"]
    for _ in range(2):
        wait_for(gateway, call_id, "running")
        doomed.kill()
        doomed.start()
        doomed.wait_ready()
    answer = gateway.result(call_id)
    assert answer["finished"] and answer["message"] == "error: the replica failed while running this job, twice"
    assert gateway.start_job(FAST, start_only=False)["message"] == "success"  # the replica serves again


def test_a_hung_replica_times_the_job_out_and_is_taken_out_until_it_answers(start_gateway, start_app, models):
    app = start_app({"MODEL_ID": str(models["sd"])})
    gateway = start_gateway([app.url], "--job-timeout", "3")
    call_id = gateway.start_job(SLOW)["callID"]
    wait_for(gateway, call_id, "running")
    os.kill(app.proc.pid, signal.SIGSTOP)
    try:
        answer = gateway.result(call_id)
        assert answer["message"] == "error: the job ran past its time limit of 3 s"
        assert httpx.get(gateway.url + "/healthz").json()["backends"] == {app.url: False}
    finally:
        os.kill(app.proc.pid, signal.SIGCONT)
    deadline = time.monotonic() + 30  # it finishes the abandoned request, then answers as idle again
    while not httpx.get(gateway.url + "/healthz").json()["backends"][app.url]:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert gateway.start_job(FAST, start_only=False)["message"] == "success"


def test_with_no_replica_up_a_job_fails_after_its_time_limit(start_gateway):
    from conftest import free_port

    gateway = start_gateway([f"http://127.0.0.1:{free_port()}"], "--job-timeout", "2")
    answer = gateway.start_job(FAST, start_only=False)
    assert answer["message"] == "error: no replica took this job within 2 s; are the replicas up?"


@pytest.mark.parametrize("store", ["sqlite", "redis"])
def test_no_accepted_job_is_lost_when_the_gateway_is_killed(start_gateway, replicas, redis_url, tmp_path, store):
    store_url = f"sqlite:///{tmp_path}/jobs.db" if store == "sqlite" else redis_url.replace("/0", "/1")
    gateway = start_gateway([replicas[0].url], "--lease", "2", store=store_url)
    running = gateway.start_job({**SLOW, "seed": 1})["callID"]
    queued = gateway.start_job({**FAST, "seed": 2})["callID"]
    wait_for(gateway, running, "running")
    gateway.kill()
    gateway.start()
    gateway.wait_ready()
    for call_id, seed in ((running, 1), (queued, 2)):
        answer = gateway.result(call_id)
        assert answer["message"] == "success" and answer["modelOutputs"][0]["seeds"] == [seed]


def test_gateways_sharing_redis_answer_each_others_call_ids(start_gateway, replicas, redis_url):
    store = redis_url.replace("/0", "/2")
    first = start_gateway([replicas[0].url], store=store)
    second = start_gateway([replicas[1].url], store=store)
    calls = [first.start_job({**FAST, "seed": i})["callID"] for i in range(4)]
    for call_id in calls:
        assert second.result(call_id)["message"] == "success"
    ran = [c for r in replicas for c in request_windows(r) if c in calls]
    assert sorted(ran) == sorted(calls)  # each ran exactly once, across both gateways


def test_results_expire_with_a_clear_error(start_gateway, replicas):
    gateway = start_gateway([replicas[0].url], "--result-ttl", "1", "--lease", "1.5")
    call_id = gateway.start_job(FAST, start_only=False)["callID"]
    time.sleep(2.5)
    answer = gateway.check(call_id)
    assert answer["message"].startswith("error: this callID's result expired") and answer["modelOutputs"] is None
