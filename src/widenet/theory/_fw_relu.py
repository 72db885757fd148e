"""ReLU's Gaussian expectations for the finite-width recursions (``theory.finite_width``).

ReLU's derivatives beyond the first are distributions, so the quadrature of ``_fw_gauss``
cannot take them; but every derivative expectation the recursions need is a derivative of a
closed-form Gaussian expectation with respect to the covariance (Price's theorem): with
``T(q_a, q_b, k) = <phi(z_a) phi(z_b)>`` for ``z ~ N(0, [[q_a, k], [k, q_b]])``,

    <phi^(i)(z_a) phi^(j)(z_b)> = 2^(p + r) d^p/dq_a^p d^r/dq_b^r d^s/dk^s T,   i = 2p + s, j = 2r + s,

smooth for distinct inputs (``|rho| < 1``): the arc-cosine kernels ``T = (sqrt(q_a q_b - k^2)
+ (pi - theta) k) / (2 pi)`` and ``<step step> = (pi - theta) / (2 pi)``, ``theta =
arccos(k / sqrt(q_a q_b))`` (Cho & Saul 2009). For one input the combinations the recursions
form are derivatives of products of one variable, moved onto the product: ``d<relu^2>/dq =
1/2``, ``<(relu step)'> = <step> = 1/2``, and the fourth derivatives of ``<relu^2>`` (linear
in q) and ``<step>`` (constant) vanish. Four-point expectations of products of ReLU and its
step over at most two inputs are positively homogeneous, so they reduce to one integral over
the angle, on the arc where the factors are positive, by Gauss-Legendre (exact for the
trigonometric polynomials that appear). Problems of one or two inputs only: the (N, N)
statistics.
"""

from __future__ import annotations

import math

import torch

from ..errors import ParameterError

D = torch.float64


def _kernels(v: torch.Tensor) -> torch.Tensor:
    """``(T, T_step)`` at ``v = (q_a, q_b, k)``."""
    qa, qb, k = v[0], v[1], v[2]
    root = torch.sqrt(qa * qb)
    theta = torch.acos((k / root).clamp(-1, 1))
    return torch.stack([(torch.sqrt(qa * qb - k * k) + (math.pi - theta) * k) / (2 * math.pi),
                        (math.pi - theta) / (2 * math.pi)])


def _relu_moment(q: torch.Tensor, p: int) -> torch.Tensor:
    """``E[relu(z)^p]`` (``p = 0``: ``E[step(z)]``) for ``z ~ N(0, q)``."""
    if p == 0:
        return torch.full_like(q, 0.5)
    return q ** (p / 2) * 2 ** (p / 2) * math.gamma((p + 1) / 2) / (2 * math.sqrt(math.pi))


