"""Fully connected (affine) layers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Optional

from torch import nn

from .. import _exact
from .._validate import check_choice, check_float, check_int
from ._base import Flow, Layer, Spec
from ._modules import DenseModule

__all__ = ["Dense"]


@dataclass(frozen=True)
class Dense(Layer):
    """Affine layer on the feature axis, like ``nn.Linear(in_features, out_features)``.

    It acts on axis 1: the last axis of ``(N, features)`` inputs, the channel axis of
    ``(N, C, *S)`` inputs, where it mixes channels at each position independently (the same
    layer as ``Conv(out_features, kernel_size=1)``).

    Kernel rule, parameterization "ntk" (Jacot et al. 2018; Lee et al. 2019,
    arXiv 1902.06720)::

        K' = W_std^2 K + b_std^2        Theta' = K' + W_std^2 Theta

    parameterization "standard" (Sohl-Dickstein et al. 2020, arXiv 2001.07301), with
    ``n_in`` the declared width of the layer's input::

        K' = W_std^2 K + b_std^2        Theta' = n_in K + W_std^2 Theta (+ 1 with a bias)

    ``b_std=None`` means no bias at all (no ``+ b_std^2`` and no bias parameter).

    Args:
        out_features: width of the layer (>= 1). It does not enter the kernel in the "ntk"
            parameterization; it does enter the next layer's NTK in the "standard" one.
        W_std: weight standard deviation (>= 0).
        b_std: bias standard deviation (>= 0), or None for no bias.
        parameterization: "ntk" or "standard".
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

    def _apply(self, flow: Flow) -> Flow:
        w = self._single(flow)
        w_var = self.W_std**2
        b_var = 0.0 if self.b_std is None else self.b_std**2
        if w.nngp is not None:
            if self.parameterization == "ntk":
                _exact.scale_add_(w.nngp, w_var, b_var)
                if w.ntk is not None:
                    if w.ntk_is_zero:  # the input layer's NTK: W_std^2 * 0 + K' is K'
                        w.ntk.copy_(w.nngp)
                    else:
                        _exact.scale_add_(w.ntk, w_var, w.nngp)
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

    def _build(self, spec: Spec, seeds: Iterator[int], factory: dict) -> tuple[nn.Module, Spec]:
        in_features = self._single_spec(spec)
        module = DenseModule(
            in_features, self.out_features, self.W_std, self.b_std, self.parameterization,
            next(seeds), dtype=factory["dtype"], device=factory["device"], init=factory.get("init", "gaussian"),
        )
        return module, self.out_features
