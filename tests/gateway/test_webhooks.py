"""Webhooks for real: the gateway POSTs the final answer to a local receiver, signed, retried on failure, and
delivered from the store's outbox even when the gateway that owed it died."""

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from serverless_sd.gateway.webhooks import verify
from testkit.processes import free_port

RECEIVER_PORT = free_port()

FAST = {"prompt": "a lighthouse", "num_inference_steps": 1}


class Receiver:
    """Answers 500 to the first `failures` deliveries, then 200; keeps what it got."""

    def __init__(self, failures: int, port: int = RECEIVER_PORT):
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

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.url = f"http://127.0.0.1:{port}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    made: list[Receiver] = []

    def make(failures: int) -> Receiver:
        made.append(Receiver(failures))
        return made[-1]
    yield make
    for one in made:
        one.close()


@pytest.fixture(scope="module")
def gateway(start_gateway, sd_app):
    return start_gateway([sd_app.url], "--webhook-host", f"127.0.0.1:{RECEIVER_PORT}", "--webhook-secret",
                         "hook-secret")


def test_the_final_answer_is_posted_signed_and_retried(gateway, receiver):
    receiver = receiver(failures=2)
    call_id = gateway.start_job({**FAST, "seed": 4}, webhook=receiver.url)["callID"]
    assert receiver.done.wait(30)
    assert len(receiver.received) == 3  # two failures, retried with back-off, then delivered
    headers, body = receiver.received[-1]
    assert verify("hook-secret", body, headers["X-Webhook-Timestamp"], headers["X-Webhook-Signature"])
    assert not verify("hook-secret", body + b" ", headers["X-Webhook-Timestamp"], headers["X-Webhook-Signature"])
    replayed_later = str(int(headers["X-Webhook-Timestamp"]) + 3600)  # a capture sent again an hour on
    assert not verify("hook-secret", body, replayed_later, headers["X-Webhook-Signature"])
    answer = json.loads(body)
    assert answer["callID"] == call_id and answer["message"] == "success"
    assert answer["modelOutputs"][0]["seeds"] == [4]


def test_a_failed_job_is_posted_too(gateway, receiver):
    receiver = receiver(failures=0)
    gateway.start_job({**FAST, "width": 12}, webhook=receiver.url)
    assert receiver.done.wait(30)
    assert "error: width" in json.loads(receiver.received[0][1])["message"]


@pytest.mark.parametrize("url, message", [
    ("http://169.254.169.254/latest/meta-data", "error: webhook: 169.254.169.254:80 is not allowed"),
    ("http://localhost:1/hook", "error: webhook: localhost:1 is not allowed"),
    ("http://127.0.0.1:6379/", "error: webhook: 127.0.0.1:6379 is not allowed"),  # an allowed host, another port
    ("http://127.0.0.1/hook", "error: webhook: 127.0.0.1:80 is not allowed"),
    ("file:///etc/passwd", "error: webhook: must be an http(s) URL"),
    ("http://[::1/hook", "error: webhook: not a valid URL"),
    (f"http://user:pw@127.0.0.1:{RECEIVER_PORT}/hook", "error: webhook: must be an http(s) URL without credentials"),
], ids=["metadata", "unlisted-port", "listed-host-other-port", "default-port", "file", "invalid", "credentials"])
def test_a_webhook_to_a_host_not_allowed_is_refused_at_start(gateway, url, message):
    answer = gateway.start_job(FAST, webhook=url)
    assert answer["message"].startswith(message) and "callID" not in answer


def test_a_delivery_owed_by_a_gateway_killed_mid_retry_is_made_after_its_restart(start_gateway, sd_app, receiver,
                                                                                  tmp_path):
    store = f"sqlite:///{tmp_path}/jobs.db"
    gateway = start_gateway([sd_app.url], "--webhook-host", f"127.0.0.1:{RECEIVER_PORT}", store=store)
    receiver = receiver(failures=1)
    call_id = gateway.start_job({**FAST, "seed": 8}, webhook=receiver.url)["callID"]
    deadline = time.monotonic() + 30
    while not receiver.received:  # the first attempt failed: the retry is owed, and only the store knows it
        assert time.monotonic() < deadline
        time.sleep(0.05)
    gateway.kill()
    gateway.start()
    gateway.wait_ready(60)
    assert receiver.done.wait(40)
    assert json.loads(receiver.received[-1][1])["callID"] == call_id
    assert len(receiver.received) == 2


def test_with_a_bucket_the_webhook_carries_urls_not_base64(start_gateway, start_app, models, s3, receiver):
    app = start_app({"MODEL_ID": str(models["sd"]), **s3.env(s3.bucket("hooked"))})
    gateway = start_gateway([app.url], "--webhook-host", f"127.0.0.1:{RECEIVER_PORT}")
    receiver = receiver(failures=0)
    gateway.start_job({**FAST, "seed": 8, "num_images": 2}, webhook=receiver.url)
    assert receiver.done.wait(60)
    body = receiver.received[0][1]
    output = json.loads(body)["modelOutputs"][0]
    assert "images" not in output and "image_base64" not in output and b"base64" not in body
    assert len(output["image_urls"]) == 2 and len(body) < 4096  # a site told "done" without any image's bytes
    for url in output["image_urls"]:
        assert httpx.get(url).content[:4] == b"\x89PNG"
