"""bench/loadtest.py on a smaller load: its books balance when all is well, and its verdict names what went wrong."""

from bench import loadtest
from testkit.processes import RedisServer


def test_a_small_load_completes_every_job_exactly_once(start_gateway, start_app, models, tmp_path):
    replicas = [start_app({"MODEL_ID": str(models["sd"])}) for _ in range(2)]
    redis = RedisServer(tmp_path)  # its own: the session's Redis databases belong to other tests
    gateway = start_gateway([r.url for r in replicas], store=redis.url)
    try:
        result = loadtest.run_load(gateway, replicas, jobs=40, clients=8)
    finally:
        gateway.stop()
        redis.stop()
    assert loadtest.verdict(result) == []
    assert result["completed"] == 40 and sum(result["per_replica"]) == 40 and min(result["per_replica"]) > 0
    assert result["latency_s"][50] <= result["latency_s"][95] <= result["latency_s"][99]

    # The verdict catches what it is for: a job run twice, a job lost, a gateway whose memory follows the load.
    duplicated = dict(result, ran_more_than_once=["some-call-id"])
    assert loadtest.verdict(duplicated) == ["ran_more_than_once: ['some-call-id']"]
    assert loadtest.verdict(dict(result, lost=1, completed=39)) == ["completed 39 of 40 (1 lost)"]
    grown = dict(result, gateway_rss_mb={"start": 60.0, "peak": 200.0, "end": 190.0})
    assert loadtest.verdict(grown) == ["the gateway grew from 60.0 to 200.0 MB"]
