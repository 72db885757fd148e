"""The ReLU family's Gaussian expectations for the finite-width recursions
(``theory.finite_width``): ``phi(z) = a min(z, 0) + b max(z, 0)`` (``ABRelu``, ``Relu``,
``LeakyRelu``, ``Abs``).

Its derivatives beyond the first are distributions, so the quadrature of ``_fw_gauss`` cannot
take them; but every derivative expectation the recursions need is a derivative of a
closed-form Gaussian expectation with respect to the covariance (Price's theorem): with
``T(q_a, q_b, k) = <phi(z_a) phi(z_b)>`` for ``z ~ N(0, [[q_a, k], [k, q_b]])``,

    <phi^(i)(z_a) phi^(j)(z_b)> = 2^(p + r) d^p/dq_a^p d^r/dq_b^r d^s/dk^s T,   i = 2p + s, j = 2r + s,

smooth for distinct inputs (``|rho| < 1``): with ``theta = arccos(k / sqrt(q_a q_b))``,
``T = (a - b)^2 sqrt(q_a q_b - k^2) / (2 pi) + ((a^2 + b^2) / 2 - (a - b)^2 theta / (2 pi)) k``
and ``<phi' phi'> = (a^2 + b^2) / 2 - (a - b)^2 theta / (2 pi)`` (Cho & Saul 2009, the layer's
own kernel rule). For one input the combinations the recursions form are derivatives of
products of one variable, moved onto the product: ``d<phi^2>/dq = (a^2 + b^2) / 2``,
``<(phi' phi)'> = <phi'^2> = (a^2 + b^2) / 2`` (``phi(0) = 0``), and the fourth derivatives of
``<phi^2>`` (linear in q) and ``<phi'^2>`` (constant) vanish. Four-point expectations of
products of phi and phi' over at most two inputs are sums over sign quadrants of positively
homogeneous functions, each one integral over the angle, on the arc of the quadrant, by
Gauss-Legendre (exact for the trigonometric polynomials that appear). Problems of one or two
inputs only: the (N, N) statistics.
"""

from __future__ import annotations

import math

import torch

from ..errors import ParameterError

D = torch.float64


def _kernels(v: torch.Tensor, a: float, b: float) -> torch.Tensor:
    """``(T, <phi' phi'>)`` at ``v = (q_a, q_b, k)``."""
    qa, qb, k = v[0], v[1], v[2]
    theta = torch.acos((k / torch.sqrt(qa * qb)).clamp(-1, 1))
    slope = (a * a + b * b) / 2 - (a - b) ** 2 * theta / (2 * math.pi)
    return torch.stack([(a - b) ** 2 * torch.sqrt(qa * qb - k * k) / (2 * math.pi) + slope * k, slope])


def _half_moment(q: torch.Tensor, p: int) -> torch.Tensor:
    """``E[z^p 1{z > 0}]`` for ``z ~ N(0, q)``."""
    if p == 0:
        return torch.full_like(q, 0.5)
    return q ** (p / 2) * 2 ** (p / 2) * math.gamma((p + 1) / 2) / (2 * math.sqrt(math.pi))


