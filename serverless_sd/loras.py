"""LoRAs chosen per request: read by diffusers' own loader, fused into the loaded weights in place, taken out again.

Why fuse in place rather than add diffusers' adapter layers: a CUDA graph replays the kernels it captured, reading
each weight at its address; adapter layers added after the capture would be skipped without a word, and
torch.compile would recompile for the new modules. Writing W + scale * B @ A into W's own memory changes no module
and no address: graphs and compiled code read the new numbers on their next run. (diffusers' hot-swap keeps the
adapters' modules but needs every LoRA's rank and targets known before compile; fusing has no such limit.)

- Reading: diffusers' loader, so every format it reads loads (kohya/A1111, diffusers, PEFT), into a hollow copy of
  the model whose weights take no memory; each LoRA layer's factors A and B and its alpha / rank are kept (a
  LoRA's own size, not a weight's). Safetensors files only.
- Fusing: each touched weight is copied once to host memory before its first change, and copied back before the
  next set of LoRAs: a request without LoRAs is the model's own, bit for bit. A request with the set already fused
  (same names, same scales) changes nothing.
- Where they come from: files baked into LORAS_DIR at build (download.py, LORA_IDS), and, if the operator
  allow-lists hosts (LORA_HOSTS), URLs and hub ids fetched at run time (fetching.py) into a bounded disk cache.
  Read LoRAs are kept in memory, least recently used first out.
"""

import hashlib
import json
import logging
import os
import time
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import torch

from . import fetching, logs
from .compiled import FUSED
from .schema import InputError, LoraChoice, hub_endpoint
from .settings import Settings


class LoraError(ValueError):
    """This LoRA cannot be used: the message is for the caller."""


@dataclass(frozen=True)
class Layer:
    component: str  # "unet", "transformer", "text_encoder", ...
    path: str  # the module inside it whose weight changes
    down: torch.Tensor  # A: rank x in (x kernel)
    up: torch.Tensor  # B: out x rank (x 1 x 1)
    scale: float  # alpha / rank

    def delta(self, device: torch.device) -> torch.Tensor:
        """B @ A in float32: the change of the weight at scale 1 (PEFT's get_delta_weight, for linear and conv)."""
        down, up = (t.to(device, torch.float32, non_blocking=True) for t in (self.down, self.up))
        if down.ndim == 2:
            return up @ down
        if up.shape[2:] == (1, 1):  # kohya's and PEFT's LoCon: a k x k down, a 1 x 1 up: a matrix product
            return (up.flatten(1) @ down.flatten(1)).reshape(up.shape[0], *down.shape[1:])
        return torch.nn.functional.conv2d(down.permute(1, 0, 2, 3), up).permute(1, 0, 2, 3)


@dataclass(frozen=True)
class Lora:
    key: str  # its name, or the URL it came from
    layers: tuple[Layer, ...]

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for layer in self.layers for t in (layer.down, layer.up))


class Reader:
    """Reads a LoRA file with diffusers' loader into a hollow copy of the pipeline (its models' shapes, no weights)."""

    def __init__(self, pipe):
        self.pipe = pipe
        self._hollow = None
        self._count = 0

    def read(self, path: Path, key: str) -> Lora:
        from peft.tuners.lora import LoraLayer

        hollow = self._hollow = self._hollow or _hollow_pipeline(self.pipe)
        self._count += 1
        adapter = f"request_{self._count}"
        try:
            with _quiet():
                hollow.load_lora_weights(str(path.parent), weight_name=path.name, adapter_name=adapter,
                                         use_safetensors=True)
        except Exception as error:  # noqa: BLE001 - diffusers' and PEFT's refusals come as many kinds
            self._clear(hollow)
            raise LoraError(f"not a LoRA this model ({type(self.pipe).__name__}) can use: "
                            f"{_first_line(error)}") from None
        layers = []
        for component in _loadable(hollow):
            for path_in, module in getattr(hollow, component).named_modules():
                if isinstance(module, LoraLayer) and adapter in module.lora_A:
                    if module.use_dora.get(adapter) or module.lora_bias.get(adapter):
                        self._clear(hollow)
                        raise LoraError("DoRA and LoRA biases are not supported: only plain LoRA layers fuse")
                    layers.append(Layer(component, path_in, host_copy(module.lora_A[adapter].weight.detach()),
                                        host_copy(module.lora_B[adapter].weight.detach()),
                                        float(module.scaling[adapter])))
        self._clear(hollow)
        if not layers:
            raise LoraError(f"holds no LoRA layer of this model ({type(self.pipe).__name__}): a LoRA for another "
                            "model family?")
        return Lora(key, tuple(layers))

    @staticmethod
    def _clear(hollow) -> None:
        with _quiet():
            hollow.unload_lora_weights()


