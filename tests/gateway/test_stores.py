"""Both stores behind the one interface, against real SQLite and a real redis-server."""

import asyncio
import itertools

import pytest

from serverless_sd.gateway.jobs import Job
from serverless_sd.gateway.stores import open_store

_databases = itertools.count(3)


@pytest.fixture(params=["sqlite", "redis"])
def store_url(request, tmp_path, redis_url):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/jobs.db"
    return redis_url.rsplit("/", 1)[0] + f"/{next(_databases)}"


def run(store_url, scenario):
    async def main():
        store = open_store(store_url)
        try:
            return await scenario(store)
        finally:
            await store.close()
    return asyncio.run(main())


def job(seed: int = 0) -> Job:
    return Job(model_key="m", inputs={"prompt": "a", "seed": 2**64 - 1 - seed, "nested": {}})


def test_jobs_are_claimed_fifo_each_once_even_by_concurrent_claimers(store_url):
    async def scenario(store):
        added = [await store.add(job(i)) for i in range(20)]
        claims = await asyncio.gather(*(store.claim(f"b{i}", 30) for i in range(30)))
        claimed = [c.call_id for c in claims if c]
        assert sorted(claimed) == sorted(j.call_id for j in added)
        first = await store.get(added[0].call_id)
        assert first.state == "running" and first.attempts == 1 and first.inputs == added[0].inputs
    run(store_url, scenario)


def test_a_64_bit_seed_and_empty_objects_survive_the_store(store_url):
    async def scenario(store):
        added = await store.add(job())
        await store.claim("b", 30)
        assert (await store.get(added.call_id)).inputs == {"prompt": "a", "seed": 2**64 - 1, "nested": {}}
    run(store_url, scenario)


def test_queue_position(store_url):
    async def scenario(store):
        jobs = [await store.add(job(i)) for i in range(3)]
        assert [await store.position(j) for j in jobs] == [0, 1, 2]
        await store.claim("b", 30)
        assert await store.position(await store.get(jobs[2].call_id)) == 1
    run(store_url, scenario)


def test_a_retried_job_keeps_its_place_at_the_front(store_url):
    async def scenario(store):
        first, second = await store.add(job(1)), await store.add(job(2))
        claimed = await store.claim("b", 30)
        assert await store.requeue(claimed)
        again = await store.claim("b", 30)
        assert again.call_id == first.call_id and again.attempts == 2
        assert (await store.get(second.call_id)).state == "queued"
    run(store_url, scenario)


def test_a_job_that_is_no_longer_ours_cannot_be_finished(store_url):
    async def scenario(store):
        await store.add(job())
        claimed = await store.claim("b", 30)
        assert await store.requeue(claimed)
        assert not await store.finish(claimed, result={"x": 1})  # a stale claim
        current = await store.claim("b", 30)
        assert await store.finish(current, result={"x": 2})
        assert (await store.get(current.call_id)).result == {"x": 2}
        assert not await store.finish(current, error="error: twice")
    run(store_url, scenario)


def test_lapsed_leases_are_queued_again_then_failed(store_url):
    async def scenario(store):
        added = await store.add(job())
        await store.claim("b", 0.1)
        await asyncio.sleep(0.2)
        assert await store.recover(max_attempts=2) == []
        assert (await store.get(added.call_id)).state == "queued"
        await store.claim("b", 0.1)
        await asyncio.sleep(0.2)
        [failed] = await store.recover(max_attempts=2)
        assert failed.state == "failed" and "already tried 2 times" in failed.error
    run(store_url, scenario)


def test_a_renewed_lease_is_kept(store_url):
    async def scenario(store):
        added = await store.add(job())
        claimed = await store.claim("b", 0.3)
        for _ in range(3):
            await asyncio.sleep(0.15)
            assert await store.renew(claimed, 0.3)
            await store.recover(max_attempts=2)
        assert (await store.get(added.call_id)).state == "running"
    run(store_url, scenario)


def test_sweep_fails_stale_queued_jobs_and_expires_old_results(store_url):
    async def scenario(store):
        done = await store.add(job(1))
        await store.finish(await store.claim("b", 30), result={"image": "x"})
        stale = await store.add(job(2))
        await asyncio.sleep(0.3)
        [failed] = await store.sweep(queue_timeout_s=0.2, result_ttl_s=0.2, tombstone_ttl_s=60)
        assert failed.call_id == stale.call_id and "no replica took this job" in failed.error
        expired = await store.get(done.call_id)
        assert expired.state == "expired" and expired.result is None and expired.inputs == {}
        assert "result expired" in expired.error
    run(store_url, scenario)


def test_an_unknown_store_url_is_refused():
    with pytest.raises(ValueError, match="neither sqlite"):
        open_store("postgres://x")


def test_cancel_a_queued_or_running_job(store_url):
    async def scenario(store):
        queued, running = await store.add(job(1)), await store.add(job(2))
        claimed = await store.claim("b", 30)  # job(1), the first
        assert await store.cancel(await store.get(running.call_id))
        assert await store.claim("b", 30) is None  # the cancelled one is not handed out
        assert await store.cancel(claimed)
        assert not await store.finish(claimed, result={"x": 1})  # its result is dropped
        assert (await store.get(queued.call_id)).state == "cancelled"
        assert not await store.cancel(await store.get(queued.call_id))  # already ended
        assert await store.counts() == {("cancelled", "m"): 2}
    run(store_url, scenario)
