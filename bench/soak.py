"""make soak: what a replica and a gateway meet in a month, compressed; fails on growth or on any job lost.

1. One replica (app.py, the tests' tiny model) under `ulimit -n 256`: 2,000 requests in a row, with LoRAs fused
   and restored in turns and every tenth one fetched from a local server (the caches bounded so that it is fetched
   again each time). Open files and RSS are sampled; after the warm-up they must stay flat (Potassium 0.5.0 leaked
   4 files a request and died at request 59 under this limit).
2. The gateway on Redis with two replicas, all under `ulimit -n 256`: after a warm-up round (a tenth as many jobs,
   checked the same way), 2,000 startOnly jobs from 20 clients, every result kept for --result-ttl seconds (20),
   so the store fills and empties by its own TTLs as it would in production. Every job must complete exactly once
   with its own seed (load test's books), the gateway's open files and RSS must stay flat, and Redis' memory must
   come back to where it started once the results have expired.

Writes bench/results/soak.json and prints it; exits 1 on any failure. `python3 -m bench.soak --requests 300
--jobs 300 --result-ttl 5` is the short version `make test` runs.
"""

import argparse
import json
import tempfile
import threading
import time
from pathlib import Path

import httpx
import psutil
import redis as redis_client

from bench.loadtest import run_load, verdict
from testkit import model_factory
from testkit.file_server import FileServer
from testkit.processes import TEST_KEY, AppProcess, GatewayProcess, RedisServer

ROOT = Path(__file__).resolve().parent.parent

NOFILE = 256
FD_GROWTH = 8  # open files: flat, give or take a connection or two in flight
RSS_GROWTH_MB = 60  # after the warm-up: allocator noise, not a leak (a leak of 1 KB a request would pass; 30 KB not)
REDIS_GROWTH_MB = 8  # once results expired: the small job records (tombstones) of 2,000 jobs are about 2 MB


