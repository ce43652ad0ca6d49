"""The replica's probes, for Docker's HEALTHCHECK and Kubernetes:

    python3 -m serverless_sd.health [URL]          (default http://127.0.0.1:$PORT)
    python3 -m serverless_sd.health --drain [URL]  (Kubernetes' preStop hook)

The check exits 0 while GET /healthz answers 200; 1 when the replica answers 503 (stuck, see serving.Health) or
cannot answer within 4 s. The drain returns once the replica has been idle for DRAIN_IDLE_S seconds (default 15):
a replica being scaled down finishes the job it runs, and waits out the gateways' next lookup of its Service's name
(--resolve-every, and the DNS answer's lifetime) so that no new job reaches it after. Standard library only: it
starts in milliseconds, every 30 s, for the life of the container.
"""

import json
import os
import sys
import time
import urllib.error
import urllib.request


def check(base: str) -> int:
    url = base.rstrip("/") + "/healthz"
    try:
        with urllib.request.urlopen(url, timeout=4):
            return 0
    except urllib.error.HTTPError as error:
        try:
            why = json.loads(error.read()).get("error")
        except ValueError:
            why = f"HTTP {error.code}"
        print(f"unhealthy: {why}", file=sys.stderr)
    except OSError as error:
        print(f"unhealthy: cannot reach {url}: {error}", file=sys.stderr)
    return 1


def drain(base: str, idle_s: float) -> int:
    while True:
        try:
            with urllib.request.urlopen(base.rstrip("/") + "/__status__", timeout=4) as response:
                status = json.loads(response.read())
        except (OSError, ValueError):
            return 0  # nothing left to wait for
        if status["gpu_available"] and status["idle_time"] >= idle_s * 1000:
            return 0
        time.sleep(0.5)


def main(argv: list[str]) -> int:
    args = argv[1:]
    draining = "--drain" in args
    args = [arg for arg in args if arg != "--drain"]
    base = args[0] if args else f"http://127.0.0.1:{os.environ.get('PORT', '8000')}"
    return drain(base, float(os.environ.get("DRAIN_IDLE_S", "15"))) if draining else check(base)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
