"""Gaussian expectations for the finite-width recursions (``theory.finite_width``).

``Gauss(K, chain(phi))`` holds a batch of covariances ``K`` ``(B, m, m)`` over m inputs and
the derivatives ``phi, phi', phi'', ...`` of an activation; ``two(i, j)`` is
``<phi^(i)(z_a) phi^(j)(z_b)>`` ``(B, m, m)`` and ``four((i, j, k, l))`` is
``<phi^(i)(z_a) phi^(j)(z_b) phi^(k)(z_c) phi^(l)(z_d)>`` ``(B, m, m, m, m)``, all under
``z ~ N(0, K)``.

Each expectation over an index tuple runs in as many dimensions as the tuple has distinct
inputs (``(a, a, b, b)`` is a 2-dimensional integral, not a 4-dimensional one), with
trapezoidal rules spaced for the activation's analyticity strip (see ``_rule`` and
``_eigen_sums``; Gauss-Hermite rules of the degree given, exact there, for polynomial
activations over three and four inputs), singular covariances included. Index tuples are visited
once per multiset and the value scattered to every ordering.
"""

from __future__ import annotations

import collections
import functools
import itertools
import math
import warnings
from typing import Callable

import torch

from .._hermite import gauss_hermite
from ..errors import AccuracyWarning

D = torch.float64
# quadrature points times coordinates evaluated at once
_AT_ONCE = 1 << 22
# the trapezoidal rule of one and two variables: nodes on [-_RANGE, _RANGE] standard
# deviations, at most _STEP apart in preactivation units. For an integrand analytic in the
# strip |Im z| < d its error is about exp(-2 pi d / _STEP) (Trefethen & Weideman, SIAM Review
# 56 (2014) 385): tanh's poles at +-i pi/2 leave e^-40 even for its fifth derivative.
_RANGE = 8.5
_STEP = 0.2
# three and four variables: the ball of radius _RANGE_K (weight e^-24.5 at its edge),
# spacing _COARSE * _STEP (error about exp(-2 pi d / (2.5 * 0.2 / 1.3 * d)) ~ 1e-7)
_RANGE_K = 7.0
_COARSE = 2.5


def all_orders(fn: Callable, z: torch.Tensor, order: int) -> list:
    """``[phi(z), phi'(z), ..., phi^(order)(z)]`` by one chain of nested autograd; derivatives of
    polynomials that run out of terms are zero."""
    out = []
    with torch.enable_grad():
        z = z.detach().requires_grad_(True)
        y = fn(z)
        for k in range(order + 1):
            out.append(y.detach().expand_as(z) if y.shape != z.shape else y.detach())
            if k == order:
                break
            if not y.requires_grad:
                y = torch.zeros_like(z)
                continue
            (y,) = torch.autograd.grad(y.sum(), z, create_graph=k + 1 < order, allow_unused=True)
            if y is None:
                y = torch.zeros_like(z)
    return out


def _strip(orders: Callable) -> float:
    """An estimate of the half-width of the strip around the real axis where the activation
    is analytic, from the growth of its derivatives (Cauchy's estimates, ``|phi^(n)| ~ n! / d^n``):
    ``d ~ 5 max|phi^(4)| / max|phi^(5)|`` on [-8, 8]; infinite for polynomials."""
    z = torch.linspace(-8, 8, 4001, dtype=D)
    f = orders(z, 5)
    r4, r5 = float(f[4].abs().max()), float(f[5].abs().max())
    return math.inf if r5 == 0 else 5 * r4 / r5


def _step(strip: float) -> float:
    """The trapezoidal rule's spacing for an activation whose ``_strip`` is ``strip``:
    ``_STEP`` for tanh (about 1.3) and anything smoother, proportionally less for sharper
    ones (Softplus with a large beta, a user's function with close singularities)."""
    return max(min(_STEP, _STEP * strip / 1.3), 1e-3)


def _tanh_orders(z: torch.Tensor, order: int) -> list:
    """tanh and its derivatives: y' = 1 - y^2, y^(k+1) = -sum_i C(k, i) y^(i) y^(k-i) (k >= 1)."""
    y = [torch.tanh(z)]
    if order >= 1:
        y.append(1 - y[0] ** 2)
    for k in range(1, order):
        y.append(-sum(math.comb(k, i) * y[i] * y[k - i] for i in range(k + 1)))
    return y


def _hermite(u: torch.Tensor, order: int, physicists: bool) -> list:
    """``H_0 .. H_order`` (physicists', weight e^-u^2) or ``He_0 .. He_order`` (probabilists')."""
    c = 2.0 if physicists else 1.0
    h = [torch.ones_like(u), c * u]
    for m in range(1, order):
        h.append(c * (u * h[m] - m * h[m - 1]))
    return h[:order + 1]


