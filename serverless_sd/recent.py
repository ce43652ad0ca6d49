"""A replica's last answers, by the request id a gateway sent (X-Banana-Request-Id: the job's callID).

A gateway that dies while its job runs, or whose store is down when the answer comes, loses the answer, not the
work: the replica finished the job. The gateway that recovers the job asks the replica (GET /answers/<id>): still
running it (from the handler's start to its answer kept, images encoded: one state, under one lock, so that no ask
falls between the two), or answered it, and then the job is finished with that answer instead of run again: GPU
seconds paid once, one webhook. Only answers to requests that carried a request id are kept; the last MAX_ANSWERS, at
most MAX_BYTES together, each for KEEP_S, the oldest first out.
"""

import threading
import time
from collections import OrderedDict

MAX_ANSWERS, MAX_BYTES, KEEP_S = 16, 64 << 20, 600.0


class Recent:
    def __init__(self, max_answers: int = MAX_ANSWERS, max_bytes: int = MAX_BYTES, keep_s: float = KEEP_S):
        self.max_answers, self.max_bytes, self.keep_s = max_answers, max_bytes, keep_s
        self._answers: OrderedDict[str, tuple[float, int, bytes]] = OrderedDict()  # id -> (when, status, body)
        self._bytes = 0
        self._running: str | None = None
        self._lock = threading.Lock()

    def begin(self, request_id: str) -> None:
        with self._lock:
            self._running = request_id

    def keep(self, request_id: str, status: int, body: bytes) -> None:
        """The request's answer, and its end."""
        with self._lock:
            self._running = None
            if len(body) > self.max_bytes:
                return
            self._drop(request_id)
            self._answers[request_id] = (time.monotonic(), status, body)
            self._bytes += len(body)
            while len(self._answers) > self.max_answers or self._bytes > self.max_bytes:
                self._drop(next(iter(self._answers)))

    def get(self, request_id: str) -> tuple[int, bytes] | bool:
        """(status, body) of the answer given to request_id while kept (keep_s); True while it runs; else False."""
        with self._lock:
            kept = self._answers.get(request_id)
            if kept is not None and time.monotonic() - kept[0] <= self.keep_s:
                return kept[1], kept[2]
            return request_id == self._running

    def _drop(self, request_id: str) -> None:
        kept = self._answers.pop(request_id, None)
        if kept is not None:
            self._bytes -= len(kept[2])
