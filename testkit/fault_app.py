"""app.py with faults planted in generation, for the tests of internal failures: `python3 -m testkit.fault_app`.

A prompt starting "fail: oom" raises CUDA's out-of-memory error, "fail: crash" a RuntimeError carrying internals,
"fail: hang" sleeps 6 s (a replica stuck mid-request, for the health check), "fail: die" ends the process on the spot,
as the kernel's out-of-memory killer or a segfault would (a poison job). "wait: PATH ..." waits until the file PATH
exists (a job that runs until the test lets it end), then generates.
"""

import os
import time
from pathlib import Path

import torch

import app
from serverless_sd.pipelines import StableDiffusion

real_generate = StableDiffusion.generate


def generate_with_faults(self, inputs, request_id=""):
    # The messages quote the prompt, as library errors sometimes quote their inputs.
    if inputs.prompt.startswith("fail: oom"):
        torch.ones(1024, 1024)  # something to free
        raise torch.OutOfMemoryError(f"CUDA out of memory (internal detail) for {inputs.prompt!r}")
    if inputs.prompt.startswith("fail: crash"):
        raise RuntimeError(f"internal detail at /opt/internal/path.py for {inputs.prompt!r}")
    if inputs.prompt.startswith("fail: hang"):
        time.sleep(6)
    if inputs.prompt.startswith("fail: die"):
        os._exit(137)
    if inputs.prompt.startswith("wait: "):
        released = Path(inputs.prompt.split()[1])
        for _ in range(6000):
            if released.exists():
                break
            time.sleep(0.1)
    return real_generate(self, inputs, request_id)


StableDiffusion.generate = generate_with_faults
app.app.serve()
