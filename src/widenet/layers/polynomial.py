"""Polynomial nonlinearities, with exact kernels for any input variances (Mehler's formula)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from .._engine import Tile
from .._validate import check_float, check_int
from ..errors import ParameterError
from .nonlinearity import Nonlinearity

__all__ = ["Polynomial", "Monomial", "Hermite", "hermite_projection"]


def hermite_projection(coef: tuple[float, ...]) -> np.ndarray:
    """Matrix ``P`` with ``p_l(q) = sum_i P[l, i] q^i`` for ``phi(x) = sum_k coef[k] x^k``.

    With ``x = sqrt(q) z``, ``phi(x) = sum_l q^{l/2} p_l(q) h_l(z)`` in the orthonormal
    probabilists' Hermite basis ``h_l = He_l / sqrt(l!)``, because
    ``z^k = sum_{k = 2i + l} k! / (2^i i! l!) He_l(z)``. Mehler's formula then gives the exact
    kernel ``E[phi(u) phi(v)] = sum_l p_l(q1) p_l(q2) K^l`` for any variances, zero included.
    """
    degree = len(coef) - 1
    P = np.zeros((degree + 1, degree // 2 + 1))
    for k, c in enumerate(coef):
        if c == 0:
            continue
        for i in range(k // 2 + 1):
            l = k - 2 * i
            P[l, i] += c * math.factorial(k) / (2**i * math.factorial(i) * math.sqrt(math.factorial(l)))
    return P


class _PolynomialBase(Nonlinearity):
    """Exact kernels of polynomials for any input variances (Mehler's formula):
    ``T = sum_l p_l(q1) p_l(q2) K^l``, ``Tdot = sum_l l p_l(q1) p_l(q2) K^(l-1)``
    (see ``hermite_projection``)."""

    def _coefficients(self) -> tuple[float, ...]:  # pragma: no cover - overridden
        raise NotImplementedError

    def fn(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.zeros_like(x)
        for c in reversed(self._coefficients()):
            out = out * x + c
        return out

    def _projections(self, q: torch.Tensor) -> list[torch.Tensor]:
        P = hermite_projection(tuple(float(c) for c in self._coefficients()))
        out = []
        for row in P:
            value = torch.zeros_like(q)
            for c in reversed(row.tolist()):
                value = value * q + c
            out.append(value)
        return out

    def _tile(self, w: Tile) -> None:
        p1, p2 = self._projections(w.var1), self._projections(w.var2)
        degree = len(p1) - 1
        K = w.nngp
        if w.ntk is not None:
            if degree == 0:
                w.ntk.zero_()
            else:
                r, c = w.outer(p1[degree], p2[degree])
                tdot = (r * c).mul_(degree)
                for l in range(degree - 1, 0, -1):
                    r, c = w.outer(p1[l], p2[l])
                    tdot.mul_(K).addcmul_(r, c, value=l)
                w.ntk.mul_(tdot)
        r, c = w.outer(p1[degree], p2[degree])
        t = (r * c).expand_as(K).clone()
        for l in range(degree - 1, -1, -1):
            r, c = w.outer(p1[l], p2[l])
            t.mul_(K).addcmul_(r, c)
        K.copy_(t)

    def _diag(self, q: torch.Tensor) -> torch.Tensor:
        ps = self._projections(q)
        out = torch.zeros_like(q)
        for p in reversed(ps):
            out = out * q + p * p
        return out


@dataclass(frozen=True)
class Polynomial(_PolynomialBase):
    """``phi(x) = coef[0] + coef[1] x + ... + coef[n] x^n`` (numpy.polynomial order).

    Example:

        >>> net = wn.Serial(wn.Dense(512), wn.Polynomial((0.0, 1.0, 0.5)), wn.Dense(1))
    """

    coef: tuple = (0.0, 1.0)

    def __post_init__(self) -> None:
        coef = tuple(self.coef) if isinstance(self.coef, (list, tuple, np.ndarray)) else None
        if not coef:
            raise ParameterError(f"Polynomial: coef must be a non-empty sequence of floats (got {self.coef!r})")
        object.__setattr__(
            self, "coef", tuple(check_float("Polynomial", f"coef[{i}]", c) for i, c in enumerate(coef))
        )

    def _coefficients(self) -> tuple[float, ...]:
        return self.coef


@dataclass(frozen=True)
class Monomial(_PolynomialBase):
    """``phi(x) = x^degree``; its kernel follows from Isserlis' theorem (exact, any degree).

    Example:

        >>> net = wn.Serial(wn.Dense(512), wn.Monomial(2), wn.Dense(1))
    """

    degree: int = 1

    def __post_init__(self) -> None:
        object.__setattr__(self, "degree", check_int("Monomial", "degree", self.degree, minimum=0))

    def _coefficients(self) -> tuple[float, ...]:
        return (0.0,) * self.degree + (1.0,)

    def fn(self, x: torch.Tensor) -> torch.Tensor:
        return x**self.degree


@dataclass(frozen=True)
class Hermite(_PolynomialBase):
    """Normalized probabilists' Hermite polynomial ``He_n(x) / sqrt(n!)``.

    For unit-variance pre-activations ``T = K^n`` and ``Tdot = n K^(n-1)``; widenet computes the
    exact kernel for any variance (the general polynomial rule), which reduces to these.

    Example:

        >>> net = wn.Serial(wn.Dense(512), wn.Hermite(3), wn.Dense(1))
    """

    degree: int = 1

    def __post_init__(self) -> None:
        object.__setattr__(self, "degree", check_int("Hermite", "degree", self.degree, minimum=0))

    def _coefficients(self) -> tuple[float, ...]:
        coef = np.polynomial.hermite_e.herme2poly([0] * self.degree + [1])
        return tuple(float(c) / math.sqrt(math.factorial(self.degree)) for c in coef)
