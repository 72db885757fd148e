"""Transposed convolutions over 1, 2 or 3 spatial dimensions, in PyTorch's ``(N, C, *S)`` layout."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from .._engine import Flow, spatial_axes, window_sum
from .._validate import check_choice, check_float, check_int
from ..errors import ShapeError
from ._geometry import PADDINGS, Size, as_tuple, check_size, spatial_of
from ._masks import require_no_padding
from .base import Build, Layer, Spec
from .conv import ConvModule, affine_window_rule

__all__ = ["ConvTranspose", "ConvTransposeModule"]


def transpose_geometry(size: int, k: int, s: int, padding: str) -> tuple[int, int, int, int]:
    """``(pad_before, pad_after, length, out_size)`` along one axis: the input dilated by the
    stride (``s - 1`` zeros between positions) and padded is correlated with the filter,
    giving ``length`` positions; "circular" then folds them onto ``out_size = size * s``.
    The paddings are those of ``jax.lax.conv_transpose`` (and so Neural Tangents'):
    "same": ``k + s - 2`` in all, ``k - 1`` before when ``s > k - 1`` and half (rounded up)
    otherwise, ``out_size = size * s``; "valid" (and "circular"): ``k - 1`` before and
    ``s - 1 + max(k - s, 0)`` after, ``out_size = size * s + max(k - s, 0)``."""
    if padding == "same":
        total = k + s - 2
        lo = k - 1 if s > k - 1 else -(-total // 2)
    else:
        total = k + s - 2 + max(k - s, 0)
        lo = k - 1
    length = (size - 1) * s + 1 + total - k + 1
    return lo, total - lo, length, size * s if padding == "circular" else length


def _fold(t: torch.Tensor, axes, length: int, out: int) -> torch.Tensor:
    """Wrap ``length`` positions of each axis in ``axes`` onto ``out`` (circular padding's
    transpose): position ``a`` adds into ``(a - (length - out) // 2) mod out``."""
    for ax in axes:
        index = (torch.arange(length, device=t.device) - (length - out) // 2) % out
        shape = list(t.shape)
        shape[ax] = out
        t = torch.zeros(shape, dtype=t.dtype, device=t.device).index_add_(ax, index, t)
    return t


def _dilate_pad(t: torch.Tensor, axes, s: int, lo: int, hi: int) -> torch.Tensor:
    """Each axis in ``axes`` with ``s - 1`` zeros between positions, ``lo`` before, ``hi`` after."""
    for ax in axes:
        n = t.shape[ax]
        shape = list(t.shape)
        shape[ax] = (n - 1) * s + 1 + lo + hi
        out = torch.zeros(shape, dtype=t.dtype, device=t.device)
        index = [slice(None)] * t.ndim
        index[ax] = slice(lo, lo + (n - 1) * s + 1, s)
        out[tuple(index)] = t
        t = out
    return t


@dataclass(frozen=True)
class ConvTranspose(Layer):
    """Transposed convolution over 1, 2 or 3 spatial dimensions, the infinite-width limit of
    ``nn.ConvTranspose1d/2d/3d``, with Neural Tangents' ``stax.ConvTranspose`` geometry.

    Kernel rule: the input is dilated by the stride (zeros between positions) and padded
    (``transpose_geometry``); with ``A`` the average over the ``prod(kernel_size)`` filter
    offsets ``o`` of that covariance at ``(t + o, t' + o)``, the rule is ``Conv``'s::

        K' = W_std^2 A[K] + b_std^2          Theta' = K' + W_std^2 A[Theta]     ("ntk")

    ("standard" as ``Conv``, with fan-in ``C_in prod(kernel_size)``). Output sizes per axis:
    "same" ``size * stride``; "valid" ``size * stride + max(kernel_size - stride, 0)``;
    "circular" the "valid" output folded onto ``size * stride`` positions by wrap-around. The
    weights' offsets are distinct random variables, so the kernel does not depend on the
    filter's orientation (``lax.conv_transpose`` correlates, ``torch`` convolves).

    Args:
        out_channels: width of the layer (>= 1).
        kernel_size, stride: an int for every spatial dimension, or one int per dimension.
        padding: "same", "valid" or "circular".
        W_std: weight standard deviation (>= 0); b_std: bias standard deviation, or None.
        parameterization: "ntk" or "standard".

    Example:

        >>> up = wn.Serial(wn.ConvTranspose(64, 3, stride=2), wn.Relu(), wn.GlobalAvgPool(), wn.Dense(1))
        >>> up.kernel(torch.randn(4, 2, 5, 5)).ntk.shape
        torch.Size([4, 4])
    """

    out_channels: int
    kernel_size: Size = 3
    stride: Size = 1
    padding: str = "same"
    W_std: float = 1.0
    b_std: Optional[float] = 0.0
    parameterization: str = "ntk"

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "out_channels", check_int("ConvTranspose", "out_channels", self.out_channels, minimum=1))
        for name in ("kernel_size", "stride"):
            set_(self, name, check_size("ConvTranspose", name, getattr(self, name)))
        check_choice("ConvTranspose", "padding", self.padding, PADDINGS)
        set_(self, "W_std", check_float("ConvTranspose", "W_std", self.W_std, minimum=0.0, tensor=True))
        set_(self, "b_std", check_float("ConvTranspose", "b_std", self.b_std, minimum=0.0, allow_none=True,
                                        tensor=True))
        check_choice("ConvTranspose", "parameterization", self.parameterization, ("ntk", "standard"))

    def _rule(self, flow: Flow) -> Flow:
        w = self._single(flow)
        spatial = spatial_of("ConvTranspose", w)
        d = len(spatial)
        window_size = as_tuple("ConvTranspose", "kernel_size", self.kernel_size, d)
        stride = as_tuple("ConvTranspose", "stride", self.stride, d)
        geo = [transpose_geometry(n, k, s, self.padding) for n, k, s in zip(spatial, window_size, stride)]
        w.require_unmasked("ConvTranspose", "moves positions")

        def window(t: torch.Tensor) -> torch.Tensor:  # prod(window) * A[t]
            first, second = spatial_axes(t.ndim, d, w.is_full)
            groups = [[a, b] for a, b in zip(first, second)] if second else [[a] for a in first]
            for axes, s, (lo, hi, _, _) in zip(groups, stride, geo):
                t = _dilate_pad(t, axes, s, lo, hi)
            t = window_sum(t, groups, window_size, (1,) * d, (1,) * d, [(0, 0)] * d, False)
            if self.padding == "circular":
                for axes, (_, _, length, out) in zip(groups, geo):
                    t = _fold(t, axes, length, out)
            return t

        return affine_window_rule(self, w, window, 1.0 / math.prod(window_size), tuple(g[3] for g in geo))

    def _twin(self, spec: Spec, build: Build) -> tuple[nn.Module, Spec]:
        spec = self._single_spec(spec)
        module = ConvTransposeModule(
            spec.features, self.out_channels, self.kernel_size, self.stride, self.padding, self.W_std,
            self.b_std, self.parameterization, build.seed(), ndim=spec.ndim, dtype=build.dtype,
            device=build.device, init=build.init,
        )
        return module, spec.with_features(self.out_channels)


class ConvTransposeModule(ConvModule):
    """N-d transposed convolution with widenet's initialization and ``ConvTranspose``'s
    geometry: a ``ConvModule`` (dilation 1; the same parameters, drawn the same way) whose
    forward pass transposes.

    ``weight`` is ``(out, in, *kernel_size)`` (the forward pass hands
    ``torch.nn.functional.conv_transposeNd`` its ``(in, out, ...)`` transpose) and ``bias``
    ``(out,)``. Parameterization "ntk": ``W, b ~ N(0, 1)`` and the output is
    ``W_std / sqrt(in * prod(kernel_size)) * conv_transpose(x, W) + b_std * b``; "standard":
    ``W ~ N(0, W_std^2 / (in * prod(kernel_size)))``, ``b ~ N(0, b_std^2)``. The transposed
    convolution is cut to ``ConvTranspose``'s output and, for "circular", folded.
    """

    cls_to_become = None

    def __init__(self, in_channels: Optional[int], out_channels: int, kernel_size, stride, padding: str,
                 W_std: float, b_std: Optional[float], parameterization: str, seed: int,
                 ndim: Optional[int] = None, dtype: Optional[torch.dtype] = None, device=None,
                 init: str = "gaussian") -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, 1, padding, W_std, b_std,
                         parameterization, seed, ndim=ndim, dtype=dtype, device=device, init=init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d = len(self.kernel_size)
        require_no_padding(x, "ConvTransposeModule", "moves positions")
        if x.ndim != d + 2 or x.shape[1] != self.in_channels:
            raise ShapeError(f"ConvTransposeModule: expected input (N, {self.in_channels}, <{d} spatial sizes>) "
                             f"(got {tuple(x.shape)})")
        geo = [transpose_geometry(n, k, s, self.padding) for n, k, s in zip(x.shape[2:], self.kernel_size, self.stride)]
        # torch places input i at i * s + j - p: p = k - 1 - pad_before maps onto the geometry
        # (with the filter reversed); output_padding and a cut give the length.
        pads = [k - 1 - lo for k, (lo, _, _, _) in zip(self.kernel_size, geo)]
        natural = [(n - 1) * s - 2 * p + k for n, s, p, k in zip(x.shape[2:], self.stride, pads, self.kernel_size)]
        extra = [max(length - m, 0) for (_, _, length, _), m in zip(geo, natural)]
        conv = (torch.nn.functional.conv_transpose1d, torch.nn.functional.conv_transpose2d,
                torch.nn.functional.conv_transpose3d)[d - 1]
        weight = self.weight.transpose(0, 1)
        y = conv(x, weight, None, self.stride, pads, extra)
        y = y[(slice(None), slice(None)) + tuple(slice(0, length) for _, _, length, _ in geo)]
        if self.padding == "circular":
            y = _fold_all(y, geo)
        if self.parameterization == "ntk":
            y = y * (self.W_std / math.sqrt(self.fan_in))
            if self.bias is not None:
                y = y + (self.b_std * self.bias).reshape((1, -1) + (1,) * d)
            return y
        if self.bias is not None:
            y = y + self.bias.reshape((1, -1) + (1,) * d)
        return y



def _fold_all(y: torch.Tensor, geo) -> torch.Tensor:
    for i, (_, _, length, out) in enumerate(geo):
        y = _fold(y, (2 + i,), length, out)
    return y
