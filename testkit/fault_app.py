"""app.py with faults planted in generation, for the tests of internal failures: `python3 -m testkit.fault_app`.

A prompt starting "fail: oom" raises CUDA's out-of-memory error, "fail: crash" a RuntimeError carrying internals,
"fail: hang" sleeps 6 s (a replica stuck mid-request, for the health check).
"""

import time

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
    return real_generate(self, inputs, request_id)


StableDiffusion.generate = generate_with_faults
app.app.serve()
