"""make bench-compile-cache: COMPILE=1's cold start, from scratch and from its COMPILE_CACHE, against the default's.

Each start is a new process with an empty local inductor cache, as a new container has; the COMPILE_CACHE folder
is the only thing carried from one start to the next. All three warm up the same request (the SD-1.5-sized model's
native size, 3 steps), so what differs is the compile. Writes bench/results/compile_cache.json.
"""

import argparse
import json
import tempfile
from pathlib import Path

from bench.common import ROOT, App, machine, sd15_folder


def start(model: Path, tmp: Path, name: str, **env: str) -> dict:
    app = App(model, timeout=3600, WARM_UP="on", TORCHINDUCTOR_CACHE_DIR=str(tmp / f"inductor-{name}"), **env)
    try:
        app.log.seek(0)
        events = [json.loads(line) for line in app.log.read().splitlines() if line.startswith("{")]
    finally:
        app.stop()
    warm_up = next(e for e in events if e["event"] == "warm_up")
    cache = next((e for e in events if e["event"] == "compile_cache"), None)
    return {"cold_s": round(app.cold_s, 2), "warm_up_s": round(warm_up["ms"] / 1000, 2), "compile_cache": cache}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", type=Path, default=ROOT / "bench" / "models" / "sd15-random")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "compile_cache.json")
    args = parser.parse_args()
    model = sd15_folder(args.model)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        cache = {"COMPILE": "1", "COMPILE_CACHE": str(tmp / "compiled")}
        runs = {"default": start(model, tmp, "default")}
        print("default", runs["default"], flush=True)
        runs["compile_from_scratch"] = start(model, tmp, "scratch", **cache)
        print("compile_from_scratch", runs["compile_from_scratch"], flush=True)
        runs["compile_from_cache"] = start(model, tmp, "cached", **cache)
        print("compile_from_cache", runs["compile_from_cache"], flush=True)
    result = {"machine": machine(), **runs,
              "from_cache_over_default": runs["compile_from_cache"]["cold_s"] / runs["default"]["cold_s"],
              "from_scratch_over_default": runs["compile_from_scratch"]["cold_s"] / runs["default"]["cold_s"]}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
