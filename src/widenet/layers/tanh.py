"""``tanh`` exactly, as a scale mixture of erfs (Stefanski 1991).

The logistic distribution is a scale mixture of normals (Andrews & Mallows 1974; Stefanski
1991): ``sigmoid(x) = E_K[Phi(x / (2K))]`` with ``K`` Kolmogorov-distributed, so

    tanh(x) = E_b[erf(b x)],    b = 1 / (sqrt(2) K).

Each ``erf(b x)`` has Williams' (1997) closed form, so with ``a_i(q) = sqrt(2) b_i /
sqrt(1 + 2 b_i^2 q)`` and ``x_ij = K a_i(q1) a_j(q2)``:

    T    = E[tanh(u) tanh(v)]   = (2/pi) sum_ij w_i w_j arcsin(x_ij)
    Tdot = E[tanh'(u) tanh'(v)] = (2/pi) sum_ij w_i w_j a_i(q1) a_j(q2) / sqrt(1 - x_ij^2)

where ``(b_i, w_i)`` is the ``M``-point Gauss rule of the mixing distribution (in ``log b``,
where the integrands are analytic in a strip of half-width pi/2 whatever the variances).
With ``M = 9`` the mixture reproduces ``tanh`` to ~5e-8 relative everywhere, and the kernels
(averages of it) agree with adaptive two-dimensional integration to ~5e-11 at any
pre-activation variance (tests, from 1e-2 to 1e4), at ``M^2`` arcsines per kernel entry instead of a quadrature over
the bivariate Gaussian.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import torch

from .._engine import Tile, exact, fused
from .nonlinearity import Nonlinearity

__all__ = ["Tanh"]

MIXTURE_NODES = 9
# Kernel entries (times M^2 terms) evaluated at once.
_CHUNK_TERMS = 1 << 21


def kolmogorov_pdf(k: np.ndarray) -> np.ndarray:
    """Density of the Kolmogorov distribution (the limit law of ``sqrt(n) D_n``), by its two
    theta-function series, each where it converges fast (Feller 1948)."""
    k = np.asarray(k, dtype=np.float64)
    out = np.zeros_like(k)
    small = (k > 0) & (k < 1.0)
    j = np.arange(1, 40)[:, None]
    ks = k[small][None, :]
    # d/dk [sqrt(2 pi)/k sum exp(-(2j-1)^2 pi^2 / (8 k^2))]
    a = (2 * j - 1) ** 2 * math.pi**2 / 8
    out[small] = (math.sqrt(2 * math.pi) / ks**2 * ((2 * a / ks**2 - 1) * np.exp(-a / ks**2))).sum(0)
    large = k >= 1.0
    kl = k[large][None, :]
    out[large] = (8 * kl * ((-1.0) ** (j - 1)) * j**2 * np.exp(-2 * j**2 * kl**2)).sum(0)
    return out


@functools.lru_cache(maxsize=None)
def mixture(m: int = MIXTURE_NODES) -> tuple[np.ndarray, np.ndarray]:
    """The ``m``-point Gauss rule ``(b, w)`` of ``tanh(x) = E_b[erf(b x)]``: Stieltjes'
    procedure for the orthogonal polynomials of ``t = log b`` under the mixing distribution,
    discretized by the trapezoid rule (exact to rounding for its double-exponential tails),
    then Golub-Welsch."""
    h = 1e-3
    t = np.arange(-5.0, 4.0, h)
    k = 1 / (math.sqrt(2) * np.exp(t))
    mass = kolmogorov_pdf(k) * k * h
    mass /= mass.sum()
    alpha, beta = np.zeros(m), np.zeros(m)
    p_prev, p, norm_prev = np.zeros_like(t), np.ones_like(t), 1.0
    for i in range(m):
        norm = float((mass * p * p).sum())
        alpha[i] = float((mass * t * p * p).sum()) / norm
        beta[i] = norm / norm_prev if i else 0.0
        p_prev, p, norm_prev = p, (t - alpha[i]) * p - beta[i] * p_prev, norm
    jacobi = np.diag(alpha) + np.diag(np.sqrt(beta[1:]), 1) + np.diag(np.sqrt(beta[1:]), -1)
    nodes, vectors = np.linalg.eigh(jacobi)
    return np.exp(nodes), vectors[0] ** 2


def _symmetric_sum(terms: torch.Tensor) -> torch.Tensor:
    """Sum over the trailing ``(M, M)`` axes in an order that transposing does not change, so
    that ``(x, x')`` and ``(x', x)`` (whose terms are transposes) give the same bits."""
    m = terms.shape[-1]
    upper = torch.triu_indices(m, m, 1, device=terms.device)
    pairs = terms[..., upper[0], upper[1]] + terms[..., upper[1], upper[0]]
    both = torch.cat([terms.diagonal(dim1=-2, dim2=-1), pairs], -1)
    return exact.sum(both, -1) if exact.active() else both.sum(-1)


def _dual(k: torch.Tensor, a1: torch.Tensor, a2: torch.Tensor, ww: torch.Tensor, want_tdot: bool):
    """``(T, Tdot)`` for flat ``k`` ``(E,)`` and per-entry ``a1``, ``a2`` ``(E, M)``."""
    prod = a1[:, :, None] * a2[:, None, :]  # commutative: the same bits for a pair's two orders
    x = k[:, None, None] * prod
    t = _symmetric_sum(exact.elementwise(torch.asin, x) * ww) * (2 / math.pi)
    if not want_tdot:
        return t, None
    tdot = _symmetric_sum(prod * ww * torch.rsqrt(1 - x * x)) * (2 / math.pi)
    return t, tdot


@dataclass(frozen=True)
class Tanh(Nonlinearity):
    """``phi(x) = tanh(x)``, exactly at any pre-activation variance: tanh as a scale mixture of
    erfs (Stefanski 1991), each with Williams' closed form. With ``a_i(q) = sqrt(2) b_i /
    sqrt(1 + 2 b_i^2 q)`` and ``x_ij = K a_i(q1) a_j(q2)``:

        T    = (2/pi) sum_ij w_i w_j arcsin(x_ij)
        Tdot = (2/pi) sum_ij w_i w_j a_i(q1) a_j(q2) / sqrt(1 - x_ij^2)

    over the 9-point Gauss rule ``(b_i, w_i)`` of the mixing distribution; relative error
    below 1e-10 against adaptive two-dimensional integration from variance 1e-2 to 1e4 (tests).

    Example:

        >>> net = wn.Serial(wn.Dense(512, W_std=1.2), wn.Tanh(), wn.Dense(1))
    """

    def fn(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x)

    def derivative(self, x: torch.Tensor) -> torch.Tensor:
        t = torch.tanh(x)
        return 1 - t * t

    def _operands(self, q: torch.Tensor) -> torch.Tensor:
        """``a_i(q)`` node by node, ``(M, E)`` for flat ``q`` ``(E,)`` (the fused rule's layout;
        the torch rule takes its transpose)."""
        b, _ = mixture()
        b = torch.as_tensor(b, dtype=q.dtype, device=q.device)[:, None]
        return math.sqrt(2) * b * torch.rsqrt(1 + 2 * b * b * q[None, :])

    def _weights(self, like: torch.Tensor) -> torch.Tensor:
        _, w = mixture()
        w = torch.as_tensor(w, dtype=like.dtype, device=like.device)
        return w[:, None] * w[None, :]

    def _tile(self, w: Tile) -> None:
        r, c = w.outer(w.var1, w.var2)
        q1, q2 = r.expand_as(w.nngp).reshape(-1), c.expand_as(w.nngp).reshape(-1)
        k = w.nngp.reshape(-1)
        ww = self._weights(k)
        m = ww.shape[0]
        if fused.enabled(w.nngp, w.ntk, q1, q2) and w.nngp.is_contiguous() and (w.ntk is None or w.ntk.is_contiguous()):
            ntk = None if w.ntk is None else w.ntk.view(-1)
            chunk = max(1, _CHUNK_TERMS // m)
            for s in range(0, k.numel(), chunk):
                fused.tanh_mixture(k[s:s + chunk], None if ntk is None else ntk[s:s + chunk],
                                   self._operands(q1[s:s + chunk]), self._operands(q2[s:s + chunk]), ww)
            return
        chunk = max(1, _CHUNK_TERMS // (m * m))
        t_parts, tdot_parts = [], []
        for s in range(0, k.numel(), chunk):
            t, tdot = _dual(k[s:s + chunk], self._operands(q1[s:s + chunk]).T, self._operands(q2[s:s + chunk]).T, ww,
                            w.ntk is not None)
            t_parts.append(t)
            tdot_parts.append(tdot)
        if w.ntk is not None:
            w.ntk.mul_(torch.cat(tdot_parts).view_as(w.ntk))
        w.nngp.copy_(torch.cat(t_parts).view_as(w.nngp))

    def _diag(self, q: torch.Tensor) -> torch.Tensor:
        flat = q.reshape(-1)
        a = self._operands(flat).T
        t, _ = _dual(flat, a, a, self._weights(flat), False)
        return t.reshape(q.shape)
