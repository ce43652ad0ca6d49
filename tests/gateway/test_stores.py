"""Both stores behind the one interface, against real SQLite and a real redis-server."""

import asyncio
import itertools
import json

import pytest
import redis

from serverless_sd.gateway import stores
from serverless_sd.gateway.jobs import Job
from serverless_sd.gateway.stores import QueueFull, open_store

_databases = itertools.count(3)
INPUTS = json.dumps({"prompt": "a", "seed": 2**64 - 1, "nested": {}})


@pytest.fixture(params=["sqlite", "redis"])
def store_url(request, tmp_path, redis_url):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/jobs.db"
    return redis_url.rsplit("/", 1)[0] + f"/{next(_databases)}"


def run(store_url, scenario, **options):
    async def main():
        store = open_store(store_url, **options)
        try:
            return await scenario(store)
        finally:
            await store.close()
    return asyncio.run(main())


async def add(store, model_key: str = "m", inputs: str = INPUTS, **fields) -> Job:
    return await store.add(Job(model_key=model_key, **fields), inputs)


def test_jobs_are_claimed_fifo_each_once_even_by_concurrent_claimers(store_url):
    async def scenario(store):
        added = [await add(store) for _ in range(20)]
        claims = await asyncio.gather(*(store.claim(f"b{i}", 30) for i in range(30)))
        claimed = [c.call_id for c in claims if c]
        assert sorted(claimed) == sorted(j.call_id for j in added)
        first = await store.get(added[0].call_id)
        assert first.state == "running" and first.attempts == 1
        assert await store.inputs(first.call_id) == INPUTS
    run(store_url, scenario)


def test_a_64_bit_seed_and_empty_objects_survive_the_store(store_url):
    async def scenario(store):
        added = await add(store)
        await store.claim("b", 30)
        assert json.loads(await store.inputs(added.call_id)) == {"prompt": "a", "seed": 2**64 - 1, "nested": {}}
    run(store_url, scenario)


def test_queue_position(store_url):
    async def scenario(store):
        jobs = [await add(store) for _ in range(3)]
        assert [await store.position(j) for j in jobs] == [0, 1, 2]
        await store.claim("b", 30)
        assert await store.position(await store.get(jobs[2].call_id)) == 1
    run(store_url, scenario)


def test_a_retried_job_keeps_its_place_at_the_front(store_url):
    async def scenario(store):
        first, second = await add(store), await add(store)
        claimed = await store.claim("b", 30)
        assert await store.requeue(claimed)
        again = await store.claim("b", 30)
        assert again.call_id == first.call_id and again.attempts == 2
        assert (await store.get(second.call_id)).state == "queued"
    run(store_url, scenario)


def test_a_job_that_is_no_longer_ours_cannot_be_finished(store_url):
    async def scenario(store):
        await add(store)
        claimed = await store.claim("b", 30)
        assert await store.requeue(claimed)
        assert not await store.finish(claimed, result='{"x": 1}')  # a stale claim
        current = await store.claim("b", 30)
        assert await store.finish(current, result='{"x": 2}')
        assert await store.result(await store.get(current.call_id)) == {"x": 2}
        assert not await store.finish(current, error="error: twice")
    run(store_url, scenario)


def test_an_ended_job_drops_its_inputs(store_url):
    async def scenario(store):
        job = await add(store)
        assert await store.finish(await store.claim("b", 30), result="{}")
        assert await store.inputs(job.call_id) is None
        cancelled = await add(store)
        assert await store.cancel(await store.get(cancelled.call_id))
        assert await store.inputs(cancelled.call_id) is None
    run(store_url, scenario)


