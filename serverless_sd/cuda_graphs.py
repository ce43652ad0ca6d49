"""Replay the UNet from CUDA graphs: the same kernels on the same numbers, without the CPU launching them one by one.

At 512x512 on an H100-class GPU, Stable Diffusion's UNet step is bound by kernel launches, not arithmetic; a graph
replays a whole step with one launch. Each input shape (size, batch) gets its own graph, captured the second time
it is seen. At most `max_graphs` are kept: past that, the least recently used one is released to make room, and said
in the log. Every graph is captured into one memory pool: a graph's working memory is scratch that the next capture
may reuse, which is safe because replays never overlap (one request at a time, on one thread), each graph's inputs
are copied in just before its replay and its output copied out just after. So the graphs together hold about what
the largest needs plus their outputs, not the sum of their working memories (about 2 GiB each for SD 1.5 at
1024x1024, 8 images), and a released graph's memory goes to the next capture. An integer timestep (DDIM's, PNDM's)
is given to the graph as float32, as the UNet's time embedding reads it anyway, so that one graph serves every
scheduler family at a size.

A capture that runs out of memory evicts nothing good for nothing: graphs are released only once a new one exists,
or to make room for a capture that ran out (then tried once more); a shape that still does not fit runs eager, and
its capture is tried again after RETRY_AFTER more calls (about a request's steps), when memory may have come back.
A capture that fails otherwise (a model that syncs with the CPU mid-step) runs eager for good.
"""

import weakref
from collections import OrderedDict
from typing import Any, Callable

import torch

from . import logs

_INSTANCES: "weakref.WeakSet[CudaGraphed]" = weakref.WeakSet()
RETRY_AFTER = 64
_POOL: list = []  # the one memory pool of every capture, made at the first


def _pool():
    if not _POOL:
        _POOL.append(torch.cuda.graph_pool_handle())
    return _POOL[0]


def status() -> dict[str, int]:
    """For the app's /healthz: graphs held now, and the most that may be."""
    return {"captured": sum(len(g.graphs) for g in _INSTANCES), "max": sum(g.max_graphs for g in _INSTANCES)}


class CudaGraphed:
    def __init__(self, forward: Callable, max_graphs: int = 4):
        self.forward = forward
        self.max_graphs = max_graphs
        self.seen: set[tuple] = set()
        # Most recently used last.
        self.graphs: OrderedDict[tuple, tuple[torch.cuda.CUDAGraph, list[torch.Tensor], Any]] = OrderedDict()
        self.eager: set[tuple] = set()  # shapes whose capture failed for good
        self.no_room: dict[tuple, int] = {}  # shapes out of memory at their capture: calls until the next try
        _INSTANCES.add(self)

    def __call__(self, *args, **kwargs):
        leaves, rebuild, key = inputs_of(args, kwargs)
        if key in self.graphs:
            self.graphs.move_to_end(key)
        elif not self._to_capture(key) or not self._captured(key, leaves, rebuild):
            return self.forward(*args, **kwargs)
        graph, static_inputs, static_output = self.graphs[key]
        for static, value in zip(static_inputs, (t for t in leaves if isinstance(t, torch.Tensor)), strict=True):
            static.copy_(value)
        graph.replay()
        return copied(static_output)

    def _to_capture(self, key: tuple) -> bool:
        """Whether to capture key's graph now: seen before (its first call, eager, lets cuDNN and cuBLAS choose their
        kernels), not failed for good, not out of memory in its last RETRY_AFTER calls."""
        if key not in self.seen:
            self.seen.add(key)
            return False
        if key in self.no_room:
            self.no_room[key] -= 1
            if self.no_room[key] > 0:
                return False
            del self.no_room[key]
        return key not in self.eager

    def _captured(self, key: tuple, leaves: list, rebuild: Callable) -> bool:
        """Capture key's graph, then release the least recently used past max_graphs. False: it runs eager now."""
        for attempt in (1, 2):
            try:
                self.graphs[key] = self._capture(leaves, rebuild)
                break
            except torch.OutOfMemoryError:
                logs.event("cuda_graph_out_of_memory", sample=str(key[2])[:200], held=len(self.graphs),
                           retry=attempt == 1)
                if attempt == 2:
                    self.no_room[key] = RETRY_AFTER
                    return False
                if self.graphs:  # the least recently used graph's memory goes back to the pool the capture draws on
                    self._evict()
                torch.cuda.empty_cache()
            except RuntimeError as error:  # a model that syncs with the CPU mid-step cannot be captured
                logs.event("cuda_graph_skipped", error=str(error)[:300])
                self.eager.add(key)
                return False
        while len(self.graphs) > self.max_graphs:
            self._evict()
        return True

    def _evict(self) -> None:
        evicted, (graph, _, _) = self.graphs.popitem(last=False)
        graph.reset()
        logs.event("cuda_graph_evicted", sample=str(evicted[2])[:200], held=len(self.graphs))

    def _capture(self, leaves: list, rebuild: Callable):
        # A graph reads its inputs from fixed GPU buffers: copies of the first inputs, refilled before each replay.
        static_leaves = [t.to("cuda", copy=True) if isinstance(t, torch.Tensor) else t for t in leaves]
        static_args, static_kwargs = rebuild(static_leaves)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):  # cuDNN and cuBLAS pick and allocate their kernels outside the capture
                self.forward(*static_args, **static_kwargs)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=_pool()):
            static_output = self.forward(*static_args, **static_kwargs)
        return graph, [t for t in static_leaves if isinstance(t, torch.Tensor)], static_output


