"""Fully connected (affine) layers, ``nn.Linear`` on the feature axis."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn
from torch.nn.modules.lazy import LazyModuleMixin
from torch.nn.parameter import UninitializedParameter

from .._engine import Flow, exact
from .._validate import check_choice, check_float, check_int
from ..errors import ShapeError
from ._init import draw_affine
from .base import Build, Layer, Spec

__all__ = ["Dense", "DenseModule"]


@dataclass(frozen=True)
class Dense(Layer):
    """Affine layer on the feature axis, like ``nn.Linear(in_features, out_features)``.

    It acts on axis 1: the last axis of ``(N, features)`` inputs, the channel axis of
    ``(N, C, *S)`` inputs, where it mixes channels at each position independently (the same
    layer as ``Conv(out_features, kernel_size=1)``).

    Kernel rule, parameterization "ntk" (Jacot et al. 2018; Lee et al. 2019,
    arXiv 1902.06720):

        K' = W_std^2 K + b_std^2        Theta' = K' + W_std^2 Theta

    parameterization "standard" (Sohl-Dickstein et al. 2020, arXiv 2001.07301), with
    ``n_in`` the declared width of the layer's input:

        K' = W_std^2 K + b_std^2        Theta' = n_in K + W_std^2 Theta (+ 1 with a bias)

    ``b_std=None`` means no bias at all (no ``+ b_std^2`` and no bias parameter).

    Args:
        out_features: width of the layer (>= 1). It does not enter the kernel in the "ntk"
            parameterization; it does enter the next layer's NTK in the "standard" one.
        W_std: weight standard deviation (>= 0).
        b_std: bias standard deviation (>= 0), or None for no bias.
        parameterization: "ntk" or "standard".

    Example:

        >>> net = wn.Serial(wn.Dense(512, W_std=1.5, b_std=0.05), wn.Relu(), wn.Dense(1))
        >>> net.kernel(torch.randn(20, 10)).nngp.shape
        torch.Size([20, 20])
    """

    out_features: int
    W_std: float = 1.0
    b_std: Optional[float] = 0.0
    parameterization: str = "ntk"

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "out_features", check_int("Dense", "out_features", self.out_features, minimum=1))
        set_(self, "W_std", check_float("Dense", "W_std", self.W_std, minimum=0.0, tensor=True))
        set_(self, "b_std", check_float("Dense", "b_std", self.b_std, minimum=0.0, allow_none=True, tensor=True))
        check_choice("Dense", "parameterization", self.parameterization, ("ntk", "standard"))

    def _rule(self, flow: Flow) -> Flow:
        w = self._single(flow)
        w_var = self.W_std**2
        b_var = 0.0 if self.b_std is None else self.b_std**2
        if w.nngp is not None:
            if self.parameterization == "ntk":
                exact.scale_add_(w.nngp, w_var, b_var)
                if w.ntk is not None:
                    if w.ntk_is_zero:  # the input layer's NTK: W_std^2 * 0 + K' is K'
                        w.ntk.copy_(w.nngp)
                    else:
                        exact.scale_add_(w.ntk, w_var, w.nngp)
            else:
                if w.ntk is not None:
                    w.ntk.mul_(w_var).add_(w.nngp, alpha=float(w.width))
                    if self.b_std is not None:
                        w.ntk.add_(1.0)
                w.nngp.mul_(w_var).add_(b_var)
        w.set_covs(lambda c: c * w_var + b_var)
        w.is_gaussian = True
        w.width = self.out_features
        return w

    def _twin(self, spec: Spec, build: Build) -> tuple[nn.Module, Spec]:
        spec = self._single_spec(spec)
        module = DenseModule(spec.features, self.out_features, self.W_std, self.b_std,
                             self.parameterization, build.seed(), dtype=build.dtype,
                             device=build.device, init=build.init)
        return module, spec.with_features(self.out_features)


class DenseModule(LazyModuleMixin, nn.Module):
    """``y = x W^T + b`` on axis 1 (features, or channels at each position), like
    ``nn.Linear``, with widenet's initialization.

    parameterization "ntk": ``W, b ~ N(0, 1)``, ``y = (W_std / sqrt(in)) x W^T + b_std b``.
    parameterization "standard": ``W ~ N(0, W_std^2 / in)``, ``b ~ N(0, b_std^2)``,
    ``y = x W^T + b``. ``b_std=None`` means no bias parameter.
    With ``in_features=None`` the weight materializes on the first call (a lazy module).
    """

    cls_to_become = None

    def __init__(self, in_features: Optional[int], out_features: int, W_std: float,
                 b_std: Optional[float], parameterization: str, seed: int,
                 dtype: Optional[torch.dtype] = None, device: Optional[torch.device] = None,
                 init: str = "gaussian") -> None:
        super().__init__()
        self.init = init
        self.in_features = in_features
        self.out_features = out_features
        self.W_std = W_std
        self.b_std = b_std
        self.parameterization = parameterization
        self.seed = seed
        factory = {"dtype": dtype or torch.get_default_dtype(), "device": device}
        if in_features is None:
            self.weight = UninitializedParameter(**factory)
        else:
            self.weight = nn.Parameter(torch.empty(out_features, in_features, **factory))
        self.bias = None if b_std is None else nn.Parameter(torch.empty(out_features, **factory))
        if in_features is not None:
            self.reset_parameters()

    def reset_parameters(self) -> None:
        """Redraws the parameters from this module's seed (the same values every time)."""
        if not self.has_uninitialized_params():
            draw_affine(self, self.in_features)

    def initialize_parameters(self, input: torch.Tensor) -> None:  # called by LazyModuleMixin
        if self.has_uninitialized_params():
            with torch.no_grad():
                self.in_features = int(input.shape[1])
                self.weight.materialize((self.out_features, self.in_features))
                self.reset_parameters()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim < 2 or x.shape[1] != self.in_features:
            raise ShapeError(
                f"DenseModule: input has {x.shape[1] if x.ndim >= 2 else 0} features on axis 1 but "
                f"the layer was built for {self.in_features} (input shape {tuple(x.shape)})"
            )
        if x.ndim > 2:  # per position, on the channel axis
            return self._linear(x.movedim(1, -1)).movedim(-1, 1)
        return self._linear(x)

    def _linear(self, x: torch.Tensor) -> torch.Tensor:
        if self.parameterization == "ntk":
            y = torch.nn.functional.linear(x, self.weight) * (self.W_std / math.sqrt(self.in_features))
            if self.bias is not None:
                y = y + self.b_std * self.bias
            return y
        return torch.nn.functional.linear(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"W_std={self.W_std}, b_std={self.b_std}, parameterization={self.parameterization!r}"
            + ("" if self.init == "gaussian" else f", init={self.init!r}")
        )