def test_a_running_jobs_progress_is_kept_until_it_ends(store_url):
    async def scenario(store):
        queued = await add(store)
        job = await store.claim("b", 30)
        await store.set_progress(job, {"step": 3, "total_steps": 10})
        assert await store.progress(await store.get(job.call_id)) == {"step": 3, "total_steps": 10}
        await store.set_progress(job, {"step": 4, "total_steps": 10})
        assert (await store.progress(job))["step"] == 4
        assert await store.finish(job, result="{}")
        ended = await store.get(job.call_id)
        assert await store.progress(ended) is None and await store.backend.progress(job.call_id) is None
        assert await store.progress(await add(store)) is None and queued.call_id == job.call_id
        await store.set_progress(job, {"step": 5, "total_steps": 10})  # a relay's write that lands after the end
        assert await store.backend.progress(job.call_id) is None
    run(store_url, scenario)


def test_progress_no_replica_renews_expires(store_url, monkeypatch):
    monkeypatch.setattr(stores, "PROGRESS_TTL_S", 0.2)

    async def scenario(store):
        await add(store)
        job = await store.claim("b", 30)
        await store.set_progress(job, {"step": 1})
        await asyncio.sleep(0.5)
        await store.sweep(3600)  # SQLite purges in the periodic work; Redis expires the key itself
        assert await store.backend.progress(job.call_id) is None
    run(store_url, scenario)


def test_a_run_lost_with_its_replica_is_a_try_and_the_last_try_fails_the_job(store_url):
    async def scenario(store):
        added = await add(store)
        await store.claim("b", 0.1)
        await asyncio.sleep(0.2)
        [lapsed] = await store.lapsed()
        assert await store.requeue(lapsed, guard={"lease_until": lapsed.lease_until})
        queued = await store.get(added.call_id)
        assert (queued.state, queued.tries, queued.attempts) == ("queued", 1, 1)  # a try, kept apart from claims
        again = await store.claim("b", 30)
        assert again.attempts == 2 and again.tries == 1
        assert await store.give_up(again)
        failed = await store.get(added.call_id)
        assert failed.state == "failed" and "failed or vanished with it 2 times (--max-tries)" in failed.error
    run(store_url, scenario)


def test_a_lapsed_lease_taken_over_keeps_the_job_running_and_its_holder_may_renew_it(store_url):
    async def scenario(store):
        added = await add(store)
        claimed = await store.claim("b", 0.1)
        await asyncio.sleep(0.2)
        [lapsed] = await store.lapsed()
        assert await store.extend(lapsed, 30) and await store.lapsed() == []
        assert not await store.extend(lapsed, 30)  # guarded by the lease seen: one recovering gateway takes it
        assert await store.renew(claimed, 30)  # the holder, back, renews what it still holds
        current = await store.get(added.call_id)
        assert current.state == "running" and current.tries == 0
    run(store_url, scenario)


def test_a_renewed_lease_is_kept(store_url):
    async def scenario(store):
        added = await add(store)
        claimed = await store.claim("b", 0.3)
        for _ in range(3):
            await asyncio.sleep(0.15)
            assert await store.renew(claimed, 0.3)
            assert await store.lapsed() == []
        assert (await store.get(added.call_id)).state == "running"
    run(store_url, scenario)


def test_a_lease_renewed_at_the_last_moment_is_not_recovered(store_url):
    # Recovery reads the lapsed jobs, then acts on each: a renewal in between must win, or the job runs twice.
    async def scenario(store):
        added = await add(store)
        claimed = await store.claim("b", 0.1)
        await asyncio.sleep(0.2)
        [lapsed] = await store.lapsed()
        assert await store.renew(claimed, 30)  # the owner's renewal lands just after the read
        guard = {"lease_until": lapsed.lease_until}
        assert not await store.requeue(lapsed, guard) and not await store.give_up(lapsed, guard)
        assert not await store.finish(lapsed, error="error: x", guard=guard) and not await store.extend(lapsed, 30)
        current = await store.get(added.call_id)
        assert current.state == "running" and current.attempts == 1 and current.tries == 0
    run(store_url, scenario)


