"""Combinators: layers made of layers (Serial, Parallel, FanOut, Repeat), and their twins."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from .._engine import Flow
from .._validate import check_int
from ..errors import LayerOrderError, ParameterError, ShapeError
from ._masks import masking, zero_padding
from .aggregate import graph_patterns
from .base import Build, Layer, Spec

__all__ = ["Serial", "Parallel", "FanOut", "Repeat", "SerialModule", "ParallelModule", "FanOutModule"]


def _check_layers(owner: str, layers: tuple) -> tuple:
    if not layers:
        raise ParameterError(f"{owner}: layers must hold at least one layer (got none)")
    for i, layer in enumerate(layers):
        if not isinstance(layer, Layer):
            raise ParameterError(
                f"{owner}: layers must be widenet layers (got {type(layer).__name__} at position {i})"
            )
    return tuple(layers)


@dataclass(frozen=True, init=False)
class Serial(Layer):
    """Applies ``layers`` one after another: ``Serial(a, b, c)(x) = c(b(a(x)))``.

    Consecutive nonlinearities (``wn.Relu(), wn.Erf()``), also across nested ``Serial``s, are
    one elementwise function of their Gaussian input: the kernel is that of their ``Chain``
    (exact; see ``widenet.layers.chain``), the twin applies them one by one.

    Example:

        >>> net = wn.Serial(wn.Dense(512), wn.Relu(), wn.Dense(1))   # also wn.Dense(512) >> wn.Relu()
    """

    layers: tuple

    def __init__(self, *layers: Layer) -> None:
        object.__setattr__(self, "layers", _check_layers("Serial", layers))

    def _needs_full(self) -> bool:
        return any(layer._needs_full() for layer in self.layers)

    def _rule(self, flow: Flow) -> Flow:
        from .chain import merge_runs

        for layer in merge_runs(self.layers):
            flow = layer._rule(flow)
            for w in flow if isinstance(flow, tuple) else (flow,):
                w.remask()
        return flow

    def _twin(self, spec: Spec, build: Build) -> tuple[nn.Module, Spec]:
        modules = []
        for layer in self.layers:
            module, spec = layer._twin(spec, build)
            modules.append(module)
        return SerialModule(*modules), spec


@dataclass(frozen=True, init=False)
class Parallel(Layer):
    """Applies the i-th layer to the i-th branch of a tuple (e.g. after ``FanOut``).

    Example:

        >>> residual = wn.Serial(wn.FanOut(2), wn.Parallel(wn.Identity(), wn.Dense(64)), wn.FanInSum())
    """

    layers: tuple

    def __init__(self, *layers: Layer) -> None:
        object.__setattr__(self, "layers", _check_layers("Parallel", layers))

    def _needs_full(self) -> bool:
        return any(layer._needs_full() for layer in self.layers)

    def _branches(self, n: int) -> None:
        if n != len(self.layers):
            raise LayerOrderError(
                f"Parallel: has {len(self.layers)} layers but received {n} branch(es)"
            )

    def _rule(self, flow: Flow) -> Flow:
        branches = flow if isinstance(flow, tuple) else (flow,)
        self._branches(len(branches))
        return tuple(layer._rule(b) for layer, b in zip(self.layers, branches))

    def _twin(self, spec: Spec, build: Build) -> tuple[nn.Module, Spec]:
        specs = spec if isinstance(spec, tuple) else (spec,)
        self._branches(len(specs))
        built = [layer._twin(s, build) for layer, s in zip(self.layers, specs)]
        return ParallelModule([m for m, _ in built]), tuple(s for _, s in built)


@dataclass(frozen=True)
class FanOut(Layer):
    """Copies one branch into ``num`` identical branches.

    Example:

        >>> two = wn.Serial(wn.FanOut(2), wn.Parallel(wn.Relu(), wn.Erf()), wn.FanInSum())
    """

    num: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "num", check_int("FanOut", "num", self.num, minimum=1))

    def _rule(self, flow: Flow) -> Flow:
        w = self._single(flow)
        return (w,) + tuple(w.copy() for _ in range(self.num - 1))

    def _twin(self, spec: Spec, build: Build) -> tuple[nn.Module, Spec]:
        return FanOutModule(self.num), (self._single_spec(spec),) * self.num


@dataclass(frozen=True)
class Repeat(Layer):
    """``layer`` applied ``n`` times in series; each copy gets its own parameters.

    Example:

        >>> deep = wn.Serial(wn.Repeat(wn.Serial(wn.Dense(512), wn.Relu()), 10), wn.Dense(1))
    """

    layer: Layer
    n: int

    def __post_init__(self) -> None:
        if not isinstance(self.layer, Layer):
            raise ParameterError(f"Repeat: layer must be a widenet layer (got {type(self.layer).__name__})")
        object.__setattr__(self, "n", check_int("Repeat", "n", self.n, minimum=1))

    def _needs_full(self) -> bool:
        return self.layer._needs_full()

    def _rule(self, flow: Flow) -> Flow:
        for _ in range(self.n):
            flow = self.layer._rule(flow)
        return flow

    def _twin(self, spec: Spec, build: Build) -> tuple[nn.Module, Spec]:
        return Serial(*([self.layer] * self.n))._twin(spec, build)


class SerialModule(nn.Sequential):
    """Applies its children in order; children may pass tuples of tensors between them.

    ``forward(x, mask=None, pattern=None)``: ``mask`` (boolean ``(N, *S)``, True at padded
    positions) runs the network on variable-length inputs: padded positions are zero after
    every layer and left out of attention, global pooling and LayerNorm, as in the kernels'
    masks. ``pattern``: the inputs' graphs, read by every ``Aggregate`` inside (the formats
    of ``widenet.Aggregate``).
    """

    def forward(self, x, mask: Optional[torch.Tensor] = None, pattern=None):
        with masking(x, mask, "SerialModule"), graph_patterns(pattern):
            x = zero_padding(x)
            for module in self:
                x = zero_padding(module(x))
        return x


class ParallelModule(nn.ModuleList):
    """Applies the i-th child to the i-th element of a tuple of inputs."""

    def forward(self, xs):
        if not isinstance(xs, (tuple, list)) or len(xs) != len(self):
            got = len(xs) if isinstance(xs, (tuple, list)) else 1
            raise ShapeError(f"Parallel: expected a tuple of {len(self)} inputs (got {got})")
        return tuple(module(x) for module, x in zip(self, xs))


class FanOutModule(nn.Module):
    """Copies its input into ``num`` branches (a tuple)."""

    def __init__(self, num: int) -> None:
        super().__init__()
        self.num = num

    def forward(self, x: torch.Tensor):
        return (x,) * self.num

    def extra_repr(self) -> str:
        return f"num={self.num}"
