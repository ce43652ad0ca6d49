"""COMPILE=1: the denoiser and the VAE decoder compiled ahead, at warm-up, for the sizes the operator lists; never
inside a request.

torch.compile specialises to its inputs' shapes: every new size, number of images, guidance on or off (the batch the
denoiser sees), or ControlNet's extra inputs compiles again, for minutes, inside the request that brought it, and
past torch's recompile limit (8) a fullgraph compile raises for good. So each compiled function is open while the
warm-up compiles the listed variants (COMPILE_SIZES x COMPILE_IMAGES), then sealed: a call its compiled code does
not cover runs the fallback instead (the CUDA-graph path, or eager), said once per variant in the log.

Outputs are copied: with mode="reduce-overhead" they live in CUDA-graph memory that the next replay overwrites, and
PNDM keeps past outputs in its history (without guidance the denoiser's output reaches it untouched, so every entry
became the last one: "accessing tensor output of CUDAGraphs that has been overwritten"). An integer timestep is
given as float32, as for CUDA graphs, so that every scheduler family shares one variant.

The layout is inductor's to choose (its layout optimisation gives the compiled convolutions channels_last): the
weights stay as loaded, since the paths that run eager (the fallback, ControlNet, the VAE's encoder, the safety
checker) share them and ran slower in channels_last (1.60 s against 1.44 s a 50-step image on the H200).

COMPILE_CACHE (Cache, below) carries what inductor compiled from one replica's start to the next.
"""

import os
import weakref
from pathlib import Path
from typing import Callable

import torch
from torch._dynamo.utils import counters

from . import logs
from .cuda_graphs import copied, inputs_of

_INSTANCES: "weakref.WeakSet[Compiled]" = weakref.WeakSet()
MAX_REMEMBERED = 256
# diffusers' fuse_qkv_projections concatenates these projections into one weight (loras.py writes a LoRA of to_q
# into its rows of to_qkv).
FUSED = (("to_qkv", ("to_q", "to_k", "to_v")), ("to_kv", ("to_k", "to_v")),
         ("to_added_qkv", ("add_q_proj", "add_k_proj", "add_v_proj")))


def fuse_projections(denoiser: torch.nn.Module) -> None:
    """diffusers' fused QKV projections, without the copies they came from: each projection a fused one replaces
    keeps its shape (loras.py reads its rows) but holds one number (stride 0), so its memory goes (SDXL's UNet: 1.2
    GiB, FLUX.1's transformer: 4.0 GiB)."""
    denoiser.fuse_qkv_projections()
    for module in denoiser.modules():
        for fused, parts in FUSED:
            if not getattr(module, "fused_projections", False) or getattr(module, fused, None) is None:
                continue
            for linear in (getattr(module, part) for part in parts):
                for name, tensor in list(linear.named_parameters(recurse=False)):
                    one = torch.zeros((), dtype=tensor.dtype, device=tensor.device).expand(tensor.shape)
                    setattr(linear, name, torch.nn.Parameter(one, requires_grad=False))


def allow_variants(count: int) -> None:
    """torch.compile raises past its recompile limit (8 variants of one function): COMPILE_SIZES x COMPILE_IMAGES
    may list more, each compiled once, at the warm-up."""
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, count)


def status() -> dict[str, int]:
    """For the app's /healthz: variants compiled, and variants run by the fallback since the seal."""
    return {"variants": sum(len(c.variants) for c in _INSTANCES),
            "fallbacks": sum(len(c.fallen) for c in _INSTANCES)}


class Compiled:
    def __init__(self, name: str, forward: Callable, fallback: Callable | None, backend: str | Callable,
                 mode: str = "reduce-overhead"):
        """name: what the log calls it (unet, vae_decode). backend, mode: torch.compile's (mode only for inductor).
        dynamic=False: one static variant per shape, as CUDA graphs need anyway; automatic dynamic shapes would
        turn the second size into a dynamic-shape compile of untested speed."""
        self.name = name
        self.compiled = torch.compile(forward, backend=backend, mode=mode if backend == "inductor" else None,
                                      fullgraph=True, dynamic=False)
        self.fallback = fallback
        self.sealed = False
        self.variants: set[tuple] = set()  # compiled while open
        # Met after the seal and not covered: the fallback runs them, without asking the guards again. Bounded: a
        # variant forgotten is only asked again.
        self.fallen: dict[tuple, None] = {}
        _INSTANCES.add(self)

    def seal(self) -> None:
        """From now on nothing compiles: called once the warm-up has compiled every listed variant."""
        self.sealed = True

    def __call__(self, *args, **kwargs):
        leaves, rebuild, key = inputs_of(args, kwargs)
        if key in self.fallen:
            return self.fallback(*args, **kwargs)
        args, kwargs = rebuild(leaves)
        if not self.sealed:
            self.variants.add(key)
            return copied(self.compiled(*args, **kwargs))
        try:
            with torch.compiler.set_stance("fail_on_recompile"):
                return copied(self.compiled(*args, **kwargs))
        except RuntimeError as error:
            if "fail_on_recompile" not in str(error):  # out of memory, or the model's own error
                raise
            self.fallen[key] = None
            if len(self.fallen) > MAX_REMEMBERED:
                del self.fallen[next(iter(self.fallen))]
            # The guard that failed says which input differs (a size, the batch, an extra input); not the values.
            reason = next((line for line in str(error).splitlines() if line.strip().startswith("- ")), "")
            reason = " ".join(reason.partition("#")[0].split())  # the guard, without the source line it quotes
            logs.event("compile_fallback", function=self.name, reason=reason[:200], fallbacks=len(self.fallen))
            return self.fallback(*args, **kwargs)


class Cache:
    """COMPILE_CACHE: a folder where PyTorch keeps what it compiles (inductor's FX-graph and AOTAutograd caches, and
    the C++ or Triton kernels it built: TORCHINDUCTOR_CACHE_DIR, Triton's under it), instead of the container's
    /tmp, which a new container starts without. On a volume every replica mounts, the first replica's compile
    serves every later cold start: what is left is tracing the model and loading the kernels. Entries are keyed by
    the device, torch and the graph: another GPU or another torch compiles anew, beside them. PyTorch writes each
    entry whole (to a temporary name, then renamed), so replicas may share the folder. What is in it is code the
    app runs: it must lie where only the replicas write.
    """

    def __init__(self, folder: Path):
        self.folder = folder

    def use(self) -> None:
        """Before anything compiles. A folder the app cannot write costs a compile from scratch, never the start."""
        inductor = self.folder / "inductor"
        try:
            inductor.mkdir(parents=True, exist_ok=True)
            probe = inductor / f".probe-{os.getpid()}"
            probe.touch()
            probe.unlink()
        except OSError as error:
            logs.event("compile_cache_unusable", path=str(self.folder), error=type(error).__name__)
            return
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(inductor)

    def report(self) -> None:
        """After the warm-up: how much of its compile the folder held (misses were compiled and are now in it)."""
        logs.event("compile_cache", path=str(self.folder), hits=counters["inductor"]["fxgraph_cache_hit"],
                   misses=counters["inductor"]["fxgraph_cache_miss"])
