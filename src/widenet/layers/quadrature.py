"""Nonlinearities without closed forms: Gauss-Hermite quadrature over the bivariate Gaussian."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from functools import partial
from typing import Callable, Optional

import torch

from .._engine import Tile, exact, safe_sqrt, scratch
from .._hermite import gauss_hermite
from .._validate import check_int
from ..errors import AccuracyWarning, ParameterError
from .nonlinearity import Nonlinearity, autograd_derivative

__all__ = ["Elementwise"]

# Bound on the (entries x degree^2) evaluations held in memory at once.
_QUADRATURE_CHUNK = 1 << 21
# The relative accuracy below which a rule warns (AccuracyWarning).
ACCURACY = 1e-6


@dataclass(frozen=True)
class Elementwise(Nonlinearity):
    """Any elementwise nonlinearity ``fn`` (a torch callable), by Gauss-Hermite quadrature.

    With ``u = sqrt(q1) z1`` and ``v = sqrt(q2) (rho z1 + sqrt(1 - rho^2) z2)``,
    ``rho = K / sqrt(q1 q2)``, the rules ``T = E[fn(u) fn(v)]`` and ``Tdot = E[fn'(u) fn'(v)]``
    are evaluated with a ``degree x degree`` tensor-product Gauss-Hermite rule
    (Han et al. 2022, arXiv 2209.04121). Smooth functions of moderate variance reach a
    relative error near 1e-7 at the default degree; at large variances a smooth function looks
    kinked to the nodes and the error grows (percents for tanh at variance 30), and every call
    checks its own variances against a rule of twice the degree and issues an
    ``AccuracyWarning`` with the numbers where they move by more than 1e-6. Kinked functions
    (ReLU, sign) converge slowly: use their closed forms, and ``wn.Tanh`` for tanh. The cost
    is ``degree^2`` evaluations of ``fn`` per kernel entry.

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
            out = exact.sum(values * values * wts, -1).reshape(q.shape)
        else:
            out = ((values * values) @ wts).reshape(q.shape)
        self._check_accuracy(q, out)
        return out

    def _check_accuracy(self, q: torch.Tensor, value: torch.Tensor) -> None:
        """Warns when the rule's own variances ``E[fn(sqrt(q) z)^2]`` move by more than
        ``ACCURACY`` under a rule of twice the degree: the same nodes per axis carry the
        bivariate rule, so its error is at least as large there (large variances make
        smooth functions look kinked to the nodes)."""
        if q.numel() == 0 or not scratch.plain(q):
            return
        with torch.no_grad():
            x, wts = gauss_hermite(2 * self.degree)
            x = torch.as_tensor(x, dtype=torch.float64)
            wts = torch.as_tensor(wts, dtype=torch.float64)
            qd = q.detach().reshape(-1).to(torch.float64)
            finer = (self.fn(torch.sqrt(qd)[:, None] * x[None, :]) ** 2) @ wts
            error = (value.detach().reshape(-1).to(torch.float64) - finer).abs() / finer.abs().clamp_min(1e-300)
        worst = int(error.argmax())
        if float(error[worst]) > ACCURACY:
            warnings.warn(
                f"{self!r}: Gauss-Hermite quadrature at degree {self.degree} is accurate to only "
                f"{float(error[worst]):.1e} (relative) at pre-activation variance {float(qd[worst]):.3g} "
                f"(its variances against degree {2 * self.degree}); raise degree= (the cost grows as "
                f"degree^2) or use a closed form (wn.Tanh, wn.Erf, wn.Gelu, ...)",
                AccuracyWarning, stacklevel=2)
