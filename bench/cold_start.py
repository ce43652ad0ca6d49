"""make coldstart: zero to first image, and the replica's own start phase by phase.

1. No replica runs; a caller starts a job; a scaler reading the gateway's scale signal (standing in for KEDA) starts
   a replica; the caller gets the image. The time is split into the scale decision, the replica's cold start, its
   joining the gateway, and the generation.
2. The replica's phases (serverless_sd/cold_start.py: imports, CUDA, reading the weights, building the modules,
   warm-up, first request; from /healthz) against a bare `from_pretrained` process of the same folder, both from
   the process's start, in turns: with the model's files out of the page cache (posix_fadvise DONTNEED: a new node,
   whose disk or network volume the weights are read from) and with them in it (a restart on the same node).

The SD-1.5-sized model with random weights (bench/models/, built once), the gateway resolving a name whose
addresses the scaler sets (as a headless Service's DNS lists ready pods), the real app.py and gateway.py. Plain
diffusers' own load time (from_pretrained, in a fresh process) is measured in the same run beside the cold start.
Writes bench/results/cold_start.json.
"""

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from bench.common import ROOT, machine, plain_diffusers, sd15_folder
from testkit.hosts import Hosts
from testkit.processes import TEST_KEY, AppProcess, GatewayProcess, free_port

NAME = "sd-app.bench"
INPUTS = {"prompt": "a lighthouse at dusk", "width": 512, "height": 512, "num_inference_steps": 4, "seed": 1}
# The replica as it runs alone on its machine, with PyTorch's thread per core as the bare process has (the tests'
# processes run one thread each: testkit.processes.THREADS).
ALONE = {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS") or str(os.cpu_count())}


def one_run(tmp: Path, model: Path, poll_s: float, resolve_s: float) -> dict:
    names = Hosts(tmp / "hosts.json")
    names.set(NAME, [])
    port = free_port()
    gateway = GatewayProcess(tmp, [f"http://{NAME}:{port}"], f"sqlite:///{tmp}/jobs.db", "--api-key", TEST_KEY,
                             "--resolve-every", str(resolve_s), env=names.env).wait_ready(60)
    key = {"Authorization": f"Bearer {TEST_KEY}"}
    app = None
    try:
        started = time.monotonic()
        call_id = gateway.start_job(INPUTS)["callID"]
        # The scaler: polls the signal; at the first waiting job, starts a replica and lists it once it is ready.
        while httpx.get(gateway.url + "/scale", headers=key).json()["work"] < 1:
            time.sleep(poll_s)
        decided = time.monotonic()
        app = AppProcess(tmp, {"MODEL_ID": str(model), **ALONE}, host="127.0.0.2", port=port).wait_ready(900)
        ready = time.monotonic()
        names.set(NAME, ["127.0.0.2"])
        while gateway.check(call_id)["state"] == "queued":
            time.sleep(0.05)
        running = time.monotonic()
        answer = gateway.result(call_id, timeout=1800)
        done = time.monotonic()
        assert answer["message"] == "success", answer
        [ready_event] = app.events("ready")
        return {"total_s": done - started, "scale_decision_s": decided - started, "cold_start_s": ready - decided,
                "model_load_s": ready_event["init_s"], "join_s": running - ready, "generation_s": done - running,
                "generation_pipeline_s": answer["modelOutputs"][0]["timings"]["inference_ms"] / 1000}
    finally:
        if app:
            app.stop()
        gateway.stop()


def evict(folder: Path) -> None:
    """The folder's files out of the page cache (the libraries' files stay: both processes import the same ones)."""
    for path in folder.rglob("*"):
        if path.is_file():
            descriptor = os.open(path, os.O_RDONLY)
            os.posix_fadvise(descriptor, 0, 0, os.POSIX_FADV_DONTNEED)
            os.close(descriptor)


def app_phases(tmp: Path, model: Path) -> dict:
    app = AppProcess(tmp, {"MODEL_ID": str(model), **ALONE}).wait_ready(900)
    try:
        answer = app.post({**INPUTS, "num_inference_steps": 1})
        assert answer.status_code == 200, answer.text
        return httpx.get(app.url + "/healthz").json()["cold_start"]
    finally:
        app.stop()


def app_dtype() -> str:
    """The dtype the app picks on this CPU by default (pipelines.choose_dtype): the bare load is run at it too."""
    import torch

    from serverless_sd import families
    from serverless_sd.pipelines import choose_dtype

    return str(choose_dtype("auto", torch.device("cpu"), families.named("sd"))).removeprefix("torch.")


def phases(model: Path, runs: int) -> dict:
    """The app's phases and a bare from_pretrained's load (diffusers' default float32, and the app's own dtype),
    each from its process's start, in turns."""
    dtypes = list(dict.fromkeys(["float32", app_dtype()]))
    measured = {"cold_page_cache": [], "warm_page_cache": []}
    for i in range(runs):
        for cache in measured:
            if cache == "cold_page_cache":
                evict(model)
            with tempfile.TemporaryDirectory() as tmp:
                app = app_phases(Path(tmp), model)
            bare = {}
            for dtype in dtypes:
                if cache == "cold_page_cache":
                    evict(model)
                bare[dtype] = plain_diffusers(model, load_only=True, dtype=dtype)["from_process_start_s"]
            measured[cache].append({"app": app, "bare_from_pretrained_s": bare,
                                    "ratio": {dtype: app["ready"] / s for dtype, s in bare.items()}})
            print(f"{cache} run {i + 1}: app ready {app['ready']:.2f} s, bare {bare}", flush=True)
    medians = {}
    for cache, entries in measured.items():
        numeric = [name for name, value in entries[0]["app"].items() if isinstance(value, (int, float))]
        medians[cache] = {"app": {name: statistics.median(e["app"][name] for e in entries) for name in numeric},
                          **{key: {dtype: statistics.median(e[key][dtype] for e in entries) for dtype in dtypes}
                             for key in ("bare_from_pretrained_s", "ratio")}}
    return {"app_dtype": dtypes[-1], "runs": measured, "median": medians}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", type=Path, default=ROOT / "bench" / "models" / "sd15-random")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--poll", type=float, default=1.0, help="the scaler's polling interval (KEDA's: 5 s here)")
    parser.add_argument("--resolve-every", type=float, default=1.0)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "cold_start.json")
    args = parser.parse_args()
    model = sd15_folder(args.model)
    runs, bare = [], []
    for i in range(args.runs):
        with tempfile.TemporaryDirectory() as tmp:
            runs.append(one_run(Path(tmp), model, args.poll, args.resolve_every))
        bare.append(plain_diffusers(model, load_only=True)["cold_s"])
        print(f"run {i + 1}: " + ", ".join(f"{k} {v:.2f}" for k, v in runs[-1].items()), flush=True)
    split = phases(model, args.runs)
    result = {"machine": machine(),
              "inputs": INPUTS, "scaler_poll_s": args.poll, "resolve_every_s": args.resolve_every, "runs": runs,
              "median": {k: statistics.median(r[k] for r in runs) for k in runs[0]},
              "plain_from_pretrained_s": {"runs": bare, "median": statistics.median(bare)}, "phases": split}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result["median"], indent=2), "\nplain from_pretrained:", result["plain_from_pretrained_s"])
    print(json.dumps(split["median"], indent=2))


if __name__ == "__main__":
    main()
