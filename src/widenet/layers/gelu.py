"""The exact GELU, ``phi(x) = x Phi(x)``."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .._engine import Tile, exact
from ._arccos import PI
from .nonlinearity import Nonlinearity

__all__ = ["Gelu"]


@dataclass(frozen=True)
class Gelu(Nonlinearity):
    """``phi(x) = x Phi(x)`` (exact GELU). With ``P = (q1 + 1)(q2 + 1)``, ``delta = sqrt(P - K^2)``
    and ``A = atan2(K, delta)`` (Tsuchida et al. 2020, arXiv 2002.08517):

        T    = K/4 + [(K^2 + q1 q2 delta^2) / (P delta) + K A] / (2 pi)
        Tdot = 1/4 + A/(2 pi) + K / (2 pi delta) [1/delta^2 + (1 - q1 q2)/P + 1]

    Example:

        >>> net = wn.Serial(wn.Dense(512), wn.Gelu(), wn.Dense(1))
    """

    def fn(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.gelu(x)

    def _tile(self, w: Tile) -> None:
        K = w.nngp
        prod = w.prod(w.var1, w.var2)
        prod1 = w.prod(w.var1 + 1, w.var2 + 1)
        delta2 = prod1 - K * K
        delta = delta2.sqrt()
        angle = exact.elementwise(torch.atan2, K, delta)
        if w.ntk is not None:
            tdot = (1 - prod).div_(prod1).add_(1).add_(delta2.reciprocal())
            tdot.mul_(K).div_(delta).add_(angle).div_(2 * PI).add_(0.25)
            w.ntk.mul_(tdot)
        new = torch.addcmul(K * K, prod, delta2).div_(prod1.mul_(delta))
        new.addcmul_(K, angle).div_(2 * PI).add_(K, alpha=0.25)
        K.copy_(new)

    def _diag(self, q: torch.Tensor) -> torch.Tensor:
        root = torch.sqrt(1 + 2 * q)
        out = q / ((q + 1) * root) + exact.elementwise(torch.atan2, q, root) / 2
        return (out / PI + 0.25) * q
