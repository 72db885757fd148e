"""Exact symbolic pieces behind the polynomial and rectified-monomial kernels."""

from __future__ import annotations

from collections import defaultdict
from functools import lru_cache
from math import comb, factorial, sqrt

import numpy as np


@lru_cache(maxsize=None)
def arccos_terms(n: int) -> tuple[tuple[int, int, int, int], ...]:
    """Cho & Saul's arc-cosine function ``J_n(theta)`` as a homogeneous polynomial.

    ``J_n = (-1)^n sin^{2n+1}(theta) (1/sin d/dtheta)^n ((pi - theta)/sin theta)``
    (Cho & Saul 2009, eq. 4). Returns terms ``(coef, i, j, k)`` meaning
    ``coef * cos^i * sin^j * (pi - theta)^k`` with ``i + j = n``, so that
    ``(q1 q2)^{n/2} J_n = sum coef * K^i * S^j * (pi - theta)^k`` with ``S = sqrt(q1 q2 - K^2)``.
    """
    terms = {(0, -1, 1): 1}
    for _ in range(n):
        new = defaultdict(int)
        for (i, j, k), a in terms.items():
            if i:
                new[(i - 1, j, k)] -= i * a
            if j:
                new[(i + 1, j - 2, k)] += j * a
            if k:
                new[(i, j - 1, k - 1)] -= k * a
        terms = {key: v for key, v in new.items() if v}
    sign = -1 if n % 2 else 1
    homogeneous = defaultdict(int)
    for (i, j, k), a in terms.items():
        j += 2 * n + 1
        m = (n - i - j) // 2  # cos^2 + sin^2 = 1 lifts every term to degree n
        for t in range(m + 1):
            homogeneous[(i + 2 * t, j + 2 * (m - t), k)] += sign * a * comb(m, t)
    return tuple((a, i, j, k) for (i, j, k), a in sorted(homogeneous.items()) if a)


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
            P[l, i] += c * factorial(k) / (2**i * factorial(i) * sqrt(factorial(l)))
    return P


def double_factorial(n: int) -> int:
    out = 1
    while n > 1:
        out *= n
        n -= 2
    return out