class RectifiedExpectations:
    """The expectations ``_fw_recursion.step`` asks for (the interface of ``_fw_gauss.Gauss``),
    for ``a min(z, 0) + b max(z, 0)`` under covariances ``K`` ``(B, m, m)``, m <= 2."""

    pathwise_second = False  # phi'' vanishes almost surely: the dNTK's terms in phi'' drop

    def __init__(self, K: torch.Tensor, a: float, b: float):
        if K.shape[-1] > 2:
            raise ParameterError(
                "theory.finite_width: for the ReLU family only the (N, N) statistics are computed (each "
                "from a pair of inputs), and the (N, N, N, N) ones of one or two inputs; those of more "
                "inputs need expectations of the activation and its step over three and four inputs, "
                "not supported yet")
        self.K, self.m, self.a, self.b = K, K.shape[-1], a, b
        self._grad = self._hess = None
        if self.m == 2:
            rho = K[:, 0, 1] / torch.sqrt(K[:, 0, 0] * K[:, 1, 1])
            if not bool((rho.abs() < 1 - 1e-12).all()):
                raise ParameterError(
                    "theory.finite_width: the ReLU family's 1/n statistics of two inputs need them not "
                    "collinear (their correlation reaches +-1 in a layer; its derivatives are singular there)")
            v = torch.stack([K[:, 0, 0], K[:, 1, 1], K[:, 0, 1]], -1)  # (B, 3): [0, 1] entries
            vr = torch.stack([K[:, 1, 1], K[:, 0, 0], K[:, 0, 1]], -1)  # [1, 0]
            both = torch.cat([v, vr])
            fn = lambda t: _kernels(t, a, b)  # noqa: E731
            self._grad = torch.func.vmap(torch.func.jacrev(fn))(both)  # (2B, 2, 3)
            self._hess = torch.func.vmap(torch.func.hessian(fn))(both)  # (2B, 2, 3, 3)

    def prepare(self, variance: bool, dntk: bool) -> None:
        pass

    def _matrix(self, distinct, diagonal: float) -> torch.Tensor:
        """``(B, m, m)`` with ``distinct`` ``(2B,)`` off the diagonal (``[0, 1]`` then ``[1, 0]``)."""
        B = self.K.shape[0]
        out = torch.full((B, self.m, self.m), diagonal, dtype=D)
        if self.m == 2:
            out[:, 0, 1], out[:, 1, 0] = distinct[:B], distinct[B:]
        return out

    def _d1(self, which: int, var: int, scale: float = 1.0):
        return None if self._grad is None else scale * self._grad[:, which, var]

    def pair(self, base: int) -> tuple:
        # distinct: (dT/dq_a, 1/2 dT/dk, dT/dq_b); one input: d<phi^2>/dq, d<phi'^2>/dq = 0
        one = (self.a**2 + self.b**2) / 2 if base == 0 else 0.0
        return (self._matrix(self._d1(base, 0), one), self._matrix(self._d1(base, 2, 0.5), 0.0),
                self._matrix(self._d1(base, 1), 0.0))

    def first(self) -> tuple:
        # distinct: <phi''_a phi_c> = 2 dT/dq_a, <phi'_a phi'_c> = dT/dk; one input: <(phi' phi)'>
        return (self._matrix(self._d1(0, 0, 2.0), (self.a**2 + self.b**2) / 2), self._matrix(self._d1(0, 2), 0.0))

    def placements(self, base: int) -> list:
        # <phi^(k) phi^(4-k)> = 4 T_bb, 2 T_bk, T_kk, 2 T_ak, 4 T_aa for k = 0 .. 4 on the first factor
        which = {0: (1, 1, 4.0), 1: (1, 2, 2.0), 2: (2, 2, 1.0), 3: (0, 2, 2.0), 4: (0, 0, 4.0)}
        out = []
        for k in range(5):
            u, v, c = which[k]
            out.append(self._matrix(None if self._hess is None else c * self._hess[:, base, u, v], 0.0))
        return out

    def four(self, pattern: tuple) -> torch.Tensor:
        """``<g_(p0)(z_a) g_(p1)(z_b) g_(p2)(z_c) g_(p3)(z_d)>`` over index tuples of the m inputs,
        ``g_0 = phi`` and ``g_1 = phi'``."""
        B, m = self.K.shape[0], self.m
        out = torch.empty((B,) + (m,) * 4, dtype=D)
        for idx in torch.cartesian_prod(*[torch.arange(m)] * 4).tolist():
            degree, factors = [0] * m, [0] * m
            for slot, u in enumerate(idx):
                degree[u] += pattern[slot] == 0
                factors[u] += 1
            out[(slice(None),) + tuple(idx)] = self._product(degree, factors)
        return out

    def _product(self, degree: list, factors: list) -> torch.Tensor:
        """``E[prod_u g_u(z_u)]`` where ``g_u`` is a product of ``factors[u]`` functions, phi for
        ``degree[u]`` of them and phi' for the rest: ``b^f z^p`` for z > 0, ``a^f z^p`` below."""
        K = self.K
        used = [u for u in range(self.m) if factors[u]]
        if not used:
            return torch.ones(K.shape[0], dtype=D)
        sides = {u: (self.b ** factors[u], self.a ** factors[u]) for u in used}  # (z > 0, z < 0)
        if len(used) == 1:
            u = used[0]
            p = degree[u]
            up, down = sides[u]
            return (up + (-1) ** p * down) * _half_moment(K[:, u, u], p)
        p, q = degree
        l00 = K[:, 0, 0].sqrt()
        l10 = K[:, 1, 0] / l00
        l11 = (K[:, 1, 1] - l10**2).clamp_min(0).sqrt()
        phase = torch.atan2(l11, l10)  # z_1 = sqrt(q_1) cos(t - phase); z_0 = sqrt(q_0) cos t
        x, w = _legendre(48)
        radial = 2 ** ((p + q) / 2) * math.gamma((p + q) / 2 + 1) / (2 * math.pi)
        total = 0
        for s0, c0 in ((0.0, sides[0][0]), (math.pi, sides[0][1])):
            for s1, c1 in ((0.0, sides[1][0]), (math.pi, sides[1][1])):
                if c0 == 0 or c1 == 0:
                    continue
                # the arcs where z_0 has the sign of cos(s0) and z_1 that of cos(s1): half
                # circles centred at s0 and phase + s1; their intersection
                centre = phase + s1
                gap = torch.remainder(centre - s0 + math.pi, 2 * math.pi) - math.pi
                lo = torch.maximum(torch.zeros_like(gap), gap) + s0 - math.pi / 2
                hi = torch.minimum(torch.zeros_like(gap), gap) + s0 + math.pi / 2
                t = lo[:, None] + (hi - lo)[:, None] * (x + 1) / 2
                integrand = (l00[:, None] * torch.cos(t)) ** p * (K[:, 1, 1].sqrt()[:, None] * torch.cos(t - phase[:, None])) ** q
                total = total + c0 * c1 * (integrand * w).sum(-1) * (hi - lo) / 2
        return radial * total


def _legendre(n: int):
    import numpy as np

    x, w = np.polynomial.legendre.leggauss(n)
    return torch.as_tensor(x, dtype=D), torch.as_tensor(w, dtype=D)