def test_a_store_file_from_before_tries_were_counted_opens_and_serves(tmp_path):
    import sqlite3

    path = tmp_path / "old.db"
    old = [c for c in stores.COLUMNS if c not in ("call_id", "tries")]
    with sqlite3.connect(path) as db:
        db.execute(f"CREATE TABLE job (call_id TEXT PRIMARY KEY, {', '.join(old)}, forget_at REAL)")

    async def scenario(store):
        added = await add(store)
        claimed = await store.claim("b", 30)
        assert claimed.call_id == added.call_id and claimed.tries == 0 and await store.requeue(claimed)
        assert (await store.get(added.call_id)).tries == 1
    run(f"sqlite:///{path}", scenario)


def test_sweep_fails_stale_queued_jobs_and_expires_old_results(store_url):
    async def scenario(store):
        done = await add(store)
        await store.finish(await store.claim("b", 30), result='{"image": "x"}')
        stale = await add(store)
        await asyncio.sleep(0.3)
        [failed] = await store.sweep(queue_timeout_s=0.2)
        assert failed.call_id == stale.call_id and "no replica took this job" in failed.error
        expired = await store.get(done.call_id)
        assert expired.state == "expired" and await store.result(expired) is None
        assert "result expired" in expired.error
    run(store_url, scenario, result_ttl_s=0.2)


def test_the_queue_time_limit_counts_from_the_retry_not_from_creation(store_url):
    async def scenario(store):
        job = await add(store)
        claimed = await store.claim("b", 30)
        await asyncio.sleep(0.4)  # it ran longer than the queue limit, then its replica failed
        assert await store.requeue(claimed)
        assert await store.sweep(queue_timeout_s=0.3) == []
        assert (await store.get(job.call_id)).state == "queued"
    run(store_url, scenario)


def test_redis_expires_results_and_records_by_its_own_ttl(redis_url):
    url = redis_url.rsplit("/", 1)[0] + f"/{next(_databases)}"

    async def scenario(store):
        job = await add(store)
        await store.finish(await store.claim("b", 30), result='{"image": "x"}')
        raw = redis.Redis.from_url(url)
        assert 0 < raw.pttl(f"sdgw2:result:{job.call_id}") <= 300
        assert 0 < raw.pttl(f"sdgw2:job:{job.call_id}") <= 300 * 7
        await asyncio.sleep(0.4)
        assert raw.get(f"sdgw2:result:{job.call_id}") is None  # gone with no sweep at all
        assert (await store.get(job.call_id)).state == "expired"
    run(url, scenario, result_ttl_s=0.3)


def test_sqlite_sweep_deletes_expired_payloads_and_old_records(tmp_path):
    url = f"sqlite:///{tmp_path}/jobs.db"

    async def scenario(store):
        await add(store)
        await store.finish(await store.claim("b", 30), result='{"image": "x"}')
        db = store.backend._db
        await asyncio.sleep(0.3)
        await store.sweep(queue_timeout_s=60)
        assert db.execute("SELECT COUNT(*) FROM job_payload").fetchone()[0] == 0
        assert db.execute("SELECT COUNT(*) FROM job").fetchone()[0] == 1  # the tombstone, for now
        store.tombstone_s = 0
        await add(store)
        await store.finish(await store.claim("b", 30), result="{}")
        await asyncio.sleep(0.3)
        await store.sweep(queue_timeout_s=60)
        assert db.execute("SELECT COUNT(*) FROM job").fetchone()[0] == 1  # only the first, kept 6 TTLs
    run(url, scenario, result_ttl_s=0.1)


def test_a_record_that_vanished_from_under_its_indexes_breaks_nothing(redis_url):
    url = redis_url.rsplit("/", 1)[0] + f"/{next(_databases)}"

    async def scenario(store):
        gone, kept = await add(store), await add(store)
        redis.Redis.from_url(url).delete(f"sdgw2:job:{gone.call_id}")  # e.g. its TTL ran out mid-sweep
        await asyncio.sleep(0.3)
        [failed] = await store.sweep(queue_timeout_s=0.2)
        assert failed.call_id == kept.call_id
        third = await add(store)
        assert (await store.claim("b", 30)).call_id == third.call_id
    run(url, scenario)


