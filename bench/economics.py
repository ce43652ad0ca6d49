"""A month of the seed's traffic (800 images), replayed against each way to run the template: what is billed, what
is worked, and how long a site's user waits.

The trace: a site's users come in sessions (a user makes a few images, looks at each, changes the prompt, asks
again). Sessions start on any of 30 days, mostly in the evening; each session's next request is sent THINK_S (on
average, exponentially distributed) after its previous image came back. Every parameter is named below; the trace is
drawn from a seeded generator, so the same inputs give the same table.

The ways to run it, each a pool of workers (one job at a time each, as the app serves):
- always on: one worker, billed all month;
- RunPod Serverless, min workers 0: a job with no idle worker starts one at once (RunPod's own queue); a worker is
  billed from its start until it stops, rounded up to the second, and stops IDLE timeout seconds after its last job.
  FlashBoot off: every start is a full cold start. FlashBoot on: every start restores a snapshot in FLASHBOOT_S
  (RunPod's own claim, not measured here: the best case; a start on another host is a full cold start, so the truth
  lies between the two rows);
- Kubernetes with KEDA (deploy/kubernetes/keda.yaml): a job is seen at KEDA's next poll (pollingInterval), a pod
  then starts cold, and a pod goes at the first poll cooldownPeriod after the work signal fell (here a whole
  polling interval after: the worst case; keda.yaml's HPA scale-down window is the cooldown too, so the last pod
  and the others linger alike); billed as pod-seconds on a per-second GPU (a node you rent by the hour bills the
  node instead, and a cluster autoscaler keeps an unneeded node 10 minutes by default).
The cold start and per-image time are the measured ones (the H200's: bench/results/gpu-h200.json; this CPU's:
bench/results/cold_start.json), image pull and container start not included.

    python3 -m bench.economics    (make economics) the tables BENCHMARKS.md carries, README's part of them, and the
                                  defaults deploy/ and docs/deployment.md ship (tests/test_economics.py checks that
                                  they agree); everything in bench/results/economics.json
"""

import argparse
import heapq
import json
import math
import random
import statistics
from dataclasses import dataclass
from pathlib import Path

from bench.common import ROOT

IMAGES_PER_MONTH = 800  # the seed README: "800 image generations over a period of a month ... $5.00"
DAYS = 30
MONTH_S = DAYS * 24 * 3600
IMAGES_PER_SESSION = 4.0  # mean; 1 + a geometric number of follow-ups
THINK_S = 30.0  # mean time a user takes between an image arriving and the next request (exponential)
EVENING_SHARE = 0.6  # sessions that start in the evening peak ...
EVENING_HOUR, EVENING_SPREAD_H = 20.5, 1.5  # ... normal around 20:30, sd 1.5 h; the rest uniform over 08:00-24:00
SEED = 800
PRICE_PER_S = 0.00116  # RunPod Serverless, 80 GB H100 "flex" worker, USD per second as listed in 2025
FLASHBOOT_S = 2.0  # a FlashBoot restore: RunPod's "1-2 s" claim, not measured here
KEDA_POLL_S = 5.0  # keda.yaml's pollingInterval
MAX_WORKERS = 4  # keda.yaml's maxReplicaCount; RunPod's max workers set the same
# The owner pays the bill; a site's user, mid-burst, waits for each next image. The default shipped is the cheapest
# way whose median wait for a burst's later images stays under PATIENCE_S, with full cold starts (FlashBoot's
# restore is not promised: on another host a start is cold).
PATIENCE_S = 5.0


@dataclass(frozen=True)
class Way:
    name: str
    idle_s: float  # how long a worker stays up after its last job (math.inf: always on)
    start_s: str = "cold"  # what a start costs: "cold" (the measured cold start) or "flashboot"
    detect_s: float = 0.0  # the scaler's polling interval: a first job waits up to this long to be seen
    engine: str = "runpod"

    @property
    def linger_s(self) -> float:
        """After its last job, how long a worker stays (billed): the scaler notices the timeout at a poll."""
        return self.idle_s + self.detect_s


