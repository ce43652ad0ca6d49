"""Where jobs live: SQLite (one gateway, the default) or Redis (several gateways).

The rules (what each change of state requires and does) are written once, in JobStore. A backend implements a few
primitives: add (within the queue's bounds), get, the two payloads, claim, update (atomic, guarded by values the
caller saw, so two gateways can never both run a job and a gateway that lost a job cannot overwrite it), and
index queries that cost what they return, never what the store holds: the periodic work and a check cost the same
with ten jobs kept or a hundred thousand.
"""

import asyncio
import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlparse

from .jobs import ACTIVE, CANCELLED, COLUMNS, EXPIRED, FAILED, QUEUED, RUNNING, SUCCEEDED, Job

_GIVEN_UP = ("error: the replicas given this job failed or vanished with it {n} times (--max-tries): a job that stops "
             "every replica it is given is not run again")
_QUEUE_TIMEOUT = "error: no replica took this job within {s:g} s; are the replicas up?"
_EXPIRED = "error: this callID's result expired (results are kept {s:g} s after the job ends)"
_CANCELLED = "error: this job was cancelled by the caller"
BATCH = 100  # index entries handled per round of the periodic work
PROGRESS_TTL_S = 60  # a running job's progress not renewed in this long is stale (its replica stopped telling)


class QueueFull(Exception):
    """The job was not accepted: the message (with "error") says which bound it met."""


class Backend(Protocol):
    async def add(self, job: Job, inputs: str, max_queued: int, max_bytes: int) -> str | None:
        """Store a queued job (setting its seq) unless a bound is met: then which one ("queued" or "bytes")."""
    async def get(self, call_id: str) -> Job | None: ...
    async def inputs(self, call_id: str) -> str | None: ...
    async def result(self, call_id: str) -> str | None: ...
    async def claim(self, backend: str, now: float, lease_until: float) -> Job | None: ...
    async def update(self, call_id: str, expect: dict[str, Any], changes: dict[str, Any],
                     end: tuple[str | None, float, float] | None = None) -> bool:
        """Apply changes if every expected field still holds. end=(result, expires, forget): the job ended now, so
        drop its inputs, keep its result until expires and its record until forget."""
    async def set_progress(self, call_id: str, progress: str, expires: float) -> None: ...
    async def progress(self, call_id: str) -> str | None: ...
    async def lapsed(self, now: float) -> list[Job]: ...
    async def overdue(self, queued_before: float) -> list[Job]: ...
    async def due_webhooks(self, now: float) -> list[Job]: ...
    async def purge(self, now: float) -> None: ...
    async def counts(self) -> dict[str, int]: ...
    async def position(self, job: Job) -> int | None: ...
    async def close(self) -> None: ...


