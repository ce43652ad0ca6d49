"""The CUDA-graph wrapper's bookkeeping, on the CPU; its capture and replay are checked on a GPU by bench/gpu.py
(the image with graphs must equal the image without, bit for bit: BENCHMARKS.md)."""

import io
from collections import namedtuple

import pytest
import torch

from serverless_sd import cuda_graphs, logs
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


class FakeGraph:
    """Stands in for torch.cuda.CUDAGraph on the CPU: replay runs the forward on the static inputs."""

    def __init__(self, forward, static_args):
        self.forward, self.static_args, self.output, self.released = forward, static_args, None, False

    def replay(self):
        self.output.copy_(self.forward(*self.static_args))

    def reset(self):
        self.released = True


class CpuGraphed(CudaGraphed):
    """The wrapper's bookkeeping as it is, with the capture done by FakeGraph."""

    def _capture(self, leaves, rebuild):
        static_leaves = [t.clone() if isinstance(t, torch.Tensor) else t for t in leaves]
        static_args, _ = rebuild(static_leaves)
        graph = FakeGraph(self.forward, static_args)
        graph.output = self.forward(*static_args)
        return graph, [t for t in static_leaves if isinstance(t, torch.Tensor)], graph.output


def unet(sample, timestep):
    return sample * 2 + timestep.float()


def test_one_graph_serves_integer_and_float_timesteps_with_the_same_numbers():
    graphed = CpuGraphed(unet)
    sample = torch.ones(1, 4, 8, 8)
    for timestep in (torch.tensor(999), torch.tensor(999.0), torch.tensor(981), torch.tensor(979.5)):
        assert torch.equal(graphed(sample, timestep), unet(sample, timestep))
    assert len(graphed.graphs) == 1  # int64 (DDIM, PNDM) and float32 (Euler) timesteps: one slot


@pytest.fixture
def log(monkeypatch) -> io.StringIO:
    stream = io.StringIO()
    monkeypatch.setattr(logs, "_stream", stream)
    return stream


def test_past_the_limit_the_least_recently_used_graph_is_released_and_logged(log):
    graphed = CpuGraphed(unet, max_graphs=2)
    t = torch.tensor(1.0)
    shapes = [torch.ones(1, 4, side, side) for side in (8, 16, 24)]
    for sample in (shapes[0], shapes[0], shapes[1], shapes[1], shapes[0]):  # 8 and 16 captured, 8 used last
        graphed(sample, t)
    oldest = graphed.graphs[next(iter(graphed.graphs))][0]
    graphed(shapes[2], t)
    assert torch.equal(graphed(shapes[2], t), unet(shapes[2], t))  # 24 takes 16's place
    assert [key[2][0] for key in graphed.graphs] == [(1, 4, 8, 8), (1, 4, 24, 24)] and oldest.released
    assert '"event": "cuda_graph_evicted"' in log.getvalue()
    assert cuda_graphs.status()["captured"] >= 2


def test_a_failed_capture_runs_eagerly_from_then_on(log):
    class Failing(CpuGraphed):
        def _capture(self, leaves, rebuild):
            raise RuntimeError("operation not permitted when stream is capturing")

    graphed = Failing(unet)
    sample, t = torch.ones(1, 4, 8, 8), torch.tensor(3)
    assert all(torch.equal(graphed(sample, t), unet(sample, t)) for _ in range(3))
    assert not graphed.graphs and '"event": "cuda_graph_skipped"' in log.getvalue()


class OutOfMemory(CpuGraphed):
    """Its next `fails` captures run out of GPU memory."""

    fails = 0

    def _capture(self, leaves, rebuild):
        if self.fails:
            self.fails -= 1
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return super()._capture(leaves, rebuild)


def sizes(graphed: CudaGraphed) -> list[int]:
    return [key[2][0][-1] for key in graphed.graphs]


def test_at_the_limit_a_graph_is_released_only_once_the_new_one_is_captured(log):
    graphed = OutOfMemory(unet, max_graphs=2)
    t, shapes = torch.tensor(1.0), {side: torch.ones(1, 4, side, side) for side in (8, 16, 24)}
    for side in (8, 8, 16, 16):
        graphed(shapes[side], t)
    graphed.fails = 1  # 24's capture runs out once: 8's graph (the least recently used) is released, then it fits
    for _ in range(2):
        assert torch.equal(graphed(shapes[24], t), unet(shapes[24], t))
    assert sizes(graphed) == [16, 24] and not graphed.eager and not graphed.no_room
    assert '"retry": true' in log.getvalue() and log.getvalue().count('"cuda_graph_evicted"') == 1


def test_a_shape_that_does_not_fit_runs_eager_and_is_tried_again_later(log):
    graphed = OutOfMemory(unet, max_graphs=4)
    t, small, large = torch.tensor(1.0), torch.ones(1, 4, 8, 8), torch.ones(1, 4, 64, 64)
    graphed(small, t), graphed(small, t)
    graphed.fails = 2
    for _ in range(1 + cuda_graphs.RETRY_AFTER):  # out of memory twice at its first capture, then left alone
        assert torch.equal(graphed(large, t), unet(large, t))
    assert graphed.fails == 0 and sizes(graphed) == [] and not graphed.eager
    graphed(large, t)  # the next try, memory back: captured
    assert sizes(graphed) == [64] and not graphed.no_room
    assert '"retry": false' in log.getvalue()


def test_a_capture_at_the_limit_that_does_not_fit_keeps_the_graphs_past_the_one_released_for_it(log):
    graphed = OutOfMemory(unet, max_graphs=2)
    t, shapes = torch.tensor(1.0), {side: torch.ones(1, 4, side, side) for side in (8, 16, 24)}
    for side in (8, 8, 16, 16):
        graphed(shapes[side], t)
    graphed.fails = 2
    graphed(shapes[24], t), graphed(shapes[24], t)
    assert sizes(graphed) == [16] and graphed.no_room  # 8's went to make room; 16's stays; 24 runs eager for now
