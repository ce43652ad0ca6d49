"""Banana's v4 start/check, served by gateway.py in front of a real app.py, checked field by field."""

import json
import re

import httpx
import pytest

from testkit.processes import TEST_KEY

FAST = {"prompt": "a lighthouse", "num_inference_steps": 1}
SLOW = {"prompt": "a lighthouse", "num_inference_steps": 60}  # about 3 s on the tiny model here
SECOND_KEY = "second-key-0123456789"
KEYS = ("--api-key", TEST_KEY, "--api-key", SECOND_KEY, "--model-key", "test-model")


@pytest.fixture(scope="module")
def gateway(start_gateway, sd_app):
    return start_gateway([sd_app.url], *KEYS)


def assert_envelope(answer: dict) -> None:
    assert re.fullmatch(r"[0-9a-f-]{36}", answer["id"])
    assert isinstance(answer["created"], int) and answer["apiVersion"] == "January 11, 2023"


@pytest.mark.parametrize("route", ["/start/v4", "/start/v4/"])
def test_start_waits_and_answers_the_apps_json(gateway, route):
    answer = gateway.call(route, {"apiKey": TEST_KEY, "modelKey": "test-model", "modelInputs": {**FAST, "seed": 3}})
    assert_envelope(answer)
    assert answer["message"] == "success" and answer["finished"] is True
    assert re.fullmatch(r"call_[0-9a-f-]{36}", answer["callID"])
    [output] = answer["modelOutputs"]
    assert output["image_base64"].startswith("data:image/png;base64,") and output["seeds"] == [3]
    assert answer["state"] == "succeeded" and answer["timings"]["run_s"] > 0


def test_start_only_answers_at_once_and_check_long_polls_the_result(gateway):
    started = gateway.start_job(FAST)
    assert_envelope(started)
    assert (started["message"], started["finished"], started["modelOutputs"]) == ("", False, None)
    assert started["state"] in ("queued", "running")
    for route in ("/check/v4", "/check/v4/"):
        checked = gateway.call(route, {"apiKey": "test-key-0123456789", "callID": started["callID"], "longPoll": True})
        assert_envelope(checked)
        assert checked["message"] == "success" and checked["modelOutputs"][0]["image_base64"]


def test_check_without_long_poll_says_running(gateway):
    started = gateway.start_job(SLOW)
    answer = gateway.check(started["callID"])
    assert answer["message"] == "running" and answer["modelOutputs"] is None and answer["finished"] is False
    assert gateway.result(started["callID"])["message"] == "success"


def test_a_second_api_key_works_too(gateway):
    answer = gateway.call("/start/v4", {"apiKey": SECOND_KEY, "modelKey": "test-model", "modelInputs": FAST})
    assert answer["message"] == "success"


@pytest.mark.parametrize("body, message", [
    ({"apiKey": "wrong", "modelKey": "test-model", "modelInputs": FAST}, "error: invalid apiKey"),
    ({"apiKey": "", "modelKey": "test-model", "modelInputs": FAST}, "error: invalid apiKey"),
    ({"apiKey": "test-key-0123456789", "modelKey": "other", "modelInputs": FAST}, "error: unknown modelKey"),
    ({"apiKey": "test-key-0123456789", "modelKey": "test-model"}, "error: modelInputs: field required"),
    ({"apiKey": TEST_KEY, "modelKey": "test-model", "modelInputs": []},
     "error: modelInputs: input should be a valid dictionary"),
    ({"apiKey": TEST_KEY, "modelKey": "test-model", "modelInputs": FAST, "startOnly": "yes"},
     "error: startOnly: input should be a valid boolean"),
    ({"modelKey": "test-model", "modelInputs": FAST}, "error: apiKey: required (in the body, or as the header"),
    ({"apiKey": "test-key-0123456789", "modelKey": "test-model", "modelInputs": {**FAST, "width": 500}},
     "error: width: must be a multiple of 8 (got 500; try 496)"),
    ({"apiKey": TEST_KEY, "modelKey": "test-model", "modelInputs": {"promt": "x"}}, "error: prompt: required"),
])
def test_start_failures_are_200_with_an_error_message(gateway, body, message):
    answer = gateway.call("/start/v4/", body)
    assert message in answer["message"], answer["message"]
    assert answer["modelOutputs"] is None
    assert_envelope(answer)


