"""Exponential nonlinearities: ``a exp(b x)``, the Gaussian bump ``a exp(b x^2)``, and the
random-features map whose dual is the RBF kernel."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .._engine import Tile, exact
from .._validate import check_float
from ._arccos import PI
from .nonlinearity import Nonlinearity

__all__ = ["Exp", "Gaussian", "Rbf"]


@dataclass(frozen=True)
class Exp(Nonlinearity):
    """``phi(x) = a exp(b x)``: ``T = a^2 exp(b^2 (s/2 + K))``, ``Tdot = b^2 T`` with ``s = q1 + q2``.

    Example:

        >>> net = wn.Serial(wn.Dense(512, W_std=0.5), wn.Exp(), wn.Dense(1))
    """

    a: float = 1.0
    b: float = 1.0

    def __post_init__(self) -> None:
        self._check_floats("a", "b")

    def fn(self, x: torch.Tensor) -> torch.Tensor:
        return self.a * torch.exp(self.b * x)

    def _tile(self, w: Tile) -> None:
        b2 = self.b**2
        t = exact.apply_(torch.exp, w.sum(w.var1, w.var2).mul_(0.5).add_(w.nngp).mul_(b2)).mul_(self.a**2)
        if w.ntk is not None:
            w.ntk.mul_(t).mul_(b2)
        w.nngp.copy_(t)

    def _diag(self, q: torch.Tensor) -> torch.Tensor:
        return exact.elementwise(torch.exp, 2 * self.b**2 * q) * self.a**2


@dataclass(frozen=True)
class Gaussian(Nonlinearity):
    """``phi(x) = a exp(b x^2)``. With ``det = sqrt((1 - 2b q1)(1 - 2b q2) - 4 b^2 K^2)``:

        T = a^2 / det,      Tdot = 4 a^2 b^2 K / det^3

    Finite only while ``4 b q < 1`` for every variance ``q``; ``b <= 0`` is always safe.

    Example:

        >>> net = wn.Serial(wn.Dense(512), wn.Gaussian(b=-0.5), wn.Dense(1))
    """

    a: float = 1.0
    b: float = -1.0

    def __post_init__(self) -> None:
        self._check_floats("a", "b")

    def fn(self, x: torch.Tensor) -> torch.Tensor:
        return self.a * torch.exp(self.b * x * x)

    def _tile(self, w: Tile) -> None:
        det = w.prod(1 - 2 * self.b * w.var1, 1 - 2 * self.b * w.var2)
        det.sub_(w.nngp * w.nngp * (4 * self.b**2)).sqrt_()
        if w.ntk is not None:
            w.ntk.mul_(w.nngp).div_(det.pow(3)).mul_(4 * self.a**2 * self.b**2)
        w.nngp = torch.reciprocal(det).mul_(self.a**2)

    def _diag(self, q: torch.Tensor) -> torch.Tensor:
        return self.a**2 / torch.sqrt(1 - 4 * self.b * q)


@dataclass(frozen=True)
class Rbf(Nonlinearity):
    """Dual of the RBF kernel: ``phi(x) = sqrt(2) sin(sqrt(2 gamma) x + pi/4)`` gives
    ``T = exp(-gamma (q1 + q2 - 2K))`` and ``Tdot = 2 gamma T`` (Rahimi & Recht 2007).

    Example:

        >>> net = wn.Serial(wn.Dense(512), wn.Rbf(gamma=0.5), wn.Dense(1))
    """

    gamma: float = 1.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "gamma", check_float("Rbf", "gamma", self.gamma, minimum=0.0, tensor=True))

    def fn(self, x: torch.Tensor) -> torch.Tensor:
        return math.sqrt(2) * torch.sin(math.sqrt(2 * self.gamma) * x + PI / 4)

    def _tile(self, w: Tile) -> None:
        t = exact.apply_(torch.exp, w.sum(w.var1, w.var2).mul_(-self.gamma).add_(w.nngp * (2 * self.gamma)))
        if w.ntk is not None:
            w.ntk.mul_(t).mul_(2 * self.gamma)
        w.nngp.copy_(t)

    def _diag(self, q: torch.Tensor) -> torch.Tensor:
        return torch.ones_like(q)
