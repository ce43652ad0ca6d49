"""Banana's v4 answer envelope, declared once (Envelope), plus fields old clients ignore (state, queuePosition,
timings, progress). Every answer of start, check and cancel is one, failures included (HTTP 200, a message with
"error")."""

import time
import uuid
from typing import Literal

from pydantic import BaseModel, Field

from ..progress import Progress
from .jobs import CANCELLED, EXPIRED, FAILED, SUCCEEDED, Job

API_VERSION = "January 11, 2023"


class Envelope(BaseModel):
    id: str
    message: str = Field(description='"success", "running", "" (a start still running), "cancelled", or a failure '
                                     'that contains the word "error" and says what went wrong')
    created: int = Field(description="unix seconds")
    apiVersion: str
    modelOutputs: list[dict] | None = Field(description="[the app's answer] once the job succeeded")
    callID: str | None = None
    finished: bool | None = None
    state: Literal["queued", "running", "succeeded", "failed", "cancelled", "expired"] | None = None
    queuePosition: int | None = Field(None, ge=0, description="while queued: 0 is next")
    timings: dict[str, float] | None = Field(None, description="queued_s, and run_s once it ran")
    progress: Progress | None = Field(None, description="while running: steps done, seconds left, a preview")


def envelope(message: str, **fields) -> dict:
    answer = Envelope(id=str(uuid.uuid4()), message=message, created=int(time.time()), apiVersion=API_VERSION,
                      **fields)
    return answer.model_dump(exclude_unset=True)


def error(message: str) -> dict:
    """Banana answered failures with HTTP 200 and a message containing "error"; its clients test exactly that."""
    assert "error" in message.lower()
    return envelope(message, finished=True, modelOutputs=None)


def job_answer(job: Job, result: dict | None, queue_position: int | None = None,
               progress: dict | None = None) -> dict:
    if job.state == SUCCEEDED:
        message, outputs = "success", [result]
    elif job.state in (FAILED, CANCELLED, EXPIRED):
        message, outputs = job.error, None
    else:
        message, outputs = "running", None
    extras = {"state": job.state, "timings": job.timings()}
    if queue_position is not None:
        extras["queuePosition"] = queue_position
    if progress is not None:
        extras["progress"] = progress
    return envelope(message, callID=job.call_id, finished=job.done, modelOutputs=outputs, **extras)
