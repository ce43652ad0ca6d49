"""bench/loadtest.py on a smaller load: its books balance when all is well, and its verdict names what went wrong."""

from bench import chaos, loadtest
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


class Logged:
    """A replica as bench.chaos reads it: its request events."""

    def __init__(self, *runs):
        self._events = [{"ts": ts, "status": 200, "request_id": call_id} for call_id, ts in runs]

    def events(self):
        return self._events


def test_the_chaos_runs_books_tell_a_second_run_its_replicas_death_explains_from_one_it_does_not():
    given = {1: "call_a", 2: "call_b", 3: "call_c"}
    done = {seed: {"message": "success", "modelOutputs": [{"seeds": [seed]}]} for seed in given}
    kills = [{"what": "replica_2", "at": 15.0}]
    # call_a ran on replica 2, which died, then again on replica 1: explained. call_b ran twice on replica 1: not.
    replicas = [Logged(("call_a", 20.0), ("call_b", 5.0), ("call_b", 30.0)), Logged(("call_a", 10.0),
                                                                                   ("call_c", 12.0))]
    result = chaos.books(given, done, replicas, kills, since=0)
    assert result["ran_twice_after_its_replica_died"] == ["call_a"] and result["ran_twice"] == ["call_b"]
    assert chaos.verdict(result, 3) == ["ran_twice: ['call_b']"]
    done[3] = {"message": "error: x", "modelOutputs": None}
    assert chaos.verdict(chaos.books(given, done, replicas, kills, 0), 3) == [
        "failed: [['call_c', 'error: x']]", "ran_twice: ['call_b']", "2 of 3 jobs succeeded (3 accepted)"]
