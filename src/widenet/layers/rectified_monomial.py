"""Rectified monomials ``max(x, 0)^n``: Cho & Saul's arc-cosine kernels of any degree."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .._engine import Tile
from .._validate import check_int
from ._arccos import PI, angles, arccos_terms, double_factorial, sin_root
from .nonlinearity import Nonlinearity

__all__ = ["RectifiedMonomial"]


@dataclass(frozen=True)
class RectifiedMonomial(Nonlinearity):
    """``phi(x) = max(x, 0)^degree`` (``degree=0`` is the Heaviside step).

    ``T = (q1 q2)^{n/2} J_n(theta) / (2 pi)`` with Cho & Saul's arc-cosine ``J_n`` and
    ``Tdot = n^2 T_{n-1}`` (Cho & Saul 2009). ``J_n`` is expanded exactly into powers of
    ``K`` and ``sqrt(q1 q2 - K^2)``, so no division by the variances occurs.

    Example:

        >>> net = wn.Serial(wn.Dense(512), wn.RectifiedMonomial(2), wn.Dense(1))
    """

    degree: int = 1

    def __post_init__(self) -> None:
        object.__setattr__(self, "degree", check_int("RectifiedMonomial", "degree", self.degree, minimum=0))

    def fn(self, x: torch.Tensor) -> torch.Tensor:
        return torch.where(x >= 0, torch.clamp(x, min=0) ** self.degree, torch.zeros_like(x))

    @staticmethod
    def _t(n: int, K: torch.Tensor, root: torch.Tensor, rest: torch.Tensor) -> torch.Tensor:
        out = torch.zeros_like(K)
        for a, i, j, k in arccos_terms(n):
            term = K**i * root**j if i or j else torch.ones_like(K)
            out += (a * term * rest) if k else (a * term)
        return out / (2 * PI)

    def _tile(self, w: Tile) -> None:
        root = sin_root(w)
        rest = angles(w, root).neg_().add_(PI)  # pi - theta
        n = self.degree
        if w.ntk is not None:
            if n == 0:
                w.ntk.zero_()
            else:
                w.ntk.mul_(self._t(n - 1, w.nngp, root, rest)).mul_(n * n)
        w.nngp.copy_(self._t(n, w.nngp, root, rest))
        if n == 0 and w.zero_variance_mask() is not None:
            # The step function has phi(0) = 1: against a zero-variance input the kernel is
            # P(v >= 0) = 1/2, and 1 when both inputs are identically zero.
            dtype = w.nngp.dtype
            r, c = w.outer((w.var1 == 0).to(dtype), (w.var2 == 0).to(dtype))
            w.nngp.copy_(torch.where((r + c) > 0, 0.5 * (1 + r * c), w.nngp))

    def _diag(self, q: torch.Tensor) -> torch.Tensor:
        if self.degree == 0:
            return torch.where(q == 0, 1.0, 0.5).to(q.dtype)
        return q**self.degree * (double_factorial(2 * self.degree - 1) / 2)