def _erf_orders(a, b, c, z: torch.Tensor, order: int) -> list:
    """``a erf(b z) + c``: the k-th derivative is ``a b^k (2/sqrt(pi)) (-1)^(k-1) H_(k-1)(b z) e^(-b^2 z^2)``."""
    u = b * z
    g = torch.exp(-u * u) * (2 / math.sqrt(math.pi))
    h = _hermite(u, max(order - 1, 0), physicists=True)
    return [a * torch.erf(u) + c] + [a * b**k * (-1) ** (k - 1) * h[k - 1] * g for k in range(1, order + 1)]


def _gelu_orders(z: torch.Tensor, order: int) -> list:
    """``z Phi(z)``: the k-th derivative is ``z Phi^(k) + k Phi^(k-1)``, with
    ``Phi^(j) = (-1)^(j-1) He_(j-1)(z) phi(z)``."""
    pdf = torch.exp(-z * z / 2) / math.sqrt(2 * math.pi)
    he = _hermite(z, order, physicists=False)
    Phi = [0.5 * (1 + torch.erf(z / math.sqrt(2)))] + [(-1) ** (j - 1) * he[j - 1] * pdf for j in range(1, order + 1)]
    return [z * Phi[0]] + [z * Phi[k] + k * Phi[k - 1] for k in range(1, order + 1)]


def chain(phi) -> Callable:
    """``(z, order) -> [phi(z), ..., phi^(order)(z)]``: closed forms for Tanh, Erf, Gelu, Sin
    and Cos, nested autograd for any other nonlinearity."""
    from ..layers import Cos, Erf, Gelu, Sin, Tanh

    kind = type(phi)
    if kind is Tanh:
        return _tanh_orders
    if kind is Erf:
        return lambda z, order: _erf_orders(phi.a, phi.b, phi.c, z, order)
    if kind is Gelu:
        return _gelu_orders
    if kind in (Sin, Cos):
        trig = torch.sin if kind is Sin else torch.cos
        return lambda z, order: [phi.a * phi.b**k * trig(phi.b * z + phi.c + k * math.pi / 2)
                                 for k in range(order + 1)]
    return lambda z, order: all_orders(phi.fn, z, order)