WAYS = (
    Way("always on (one GPU all month)", math.inf, engine="always on"),
    *(Way(f"RunPod, idle timeout {idle} s, FlashBoot off", idle) for idle in (1, 5, 30, 60)),
    *(Way(f"RunPod, idle timeout {idle} s, FlashBoot on", idle, "flashboot") for idle in (1, 5, 30, 60)),
    *(Way(f"KEDA, cooldownPeriod {cooldown} s", cooldown, detect_s=KEDA_POLL_S, engine="keda")
      for cooldown in (300, 120, 60, 30)),
)


def measured() -> dict[str, dict[str, float]]:
    """Seconds per image and from process start to serving, as measured (each machine named)."""
    gpu = json.loads((ROOT / "bench" / "results" / "gpu-h200.json").read_text())
    cpu = json.loads((ROOT / "bench" / "results" / "cold_start.json").read_text())
    return {
        f"{gpu['machine']['gpu']}, SD-1.5 {gpu['size']}x{gpu['size']}, {gpu['steps']} steps":
            {"image_s": gpu["app_default"]["s_per_image"], "cold_s": gpu["app_default"]["cold_s"]},
        f"{cpu['machine']['cpu']} ({cpu['machine']['cores']} cores), SD-1.5-sized, {cpu['inputs']['width']}x"
        f"{cpu['inputs']['height']}, {cpu['inputs']['num_inference_steps']} steps":
            {"image_s": cpu["median"]["generation_pipeline_s"], "cold_s": cpu["median"]["cold_start_s"]},
    }


def sessions(seed: int = SEED) -> list[tuple[float, int]]:
    """(start second in the month, images) for each session, IMAGES_PER_MONTH images in all."""
    rng = random.Random(seed)
    out, left = [], IMAGES_PER_MONTH
    while left:
        images = 1
        while rng.random() > 1 / IMAGES_PER_SESSION:
            images += 1
        images = min(images, left)
        left -= images
        if rng.random() < EVENING_SHARE:
            hour = rng.gauss(EVENING_HOUR, EVENING_SPREAD_H) % 24
        else:
            hour = rng.uniform(8, 24)
        out.append((rng.randrange(DAYS) * 86400 + hour * 3600, images))
    return sorted(out)


def replay(way: Way, image_s: float, cold_s: float, seed: int = SEED) -> dict:
    """The month, event by event: each job takes the worker free first, or starts one (up to MAX_WORKERS)."""
    rng = random.Random(seed + 1)
    think = random.Random(seed + 2)
    start_s = FLASHBOOT_S if way.start_s == "flashboot" else cold_s
    workers: list[dict] = []  # {"started", "free_at"}; a stopped worker leaves the list, its seconds billed
    billed = 0.0
    if way.engine == "always on":
        workers.append({"started": 0.0, "free_at": 0.0})
    arrivals = [(start, index, images, True) for index, (start, images) in enumerate(sessions(seed))]
    heapq.heapify(arrivals)
    first_waits, later_waits = [], []
    while arrivals:
        now, session, images_left, first = heapq.heappop(arrivals)
        for worker in list(workers):  # those idle past their timeout stopped at free_at + idle_s
            if worker["free_at"] + way.linger_s < now:
                billed += math.ceil(worker["free_at"] + way.linger_s - worker["started"])
                workers.remove(worker)
        free = min(workers, key=lambda w: w["free_at"], default=None)
        if (free is None or free["free_at"] > now) and len(workers) < MAX_WORKERS:
            seen = now + (rng.uniform(0, way.detect_s) if way.detect_s else 0.0)
            new = {"started": seen, "free_at": seen + start_s}
            workers.append(new)
            if free is None or new["free_at"] < free["free_at"]:
                free = new
        done = max(now, free["free_at"]) + image_s
        free["free_at"] = done
        (first_waits if first else later_waits).append(done - now)
        if images_left > 1:
            heapq.heappush(arrivals, (done + think.expovariate(1 / THINK_S), session, images_left - 1, False))
    if way.engine == "always on":
        billed = MONTH_S
    else:
        billed += sum(math.ceil(w["free_at"] + way.linger_s - w["started"]) for w in workers)
    worked = IMAGES_PER_MONTH * image_s
    return {"way": way.name, "billed_s": billed, "worked_s": worked, "billed_per_worked": billed / worked,
            "usd": billed * PRICE_PER_S, "first_image_wait_s": percentiles(first_waits),
            "later_image_wait_s": percentiles(later_waits)}


