"""Finite-width twins of widenet layers: plain ``torch.nn.Module`` objects.

Their random initialization and parameterization are exactly those whose infinite-width
limit the layers' kernel rules compute. Each parametrized module draws its parameters from
its own ``torch.Generator`` seeded from the network seed and the module's position, so a
network is reproducible from one integer whatever order its lazy parts materialize in.
Parameters are drawn in float64 on the CPU and then cast, so one seed gives the same network
in every dtype and on every device (up to rounding).
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn.modules.lazy import LazyModuleMixin
from torch.nn.parameter import UninitializedParameter


def derive_seed(base_seed: int, index: int) -> int:
    """A well-mixed 63-bit seed for the ``index``-th parametrized module of a network."""
    state = np.random.SeedSequence([base_seed & (2**64 - 1), index]).generate_state(2, np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1])) & (2**63 - 1)


def _standard_normal(shape: Sequence[int], generator: torch.Generator) -> torch.Tensor:
    return torch.randn(*shape, generator=generator, dtype=torch.float64)


class DenseModule(LazyModuleMixin, nn.Module):
    """``y = x W^T + b`` on the last axis, like ``nn.Linear``, with widenet's initialization.

    parameterization "ntk": ``W, b ~ N(0, 1)``, ``y = (W_std / sqrt(in)) x W^T + b_std b``.
    parameterization "standard": ``W ~ N(0, W_std^2 / in)``, ``b ~ N(0, b_std^2)``,
    ``y = x W^T + b``. ``b_std=None`` means no bias parameter.
    With ``in_features=None`` the weight materializes on the first call (a lazy module).
    """

    cls_to_become = None

    def __init__(
        self,
        in_features: Optional[int],
        out_features: int,
        W_std: float,
        b_std: Optional[float],
        parameterization: str,
        seed: int,
        dtype: Optional[torch.dtype] = None,
        device: Optional[torch.device] = None,
    ) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.W_std = W_std
        self.b_std = b_std
        self.parameterization = parameterization
        self.seed = seed
        factory = {"dtype": dtype or torch.get_default_dtype(), "device": device}
        if in_features is None:
            self.weight = UninitializedParameter(**factory)
        else:
            self.weight = nn.Parameter(torch.empty(out_features, in_features, **factory))
        self.bias = None if b_std is None else nn.Parameter(torch.empty(out_features, **factory))
        if in_features is not None:
            self.reset_parameters()

    def reset_parameters(self) -> None:
        """Redraws the parameters from this module's seed (the same values every time)."""
        if self.has_uninitialized_params():
            return
        generator = torch.Generator().manual_seed(self.seed)
        weight = _standard_normal(self.weight.shape, generator)
        bias = None if self.bias is None else _standard_normal(self.bias.shape, generator)
        if self.parameterization == "standard":
            weight.mul_(self.W_std / math.sqrt(self.in_features))
            if bias is not None:
                bias.mul_(self.b_std)
        with torch.no_grad():
            self.weight.copy_(weight)
            if bias is not None:
                self.bias.copy_(bias)

    def initialize_parameters(self, input: torch.Tensor) -> None:  # called by LazyModuleMixin
        if self.has_uninitialized_params():
            with torch.no_grad():
                self.in_features = int(input.shape[-1])
                self.weight.materialize((self.out_features, self.in_features))
                self.reset_parameters()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.in_features:
            from ..errors import ShapeError

            raise ShapeError(
                f"DenseModule: input has {x.shape[-1]} features on its last axis but the layer "
                f"was built for {self.in_features} (input shape {tuple(x.shape)})"
            )
        if self.parameterization == "ntk":
            y = torch.nn.functional.linear(x, self.weight) * (self.W_std / math.sqrt(self.in_features))
            if self.bias is not None:
                y = y + self.b_std * self.bias
            return y
        return torch.nn.functional.linear(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"W_std={self.W_std}, b_std={self.b_std}, parameterization={self.parameterization!r}"
        )


class ActivationModule(nn.Module):
    """Applies an elementwise function ``fn`` (a torch callable)."""

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], name: str) -> None:
        super().__init__()
        self.fn = fn
        self.name = name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)

    def extra_repr(self) -> str:
        return self.name


class SerialModule(nn.Sequential):
    """Applies its children in order; children may pass tuples of tensors between them."""


class ParallelModule(nn.ModuleList):
    """Applies the i-th child to the i-th element of a tuple of inputs."""

    def forward(self, xs):
        if not isinstance(xs, (tuple, list)) or len(xs) != len(self):
            from ..errors import ShapeError

            got = len(xs) if isinstance(xs, (tuple, list)) else 1
            raise ShapeError(f"Parallel: expected a tuple of {len(self)} inputs (got {got})")
        return tuple(module(x) for module, x in zip(self, xs))


class FanOutModule(nn.Module):
    def __init__(self, num: int) -> None:
        super().__init__()
        self.num = num

    def forward(self, x: torch.Tensor):
        return (x,) * self.num

    def extra_repr(self) -> str:
        return f"num={self.num}"


class FanInModule(nn.Module):
    """Merges a tuple of branches: ``mode`` is "sum", "prod" or "concat" (along ``axis``)."""

    def __init__(self, mode: str, axis: int = 1) -> None:
        super().__init__()
        self.mode = mode
        self.axis = axis

    def forward(self, xs) -> torch.Tensor:
        if self.mode == "concat":
            return torch.cat(tuple(xs), dim=self.axis)
        out = xs[0]
        for x in xs[1:]:
            out = out + x if self.mode == "sum" else out * x
        return out

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}" + (f", axis={self.axis}" if self.mode == "concat" else "")