class JobStore:
    """The rules of a job's life, over any Backend."""

    def __init__(self, backend: Backend, result_ttl_s: float = 24 * 3600, max_queued: int = 1000,
                 max_queued_bytes: int = 1 << 30):
        self.backend = backend
        self.result_ttl_s = result_ttl_s
        self.tombstone_s = 6 * result_ttl_s  # after its result, a callID says "expired", not "does not exist"
        self.max_queued, self.max_queued_bytes = max_queued, max_queued_bytes

    async def add(self, job: Job, inputs: str) -> Job:
        job.input_bytes = len(inputs.encode())
        refused = await self.backend.add(job, inputs, self.max_queued, self.max_queued_bytes)
        if refused == "queued":
            raise QueueFull(f"error: the queue is full ({self.max_queued} jobs wait for this modelKey); "
                            "try again later")
        if refused == "bytes":
            raise QueueFull(f"error: the queue is full ({self.max_queued_bytes} bytes of inputs wait); try again later")
        return job

    async def get(self, call_id: str) -> Job | None:
        job = await self.backend.get(call_id)
        if job and job.done and job.finished and time.time() > job.finished + self.result_ttl_s:
            job.state, job.error = EXPIRED, _EXPIRED.format(s=self.result_ttl_s)
        return job

    async def inputs(self, call_id: str) -> str | None:
        return await self.backend.inputs(call_id)

    async def result(self, job: Job) -> dict | None:
        text = await self.backend.result(job.call_id) if job.state == SUCCEEDED else None
        return json.loads(text) if text else None

    async def refusal(self, job: Job) -> dict | None:
        """A failed job's error body as the app answered it (which fields it names), where it answered one."""
        text = await self.backend.result(job.call_id) if job.state == FAILED else None
        return json.loads(text) if text else None

    async def set_progress(self, job: Job, progress: dict) -> None:
        """A running job's progress (progress.Progress), as its replica last told it: for any gateway's check. Kept
        only while the job runs: a write that comes after its end (a relay cancelled mid-write) is dropped."""
        await self.backend.set_progress(job.call_id, json.dumps(progress), time.time() + PROGRESS_TTL_S)

    async def progress(self, job: Job) -> dict | None:
        text = await self.backend.progress(job.call_id) if job.state == RUNNING else None
        return json.loads(text) if text else None

    async def claim(self, backend: str, lease_s: float) -> Job | None:
        now = time.time()
        return await self.backend.claim(backend, now, now + lease_s)

    async def renew(self, job: Job, lease_s: float) -> bool:
        return await self._update(job, RUNNING, lease_until=time.time() + lease_s)

    async def finish(self, job: Job, result: str | None = None, error: str | None = None,
                     guard: dict | None = None) -> bool:
        return await self._end(job, RUNNING, FAILED if error else SUCCEEDED, error, result, guard)

    async def requeue(self, job: Job, guard: dict | None = None) -> bool:
        """Its replica failed or vanished with it: queued again, at its place in the line, one try counted."""
        return await self._update(job, RUNNING, guard, state=QUEUED, queued_at=time.time(), lease_until=None,
                                  backend=None, tries=job.tries + 1)

    async def give_up(self, job: Job, guard: dict | None = None) -> bool:
        """Failed with its replica once more, the last try --max-tries allows."""
        return await self._end(job, RUNNING, FAILED, _GIVEN_UP.format(n=job.tries + 1), guard=guard)

    async def extend(self, job: Job, lease_s: float) -> bool:
        """A lapsed lease taken over (its replica still runs the job): guarded by the lease seen."""
        return await self._update(job, RUNNING, {"lease_until": job.lease_until}, lease_until=time.time() + lease_s)

    async def cancel(self, job: Job) -> bool:
        return job.state in ACTIVE and await self._end(job, job.state, CANCELLED, _CANCELLED)

    async def lapsed(self) -> list[Job]:
        """Running jobs whose lease lapsed: their gateway died, or could not reach the store to renew it."""
        return await self.backend.lapsed(time.time())

    async def sweep(self, queue_timeout_s: float) -> list[Job]:
        """Fail the jobs that waited in the queue past the limit (returned); drop what has expired."""
        failed = []
        for job in await self.backend.overdue(time.time() - queue_timeout_s):
            if await self._end(job, QUEUED, FAILED, _QUEUE_TIMEOUT.format(s=queue_timeout_s),
                               guard={"queued_at": job.queued_at}):
                failed.append(await self.get(job.call_id))
        await self.backend.purge(time.time())
        return failed

    async def due_webhooks(self) -> list[Job]:
        return await self.backend.due_webhooks(time.time())

    async def claim_webhook(self, job: Job, retry_at: float) -> bool:
        """Take one delivery attempt (another gateway cannot take the same one); the next is due at retry_at."""
        return await self.backend.update(job.call_id, {"webhook_due": job.webhook_due,
                                                       "webhook_attempts": job.webhook_attempts},
                                         {"webhook_due": retry_at, "webhook_attempts": job.webhook_attempts + 1})

    async def reschedule_webhook(self, job: Job, attempts: int, due: float | None) -> bool:
        """After attempt number `attempts`: the next is due then, or None (delivered or given up: out of the outbox)."""
        return await self.backend.update(job.call_id, {"webhook_attempts": attempts}, {"webhook_due": due})

    async def counts(self) -> dict[str, int]:
        return await self.backend.counts()

    async def position(self, job: Job) -> int | None:
        return await self.backend.position(job) if job.state == QUEUED else None

    async def close(self) -> None:
        await self.backend.close()

    @staticmethod
    def _expect(job: Job, state: str, guard: dict | None) -> dict:
        """What must still hold for a change: the state and the attempt the caller saw, and any guard it adds."""
        return {"state": state, "attempts": job.attempts, **(guard or {})}

    async def _update(self, job: Job, expected: str, guard: dict | None = None, **changes) -> bool:
        return await self.backend.update(job.call_id, self._expect(job, expected, guard), changes)

    async def _end(self, job: Job, expected: str, state: str, error: str | None, result: str | None = None,
                   guard: dict | None = None) -> bool:
        now = time.time()
        changes = {"state": state, "error": error, "finished": now, "lease_until": None,
                   "webhook_due": now if job.webhook else None}
        return await self.backend.update(
            job.call_id, self._expect(job, expected, guard), changes,
            end=(result, now + self.result_ttl_s, now + self.result_ttl_s + self.tombstone_s))