def replica_soak(tmp: Path, model: Path, requests: int) -> dict:
    # LoRAs in the mix: two baked ones fused and restored in turns, and every tenth request one of two fetched from a
    # local server, the caches bounded so that each of those is fetched and read again (sockets, files, memory).
    loras, served = tmp / "loras", tmp / "served-loras"
    for seed, (folder, name) in enumerate(((loras, "style"), (loras, "ink"), (served, "u0"), (served, "u1"))):
        model_factory.save_tiny_lora(model, folder / f"{name}.safetensors", seed=seed)
    server = FileServer(served)
    host = server.url
    app = AppProcess(tmp, {"MODEL_ID": str(model), "LORAS_DIR": str(loras), "LORA_HOSTS": host,
                           "LORA_CACHE_DIR": str(tmp / "lora-cache"), "LORA_CACHE_BYTES": "300000",
                           "LORA_MEMORY_BYTES": "750000"}, nofile=NOFILE).wait_ready()
    mix = [[], [{"name": "style"}], [{"name": "style", "scale": 0.5}, {"name": "ink"}], [{"name": "ink"}], []]
    process = psutil.Process(app.proc.pid)
    samples = []
    warm_up = min(200, requests // 4)
    try:
        with httpx.Client(base_url=app.url, timeout=60) as http:
            for i in range(1, requests + 1):
                chosen = [{"url": f"{host}/u{i // 10 % 2}.safetensors"}] if i % 10 == 0 else mix[i % len(mix)]
                response = http.post("/", json={"prompt": "a lighthouse", "num_inference_steps": 1, "seed": i,
                                                 "loras": chosen})
                if response.status_code != 200:
                    return {"requests": requests, "failed_at": i, "status": response.status_code, "ok": False}
                if i == warm_up or i % 100 == 0 or i == requests:
                    samples.append({"request": i, "open_files": app.open_files(),
                                    "rss_mb": round(process.memory_info().rss / 2**20, 1)})
            healthy = http.get("/healthz").status_code == 200
    finally:
        app.stop()
        server.close()
    fetched = len(app.events("lora_fetched"))
    settled = next(s for s in samples if s["request"] == warm_up)
    end = samples[-1]
    problems = []
    if end["open_files"] - settled["open_files"] > FD_GROWTH:
        problems.append(f"open files grew from {settled['open_files']} to {end['open_files']}")
    if end["rss_mb"] - settled["rss_mb"] > RSS_GROWTH_MB:
        problems.append(f"RSS grew from {settled['rss_mb']} to {end['rss_mb']} MB")
    if not healthy:
        problems.append("/healthz failed at the end")
    if fetched < requests // 10:
        problems.append(f"the fetched LoRAs were fetched {fetched} times, not each time (the caches' bounds)")
    return {"requests": requests, "nofile": NOFILE, "lora_fetches": fetched, "samples": samples, "problems": problems,
            "ok": not problems}


def gateway_soak(tmp: Path, model: Path, jobs: int, clients: int, result_ttl_s: float) -> dict:
    server = RedisServer(tmp)
    replicas = [AppProcess(tmp, {"MODEL_ID": str(model)}, nofile=NOFILE) for _ in range(2)]
    gateway = None
    raw = redis_client.Redis.from_url(server.url)
    try:
        for replica in replicas:
            replica.wait_ready()
        gateway = GatewayProcess(tmp, [r.url for r in replicas], server.url, "--api-key", TEST_KEY,
                                 "--result-ttl", str(result_ttl_s), nofile=NOFILE).wait_ready()
        # Connection pools (Redis, replicas) grow to what the clients' concurrency needs, then stay: measured after.
        warm_up = run_load(gateway, replicas, max(40, jobs // 10), clients, api_key=TEST_KEY)
        redis_start_mb = raw.info("memory")["used_memory"] / 2**20
        fds = {"gateway_start": gateway.open_files()}
        peak = {"redis_mb": redis_start_mb, "gateway_fds": fds["gateway_start"]}
        stop = threading.Event()

        def sample() -> None:
            while not stop.wait(0.5):
                peak["redis_mb"] = max(peak["redis_mb"], raw.info("memory")["used_memory"] / 2**20)
                peak["gateway_fds"] = max(peak["gateway_fds"], gateway.open_files())

        sampler = threading.Thread(target=sample)
        sampler.start()
        try:
            result = run_load(gateway, replicas, jobs, clients, api_key=TEST_KEY)
        finally:
            stop.set()
            sampler.join()
        fds["gateway_end"] = gateway.open_files()
        fds["replicas_end"] = [r.open_files() for r in replicas]
        time.sleep(result_ttl_s + 3)  # every result past its TTL: Redis drops them itself, no sweep involved
        redis_end_mb = raw.info("memory")["used_memory"] / 2**20
        keys_left = raw.dbsize()
    finally:
        for process in [*replicas, gateway]:
            if process is not None:
                process.stop()
        server.stop()
    problems = [f"warm-up: {problem}" for problem in verdict(warm_up)] + verdict(result)
    if fds["gateway_end"] - fds["gateway_start"] > FD_GROWTH:
        problems.append(f"the gateway's open files grew from {fds['gateway_start']} to {fds['gateway_end']}")
    if redis_end_mb - redis_start_mb > REDIS_GROWTH_MB:
        problems.append(f"Redis grew from {redis_start_mb:.1f} to {redis_end_mb:.1f} MB after the results expired")
    result.update(nofile=NOFILE, result_ttl_s=result_ttl_s, open_files=fds, peak_gateway_fds=peak["gateway_fds"],
                  redis_mb={"start": round(redis_start_mb, 1), "peak": round(peak["redis_mb"], 1),
                            "after_expiry": round(redis_end_mb, 1)},
                  redis_keys_after_expiry=keys_left, problems=problems, ok=not problems)
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--result-ttl", type=float, default=20, help="seconds; the clients read theirs at once")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "soak.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        model = model_factory.save_tiny_sd(tmp / "tiny-sd")
        report = {"replica": replica_soak(tmp, model, args.requests),
                  "gateway": gateway_soak(tmp, model, args.jobs, args.clients, args.result_ttl)}
    report["ok"] = report["replica"]["ok"] and report["gateway"]["ok"]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    if not report["ok"]:
        raise SystemExit("soak failed: " + "; ".join(report["replica"].get("problems", ["replica failed"])
                                                     + report["gateway"]["problems"]))


if __name__ == "__main__":
    main()
