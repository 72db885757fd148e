"""Locally connected layers: convolutions without weight sharing, in PyTorch's ``(N, C, *S)`` layout."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import partial
from typing import Optional

import torch
from torch import nn
from torch.nn.modules.lazy import LazyModuleMixin
from torch.nn.parameter import UninitializedParameter

from .._engine import spatial_axes
from ..errors import ShapeError
from ._geometry import pad_input, spatial_pads
from ._init import draw_affine
from ._masks import require_no_padding
from .base import Build, Spec
from .conv import Conv

__all__ = ["ConvLocal", "ConvLocalModule"]


def _keep_position_diagonal(t: torch.Tensor, full: bool, n_spatial: int) -> torch.Tensor:
    """Zero every pair of distinct positions (full layout); the diagonal layout is unchanged."""
    if not full:
        return t
    first, second = spatial_axes(t.ndim, n_spatial, True)
    mask = None
    for a, b in zip(first, second):
        eye = torch.eye(t.shape[a], dtype=t.dtype, device=t.device)
        shape = [1] * t.ndim
        shape[a], shape[b] = t.shape[a], t.shape[b]
        eye = eye.reshape(shape)
        mask = eye if mask is None else mask * eye
    return t * mask


@dataclass(frozen=True)
class ConvLocal(Conv):
    """A locally connected layer: a convolution whose filter (and bias) differ at every
    output position, as ``stax.ConvLocal`` (Novak et al. 2019, arXiv 1810.05148, "LCN").

    Kernel rule: the weights at distinct positions are independent, so outputs at distinct
    positions are uncorrelated; at equal positions the rule is ``Conv``'s::

        K'[s, s'] = delta_(s s') (W_std^2 A[K][s, s] + b_std^2)
        Theta'[s, s'] = delta_(s s') (K'[s, s] + W_std^2 A[Theta][s, s])      ("ntk")

    (``A`` the average over the filter offsets; "standard" as ``Conv``). In the diagonal
    layout (no layer mixes positions afterwards) the kernels equal ``Conv``'s; pooling and
    ``Flatten`` then see the position diagonal only. Paddings as ``Conv``: "same", "valid",
    "circular".

    Args:
        out_channels: width of the layer (>= 1).
        kernel_size, stride: an int for every spatial dimension, or one int per dimension.
        padding: "same", "valid" or "circular".
        W_std: weight standard deviation (>= 0); b_std: bias standard deviation, or None.
        parameterization: "ntk" or "standard".

    Example:

        >>> lcn = wn.Serial(wn.ConvLocal(64, 3), wn.Relu(), wn.GlobalAvgPool(), wn.Dense(1))
        >>> lcn.kernel(torch.randn(4, 2, 6, 6)).ntk.shape
        torch.Size([4, 4])
    """

    out_channels: int
    kernel_size: object = 3
    stride: object = 1
    padding: str = "same"
    dilation: object = field(default=1, init=False, repr=False)
    W_std: float = 1.0
    b_std: Optional[float] = 0.0
    parameterization: str = "ntk"

    def _positions(self, d: int):
        return partial(_keep_position_diagonal, n_spatial=d)

    def _twin(self, spec: Spec, build: Build) -> tuple[nn.Module, Spec]:
        spec = self._single_spec(spec)
        module = ConvLocalModule(
            spec.features, self.out_channels, self.kernel_size, self.stride, self.padding, self.W_std,
            self.b_std, self.parameterization, build.seed(), ndim=spec.ndim, dtype=build.dtype, device=build.device,
        )
        return module, spec.with_features(self.out_channels)


class ConvLocalModule(LazyModuleMixin, nn.Module):
    """Locally connected N-d layer: the input is padded (``Conv``'s rule) and cut into
    patches (gathered along each spatial axis), and every output position applies
    its own ``weight[..., position]`` ``(out, in * prod(kernel_size), *out_spatial)`` and adds
    its own ``bias`` ``(out, *out_spatial)``. Parameterization "ntk": ``W, b ~ N(0, 1)``, the
    output ``W_std / sqrt(in * prod(kernel_size)) W . patch + b_std b``; "standard": ``W ~ N(0,
    W_std^2 / (in * prod(kernel_size)))``, ``b ~ N(0, b_std^2)``. The spatial size is fixed
    by the first input.
    """

    cls_to_become = None

    def __init__(self, in_channels: Optional[int], out_channels: int, kernel_size, stride, padding: str,
                 W_std: float, b_std: Optional[float], parameterization: str, seed: int,
                 ndim: Optional[int] = None, dtype: Optional[torch.dtype] = None, device=None) -> None:
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.init = "gaussian"  # draw_affine's weight law (per-position filters have no orthogonal form)
        self._sizes = (kernel_size, stride)
        self.kernel_size = self.stride = self.in_spatial = None
        self.padding = padding
        self.W_std, self.b_std, self.parameterization, self.seed = W_std, b_std, parameterization, seed
        factory = {"dtype": dtype or torch.get_default_dtype(), "device": device}
        self.weight = UninitializedParameter(**factory)
        self.bias = None if b_std is None else UninitializedParameter(**factory)

    def _resolve(self, ndim: int) -> None:
        as_tuple_ = lambda v: tuple(v) if isinstance(v, (tuple, list)) else (int(v),) * ndim  # noqa: E731
        self.kernel_size, self.stride = (as_tuple_(v) for v in self._sizes)

    @property
    def fan_in(self) -> int:
        return self.in_channels * math.prod(self.kernel_size)

    def _out_spatial(self, spatial) -> tuple:
        pads = spatial_pads(spatial, self.kernel_size, self.stride, (1,) * len(spatial), self.padding,
                            "ConvLocalModule")
        return tuple((n + lo + hi - k) // s + 1 for n, (lo, hi), k, s in zip(spatial, pads, self.kernel_size, self.stride))

    def reset_parameters(self) -> None:
        """Redraws the parameters from this module's seed (the same values every time)."""
        if not self.has_uninitialized_params():
            draw_affine(self, self.fan_in)

    def initialize_parameters(self, input: torch.Tensor) -> None:  # called by LazyModuleMixin
        if self.has_uninitialized_params():
            if input.ndim < 3 or input.ndim > 5:
                raise ShapeError(f"ConvLocalModule: expected input (N, C, *spatial) with 1 to 3 spatial axes "
                                 f"(got {tuple(input.shape)})")
            with torch.no_grad():
                self.in_channels = int(input.shape[1])
                self._resolve(input.ndim - 2)
                self.in_spatial = tuple(input.shape[2:])
                out = self._out_spatial(self.in_spatial)
                self.weight.materialize((self.out_channels, self.fan_in) + out)
                if self.bias is not None:
                    self.bias.materialize((self.out_channels,) + out)
                self.reset_parameters()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d = len(self.kernel_size)
        if self.padding != "same" or any(s != 1 for s in self.stride):
            require_no_padding(x, "ConvLocalModule", "moves or wraps positions (masks need padding='same' "
                                                     "and stride 1)")
        if x.ndim != d + 2 or x.shape[1] != self.in_channels or tuple(x.shape[2:]) != self.in_spatial:
            raise ShapeError(f"ConvLocalModule: expected input (N, {self.in_channels}, *{self.in_spatial}) "
                             f"(its weights are per position; got {tuple(x.shape)})")
        pads = spatial_pads(x.shape[2:], self.kernel_size, self.stride, (1,) * d, self.padding, "ConvLocalModule")
        patches = pad_input(x, pads, self.padding)
        for i, (k, s) in enumerate(zip(self.kernel_size, self.stride)):
            # axis 2 + i becomes (out_i, k_i), k_i moved last: (N, C, *out, *kernel) at the end
            # (gathers rather than Tensor.unfold, whose backward torch.func cannot batch)
            n_out = (patches.shape[2 + i] - k) // s + 1
            index = (torch.arange(n_out, device=x.device)[:, None] * s + torch.arange(k, device=x.device)).reshape(-1)
            patches = patches.index_select(2 + i, index).unflatten(2 + i, (n_out, k)).movedim(3 + i, -1)
        n, out = x.shape[0], patches.shape[2:2 + d]
        patches = patches.movedim(1, 1 + d).reshape(n, *out, self.fan_in)  # (N, *out, C * prod(k))
        weight = self.weight.movedim(1, -1)  # (out_channels, *out, fan_in)
        y = torch.einsum("n...f,o...f->no...", patches, weight)
        if self.parameterization == "ntk":
            y = y * (self.W_std / math.sqrt(self.fan_in))
            if self.bias is not None:
                y = y + self.b_std * self.bias
            return y
        return y if self.bias is None else y + self.bias

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding!r}, W_std={self.W_std}, b_std={self.b_std}, "
                f"parameterization={self.parameterization!r}")
