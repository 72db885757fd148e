"""Combinators: layers made of layers (Serial, Parallel, FanOut, FanIn*, Repeat)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch
from torch import nn

from .._validate import check_int
from ..errors import LayerOrderError, ParameterError, ShapeError
from ..kernel import Work
from ._base import Flow, Layer, Spec
from ._modules import FanInModule, FanOutModule, ParallelModule, SerialModule

__all__ = ["Serial", "Parallel", "FanOut", "FanInSum", "FanInProd", "FanInConcat", "Repeat"]


def _check_layers(owner: str, layers: tuple) -> tuple:
    if not layers:
        raise ParameterError(f"{owner}: layers must hold at least one layer (got none)")
    for i, layer in enumerate(layers):
        if not isinstance(layer, Layer):
            raise ParameterError(
                f"{owner}: layers must be widenet layers (got {type(layer).__name__} at position {i})"
            )
    return tuple(layers)


def _merge_covs(out: Work, w: Work, op) -> None:
    """``out.cov = op(out.cov, w.cov)`` for both sides (once when they are one tensor)."""
    out.set_covs(lambda c: op(c, w.cov1), lambda c: op(c, w.cov2))


@dataclass(frozen=True, init=False)
class Serial(Layer):
    """Applies ``layers`` one after another: ``Serial(a, b, c)(x) = c(b(a(x)))``."""

    layers: tuple

    def __init__(self, *layers: Layer) -> None:
        object.__setattr__(self, "layers", _check_layers("Serial", layers))

    def _needs_full(self) -> bool:
        return any(layer._needs_full() for layer in self.layers)

    def _apply(self, flow: Flow) -> Flow:
        for layer in self.layers:
            flow = layer._apply(flow)
            for w in flow if isinstance(flow, tuple) else (flow,):
                w.remask()
        return flow

    def _build(self, spec: Spec, seeds: Iterator[int], factory: dict) -> tuple[nn.Module, Spec]:
        modules = []
        for layer in self.layers:
            module, spec = layer._build(spec, seeds, factory)
            modules.append(module)
        return SerialModule(*modules), spec


@dataclass(frozen=True, init=False)
class Parallel(Layer):
    """Applies the i-th layer to the i-th branch of a tuple (e.g. after :class:`FanOut`)."""

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

    def _apply(self, flow: Flow) -> Flow:
        branches = flow if isinstance(flow, tuple) else (flow,)
        self._branches(len(branches))
        return tuple(layer._apply(b) for layer, b in zip(self.layers, branches))

    def _build(self, spec: Spec, seeds: Iterator[int], factory: dict) -> tuple[nn.Module, Spec]:
        specs = spec if isinstance(spec, tuple) else (spec,)
        self._branches(len(specs))
        built = [layer._build(s, seeds, factory) for layer, s in zip(self.layers, specs)]
        return ParallelModule([m for m, _ in built]), tuple(s for _, s in built)


@dataclass(frozen=True)
class FanOut(Layer):
    """Copies one branch into ``num`` identical branches."""

    num: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "num", check_int("FanOut", "num", self.num, minimum=1))

    def _apply(self, flow: Flow) -> Flow:
        w = self._single(flow)
        return (w,) + tuple(w.copy() for _ in range(self.num - 1))

    def _build(self, spec: Spec, seeds: Iterator[int], factory: dict) -> tuple[nn.Module, Spec]:
        return FanOutModule(self.num), (self._single_spec(spec),) * self.num


class _FanIn(Layer):
    _mode = ""

    def _branches(self, flow: Flow) -> tuple:
        if not isinstance(flow, tuple):
            raise LayerOrderError(
                f"{self._name}: expected a tuple of branches (from FanOut or Parallel) but "
                f"received a single one"
            )
        return flow

    def _equal_widths(self, widths: list) -> None:
        known = [w for w in widths if w is not None]
        if len(set(known)) > 1:
            raise ShapeError(
                f"{self._name}: branches must have equal widths (got {', '.join(map(str, widths))})"
            )

    def _build(self, spec: Spec, seeds: Iterator[int], factory: dict) -> tuple[nn.Module, Spec]:
        specs = list(self._branches(spec))
        return FanInModule(self._mode, getattr(self, "axis", 1)), self._merge_spec(specs)

    def _merge_spec(self, specs: list) -> Spec:
        self._equal_widths(specs)
        known = [s for s in specs if s is not None]
        return known[0] if known else None


@dataclass(frozen=True)
class FanInSum(_FanIn):
    """Sums the branches. Kernels add (independent branches): ``K = sum K_i``, ``Theta = sum Theta_i``."""

    _mode = "sum"

    def _apply(self, flow: Flow) -> Flow:
        ws = self._branches(flow)
        self._equal_widths([w.width for w in ws])
        out = ws[0]
        for w in ws[1:]:
            if out.nngp is not None:
                out.nngp.add_(w.nngp)
                if out.ntk is not None:
                    out.ntk.add_(w.ntk)
            _merge_covs(out, w, torch.add)
        out.is_gaussian = all(w.is_gaussian for w in ws)
        return out


@dataclass(frozen=True)
class FanInProd(_FanIn):
    """Multiplies the branches elementwise. For independent branches
    ``K = prod K_i`` and ``Theta = sum_i Theta_i prod_{j != i} K_j`` (product rule)."""

    _mode = "prod"

    def _apply(self, flow: Flow) -> Flow:
        ws = self._branches(flow)
        self._equal_widths([w.width for w in ws])
        out = ws[0]
        if out.nngp is not None and out.ntk is not None:
            ntk = None
            for i, wi in enumerate(ws):
                term = wi.ntk
                for j, wj in enumerate(ws):
                    if j != i:
                        term = term * wj.nngp
                ntk = term if ntk is None else ntk.add_(term)
            out.ntk.copy_(ntk)
        for w in ws[1:]:
            if out.nngp is not None:
                out.nngp.mul_(w.nngp)
            _merge_covs(out, w, torch.mul)
        out.is_gaussian = len(ws) == 1 and out.is_gaussian
        return out


@dataclass(frozen=True)
class FanInConcat(_FanIn):
    """Concatenates the branches along the feature axis (``axis=1``, PyTorch's channel axis).

    Kernels average with weights proportional to the branch widths:
    ``K = sum_i (n_i / n) K_i``, the same for ``Theta``; the width becomes ``n = sum n_i``.
    The result is not Gaussian (features follow different laws): put an affine layer after it
    before any nonlinearity.
    """

    axis: int = 1
    _mode = "concat"

    def __post_init__(self) -> None:
        axis = check_int("FanInConcat", "axis", self.axis)
        if axis not in (1, -1):
            raise ParameterError(
                f"FanInConcat: axis must be 1 or -1, the feature axis of (N, features) inputs "
                f"(got {axis})"
            )

    def _apply(self, flow: Flow) -> Flow:
        ws = self._branches(flow)
        total = sum(w.width for w in ws)
        out = ws[0]
        first = out.width / total
        if out.nngp is not None:
            out.nngp.mul_(first)
            if out.ntk is not None:
                out.ntk.mul_(first)
        out.set_covs(lambda c: c * first)
        for w in ws[1:]:
            share = w.width / total
            if out.nngp is not None:
                out.nngp.add_(w.nngp, alpha=share)
                if out.ntk is not None:
                    out.ntk.add_(w.ntk, alpha=share)
            _merge_covs(out, w, lambda a, b: a + b * share)
        out.width = total
        # Each feature comes from one branch: the features are a mixture, not one Gaussian
        # with the averaged kernel, so a nonlinearity may not follow directly (an affine
        # layer, which mixes the features, makes them Gaussian again).
        out.is_gaussian = len(ws) == 1 and out.is_gaussian
        return out

    def _merge_spec(self, specs: list) -> Spec:
        return None if any(s is None for s in specs) else sum(specs)


@dataclass(frozen=True)
class Repeat(Layer):
    """``layer`` applied ``n`` times in series; each copy gets its own parameters."""

    layer: Layer
    n: int

    def __post_init__(self) -> None:
        if not isinstance(self.layer, Layer):
            raise ParameterError(f"Repeat: layer must be a widenet layer (got {type(self.layer).__name__})")
        object.__setattr__(self, "n", check_int("Repeat", "n", self.n, minimum=1))

    def _needs_full(self) -> bool:
        return self.layer._needs_full()

    def _apply(self, flow: Flow) -> Flow:
        for _ in range(self.n):
            flow = self.layer._apply(flow)
        return flow

    def _build(self, spec: Spec, seeds: Iterator[int], factory: dict) -> tuple[nn.Module, Spec]:
        return Serial(*([self.layer] * self.n))._build(spec, seeds, factory)
