"""Dispatch: queued jobs go FIFO to the replicas, at most one in flight per replica (Potassium runs one at a time).

Replicas are found again every few seconds (replicas.py): one joins once its /__status__ answers, one whose address
has gone takes no new job (the one it runs may end). With no replica at all, jobs wait in the store; a job past its
time limit fails with an error. Webhooks due in the store's outbox are delivered by whichever gateway sees them
first.

What counts against a job is a run lost with its replica: the replica failed mid-job (taken out until its
/__status__ answers again), or vanished with it. The job is then queued again at its place, up to --max-tries runs;
a job that stops every replica it is given ends there, saying so. A gateway's death, or its store's outage, costs the
job nothing: while a job runs its gateway renews its lease, and a job whose lease lapsed is recovered by any gateway,
which asks the replica it was given (GET /answers/<callID>): still running it, the lease is taken over; answered it,
the job is finished with that answer (never run twice: the replica keeps its last answers, serverless_sd/recent.py);
knows nothing of it, or cannot be reached, the run was lost with the replica, a try.
"""

import asyncio
import json
import time
from collections.abc import Awaitable, Callable

import httpx
from pydantic import ValidationError

from .. import logs
from ..progress import Progress
from .answers import job_answer
from .jobs import Job
from .metrics import Metrics
from .replicas import resolve_all
from .stores import JobStore
from .webhooks import TIMEOUT_S, Webhooks

PROGRESS_EVERY_S = 0.5  # how often a running job's progress is read from its replica