def test_queue_bounds_per_model_key_and_in_bytes(store_url):
    async def scenario(store):
        for _ in range(3):
            await add(store, model_key="a")
        with pytest.raises(QueueFull, match="error: the queue is full \\(3 jobs wait for this modelKey\\)"):
            await add(store, model_key="a")
        await add(store, model_key="b")  # another key has its own bound
        await store.claim("x", 30)  # one of "a" leaves the queue: room for one more
        await add(store, model_key="a")
        with pytest.raises(QueueFull, match="bytes of inputs wait"):
            await add(store, model_key="c", inputs=json.dumps({"prompt": "x" * 5000}))
        assert await store.counts() == {"queued": 4, "running": 1}
    run(store_url, scenario, max_queued=3, max_queued_bytes=4096)


def test_the_webhook_outbox_gives_each_attempt_to_one_gateway(store_url):
    async def scenario(store):
        job = await add(store, webhook="http://receiver/hook")
        quiet = await add(store)
        await store.finish(await store.claim("b", 30), result="{}")
        await store.finish(await store.claim("b", 30), result="{}")
        [due] = await store.due_webhooks()
        assert due.call_id == job.call_id and due.webhook_attempts == 0 and quiet.webhook is None
        assert await store.claim_webhook(due, retry_at=due.webhook_due + 60)
        assert not await store.claim_webhook(due, retry_at=due.webhook_due + 60)  # a second gateway, same attempt
        assert await store.due_webhooks() == []  # not due again until its retry time
        assert await store.reschedule_webhook(due, attempts=1, due=None)
        assert (await store.get(job.call_id)).webhook_due is None
    run(store_url, scenario)


def _work_counter(store_url, store):
    """What one round of store work costs, in units that do not depend on the machine's speed: commands and bytes
    Redis answered, or SQLite virtual-machine steps."""
    if store_url.startswith("redis"):
        raw = redis.Redis.from_url(store_url)

        def measure():
            stats = raw.info("stats")
            return stats["total_commands_processed"], stats["total_net_output_bytes"]
        return measure
    steps = [0]

    def count():
        steps[0] += 1
        return 0
    store.backend._db.set_progress_handler(count, 1)
    return lambda: (steps[0], 0)


def test_periodic_work_and_a_check_cost_the_same_with_20_or_520_results_kept(store_url):
    result = json.dumps({"image_base64": "x" * 50_000})

    async def scenario(store):
        async def keep(n):
            for _ in range(n):
                await add(store)
                await store.finish(await store.claim("b", 30), result=result)

        waiting = await add(store, model_key="w")
        measure = _work_counter(store_url, store)

        async def one_round():
            before = measure()
            await store.lapsed()
            await store.sweep(600)
            await store.counts()
            job = await store.get(waiting.call_id)
            await store.position(job)
            after = measure()
            return [b - a for a, b in zip(before, after, strict=True)]

        await keep(20)
        small = await one_round()
        await keep(500)
        large = await one_round()
        assert large[0] <= small[0] * 1.1 + 20 and large[1] <= small[1] * 1.1 + 2000, (small, large)
    run(store_url, scenario)


def test_an_unknown_store_url_is_refused():
    with pytest.raises(ValueError, match="neither sqlite"):
        open_store("postgres://x")


def test_cancel_a_queued_or_running_job(store_url):
    async def scenario(store):
        queued, running = await add(store), await add(store)
        claimed = await store.claim("b", 30)  # the first
        assert await store.cancel(await store.get(running.call_id))
        assert await store.claim("b", 30) is None  # the cancelled one is not handed out
        assert await store.cancel(claimed)
        assert not await store.finish(claimed, result='{"x": 1}')  # its result is dropped
        assert (await store.get(queued.call_id)).state == "cancelled"
        assert not await store.cancel(await store.get(queued.call_id))  # already ended
        assert await store.counts() == {"queued": 0, "running": 0}
    run(store_url, scenario)