@pytest.mark.parametrize("body, message", [
    ({"apiKey": TEST_KEY, "callID": "call_does-not-exist"}, "error: callID 'call_does-not-exist' does not exist"),
    ({"apiKey": "wrong", "callID": "call_x"}, "error: invalid apiKey"),
    ({"apiKey": "test-key-0123456789"}, "error: callID: field required"),
    ({"apiKey": TEST_KEY, "callID": "call_x", "longPoll": 1}, "error: longPoll: input should be a valid boolean"),
])
def test_check_failures_are_200_with_an_error_message(gateway, body, message):
    assert message in gateway.call("/check/v4/", body)["message"]


BEARER = {"Authorization": "Bearer test-key-0123456789"}


@pytest.mark.parametrize("content", [b"", b"{", b"\xff", b"[" * 100_000, b'{"modelInputs": {"x": NaN}}',
                                     b'{"modelInputs": {"x": 1e999}}', b'{"modelInputs": {"x": -Infinity}}'])
def test_malformed_bodies_are_200_with_an_error_message(gateway, content):
    for route in ("/start/v4/", "/check/v4/"):
        response = httpx.post(gateway.url + route, content=content, headers=BEARER, timeout=30)
        assert response.status_code == 200 and response.json()["message"] == "error: body: not valid JSON"


def test_a_body_that_is_not_an_object_names_the_body(gateway):
    response = httpx.post(gateway.url + "/start/v4/", json=[1, 2], headers=BEARER, timeout=30)
    assert "error: body: input should be a valid dictionary" in response.json()["message"]


@pytest.mark.parametrize("body", [
    b'{"apiKey": "test-key-0123456789", "modelKey": "m", "modelInputs": {"prompt": "\\ud800"}}',
    b'{"apiKey": "\\udfff", "callID": "call_x"}',
])
def test_a_lone_surrogate_anywhere_is_refused_at_start(gateway, body):
    response = httpx.post(gateway.url + "/start/v4/", content=body, headers=BEARER, timeout=30)
    assert response.status_code == 200 and "lone surrogate" in response.json()["message"]
    response = httpx.post(gateway.url + "/check/v4/", content=body, timeout=30)  # the key in the body only
    assert response.status_code == 200 and response.json()["message"].startswith("error: ")


def test_without_a_valid_key_a_body_is_never_parsed(gateway):
    # 1.8 s of the event loop and 720 MB per 32 MB body of empty objects, when it was parsed before the key check.
    flood = b'{"apiKey": "wrong-key-0123456789", "modelInputs": [' + b"{}," * 4_000_000 + b"{}]}"  # 12 MB
    peak_before = peak_rss_mb(gateway)
    for headers in ({}, {"Authorization": "Bearer wrong-key-0123456789"}, {"X-Banana-API-Key": "nope"}):
        response = httpx.post(gateway.url + "/start/v4/", content=flood, headers=headers, timeout=60)
        assert response.json()["message"] == "error: invalid apiKey"
    without_key = httpx.post(gateway.url + "/start/v4/", content=b"[" + b"{}," * 100 + b"{}]", timeout=30)
    assert without_key.json()["message"].startswith("error: apiKey: required")
    # Parsed, that body would have built 4 million dicts (several hundred MB); read and scanned, it costs its bytes.
    assert peak_rss_mb(gateway) - peak_before < 80, (peak_before, peak_rss_mb(gateway))


def peak_rss_mb(process) -> float:
    status = open(f"/proc/{process.proc.pid}/status").read()
    return int(status.split("VmHWM:")[1].split()[0]) / 1024


def test_the_key_may_come_as_a_header(gateway):
    body = {"modelKey": "test-model", "modelInputs": FAST, "startOnly": False}
    for headers in (BEARER, {"X-Banana-API-Key": "test-key-0123456789"}):
        answer = httpx.post(gateway.url + "/start/v4/", json=body, headers=headers, timeout=120).json()
        assert answer["message"] == "success", answer
        checked = httpx.post(gateway.url + "/check/v4/", json={"callID": answer["callID"]}, headers=headers).json()
        assert checked["message"] == "success"


def test_a_job_is_visible_only_to_the_key_that_started_it(gateway):
    call_id = gateway.start_job(FAST)["callID"]
    other = {"apiKey": "second-key-0123456789", "callID": call_id}
    for route in ("/check/v4/", "/cancel/v4/"):
        assert gateway.call(route, other)["message"] == f"error: callID {call_id!r} does not exist"
    assert gateway.result(call_id)["message"] == "success"  # its own key still sees it, uncancelled


