"""Convolutions over 1, 2 or 3 spatial dimensions, in PyTorch's ``(N, C, *S)`` layout."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator, Optional, Sequence, Union

import torch
from torch import nn

from .. import _exact, _scratch
from .._validate import check_choice, check_float, check_int
from ..errors import ShapeError
from ..kernel import Work
from ._base import Flow, Layer, Spec
from ._modules import ConvModule
from ._spatial import PADDINGS, as_tuple, pads_for, spatial_axes, window_sum

__all__ = ["Conv"]

Size = Union[int, Sequence[int]]


def _check_size(owner: str, name: str, value: Size) -> Size:
    if isinstance(value, (list, tuple)):
        if not 1 <= len(value) <= 3:
            from ..errors import ParameterError

            raise ParameterError(f"{owner}: {name} must be an int or 1 to 3 ints (got {value!r})")
        return tuple(check_int(owner, f"{name}[{i}]", v, minimum=1) for i, v in enumerate(value))
    return check_int(owner, name, value, minimum=1)


def spatial_of(owner: str, w: Work) -> tuple[int, ...]:
    if not w.spatial:
        raise ShapeError(
            f"{owner}: needs inputs with spatial axes, (N, C, *S) with 1 to 3 spatial axes; this "
            f"layer's input has none (after Flatten or global pooling, or (N, features) inputs)"
        )
    return w.spatial


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
        set_(self, "out_channels", check_int("Conv", "out_channels", self.out_channels, minimum=1))
        for name in ("kernel_size", "stride", "dilation"):
            set_(self, name, _check_size("Conv", name, getattr(self, name)))
        check_choice("Conv", "padding", self.padding, PADDINGS)
        set_(self, "W_std", check_float("Conv", "W_std", self.W_std, minimum=0.0, tensor=True))
        set_(self, "b_std", check_float("Conv", "b_std", self.b_std, minimum=0.0, allow_none=True, tensor=True))
        check_choice("Conv", "parameterization", self.parameterization, ("ntk", "standard"))

    def _geometry(self, spatial: tuple[int, ...]):
        d = len(spatial)
        window = as_tuple("Conv", "kernel_size", self.kernel_size, d)
        stride = as_tuple("Conv", "stride", self.stride, d)
        dilation = as_tuple("Conv", "dilation", self.dilation, d)
        geo = [pads_for("Conv", n, k, s, r, self.padding) for n, k, s, r in zip(spatial, window, stride, dilation)]
        return window, stride, dilation, [(lo, hi) for lo, hi, _ in geo], tuple(o for _, _, o in geo)

    def _apply(self, flow: Flow) -> Flow:
        w = self._single(flow)
        spatial = spatial_of("Conv", w)
        window_size, stride, dilation, pads, out_spatial = self._geometry(spatial)
        d = len(spatial)
        if w.masked and (self.padding != "same" or any(s != 1 for s in stride)):
            # With zeros at padded positions, a stride-1 "same" convolution of a padded input
            # is exactly that of the unpadded one; other geometries move or wrap positions.
            w.require_unmasked("Conv", f"has padding={self.padding!r} and stride={stride} "
                                       f"(masks need padding='same' and stride 1)")
        scale = 1.0 / math.prod(window_size)
        circular = self.padding == "circular"

        def window(t: torch.Tensor) -> torch.Tensor:  # prod(window) * A[t]
            first, second = spatial_axes(t.ndim, d, w.is_full)
            groups = [[a, b] for a, b in zip(first, second)] if second else [[a] for a in first]
            return window_sum(t, groups, window_size, stride, dilation, pads, circular)

        w_var = self.W_std**2
        b_var = 0.0 if self.b_std is None else self.b_std**2
        k_scale = w_var * scale  # one pass: W_std^2 A[K] + b_std^2 from the window sum
        if w.nngp is not None:
            k = window(w.nngp)
            if w.ntk is not None:
                # The input layer's NTK is zero: its window sum is zero too (skipped).
                theta = None if w.ntk_is_zero else window(w.ntk)
                if self.parameterization == "standard":
                    # C_in prod(kernel_size) A[K] is C_in times the window sum k.
                    if theta is None:
                        theta = _scratch.call(torch.mul, k, float(w.width))
                    else:
                        theta.mul_(k_scale).add_(k, alpha=float(w.width))
                    if self.b_std is not None:
                        theta.add_(1.0)
                    k = _exact.scale_add_(k, k_scale, b_var)
                else:
                    k = _exact.scale_add_(k, k_scale, b_var)
                    theta = _scratch.clone(k) if theta is None else _exact.scale_add_(theta, k_scale, k)
                w.ntk = theta
            else:
                k = _exact.scale_add_(k, k_scale, b_var)
            w.nngp = k
        w.set_covs(lambda c: _exact.scale_add_(window(c), k_scale, b_var))
        w.spatial = out_spatial
        w.is_gaussian = True
        w.width = self.out_channels
        return w

    def _build(self, spec: Spec, seeds: Iterator[int], factory: dict) -> tuple[nn.Module, Spec]:
        module = ConvModule(
            self._single_spec(spec), self.out_channels, self.kernel_size, self.stride, self.dilation,
            self.padding, self.W_std, self.b_std, self.parameterization, next(seeds),
            ndim=factory.get("ndim"), dtype=factory["dtype"], device=factory["device"],
            init=factory.get("init", "gaussian"),
        )
        return module, self.out_channels
