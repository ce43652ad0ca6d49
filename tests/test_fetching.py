"""fetching.py against a real local HTTP server: what is fetched, and every way a URL is refused."""

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from serverless_sd.fetching import Allowed, FetchError, fetch, fetch_bytes

BODY = b"x" * 5000


@pytest.fixture(scope="module")
def server():
    """/file (5000 bytes), /chunked (the same without a Content-Length), /slow, /missing, and redirects."""
    hits = []

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def do_GET(self):
            hits.append(self.path)
            if self.path == "/file":
                self._send(200, BODY, {"Content-Length": str(len(BODY))})
            elif self.path == "/chunked":
                self.send_response(200)
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                for start in range(0, len(BODY), 1000):
                    self.wfile.write(b"%x\r\n%s\r\n" % (1000, BODY[start:start + 1000]))
                self.wfile.write(b"0\r\n\r\n")
            elif self.path == "/slow":
                time.sleep(2)
                self._send(200, BODY, {"Content-Length": str(len(BODY))})
            elif self.path.startswith("/redirect?to="):
                self._send(302, b"", {"Location": self.path.partition("=")[2], "Content-Length": "0"})
            else:
                self._send(404, b"no", {"Content-Length": "2"})

        def _send(self, status, body, headers):
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(body)

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    httpd.base = f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.hits = hits
    yield httpd
    httpd.shutdown()


@pytest.fixture
def allowed(server) -> Allowed:
    return Allowed.parse(server.base)  # the operator lists this very address: loopback is then allowed


def test_a_listed_address_is_fetched_whole_into_the_file(server, allowed, tmp_path):
    for path in ("/file", "/chunked"):
        target = fetch(f"{server.base}{path}", allowed, 10_000, 5, tmp_path / "out" / "f.bin")
        assert target.read_bytes() == BODY
    assert list((tmp_path / "out").iterdir()) == [target]  # no temporary file left beside it


@pytest.mark.parametrize("path, max_bytes, message", [
    ("/file", 4999, "answered 5000 bytes, over the limit of 4999"),  # refused on its Content-Length
    ("/chunked", 4999, "sent more than the limit of 4999 bytes"),  # refused while it streams
    ("/missing", 10_000, "answered HTTP 404"),
    ("/slow", 10_000, "did not answer in time"),
])
def test_too_large_missing_or_slow_is_refused_and_nothing_is_left(server, allowed, tmp_path, path, max_bytes,
                                                                   message):
    with pytest.raises(FetchError, match=message):
        fetch(f"{server.base}{path}", allowed, max_bytes, 0.5, tmp_path / "f.bin")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("url, message", [
    ("ftp://127.0.0.1/x", "must be an https:// URL"),
    ("file:///etc/passwd", "must be an https:// URL"),
    ("https://example.com/lora.safetensors", "'example.com' is not one this deployment fetches from"),
    ("https://huggingface.co.evil.example/x", "is not one this deployment fetches from"),
    ("http://huggingface.co/x", "must be an https:// URL"),  # listed for https only
    ("https://user:secret@huggingface.co/x", "must not carry a user name or password"),
    ("https://[::1", "not a valid URL"),
])
def test_urls_are_refused_before_any_connection(url, message):
    allowed = Allowed.parse("huggingface.co,*.hf.co")
    assert message in allowed.refusal(url)
    with pytest.raises(FetchError, match=message.replace("(", r"\(").replace("[", r"\[")):
        fetch_bytes(url, allowed, 100, 1)


def test_nothing_is_fetched_when_nothing_is_listed():
    assert "none: fetching is off" in Allowed.parse("").refusal("https://huggingface.co/x")


def test_a_listed_name_that_resolves_inside_the_network_is_refused(server):
    """DNS can point any name at an internal address: a name is allowed only to public ones, whatever the list."""
    port = server.server_address[1]
    allowed = Allowed.parse(f"http://localhost:{port}")
    with pytest.raises(FetchError, match="resolves to an address inside the network"):
        fetch_bytes(f"http://localhost:{port}/file", allowed, 10_000, 2)
    assert "/file" not in server.hits[-1:]  # refused before connecting


def test_redirects_are_followed_only_to_listed_hosts(server, allowed):
    assert fetch_bytes(f"{server.base}/redirect?to={server.base}/file", allowed, 10_000, 5) == BODY
    assert fetch_bytes(f"{server.base}/redirect?to=/file", allowed, 10_000, 5) == BODY  # relative: same host
    with pytest.raises(FetchError, match="'169.254.169.254' is not one this deployment fetches from"):
        fetch_bytes(f"{server.base}/redirect?to=http://169.254.169.254/latest/meta-data", allowed, 10_000, 5)
    loop = f"{server.base}/redirect?to={server.base}/redirect?to={server.base}/redirect?to={server.base}" \
           f"/redirect?to={server.base}/file"
    with pytest.raises(FetchError, match="more than 3 redirects"):
        fetch_bytes(loop, allowed, 10_000, 5)


def test_the_allow_list_is_checked_when_the_settings_are_read():
    with pytest.raises(ValueError, match="allow-list entry 'ftp://x'"):
        Allowed.parse("huggingface.co, ftp://x")
    allowed = Allowed.parse(" huggingface.co , *.hf.co ,http://10.0.0.5:9000")
    assert allowed.refusal("https://cas-bridge.xethub.hf.co/a") is None
    assert allowed.refusal("http://10.0.0.5:9000/a") is None and allowed.lists_address("10.0.0.5")
    assert allowed.refusal("http://10.0.0.5:9001/a") is not None