class Dispatcher:
    def __init__(self, store: JobStore, backends: list[str], job_timeout_s: float, lease_s: float,
                 webhooks: Webhooks, resolve_every_s: float = 5, max_tries: int = 3):
        self.store = store
        self.max_tries = max_tries
        self.backends = backends  # as given: URLs, some of them names of replica sets
        self.resolve_every_s = resolve_every_s
        self.job_timeout_s = job_timeout_s
        self.lease_s = lease_s
        self.webhooks = webhooks
        self.counts: dict[str, int] = {}  # jobs queued and running, as the store last told them (counted())
        self.inputs_schema: dict | None = None  # modelInputs as the replicas document them, for the playground
        self.loras: dict | None = None  # the replicas' GET /loras: their baked LoRAs, for the playground's picker
        self.healthy: dict[str, bool] = {}  # each replica known now: up and idle at its last check
        self._found: dict[str, list[str]] = {}  # each --backend URL's replicas at the last lookup
        self._replicas: dict[str, asyncio.Task] = {}
        self._leaving: set[str] = set()  # replicas whose address has gone: they take no new job
        self._client = httpx.AsyncClient(timeout=httpx.Timeout(job_timeout_s, connect=5))
        self._work = asyncio.Event()
        self._finished = asyncio.Event()
        self._outbox = asyncio.Event()
        self._tasks: list[asyncio.Task] = []
        self._deliveries: set[asyncio.Task] = set()
        self.metrics = Metrics()

    async def start(self) -> None:
        await self._recover_lapsed()
        await self._discover_once()
        self._tasks = [asyncio.create_task(self._discover()), asyncio.create_task(self._maintain())]
        self._tasks.append(asyncio.create_task(self._deliver_webhooks()))

    async def stop(self) -> None:
        tasks = [*self._tasks, *self._replicas.values()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._client.aclose()
        await self.webhooks.close()

    async def submit(self, job: Job, inputs: str) -> Job:
        """Queue a job whose modelInputs are already JSON text (raises QueueFull past the queue's bounds)."""
        job = await self.store.add(job, inputs)
        logs.event("job", call_id=job.call_id, state=job.state)
        self._work.set()
        return job

    async def counted(self) -> dict[str, int]:
        """Jobs queued and running now, for a scrape (/metrics, /scale); the last counts known if the store does not
        answer within 2 s: an autoscaler must get an answer, while the jobs ride the outage out."""
        try:
            self.counts = await asyncio.wait_for(self.store.counts(), 2)
        except Exception as error:  # noqa: BLE001 - a store outage: the last known counts
            logs.event("counts_error", error=type(error).__name__)
        return self.counts

    async def cancel(self, job: Job) -> Job | None:
        """Cancel a queued or running job (a running job's result is dropped when it comes); None if it ended."""
        if not await self.store.cancel(job):
            return None
        cancelled = await self.store.get(job.call_id)
        await self._ended([cancelled])
        return cancelled

    async def wait(self, call_id: str, timeout_s: float,
                   gone: Callable[[], Awaitable[bool]] | None = None) -> Job | None:
        """The job once done, or as it is when timeout_s has passed or the caller is gone. Done elsewhere (another
        gateway) is seen by polling the store; done here wakes the waiter at once."""
        deadline = time.monotonic() + timeout_s
        self.metrics.waiting += 1
        try:
            while True:
                job = await self.store.get(call_id)
                remaining = deadline - time.monotonic()
                if job is None or job.done or remaining <= 0 or (gone is not None and await gone()):
                    return job
                try:
                    await asyncio.wait_for(self._finished.wait(), min(0.5, remaining))
                except TimeoutError:
                    pass
        finally:
            self.metrics.waiting -= 1

    async def _discover(self) -> None:
        while True:
            await asyncio.sleep(self.resolve_every_s)
            try:
                await self._discover_once()
            except Exception as error:  # noqa: BLE001 - tried again on the next round
                logs.event("discovery_error", error=f"{type(error).__name__}: {error}")

    async def _discover_once(self) -> None:
        self._found = await resolve_all(self.backends, self._found)
        now = {replica for replicas in self._found.values() for replica in replicas}
        for url in now - self._replicas.keys():
            logs.event("backend", backend=url, joined=True)
            self.healthy[url] = False
            self._replicas[url] = asyncio.create_task(self._serve(url))
        for url in self._replicas.keys() - now - self._leaving:
            logs.event("backend", backend=url, leaving=True)
        self._leaving = set(self._replicas) - now

    async def _serve(self, url: str) -> None:
        try:
            await self._serve_until_gone(url)
        finally:
            self._replicas.pop(url, None)
            self.healthy.pop(url, None)
            self._leaving.discard(url)

    async def _serve_until_gone(self, url: str) -> None:
        while url not in self._leaving:
            try:
                if not await self._check(url):
                    await asyncio.sleep(1)
                    continue
                job = await self.store.claim(url, self.lease_s)
                if job is None:
                    self._work.clear()
                    try:
                        await asyncio.wait_for(self._work.wait(), 0.5)
                    except TimeoutError:
                        pass
                    continue
                await self._run(job, url)
            except asyncio.CancelledError:
                raise
            except Exception as error:  # noqa: BLE001 - a store outage must not end this replica's loop
                logs.event("dispatch_error", backend=url, error=f"{type(error).__name__}: {error}")
                await asyncio.sleep(1)

    async def _check(self, url: str) -> bool:
        """Is the replica up and idle? Asked before every claim: another gateway may have given it a job."""
        try:
            status = (await self._client.get(f"{url}/__status__", timeout=3)).json()
            healthy = bool(status.get("gpu_available"))
        except (httpx.HTTPError, ValueError):
            healthy = False
        if healthy != self.healthy.get(url):
            logs.event("backend", backend=url, healthy=healthy)
        self.healthy[url] = healthy
        if healthy and self.inputs_schema is None:
            self.inputs_schema, self.loras = await self._model_info(url)
        return healthy

    async def _model_info(self, url: str) -> tuple[dict | None, dict | None]:
        """The replica's modelInputs schema, from its OpenAPI document (the one source of the inputs' bounds), and
        its LoRAs. Every replica serves the same image: one answer serves for all."""
        try:
            document = (await self._client.get(f"{url}/openapi.json", timeout=10)).json()
            loras = (await self._client.get(f"{url}/loras", timeout=10)).raise_for_status().json()
            return document["paths"]["/"]["post"]["requestBody"]["content"]["application/json"]["schema"], loras
        except (httpx.HTTPError, ValueError, KeyError, TypeError):
            return None, None

    async def _run(self, job: Job, url: str) -> None:
        logs.event("job", call_id=job.call_id, state=job.state, backend=url, attempt=job.attempts)
        inputs = await self.store.inputs(job.call_id)
        if inputs is None:  # cancelled between the claim and now: its inputs are gone with it
            return
        keeper = asyncio.create_task(self._keep_lease(job))
        watcher = asyncio.create_task(self._relay_progress(job, url))
        try:
            response = await self._client.post(f"{url}/", content=inputs.encode(), headers={
                "X-Banana-Request-Id": job.call_id, "Content-Type": "application/json"})
        except httpx.ReadTimeout:
            self.healthy[url] = False
            await self._finish(job, error=f"error: the job ran past its time limit of {self.job_timeout_s:g} s")
            return
        except httpx.TransportError as error:
            self.healthy[url] = False
            logs.event("backend", backend=url, healthy=False, error=type(error).__name__)
            await self._lost_with_its_replica(job)
            return
        finally:
            keeper.cancel()
            watcher.cancel()
        await self._finish(job, **_outcome(response.status_code, response.text))

    async def _keep_lease(self, job: Job) -> None:
        while True:
            await asyncio.sleep(self.lease_s / 3)
            try:
                await self.store.renew(job, self.lease_s)
            except Exception as error:  # noqa: BLE001 - a store outage: try again next time, the lease has slack
                logs.event("lease_error", call_id=job.call_id, error=type(error).__name__)

    async def _relay_progress(self, job: Job, url: str) -> None:
        """The replica's GET /progress, while it runs this job, into the store: any gateway's check answers it."""
        told = None
        while True:
            await asyncio.sleep(PROGRESS_EVERY_S)
            try:
                snapshot = (await self._client.get(f"{url}/progress", timeout=3)).json()
                if not isinstance(snapshot, dict) or snapshot.get("request_id") != job.call_id:
                    continue  # not started yet, or already done: nothing of this job's to tell
                progress = Progress.model_validate(snapshot).model_dump()
                if progress != told:
                    await self.store.set_progress(job, progress)
                    told = progress
            except (httpx.HTTPError, ValueError, ValidationError):
                continue  # progress is a courtesy: the job itself is watched by _run
            except Exception as error:  # noqa: BLE001 - a store outage: told again on the next round
                logs.event("progress_error", call_id=job.call_id, error=type(error).__name__)

    async def _finish(self, job: Job, result: str | None = None, error: str | None = None,
                      guard: dict | None = None) -> None:
        if not await self.store.finish(job, result=result, error=error, guard=guard):
            return  # no longer ours: recovered by another gateway
        await self._ended([await self.store.get(job.call_id)])

    async def _lost_with_its_replica(self, job: Job, guard: dict | None = None) -> None:
        """A try: queued again, or past --max-tries, failed."""
        if job.tries + 1 < self.max_tries:
            if await self.store.requeue(job, guard):
                logs.event("job", call_id=job.call_id, state="queued", retry=True, tries=job.tries + 1)
                self._work.set()
        elif await self.store.give_up(job, guard):
            await self._ended([await self.store.get(job.call_id)])

    async def _recover_lapsed(self) -> None:
        await asyncio.gather(*(self._recover(job) for job in await self.store.lapsed()))

    async def _recover(self, job: Job) -> None:
        """A running job whose lease lapsed: what its replica says of it decides (the module's docstring). Every
        change is guarded by the lease seen, so that a holder that came back and renewed it keeps it."""
        guard = {"lease_until": job.lease_until}
        if job.started and time.time() - job.started > self.job_timeout_s:
            await self._finish(job, error=f"error: the job ran past its time limit of {self.job_timeout_s:g} s",
                               guard=guard)
            return
        try:
            asked = await self._client.get(f"{job.backend}/answers/{job.call_id}", timeout=30)
            kept = asked.json() if asked.status_code == 200 else None
        except (httpx.HTTPError, ValueError):
            asked = kept = None
        if asked is not None and asked.status_code == 202:
            await self.store.extend(job, self.lease_s)
        elif isinstance(kept, dict) and "status" in kept and "answer" in kept:
            logs.event("job", call_id=job.call_id, recovered="answered", backend=job.backend)
            await self._finish(job, **_outcome(kept["status"], json.dumps(kept["answer"])), guard=guard)
        else:
            logs.event("job", call_id=job.call_id, recovered="lost", backend=job.backend,
                       replica=asked.status_code if asked is not None else "unreachable")
            await self._lost_with_its_replica(job, guard)

    async def _ended(self, jobs: list[Job]) -> None:
        if not jobs:
            return
        self._finished.set()
        self._finished = asyncio.Event()
        for job in jobs:
            logs.event("job", call_id=job.call_id, state=job.state, error=job.error, **job.timings())
            self.metrics.observe(job)
        self._outbox.set()

    async def _maintain(self) -> None:
        while True:
            try:
                await self._recover_lapsed()
                await self._ended(await self.store.sweep(self.job_timeout_s))
            except Exception as error:  # noqa: BLE001 - retried on the next round
                logs.event("maintenance_error", error=f"{type(error).__name__}: {error}")
            await asyncio.sleep(min(1.0, self.lease_s / 3))

    async def _deliver_webhooks(self) -> None:
        """The outbox: each due delivery is claimed in the store (one gateway per attempt), then sent."""
        while True:
            try:
                for job in await self.store.due_webhooks():
                    if job.webhook_attempts >= self.webhooks.attempts:
                        logs.event("webhook", call_id=job.call_id, gave_up=True, attempts=job.webhook_attempts)
                        await self.store.reschedule_webhook(job, job.webhook_attempts, None)
                        continue
                    # Should this gateway die mid-attempt, the next is due once this one would have timed out.
                    if await self.store.claim_webhook(job, time.time() + TIMEOUT_S + self._delay(job.webhook_attempts)):
                        self._spawn(self._deliver(job))
            except Exception as error:  # noqa: BLE001 - retried on the next round
                logs.event("webhook_error", error=type(error).__name__)
            self._outbox.clear()
            try:
                await asyncio.wait_for(self._outbox.wait(), 0.5)
            except TimeoutError:
                pass

    async def _deliver(self, job: Job) -> None:
        attempt = job.webhook_attempts + 1
        try:
            current = await self.store.get(job.call_id)
            if current is None:  # its record is gone (forgotten): nothing left to tell
                await self.store.reschedule_webhook(job, attempt, None)
                return
            status = await self.webhooks.deliver(job.webhook, job_answer(current, await self.store.result(current)))
            logs.event("webhook", call_id=job.call_id, attempt=attempt, status=status)
            delivered = isinstance(status, int) and 200 <= status < 300
            await self.store.reschedule_webhook(job, attempt,
                                                None if delivered else time.time() + self._delay(attempt - 1))
        except Exception as error:  # noqa: BLE001 - the claim's own due time brings the attempt back
            logs.event("webhook_error", call_id=job.call_id, error=type(error).__name__)
        self._outbox.set()

    def _delay(self, attempts_made: int) -> float:
        return self.webhooks.delays[min(attempts_made, len(self.webhooks.delays) - 1)]

    def _spawn(self, coroutine) -> None:
        task = asyncio.create_task(coroutine)
        self._deliveries.add(task)
        task.add_done_callback(self._deliveries.discard)


def _outcome(status: int, text: str) -> dict:
    """The job's result and error from the replica's answer. A failed job keeps the app's error body as its result
    (never shown as modelOutputs): the synchronous APIs read which fields it names."""
    try:
        body = json.loads(text)
    except ValueError:
        body = None
    if status == 200 and isinstance(body, dict):
        return {"result": text}
    detail = body.get("error") if isinstance(body, dict) else None
    if detail:
        return {"error": f"error: {detail}", "result": text}
    return {"error": f"error: the model answered HTTP {status}"}