def percentiles(values: list[float]) -> dict[str, float]:
    cuts = statistics.quantiles(values, n=20, method="inclusive")
    return {"p50": statistics.median(values), "p95": cuts[18]}


def simulate() -> dict:
    return {machine: {"inputs": figures, "ways": [replay(way, **figures) for way in WAYS]}
            for machine, figures in measured().items()}


def best(results: list[dict], engine: str) -> Way:
    """The cheapest way on this engine, starts cold, whose burst's later images come within PATIENCE_S (median)."""
    by_name = {way.name: way for way in WAYS}
    patient = [r for r in results if by_name[r["way"]].engine == engine and by_name[r["way"]].start_s == "cold"
               and r["later_image_wait_s"]["p50"] <= PATIENCE_S]
    return by_name[min(patient, key=lambda r: r["billed_s"])["way"]]


def way(engine: str, idle_s: float, start_s: str = "cold") -> Way:
    return next(w for w in WAYS if (w.engine, w.idle_s, w.start_s) == (engine, idle_s, start_s))


def readme_ways(results: list[dict]) -> list[Way]:
    """README's rows: always on, the defaults shipped before (RunPod's 5 s idle timeout, KEDA's 300 s cooldown),
    the defaults shipped now, each RunPod one with FlashBoot at its best too."""
    runpod = best(results, "runpod")
    return list(dict.fromkeys([WAYS[0], way("runpod", 5), runpod, way("runpod", 5, "flashboot"),
                               way("runpod", runpod.idle_s, "flashboot"), way("keda", 300), best(results, "keda")]))


def readme_table(machine: str, results: list[dict]) -> str:
    by_name = {r["way"]: r for r in results}
    lines = [f"| {IMAGES_PER_MONTH} images a month ({machine}) | GPU s billed | billed/worked | at ${PRICE_PER_S}/s "
             "| wait, first image of a burst | wait, later images |", "| --- | --- | --- | --- | --- | --- |"]
    for shown in readme_ways(results):
        r = by_name[shown.name]
        lines.append(f"| {r['way']} | {r['billed_s']:,.0f} | {r['billed_per_worked']:,.1f}x | ${r['usd']:,.2f} | "
                     f"{r['first_image_wait_s']['p50']:.1f} s | {r['later_image_wait_s']['p50']:.1f} s |")
    return "\n".join(lines)


def table(machine: str, results: list[dict]) -> str:
    lines = [f"| {IMAGES_PER_MONTH} images a month ({machine}) | s billed | worked | billed/worked | "
             f"at ${PRICE_PER_S}/s | first image of a burst, p50 / p95 | later images, p50 / p95 |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in results:
        first, later = r["first_image_wait_s"], r["later_image_wait_s"]
        lines.append(f"| {r['way']} | {r['billed_s']:,.0f} | {r['worked_s']:,.0f} | {r['billed_per_worked']:,.1f}x"
                     f" | ${r['usd']:,.2f} | {first['p50']:.1f} / {first['p95']:.1f} s | "
                     f"{later['p50']:.1f} / {later['p95']:.1f} s |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "economics.json")
    args = parser.parse_args()
    results = simulate()
    for machine, result in results.items():
        print(table(machine, result["ways"]), "\n")
    gpu_machine, gpu = next(iter(results.items()))
    print("README:", readme_table(gpu_machine, gpu["ways"]), sep="\n")
    shipped = {"runpod": best(gpu["ways"], "runpod").name, "keda": best(gpu["ways"], "keda").name}
    print("\nshipped:", shipped)
    args.out.write_text(json.dumps({"trace": {"images": IMAGES_PER_MONTH, "days": DAYS, "seed": SEED,
                                              "images_per_session": IMAGES_PER_SESSION, "think_s": THINK_S,
                                              "evening_share": EVENING_SHARE, "evening_hour": EVENING_HOUR,
                                              "evening_spread_h": EVENING_SPREAD_H},
                                    "price_per_s": PRICE_PER_S, "flashboot_s": FLASHBOOT_S, "patience_s": PATIENCE_S,
                                    "machines": results, "shipped": shipped}, indent=2))


if __name__ == "__main__":
    main()
