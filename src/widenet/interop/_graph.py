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
from typing import Any, Optional

import torch
from torch import nn

from .._engine import Flow
from .._validate import check_float
from ..errors import LayerOrderError, ShapeError
from .. import layers as L
from ..layers.base import Build, Layer, Spec

__all__ = ["AffineNonlinearity", "StandardAttention", "Graph", "GraphModule", "Scale", "ScaleModule",
           "ElementwiseAffine", "ElementwiseAffineModule", "Layout", "LayoutModule"]


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
    """``y = gamma * x + beta`` with trainable ``gamma`` initialized to 1 and ``beta`` to 0
    (``nn.LayerNorm``'s ``elementwise_affine``): at initialization the identity, so the NNGP
    is unchanged; the NTK gains the parameters' own terms, ``K + 1`` (``K`` for ``gamma``, 1
    for ``beta``) on every pair of positions that shares them. On ``(N, C, *S)`` the
    parameters are per channel and shared by all positions, except along the spatial axes
    ``axes`` (1-based among the spatial axes: ``(1,)`` is axis 2 of ``(N, C, *S)``), which have
    parameters of their own: there only pairs at the same position along those axes gain the
    terms."""

    bias: bool = True
    axes: tuple = ()

    def _rule(self, flow: Flow) -> Flow:
        w = self._single(flow)
        if w.nngp is not None and w.ntk is not None:
            extra = w.nngp + (1.0 if self.bias else 0.0)
            if self.axes and w.is_full:
                extra = extra * self._same_position(w)
            w.ntk = w.ntk + extra
        return w

    def _same_position(self, w) -> torch.Tensor:
        """1 where the two positions of a pair agree along ``axes``, broadcast to the tile."""
        d, lead = len(w.spatial), w.nngp.dim() - 2 * len(w.spatial)
        shape = [1] * w.nngp.dim()
        mask = torch.ones(shape, dtype=w.nngp.dtype, device=w.nngp.device)
        for a in self.axes:
            n = w.spatial[a - 1]
            eye_shape = list(shape)
            eye_shape[lead + a - 1] = eye_shape[lead + d + a - 1] = n
            mask = mask * torch.eye(n, dtype=mask.dtype, device=mask.device).reshape(eye_shape)
        return mask

    def _twin(self, spec: Spec, build: Build) -> tuple[nn.Module, Spec]:
        spec = self._single_spec(spec)
        return ElementwiseAffineModule(spec.features, self.bias, build.dtype, self.axes), spec


class ElementwiseAffineModule(nn.Module):
    """Per-channel ``gamma`` and ``beta`` on axis 1 (lazily sized along the spatial ``axes``
    that have parameters of their own, on the first call)."""

    def __init__(self, features, bias: bool, dtype=None, axes: tuple = ()) -> None:
        super().__init__()
        self.axes, self.has_bias = tuple(axes), bias
        self.dtype = dtype or torch.get_default_dtype()
        self.weight = self.bias = None
        if not self.axes and features is not None:
            self._make((features,))

    def _make(self, shape: tuple) -> None:
        self.weight = nn.Parameter(torch.ones(shape, dtype=self.dtype))
        self.bias = nn.Parameter(torch.zeros_like(self.weight)) if self.has_bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # parameters cover the channels and the spatial ``axes``; the other axes share them
        shape = [x.shape[1]] + [x.shape[1 + a] if a in self.axes else 1 for a in range(1, x.dim() - 1)]
        if self.weight is None:
            self._make(tuple(shape))
        weight = self.weight.reshape(shape)
        y = x * weight
        return y if self.bias is None else y + self.bias.reshape(shape)


@dataclass(frozen=True)
class AffineNonlinearity(Layer):
    """``ElementwiseAffine`` followed by a nonlinearity ``phi``: ``phi(gamma * x + beta)``.

    The NNGP is ``phi``'s. The NTK cannot add ``gamma``'s term before ``phi`` as
    ``ElementwiseAffine`` alone does: ``gamma``'s gradient there is the pre-activation ``u``
    itself, correlated with ``phi'(u)``, so its term after ``phi`` is
    ``E[psi(u) psi(u')]`` with ``psi(u) = u phi'(u)``, not ``E[phi'(u) phi'(u')] K``:

        Theta' = Tdot (Theta + 1) + E[psi(u) psi(u')]

    (``+ 1`` for ``beta``; both terms only on pairs that share the parameters, see
    ``ElementwiseAffine.axes``). ``psi`` of ReLU is ReLU and of LeakyReLU itself (closed forms);
    quadrature of ``u * phi.derivative(u)`` otherwise."""

    nonlinearity: Layer
    bias: bool = True
    axes: tuple = ()

    def _psi(self) -> Layer:
        phi = self.nonlinearity
        if isinstance(phi, (L.Relu, L.LeakyRelu)):
            return phi  # u phi'(u) = phi(u) for positively homogeneous phi
        return L.Elementwise(lambda u: u * phi.derivative(u), degree=192, name="u_times_derivative")

    def _rule(self, flow: Flow) -> Flow:
        w = self._single(flow)
        if w.nngp is None or w.ntk is None:
            return self.nonlinearity._rule(w)
        gamma = w.copy()
        gamma.ntk = None
        gamma = self._psi()._rule(gamma)
        share = ElementwiseAffine(self.bias, self.axes)._same_position(w) if self.axes and w.is_full else 1.0
        if self.bias:
            w.ntk = w.ntk + share
        w = self.nonlinearity._rule(w)
        w.ntk = w.ntk + gamma.nngp * share
        return w

    def _twin(self, spec: Spec, build: Build) -> tuple[nn.Module, Spec]:
        affine, spec = ElementwiseAffine(self.bias, self.axes)._twin(spec, build)
        phi, spec = self.nonlinearity._twin(spec, build)
        return nn.Sequential(affine, phi), spec