def inputs_of(args: tuple, kwargs: dict) -> tuple[list, Callable, tuple]:
    """A denoiser's call taken apart: its leaves (an integer timestep as float32), a function that rebuilds the
    call's (args, kwargs) from new leaves, and the key of what a graph or a compiled variant is specialised to (every
    tensor's shape, dtype and device, every other leaf's value, or its type)."""
    leaves, rebuild = _flatten((args, kwargs))
    leaves = [_as_float_timestep(leaf) for leaf in leaves]
    key = (len(args), tuple(kwargs), *(_key_of(leaf) for leaf in leaves))
    return leaves, rebuild, key


def _key_of(leaf):
    if isinstance(leaf, torch.Tensor):
        return tuple(leaf.shape), leaf.dtype, leaf.device
    # A value (return_dict=False), not an object made anew for each request (the VAE decoder's generator).
    return leaf if leaf is None or isinstance(leaf, (bool, int, float, str)) else type(leaf).__name__


def copied(output):
    """Every tensor of an output copied: the next replay overwrites a graph's output, and schedulers such as PNDM
    keep past outputs."""
    return _map(lambda t: t.clone(), output)


def _as_float_timestep(leaf):
    if isinstance(leaf, torch.Tensor) and leaf.ndim <= 1 and not leaf.is_floating_point() and leaf.dtype != torch.bool:
        return leaf.float()
    return leaf


def _flatten(tree) -> tuple[list, Callable]:
    """The leaves of nested tuples, lists and dicts, and a function that rebuilds the tree from new leaves."""
    leaves: list = []

    def walk(node):
        if isinstance(node, (tuple, list)):
            parts = [walk(child) for child in node]
            return lambda it: type(node)(part(it) for part in parts)
        if isinstance(node, dict):
            parts = {k: walk(v) for k, v in node.items()}
            return lambda it: {k: part(it) for k, part in parts.items()}
        leaves.append(node)
        return lambda it: next(it)

    build = walk(tree)
    return leaves, lambda new_leaves: build(iter(new_leaves))


def _map(function: Callable, tree):
    if isinstance(tree, torch.Tensor):
        return function(tree)
    if isinstance(tree, tuple) and hasattr(tree, "_fields"):
        return type(tree)(*(_map(function, x) for x in tree))
    if isinstance(tree, (tuple, list)):
        return type(tree)(_map(function, x) for x in tree)
    if isinstance(tree, dict):
        return type(tree)({k: _map(function, v) for k, v in tree.items()})
    return tree
