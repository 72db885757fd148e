"""Pooling and flattening: layers that combine positions.

Average and sum pooling mix positions, so the kernel of their input must hold every pair of
positions (the full layout); widenet switches to it automatically when such a layer is
present. Flatten needs only the spatial diagonal.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator, Optional, Sequence, Union

import torch
from torch import nn

from .. import _exact
from .._validate import check_choice
from ..errors import NoClosedFormError
from ._base import Flow, Layer, Spec
from ._modules import FlattenModule, GlobalPoolModule, PoolModule
from ._spatial import PADDINGS, as_tuple, pads_for, spatial_axes, window_sum
from .conv import _check_size, spatial_of

__all__ = ["AvgPool", "SumPool", "MaxPool", "GlobalAvgPool", "GlobalSumPool", "Flatten"]

Size = Union[int, Sequence[int]]


class _Pool(Layer):
    """Shared rule of AvgPool and SumPool: ``K'(s, s') = c^2 sum_{o, o'} K(s + o, s' + o')``
    with ``c = 1 / prod(window)`` (average, zeros of the padding counted) or ``c = 1`` (sum)."""

    _mode = "avg"
    window: Size
    stride: Optional[Size]
    padding: str

    def _validate(self) -> None:
        set_ = object.__setattr__
        set_(self, "window", _check_size(self._name, "window", self.window))
        if self.stride is not None:
            set_(self, "stride", _check_size(self._name, "stride", self.stride))
        check_choice(self._name, "padding", self.padding, PADDINGS)

    def _needs_full(self) -> bool:
        return True

    def _geometry(self, spatial: tuple[int, ...]):
        d = len(spatial)
        window = as_tuple(self._name, "window", self.window, d)
        stride = window if self.stride is None else as_tuple(self._name, "stride", self.stride, d)
        geo = [pads_for(self._name, n, k, s, 1, self.padding) for n, k, s in zip(spatial, window, stride)]
        return window, stride, [(lo, hi) for lo, hi, _ in geo], tuple(o for _, _, o in geo)

    def _apply(self, flow: Flow) -> Flow:
        w = self._single(flow)
        spatial = spatial_of(self._name, w)
        w.require_unmasked(self._name, "pools windows of positions")
        window, stride, pads, out_spatial = self._geometry(spatial)
        d = len(spatial)
        scale = 1.0 / math.prod(window) ** 2 if self._mode == "avg" else 1.0
        circular = self.padding == "circular"

        def pool(t: torch.Tensor) -> torch.Tensor:
            first, second = spatial_axes(t.ndim, d, True)
            args = (window * 2, stride * 2, (1,) * (2 * d), pads * 2, circular)
            out = window_sum(t, [[a] for a in first + second], *args)
            if _exact.active():
                # The windows of x are summed before those of x'; the kernel of (x', x) would
                # sum them the other way round, to other roundings. Reproducible mode takes
                # the mean of both orders, which is the same for both pairs.
                out.add_(window_sum(t, [[a] for a in second + first], *args)).mul_(0.5)
            return out.mul_(scale) if scale != 1.0 else out

        w.map_tiles(pool)
        w.set_covs(pool)
        w.spatial = out_spatial
        return w

    def _build(self, spec: Spec, seeds: Iterator[int], factory: dict) -> tuple[nn.Module, Spec]:
        d = factory.get("ndim")
        window = self.window if isinstance(self.window, tuple) or d is None else (self.window,) * d
        stride = window if self.stride is None else self.stride
        if d is None and not isinstance(window, tuple):
            return _LazyPool(self._mode, self.window, self.stride, self.padding), self._single_spec(spec)
        d = len(window)
        stride = stride if isinstance(stride, tuple) else (stride,) * d
        return PoolModule(self._mode, window, stride, self.padding), self._single_spec(spec)


class _LazyPool(nn.Module):
    """A pooling module whose spatial dimension is learned from its first input."""

    def __init__(self, mode: str, window, stride, padding: str) -> None:
        super().__init__()
        self.mode, self.window, self.stride, self.padding = mode, window, stride, padding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d = x.ndim - 2
        window = self.window if isinstance(self.window, tuple) else (self.window,) * d
        stride = window if self.stride is None else (
            self.stride if isinstance(self.stride, tuple) else (self.stride,) * d)
        return PoolModule(self.mode, window, stride, self.padding)(x)

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}, window={self.window}, stride={self.stride}, padding={self.padding!r}"


@dataclass(frozen=True)
class AvgPool(_Pool):
    """Average pooling over windows, like ``nn.AvgPool1d/2d/3d`` (``stride`` defaults to the
    window). "same" padding counts the padded zeros in the average (``count_include_pad``);
    "circular" wraps around. Needs the full layout (chosen automatically)."""

    window: Size = 2
    stride: Optional[Size] = None
    padding: str = "valid"
    _mode = "avg"

    def __post_init__(self) -> None:
        self._validate()


@dataclass(frozen=True)
class SumPool(_Pool):
    """Sum over windows (average pooling times the window size); see :class:`AvgPool`."""

    window: Size = 2
    stride: Optional[Size] = None
    padding: str = "valid"
    _mode = "sum"

    def __post_init__(self) -> None:
        self._validate()


@dataclass(frozen=True)
class MaxPool(_Pool):
    """Max pooling, like ``nn.MaxPool1d/2d/3d`` (``stride`` defaults to the window; "same"
    pads with -inf). Its finite-width twin is exact, but the maximum of correlated Gaussians
    has no closed-form kernel: ``kernel()`` raises rather than approximate. Estimate its kernels
    by Monte Carlo over finite networks (``wn.monte_carlo``)."""

    window: Size = 2
    stride: Optional[Size] = None
    padding: str = "valid"
    _mode = "max"

    def __post_init__(self) -> None:
        self._validate()

    def _apply(self, flow: Flow) -> Flow:
        raise NoClosedFormError(
            "MaxPool: the infinite-width kernel of max pooling has no closed form; estimate it "
            "by Monte Carlo over finite networks with wn.monte_carlo(net, x1, x2, n_samples=...)"
        )


class _GlobalPool(Layer):
    _mode = "avg"

    def _needs_full(self) -> bool:
        return True

    def _apply(self, flow: Flow) -> Flow:
        w = self._single(flow)
        spatial = spatial_of(self._name, w)
        n = math.prod(spatial)
        scale = 1.0 / (n * n) if self._mode == "avg" else 1.0

        def pool(t: torch.Tensor) -> torch.Tensor:
            return _exact.pair_sum(t, len(spatial))

        if w.masked and self._mode == "avg":
            # Padded positions hold zeros; the mean is over each input's real positions.
            n1 = w.keep1.reshape(w.keep1.shape[0], -1).sum(1)
            n2 = w.keep2.reshape(w.keep2.shape[0], -1).sum(1)
            if w.nngp is not None:
                counts = n1[:, None] * n2[None, :]
                w.map_tiles(lambda t: pool(t).div_(counts))
            w.set_covs(lambda c: pool(c).div_(n1 * n1), lambda c: pool(c).div_(n2 * n2))
        else:
            w.map_tiles(lambda t: pool(t).mul_(scale))
            w.set_covs(lambda t: pool(t).mul_(scale))
        w.spatial = ()
        w.unmask()
        return w

    def _build(self, spec: Spec, seeds: Iterator[int], factory: dict) -> tuple[nn.Module, Spec]:
        factory["ndim"] = 0
        return GlobalPoolModule(self._mode), self._single_spec(spec)


@dataclass(frozen=True)
class GlobalAvgPool(_GlobalPool):
    """Mean over every spatial position: ``(N, C, *S) -> (N, C)``. Its kernel is the mean of
    the input kernel over all position pairs (full layout, chosen automatically)."""

    _mode = "avg"


@dataclass(frozen=True)
class GlobalSumPool(_GlobalPool):
    """Sum over every spatial position: ``(N, C, *S) -> (N, C)``."""

    _mode = "sum"


@dataclass(frozen=True)
class Flatten(Layer):
    """``(N, C, *S) -> (N, C * prod(S))`` in PyTorch's order (``x.flatten(1)``).

    The next affine layer averages over channels and positions alike, so the kernel becomes
    the mean over positions of the spatial diagonal ``K(s, s)``: only the diagonal layout is
    needed (Novak et al. 2019). The flattened features have position-dependent variances, so
    they are not one Gaussian law: put an affine layer (Dense) after Flatten before any
    nonlinearity.
    """

    def _apply(self, flow: Flow) -> Flow:
        w = self._single(flow)
        if not w.spatial:
            return w
        w.require_unmasked("Flatten", "flattens positions into features, padding included")
        n, full, d = w.npos, w.is_full, len(w.spatial)

        def flat(t: torch.Tensor) -> torch.Tensor:
            lead = t.shape[: t.ndim - (2 * d if full else d)]
            if full:
                return t.reshape(lead + (n, n)).diagonal(dim1=-2, dim2=-1).mean(-1)
            return t.reshape(lead + (n,)).mean(-1)

        w.map_tiles(flat)
        w.set_covs(flat)
        w.spatial = ()
        w.width = w.width * n
        w.is_gaussian = w.is_gaussian and n == 1
        return w

    def _build(self, spec: Spec, seeds: Iterator[int], factory: dict) -> tuple[nn.Module, Spec]:
        factory["ndim"] = 0
        return FlattenModule(1), None
