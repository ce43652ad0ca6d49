"""make bench: this app against plain diffusers on this CPU, side by side in one run, as ratios.

SD-1.5-sized model with random weights (built once into bench/models/). Prints one table and writes
bench/results/cpu.json.
"""

import json

from bench.common import App, Plain, cpu_arguments, machine, median, plain_diffusers, sd15_folder

SPEED = {"width": 256, "height": 256, "num_inference_steps": 4}


def main() -> None:
    args = cpu_arguments(runs=5)
    model = sd15_folder(args.model)
    r: dict = {"machine": machine()}

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

    # Speed: the app over HTTP against plain diffusers in fp32 (its default) and in bf16, all three loaded at once
    # and run in turns, so that whatever else this shared machine does falls on all three alike. The ratios use the
    # best of the runs (noise only ever adds time); the medians are recorded beside them.
    app = App(model)
    app.generate(**SPEED)
    plains = {dtype: Plain(model, dtype=dtype, size=SPEED["width"], steps=SPEED["num_inference_steps"])
              for dtype in ("float32", "bfloat16")}
    times: dict[str, list[float]] = {"app": [], "app_pipeline": [], "float32": [], "bfloat16": []}
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
        "speedup_app_vs_plain_bf16": r["plain_bfloat16"]["s_per_image"] / r["app"]["s_per_image"],
        "speedup_app_vs_plain_fp32_medians": r["plain_float32"]["median_s"] / r["app"]["median_s"],
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


if __name__ == "__main__":
    main()
