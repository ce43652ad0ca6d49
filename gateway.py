"""Banana's v4 REST API, self-hosted: start/check with callIDs and long polling, in front of app.py replicas.

    python3 gateway.py --backend http://127.0.0.1:8000        (docs/gateway.md lists every flag; --help too)
"""

from serverless_sd.gateway.api import main

if __name__ == "__main__":
    main()