def _gauss_hermite(k: int, degree: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Nodes ``(P, k)`` and weights ``(P,)`` of the k-dimensional standard normal product rule."""
    x, w = gauss_hermite(degree)
    x, w = torch.as_tensor(x, dtype=D), torch.as_tensor(w, dtype=D)
    grid = torch.stack(torch.meshgrid(*[x] * k, indexing="ij"), -1).reshape(-1, k)
    weights = torch.stack(torch.meshgrid(*[w] * k, indexing="ij"), -1).reshape(-1, k).prod(-1)
    return grid, weights


def _shape(t: tuple) -> tuple:
    """The pattern of equal indices of a sorted tuple: (3, 3, 5, 7) -> (0, 0, 1, 2)."""
    out, seen = [], {}
    for v in t:
        out.append(seen.setdefault(v, len(seen)))
    return tuple(out)



_GRIDS: "collections.OrderedDict[tuple, tuple]" = collections.OrderedDict()
_GRID_BYTES = 1 << 28  # what the cache of grids may hold (least recently used go first)


def _ball_grid(halves: tuple) -> tuple:
    """The product trapezoidal rule on the ball of radius ``_RANGE_K`` with ``2 h + 1`` nodes on
    an axis of ``halves`` (one node at 0 where h = 0): points ``(P, k)`` and standard-normal
    weights ``(P,)``. Cached up to ``_GRID_BYTES``: the tuples of one layer often share their
    node counts (callers round them up onto a ladder ~12% apart, ``_nodes``). The ball is cut
    from the squared radii's outer sum, so the box's points are never materialized."""
    if halves in _GRIDS:
        _GRIDS.move_to_end(halves)
        return _GRIDS[halves]
    axes = [torch.linspace(-_RANGE_K, _RANGE_K, 2 * h + 1, dtype=D) if h else torch.zeros(1, dtype=D)
            for h in halves]
    k = len(axes)
    r2 = torch.zeros((), dtype=D)
    for a, x in enumerate(axes):
        r2 = r2.unsqueeze(-1) + (x * x).reshape((1,) * a + (-1,))
    inside = r2 <= _RANGE_K**2
    index = inside.nonzero()
    grid = torch.stack([axes[a][index[:, a]] for a in range(k)], -1)
    scale = math.prod(float(x[1] - x[0]) / math.sqrt(2 * math.pi) for x in axes if len(x) > 1)
    rule = grid, scale * torch.exp(-0.5 * r2[inside])
    _GRIDS[halves] = rule
    while sum(g.numel() + w.numel() for g, w in _GRIDS.values()) * 8 > _GRID_BYTES and len(_GRIDS) > 1:
        _GRIDS.popitem(last=False)
    return rule


def _nodes(half: int) -> int:
    """``half`` rounded up onto a ladder of steps ~12% apart (8, 9, ..., 16, 18, 20, ...), so
    that nearby tuples share one cached grid."""
    q = max(1, half // 8)
    return -(-half // q) * q


class Gauss:
    """Expectations under a batch of Gaussians ``N(0, K[b])``, see the module docstring.
    ``expect(patterns)`` computes several patterns of one arity in one pass over the
    quadrature points (each derivative of ``phi`` evaluated once per point)."""

    pathwise_second = True  # phi'' is a function: the dNTK's terms in phi'' are there

    def __init__(self, K: torch.Tensor, orders: Callable, degrees: dict[int, int], step: float | None = None):
        self.K, self.orders, self.degrees = K, orders, degrees
        strip = _strip(orders)
        self.polynomial = strip == math.inf
        self.step = _step(strip) if step is None else step
        if step is None and strip < 0.1:
            warnings.warn(AccuracyWarning(
                "theory.finite_width: the activation's derivatives up to the fifth grow like 1/d^5 with "
                f"d ~ {strip:.3g} (a sharp kink, e.g. Softplus with a large beta): their expectations "
                "lose digits to rounding; for the limit of a kink use wn.Relu(), whose expectations are "
                "closed forms"), stacklevel=4)
        self.m = K.shape[-1]
        self._cache: dict = {}

    def two(self, i: int, j: int) -> torch.Tensor:
        return self._cache[(i, j)]

    # ---- what the recursions ask of an activation's expectations (see _fw_recursion) ----
    def prepare(self, variance: bool, dntk: bool) -> None:
        self.expect([(1, 1), (2, 0), (0, 2), (3, 1), (2, 2), (1, 3)]
                     + [(k, 4 - k) for k in range(5)] + [(1 + k, 5 - k) for k in range(5)])
        self.expect([(0, 0, 0, 0), (1, 1, 0, 0)] + ([(1, 1, 1, 1)] if variance else [])
                    + ([(2, 1, 1, 0), (3, 1, 1, 1), (2, 2, 1, 1)] if dntk else []))

    def pair(self, base: int) -> tuple:
        """``(c_aa, c_ab, c_bb)`` of ``1/2 <d_e d_f (phi^(base)(z_a) phi^(base)(z_b))>``."""
        i = base
        return 0.5 * self.two(i + 2, i), 0.5 * self.two(i + 1, i + 1), 0.5 * self.two(i, i + 2)

    def first(self) -> tuple:
        """``(<phi''_a phi_c>, <phi'_a phi'_c>)``: ``<d_e (phi'_a phi_c)>`` at e = a and e = c."""
        return self.two(2, 0), self.two(1, 1)

    def placements(self, base: int) -> list:
        """``<phi^(base + k)(z_a) phi^(base + 4 - k)(z_b)>`` for k = 0..4: the fourth derivatives
        of the product, k of them on its first factor."""
        return [self.two(base + k, base + 4 - k) for k in range(5)]

    def four(self, pattern: tuple) -> torch.Tensor:
        return self._cache[tuple(pattern)]

    def expect(self, patterns) -> None:
        """Compute ``patterns`` (tuples of derivative orders, all of one arity) for later
        ``two``/``four`` calls."""
        patterns = [tuple(p) for p in patterns if tuple(p) not in self._cache]
        if not patterns:
            return
        r, B, m = len(patterns[0]), self.K.shape[0], self.m
        order = max(max(p) for p in patterns)
        outs = {p: torch.empty((B,) + (m,) * r, dtype=D) for p in patterns}
        for shape, (variables, tuples) in _groups(m, r).items():
            k = max(shape) + 1
            # for every ordering of a tuple, the function each variable carries: output
            # position t holds tuple slot perm[t], i.e. variable shape[perm[t]]
            assigns: dict = {}
            for p in patterns:
                for perm in itertools.permutations(range(r)):
                    key = tuple(sorted((shape[perm[t]], p[t]) for t in range(r)))
                    assigns.setdefault(key, {}).setdefault(p, []).append(perm)
            values = {key: torch.empty(B, len(tuples), dtype=D) for key in assigns}
            if k > 2 and B == 1 and not self.polynomial:
                for s in range(len(tuples)):
                    v = variables[s]
                    for key, value in self._eigen_sums(self.K[0][v[:, None], v[None, :]], assigns, order).items():
                        values[key][0, s] = value
                self._scatter(outs, assigns, tuples, values, r)
                continue
            rule = self._rule(k, self.K[:, variables[:, :, None], variables[:, None, :]])
            points = math.prod(len(w) for _, w in rule)
            chunk = max(1, _AT_ONCE // (points * k * (order + 1) * max(B, 1)))
            for s in range(0, len(tuples), chunk):
                v = variables[s:s + chunk]
                f = self._values(self.K[:, v[:, :, None], v[:, None, :]], rule, order)
                inner: dict = {}
                for key in assigns:
                    values[key][:, s:s + chunk] = _product_sum(key, f, rule, inner)
            self._scatter(outs, assigns, tuples, values, r)
        self._cache.update(outs)

    @staticmethod
    def _scatter(outs: dict, assigns: dict, tuples: torch.Tensor, values: dict, r: int) -> None:
        for key, by_pattern in assigns.items():
            for p, perms in by_pattern.items():
                for perm in perms:
                    outs[p][(slice(None),) + tuple(tuples[:, perm[t]] for t in range(r))] = values[key]

    def _eigen_sums(self, cov: torch.Tensor, keys, order: int) -> dict:
        """``{key: E[prod_(var, o) in key phi^(o)(z_var)]}`` for one ``(k, k)`` covariance of three
        or four inputs: the product trapezoidal rule on the ball of radius ``_RANGE_K`` in the
        covariance's eigenbasis, ``z = V sqrt(lambda) u``, spaced ``_COARSE * step /
        sqrt(lambda_i)`` on axis i (no axis moves a preactivation by more than that), so that
        correlated inputs, whose small eigenvalues need few nodes, cost little."""
        k = cov.shape[-1]
        vals, vecs = torch.linalg.eigh(cov)
        vals = vals.clamp_min(0)
        top = float(vals.max())
        # nodes a side per axis, 0 for a singular direction (the integrand does not vary along
        # it); at least 8 a side: the Gaussian weight itself then errs by exp(-2 pi^2 / h^2) ~ 1e-11
        halves = tuple(0 if lam <= 1e-14 * top else
                       _nodes(max(math.ceil(_RANGE_K * math.sqrt(lam) / (_COARSE * self.step)), 8))
                       for lam in vals.tolist())
        grid, w = _ball_grid(halves)
        root = vecs * vals.sqrt()
        sums = {key: torch.zeros((), dtype=D) for key in keys}
        at_once = max(1, _AT_ONCE // (k * (order + 1)))
        for s in range(0, len(w), at_once):
            f = self.orders(grid[s:s + at_once] @ root.T, order)  # [o] (P, k)
            for key in keys:
                prod = w[s:s + at_once]
                for var, o in key:
                    prod = prod * f[o][:, var]
                sums[key] = sums[key] + prod.sum()
        return sums

    def _rule(self, k: int, cov: torch.Tensor) -> list:
        """Standard-normal rules for k variables whose covariances are ``cov`` ``(..., k, k)``:
        ``[(nodes, weights)]`` per axis. One and two variables: trapezoidal rules on
        ``[-R, R]``, each axis with a spacing that puts at most ``step`` between the
        preactivations it moves (mapped by the triangular root, ``z_0 = l00 x_0``,
        ``z_1 = l10 x_0 + l11 x_1``), so nearly collinear pairs need few nodes on the
        second axis; three and four: one product trapezoidal rule (``(P, k)``, ``(P,)``) on
        the ball of radius ``_RANGE_K``, spaced ``_COARSE`` times wider (about 1e-7 relative
        for tanh's expectations up to its third derivative, where Gauss-Hermite rules of
        degree 14 to 48 miss by 1e-3 to 1e-1 at unit variances); for polynomial activations
        the Gauss-Hermite rule of ``degrees[k]``, exact for them."""
        if k > 2 and self.polynomial:
            return [_gauss_hermite(k, self.degrees[k])]
        if k > 2:
            spread = float(cov.diagonal(dim1=-2, dim2=-1).clamp_min(0).max().sqrt())
            half = max(4, math.ceil(_RANGE_K * spread / (_COARSE * self.step)))
            x = torch.linspace(-_RANGE_K, _RANGE_K, 2 * half + 1, dtype=D)
            grid = torch.cartesian_prod(*[x] * k)
            grid = grid[(grid * grid).sum(-1) <= _RANGE_K**2]
            w = ((x[1] - x[0]) / math.sqrt(2 * math.pi)) ** k * torch.exp(-(grid * grid).sum(-1) / 2)
            return [(grid, w)]
        l00, l10, l11 = _triangular(cov) if k == 2 else (cov[..., 0, 0].clamp_min(0).sqrt(), None, None)
        spreads = [float(l00.max())] if k == 1 else [float(torch.maximum(l00, l10.abs()).max()), float(l11.max())]
        rule = []
        for spread in spreads:
            half = max(8, math.ceil(_RANGE * spread / self.step)) if spread > 0 else 0
            x = torch.linspace(-_RANGE, _RANGE, 2 * half + 1, dtype=D) if half else torch.zeros(1, dtype=D)
            w = (x[1] - x[0]) * torch.exp(-x * x / 2) / math.sqrt(2 * math.pi) if half else torch.ones(1, dtype=D)
            rule.append((x, w))
        return rule

    def _values(self, cov: torch.Tensor, rule: list, order: int) -> list:
        """``f[var][o]``: ``phi^(o)`` at the quadrature points of each variable, for
        covariances ``cov`` ``(B, q, k, k)``. One and two variables map the rule by the
        triangular root (the first variable then depends on the first axis only: its values
        are ``(B, q, P1, 1)`` and broadcast against the second's ``(B, q, P1, P2)``); more
        by the symmetric root, on the flat grid ``(B, q, P)``."""
        k = cov.shape[-1]
        if k == 1:
            return [self.orders(cov[..., 0, :1].clamp_min(0).sqrt() * rule[0][0], order)]
        if k == 2:
            (x1, _), (x2, _) = rule
            l00, l10, l11 = (t[..., None, None] for t in _triangular(cov))
            first = self.orders(l00 * x1[:, None], order)  # (B, q, P1, 1)
            second = self.orders(l10 * x1[:, None] + l11 * x2, order)  # (B, q, P1, P2)
            return [first, second]
        vals, vecs = torch.linalg.eigh(cov)
        root = vecs * vals.clamp_min(0).sqrt()[..., None, :]
        points = rule[0][0] @ root.transpose(-1, -2)  # (B, q, P, k)
        return [[t[..., var] for t in self.orders(points, order)] for var in range(k)]


def _triangular(cov: torch.Tensor):
    """``(l00, l10, l11)`` of the lower-triangular root of 2x2 covariances (zero variances
    and singular ones included)."""
    l00 = cov[..., 0, 0].clamp_min(0).sqrt()
    l10 = torch.where(l00 > 0, cov[..., 1, 0] / l00.where(l00 > 0, torch.ones_like(l00)), 0.0)
    l11 = (cov[..., 1, 1] - l10**2).clamp_min(0).sqrt()
    return l00, l10, l11


def _product_sum(key: tuple, f: list, rule: list, inner: dict) -> torch.Tensor:
    """``sum_p w_p prod_(var, o) in key phi^(o)(z_var,p)``. On a two-variable grid the weights
    factor, ``w_ij = w_i w_j``, and the first variable depends on node i only, so the sum
    over j of the second variable's factors is taken first and shared by every key with
    the same second-variable factors (``inner``): O(P1 P2) per distinct such product, O(P1)
    per key, instead of O(P1 P2) per key."""
    if len(rule) == 2:
        (_, w1), (_, w2) = rule
        second = tuple(o for var, o in key if var == 1)
        if second not in inner:
            prod = w2
            for o in second:
                prod = prod * f[1][o]
            inner[second] = prod.sum(-1)  # (B, q, P1)
        prod = w1 * inner[second]
        for var, o in key:
            if var == 0:
                prod = prod * f[0][o][..., 0]
        return prod.sum(-1)
    prod = rule[0][1]
    for var, o in key:
        prod = prod * f[var][o]
    return prod.sum(-1)


@functools.lru_cache(maxsize=None)
def _groups(m: int, r: int) -> dict:
    """Sorted index r-tuples of range(m), grouped by their pattern of equal indices:
    ``{shape: (distinct inputs (Q, k), tuples (Q, r))}``."""
    groups: dict = {}
    for t in itertools.combinations_with_replacement(range(m), r):
        s = _shape(t)
        groups.setdefault(s, ([], []))
        groups[s][0].append(sorted(set(t)))
        groups[s][1].append(t)
    return {s: (torch.tensor(v), torch.tensor(t)) for s, (v, t) in groups.items()}
