"""GET /metrics on a real gateway: Prometheus text with jobs, ended jobs, latency histograms and replica health;
keyed like the API, never a model key or a digest of one."""

import hashlib
import re

import httpx

from testkit.processes import TEST_KEY

FAST = {"prompt": "a lighthouse", "num_inference_steps": 1}
BEARER = {"Authorization": f"Bearer {TEST_KEY}"}


def test_metrics_after_some_jobs(start_gateway, sd_app):
    gateway = start_gateway([sd_app.url], "--api-key", TEST_KEY, "--model-key", "test-model")
    for seed in range(3):
        assert gateway.start_job({**FAST, "seed": seed}, start_only=False)["message"] == "success"
    gateway.start_job({**FAST, "width": 7}, start_only=False)
    response = httpx.get(gateway.url + "/metrics", headers=BEARER)
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    text = response.text
    assert 'sd_gateway_jobs_ended_total{state="succeeded"} 3' in text
    assert 'sd_gateway_jobs_ended_total{state="failed"} 1' in text
    assert "sd_gateway_queue_length 0" in text and 'sd_gateway_jobs{state="running"} 0' in text
    assert 'sd_gateway_job_run_seconds_bucket{le="+Inf"} 4' in text and "sd_gateway_job_run_seconds_count 4" in text
    assert f'sd_gateway_backend_up{{backend="{sd_app.url}"}} 1' in text
    assert "test-model" not in text and TEST_KEY not in text
    assert hashlib.sha256(b"test-model").hexdigest()[:8] not in text
    for line in text.splitlines():  # every line is a comment or "name{labels} value"
        assert line.startswith("# ") or re.fullmatch(r"[a-z_]+(\{[^}]*\})? [0-9.e+-]+", line), line


def test_operational_routes_need_the_key_and_livez_says_nothing(start_gateway, sd_app):
    gateway = start_gateway([sd_app.url], "--api-key", TEST_KEY)
    for route in ("/metrics", "/healthz"):
        for headers in ({}, {"Authorization": "Bearer wrong-key-0123456789"}):
            response = httpx.get(gateway.url + route, headers=headers)
            assert response.status_code == 401 and "Authorization: Bearer" in response.json()["error"]
        assert httpx.get(gateway.url + route, headers=BEARER).status_code == 200
        assert httpx.get(gateway.url + route, headers={"X-Banana-API-Key": TEST_KEY}).status_code == 200
    assert httpx.get(gateway.url + "/livez").json() == {"ok": True}