class Fuser:
    """Fuses a set of LoRAs into the pipeline's weights in place, and restores them."""

    def __init__(self, pipe):
        self.pipe = pipe
        self.saved: dict[tuple[str, str], torch.Tensor] = {}  # the model's own weights, copied before first change
        self.fused: tuple | None = ()  # (key, scale) of each LoRA fused now
        self.touched: set[tuple[str, str]] = set()

    @torch.no_grad()
    def apply(self, chosen: list[tuple[Lora, float]]) -> bool:
        """Make the weights the model's own plus each LoRA at its scale; False if they already are."""
        chosen = [(lora, scale) for lora, scale in chosen if scale != 0]  # scale 0: as if not sent
        wanted = tuple((lora.key, scale) for lora, scale in chosen)
        if wanted == self.fused:
            return False
        self.restore()
        self.fused = None  # until the whole set is in: a failure half-way is restored by the next request
        targets: dict[tuple[str, str], list[tuple[Layer, float]]] = {}
        for lora, scale in chosen:
            for layer in lora.layers:
                targets.setdefault((layer.component, layer.path), []).append((layer, layer.scale * scale))
        for target, layers in targets.items():
            weight = self.weight(*target)
            change = None
            for layer, scale in layers:  # as PEFT merges: W + delta x scale, in float32, each LoRA in turn
                delta = layer.delta(weight.device).reshape(weight.shape)
                change = delta.mul_(scale) if change is None else change.add_(delta.mul_(scale))
            if weight.dim() == 4 and weight.is_contiguous(memory_format=torch.channels_last):
                change = change.contiguous(memory_format=torch.channels_last)  # the sum below runs 3x faster
            if target not in self.saved:
                self.saved[target] = host_copy(weight)
            weight.copy_(change.add_(weight))
            self.touched.add(target)
        self.fused = wanted
        return True

    @torch.no_grad()
    def restore(self) -> None:
        for target in self.touched:
            self.weight(*target).copy_(self.saved[target], non_blocking=True)
        self.touched.clear()
        self.fused = ()

    def weight(self, component: str, path: str) -> torch.Tensor:
        """The weight a LoRA layer changes: the module's own, or its rows of a fused projection."""
        root = getattr(self.pipe, component)
        parent_path, _, leaf = path.rpartition(".")
        parent = root.get_submodule(parent_path)
        if getattr(parent, "fused_projections", False):
            for fused, parts in FUSED:
                if leaf in parts and getattr(parent, fused, None) is not None:
                    start = sum(getattr(parent, part).weight.shape[0] for part in parts[:parts.index(leaf)])
                    return getattr(parent, fused).weight[start:start + getattr(parent, leaf).weight.shape[0]]
        return root.get_submodule(path).weight


class Library:
    """Where each request's LoRAs come from: baked files, else fetched ones; read ones kept in memory."""

    def __init__(self, pipe, settings: Settings):
        self.settings = settings
        self.baked = baked(settings)
        self.allowed = fetching.Allowed.parse(settings.lora_hosts)
        self.reader = Reader(pipe)
        self.fuser = Fuser(pipe)
        self.memory: OrderedDict[str, Lora] = OrderedDict()

    def listing(self) -> dict:
        """GET /loras: the baked LoRAs (the playground's picker), and what a request may ask for besides."""
        return {"loras": [{"name": name, "bytes": path.stat().st_size} for name, path in self.baked.items()],
                "max_loras": self.settings.max_loras, "fetched_at_run_time": bool(self.allowed)}

    def apply(self, choices: list[LoraChoice]) -> None:
        """Fuse the request's LoRAs (none: the model's own weights). A LoRA that cannot be had is an InputError
        naming it."""
        chosen = []
        for index, choice in enumerate(choices):
            try:
                chosen.append((self.lora(choice), choice.scale))
            except (LoraError, fetching.FetchError) as error:
                raise InputError([(f"loras.{index}.{'url' if choice.url else 'name'}", str(error))]) from None
        started = time.perf_counter()
        if self.fuser.apply(chosen):
            logs.event("loras_fused", loras=len(chosen), ms=round((time.perf_counter() - started) * 1000, 1))

    def lora(self, choice: LoraChoice) -> Lora:
        key = choice.url or choice.name
        if key in self.memory:
            self.memory.move_to_end(key)
            return self.memory[key]
        lora = self.reader.read(self.file(choice), key)
        self.memory[key] = lora
        while sum(held.nbytes for held in self.memory.values()) > self.settings.lora_memory_bytes \
                and len(self.memory) > 1:
            self.memory.popitem(last=False)
        return lora

    def file(self, choice: LoraChoice) -> Path:
        if choice.name in self.baked:
            return self.baked[choice.name]
        url = choice.url or self._hub_url(choice.name)
        cached = self.settings.lora_cache_dir / f"{hashlib.sha256(url.encode()).hexdigest()[:40]}.safetensors"
        if cached.exists():
            os.utime(cached)  # most recently used
            return cached
        fetching.fetch(url, self.allowed, self.settings.max_lora_bytes, self.settings.fetch_timeout_s, cached)
        logs.event("lora_fetched", bytes=cached.stat().st_size)
        _evict(self.settings.lora_cache_dir, self.settings.lora_cache_bytes, keep=cached)
        return cached

    def _hub_url(self, hub_id: str) -> str:
        """owner/repo/file.safetensors, or owner/repo holding one .safetensors file, as the hub serves it."""
        hub = hub_endpoint()
        owner, name, *file = hub_id.split("/", 2)
        repo, file = f"{owner}/{name}", file[0] if file else ""
        if not file:
            listing = fetching.fetch_bytes(f"{hub}/api/models/{repo}", self.allowed, 4 << 20,
                                           self.settings.fetch_timeout_s)
            try:
                names = [sibling["rfilename"] for sibling in json.loads(listing).get("siblings", [])]
            except (ValueError, TypeError, KeyError, AttributeError):
                raise LoraError(f"the hub's listing of {repo} is not readable") from None
            found = [name for name in names if name.endswith(".safetensors") and "/" not in name]
            if len(found) != 1:
                raise LoraError(f"{repo} holds {len(found)} .safetensors files at its top: name one, as "
                                f"{repo}/<file>.safetensors ({', '.join(found[:8])})")
            file = found[0]
        return f"{hub}/{repo}/resolve/main/{file}"


