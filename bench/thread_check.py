"""Is a UNet step slower when run from a worker thread (as Potassium runs handlers) than from the main thread?

SD-1.5-sized UNet, fp16, batch 2 at 64x64 latents (512x512 with guidance), eager. Prints ms per step.
"""

import threading
import time
from multiprocessing.pool import ThreadPool

import torch
from diffusers import UNet2DConditionModel

unet = UNet2DConditionModel(
    sample_size=64, cross_attention_dim=768, attention_head_dim=8, block_out_channels=(320, 640, 1280, 1280),
    layers_per_block=2, down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
).to("cuda", torch.float16)
sample = torch.randn(2, 4, 64, 64, device="cuda", dtype=torch.float16)
text = torch.randn(2, 77, 768, device="cuda", dtype=torch.float16)
t = torch.tensor(500, device="cuda")


def steps(n: int = 30) -> float:
    with torch.inference_mode():
        torch.cuda.synchronize()
        started = time.perf_counter()
        for _ in range(n):
            unet(sample, t, encoder_hidden_states=text, return_dict=False)
        torch.cuda.synchronize()
    return (time.perf_counter() - started) / n * 1000


def in_thread() -> float:
    out = []
    thread = threading.Thread(target=lambda: out.append(steps()))
    thread.start()
    thread.join()
    return out[0]


steps(5)
pool = ThreadPool(1)
results = {"main": [], "thread": [], "pool": []}
for _ in range(3):
    results["main"].append(steps())
    results["thread"].append(in_thread())
    results["pool"].append(pool.apply(steps))
from potassium import Potassium  # noqa: E402 - its import starts nothing; an app object starts threads

app = Potassium("check")
results["pool_with_potassium_threads"] = [pool.apply(steps) for _ in range(3)]
for name, values in results.items():
    print(f"{name}: " + " ".join(f"{v:.2f}" for v in values) + " ms/step", flush=True)
