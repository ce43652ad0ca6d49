"""What reaches a model: every call of a module (the denoiser, a ControlNet, the VAE's decoder), its arguments by
name and what it returned, kept as float32 copies on the CPU.

For the tests that an input reaches the pipeline. They assert the mechanism (the residuals a control image makes,
the embeddings a prompt weight changes, the timesteps a scheduler gives), not that pixels moved: with random tiny
weights a real change can move the image by less than a level in float32, and bf16 rounding moves it by more than
that for any change at all.
"""

import inspect

import torch


class Calls:
    """`with Calls(model.pipe.unet) as unet: ...`, then unet.calls[i]["encoder_hidden_states"], unet.outputs[i]."""

    def __init__(self, module: torch.nn.Module):
        self.module = module
        self.signature = inspect.signature(type(module).forward)
        self.calls: list[dict] = []
        self.outputs: list = []
        self._handles: list = []

    def __enter__(self) -> "Calls":
        self._handles = [self.module.register_forward_pre_hook(self._called, with_kwargs=True),
                         self.module.register_forward_hook(self._returned)]
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()

    def _called(self, module, args, kwargs) -> None:
        bound = self.signature.bind(module, *args, **kwargs)
        self.calls.append({name: kept(value) for name, value in bound.arguments.items() if name != "self"})

    def _returned(self, module, args, output) -> None:
        self.outputs.append(kept(output))

    def first(self, name: str):
        return self.calls[0][name]

    def each(self, name: str) -> list:
        return [call[name] for call in self.calls]


def kept(value):
    """Tensors as float32 CPU copies (the model's own may be overwritten or freed), through lists, tuples, dicts."""
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", torch.float32, copy=True)
    if isinstance(value, (list, tuple)):
        return type(value)(kept(item) for item in value) if not hasattr(value, "_fields") else value
    if isinstance(value, dict):
        return {key: kept(item) for key, item in value.items()}
    return value


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    """How far apart two tensors are, as a fraction of the larger's size (0: equal, about 1.4: unrelated noise)."""
    return float((a - b).norm() / max(a.norm(), b.norm(), torch.tensor(1e-12)))


def per_token(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """relative() of each token's embedding ([batch, tokens, width] -> [batch, tokens])."""
    return (a - b).norm(dim=-1) / torch.maximum(a.norm(dim=-1), b.norm(dim=-1)).clamp_min(1e-12)