def test_an_oversized_body_is_refused_before_it_is_read(start_gateway, sd_app):
    small = start_gateway([sd_app.url], "--max-body-bytes", "4096")
    response = httpx.post(small.url + "/start/v4", content=b"x" * 5000, timeout=30)
    assert response.json()["message"] == "error: body: larger than 4096 bytes"


def test_the_failed_job_is_also_reported_by_check(gateway):
    started = gateway.start_job({**FAST, "height": 33})
    answer = gateway.result(started["callID"])
    assert answer["finished"] and "error: height: must be a multiple of 8" in answer["message"]


def test_queue_position_is_reported_while_queued(gateway):
    calls = [gateway.start_job({**SLOW, "num_inference_steps": 30})["callID"] for _ in range(3)]
    positions = [gateway.check(call_id).get("queuePosition") for call_id in calls]
    assert positions[-1] is not None and positions[-1] >= 1
    for call_id in calls:
        assert gateway.result(call_id)["message"] == "success"


def test_no_key_and_no_prompt_in_the_gateways_logs(gateway):
    gateway.call("/start/v4/", {"apiKey": "test-key-0123456789", "modelKey": "test-model",
                                "modelInputs": {**FAST, "prompt": "my secret prompt"}})
    gateway.call("/start/v4/", {"apiKey": "attacker-guess", "modelKey": "test-model", "modelInputs": FAST})
    logs = gateway.logs()
    assert "test-key-0123456789" not in logs and "attacker-guess" not in logs and "my secret prompt" not in logs
    assert '"event": "job"' in logs


def test_cancel_a_queued_job_it_never_runs(gateway, sd_app):
    running = gateway.start_job(SLOW)["callID"]
    queued = gateway.start_job({**FAST, "seed": 11})["callID"]
    answer = gateway.call("/cancel/v4", {"apiKey": "test-key-0123456789", "callID": queued})
    assert answer["message"] == "cancelled" and answer["state"] == "cancelled" and answer["finished"] is True
    assert gateway.check(queued)["message"] == "error: this job was cancelled by the caller"
    assert gateway.result(running)["message"] == "success"
    assert queued not in {e["request_id"] for e in sd_app.events()}


def test_cancel_a_running_job_its_result_is_discarded(gateway):
    call_id = gateway.start_job(SLOW)["callID"]
    while gateway.check(call_id)["state"] != "running":
        pass
    assert gateway.call("/cancel/v4/", {"apiKey": "test-key-0123456789", "callID": call_id})["message"] == "cancelled"
    assert gateway.start_job(FAST, start_only=False)["message"] == "success"  # ran after the cancelled one ended
    answer = gateway.check(call_id)
    assert answer["message"] == "error: this job was cancelled by the caller" and answer["modelOutputs"] is None


@pytest.mark.parametrize("call_id, message", [("call_nope", "does not exist"), ("DONE", "has already ended")])
def test_cancel_failures(gateway, call_id, message):
    if call_id == "DONE":
        call_id = gateway.start_job(FAST, start_only=False)["callID"]
    answer = gateway.call("/cancel/v4", {"apiKey": "test-key-0123456789", "callID": call_id})
    assert answer["message"].startswith("error: ") and message in answer["message"]
    assert "invalid apiKey" in gateway.call("/cancel/v4", {"apiKey": "x", "callID": call_id})["message"]


@pytest.mark.parametrize("headers", [
    {"Origin": "https://evil.example", "Content-Type": "text/plain"},
    {"Sec-Fetch-Site": "cross-site", "Content-Type": "text/plain"},
    {"Host": "rebound.evil.example"},
])
def test_browsers_cannot_drive_a_loopback_gateway_from_another_site(start_gateway, sd_app, headers):
    keyless = start_gateway([sd_app.url])  # loopback, no keys: any apiKey is accepted, so only this stands guard
    body = json.dumps({"apiKey": "", "modelKey": "", "modelInputs": FAST}).encode()
    response = httpx.post(keyless.url + "/start/v4/", content=body, headers=headers, timeout=30)
    assert response.status_code == 403 and response.json()["message"].startswith("error: ")
    assert not keyless.events("job")  # nothing was queued
    same_origin = {"Origin": keyless.url, "Content-Type": "application/json"}
    assert httpx.post(keyless.url + "/start/v4/", content=body, headers=same_origin).json()["callID"]
