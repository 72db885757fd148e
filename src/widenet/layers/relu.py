"""The ReLU family: ``phi(x) = a min(x, 0) + b max(x, 0)`` (ReLU, leaky ReLU, absolute value).

Their kernels are Cho & Saul's arc-cosine kernels ``J1`` and ``J0`` (Cho & Saul 2009),
written with the angle ``theta = atan2(sqrt(q1 q2 - K^2), K)`` between the inputs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .._engine import Tile, compiled, exact, fused
from ._arccos import PI, atan2, exact_atan2, root_of
from .nonlinearity import Nonlinearity

__all__ = ["ABRelu", "Relu", "LeakyRelu", "Abs"]


def _abrelu_rule(nngp, ntk, q1, q2, zero, factor, half, atan2=atan2):
    """ABRelu's rule on a tile, in place: ``tdot = half - factor * theta``, ``Theta *= tdot``,
    ``K = K tdot + factor sqrt(q1 q2 - K^2)``; ``q1``/``q2`` broadcast against the tile and
    ``zero`` marks pairs with a zero variance (or is None). Compiled when asked
    (:mod:`widenet._engine.compiled`); reproducible mode passes its own ``atan2``."""
    root = root_of(nngp, q1, q2)
    tdot = atan2(root, nngp)
    if zero is not None:
        tdot.masked_fill_(zero, PI / 2)
    tdot = exact.scale_add_(tdot, -factor, half)
    if ntk is not None:
        ntk.mul_(tdot)
    if isinstance(factor, torch.Tensor):
        nngp.mul_(tdot).add_(root.mul_(factor))
    else:
        nngp.mul_(tdot).add_(root, alpha=factor)
    return nngp, ntk


def _fused(w: Tile, var1: torch.Tensor, var2: torch.Tensor, factor, half) -> bool:
    """The rule as one pass (:mod:`widenet._engine.fused`) on a grid tile, where it applies."""
    nngp, ntk = w.nngp, w.ntk
    if (w.self_mode or compiled.compile_enabled() or not nngp.is_contiguous()
            or (ntk is not None and not ntk.is_contiguous())
            or not fused.enabled(nngp, ntk, var1, var2, factor, half)):
        return False
    b, c = nngp.shape[:2]
    if w.is_full:  # rows (b, c, s): q1 one variance per (b, s), q2 a row of position variances
        n = w.npos
        fused.abrelu(nngp, ntk, var1.reshape(b * n), var2.reshape(c, n), C=c, S=n, L=n, q1_scalar=True,
                     factor=float(factor), half=float(half))
    elif w.spatial:  # rows (b, c): both rows of variances at the same positions
        n = w.npos
        fused.abrelu(nngp, ntk, var1.reshape(b, n), var2.reshape(c, n), C=c, S=1, L=n, q1_scalar=False,
                     factor=float(factor), half=float(half))
    else:  # rows b: q1 one variance per row, q2 the column inputs'
        fused.abrelu(nngp, ntk, var1.reshape(b), var2.reshape(1, c), C=1, S=1, L=c, q1_scalar=True,
                     factor=float(factor), half=float(half))
    return True


@dataclass(frozen=True)
class ABRelu(Nonlinearity):
    """``phi(x) = a min(x, 0) + b max(x, 0)``.

    With ``theta`` the angle between the inputs (Cho & Saul 2009; Pedamonti 2018)::

        T    = (a - b)^2 / (2 pi) sqrt(q1 q2 - K^2) + [(a^2 + b^2)/2 - (a - b)^2 theta / (2 pi)] K
        Tdot = (a^2 + b^2)/2 - (a - b)^2 theta / (2 pi)

    Example::

        >>> net = wn.Serial(wn.Dense(512), wn.ABRelu(-0.5, 1.0), wn.Dense(1))
    """

    a: float = 0.0
    b: float = 1.0

    def __post_init__(self) -> None:
        self._check_floats("a", "b")

    def fn(self, x: torch.Tensor) -> torch.Tensor:
        return self.a * torch.clamp(x, max=0) + self.b * torch.clamp(x, min=0)

    def _tile(self, w: Tile) -> None:
        factor = (self.a - self.b) ** 2 / (2 * PI)
        half = (self.a**2 + self.b**2) / 2
        var1, var2 = w.var1, w.var2
        if _fused(w, var1, var2, factor, half):
            return
        w.nngp, w.ntk = compiled.run_rule(_abrelu_rule, w.nngp, w.ntk, *w.outer(var1, var2),
                                          w.zero_variance_mask(var1, var2), factor, half,
                                          atan2=exact_atan2)

    def _diag(self, q: torch.Tensor) -> torch.Tensor:
        return q * ((self.a**2 + self.b**2) / 2)


@dataclass(frozen=True)
class Relu(ABRelu):
    """``phi(x) = max(x, 0)``: ``T = sqrt(q1 q2)/(2 pi) (sin theta + (pi - theta) cos theta)``,
    ``Tdot = (pi - theta) / (2 pi)`` (arc-cosine kernels J1, J0; Cho & Saul 2009).

    Example::

        >>> wn.Serial(wn.Dense(512), wn.Relu(), wn.Dense(1)).kernel(torch.randn(5, 3)).ntk.shape
        torch.Size([5, 5])
    """

    a: float = field(default=0.0, init=False, repr=False)
    b: float = field(default=1.0, init=False, repr=False)

    def fn(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x)


@dataclass(frozen=True)
class LeakyRelu(ABRelu):
    """``phi(x) = max(x, 0) + alpha min(x, 0)`` (= ``ABRelu(alpha, 1)``).

    Example::

        >>> net = wn.Serial(wn.Dense(512), wn.LeakyRelu(0.1), wn.Dense(1))
    """

    alpha: float = 0.01
    a: float = field(default=0.0, init=False, repr=False)
    b: float = field(default=1.0, init=False, repr=False)

    def __post_init__(self) -> None:
        self._check_floats("alpha")
        object.__setattr__(self, "a", self.alpha)


@dataclass(frozen=True)
class Abs(ABRelu):
    """``phi(x) = |x|`` (= ``ABRelu(-1, 1)``).

    Example::

        >>> net = wn.Serial(wn.Dense(512), wn.Abs(), wn.Dense(1))
    """

    a: float = field(default=-1.0, init=False, repr=False)
    b: float = field(default=1.0, init=False, repr=False)

    def fn(self, x: torch.Tensor) -> torch.Tensor:
        return torch.abs(x)
