"""Softplus, ``log(1 + exp(beta x)) / beta``, by Gauss-Hermite quadrature."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from typing import Callable, Optional

import torch

from .._validate import check_float
from .quadrature import Elementwise

__all__ = ["Softplus"]


def _softplus(x: torch.Tensor, beta) -> torch.Tensor:
    return torch.nn.functional.softplus(beta * x) / beta


def _sigmoid(x: torch.Tensor, beta) -> torch.Tensor:
    return torch.sigmoid(beta * x)


@dataclass(frozen=True)
class Softplus(Elementwise):
    """``phi(x) = log(1 + exp(beta x)) / beta``, like ``torch.nn.Softplus(beta)`` (a smooth
    ReLU, which it approaches as ``beta`` grows). No closed form is known: ``T`` and ``Tdot``
    are Gauss-Hermite integrals (see ``Elementwise``), with ``phi'(x) = sigmoid(beta x)``.

    Args:
        beta: sharpness (> 0); a 0-d tensor makes kernels differentiable in it.
        degree: quadrature nodes per dimension (>= 2).

    Example:

        >>> net = wn.Serial(wn.Dense(512), wn.Softplus(2.0), wn.Dense(1))
        >>> net.kernel(torch.randn(5, 3, dtype=torch.float64)).ntk.shape
        torch.Size([5, 5])
    """

    beta: float = 1.0
    degree: int = field(default=96, kw_only=True)
    fn: Callable = field(default=None, init=False, repr=False)
    nngp_fn: Optional[Callable] = field(default=None, init=False, repr=False)
    d_nngp_fn: Optional[Callable] = field(default=None, init=False, repr=False)
    dfn: Optional[Callable] = field(default=None, init=False, repr=False)
    name: Optional[str] = field(default="softplus", init=False, repr=False)

    def __post_init__(self) -> None:
        beta = check_float("Softplus", "beta", self.beta, minimum=0.0, exclusive_minimum=True, tensor=True)
        object.__setattr__(self, "beta", beta)
        object.__setattr__(self, "fn", partial(_softplus, beta=beta))
        super().__post_init__()

    def __repr__(self) -> str:
        return f"Softplus(beta={float(self.beta):g}, degree={self.degree})"

    def _derivative(self) -> Callable[[torch.Tensor], torch.Tensor]:
        return partial(_sigmoid, beta=self.beta)
