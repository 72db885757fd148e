"""Convolutions over 1, 2 or 3 spatial dimensions, in PyTorch's ``(N, C, *S)`` layout."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn
from torch.nn.modules.lazy import LazyModuleMixin
from torch.nn.parameter import UninitializedParameter

from .._engine import Flow, exact, scratch, window_sum, spatial_axes
from .._validate import check_choice, check_float, check_int
from ..errors import ShapeError
from ._geometry import PADDINGS, Size, as_tuple, check_size, pad_input, pads_for, spatial_of, spatial_pads
from ._init import draw_affine
from ._masks import require_no_padding
from .base import Build, Layer, Spec

__all__ = ["Conv", "ConvModule"]


@dataclass(frozen=True)
class Conv(Layer):
    """Convolution over 1, 2 or 3 spatial dimensions, like ``nn.Conv1d/2d/3d``.

    Kernel rule (Novak et al. 2019, arXiv 1810.05148; Garriga-Alonso et al. 2019): with
    ``A`` the average over the ``prod(kernel_size)`` filter offsets ``o`` of the input
    covariance at ``(s + o, s' + o)`` (zeros outside the padded input),

    parameterization "ntk"::        K' = W_std^2 A[K] + b_std^2       Theta' = K' + W_std^2 A[Theta]

    parameterization "standard"::   K' = W_std^2 A[K] + b_std^2
                                    Theta' = C_in prod(kernel_size) A[K] + W_std^2 A[Theta] (+ 1 with a bias)

    In the diagonal layout ``s = s'`` only. Paddings: "same" (zeros, output size
    ``ceil(size / stride)``, the extra padding after), "valid" (none), "circular"
    (wrap-around, sizes as "same").

    Args:
        out_channels: width of the layer (>= 1).
        kernel_size, stride, dilation: an int for every spatial dimension, or one int per
            dimension (1 to 3 of them; ints adapt to the input's spatial dimensions).
        padding: "same", "valid" or "circular".
        W_std: weight standard deviation (>= 0); b_std: bias standard deviation, or None.
        parameterization: "ntk" or "standard".

    Example:

        >>> cnn = wn.Serial(wn.Conv(64, 3), wn.Relu(), wn.GlobalAvgPool(), wn.Dense(1))
        >>> cnn.kernel(torch.randn(4, 1, 8, 8)).ntk.shape
        torch.Size([4, 4])
    """

    out_channels: int
    kernel_size: Size = 3
    stride: Size = 1
    padding: str = "same"
    dilation: Size = 1
    W_std: float = 1.0
    b_std: Optional[float] = 0.0
    parameterization: str = "ntk"

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "out_channels", check_int(self._name, "out_channels", self.out_channels, minimum=1))
        for name in ("kernel_size", "stride", "dilation"):
            set_(self, name, check_size(self._name, name, getattr(self, name)))
        check_choice(self._name, "padding", self.padding, PADDINGS)
        set_(self, "W_std", check_float(self._name, "W_std", self.W_std, minimum=0.0, tensor=True))
        set_(self, "b_std", check_float(self._name, "b_std", self.b_std, minimum=0.0, allow_none=True, tensor=True))
        check_choice(self._name, "parameterization", self.parameterization, ("ntk", "standard"))

    def _geometry(self, spatial: tuple[int, ...]):
        d = len(spatial)
        window = as_tuple(self._name, "kernel_size", self.kernel_size, d)
        stride = as_tuple(self._name, "stride", self.stride, d)
        dilation = as_tuple(self._name, "dilation", self.dilation, d)
        geo = [pads_for(self._name, n, k, s, r, self.padding) for n, k, s, r in zip(spatial, window, stride, dilation)]
        return window, stride, dilation, [(lo, hi) for lo, hi, _ in geo], tuple(o for _, _, o in geo)

    def _rule(self, flow: Flow) -> Flow:
        w = self._single(flow)
        spatial = spatial_of(self._name, w)
        window_size, stride, dilation, pads, out_spatial = self._geometry(spatial)
        d = len(spatial)
        if w.masked and (self.padding != "same" or any(s != 1 for s in stride)):
            # With zeros at padded positions, a stride-1 "same" convolution of a padded input
            # is exactly that of the unpadded one; other geometries move or wrap positions.
            w.require_unmasked(self._name, f"has padding={self.padding!r} and stride={stride} "
                                       f"(masks need padding='same' and stride 1)")
        scale = 1.0 / math.prod(window_size)
        circular = self.padding == "circular"

        def window(t: torch.Tensor) -> torch.Tensor:  # prod(window) * A[t]
            first, second = spatial_axes(t.ndim, d, w.is_full)
            groups = [[a, b] for a, b in zip(first, second)] if second else [[a] for a in first]
            return window_sum(t, groups, window_size, stride, dilation, pads, circular)

        return affine_window_rule(self, w, window, scale, out_spatial, self._positions(d))

    def _positions(self, d: int):
        """What the rule does to its outputs last (``ConvLocal`` keeps the position
        diagonal); None for a convolution."""
        return None

    def _twin(self, spec: Spec, build: Build) -> tuple[nn.Module, Spec]:
        spec = self._single_spec(spec)
        module = ConvModule(
            spec.features, self.out_channels, self.kernel_size, self.stride, self.dilation,
            self.padding, self.W_std, self.b_std, self.parameterization, build.seed(),
            ndim=spec.ndim, dtype=build.dtype, device=build.device, init=build.init,
        )
        return module, spec.with_features(self.out_channels)


class ConvModule(LazyModuleMixin, nn.Module):
    """N-d convolution with widenet's initialization and padding rules.

    Its parameters are laid out like ``nn.ConvNd``'s: ``weight`` ``(out, in, *kernel_size)``
    and ``bias`` ``(out,)``; the forward pass pads (zeros for "same", wrap-around for
    "circular", nothing for "valid", with the SAME rule's split) and calls
    ``torch.nn.functional.convNd``. Parameterization "ntk": ``W, b ~ N(0, 1)`` and the output
    is ``W_std / sqrt(in * prod(kernel_size)) * conv(x, W) + b_std * b``; "standard":
    ``W ~ N(0, W_std^2 / (in * prod(kernel_size)))``, ``b ~ N(0, b_std^2)``, a plain ``nn.ConvNd``.
    """

    cls_to_become = None

    def __init__(self, in_channels: Optional[int], out_channels: int, kernel_size, stride, dilation,
                 padding: str, W_std: float, b_std: Optional[float], parameterization: str, seed: int,
                 ndim: Optional[int] = None, dtype: Optional[torch.dtype] = None, device=None,
                 init: str = "gaussian") -> None:
        super().__init__()
        self.init = init
        self.in_channels = in_channels
        self.out_channels = out_channels
        self._sizes = (kernel_size, stride, dilation)
        self.kernel_size = self.stride = self.dilation = None
        self.padding = padding
        self.W_std, self.b_std, self.parameterization, self.seed = W_std, b_std, parameterization, seed
        if ndim is None and isinstance(kernel_size, tuple):
            ndim = len(kernel_size)
        if ndim is not None:
            self._resolve(ndim)
        factory = {"dtype": dtype or torch.get_default_dtype(), "device": device}
        if in_channels is None or ndim is None:
            self.weight = UninitializedParameter(**factory)
        else:
            self.weight = nn.Parameter(torch.empty((out_channels, in_channels) + self.kernel_size, **factory))
        self.bias = None if b_std is None else nn.Parameter(torch.empty(out_channels, **factory))
        if not self.has_uninitialized_params():
            self.reset_parameters()

    def _resolve(self, ndim: int) -> None:
        as_tuple = lambda v: tuple(v) if isinstance(v, (tuple, list)) else (int(v),) * ndim  # noqa: E731
        self.kernel_size, self.stride, self.dilation = (as_tuple(v) for v in self._sizes)

    @property
    def fan_in(self) -> int:
        return self.in_channels * math.prod(self.kernel_size)

    def reset_parameters(self) -> None:
        """Redraws the parameters from this module's seed (the same values every time)."""
        if not self.has_uninitialized_params():
            draw_affine(self, self.fan_in)

    def initialize_parameters(self, input: torch.Tensor) -> None:  # called by LazyModuleMixin
        if self.has_uninitialized_params():
            if input.ndim < 3 or input.ndim > 5:
                raise ShapeError(f"{type(self).__name__}: expected input (N, C, *spatial) with 1 to 3 spatial axes "
                                 f"(got {tuple(input.shape)})")
            with torch.no_grad():
                self.in_channels = int(input.shape[1])
                if self.kernel_size is None:
                    self._resolve(input.ndim - 2)
                self.weight.materialize((self.out_channels, self.in_channels) + self.kernel_size)
                self.reset_parameters()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d = len(self.kernel_size)
        if self.padding != "same" or any(s != 1 for s in self.stride):
            require_no_padding(x, "ConvModule", "moves or wraps positions (masks need "
                                                "padding='same' and stride 1)")
        if x.ndim != d + 2 or x.shape[1] != self.in_channels:
            raise ShapeError(
                f"ConvModule: expected input (N, {self.in_channels}, <{d} spatial sizes>) "
                f"(got {tuple(x.shape)})"
            )
        pads = spatial_pads(x.shape[2:], self.kernel_size, self.stride, self.dilation, self.padding, "ConvModule")
        x = pad_input(x, pads, self.padding)
        conv = (torch.nn.functional.conv1d, torch.nn.functional.conv2d, torch.nn.functional.conv3d)[d - 1]
        if self.parameterization == "ntk":
            y = conv(x, self.weight, None, self.stride, 0, self.dilation) * (self.W_std / math.sqrt(self.fan_in))
            if self.bias is not None:
                y = y + (self.b_std * self.bias).reshape((1, -1) + (1,) * d)
            return y
        return conv(x, self.weight, self.bias, self.stride, 0, self.dilation)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"padding={self.padding!r}, dilation={self.dilation}, W_std={self.W_std}, b_std={self.b_std}, "
            f"parameterization={self.parameterization!r}"
            + ("" if self.init == "gaussian" else f", init={self.init!r}")
        )


def affine_window_rule(layer, w, window, scale: float, out_spatial: tuple, post=None):
    """The kernel rule of a convolution-like layer (``Conv``, ``ConvTranspose``): with
    ``window(t)`` the sum of ``t`` over tied filter offsets and ``scale = 1 / prod(kernel_size)``,
    ``K' = W_std^2 scale window(K) + b_std^2`` and the NTK of ``layer.parameterization``
    (see ``Conv``); the own covariances alike. ``layer`` gives ``W_std``, ``b_std``,
    ``parameterization`` and ``out_channels``; ``post(t, full)``, when given, transforms every
    result last (the tile's kernels and the own covariances)."""
    w_var = layer.W_std**2
    b_var = 0.0 if layer.b_std is None else layer.b_std**2
    k_scale = w_var * scale  # one pass: W_std^2 A[K] + b_std^2 from the window sum
    if w.nngp is not None:
        k = window(w.nngp)
        if w.ntk is not None:
            # The input layer's NTK is zero: its window sum is zero too (skipped).
            theta = None if w.ntk_is_zero else window(w.ntk)
            if layer.parameterization == "standard":
                # C_in prod(kernel_size) A[K] is C_in times the window sum k.
                if theta is None:
                    theta = scratch.call(torch.mul, k, float(w.width))
                else:
                    theta.mul_(k_scale).add_(k, alpha=float(w.width))
                if layer.b_std is not None:
                    theta.add_(1.0)
                k = exact.scale_add_(k, k_scale, b_var)
            else:
                k = exact.scale_add_(k, k_scale, b_var)
                theta = scratch.clone(k) if theta is None else exact.scale_add_(theta, k_scale, k)
            w.ntk = theta if post is None else post(theta, w.is_full)
        else:
            k = exact.scale_add_(k, k_scale, b_var)
        w.nngp = k if post is None else post(k, w.is_full)
    if post is None:
        w.set_covs(lambda c: exact.scale_add_(window(c), k_scale, b_var))
    else:
        w.set_covs(lambda c: post(exact.scale_add_(window(c), k_scale, b_var), w.is_full))
    w.spatial = out_spatial
    w.is_gaussian = True
    w.width = layer.out_channels
    return w
