"""The replica's health check, for Docker's HEALTHCHECK and Kubernetes' liveness probe:

    python3 -m serverless_sd.health [URL]      (default http://127.0.0.1:$PORT)

Exits 0 while GET /healthz answers 200; 1 when the replica answers 503 (stuck, see serving.Health) or cannot answer
within 4 s. Standard library only: it starts in milliseconds, every 30 s, for the life of the container.
"""

import json
import os
import sys
import urllib.error
import urllib.request


def main(argv: list[str]) -> int:
    base = argv[1] if len(argv) > 1 else f"http://127.0.0.1:{os.environ.get('PORT', '8000')}"
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


if __name__ == "__main__":
    sys.exit(main(sys.argv))