def baked(settings: Settings) -> dict[str, Path]:
    """The LoRAs baked into the image: LORAS_DIR's <name>.safetensors files."""
    folder = settings.loras_folder
    return {path.stem: path for path in sorted(folder.glob("*.safetensors"))} if folder.is_dir() else {}


def _evict(folder: Path, max_bytes: int, keep: Path) -> None:
    """Remove the least recently used fetched files until the folder holds at most max_bytes (keeping `keep`)."""
    files = sorted(folder.glob("*.safetensors"), key=lambda path: path.stat().st_mtime)
    total = sum(path.stat().st_size for path in files)
    for path in files:
        if total <= max_bytes:
            break
        if path != keep:
            total -= path.stat().st_size
            path.unlink(missing_ok=True)


def _loadable(pipe) -> list[str]:
    return [name for name in type(pipe)._lora_loadable_modules if getattr(pipe, name, None) is not None]


def host_copy(tensor: torch.Tensor) -> torch.Tensor:
    """A copy in host memory; page-locked where there is a GPU, so that copying it to the GPU neither waits for the
    work queued there (a copy from pageable memory synchronises the stream first) nor stages it twice."""
    if not torch.cuda.is_available():
        return tensor.to("cpu", copy=True)
    return torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True).copy_(tensor)


def _hollow_pipeline(pipe):
    """The pipeline's class around copies of its LoRA-loadable models whose every weight is one number repeated
    (stride 0): shapes and module names as the model's, no memory. Only the LoRA layers diffusers adds are real."""
    import diffusers

    hollow = {}
    for name in _loadable(pipe):
        model = getattr(pipe, name)
        with torch.device("meta"):
            copy = (type(model).from_config(model.config) if isinstance(model, diffusers.ModelMixin)
                    else type(model)(model.config))
        for module in copy.modules():
            for key, tensor in module._parameters.items():
                if tensor is not None:
                    module._parameters[key] = torch.nn.Parameter(_hollow(tensor), requires_grad=False)
            for key, tensor in module._buffers.items():
                if tensor is not None:
                    module._buffers[key] = _hollow(tensor)
        hollow[name] = copy
    with _quiet():
        return type(pipe)(**{**pipe.components, **hollow})


def _hollow(tensor: torch.Tensor) -> torch.Tensor:
    return torch.zeros((), dtype=tensor.dtype).expand(tensor.shape)


class _quiet:
    """diffusers' and PEFT's warnings while a LoRA loads (key lists, safety-checker notices) stay out of the log."""

    def __enter__(self):
        self.warnings = warnings.catch_warnings()
        self.warnings.__enter__()
        warnings.simplefilter("ignore")
        self.levels = {name: logging.getLogger(name).level for name in ("diffusers", "peft", "transformers")}
        for name in self.levels:
            logging.getLogger(name).setLevel(logging.ERROR)

    def __exit__(self, *exc):
        for name, level in self.levels.items():
            logging.getLogger(name).setLevel(level)
        self.warnings.__exit__(*exc)


def _first_line(error: Exception) -> str:
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return text[:300]
