"""Where jobs live: SQLite (one gateway, the default) or Redis (several gateways), behind one small interface.

Every state change is one atomic step in the store, guarded by what the caller saw (the attempt it claimed), so
two gateways can never both run a job, and a gateway that lost a job (its lease expired) cannot overwrite it.
"""

import asyncio
import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Protocol
from urllib.parse import urlparse

from .jobs import CANCELLED, DONE, EXPIRED, FAILED, QUEUED, RUNNING, SUCCEEDED, Job


class Store(Protocol):
    async def add(self, job: Job) -> Job: ...
    async def get(self, call_id: str) -> Job | None: ...
    async def claim(self, backend: str, lease_s: float) -> Job | None: ...
    async def renew(self, job: Job, lease_s: float) -> bool: ...
    async def finish(self, job: Job, result: dict | None = None, error: str | None = None) -> bool: ...
    async def requeue(self, job: Job) -> bool: ...
    async def cancel(self, job: Job) -> bool: ...
    async def counts(self) -> dict[tuple[str, str], int]:
        """Jobs by (state, model key) among those the store holds."""
    async def position(self, job: Job) -> int | None: ...
    async def recover(self, max_attempts: int) -> list[Job]:
        """Queue again the running jobs whose lease lapsed; fail those tried max_attempts times. Returns those."""
    async def sweep(self, queue_timeout_s: float, result_ttl_s: float, tombstone_ttl_s: float) -> list[Job]:
        """Fail jobs queued too long (returned), expire old results, forget old tombstones."""
    async def close(self) -> None: ...


def open_store(url: str) -> Store:
    parsed = urlparse(url)
    if parsed.scheme == "sqlite":
        return SQLiteStore(Path(url.removeprefix("sqlite:///")))
    if parsed.scheme in ("redis", "rediss", "unix"):
        return RedisStore(url)
    raise ValueError(f"store: {url!r} is neither sqlite:///path nor redis://host:port/db")


_FAILED_RECOVERY = "error: the replica running this job stopped answering, and it was already tried {n} times"
_QUEUE_TIMEOUT = "error: no replica took this job within {s:g} s; are the replicas up?"
_EXPIRED = "error: this callID's result expired (results are kept {s:g} s after the job ends)"
_CANCELLED = "error: this job was cancelled by the caller"
_ENDED = [state for state in DONE if state != EXPIRED]