def open_store(url: str, result_ttl_s: float = 24 * 3600, max_queued: int = 1000,
               max_queued_bytes: int = 1 << 30) -> JobStore:
    parsed = urlparse(url)
    if parsed.scheme == "sqlite":
        backend: Backend = SQLiteBackend(Path(url.removeprefix("sqlite:///")))
    elif parsed.scheme in ("redis", "rediss", "unix"):
        backend = RedisBackend(url)
    else:
        raise ValueError(f"store: {url!r} is neither sqlite:///path nor redis://host:port/db")
    return JobStore(backend, result_ttl_s, max_queued, max_queued_bytes)


class SQLiteBackend:
    """One file; every step in one IMMEDIATE transaction, so even two processes on one file stay consistent.
    A job's record is a row of columns (indexed by state and deadline); its payloads a row of their own."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"CREATE TABLE IF NOT EXISTS job (call_id TEXT PRIMARY KEY, "
                         f"{', '.join(c for c in COLUMNS if c != 'call_id')}, forget_at REAL)")
        have = {row[1] for row in self._db.execute("PRAGMA table_info(job)")}
        for column in (c for c in COLUMNS if c not in have):  # a store file from an earlier version
            self._db.execute(f"ALTER TABLE job ADD COLUMN {column} DEFAULT 0")
        self._db.execute("CREATE TABLE IF NOT EXISTS job_payload (call_id TEXT PRIMARY KEY, inputs TEXT, "
                         "result TEXT, expires REAL)")
        for name, columns in (("by_seq", "state, seq"), ("by_queued_at", "state, queued_at"),
                              ("by_lease", "state, lease_until"), ("by_model_key", "state, model_key"),
                              ("by_webhook_due", "webhook_due"), ("by_forget_at", "forget_at")):
            self._db.execute(f"CREATE INDEX IF NOT EXISTS job_{name} ON job ({columns})")
        self._db.execute("CREATE INDEX IF NOT EXISTS job_payload_by_expires ON job_payload (expires)")
        self._db.execute("CREATE TABLE IF NOT EXISTS job_progress (call_id TEXT PRIMARY KEY, progress TEXT, "
                         "expires REAL)")
        self._db.execute("CREATE INDEX IF NOT EXISTS job_progress_by_expires ON job_progress (expires)")
        self._lock = threading.Lock()
        self._select = f"SELECT {', '.join(COLUMNS)} FROM job"

    async def _run(self, step, *args):
        return await asyncio.to_thread(self._transaction, step, *args)

    def _transaction(self, step, *args):
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                value = step(*args)
                self._db.execute("COMMIT")
                return value
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def _jobs(self, where: str, *params) -> list[Job]:
        rows = self._db.execute(f"{self._select} {where}", params)
        return [Job(**dict(zip(COLUMNS, row, strict=True))) for row in rows]

    async def add(self, job: Job, inputs: str, max_queued: int, max_bytes: int) -> str | None:
        def step():
            queued = self._db.execute("SELECT COUNT(*) FROM job WHERE state = ? AND model_key = ?",
                                      (QUEUED, job.model_key)).fetchone()[0]
            if queued >= max_queued:
                return "queued"
            held = self._db.execute("SELECT COALESCE(SUM(input_bytes), 0) FROM job WHERE state IN (?, ?)",
                                    ACTIVE).fetchone()[0]
            if held + job.input_bytes > max_bytes:
                return "bytes"
            job.seq = self._db.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM job").fetchone()[0]
            values = [getattr(job, c) for c in COLUMNS]
            self._db.execute(f"INSERT INTO job ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})",
                             values)
            self._db.execute("INSERT INTO job_payload (call_id, inputs) VALUES (?, ?)", (job.call_id, inputs))
            return None
        return await self._run(step)

    async def get(self, call_id: str) -> Job | None:
        found = await self._run(self._jobs, "WHERE call_id = ?", call_id)
        return found[0] if found else None

    async def _payload(self, call_id: str, column: str) -> str | None:
        row = await self._run(lambda: self._db.execute(f"SELECT {column} FROM job_payload WHERE call_id = ?",
                                                       (call_id,)).fetchone())
        return row[0] if row else None

    async def inputs(self, call_id: str) -> str | None:
        return await self._payload(call_id, "inputs")

    async def result(self, call_id: str) -> str | None:
        return await self._payload(call_id, "result")

    async def claim(self, backend: str, now: float, lease_until: float) -> Job | None:
        def step():
            found = self._jobs("WHERE state = ? ORDER BY seq LIMIT 1", QUEUED)
            if not found:
                return None
            job = found[0]
            job.state, job.attempts, job.started, job.lease_until, job.backend = (
                RUNNING, job.attempts + 1, now, lease_until, backend)
            self._db.execute("UPDATE job SET state = ?, attempts = ?, started = ?, lease_until = ?, backend = ? "
                             "WHERE call_id = ?", (RUNNING, job.attempts, now, lease_until, backend, job.call_id))
            return job
        return await self._run(step)

    async def update(self, call_id: str, expect: dict[str, Any], changes: dict[str, Any],
                     end: tuple[str | None, float, float] | None = None) -> bool:
        assert set(expect) | set(changes) <= set(COLUMNS)  # names are ours, never a caller's
        if end:
            changes = {**changes, "forget_at": end[2]}

        def step():
            cursor = self._db.execute(
                f"UPDATE job SET {', '.join(f'{k} = ?' for k in changes)} "
                f"WHERE call_id = ? AND {' AND '.join(f'{k} IS ?' for k in expect)}",
                (*changes.values(), call_id, *expect.values()))
            if cursor.rowcount and end:
                self._db.execute("UPDATE job_payload SET inputs = NULL, result = ?, expires = ? WHERE call_id = ?",
                                 (end[0], end[1], call_id))
                self._db.execute("DELETE FROM job_progress WHERE call_id = ?", (call_id,))
            return cursor.rowcount == 1
        return await self._run(step)

    async def set_progress(self, call_id: str, progress: str, expires: float) -> None:
        await self._run(lambda: self._db.execute(
            "INSERT OR REPLACE INTO job_progress (call_id, progress, expires) SELECT ?, ?, ? "
            "WHERE EXISTS (SELECT 1 FROM job WHERE call_id = ? AND state = ?)",
            (call_id, progress, expires, call_id, RUNNING)))

    async def progress(self, call_id: str) -> str | None:
        row = await self._run(lambda: self._db.execute("SELECT progress FROM job_progress WHERE call_id = ?",
                                                       (call_id,)).fetchone())
        return row[0] if row else None

    async def lapsed(self, now: float) -> list[Job]:
        return await self._run(self._jobs, "WHERE state = ? AND lease_until < ? LIMIT ?", RUNNING, now, BATCH)

    async def overdue(self, queued_before: float) -> list[Job]:
        return await self._run(self._jobs, "WHERE state = ? AND queued_at < ? LIMIT ?", QUEUED, queued_before, BATCH)

    async def due_webhooks(self, now: float) -> list[Job]:
        return await self._run(self._jobs, "WHERE webhook_due <= ? ORDER BY webhook_due LIMIT ?", now, BATCH)

    async def purge(self, now: float) -> None:
        def step():
            self._db.execute("DELETE FROM job_payload WHERE call_id IN (SELECT call_id FROM job_payload "
                             "WHERE expires < ? LIMIT ?)", (now, BATCH * 10))
            self._db.execute("DELETE FROM job WHERE call_id IN (SELECT call_id FROM job WHERE forget_at < ? "
                             "LIMIT ?)", (now, BATCH * 10))
            self._db.execute("DELETE FROM job_progress WHERE call_id IN (SELECT call_id FROM job_progress "
                             "WHERE expires < ? LIMIT ?)", (now, BATCH * 10))
        await self._run(step)

    async def counts(self) -> dict[str, int]:
        def step():
            return {state: self._db.execute("SELECT COUNT(*) FROM job WHERE state = ?", (state,)).fetchone()[0]
                    for state in ACTIVE}
        return await self._run(step)

    async def position(self, job: Job) -> int | None:
        return await self._run(lambda: self._db.execute("SELECT COUNT(*) FROM job WHERE state = ? AND seq < ?",
                                                        (QUEUED, job.seq)).fetchone()[0])

    async def close(self) -> None:
        self._db.close()


class RedisBackend:
    """A job is a small hash (its fields JSON-encoded); its inputs, result and progress are keys of their own, the
    result, the progress and, later, the record expiring by Redis' own TTLs. Indexes: the queue (a sorted set by
    seq), queue deadlines (by queued_at), running jobs (by lease expiry), the webhook outbox (by due time), queued
    jobs per model key (a hash of counts) and the bytes of inputs held. Every change is one Lua script, atomic across
    every gateway sharing the database, and keeps the indexes in step with the record's state."""

    # KEYS: queue, deadline, by_key, bytes, seq, job, inputs.  ARGV: call_id, model_key, max_queued, max_bytes,
    # input_bytes, inputs, then the record's field/value pairs.
    _ADD = """
    if tonumber(redis.call('HGET', KEYS[3], ARGV[2]) or '0') >= tonumber(ARGV[3]) then return 'queued' end
    if tonumber(redis.call('GET', KEYS[4]) or '0') + tonumber(ARGV[5]) > tonumber(ARGV[4]) then return 'bytes' end
    local seq = redis.call('INCR', KEYS[5])
    for i = 7, #ARGV, 2 do redis.call('HSET', KEYS[6], ARGV[i], ARGV[i + 1]) end
    redis.call('HSET', KEYS[6], 'seq', tostring(seq))
    redis.call('SET', KEYS[7], ARGV[6])
    redis.call('ZADD', KEYS[1], seq, ARGV[1])
    redis.call('ZADD', KEYS[2], cjson.decode(redis.call('HGET', KEYS[6], 'queued_at')), ARGV[1])
    redis.call('HINCRBY', KEYS[3], ARGV[2], 1)
    redis.call('INCRBY', KEYS[4], ARGV[5])
    return tostring(seq)
    """
    # KEYS: queue, running, deadline, by_key.  ARGV: job key prefix, started, lease_until, backend (JSON).
    _CLAIM = """
    while true do
      local popped = redis.call('ZPOPMIN', KEYS[1])
      if #popped == 0 then return nil end
      local id = popped[1]
      local key = ARGV[1] .. id
      redis.call('ZREM', KEYS[3], id)
      local model_key = redis.call('HGET', key, 'model_key')
      if model_key then  -- else the record vanished: drop its index entries and take the next
        if redis.call('HINCRBY', KEYS[4], model_key, -1) <= 0 then redis.call('HDEL', KEYS[4], model_key) end
        local attempts = cjson.decode(redis.call('HGET', key, 'attempts')) + 1
        redis.call('HSET', key, 'state', '"running"', 'attempts', tostring(attempts), 'started', ARGV[2],
                   'lease_until', ARGV[3], 'backend', ARGV[4])
        redis.call('ZADD', KEYS[2], tonumber(ARGV[3]), id)
        return id
      end
    end
    """
    # KEYS: job, progress.  ARGV: progress, milliseconds to keep it.
    _SET_PROGRESS = """
    if redis.call('HGET', KEYS[1], 'state') ~= '"running"' then return 0 end
    redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
    return 1
    """
    # KEYS: job, queue, running, deadline, webhooks, by_key, bytes, inputs, result, progress.
    # ARGV: call_id, n_expect, n_changes, ended (0/1), has_result (0/1), result, result_ms, record_ms,
    #       then the expected and the changed field/value pairs.
    _UPDATE = """
    local job, id = KEYS[1], ARGV[1]
    local n_expect, n_changes = tonumber(ARGV[2]), tonumber(ARGV[3])
    local old = redis.call('HGET', job, 'state')
    if not old then return 0 end
    local i = 9
    for _ = 1, n_expect do
      if redis.call('HGET', job, ARGV[i]) ~= ARGV[i + 1] then return 0 end
      i = i + 2
    end
    for _ = 1, n_changes do redis.call('HSET', job, ARGV[i], ARGV[i + 1]); i = i + 2 end
    local new = redis.call('HGET', job, 'state')
    local model_key = redis.call('HGET', job, 'model_key')
    if old == '"queued"' and new ~= '"queued"' then
      redis.call('ZREM', KEYS[2], id)
      redis.call('ZREM', KEYS[4], id)
      if redis.call('HINCRBY', KEYS[6], model_key, -1) <= 0 then redis.call('HDEL', KEYS[6], model_key) end
    elseif new == '"queued"' and old ~= '"queued"' then
      redis.call('ZADD', KEYS[2], cjson.decode(redis.call('HGET', job, 'seq')), id)
      redis.call('HINCRBY', KEYS[6], model_key, 1)
    end
    if new == '"queued"' then redis.call('ZADD', KEYS[4], cjson.decode(redis.call('HGET', job, 'queued_at')), id) end
    if new == '"running"' then
      redis.call('ZADD', KEYS[3], cjson.decode(redis.call('HGET', job, 'lease_until')), id)
    else
      redis.call('ZREM', KEYS[3], id)
    end
    local due = redis.call('HGET', job, 'webhook_due')
    if due and due ~= 'null' then
      redis.call('ZADD', KEYS[5], cjson.decode(due), id)
    else
      redis.call('ZREM', KEYS[5], id)
    end
    if ARGV[4] == '1' then
      redis.call('DECRBY', KEYS[7], cjson.decode(redis.call('HGET', job, 'input_bytes')))
      redis.call('DEL', KEYS[8], KEYS[10])
      if ARGV[5] == '1' then redis.call('SET', KEYS[9], ARGV[6], 'PX', ARGV[7]) end
      redis.call('PEXPIRE', job, ARGV[8])
    end
    return 1
    """

    def __init__(self, url: str, prefix: str = "sdgw2:"):
        import redis.asyncio as redis
        from redis.asyncio.retry import Retry
        from redis.backoff import ExponentialBackoff

        # A Redis restart (a few seconds) is ridden out: each command reconnects and retries for up to about 15 s.
        retry = Retry(ExponentialBackoff(cap=1.0, base=0.05), retries=18)  # 0.1 + 0.2 + 0.4 + 0.8 + 14 x 1 s
        self._redis = redis.Redis.from_url(url, socket_timeout=10, socket_connect_timeout=5, retry=retry,
                                           health_check_interval=10)
        self._prefix = prefix
        names = ("queue", "running", "deadline", "webhooks", "by_key", "bytes", "seq")
        self._queue, self._running, self._deadline, self._webhooks, self._by_key, self._bytes, self._seq = (
            prefix + name for name in names)
        self._add = self._redis.register_script(self._ADD)
        self._claim = self._redis.register_script(self._CLAIM)
        self._update = self._redis.register_script(self._UPDATE)
        self._set_progress = self._redis.register_script(self._SET_PROGRESS)

    def _key(self, call_id: str, part: str = "job") -> str:
        return f"{self._prefix}{part}:{call_id}"

    async def add(self, job: Job, inputs: str, max_queued: int, max_bytes: int) -> str | None:
        pairs = [item for pair in job.to_fields().items() for item in pair]
        answer = (await self._add(
            keys=[self._queue, self._deadline, self._by_key, self._bytes, self._seq, self._key(job.call_id),
                  self._key(job.call_id, "inputs")],
            args=[job.call_id, json.dumps(job.model_key), max_queued, max_bytes, job.input_bytes, inputs, *pairs],
        )).decode()
        if answer in ("queued", "bytes"):
            return answer
        job.seq = int(answer)
        return None

    async def get(self, call_id: str) -> Job | None:
        values = await self._redis.hgetall(self._key(call_id))
        return Job.from_fields(values) if values else None

    async def inputs(self, call_id: str) -> str | None:
        value = await self._redis.get(self._key(call_id, "inputs"))
        return value.decode() if value is not None else None

    async def result(self, call_id: str) -> str | None:
        value = await self._redis.get(self._key(call_id, "result"))
        return value.decode() if value is not None else None

    async def claim(self, backend: str, now: float, lease_until: float) -> Job | None:
        call_id = await self._claim(keys=[self._queue, self._running, self._deadline, self._by_key],
                                    args=[self._prefix + "job:", json.dumps(now), json.dumps(lease_until),
                                          json.dumps(backend)])
        return await self.get(call_id.decode()) if call_id else None

    async def update(self, call_id: str, expect: dict[str, Any], changes: dict[str, Any],
                     end: tuple[str | None, float, float] | None = None) -> bool:
        result, expires, forget = end or (None, 0.0, 0.0)
        now = time.time()
        args = [call_id, len(expect), len(changes), int(end is not None), int(result is not None), result or "",
                max(1, int((expires - now) * 1000)), max(1, int((forget - now) * 1000))]
        for pairs in (expect, changes):
            for name, value in pairs.items():
                args += [name, json.dumps(value)]
        keys = [self._key(call_id), self._queue, self._running, self._deadline, self._webhooks, self._by_key,
                self._bytes, *(self._key(call_id, part) for part in ("inputs", "result", "progress"))]
        return bool(await self._update(keys=keys, args=args))

    async def set_progress(self, call_id: str, progress: str, expires: float) -> None:
        await self._set_progress(keys=[self._key(call_id), self._key(call_id, "progress")],
                                 args=[progress, max(1, int((expires - time.time()) * 1000))])

    async def progress(self, call_id: str) -> str | None:
        value = await self._redis.get(self._key(call_id, "progress"))
        return value.decode() if value is not None else None

    async def _indexed(self, index: str, upto: float) -> list[Job]:
        jobs = []
        for raw in await self._redis.zrangebyscore(index, "-inf", upto, start=0, num=BATCH):
            job = await self.get(raw.decode())
            if job is None:  # its record expired or vanished: the index entry goes too
                await self._redis.zrem(index, raw)
            else:
                jobs.append(job)
        return jobs

    async def lapsed(self, now: float) -> list[Job]:
        return await self._indexed(self._running, now)

    async def overdue(self, queued_before: float) -> list[Job]:
        return await self._indexed(self._deadline, queued_before)

    async def due_webhooks(self, now: float) -> list[Job]:
        return await self._indexed(self._webhooks, now)

    async def purge(self, now: float) -> None:
        """Nothing to do: results and records expire by Redis' own TTLs."""

    async def counts(self) -> dict[str, int]:
        queued, running = await asyncio.gather(self._redis.zcard(self._queue), self._redis.zcard(self._running))
        return {QUEUED: queued, RUNNING: running}

    async def position(self, job: Job) -> int | None:
        return await self._redis.zrank(self._queue, job.call_id)

    async def close(self) -> None:
        await self._redis.aclose()
