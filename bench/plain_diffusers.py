"""Plain diffusers, as its documentation shows it: from_pretrained, then call. Prints one JSON line of timings.

--load-only measures a bare cold start: from this script's first line (cold_s), and from the process's start
(from_process_start_s, as the app's cold_start phases count), to the pipeline loaded.
--serve runs one generation per line read on stdin, printing its time, so that a benchmark can interleave it with
others; a line holding a JSON object sets that generation's inputs (prompt, width, height, num_inference_steps,
guidance_scale, seed, num_images, scheduler: the app's names, mapped to diffusers' classes as the app maps them),
and the answer then carries the first image as a PNG data URI, to compare with the app's.
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
    loaded_at = time.perf_counter()
    from serverless_sd.cold_start import process_age_s  # imported after the load: its time is not counted

    from_start_s = process_age_s() - (time.perf_counter() - loaded_at)  # the interpreter's start too, as the app's
    print(json.dumps({"cold_s": loaded_s, "from_process_start_s": from_start_s}))
    raise SystemExit

pipe.set_progress_bar_config(disable=True)
if args.channels_last:
    pipe.unet.to(memory_format=torch.channels_last)
    pipe.vae.to(memory_format=torch.channels_last)


MODEL_SCHEDULER = pipe.scheduler


def run(steps: int, **inputs) -> tuple[float, list]:
    """One generation: its seconds and its images. Each image from its own generator, seeded seed + i (the app's)."""
    seed, count = inputs.get("seed", 0), inputs.get("num_images", 1)
    options = {"guidance_scale": inputs["guidance_scale"]} if "guidance_scale" in inputs else {}
    if inputs.get("scheduler"):
        from serverless_sd import schedulers

        pipe.scheduler = schedulers.build(inputs["scheduler"], MODEL_SCHEDULER, "Flux" in type(pipe).__name__ or
                                          "StableDiffusion3" in type(pipe).__name__)
    else:
        pipe.scheduler = MODEL_SCHEDULER
    started = time.perf_counter()
    images = pipe(inputs.get("prompt", "a lighthouse at dusk"), width=inputs.get("width", args.size),
                  height=inputs.get("height", args.size), num_inference_steps=inputs.get("num_inference_steps", steps),
                  num_images_per_prompt=count, generator=[torch.Generator("cpu").manual_seed(seed + i)
                                                          for i in range(count)], **options).images
    if args.device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - started, images


def data_uri(image) -> str:
    import base64
    import io

    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


warm_s = run(min(args.steps, 3))[0]
if args.serve:
    print(json.dumps({"ready": True, "cold_s": loaded_s}), flush=True)
    times = []
    for line in sys.stdin:
        inputs = json.loads(line) if line.strip().startswith("{") else {}
        seconds, images = run(args.steps, **inputs)
        times.append(seconds)
        print(json.dumps({"s": seconds, **({"images": [data_uri(images[0])]} if inputs else {})}), flush=True)
else:
    times = [run(args.steps)[0] for _ in range(args.runs)]
rss = next(int(line.split()[1]) / 1024 for line in Path("/proc/self/status").read_text().splitlines()
           if line.startswith("VmHWM:"))
gpu_mb = torch.cuda.max_memory_allocated() / 2**20 if args.device == "cuda" else None
print(json.dumps({"cold_s": loaded_s, "warm_s": warm_s, "times": times, "peak_rss_mb": rss, "peak_gpu_mb": gpu_mb}))
