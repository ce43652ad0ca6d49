"""GET /metrics on a real gateway: Prometheus text with jobs, queue, latency histograms and replica health."""

import hashlib
import re

import httpx

FAST = {"prompt": "a lighthouse", "num_inference_steps": 1}


def test_metrics_after_some_jobs(start_gateway, sd_app):
    gateway = start_gateway([sd_app.url], "--api-key", "test-key", "--model-key", "test-model")
    for seed in range(3):
        assert gateway.start_job({**FAST, "seed": seed}, start_only=False)["message"] == "success"
    gateway.start_job({**FAST, "width": 7}, start_only=False)
    response = httpx.get(gateway.url + "/metrics")
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    text = response.text
    label = hashlib.sha256(b"test-model").hexdigest()[:8]
    assert f'sd_gateway_jobs{{state="succeeded",model_key="{label}"}} 3' in text
    assert f'sd_gateway_jobs{{state="failed",model_key="{label}"}} 1' in text
    assert 'sd_gateway_job_run_seconds_bucket{le="+Inf"} 4' in text and "sd_gateway_job_run_seconds_count 4" in text
    assert f'sd_gateway_backend_up{{backend="{sd_app.url}"}} 1' in text
    assert "test-model" not in text and "test-key" not in text
    for line in text.splitlines():  # every line is a comment or "name{labels} value"
        assert line.startswith("# ") or re.fullmatch(r"[a-z_]+(\{[^}]*\})? [0-9.e+-]+", line), line
