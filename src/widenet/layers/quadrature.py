"""Nonlinearities without closed forms: Gauss-Hermite quadrature over the bivariate Gaussian."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from typing import Callable, Optional

import torch

from .._engine import Tile, exact, safe_sqrt
from .._hermite import gauss_hermite
from .._validate import check_int
from ..errors import ParameterError
from .nonlinearity import Nonlinearity, autograd_derivative

__all__ = ["Elementwise", "Tanh"]

# Bound on the (entries x degree^2) evaluations held in memory at once.
_QUADRATURE_CHUNK = 1 << 21


@dataclass(frozen=True)
class Elementwise(Nonlinearity):
    """Any elementwise nonlinearity ``fn`` (a torch callable), by Gauss-Hermite quadrature.

    With ``u = sqrt(q1) z1`` and ``v = sqrt(q2) (rho z1 + sqrt(1 - rho^2) z2)``,
    ``rho = K / sqrt(q1 q2)``, the rules ``T = E[fn(u) fn(v)]`` and ``Tdot = E[fn'(u) fn'(v)]``
    are evaluated with a ``degree x degree`` tensor-product Gauss-Hermite rule
    (Han et al. 2022, arXiv 2209.04121). Smooth functions of moderate variance (``q`` up to
    about 5) reach a relative error near 1e-7 at the default degree; kinked functions (ReLU,
    sign) converge slowly: use their closed forms. The cost is ``degree^2`` evaluations of
    ``fn`` per kernel entry.

    Args:
        fn: the nonlinearity, applied elementwise to tensors.
        dfn: its derivative; by default computed with autograd.
        degree: number of quadrature nodes per dimension (>= 2).
        name: a label for reprs.

    Example:

        >>> softplus = wn.Elementwise(torch.nn.functional.softplus, name="softplus")
        >>> net = wn.Serial(wn.Dense(512), softplus, wn.Dense(1))
    """

    fn: Callable[[torch.Tensor], torch.Tensor] = field(default=torch.tanh)
    dfn: Optional[Callable[[torch.Tensor], torch.Tensor]] = None
    degree: int = 96
    name: Optional[str] = None

    def __post_init__(self) -> None:
        if not callable(self.fn):
            raise ParameterError(f"{self._name}: fn must be a callable on tensors (got {self.fn!r})")
        if self.dfn is not None and not callable(self.dfn):
            raise ParameterError(f"{self._name}: dfn must be a callable on tensors or None (got {self.dfn!r})")
        object.__setattr__(self, "degree", check_int(self._name, "degree", self.degree, minimum=2))

    def __repr__(self) -> str:
        label = self.name or getattr(self.fn, "__name__", repr(self.fn))
        return f"{type(self).__name__}({label}, degree={self.degree})"

    def _derivative(self) -> Callable[[torch.Tensor], torch.Tensor]:
        return self.dfn if self.dfn is not None else autograd_derivative(self.fn)

    def derivative(self, x: torch.Tensor) -> torch.Tensor:
        return self._derivative()(x)

    def _nodes(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x, w = gauss_hermite(self.degree)
        return (torch.as_tensor(x, dtype=like.dtype, device=like.device),
                torch.as_tensor(w, dtype=like.dtype, device=like.device))

    def _expect(self, f, q1, q2, K, x, w) -> torch.Tensor:
        """``E[f(u) f(v)]`` for flat tensors of equal length."""
        prod = q1 * q2
        rho = torch.where(prod > 0, K / torch.sqrt(torch.where(prod > 0, prod, 1)), 0).clamp_(-1, 1)
        if exact.active():
            # Reproducible mode: every evaluation on the vectorized path, sums in a fixed
            # order per entry, and the mean of both orders of the pair, so that (x', x)
            # gives the value of (x, x') bit for bit.
            f = partial(exact.elementwise, f)
        u = f(torch.sqrt(q1)[:, None] * x[None, :]) * w  # (E, deg)
        mean = (rho[:, None] * x[None, :])[:, :, None]  # (E, deg, 1)
        spread = safe_sqrt(1 - rho * rho)[:, None, None] * x[None, None, :]
        v = f(torch.sqrt(q2)[:, None, None] * (mean + spread))  # (E, deg, deg)
        if not exact.active():
            return torch.einsum("ei,eij,j->e", u, v, w)
        return exact.sum(u * exact.sum(v * w, -1), -1)

    def _expect_pair(self, f, q1, q2, K, x, w) -> torch.Tensor:
        if not exact.active():
            return self._expect(f, q1, q2, K, x, w)
        return self._expect(f, q1, q2, K, x, w).add_(self._expect(f, q2, q1, K, x, w)).mul_(0.5)

    def _tile(self, w: Tile) -> None:
        x, wts = self._nodes(w.nngp)
        r, c = w.outer(w.var1, w.var2)
        q1, q2 = r.expand_as(w.nngp).reshape(-1), c.expand_as(w.nngp).reshape(-1)
        K = w.nngp.reshape(-1)
        chunk = max(1, _QUADRATURE_CHUNK // self.degree**2)
        T = torch.empty_like(K)
        tdot = None if w.ntk is None else torch.empty_like(K)
        dfn = self._derivative() if tdot is not None else None
        for s in range(0, K.numel(), chunk):
            sl = slice(s, s + chunk)
            if tdot is not None:
                tdot[sl] = self._expect_pair(dfn, q1[sl], q2[sl], K[sl], x, wts)
            T[sl] = self._expect_pair(self.fn, q1[sl], q2[sl], K[sl], x, wts)
        if tdot is not None:
            w.ntk.mul_(tdot.view_as(w.ntk))
        w.nngp.copy_(T.view_as(w.nngp))

    def _diag(self, q: torch.Tensor) -> torch.Tensor:
        x, wts = self._nodes(q)
        values = exact.elementwise(self.fn, torch.sqrt(q).reshape(-1, 1) * x[None, :])
        if exact.active():
            return exact.sum(values * values * wts, -1).reshape(q.shape)
        return ((values * values) @ wts).reshape(q.shape)


def _tanh_derivative(x: torch.Tensor) -> torch.Tensor:
    t = torch.tanh(x)
    return 1 - t * t


@dataclass(frozen=True)
class Tanh(Elementwise):
    """``phi(x) = tanh(x)``, by Gauss-Hermite quadrature (no closed form exists).

    Example:

        >>> net = wn.Serial(wn.Dense(512, W_std=1.2), wn.Tanh(), wn.Dense(1))
    """

    fn: Callable = field(default=torch.tanh, init=False, repr=False)
    dfn: Optional[Callable] = field(default=None, init=False, repr=False)
    name: Optional[str] = field(default="tanh", init=False, repr=False)

    def _derivative(self) -> Callable[[torch.Tensor], torch.Tensor]:
        return _tanh_derivative
