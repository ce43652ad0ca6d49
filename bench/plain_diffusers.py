"""Plain diffusers, as its documentation shows it: from_pretrained, then call. Prints one JSON line of timings.

--load-only measures a bare cold start: from the interpreter's start to the pipeline loaded.
--serve runs one image per line read on stdin, printing its time, so that a benchmark can interleave it with others.
"""

import time

STARTED = time.perf_counter()

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
from diffusers import AutoPipelineForText2Image  # noqa: E402

parser = argparse.ArgumentParser()
parser.add_argument("--model", required=True)
parser.add_argument("--dtype", default="float32")
parser.add_argument("--device", default="cpu")
parser.add_argument("--size", type=int, default=512)
parser.add_argument("--steps", type=int, default=50)
parser.add_argument("--runs", type=int, default=3)
parser.add_argument("--load-only", action="store_true")
parser.add_argument("--channels-last", action="store_true")
parser.add_argument("--serve", action="store_true")
args = parser.parse_args()

dtype = getattr(torch, args.dtype)
if args.device == "cuda":
    pipe = AutoPipelineForText2Image.from_pretrained(args.model, dtype=dtype, device_map="cuda")
    torch.cuda.synchronize()
else:
    pipe = AutoPipelineForText2Image.from_pretrained(args.model, dtype=dtype)
loaded_s = time.perf_counter() - STARTED
if args.load_only:
    print(json.dumps({"cold_s": loaded_s}))
    raise SystemExit

pipe.set_progress_bar_config(disable=True)
if args.channels_last:
    pipe.unet.to(memory_format=torch.channels_last)
    pipe.vae.to(memory_format=torch.channels_last)


def run(steps: int) -> float:
    generator = torch.Generator("cpu").manual_seed(0)
    started = time.perf_counter()
    pipe("a lighthouse at dusk", width=args.size, height=args.size, num_inference_steps=steps, generator=generator)
    if args.device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - started


warm_s = run(min(args.steps, 3))
if args.serve:
    print(json.dumps({"ready": True}), flush=True)
    times = []
    for _ in sys.stdin:
        times.append(run(args.steps))
        print(json.dumps({"s": times[-1]}), flush=True)
else:
    times = [run(args.steps) for _ in range(args.runs)]
rss = next(int(line.split()[1]) / 1024 for line in Path("/proc/self/status").read_text().splitlines()
           if line.startswith("VmHWM:"))
gpu_mb = torch.cuda.max_memory_allocated() / 2**20 if args.device == "cuda" else None
print(json.dumps({"cold_s": loaded_s, "warm_s": warm_s, "times": times, "peak_rss_mb": rss, "peak_gpu_mb": gpu_mb}))
