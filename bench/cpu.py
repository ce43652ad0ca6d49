"""make bench: this app against plain diffusers on this CPU, side by side in one run, as ratios.

SD-1.5-sized model with random weights (built once into bench/models/). Prints one table and writes
bench/results/cpu.json.
"""

import argparse
import json
import os
import platform
from pathlib import Path

from common import ROOT, App, median, plain_diffusers, sd15_folder

SPEED = {"width": 256, "height": 256, "num_inference_steps": 4}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", type=Path, default=ROOT / "bench" / "models" / "sd15-random")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    model = sd15_folder(args.model)
    r: dict = {"machine": {"cpu": _cpu_name(), "cores": os.cpu_count(), "python": platform.python_version()}}

    # Cold start, each twice, interleaved; the better of two (the page cache is warm for all of them).
    cold = {"app": [], "bare": [], "potassium_as_is": []}
    for _ in range(2):
        app = App(model)
        cold["app"].append(app.cold_s)
        app.stop()
        cold["bare"].append(plain_diffusers(model, load_only=True)["cold_s"])
        as_is = App(model, script="bench/potassium_as_is.py")
        cold["potassium_as_is"].append(as_is.cold_s)
        as_is.stop()
    r["cold_start_s"] = {name: min(times) for name, times in cold.items()}

    # Speed and overhead, through HTTP, then plain diffusers in fp32 (its default) and in bf16.
    app = App(model)
    app.generate(**SPEED)
    walls, inference = [], []
    for _ in range(args.runs):
        wall, answer = app.generate(**SPEED)
        walls.append(wall)
        inference.append(answer["timings"]["inference_ms"] / 1000)
    overhead = []
    for _ in range(2):
        wall, answer = app.generate(width=512, height=512, num_inference_steps=2)
        timings = answer["timings"]
        overhead.append({"pipeline_s": timings["inference_ms"] / 1000,
                         "handler_outside_pipeline_s": (timings["total_ms"] - timings["inference_ms"]) / 1000,
                         "client_wall_s": wall})
    r["app"] = {"s_per_image": median(walls), "pipeline_s": median(inference), "peak_rss_mb": app.stop()}
    r["overhead_512"] = min(overhead, key=lambda o: o["handler_outside_pipeline_s"])
    for dtype in ("float32", "bfloat16"):
        plain = plain_diffusers(model, dtype=dtype, size=SPEED["width"], steps=SPEED["num_inference_steps"],
                                runs=args.runs)
        r[f"plain_{dtype}"] = {"s_per_image": median(plain["times"]), "peak_rss_mb": plain["peak_rss_mb"]}

    r["ratios"] = {
        "cold_start_app_vs_bare": r["cold_start_s"]["app"] / r["cold_start_s"]["bare"],
        "cold_start_potassium_as_is_vs_bare": r["cold_start_s"]["potassium_as_is"] / r["cold_start_s"]["bare"],
        "speedup_app_vs_plain_fp32": r["plain_float32"]["s_per_image"] / r["app"]["s_per_image"],
        "speedup_app_vs_plain_bf16": r["plain_bfloat16"]["s_per_image"] / r["app"]["s_per_image"],
        "overhead_512_png": r["overhead_512"]["handler_outside_pipeline_s"] / r["overhead_512"]["pipeline_s"],
        "peak_rss_app_vs_plain_bf16": r["app"]["peak_rss_mb"] / r["plain_bfloat16"]["peak_rss_mb"],
        "peak_rss_app_vs_plain_fp32": r["app"]["peak_rss_mb"] / r["plain_float32"]["peak_rss_mb"],
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "cpu.json").write_text(json.dumps(r, indent=2))
    print(json.dumps(r, indent=2))
    print("\n| measure | ratio | goal |\n| --- | --- | --- |")
    goals = {"cold_start_app_vs_bare": "<= 1.1", "speedup_app_vs_plain_fp32": ">= 2", "overhead_512_png": "<= 0.02"}
    for name, value in r["ratios"].items():
        print(f"| {name} | {value:.3f} | {goals.get(name, '')} |")


def _cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


if __name__ == "__main__":
    main()
