"""A job's record and its lifecycle: queued -> running -> succeeded | failed (or back to queued, once, on a retry);
queued or running -> cancelled; any end -> expired, when its result is dropped."""

import json
import time
import uuid
from dataclasses import asdict, dataclass, field, fields

QUEUED, RUNNING, SUCCEEDED, FAILED, EXPIRED = "queued", "running", "succeeded", "failed", "expired"
CANCELLED = "cancelled"
DONE = (SUCCEEDED, FAILED, CANCELLED, EXPIRED)


@dataclass
class Job:
    model_key: str
    inputs: dict
    webhook: str | None = None
    call_id: str = field(default_factory=lambda: f"call_{uuid.uuid4()}")
    created: float = field(default_factory=time.time)
    seq: int = 0  # FIFO order, kept when a job is retried so that it keeps its place at the front
    state: str = QUEUED
    attempts: int = 0
    started: float | None = None
    finished: float | None = None
    lease_until: float | None = None
    backend: str | None = None
    error: str | None = None
    result: dict | None = None

    @property
    def done(self) -> bool:
        return self.state in DONE

    def to_fields(self) -> dict[str, str]:
        """Flat string fields: one Redis hash field or SQLite column each, JSON-encoded."""
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
