"""RunPod Serverless: the same image and the same handler, with jobs taken from RunPod's queue instead of over HTTP.

RunPod runs the image's command in each worker it starts and sets RUNPOD_WEBHOOK_GET_JOB there; `app.serve()` then
hands the handler to the runpod SDK, which takes the jobs that /run and /runsync queue. A job's `input` is the
modelInputs; its `output` is the answer that POST / gives. A bad input is RunPod's failed job, with our message in
`error`; the worker keeps taking jobs. While a job runs, its progress (steps, total, seconds left, the preview
where PREVIEW_EVERY is set) goes to RunPod with the SDK's progress_update, so that RunPod's /status shows it as the
IN_PROGRESS job's `output`. `python3 app.py --rp_serve_api` starts the SDK's local test API instead (which shows no
progress: it runs each job to its end before answering); `--test_input '{"input": ...}'` runs one job and exits.
"""

import json
import os
import sys
import threading
from collections.abc import Callable

from potassium import Request, Response
from potassium.types import RequestHeaders

RUNPOD_FLAGS = ("--rp_serve_api", "--test_input")  # the SDK's local test API; one job from the command line


def wanted() -> bool:
    return bool(os.environ.get("RUNPOD_WEBHOOK_GET_JOB")) or any(flag in sys.argv for flag in RUNPOD_FLAGS)


PROGRESS_EVERY_S = 1.0  # each update is a POST to RunPod's API, sent only when the step moved
RELAYED = ("step", "total_steps", "elapsed_s", "eta_s", "preview")


class Relay:
    """Sends the running job's progress to RunPod while it runs: `progress()` is GET /progress's answer."""

    def __init__(self, job: dict, progress: Callable[[], dict], send: Callable[[dict, dict], None]):
        self.job, self.progress, self.send = job, progress, send
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        last = None
        while not self._stop.wait(PROGRESS_EVERY_S):
            now = self.progress()
            # From the first step done: before it, the total is not known yet.
            if now.get("running") and now.get("request_id") == str(self.job.get("id", ""))[:64] and \
                    now.get("step") and now.get("step") != last:
                last = now.get("step")
                self.send(self.job, {key: now[key] for key in RELAYED if now.get(key) is not None})

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def start(handler: Callable[[dict, Request], Response], context: dict,
          progress: Callable[[], dict] | None = None) -> None:
    # The SDK logs each job's whole output (megabytes of base64) at DEBUG, its default level.
    os.environ.setdefault("RUNPOD_LOG_LEVEL", "INFO")
    import runpod  # the SDK and its web stack load only where RunPod runs us

    def run(job: dict) -> dict:
        request = Request(id=str(job.get("id", ""))[:64], headers=RequestHeaders({}), json=job.get("input"))
        relay = Relay(job, progress, runpod.serverless.progress_update) if progress else None
        try:
            response = handler(context, request)
        finally:
            if relay:
                relay.stop()
        answer = json.loads(response.body)
        return answer if response.status == 200 else {"error": answer["error"]}

    runpod.serverless.start({"handler": run})