class SQLiteStore:
    """One file; every step in one IMMEDIATE transaction, so even two processes on one file stay consistent."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS jobs (call_id TEXT PRIMARY KEY, seq INTEGER, state TEXT, "
            "lease_until REAL, created REAL, finished REAL, fields TEXT NOT NULL)"
        )
        self._db.execute("CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs (state, seq)")
        self._lock = threading.Lock()

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

    def _load(self, call_id: str) -> Job | None:
        row = self._db.execute("SELECT fields FROM jobs WHERE call_id = ?", (call_id,)).fetchone()
        return Job.from_fields(json.loads(row[0])) if row else None

    def _save(self, job: Job) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO jobs (call_id, seq, state, lease_until, created, finished, fields) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (job.call_id, job.seq, job.state, job.lease_until, job.created, job.finished,
             json.dumps(job.to_fields())),
        )

    def _update_if(self, job: Job, expected_state: str, **changes) -> bool:
        current = self._load(job.call_id)
        if current is None or current.state != expected_state or current.attempts != job.attempts:
            return False
        for name, value in changes.items():
            setattr(current, name, value)
        self._save(current)
        return True

    async def add(self, job: Job) -> Job:
        def step():
            job.seq = self._db.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM jobs").fetchone()[0]
            self._save(job)
            return job
        return await self._run(step)

    async def get(self, call_id: str) -> Job | None:
        return await self._run(self._load, call_id)

    async def claim(self, backend: str, lease_s: float) -> Job | None:
        def step():
            row = self._db.execute(
                "SELECT call_id FROM jobs WHERE state = ? ORDER BY seq LIMIT 1", (QUEUED,)
            ).fetchone()
            if row is None:
                return None
            job = self._load(row[0])
            now = time.time()
            job.state, job.attempts, job.started, job.backend = RUNNING, job.attempts + 1, now, backend
            job.lease_until = now + lease_s
            self._save(job)
            return job
        return await self._run(step)

    async def renew(self, job: Job, lease_s: float) -> bool:
        return await self._run(lambda: self._update_if(job, RUNNING, lease_until=time.time() + lease_s))

    async def finish(self, job: Job, result: dict | None = None, error: str | None = None) -> bool:
        state = FAILED if error else SUCCEEDED
        return await self._run(lambda: self._update_if(
            job, RUNNING, state=state, result=result, error=error, finished=time.time(), lease_until=None))

    async def requeue(self, job: Job) -> bool:
        return await self._run(lambda: self._update_if(job, RUNNING, state=QUEUED, lease_until=None, backend=None))

    async def cancel(self, job: Job) -> bool:
        return job.state in (QUEUED, RUNNING) and await self._run(lambda: self._update_if(
            job, job.state, state=CANCELLED, error=_CANCELLED, finished=time.time(), lease_until=None))

    async def counts(self) -> dict[tuple[str, str], int]:
        def step():
            rows = self._db.execute("SELECT state, json_extract(fields, '$.model_key'), COUNT(*) FROM jobs "
                                    "GROUP BY 1, 2").fetchall()
            return {(state, json.loads(key)): n for state, key, n in rows}
        return await self._run(step)

    async def position(self, job: Job) -> int | None:
        def step():
            if job.state != QUEUED:
                return None
            return self._db.execute("SELECT COUNT(*) FROM jobs WHERE state = ? AND seq < ?",
                                    (QUEUED, job.seq)).fetchone()[0]
        return await self._run(step)

    async def recover(self, max_attempts: int) -> list[Job]:
        def step():
            failed = []
            for (call_id,) in self._db.execute("SELECT call_id FROM jobs WHERE state = ? AND lease_until < ?",
                                               (RUNNING, time.time())).fetchall():
                job = self._load(call_id)
                if job.attempts < max_attempts:
                    self._update_if(job, RUNNING, state=QUEUED, lease_until=None, backend=None)
                elif self._update_if(job, RUNNING, state=FAILED, lease_until=None, finished=time.time(),
                                     error=_FAILED_RECOVERY.format(n=job.attempts)):
                    failed.append(self._load(call_id))
            return failed
        return await self._run(step)

    async def sweep(self, queue_timeout_s: float, result_ttl_s: float, tombstone_ttl_s: float) -> list[Job]:
        def step():
            now, failed = time.time(), []
            for (call_id,) in self._db.execute("SELECT call_id FROM jobs WHERE state = ? AND created < ?",
                                               (QUEUED, now - queue_timeout_s)).fetchall():
                if self._update_if(self._load(call_id), QUEUED, state=FAILED, finished=now,
                                   error=_QUEUE_TIMEOUT.format(s=queue_timeout_s)):
                    failed.append(self._load(call_id))
            for (call_id,) in self._db.execute(
                f"SELECT call_id FROM jobs WHERE state IN ({', '.join('?' * len(_ENDED))}) AND finished < ?",
                (*_ENDED, now - result_ttl_s),
            ).fetchall():
                job = self._load(call_id)
                self._update_if(job, job.state, state=EXPIRED, result=None, inputs={},
                                error=_EXPIRED.format(s=result_ttl_s))
            self._db.execute("DELETE FROM jobs WHERE state = ? AND finished < ?",
                             (EXPIRED, now - result_ttl_s - tombstone_ttl_s))
            return failed
        return await self._run(step)

    async def close(self) -> None:
        self._db.close()


class RedisStore:
    """Jobs as hashes; the queue a sorted set by seq; running jobs a sorted set by lease expiry.

    Each guarded change is a Lua script, so it is atomic across every gateway sharing the database.
    """

    _GUARDED_UPDATE = """
    local key, queue, running = KEYS[1], KEYS[2], KEYS[3]
    if redis.call('HGET', key, 'state') ~= ARGV[1] or redis.call('HGET', key, 'attempts') ~= ARGV[2] then
      return 0
    end
    for i = 4, #ARGV, 2 do redis.call('HSET', key, ARGV[i], ARGV[i + 1]) end
    local state = redis.call('HGET', key, 'state')
    local id = ARGV[3]
    redis.call('ZREM', running, id)
    redis.call('ZREM', queue, id)
    if state == '"running"' then
      redis.call('ZADD', running, cjson.decode(redis.call('HGET', key, 'lease_until')), id)
    elseif state == '"queued"' then
      redis.call('ZADD', queue, cjson.decode(redis.call('HGET', key, 'seq')), id)
    end
    return 1
    """
    _CLAIM = """
    local popped = redis.call('ZPOPMIN', KEYS[1])
    if #popped == 0 then return nil end
    local id = popped[1]
    local key = ARGV[1] .. id
    local attempts = cjson.decode(redis.call('HGET', key, 'attempts')) + 1
    redis.call('HSET', key, 'state', '"running"', 'attempts', tostring(attempts), 'started', ARGV[2],
               'lease_until', ARGV[3], 'backend', ARGV[4])
    redis.call('ZADD', KEYS[2], tonumber(ARGV[3]), id)
    return id
    """

    def __init__(self, url: str, prefix: str = "sdgw:"):
        import redis.asyncio as redis
        from redis.asyncio.retry import Retry
        from redis.backoff import ExponentialBackoff

        # A Redis restart (a few seconds) is ridden out: each command reconnects and retries for up to about 15 s.
        retry = Retry(ExponentialBackoff(cap=1.0, base=0.05), retries=18)  # 0.1 + 0.2 + 0.4 + 0.8 + 14 x 1 s
        self._redis = redis.Redis.from_url(url, socket_timeout=10, socket_connect_timeout=5, retry=retry,
                                           health_check_interval=10)
        self._prefix = prefix
        self._queue, self._running, self._seq = prefix + "queue", prefix + "running", prefix + "seq"
        self._guarded = self._redis.register_script(self._GUARDED_UPDATE)
        self._claim = self._redis.register_script(self._CLAIM)

    def _key(self, call_id: str) -> str:
        return f"{self._prefix}job:{call_id}"

    async def add(self, job: Job) -> Job:
        job.seq = await self._redis.incr(self._seq)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(self._key(job.call_id), mapping=job.to_fields())
            pipe.zadd(self._queue, {job.call_id: job.seq})
            await pipe.execute()
        return job

    async def get(self, call_id: str) -> Job | None:
        values = await self._redis.hgetall(self._key(call_id))
        return Job.from_fields(values) if values else None

    async def claim(self, backend: str, lease_s: float) -> Job | None:
        now = time.time()
        call_id = await self._claim(keys=[self._queue, self._running],
                                    args=[self._prefix + "job:", json.dumps(now), json.dumps(now + lease_s),
                                          json.dumps(backend)])
        return await self.get(call_id.decode()) if call_id else None

    async def _update_if(self, job: Job, expected_state: str, **changes) -> bool:
        args = [json.dumps(expected_state), json.dumps(job.attempts), job.call_id]
        for name, value in changes.items():
            args += [name, json.dumps(value)]
        return bool(await self._guarded(keys=[self._key(job.call_id), self._queue, self._running], args=args))

    async def renew(self, job: Job, lease_s: float) -> bool:
        return await self._update_if(job, RUNNING, lease_until=time.time() + lease_s)

    async def finish(self, job: Job, result: dict | None = None, error: str | None = None) -> bool:
        state = FAILED if error else SUCCEEDED
        return await self._update_if(job, RUNNING, state=state, result=result, error=error,
                                     finished=time.time(), lease_until=None)

    async def requeue(self, job: Job) -> bool:
        return await self._update_if(job, RUNNING, state=QUEUED, lease_until=None, backend=None)

    async def cancel(self, job: Job) -> bool:
        return job.state in (QUEUED, RUNNING) and await self._update_if(
            job, job.state, state=CANCELLED, error=_CANCELLED, finished=time.time(), lease_until=None)

    async def counts(self) -> dict[tuple[str, str], int]:
        counts: dict[tuple[str, str], int] = {}
        async for key in self._redis.scan_iter(match=self._prefix + "job:*", count=500):
            state, model_key = await self._redis.hmget(key, "state", "model_key")
            if state and model_key:
                pair = (json.loads(state), json.loads(model_key))
                counts[pair] = counts.get(pair, 0) + 1
        return counts

    async def position(self, job: Job) -> int | None:
        return await self._redis.zrank(self._queue, job.call_id)

    async def recover(self, max_attempts: int) -> list[Job]:
        failed = []
        for call_id in [c.decode() for c in await self._redis.zrangebyscore(self._running, "-inf", time.time())]:
            job = await self.get(call_id)
            if job is None or job.state != RUNNING:
                continue
            if job.attempts < max_attempts:
                await self._update_if(job, RUNNING, state=QUEUED, lease_until=None, backend=None)
            elif await self._update_if(job, RUNNING, state=FAILED, lease_until=None, finished=time.time(),
                                       error=_FAILED_RECOVERY.format(n=job.attempts)):
                failed.append(await self.get(call_id))
        return failed

    async def sweep(self, queue_timeout_s: float, result_ttl_s: float, tombstone_ttl_s: float) -> list[Job]:
        now, failed = time.time(), []
        for call_id in [c.decode() for c in await self._redis.zrange(self._queue, 0, -1)]:
            job = await self.get(call_id)
            if job and job.created < now - queue_timeout_s and await self._update_if(
                job, QUEUED, state=FAILED, finished=now, error=_QUEUE_TIMEOUT.format(s=queue_timeout_s)
            ):
                failed.append(await self.get(call_id))
        # An expired job keeps a tombstone (so its callID says 'expired', not 'does not exist'), then goes.
        async for key in self._redis.scan_iter(match=self._prefix + "job:*", count=500):
            job = Job.from_fields(await self._redis.hgetall(key))
            if job.done and job.state != EXPIRED and job.finished and job.finished < now - result_ttl_s:
                await self._update_if(job, job.state, state=EXPIRED, result=None, inputs={},
                                      error=_EXPIRED.format(s=result_ttl_s))
                await self._redis.expire(key, int(tombstone_ttl_s) + 1)
        return failed

    async def close(self) -> None:
        await self._redis.aclose()