class ReluExpectations:
    """The expectations ``_fw_recursion.step`` asks for (the interface of ``_fw_gauss.Gauss``),
    for ReLU under covariances ``K`` ``(B, m, m)``, m <= 2."""

    def __init__(self, K: torch.Tensor):
        if K.shape[-1] > 2:
            raise ParameterError(
                "theory.finite_width: for ReLU only the (N, N) statistics are computed (each from a "
                "pair of inputs); the (N, N, N, N) ones need expectations over three and four inputs "
                "of its step function, not supported yet")
        self.K, self.m = K, K.shape[-1]
        self._grad = self._hess = None
        if self.m == 2:
            v = torch.stack([K[:, 0, 0], K[:, 1, 1], K[:, 0, 1]], -1)  # (B, 3)
            vr = torch.stack([K[:, 1, 1], K[:, 0, 0], K[:, 0, 1]], -1)
            both = torch.cat([v, vr])
            rho = K[:, 0, 1] / torch.sqrt(K[:, 0, 0] * K[:, 1, 1])
            if not bool((rho.abs() < 1 - 1e-12).all()):
                raise ParameterError(
                    "theory.finite_width: ReLU's 1/n statistics of two inputs need them not collinear "
                    "(their correlation reaches +-1 in a layer; its derivatives are singular there)")
            self._grad = torch.func.vmap(torch.func.jacrev(_kernels))(both)  # (2B, 2, 3)
            self._hess = torch.func.vmap(torch.func.hessian(_kernels))(both)  # (2B, 2, 3, 3)

    def prepare(self, fluctuations: bool) -> None:
        if fluctuations:
            raise ParameterError(
                "theory.finite_width: for ReLU only the (N, N) statistics are computed; the NTK's "
                "variance, its correlation with the outputs and the dNTK need expectations of its "
                "step function over more inputs, not supported yet")

    def _matrix(self, distinct, diagonal: float) -> torch.Tensor:
        """``(B, m, m)`` with ``distinct`` ``(2B,)`` off the diagonal (``[0, 1]`` then ``[1, 0]``)."""
        B = self.K.shape[0]
        out = torch.full((B, self.m, self.m), diagonal, dtype=D)
        if self.m == 2:
            out[:, 0, 1], out[:, 1, 0] = distinct[:B], distinct[B:]
        return out

    def _d1(self, which: int, var: int):
        return None if self._grad is None else self._grad[:, which, var]

    def _d2(self, which: int, u: int, v: int):
        return None if self._hess is None else self._hess[:, which, u, v]

    def pair(self, base: int) -> tuple:
        # distinct: (dT/dq_a, 1/2 dT/dk, dT/dq_b); one input: d<phi^2>/dq = 1/2 for ReLU, 0 for its step
        d = self._d1
        diag = 0.5 if base == 0 else 0.0
        return (self._matrix(d(base, 0), diag), self._matrix(None if d(base, 2) is None else 0.5 * d(base, 2), 0.0),
                self._matrix(d(base, 1), 0.0))

    def first(self) -> tuple:
        d = self._d1
        return (self._matrix(None if d(0, 0) is None else 2 * d(0, 0), 0.5), self._matrix(d(0, 2), 0.0))

    def placements(self, base: int) -> list:
        # <phi^(k) phi^(4-k)> = 4 T_aa, 2 T_ak, T_kk, 2 T_bk, 4 T_bb (k = 4 .. 0 on the first factor)
        h = self._d2
        scale = {0: (1, 1, 4.0), 1: (1, 2, 2.0), 2: (2, 2, 1.0), 3: (0, 2, 2.0), 4: (0, 0, 4.0)}
        out = []
        for k in range(5):
            u, v, c = scale[k]
            out.append(self._matrix(None if h(base, u, v) is None else c * h(base, u, v), 0.0))
        return out

    def four(self, pattern: tuple) -> torch.Tensor:
        """``<f_(p0)(z_a) f_(p1)(z_b) f_(p2)(z_c) f_(p3)(z_d)>`` over index tuples of the m inputs,
        ``f_0`` ReLU and ``f_1`` its step."""
        B, m = self.K.shape[0], self.m
        out = torch.empty((B,) + (m,) * 4, dtype=D)
        for idx in torch.cartesian_prod(*[torch.arange(m)] * 4).tolist():
            degree = [0] * m
            step = [False] * m
            for slot, u in enumerate(idx):
                if pattern[slot] == 0:
                    degree[u] += 1
                else:
                    step[u] = True
            out[(slice(None),) + tuple(idx)] = self._homogeneous(degree, step)
        return out

    def _homogeneous(self, degree: list, step: list) -> torch.Tensor:
        """``E[prod_u relu(z_u)^degree_u]`` (a factor ``step(z_u)`` where degree is 0 and
        ``step[u]``); factors of degree 0 without a step are 1."""
        used = [u for u in range(self.m) if degree[u] > 0 or step[u]]
        K = self.K
        if not used:
            return torch.ones(K.shape[0], dtype=D)
        if len(used) == 1:
            u = used[0]
            return _relu_moment(K[:, u, u], degree[u])
        # E[g(z)] for g positively homogeneous of degree r: c_r / (2 pi) * integral of g(L u(t)) dt
        p, q = degree[0], degree[1]
        r = p + q
        l00 = K[:, 0, 0].sqrt()
        l10 = K[:, 1, 0] / l00
        l11 = (K[:, 1, 1] - l10**2).clamp_min(0).sqrt()
        phase = torch.atan2(l11, l10)  # z_1 = |l1| cos(t - phase), positive for |t - phase| < pi/2
        lo, hi = phase - math.pi / 2, torch.full_like(phase, math.pi / 2)
        x, w = _legendre(48)
        t = lo[:, None] + (hi - lo)[:, None] * (x + 1) / 2
        z0 = l00[:, None] * torch.cos(t)
        z1 = K[:, 1, 1].sqrt()[:, None] * torch.cos(t - phase[:, None])
        integrand = z0**p * z1**q
        radial = 2 ** (r / 2) * math.gamma(r / 2 + 1)
        return radial / (2 * math.pi) * (integrand * w).sum(-1) * (hi - lo) / 2


def _legendre(n: int):
    import numpy as np

    x, w = np.polynomial.legendre.leggauss(n)
    return torch.as_tensor(x, dtype=D), torch.as_tensor(w, dtype=D)
