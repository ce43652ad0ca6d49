"""Dispatch and faults with real processes: FIFO, one job per replica, replicas, gateways and Redis that die or hang,
clients that leave."""

import json
import os
import signal
import socket
import threading
import time

import httpx
import pytest

from testkit.processes import RedisServer, free_port

FAST = {"prompt": "a lighthouse", "num_inference_steps": 1}
SLOW = {"prompt": "a lighthouse", "num_inference_steps": 60}  # about 3 s on the tiny model here


def request_windows(app) -> dict[str, tuple[float, float]]:
    """call_id -> (start, end) of each request the app answered 200, from its own log."""
    return {e["request_id"]: (e["ts"] - e["total_ms"] / 1000, e["ts"]) for e in app.events() if e["status"] == 200}


def wait_until(condition, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"not within {timeout} s"
        time.sleep(0.1)


def wait_for(gateway, call_id: str, state: str, timeout: float = 180) -> dict:
    """A job's state within `timeout`: a bound on reached or never, not on this machine's speed (a dispatch takes
    well under a second when idle, and over a minute was seen with both cores busy)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        answer = gateway.check(call_id)
        if answer.get("state") == state:
            return answer
        time.sleep(0.05)
    raise TimeoutError(f"{call_id} never {state}; the gateway's log ends:\n{gateway.logs()[-3000:]}")


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
        assert all(end <= next_start + 0.01 for (_, end), (next_start, _) in zip(windows, windows[1:], strict=False))
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


def test_a_job_whose_replica_dies_with_it_max_tries_times_is_an_error(start_gateway, start_app, models):
    doomed = start_app({"MODEL_ID": str(models["sd"])})
    gateway = start_gateway([doomed.url], "--max-tries", "2")
    call_id = gateway.start_job(SLOW)["callID"]
    for _ in range(2):
        wait_for(gateway, call_id, "running")
        doomed.kill()
        doomed.start()
        doomed.wait_ready()
    answer = gateway.result(call_id)
    assert answer["finished"] and answer["message"].startswith(
        "error: the replicas given this job failed or vanished with it 2 times (--max-tries)")
    assert gateway.start_job(FAST, start_only=False)["message"] == "success"  # the replica serves again


def test_gateways_killed_twice_and_the_replica_once_under_a_running_job_cost_it_one_try(start_gateway, start_app,
                                                                                          models, tmp_path):
    """A gateway's death is not the job's: the replica still runs it, the next gateway takes its lease over. Only the
    replica's death with it is a try (--max-tries 2 here: two gateway deaths counted as tries failed it before)."""
    release = tmp_path / "release"
    replica = start_app({"MODEL_ID": str(models["sd"])}, script="testkit.fault_app")
    gateway = start_gateway([replica.url], "--lease", "1.5", "--max-tries", "2")
    call_id = gateway.start_job({"prompt": f"wait: {release} a lighthouse", "num_inference_steps": 2,
                                 "seed": 41})["callID"]
    wait_for(gateway, call_id, "running")
    for _ in range(2):
        gateway.kill()
        gateway.start()
        gateway.wait_ready(60)
        time.sleep(3)  # two leases: recovered by the new gateway, which asked the replica
        assert gateway.check(call_id)["state"] == "running"  # taken over, not queued again
    replica.kill()
    replica.start()
    replica.wait_ready()
    release.touch()
    answer = gateway.result(call_id)
    assert answer["message"] == "success" and answer["modelOutputs"][0]["seeds"] == [41]
    assert ran_count(replica, call_id) == 1
    assert '"recovered": "lost"' in gateway.logs()  # the replica's death: the one try


def test_a_job_a_gateway_lost_the_answer_of_is_finished_from_the_replicas_answer(start_gateway, start_app, models,
                                                                                   tmp_path):
    """The holder died while its replica ran the job: the replica finished it all the same, and the gateway that
    recovers the job finishes it with that answer, without running it again."""
    release = tmp_path / "release"
    replica = start_app({"MODEL_ID": str(models["sd"])}, script="testkit.fault_app")
    gateway = start_gateway([replica.url], "--lease", "1.5")
    call_id = gateway.start_job({"prompt": f"wait: {release} a lighthouse", "num_inference_steps": 2,
                                 "seed": 42})["callID"]
    wait_for(gateway, call_id, "running")
    gateway.kill()
    release.touch()  # it ends while no gateway listens for its answer
    wait_until(lambda: call_id in {e["request_id"] for e in replica.events()}, timeout=300)
    gateway.start()
    gateway.wait_ready(60)
    answer = gateway.result(call_id)
    assert answer["message"] == "success" and answer["modelOutputs"][0]["seeds"] == [42]
    assert ran_count(replica, call_id) == 1 and '"recovered": "answered"' in gateway.logs()


def test_a_poison_job_ends_after_max_tries_while_the_other_jobs_are_served(start_gateway, start_app, models):
    """A job that kills every replica it is given (restarted each time, as Kubernetes would) is failed after
    --max-tries (3) runs, saying so; the jobs beside it succeed, each with its own seed."""
    replicas = [start_app({"MODEL_ID": str(models["sd"])}, script="testkit.fault_app") for _ in range(2)]
    gateway = start_gateway([r.url for r in replicas])
    poison = gateway.start_job({"prompt": "fail: die", "num_inference_steps": 1})["callID"]
    others = {gateway.start_job({**FAST, "seed": seed})["callID"]: seed for seed in range(51, 57)}
    deadline = time.monotonic() + 600
    while gateway.check(poison)["state"] in ("queued", "running"):
        assert time.monotonic() < deadline
        for replica in replicas:  # the supervisor
            if replica.proc.poll() is not None:
                replica.start()
        time.sleep(0.1)
    answer = gateway.result(poison)
    assert answer["message"].startswith("error: the replicas given this job failed or vanished with it 3 times "
                                        "(--max-tries)"), answer["message"]
    for replica in replicas:
        if replica.proc.poll() is not None:
            replica.start()
    for call_id, seed in others.items():
        done = gateway.result(call_id)
        assert done["message"] == "success" and done["modelOutputs"][0]["seeds"] == [seed]


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
    # It finishes the abandoned request, however long this machine takes (its own log says when), and the gateway
    # then finds it idle at its next check (each second, 3 s to answer): a bound of the gateway's, not the CPU's.
    wait_until(lambda: call_id in {e["request_id"] for e in app.events()}, timeout=600)
    wait_until(lambda: httpx.get(gateway.url + "/healthz").json()["backends"][app.url], timeout=30)
    assert gateway.start_job(FAST, start_only=False)["message"] == "success"


def test_with_no_replica_up_a_job_fails_after_its_time_limit(start_gateway):
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


def ran_count(app, call_id: str) -> int:
    return sum(1 for e in app.events() if e["request_id"] == call_id)


def test_no_accepted_job_is_lost_when_redis_restarts(start_gateway, replicas, tmp_path):
    redis = RedisServer(tmp_path)
    try:
        gateway = start_gateway([replicas[0].url], "--lease", "3", store=redis.url)
        running = gateway.start_job({**SLOW, "seed": 21})["callID"]
        queued = [gateway.start_job({**FAST, "seed": seed})["callID"] for seed in (22, 23)]
        wait_for(gateway, running, "running")
        redis.kill()  # as a crash would
        started_during_outage = {}
        caller = threading.Thread(target=lambda: started_during_outage.update(gateway.start_job({**FAST, "seed": 24})))
        caller.start()
        time.sleep(2)
        redis.start()
        caller.join(30)
        assert started_during_outage["message"] == ""  # accepted once Redis was back: the caller never saw it go
        calls = [running, *queued, started_during_outage["callID"]]
        for call_id, seed in zip(calls, (21, 22, 23, 24), strict=True):
            answer = gateway.result(call_id)
            assert answer["message"] == "success" and answer["modelOutputs"][0]["seeds"] == [seed]
            assert ran_count(replicas[0], call_id) == 1
    finally:
        redis.stop()


def test_redis_down_for_long_is_a_clear_error_and_the_gateway_recovers(start_gateway, replicas, tmp_path):
    redis = RedisServer(tmp_path)
    gateway = start_gateway([replicas[0].url], store=redis.url)
    call_id = gateway.start_job(FAST, start_only=False)["callID"]
    redis.kill()
    try:
        answer = gateway.start_job(FAST)  # after the store's retries, about 15 s
        assert answer == {**answer, "message": "error: the job store is unavailable, try again shortly",
                          "finished": True, "modelOutputs": None}
        assert "Traceback" not in gateway.logs() and gateway.proc.poll() is None
    finally:
        redis.start()
    assert gateway.check(call_id)["message"] == "success"
    assert gateway.start_job(FAST, start_only=False)["message"] == "success"
    redis.stop()


def waiting(gateway) -> int:
    text = httpx.get(gateway.url + "/metrics").text
    return int(next(line.split()[1] for line in text.splitlines() if line.startswith("sd_gateway_requests_waiting ")))


def test_clients_gone_mid_long_poll_leave_nothing_behind(start_gateway, start_app, models, tmp_path):
    """Long polls and a sync start whose callers leave, on a job that cannot end meanwhile (no replica is up yet,
    and the long poll waits 600 s): every waiter that goes, goes because its caller left."""
    port = free_port()
    gateway = start_gateway([f"http://127.0.0.1:{port}"], "--long-poll", "600", "--sync-timeout", "600",
                            "--job-timeout", "900")
    call_id = gateway.start_job({**FAST, "seed": 31})["callID"]

    def held_open(route: str, body: dict) -> socket.socket:
        data = json.dumps(body).encode()
        sock = socket.create_connection(("127.0.0.1", gateway.port))
        sock.sendall(f"POST {route} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {len(data)}\r\n\r\n".encode() + data)
        return sock

    check = {"apiKey": "test-key-0123456789", "callID": call_id, "longPoll": True}
    start = {"apiKey": "test-key-0123456789", "modelKey": "test-model", "modelInputs": {**FAST, "seed": 32}}
    sockets = [held_open("/check/v4/", check) for _ in range(20)] + [held_open("/start/v4/", start)]
    wait_until(lambda: waiting(gateway) == 21, timeout=120)
    for sock in sockets:
        sock.close()
    # Well within the long poll's 600 s: each waiter notices its caller left, and the job is still queued.
    wait_until(lambda: waiting(gateway) == 0, timeout=120)
    assert gateway.check(call_id)["state"] == "queued"
    start_app({"MODEL_ID": str(models["sd"])}, port=port)
    assert gateway.result(call_id)["message"] == "success"
    assert waiting(gateway) == 0
    # The sync start whose caller left was accepted all the same: it runs, and its result waits to be checked.
    second = next(e["call_id"] for e in gateway.events("job") if e["call_id"] != call_id)
    answer = gateway.result(second)
    assert answer["message"] == "success" and answer["modelOutputs"][0]["seeds"] == [32]


def test_any_gateway_on_one_redis_answers_a_running_jobs_progress(start_gateway, preview_app, redis_url):
    """The replica's progress, relayed by the gateway that runs the job, read through another gateway."""
    store = redis_url.rsplit("/", 1)[0] + "/250"
    running_it = start_gateway([preview_app.url], store=store)
    other = start_gateway(["http://127.0.0.1:9"], store=store)  # no replica it can reach: it knows only the store
    call_id = running_it.start_job({"prompt": "a lighthouse", "num_inference_steps": 120, "seed": 5})["callID"]
    seen = []
    while (answer := other.check(call_id))["state"] in ("queued", "running"):
        if answer.get("progress") and (not seen or answer["progress"] != seen[-1]):
            seen.append(answer["progress"])
        time.sleep(0.05)
    assert answer["message"] == "success" and "progress" not in answer
    assert len(seen) >= 2, seen
    assert [p["step"] for p in seen] == sorted(p["step"] for p in seen) and seen[-1]["total_steps"] == 121
    assert any(p["preview"] and p["preview"].startswith("data:image/jpeg;base64,") for p in seen)
    assert all(p["eta_s"] is not None for p in seen if p["step"] > 1)
