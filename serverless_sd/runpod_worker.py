"""RunPod Serverless: the same image and the same handler, with jobs taken from RunPod's queue instead of over HTTP.

RunPod runs the image's command in each worker it starts and sets RUNPOD_WEBHOOK_GET_JOB there; `app.serve()` then
hands the handler to the runpod SDK, which takes the jobs that /run and /runsync queue. A job's `input` is the
modelInputs; its `output` is the answer that POST / gives. A bad input is RunPod's failed job, with our message in
`error`; the worker keeps taking jobs. `python3 app.py --rp_serve_api` starts the SDK's local test API instead.
"""

import json
import os
import sys
from collections.abc import Callable

from potassium import Request, Response
from potassium.types import RequestHeaders


def wanted() -> bool:
    return bool(os.environ.get("RUNPOD_WEBHOOK_GET_JOB")) or "--rp_serve_api" in sys.argv


def start(handler: Callable[[dict, Request], Response], context: dict) -> None:
    # The SDK logs each job's whole output (megabytes of base64) at DEBUG, its default level.
    os.environ.setdefault("RUNPOD_LOG_LEVEL", "INFO")
    import runpod  # the SDK and its web stack load only where RunPod runs us

    def run(job: dict) -> dict:
        request = Request(id=str(job.get("id", ""))[:64], headers=RequestHeaders({}), json=job.get("input"))
        response = handler(context, request)
        answer = json.loads(response.body)
        return answer if response.status == 200 else {"error": answer["error"]}

    runpod.serverless.start({"handler": run})
