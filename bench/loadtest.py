"""make loadtest: many startOnly jobs from concurrent clients through the gateway (Redis store) to 2 app replicas.

On loopback, with the tiny random-weight model the tests use: what is measured is the gateway and the queue, not
the GPU. Every job must complete exactly once (each replica's own log counts the requests it ran, by callID) and
come back with its own seed; the gateway's memory is sampled all along. Prints one JSON document, writes
bench/results/loadtest.json, and exits 1 if a job was lost, duplicated or mixed up.
"""

import argparse
import queue
import threading
import time
from pathlib import Path

import httpx
import psutil

from bench.common import conclude, tiny_fleet
from testkit.processes import AppProcess, GatewayProcess

ROOT = Path(__file__).resolve().parent.parent

INPUTS = {"prompt": "a lighthouse at dusk", "num_inference_steps": 2}
MEMORY_GROWTH_MB = 100  # jobs live in the store, not in the gateway: its memory should not follow the load


def run_load(gateway: GatewayProcess, replicas: list[AppProcess], jobs: int, clients: int,
             api_key: str = "load-key") -> dict:
    """`jobs` startOnly jobs from `clients` threads, each polling its job to the end; then the books are checked."""
    todo: queue.Queue[int] = queue.Queue()
    for seed in range(jobs):
        todo.put(seed)
    done: dict[int, dict] = {}
    failures: list[str] = []
    rss_mb: list[float] = []
    finished = threading.Event()

    def client() -> None:
        with httpx.Client(base_url=gateway.url, timeout=120) as http:
            while True:
                try:
                    seed = todo.get_nowait()
                except queue.Empty:
                    return
                started = time.perf_counter()
                try:
                    answer = http.post("/start/v4/", json={"apiKey": api_key, "modelKey": "load", "startOnly": True,
                                                           "modelInputs": {**INPUTS, "seed": seed}}).json()
                    call_id = answer["callID"]
                    while not answer["finished"]:
                        answer = http.post("/check/v4/", json={"apiKey": api_key, "callID": call_id,
                                                               "longPoll": True}).json()
                except (httpx.HTTPError, ValueError, KeyError) as error:
                    failures.append(f"seed {seed}: {type(error).__name__}: {error}")
                    continue
                done[seed] = {"call_id": call_id, "latency_s": time.perf_counter() - started,
                              "message": answer["message"],
                              "seeds": (answer["modelOutputs"] or [{}])[0].get("seeds")}

    def sample_memory() -> None:
        process = psutil.Process(gateway.proc.pid)
        while not finished.is_set():
            rss_mb.append(process.memory_info().rss / 2**20)
            finished.wait(0.1)

    sampler = threading.Thread(target=sample_memory)
    sampler.start()
    since = time.time()  # the replicas' log lines from here on are this load's
    started = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall_s = time.perf_counter() - started
    finished.set()
    sampler.join()

    calls = {job["call_id"] for job in done.values()}
    ran: dict[str, int] = {}
    per_replica = [0] * len(replicas)
    busy_s = 0.0
    for i, replica in enumerate(replicas):
        for event in replica.events():
            if event["ts"] >= since:
                ran[event["request_id"]] = ran.get(event["request_id"], 0) + 1
                per_replica[i] += event["request_id"] in calls
                busy_s += event["total_ms"] / 1000
    latencies = sorted(job["latency_s"] for job in done.values())
    return {
        "jobs": jobs, "clients": clients, "replicas": len(replicas),
        "completed": sum(job["message"] == "success" for job in done.values()),
        "lost": jobs - len(done),
        "errors": failures + [f"seed {s}: {job['message']}" for s, job in done.items() if job["message"] != "success"],
        "wrong_result": [s for s, job in done.items() if job["seeds"] != [s]],
        "ran_more_than_once": [c for c in calls if ran.get(c, 0) > 1],
        "never_ran": [c for c in calls if ran.get(c, 0) == 0],
        "unknown_runs": sorted(set(ran) - calls),
        "per_replica": per_replica,
        "wall_s": round(wall_s, 2),
        "jobs_per_s": round(len(done) / wall_s, 2),
        # How much of the wall time the replicas spent in their handler: the rest is the gateway's and HTTP's share.
        "replica_busy_fraction": round(busy_s / (wall_s * len(replicas)), 3),
        "latency_s": {p: round(_percentile(latencies, p), 3) for p in (50, 95, 99)} if latencies else {},
        "gateway_rss_mb": {"start": round(rss_mb[0], 1), "peak": round(max(rss_mb), 1), "end": round(rss_mb[-1], 1)},
    }


def verdict(result: dict) -> list[str]:
    """What went wrong, if anything: every job completed, exactly once, with its own result."""
    problems = [f"{key}: {result[key]}" for key in ("errors", "wrong_result", "ran_more_than_once", "never_ran",
                                                       "unknown_runs") if result[key]]
    if result["lost"] or result["completed"] != result["jobs"]:
        problems.append(f"completed {result['completed']} of {result['jobs']} ({result['lost']} lost)")
    rss = result["gateway_rss_mb"]
    if rss["peak"] - rss["start"] > MEMORY_GROWTH_MB:
        problems.append(f"the gateway grew from {rss['start']} to {rss['peak']} MB")
    return problems


def _percentile(ordered: list[float], p: int) -> float:
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()
    with tiny_fleet(args.replicas) as (tmp, redis, replicas):
        gateway = GatewayProcess(tmp, [r.url for r in replicas], redis.url)
        try:
            gateway.wait_ready(60)
            result = run_load(gateway, replicas, args.jobs, args.clients)
        finally:
            gateway.stop()
    conclude(result, verdict(result), args.out, "loadtest")


if __name__ == "__main__":
    main()
