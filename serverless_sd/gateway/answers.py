"""Banana's v4 answer envelope, plus fields old clients ignore (state, queuePosition, timings)."""

import time
import uuid

from .jobs import CANCELLED, EXPIRED, FAILED, SUCCEEDED, Job

API_VERSION = "January 11, 2023"


def envelope(message: str, **fields) -> dict:
    return {"id": str(uuid.uuid4()), "message": message, "created": int(time.time()), "apiVersion": API_VERSION,
            **fields}


def error(message: str) -> dict:
    """Banana answered failures with HTTP 200 and a message containing "error"; its clients test exactly that."""
    assert "error" in message.lower()
    return envelope(message, finished=True, modelOutputs=None)


def job_answer(job: Job, result: dict | None, queue_position: int | None = None) -> dict:
    if job.state == SUCCEEDED:
        message, outputs = "success", [result]
    elif job.state in (FAILED, CANCELLED, EXPIRED):
        message, outputs = job.error, None
    else:
        message, outputs = "running", None
    extras = {"state": job.state, "timings": job.timings()}
    if queue_position is not None:
        extras["queuePosition"] = queue_position
    return envelope(message, callID=job.call_id, finished=job.done, modelOutputs=outputs, **extras)
