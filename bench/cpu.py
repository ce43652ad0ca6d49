"""make bench: this app against plain diffusers on this CPU, side by side in one run, as ratios.

SD-1.5-sized model with random weights (built once into bench/models/). Prints one table and writes
bench/results/cpu.json. What the app runs depends on the CPU, so the run names it: with AVX-512-BF16 or AMX the app
runs bf16 (goal: twice plain diffusers' fp32 default); without, float32 as plain diffusers does (goal: not slower),
and plain bf16, which such a CPU only emulates, is not run.
"""

import json
import os

import torch

from bench.common import App, Plain, cpu_arguments, machine, median, plain_diffusers, sd15_folder
from serverless_sd.families import named
from serverless_sd.pipelines import choose_dtype

SPEED = {"width": 256, "height": 256, "num_inference_steps": 4}


def main() -> None:
    args = cpu_arguments(runs=5)
    model = sd15_folder(args.model)
    bf16 = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    app_dtype = str(choose_dtype(os.environ.get("DTYPE", "auto"), torch.device("cpu"), named("sd"))).split(".")[1]
    r: dict = {"machine": {**machine(), "bf16": bf16}, "app_dtype": app_dtype}

    # Cold start, interleaved, the best of each (the page cache is warm for all of them; importing torch alone
    # varies by seconds on this shared machine). Potassium as it is, once: it is only there for scale.
    cold: dict[str, list[float]] = {"app": [], "bare": []}
    for _ in range(args.runs):
        app = App(model)
        cold["app"].append(app.cold_s)
        app.stop()
        cold["bare"].append(plain_diffusers(model, load_only=True)["cold_s"])
    as_is = App(model, script="bench/potassium_as_is.py")
    cold["potassium_as_is"] = [as_is.cold_s]
    as_is.stop()
    r["cold_start_s"] = {name: min(times) for name, times in cold.items()}
    r["cold_start_runs_s"] = cold

    # Speed: the app over HTTP against plain diffusers in fp32 (its default) and in bf16, all loaded at once
    # and run in turns, so that whatever else this shared machine does falls on all three alike. The ratios use the
    # best of the runs (noise only ever adds time); the medians are recorded beside them.
    app = App(model)
    app.generate(**SPEED)
    plains = {dtype: Plain(model, dtype=dtype, size=SPEED["width"], steps=SPEED["num_inference_steps"])
              for dtype in ("float32", "bfloat16") if bf16 or dtype == "float32"}
    times: dict[str, list[float]] = {"app": [], "app_pipeline": [], **{dtype: [] for dtype in plains}}
    for _ in range(args.runs):
        wall, answer = app.generate(**SPEED)
        times["app"].append(wall)
        times["app_pipeline"].append(answer["timings"]["inference_ms"] / 1000)
        for dtype, plain in plains.items():
            times[dtype].append(plain.run())
    overhead = []
    for _ in range(2):
        wall, answer = app.generate(width=512, height=512, num_inference_steps=2)
        timings = answer["timings"]
        overhead.append({"pipeline_s": timings["inference_ms"] / 1000,
                         "handler_outside_pipeline_s": (timings["total_ms"] - timings["inference_ms"]) / 1000,
                         "client_wall_s": wall})
    r["app"] = {"s_per_image": min(times["app"]), "median_s": median(times["app"]),
                "pipeline_s": min(times["app_pipeline"]), "runs": times["app"], "peak_rss_mb": app.stop()}
    r["overhead_512"] = min(overhead, key=lambda o: o["handler_outside_pipeline_s"])
    for dtype, plain in plains.items():
        r[f"plain_{dtype}"] = {"s_per_image": min(times[dtype]), "median_s": median(times[dtype]),
                               "runs": times[dtype], "peak_rss_mb": plain.stop()}

    r["ratios"] = {
        "cold_start_app_vs_bare": r["cold_start_s"]["app"] / r["cold_start_s"]["bare"],
        "cold_start_potassium_as_is_vs_bare": r["cold_start_s"]["potassium_as_is"] / r["cold_start_s"]["bare"],
        "speedup_app_vs_plain_fp32": r["plain_float32"]["s_per_image"] / r["app"]["s_per_image"],
        "speedup_app_vs_plain_fp32_medians": r["plain_float32"]["median_s"] / r["app"]["median_s"],
        "overhead_512_png": r["overhead_512"]["handler_outside_pipeline_s"] / r["overhead_512"]["pipeline_s"],
        "peak_rss_app_vs_plain_fp32": r["app"]["peak_rss_mb"] / r["plain_float32"]["peak_rss_mb"],
    }
    if "bfloat16" in plains:
        r["ratios"] |= {
            "speedup_app_vs_plain_bf16": r["plain_bfloat16"]["s_per_image"] / r["app"]["s_per_image"],
            "peak_rss_app_vs_plain_bf16": r["app"]["peak_rss_mb"] / r["plain_bfloat16"]["peak_rss_mb"]}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "cpu.json").write_text(json.dumps(r, indent=2))
    print(json.dumps(r, indent=2))
    print(f"\n{r['machine']['cpu']}, {r['machine']['cores']} cores, bf16 {'yes' if bf16 else 'no'}: the app runs "
          f"{app_dtype}\n\n| measure | ratio | goal |\n| --- | --- | --- |")
    goals = {"cold_start_app_vs_bare": "<= 1.1", "overhead_512_png": "<= 0.02",
             "speedup_app_vs_plain_fp32": ">= 2" if app_dtype == "bfloat16" else ">= 1 (float32 both)"}
    for name, value in r["ratios"].items():
        print(f"| {name} | {value:.3f} | {goals.get(name, '')} |")


if __name__ == "__main__":
    main()
