"""Sinusoidal nonlinearities, ``phi(x) = a sin(b x + c)`` and its cosine."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .._engine import Tile, exact
from ._arccos import PI
from .nonlinearity import Nonlinearity

__all__ = ["Sin", "Cos"]


def _cos(x):
    """cos of a float or of a 0-d tensor hyperparameter (kept differentiable)."""
    return torch.cos(x) if isinstance(x, torch.Tensor) else math.cos(x)


@dataclass(frozen=True)
class Sin(Nonlinearity):
    """``phi(x) = a sin(b x + c)``. With ``s = q1 + q2``:

        T    = a^2/2 [exp(b^2 (K - s/2)) - exp(b^2 (-K - s/2)) cos 2c]
        Tdot = a^2 b^2/2 [exp(b^2 (K - s/2)) + exp(b^2 (-K - s/2)) cos 2c]

    Example:

        >>> net = wn.Serial(wn.Dense(512), wn.Sin(b=2.0), wn.Dense(1))
    """

    a: float = 1.0
    b: float = 1.0
    c: float = 0.0

    def __post_init__(self) -> None:
        self._check_floats("a", "b", "c")

    def fn(self, x: torch.Tensor) -> torch.Tensor:
        return self.a * torch.sin(self.b * x + self.c)

    def _tile(self, w: Tile) -> None:
        b2 = self.b**2
        half_sum = w.sum(w.var1, w.var2).mul_(-0.5 * b2)
        scaled = w.nngp * b2
        s1 = exact.apply_(torch.exp, torch.add(half_sum, scaled))
        s2 = exact.apply_(torch.exp, half_sum.sub_(scaled)).mul_(_cos(2 * self.c))
        half_a2 = self.a**2 / 2
        if w.ntk is not None:
            w.ntk.mul_(s1 + s2).mul_(half_a2 * b2)
        w.nngp = s1.sub_(s2).mul_(half_a2)

    def _diag(self, q: torch.Tensor) -> torch.Tensor:
        return (1 - exact.elementwise(torch.exp, -2 * self.b**2 * q) * _cos(2 * self.c)) * (self.a**2 / 2)


@dataclass(frozen=True)
class Cos(Sin):
    """``phi(x) = a cos(b x + c)`` (= ``Sin(a, b, c + pi/2)``).

    Example:

        >>> net = wn.Serial(wn.Dense(512), wn.Cos(), wn.Dense(1))
    """

    def fn(self, x: torch.Tensor) -> torch.Tensor:
        return self.a * torch.cos(self.b * x + self.c)

    def _shifted(self) -> Sin:
        return Sin(self.a, self.b, self.c + PI / 2)

    def _tile(self, w: Tile) -> None:
        self._shifted()._tile(w)

    def _diag(self, q: torch.Tensor) -> torch.Tensor:
        return self._shifted()._diag(q)
