"""app.py with faults planted in generation, for the tests of internal failures: run as `python3 tests/fault_app.py`.

A prompt starting "fail: oom" raises CUDA's out-of-memory error, "fail: crash" a RuntimeError carrying internals,
"fail: hang" sleeps 6 s (a replica stuck mid-request, for the health check).
"""

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import app  # noqa: E402
from serverless_sd import serving  # noqa: E402
from serverless_sd.pipelines import StableDiffusion  # noqa: E402

real_generate = StableDiffusion.generate


def generate_with_faults(self, inputs):
    # The messages quote the prompt, as library errors sometimes quote their inputs.
    if inputs.prompt.startswith("fail: oom"):
        torch.ones(1024, 1024)  # something to free
        raise torch.OutOfMemoryError(f"CUDA out of memory (internal detail) for {inputs.prompt!r}")
    if inputs.prompt.startswith("fail: crash"):
        raise RuntimeError(f"internal detail at /opt/internal/path.py for {inputs.prompt!r}")
    if inputs.prompt.startswith("fail: hang"):
        time.sleep(6)
    return real_generate(self, inputs)


StableDiffusion.generate = generate_with_faults
serving.serve(app.app, app.settings)
