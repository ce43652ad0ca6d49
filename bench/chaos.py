"""make loadtest's second half: jobs through compound faults. Two gateways and two replicas of the tiny model on one
Redis (append-only, fsync always); JOBS startOnly jobs, each with its own seed, started through the two gateways in
turn by CLIENTS clients; meanwhile, at random times (seeded), gateway 1 is killed (SIGKILL) and restarted twice,
replica 2 killed and restarted once, Redis killed and restarted once.

The books, from the replicas' own logs: every job a client was given a callID for succeeds with its own seed; no job
completes twice, but where its replica was killed between the two runs (its answer went with it); none is lost. A
client that meets an outage (a gateway down, the store unreachable) tries again, through the other gateway.
Writes bench/results/chaos.json and prints it; exits 1 on any failure.
"""

import argparse
import queue
import random
import threading
import time
from pathlib import Path

import httpx

from bench.common import conclude, tiny_fleet
from testkit.processes import TEST_KEY, AppProcess, GatewayProcess

ROOT = Path(__file__).resolve().parent.parent
INPUTS = {"prompt": "a lighthouse at dusk", "num_inference_steps": 12}


def client(gateways: list[GatewayProcess], todo: queue.Queue, given: dict, done: dict, stop: threading.Event):
    with httpx.Client(timeout=90) as http:
        turn = 0
        while not stop.is_set():
            try:
                seed = todo.get_nowait()
            except queue.Empty:
                return
            call_id = None
            while call_id is None and not stop.is_set():  # started through either gateway, whichever answers
                gateway = gateways[(seed + turn) % 2]
                turn += 1
                try:
                    answer = http.post(gateway.url + "/start/v4/", json={
                        "apiKey": TEST_KEY, "modelKey": "chaos", "startOnly": True,
                        "modelInputs": {**INPUTS, "seed": seed}}).json()
                    if answer.get("message") == "":
                        call_id = answer["callID"]
                except (httpx.HTTPError, ValueError):
                    time.sleep(0.5)
            given[seed] = call_id
            while not stop.is_set():
                gateway = gateways[turn % 2]
                turn += 1
                try:
                    answer = http.post(gateway.url + "/check/v4/", json={
                        "apiKey": TEST_KEY, "callID": call_id, "longPoll": True}).json()
                except (httpx.HTTPError, ValueError):
                    time.sleep(0.5)
                    continue
                if answer.get("finished") or "error" in answer.get("message", "").lower() and \
                        "unavailable" not in answer["message"]:
                    done[seed] = answer
                    break


def faults(gateways, replicas, redis, rng: random.Random, window_s: float, kills: list, stop: threading.Event):
    """The schedule: each fault at a random moment of the window, in random order."""
    plan = ["gateway_1", "gateway_1", "replica_2", "redis"]
    at = sorted(rng.uniform(0.1, 0.9) * window_s for _ in plan)
    rng.shuffle(plan)
    started = time.monotonic()
    for name, moment in zip(plan, at, strict=True):
        while time.monotonic() - started < moment:
            if stop.wait(0.1):
                return
        kills.append({"what": name, "at": time.time()})
        if name == "gateway_1":
            gateways[0].kill()
            gateways[0].start()
            gateways[0].wait_ready(120)
        elif name == "replica_2":
            replicas[1].kill()
            replicas[1].start()
            replicas[1].wait_ready()
        else:
            redis.kill()
            time.sleep(2)
            redis.start()
        kills[-1]["back"] = time.time()


def books(given: dict, done: dict, replicas: list[AppProcess], kills: list, since: float) -> dict:
    """Who ran what: each job's completed runs in the replicas' logs, and which second runs a replica's death
    explains (the replica that ran it first was killed before it ran again)."""
    runs: dict[str, list[tuple[float, int]]] = {}
    for i, replica in enumerate(replicas):
        for event in replica.events():
            if event["ts"] >= since and event["status"] == 200:
                runs.setdefault(event["request_id"], []).append((event["ts"], i))
    deaths = [k["at"] for k in kills if k["what"] == "replica_2"]
    twice, explained = [], []
    for call_id, made in runs.items():
        made.sort()
        for (first, on), (second, _) in zip(made, made[1:], strict=False):
            by_death = on == 1 and any(first < death < second for death in deaths)
            (explained if by_death else twice).append(call_id)
    succeeded = [s for s, a in done.items() if a["message"] == "success" and a["modelOutputs"][0]["seeds"] == [s]]
    return {"accepted": len(given), "succeeded": len(succeeded),
            "failed": sorted([given[s], a["message"]] for s, a in done.items() if s not in succeeded),
            "unfinished": sorted(s for s in given if s not in done),
            "never_ran": sorted(c for c in given.values() if c not in runs),
            "ran_twice": sorted(twice), "ran_twice_after_its_replica_died": sorted(explained)}


def verdict(result: dict, jobs: int) -> list[str]:
    problems = [f"{key}: {result[key]}" for key in ("failed", "unfinished", "never_ran", "ran_twice") if result[key]]
    if result["accepted"] != jobs or result["succeeded"] != jobs:
        problems.append(f"{result['succeeded']} of {jobs} jobs succeeded ({result['accepted']} accepted)")
    return problems


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=150)
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--window", type=float, default=40, help="seconds within which the faults come")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()
    with tiny_fleet(2) as (tmp, redis, replicas):
        flags = ("--lease", "3", "--api-key", TEST_KEY)
        gateways = [GatewayProcess(tmp, [r.url for r in replicas], redis.url, *flags) for _ in range(2)]
        try:
            for gateway in gateways:
                gateway.wait_ready(120)
            todo: queue.Queue[int] = queue.Queue()
            for seed in range(args.jobs):
                todo.put(seed)
            given, done, kills, stop = {}, {}, [], threading.Event()
            since, started = time.time(), time.monotonic()
            chaos = threading.Thread(target=faults, args=(gateways, replicas, redis, random.Random(args.seed),
                                                          args.window, kills, stop))
            clients = [threading.Thread(target=client, args=(gateways, todo, given, done, stop))
                       for _ in range(args.clients)]
            for thread in (chaos, *clients):
                thread.start()
            chaos.join()
            deadline = time.monotonic() + 900
            for thread in clients:
                thread.join(max(1.0, deadline - time.monotonic()))
            stop.set()
            result = {**books(given, done, replicas, kills, since), "jobs": args.jobs, "faults": kills,
                      "wall_s": round(time.monotonic() - started, 1), "seed": args.seed}
        finally:
            for gateway in gateways:
                gateway.stop()
    conclude(result, verdict(result, args.jobs), args.out, "chaos")


if __name__ == "__main__":
    main()
