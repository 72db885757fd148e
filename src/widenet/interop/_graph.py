"""Networks whose layers form a directed acyclic graph, as ``torch.fx`` traces them.

``Graph`` holds its layers in topological order, each with the indices of the values it
takes (0 is the network's input, ``i`` the output of layer ``i``). A layer that takes
several values receives them as a tuple of branches, so ``FanInSum`` and ``FanInConcat``
merge them as after ``FanOut``; a value that later layers still need is handed on as a copy
(``Tile.copy``), as ``FanOut`` does. ``Scale`` multiplies by a constant (``x * c`` in a
model's ``forward``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .._engine import Flow
from .._validate import check_float
from ..errors import ShapeError
from ..layers.base import Build, Layer, Spec

__all__ = ["Graph", "GraphModule", "Scale", "ScaleModule", "ElementwiseAffine", "ElementwiseAffineModule"]


@dataclass(frozen=True)
class Graph(Layer):
    """Layers on a directed acyclic graph: ``layers[i]`` takes the values ``inputs[i]``
    (indices: 0 the network's input, ``j >= 1`` the output of ``layers[j - 1]``); the last
    layer's output is the network's."""

    layers: tuple
    inputs: tuple

    def _needs_full(self) -> bool:
        return any(layer._needs_full() for layer in self.layers)

    def _uses(self) -> list[int]:
        uses = [0] * (len(self.layers) + 1)
        for args in self.inputs:
            for a in args:
                uses[a] += 1
        return uses

    def _rule(self, flow: Flow) -> Flow:
        uses = self._uses()
        values: dict[int, Any] = {0: flow}
        for i, (layer, args) in enumerate(zip(self.layers, self.inputs), start=1):
            taken = []
            for a in args:
                uses[a] -= 1
                taken.append(values.pop(a) if uses[a] == 0 else values[a].copy())
            out = layer._rule(taken[0] if len(taken) == 1 else tuple(taken))
            for w in out if isinstance(out, tuple) else (out,):
                w.remask()
            values[i] = out
        return values[len(self.layers)]

    def _twin(self, spec: Spec, build: Build) -> tuple[nn.Module, Spec]:
        specs = {0: spec}
        modules = []
        for i, (layer, args) in enumerate(zip(self.layers, self.inputs), start=1):
            given = [specs[a] for a in args]
            module, specs[i] = layer._twin(given[0] if len(given) == 1 else tuple(given), build)
            modules.append(module)
        return GraphModule(modules, self.inputs), specs[len(self.layers)]


class GraphModule(nn.Module):
    """``Graph``'s twin: its layers' twins evaluated on the same graph."""

    def __init__(self, modules: list, inputs: tuple) -> None:
        super().__init__()
        self.nodes = nn.ModuleList(modules)
        self.inputs = inputs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        values = [x]
        for module, args in zip(self.nodes, self.inputs):
            taken = [values[a] for a in args]
            values.append(module(taken[0] if len(taken) == 1 else tuple(taken)))
        return values[-1]


@dataclass(frozen=True)
class Scale(Layer):
    """Multiplies by a constant ``c``: kernels, NTK and own covariances by ``c^2``."""

    c: float

    def __post_init__(self) -> None:
        object.__setattr__(self, "c", check_float("Scale", "c", self.c, tensor=True))

    def _rule(self, flow: Flow) -> Flow:
        w = self._single(flow)
        c2 = self.c**2
        w.map_tiles(lambda t: t * c2)
        w.set_covs(lambda c: c * c2)
        return w

    def _twin(self, spec: Spec, build: Build) -> tuple[nn.Module, Spec]:
        return ScaleModule(self.c), self._single_spec(spec)


class ScaleModule(nn.Module):
    def __init__(self, c) -> None:
        super().__init__()
        self.c = c

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.c

    def extra_repr(self) -> str:
        return f"c={self.c}"


@dataclass(frozen=True)
class ElementwiseAffine(Layer):
    """``y = gamma * x + beta`` per feature with trainable ``gamma`` initialized to 1 and
    ``beta`` to 0 (``nn.LayerNorm``'s ``elementwise_affine``): at initialization the identity,
    so the NNGP is unchanged; the NTK gains the parameters' own terms, ``K + 1`` (``K`` for
    ``gamma``, 1 for ``beta``). Features only: ``(N, C)``."""

    bias: bool = True

    def _rule(self, flow: Flow) -> Flow:
        w = self._single(flow)
        if w.spatial:
            raise ShapeError("ElementwiseAffine: features (N, C) only (per-position parameters would "
                             "add their terms to each position's own pairs)")
        if w.nngp is not None and w.ntk is not None:
            w.ntk = w.ntk + w.nngp + (1.0 if self.bias else 0.0)
        return w

    def _twin(self, spec: Spec, build: Build) -> tuple[nn.Module, Spec]:
        spec = self._single_spec(spec)
        return ElementwiseAffineModule(spec.features, self.bias, build.dtype), spec


class ElementwiseAffineModule(nn.Module):
    def __init__(self, features, bias: bool, dtype=None) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(features, dtype=dtype or torch.get_default_dtype()))
        self.bias = nn.Parameter(torch.zeros_like(self.weight)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x * self.weight
        return y if self.bias is None else y + self.bias
