"""The sign function, whose kernel is the arcsine of the correlation."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .._engine import Tile
from ._arccos import PI, angles, sin_root
from .nonlinearity import Nonlinearity

__all__ = ["Sign"]


@dataclass(frozen=True)
class Sign(Nonlinearity):
    """``phi(x) = sign(x)``: ``T = 1 - 2 theta / pi = (2/pi) arcsin(rho)``; its derivative is
    zero almost everywhere, so it contributes nothing to the NTK (``Theta' = 0``).

    Example:

        >>> net = wn.Serial(wn.Dense(512), wn.Sign(), wn.Dense(1))
    """

    def fn(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sign(x)

    def _tile(self, w: Tile) -> None:
        theta = angles(w, sin_root(w))
        w.nngp.copy_(theta.mul_(-2 / PI).add_(1.0))
        zero = w.zero_variance_mask()
        if zero is not None:
            w.nngp.masked_fill_(zero, 0.0)  # sign(0) = 0
        if w.ntk is not None:
            w.ntk.zero_()

    def _diag(self, q: torch.Tensor) -> torch.Tensor:
        return (q > 0).to(q.dtype)
