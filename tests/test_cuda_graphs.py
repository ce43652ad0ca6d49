"""The CUDA-graph wrapper's bookkeeping, on the CPU; its capture and replay are checked on a GPU by bench/gpu.py
(the image with graphs must equal the image without, bit for bit: BENCHMARKS.md)."""

from collections import namedtuple

import torch

from serverless_sd.cuda_graphs import CudaGraphed, _flatten, _map


def test_flatten_and_rebuild_nested_arguments():
    tree = ((torch.ones(2), 3), {"a": None, "b": {"c": torch.zeros(1)}, "d": [1.5, "x"]})
    leaves, rebuild = _flatten(tree)
    assert [type(x).__name__ for x in leaves] == ["Tensor", "int", "NoneType", "Tensor", "float", "str"]
    rebuilt = rebuild([x * 2 if isinstance(x, torch.Tensor) else x for x in leaves])
    assert torch.equal(rebuilt[0][0], torch.full((2,), 2.0)) and rebuilt[1]["d"] == [1.5, "x"]


def test_outputs_are_copied_whatever_their_container():
    Output = namedtuple("Output", "sample")
    output = (torch.ones(2), Output(torch.zeros(1)))
    copied = _map(lambda t: t.clone(), output)
    assert copied[0] is not output[0] and isinstance(copied[1], Output) and copied[1].sample is not output[1].sample


def test_first_sight_of_a_shape_runs_eagerly():
    calls = []
    graphed = CudaGraphed(lambda x, scale=1: calls.append(x.shape) or x * scale)
    assert torch.equal(graphed(torch.ones(3), scale=2), torch.full((3,), 2.0))
    assert calls == [torch.Size([3])] and not graphed.graphs
