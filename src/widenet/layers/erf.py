"""Erf-shaped nonlinearities, ``phi(x) = a erf(b x) + c`` (Williams 1997)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .._engine import Tile, compiled, exact, scratch
from ._arccos import PI
from .nonlinearity import Nonlinearity

__all__ = ["Erf", "SigmoidLike"]


def _atan2_(y, x):
    return y.atan2_(x)


def _exact_atan2_(y, x):
    return exact.apply_(torch.atan2, y, x)


def _erf_rule(nngp, ntk, p1, p2, scale, ntk_scale, nngp_scale, shift, atan2_=_atan2_):
    """Erf's rule on a tile, in place: with ``K`` scaled by ``scale`` and ``p1 p2`` the
    broadcast products ``(1 + 2 b^2 q1)(1 + 2 b^2 q2)``, ``r = sqrt(p1 p2 - K^2)``,
    ``Theta *= ntk_scale / r`` and ``K = nngp_scale atan2(K, r) + shift``."""
    root = scratch.call(torch.mul, p1, p2)
    nngp.mul_(scale)
    root.addcmul_(nngp, nngp, value=-1.0).sqrt_()
    if ntk is not None:
        ntk.div_(root).mul_(ntk_scale)
    atan2_(nngp, root).mul_(nngp_scale).add_(shift)
    return nngp, ntk


@dataclass(frozen=True)
class Erf(Nonlinearity):
    """``phi(x) = a erf(b x) + c`` (Williams 1997). With ``K, q`` first scaled by ``b^2``:

        T    = (2/pi) arcsin(2K / sqrt((1 + 2 q1)(1 + 2 q2)))
        Tdot = (4/pi) / sqrt((1 + 2 q1)(1 + 2 q2) - 4 K^2)

    then ``K' = a^2 T + c^2`` and ``Theta' = a^2 b^2 Tdot Theta``.

    Example:

        >>> net = wn.Serial(wn.Dense(512, W_std=1.5), wn.Erf(), wn.Dense(1))
    """

    a: float = 1.0
    b: float = 1.0
    c: float = 0.0

    def __post_init__(self) -> None:
        self._check_floats("a", "b", "c")

    def fn(self, x: torch.Tensor) -> torch.Tensor:
        return self.a * torch.erf(self.b * x) + self.c

    def _tile(self, w: Tile) -> None:
        b2 = self.b**2
        w.nngp, w.ntk = compiled.run_rule(_erf_rule, w.nngp, w.ntk,
                                          *w.outer(1 + 2 * b2 * w.var1, 1 + 2 * b2 * w.var2),
                                          2 * b2, 4 / PI * b2 * self.a**2, 2 / PI * self.a**2,
                                          self.c**2, atan2_=_exact_atan2_)

    def _diag(self, q: torch.Tensor) -> torch.Tensor:
        q = q * self.b**2
        return exact.elementwise(torch.atan2, q, torch.sqrt(q + 0.25)) * (2 / PI * self.a**2) + self.c**2


@dataclass(frozen=True)
class SigmoidLike(Erf):
    """A sigmoid-shaped erf, ``0.5 erf(x / 2.4020563531719796) + 0.5`` (the constant minimizes
    the squared distance to the logistic sigmoid on [-5, 5]).

    Example:

        >>> net = wn.Serial(wn.Dense(512), wn.SigmoidLike(), wn.Dense(1))
    """

    a: float = field(default=0.5, init=False, repr=False)
    b: float = field(default=1 / 2.4020563531719796, init=False, repr=False)
    c: float = field(default=0.5, init=False, repr=False)
