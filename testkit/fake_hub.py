"""A local HTTP server that answers like the Hugging Face hub for a few repos, so download.py runs for real.

Serves the endpoints huggingface_hub uses: repo info, the file tree, and /resolve/ for each file (HEAD and GET).
A repo registered with a token answers 401 (as the hub does for private repos) unless that token is sent;
a gated one answers 403 with the hub's GatedRepo error code.
"""

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse

COMMIT = "0123456789abcdef0123456789abcdef01234567"


class FakeHub:
    def __init__(self):
        self.repos: dict[str, tuple[Path, str | None]] = {}
        self.gated: set[str] = set()
        self.downloaded: list[str] = []
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def add(self, repo_id: str, folder: Path, token: str | None = None, gated: bool = False) -> None:
        self.repos[repo_id] = (folder, token)
        if gated:
            self.gated.add(repo_id)

    def close(self) -> None:
        self.server.shutdown()

    def _handler(self):
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_HEAD(self):
                self._answer(send_body=False)

            def do_GET(self):
                self._answer(send_body=True)

            def _answer(self, send_body: bool):
                path = unquote(urlparse(self.path).path)
                repo_id, folder, rest = self._repo(path)
                if folder is None:
                    return self._send(404, b'{"error":"Repository not found"}', {"X-Error-Code": "RepoNotFound"})
                if repo_id in hub.gated:
                    return self._send(403, b'{"error":"Access to model is restricted"}', {"X-Error-Code": "GatedRepo"})
                token = hub.repos[repo_id][1]
                if token and self.headers.get("Authorization") != f"Bearer {token}":
                    return self._send(401, b'{"error":"Invalid credentials"}', {"X-Error-Code": "RepoNotFound"})
                files = sorted(p for p in folder.rglob("*") if p.is_file())
                if rest.startswith("tree/"):
                    tree = [{"type": "file", "path": str(p.relative_to(folder)), "size": p.stat().st_size,
                             "oid": _sha1(p)} for p in files]
                    return self._send(200, json.dumps(tree).encode(), {"Content-Type": "application/json"})
                if rest.startswith("resolve/"):
                    name = rest.split("/", 2)[2]
                    file = folder / name
                    if not file.is_file():
                        return self._send(404, b"", {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": COMMIT})
                    body = file.read_bytes()
                    if send_body:
                        hub.downloaded.append(name)
                    return self._send(200, body, {"X-Repo-Commit": COMMIT, "ETag": f'"{_sha1(file)}"'}, send_body)
                info = {"id": repo_id, "modelId": repo_id, "sha": COMMIT, "private": bool(token),
                        "siblings": [{"rfilename": str(p.relative_to(folder))} for p in files]}
                return self._send(200, json.dumps(info).encode(), {"Content-Type": "application/json"})

            def _repo(self, path: str):
                for repo_id, (folder, _) in hub.repos.items():
                    for prefix in (f"/api/models/{repo_id}", f"/{repo_id}"):
                        if path == prefix or path.startswith(prefix + "/"):
                            rest = path[len(prefix):].lstrip("/")
                            if prefix.startswith("/api/") or rest.startswith("resolve/"):
                                return repo_id, folder, rest
                return None, None, ""

            def _send(self, status: int, body: bytes, headers: dict, send_body: bool = True):
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if send_body:
                    self.wfile.write(body)

        return Handler


def _sha1(path: Path) -> str:
    return hashlib.sha1(path.read_bytes()).hexdigest()
