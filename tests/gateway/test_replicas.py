"""Replicas that come and go behind one name (a headless Service scaled by an autoscaler), and the scale signal."""

import asyncio
import socket
import time

import httpx
import pytest

from serverless_sd.gateway import replicas
from testkit import hosts
from testkit.hosts import Hosts
from testkit.processes import TEST_KEY, free_port

NAME = "sd-app.test"
JOB = {"prompt": "a lighthouse", "num_inference_steps": 8}


@pytest.fixture
def names(tmp_path, monkeypatch) -> Hosts:
    table = Hosts(tmp_path / "hosts.json")
    monkeypatch.setenv(hosts.VARIABLE, str(table.path))
    monkeypatch.setattr(socket, "getaddrinfo", hosts.getaddrinfo)
    return table


def test_an_address_or_an_https_name_is_one_replica_an_http_name_is_a_set(names):
    names.set(NAME, ["127.0.0.3", "127.0.0.2"])
    assert asyncio.run(replicas.resolve("http://10.1.2.3:8000/")) == ["http://10.1.2.3:8000/"]
    assert asyncio.run(replicas.resolve("https://gpu.example.com")) == ["https://gpu.example.com"]
    assert asyncio.run(replicas.resolve(f"http://{NAME}:8000")) == ["http://127.0.0.2:8000", "http://127.0.0.3:8000"]
    assert asyncio.run(replicas.resolve(f"http://{NAME}")) == ["http://127.0.0.2:80", "http://127.0.0.3:80"]


def test_a_name_with_ipv4_and_ipv6_addresses_is_one_replica_per_server(names):
    names.set(NAME, ["::1", "127.0.0.1"])  # as localhost, or a pod of a dual-stack cluster
    assert asyncio.run(replicas.resolve(f"http://{NAME}:8000")) == ["http://127.0.0.1:8000"]
    names.set(NAME, ["::1"])
    assert asyncio.run(replicas.resolve(f"http://{NAME}:8000")) == ["http://[::1]:8000"]


def test_a_name_without_addresses_is_no_replica_and_a_failed_lookup_keeps_the_last(names, monkeypatch):
    names.set(NAME, [])
    url = f"http://{NAME}:8000"
    assert asyncio.run(replicas.resolve(url)) == []

    def unavailable(*_args, **_kwargs):
        raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")

    monkeypatch.setattr(socket, "getaddrinfo", unavailable)
    assert asyncio.run(replicas.resolve(url)) is None
    previous = {url: ["http://127.0.0.2:8000"]}
    assert asyncio.run(replicas.resolve_all([url], previous)) == previous


def operational(gateway, route: str) -> dict:
    response = httpx.get(gateway.url + route, headers={"Authorization": f"Bearer {TEST_KEY}"})
    assert response.status_code == 200, response.text
    return response.json()


def wait_until(condition, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_a_replica_set_scaled_0_to_2_to_0_while_jobs_flow_loses_and_repeats_nothing(start_gateway, start_app, models,
                                                                                     tmp_path):
    names = Hosts(tmp_path / "hosts.json")
    names.set(NAME, [])
    port = free_port()
    gateway = start_gateway([f"http://{NAME}:{port}"], "--resolve-every", "0.3", "--api-key", TEST_KEY,
                            env=names.env)
    calls = [gateway.start_job({**JOB, "seed": i})["callID"] for i in range(3)]
    time.sleep(1.5)  # no replica: the jobs wait, and the scale signal says so
    assert operational(gateway, "/scale") == {"work": 3, "queued": 3, "running": 0, "replicas": 0}
    assert {gateway.check(c)["state"] for c in calls} == {"queued"}
    assert "sd_gateway_work 3" in httpx.get(gateway.url + "/metrics", headers={"X-Banana-API-Key": TEST_KEY}).text

    apps = [start_app({"MODEL_ID": str(models["sd"])}, host=f"127.0.0.{n}", port=port) for n in (2, 3)]
    names.set(NAME, ["127.0.0.2"])  # scaled 0 -> 1 -> 2, jobs started all along
    calls += [gateway.start_job({**JOB, "seed": i})["callID"] for i in range(3, 6)]
    names.set(NAME, ["127.0.0.2", "127.0.0.3"])
    calls += [gateway.start_job({**JOB, "seed": i})["callID"] for i in range(6, 12)]
    wait_until(lambda: operational(gateway, "/healthz")["backends"].keys() == {a.url for a in apps})

    names.set(NAME, ["127.0.0.3"])  # 2 -> 1: the leaving replica ends the job it has, then takes none
    wait_until(lambda: apps[0].url not in operational(gateway, "/healthz")["backends"])
    apps[0].stop()
    calls += [gateway.start_job({**JOB, "seed": i})["callID"] for i in range(12, 15)]
    names.set(NAME, [])  # 1 -> 0
    wait_until(lambda: operational(gateway, "/healthz")["backends"] == {})
    apps[1].stop()
    calls += [gateway.start_job({**JOB, "seed": i})["callID"] for i in range(15, 17)]
    time.sleep(1)
    assert operational(gateway, "/scale")["replicas"] == 0
    assert all(gateway.check(c)["state"] in ("queued", "succeeded") for c in calls)

    apps[1].start()  # the queue's rest is taken once a replica comes back
    apps[1].wait_ready()
    names.set(NAME, ["127.0.0.3"])
    answers = [gateway.result(c) for c in calls]
    assert [a["message"] for a in answers] == ["success"] * len(calls)
    assert [a["modelOutputs"][0]["seeds"] for a in answers] == [[i] for i in range(len(calls))]
    served = [e["request_id"] for app in apps for e in app.events() if e["status"] == 200]
    assert sorted(served) == sorted(calls)  # each job ran once, on one replica
    assert {c for c in calls if c in {e["request_id"] for e in apps[0].events()}}  # both replicas took jobs
    wait_until(lambda: operational(gateway, "/scale") == {"work": 0, "queued": 0, "running": 0, "replicas": 1},
               timeout=5)  # the counts are refreshed once a second


def test_the_scale_signal_needs_the_key(start_gateway):
    gateway = start_gateway([f"http://127.0.0.1:{free_port()}"], "--api-key", TEST_KEY)
    assert httpx.get(gateway.url + "/scale").status_code == 401
    wrong = {"Authorization": "Bearer wrong-key-0123456789"}
    assert httpx.get(gateway.url + "/scale", headers=wrong).status_code == 401
    assert operational(gateway, "/scale")["work"] == 0
