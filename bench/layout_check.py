"""Does channels_last pay on this CPU? Plain diffusers in fp32 and bf16, each in NCHW and NHWC, run in turns in one
process (the best of --runs, as bench/cpu.py does). SD-1.5-sized random model, 256x256, 4 steps.

    .venv/bin/python bench/layout_check.py
"""

import argparse
import json
import time

import torch
from diffusers import AutoPipelineForText2Image

from bench.common import ROOT, sd15_folder


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=4)
    args = parser.parse_args()
    folder = sd15_folder(ROOT / "bench" / "models" / "sd15-random")
    times: dict[str, list[float]] = {}
    for dtype in (torch.float32, torch.bfloat16):
        pipe = AutoPipelineForText2Image.from_pretrained(folder, dtype=dtype)
        pipe.set_progress_bar_config(disable=True)
        for _ in range(args.runs):
            for layout in (torch.contiguous_format, torch.channels_last):
                pipe.unet.to(memory_format=layout)
                pipe.vae.to(memory_format=layout)
                run(pipe)  # the first call in a layout pays oneDNN's set-up for it
                name = f"{str(dtype).removeprefix('torch.')} {'NHWC' if layout == torch.channels_last else 'NCHW'}"
                times.setdefault(name, []).append(run(pipe))
        del pipe
    print(json.dumps({name: {"best_s": min(runs), "runs": runs} for name, runs in times.items()}, indent=2))


def run(pipe) -> float:
    generator = torch.Generator("cpu").manual_seed(0)
    started = time.perf_counter()
    pipe("a lighthouse at dusk", width=256, height=256, num_inference_steps=4, generator=generator)
    return time.perf_counter() - started


if __name__ == "__main__":
    main()
