"""A job's record and its lifecycle: queued -> running -> succeeded | failed (or back to queued: a retry, after its
replica failed or vanished with it, up to the gateway's --max-tries); queued or running -> cancelled. An ended job's
result is kept for the result TTL, then it reads as expired.

The record is small (no payload): its inputs and its result live beside it in the store, read only where needed,
so that polling a job's state costs the same whatever its images weigh.
"""

import hashlib
import json
import time
import uuid
from dataclasses import asdict, dataclass, field, fields

QUEUED, RUNNING, SUCCEEDED, FAILED, EXPIRED = "queued", "running", "succeeded", "failed", "expired"
CANCELLED = "cancelled"
ACTIVE = (QUEUED, RUNNING)
DONE = (SUCCEEDED, FAILED, CANCELLED, EXPIRED)


def work(counts: dict[str, int]) -> int:
    """The scale signal, from the store's counts by state: jobs queued and running (GET /scale, /metrics)."""
    return sum(counts.get(state, 0) for state in ACTIVE)


def owner_of(api_key: str) -> str:
    """Who may check or cancel a job: a digest of the key that started it (the key itself is never stored)."""
    return hashlib.sha256(api_key.encode("utf-8", "surrogatepass")).hexdigest()[:32]


@dataclass
class Job:
    model_key: str
    owner: str = ""
    webhook: str | None = None
    call_id: str = field(default_factory=lambda: f"call_{uuid.uuid4()}")
    created: float = field(default_factory=time.time)
    queued_at: float = field(default_factory=time.time)  # the queue time limit counts from here, reset on a retry
    seq: int = 0  # FIFO order, kept when a job is retried so that it keeps its place at the front
    state: str = QUEUED
    attempts: int = 0  # claims: each write a gateway makes is guarded by the claim it holds
    tries: int = 0  # runs lost with their replica (it crashed, or vanished with the job), bounded by --max-tries
    started: float | None = None
    finished: float | None = None
    lease_until: float | None = None
    backend: str | None = None
    error: str | None = None
    input_bytes: int = 0
    webhook_due: float | None = None  # the outbox: when the webhook is (next) to be delivered; None when it is not
    webhook_attempts: int = 0

    @property
    def done(self) -> bool:
        return self.state in DONE

    def to_fields(self) -> dict[str, str]:
        """Flat string fields: one Redis hash field each, JSON-encoded."""
        return {name: json.dumps(value) for name, value in asdict(self).items()}

    @classmethod
    def from_fields(cls, values: dict) -> "Job":
        decoded = {k.decode() if isinstance(k, bytes) else k: v for k, v in values.items()}
        return cls(**{f.name: json.loads(decoded[f.name]) for f in fields(cls) if f.name in decoded})

    def timings(self) -> dict:
        now = time.time()
        queued_until = self.started or (self.finished if self.done else now)
        timings = {"queued_s": round(queued_until - self.created, 3)}
        if self.started:
            timings["run_s"] = round((self.finished or now) - self.started, 3)
        return timings


COLUMNS = [f.name for f in fields(Job)]
