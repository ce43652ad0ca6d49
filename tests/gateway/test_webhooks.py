"""Webhooks for real: the gateway POSTs the final answer to a local receiver, signed, retried on failure."""

import hashlib
import hmac
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

FAST = {"prompt": "a lighthouse", "num_inference_steps": 1}


class Receiver:
    """Answers 500 to the first `failures` deliveries, then 200; keeps what it got."""

    def __init__(self, failures: int):
        self.failures, self.received = failures, []
        self.done = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.received.append((dict(self.headers), body))
                status = 500 if len(receiver.received) <= receiver.failures else 200
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()
                if status == 200:
                    receiver.done.set()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture(scope="module")
def gateway(start_gateway, sd_app):
    return start_gateway([sd_app.url], "--webhook-host", "127.0.0.1", "--webhook-secret", "hook-secret")


def test_the_final_answer_is_posted_signed_and_retried(gateway):
    receiver = Receiver(failures=2)
    call_id = gateway.start_job({**FAST, "seed": 4}, webhook=receiver.url)["callID"]
    assert receiver.done.wait(30)
    assert len(receiver.received) == 3  # two failures, retried with back-off, then delivered
    headers, body = receiver.received[-1]
    expected = "sha256=" + hmac.new(b"hook-secret", body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(headers["X-Webhook-Signature"], expected)
    answer = json.loads(body)
    assert answer["callID"] == call_id and answer["message"] == "success"
    assert answer["modelOutputs"][0]["seeds"] == [4]


def test_a_failed_job_is_posted_too(gateway):
    receiver = Receiver(failures=0)
    gateway.start_job({**FAST, "width": 12}, webhook=receiver.url)
    assert receiver.done.wait(30)
    assert "error: width" in json.loads(receiver.received[0][1])["message"]


@pytest.mark.parametrize("url, message", [
    ("http://169.254.169.254/latest/meta-data", "error: webhook: host '169.254.169.254' is not allowed"),
    ("http://localhost:1/hook", "error: webhook: host 'localhost' is not allowed"),
    ("file:///etc/passwd", "error: webhook: must be an http(s) URL"),
])
def test_a_webhook_to_a_host_not_allowed_is_refused_at_start(gateway, url, message):
    answer = gateway.start_job(FAST, webhook=url)
    assert answer["message"].startswith(message) and "callID" not in answer