@dataclass(frozen=True)
class StandardAttention(Layer):
    """``nn.MultiheadAttention`` as ``attention`` (a ``wn.SelfAttention``), with the NTK terms
    of its own parameters in the standard parameterization (the module's weights and biases
    trained as they are, at embedding width ``E``): with ``Var(W_v) = s_v^2 / E``,
    ``Var(W_o) = s_o^2 / E`` and ``Kbar = G K G^T`` (so ``K' = s_v^2 s_o^2 Kbar + b^2``),

        Theta' = s_v^2 s_o^2 G Theta G^T + E (s_v^2 + s_o^2) Kbar + 1 + s_o^2

    (``W_o``'s term, ``W_v``'s, the output bias's and the value bias's, each softmax row summing
    to 1) in place of ``SelfAttention``'s NTK-parameterization terms ``2 K' - b^2``. The query
    and key parameters add no term in the linear-scaling limit, as in ``SelfAttention``."""

    attention: Layer
    value_bias: bool = True

    def _needs_full(self) -> bool:
        return True

    def _rule(self, flow: Flow) -> Flow:
        a = self.attention
        w = a._rule(flow)
        if w.nngp is None or w.ntk is None:
            return w
        sv2, so2 = a.W_value_std**2, a.W_out_std**2
        b2 = 0.0 if a.b_std is None else a.b_std**2
        scaled = w.nngp - b2  # s_v^2 s_o^2 Kbar
        width_terms = a.out_features * (sv2 + so2) / (sv2 * so2) if sv2 * so2 > 0 else 0.0
        w.ntk = (w.ntk - 2 * scaled - b2 + width_terms * scaled + (0.0 if a.b_std is None else 1.0)
                 + (so2 if self.value_bias else 0.0))
        return w

    def _twin(self, spec: Spec, build: Build) -> tuple[nn.Module, Spec]:
        return self.attention._twin(spec, build)


@dataclass(frozen=True)
class Layout(Layer):
    """A network whose inputs (and outputs) keep their channels on another axis than 1, as a
    model's tokens ``(N, L, C)`` do: kernels permute each input by ``input_order`` to widenet's
    ``(N, C, *S)`` before computing (``x.permute(input_order)``), and the finite twin permutes
    its output back by ``output_order`` (None: as is). Positions keep their order, so masks
    ``(N, *S)`` and the kernels' position axes read as the model's."""

    net: Layer
    input_order: tuple
    output_order: Optional[tuple] = None

    def _rule(self, flow: Flow) -> Flow:
        return self.net._rule(flow)

    def _needs_full(self) -> bool:
        return self.net._needs_full()

    def _order(self, owner: str, name: str, x: Any) -> Any:
        if x is None:
            return None
        x = x if isinstance(x, torch.Tensor) else torch.as_tensor(x)
        if x.dim() != len(self.input_order):
            raise ShapeError(f"{owner}: {name} must have {len(self.input_order)} axes, as the model's input "
                             f"(got shape {tuple(x.shape)})")
        return x.permute(self.input_order)

    def _compute(self, x1: Any, x2: Any, want_ntk: bool, **options):
        owner = f"{self._name}.kernel"
        return self.net._compute(self._order(owner, "x1", x1), self._order(owner, "x2", x2), want_ntk, **options)

    def _twin(self, spec: Spec, build: Build) -> tuple[nn.Module, Spec]:
        raise LayerOrderError("Layout: a whole network's input and output layout; use it outermost "
                              "(its module() builds the twin)")

    def module(self, input_shape=None, **options) -> nn.Module:
        """The twin of ``net`` between permutations: ``input_shape`` in the model's layout."""
        shape = input_shape
        if input_shape is not None:
            given = (input_shape,) if isinstance(input_shape, int) else tuple(input_shape)
            if len(given) != len(self.input_order) - 1:
                raise ShapeError(f"Layout.module: input_shape must have {len(self.input_order) - 1} entries, "
                                 f"one input in the model's layout (got {given})")
            shape = tuple(given[o - 1] for o in self.input_order[1:])
        inner = self.net.module(shape, **options)
        module = LayoutModule(inner, self.input_order, self.output_order)
        module.widenet_layer = self
        return module


class LayoutModule(nn.Module):
    """``Layout``'s twin: ``inner(x.permute(input_order))``, permuted by ``output_order``."""

    def __init__(self, inner: nn.Module, input_order: tuple, output_order: Optional[tuple]) -> None:
        super().__init__()
        self.inner, self.input_order, self.output_order = inner, tuple(input_order), output_order

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.inner(x.permute(self.input_order))
        return y if self.output_order is None else y.permute(self.output_order)
