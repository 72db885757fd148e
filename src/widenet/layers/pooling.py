"""Window pooling: average, sum and max pooling over windows of positions.

Average and sum pooling mix positions, so the kernel of their input must hold every pair of
positions (the full layout); widenet switches to it automatically when such a layer is
present.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import torch
from torch import nn

from .._engine import Flow, exact, spatial_axes, window_sum
from .._validate import check_choice
from ..errors import NoClosedFormError
from ._geometry import PADDINGS, Size, as_tuple, check_size, pad_input, pads_for, spatial_of, spatial_pads, torch_pads
from ._masks import require_no_padding
from .base import Build, Layer, Spec

__all__ = ["AvgPool", "SumPool", "MaxPool", "PoolModule"]


class _Pool(Layer):
    """Shared rule of AvgPool and SumPool: ``K'(s, s') = c^2 sum_{o, o'} K(s + o, s' + o')``
    with ``c = 1 / prod(window)`` (average, zeros of the padding counted) or ``c = 1`` (sum)."""

    _mode = "avg"
    window: Size
    stride: Optional[Size]
    padding: str

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "window", check_size(self._name, "window", self.window))
        if self.stride is not None:
            set_(self, "stride", check_size(self._name, "stride", self.stride))
        check_choice(self._name, "padding", self.padding, PADDINGS)

    def _needs_full(self) -> bool:
        return True

    def _geometry(self, spatial: tuple[int, ...]):
        d = len(spatial)
        window = as_tuple(self._name, "window", self.window, d)
        stride = window if self.stride is None else as_tuple(self._name, "stride", self.stride, d)
        geo = [pads_for(self._name, n, k, s, 1, self.padding) for n, k, s in zip(spatial, window, stride)]
        return window, stride, [(lo, hi) for lo, hi, _ in geo], tuple(o for _, _, o in geo)

    def _rule(self, flow: Flow) -> Flow:
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
            if exact.active():
                # The windows of x are summed before those of x'; the kernel of (x', x) would
                # sum them the other way round, to other roundings. Reproducible mode takes
                # the mean of both orders, which is the same for both pairs.
                out.add_(window_sum(t, [[a] for a in second + first], *args)).mul_(0.5)
            return out.mul_(scale) if scale != 1.0 else out

        w.map_tiles(pool)
        w.set_covs(pool)
        w.spatial = out_spatial
        return w

    def _twin(self, spec: Spec, build: Build) -> tuple[nn.Module, Spec]:
        spec = self._single_spec(spec)
        d = spec.ndim
        if d is None and not isinstance(self.window, tuple):
            return _LazyPool(self._mode, self.window, self.stride, self.padding), spec
        window = self.window if isinstance(self.window, tuple) else (self.window,) * d
        stride = window if self.stride is None else self.stride
        stride = stride if isinstance(stride, tuple) else (stride,) * len(window)
        return PoolModule(self._mode, window, stride, self.padding), spec


@dataclass(frozen=True)
class AvgPool(_Pool):
    """Average pooling over windows, like ``nn.AvgPool1d/2d/3d`` (``stride`` defaults to the
    window). "same" padding counts the padded zeros in the average (``count_include_pad``);
    "circular" wraps around. Needs the full layout (chosen automatically).

    Example:

        >>> cnn = wn.Serial(wn.Conv(64, 3), wn.Relu(), wn.AvgPool(2), wn.Flatten(), wn.Dense(1))
    """

    window: Size = 2
    stride: Optional[Size] = None
    padding: str = "valid"
    _mode = "avg"


@dataclass(frozen=True)
class SumPool(_Pool):
    """Sum over windows (average pooling times the window size); see ``AvgPool``.

    Example:

        >>> cnn = wn.Serial(wn.Conv(64, 3), wn.Relu(), wn.SumPool(2), wn.Flatten(), wn.Dense(1))
    """

    window: Size = 2
    stride: Optional[Size] = None
    padding: str = "valid"
    _mode = "sum"


@dataclass(frozen=True)
class MaxPool(_Pool):
    """Max pooling, like ``nn.MaxPool1d/2d/3d`` (``stride`` defaults to the window; "same"
    pads with -inf). Its finite-width twin is exact, but the maximum of correlated Gaussians
    has no closed-form kernel: ``kernel()`` raises rather than approximate. Estimate its kernels
    by Monte Carlo over finite networks (``wn.monte_carlo``).

    Example:

        >>> net = wn.Serial(wn.Conv(8, 3), wn.Relu(), wn.MaxPool(2), wn.Flatten(), wn.Dense(1))
        >>> mc = wn.monte_carlo(net, torch.randn(4, 1, 8, 8), n_samples=16)
    """

    window: Size = 2
    stride: Optional[Size] = None
    padding: str = "valid"
    _mode = "max"

    def _rule(self, flow: Flow) -> Flow:
        raise NoClosedFormError(
            "MaxPool: the infinite-width kernel of max pooling has no closed form; estimate it "
            "by Monte Carlo over finite networks with wn.monte_carlo(net, x1, x2, n_samples=...)"
        )


class PoolModule(nn.Module):
    """Average, sum or max pooling with widenet's padding rules ("valid", "same" with zeros
    counted in the average, "circular")."""

    def __init__(self, mode: str, window: Sequence[int], stride: Sequence[int], padding: str) -> None:
        super().__init__()
        self.mode, self.window, self.stride, self.padding = mode, tuple(window), tuple(stride), padding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        require_no_padding(x, "PoolModule", "pools windows of positions")
        d = len(self.window)
        pads = spatial_pads(x.shape[2:], self.window, self.stride, (1,) * d, self.padding, "PoolModule")
        if self.mode == "max" and self.padding == "same":
            x = torch.nn.functional.pad(x, torch_pads(pads), value=-math.inf)
        else:
            x = pad_input(x, pads, self.padding)
        F = torch.nn.functional
        if self.mode == "max":
            return (F.max_pool1d, F.max_pool2d, F.max_pool3d)[d - 1](x, self.window, self.stride)
        y = (F.avg_pool1d, F.avg_pool2d, F.avg_pool3d)[d - 1](x, self.window, self.stride)
        return y * math.prod(self.window) if self.mode == "sum" else y

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}, window={self.window}, stride={self.stride}, padding={self.padding!r}"


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
