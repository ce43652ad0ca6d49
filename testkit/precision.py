"""The one dtype the tests run the app in, so that a test gives the same answer on every CPU.

The app's default on a CPU is bfloat16 where the CPU computes it natively (AVX-512 BF16, AMX) and float32 elsewhere
(pipelines.choose_dtype). A test that ran the default would test one path on one machine and the other on another,
and pass or fail by the CPU CI met. So every test runs float32, unless DTYPE says otherwise (`DTYPE=bfloat16 make
test` runs the whole suite in bf16, the path a CPU with AVX-512 BF16 serves), and the tests of the bf16 path ask
for it by name, where the CPU has it (BF16_CPU).
"""

import os

import torch

from serverless_sd.settings import Settings

DTYPE = os.environ.get("DTYPE") or "float32"
BF16_CPU = torch.ops.mkldnn._is_mkldnn_bf16_supported()
NO_BF16_REASON = ("this CPU has no native bf16 (AVX-512 BF16 or AMX): the app serves float32 here, and bf16 would "
                  "run emulated, many times slower")


def settings(**values) -> Settings:
    """The app's settings for a model loaded in the test's own process: on the CPU, in the tests' dtype."""
    return Settings(**{"device": "cpu", "dtype": DTYPE, **values})
