"""One generation, run as a job and waited for: what the synchronous APIs (OpenAI's Images, AUTOMATIC1111's) need
from the queue. Their jobs are Banana's kind: durable, retried, bounded, counted and logged like any other."""

import json
from collections import OrderedDict
from collections.abc import Awaitable, Callable

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .dispatch import Dispatcher
from .jobs import SUCCEEDED, Job, owner_of
from .stores import QueueFull

REMEMBERED_CALLERS = 10_000


class Refused(Exception):
    """A call answered with an error in its API's own shape: an HTTP status, our message, the field at fault."""

    def __init__(self, status: int, message: str, field: str | None = None):
        super().__init__(message)
        self.status, self.message, self.field = status, message, field


class Generations:
    def __init__(self, dispatcher: Dispatcher, model_key: str, wait_s: float):
        self.dispatcher, self.model_key, self.wait_s = dispatcher, model_key, wait_s
        self.latest: OrderedDict[str, str] = OrderedDict()  # owner -> the callID of its latest job, most recent last

    async def run(self, inputs: dict, api_key: str, gone: Callable[[], Awaitable[bool]]) -> dict:
        """Queue modelInputs, wait for the end and return the app's answer (a queued job waits its queue time
        limit at most, then runs its own). Raises Refused: 400 for inputs the app refused (naming the field), 429
        when the queue is full, 503 when the store is down, 500 when the job failed otherwise, 504 past the wait."""
        owner = owner_of(api_key)
        try:
            job = await self.dispatcher.submit(Job(model_key=self.model_key, owner=owner), json.dumps(inputs))
            self._remember(owner, job.call_id)
            job = await self.dispatcher.wait(job.call_id, self.wait_s, gone)
            if job is None or not job.done:
                raise Refused(504, f"the job did not end within {self.wait_s:g} s")
            result, refusal = await self.dispatcher.store.result(job), await self.dispatcher.store.refusal(job)
        except QueueFull as full:
            raise Refused(429, str(full).removeprefix("error: ")) from None
        except (RedisConnectionError, RedisTimeoutError):
            raise Refused(503, "the job store is unavailable, try again shortly") from None
        if job.state == SUCCEEDED:
            return result
        if refusal and refusal.get("errors"):  # the app's 422: the caller's inputs
            first = refusal["errors"][0]
            raise Refused(400, refusal["error"], first["field"])
        raise Refused(500, (job.error or "the job failed").removeprefix("error: "))

    async def latest_job(self, api_key: str) -> Job | None:
        call_id = self.latest.get(owner_of(api_key))
        return await self.dispatcher.store.get(call_id) if call_id else None

    def _remember(self, owner: str, call_id: str) -> None:
        self.latest[owner] = call_id
        self.latest.move_to_end(owner)
        while len(self.latest) > REMEMBERED_CALLERS:
            self.latest.popitem(last=False)


def bearer_key(headers) -> str | None:
    """The key of an `Authorization: Bearer KEY` header (the scheme in any case), or None without one."""
    authorization = headers.get("authorization", "")
    return authorization[7:].strip() if authorization[:7].lower() == "bearer " else None
