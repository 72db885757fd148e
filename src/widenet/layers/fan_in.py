"""Merging branches: sum, product and concatenation of the branches of a FanOut."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .._engine import Flow, Tile
from .._validate import check_int
from ..errors import LayerOrderError, ParameterError, ShapeError
from .base import Build, Layer, Shape, Spec

__all__ = ["FanInSum", "FanInProd", "FanInConcat", "FanInModule"]


def _merge_covs(out: Tile, w: Tile, op) -> None:
    """``out.cov = op(out.cov, w.cov)`` for both sides (once when they are one tensor)."""
    out.set_covs(lambda c: op(c, w.cov1), lambda c: op(c, w.cov2))


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

    def _twin(self, spec: Spec, build: Build) -> tuple[nn.Module, Spec]:
        specs = list(self._branches(spec))
        return FanInModule(self._mode, getattr(self, "axis", 1)), self._merge_spec(specs)

    def _merge_spec(self, specs: list) -> Spec:
        self._equal_widths([s.features for s in specs])
        known = [s for s in specs if s.features is not None]
        return known[0] if known else specs[0]


@dataclass(frozen=True)
class FanInSum(_FanIn):
    """Sums the branches. Kernels add (independent branches): ``K = sum K_i``, ``Theta = sum Theta_i``.

    Example:

        >>> block = wn.Serial(wn.FanOut(2), wn.Parallel(wn.Identity(), wn.Dense(64)), wn.FanInSum())
    """

    _mode = "sum"

    def _rule(self, flow: Flow) -> Flow:
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
    ``K = prod K_i`` and ``Theta = sum_i Theta_i prod_{j != i} K_j`` (product rule).

    Example:

        >>> gated = wn.Serial(wn.FanOut(2), wn.Parallel(wn.Dense(64), wn.Dense(64)), wn.FanInProd())
    """

    _mode = "prod"

    def _rule(self, flow: Flow) -> Flow:
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

    Example:

        >>> wide = wn.Serial(wn.FanOut(2), wn.Parallel(wn.Dense(32), wn.Dense(96)), wn.FanInConcat())
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

    def _rule(self, flow: Flow) -> Flow:
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
            _merge_covs(out, w, lambda a, b, share=share: a + b * share)
        out.width = total
        # Each feature comes from one branch: the features are a mixture, not one Gaussian
        # with the averaged kernel, so a nonlinearity may not follow directly (an affine
        # layer, which mixes the features, makes them Gaussian again).
        out.is_gaussian = len(ws) == 1 and out.is_gaussian
        return out

    def _merge_spec(self, specs: list) -> Spec:
        features = None if any(s.features is None for s in specs) else sum(s.features for s in specs)
        return Shape(features, specs[0].ndim)


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
