"""Large-but-finite width, NNGP side (work in progress toward ``theory.finite_width``):
the 1/n correction of the output two-point function and the four-point vertex of deep MLPs,
by the layer-to-layer recursions of Roberts, Yaida & Hanin, *The Principles of Deep Learning
Theory* (arXiv 2106.10165), ch. 4.

For a network ``Dense -> phi -> Dense -> ... -> Dense`` with every hidden width n, weight
variance ``C_W / n`` (``C_W = W_std^2``) and bias variance ``C_b = b_std^2``, the
preactivations of layer ``l`` have, to order 1/n,

    E[z_a z_b]                      = K_ab + K1_ab / n
    E[z_a z_b z_c z_d] - (GG + GG + GG) = (V_(ab)(cd) + V_(ac)(bd) + V_(ad)(bc)) / n

(``G`` the exact width-n two-point function). The first layer is Gaussian (``V = K1 = 0``);
then, with ``<.>`` the Gaussian expectation under ``K`` and ``M_ab,ef = d<s_a s_b>/dK_ef
= 1/2 <d_e d_f (s_a s_b)>`` (Price's theorem; ``s = phi(z)``, the derivatives on the
preactivations of inputs e, f):

    V'_(ab)(cd) = C_W^2 (<s_a s_b s_c s_d> - <s_a s_b><s_c s_d>) + C_W^2 sum M_ab,ef V_(ef)(gh) M_cd,gh
    K1'_ab      = C_W (sum M_ab,ef K1_ef + 1/8 sum <d_e d_f d_g d_h (s_a s_b)> V_(ef)(gh))

(PDLT ch. 4: the recursions of the four-point vertex and of the next-to-leading-order
metric, in their multi-input forms; equation numbers to be pinned when the module is
completed). Expectations are tensor-product
Gauss-Hermite rules over the 2- and 4-dimensional Gaussians, derivatives of ``phi`` by
autograd: smooth activations only (tanh, erf, GELU, ...); kinked ones (ReLU) need their own
treatment.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Callable

import torch

from .._hermite import gauss_hermite
from .._validate import as_inputs
from ..errors import ParameterError

D = torch.float64
# Gauss-Hermite points (times 4 coordinates) of the four-point rule evaluated at once.
_POINTS_AT_ONCE = 1 << 20


@dataclass(frozen=True)
class FiniteWidthNNGP:
    """The output's NNGP ``nngp`` ``(N, N)``, its correction ``nngp_correction`` (K1), PDLT's
    four-point vertex ``vertex`` ``V_(ab)(cd)`` ``(N, N, N, N)`` and the connected four-point
    function ``four_point`` ``V_(ab)(cd) + V_(ac)(bd) + V_(ad)(bc)``, for one output unit."""

    nngp: torch.Tensor
    nngp_correction: torch.Tensor
    vertex: torch.Tensor
    four_point: torch.Tensor

    def nngp_at(self, n: int) -> torch.Tensor:
        """``E[f(x_a) f(x_b)]`` at hidden width ``n``, to order 1/n."""
        if not isinstance(n, int) or n < 1:
            raise ParameterError(f"FiniteWidthNNGP.nngp_at: n must be an integer >= 1 (got {n!r})")
        return self.nngp + self.nngp_correction / n


def _derivatives(fn: Callable, order: int) -> list:
    """``[phi, phi', ..., phi^(order)]`` by nested autograd."""
    def nth(k):
        def f(z):
            with torch.enable_grad():
                z = z.detach().requires_grad_(True)
                y = fn(z)
                for _ in range(k):
                    if not y.requires_grad:  # a polynomial ran out of terms: the rest is 0
                        return torch.zeros_like(z).detach()
                    (y,) = torch.autograd.grad(y.sum(), z, create_graph=True, allow_unused=True)
                    if y is None:
                        return torch.zeros_like(z).detach()
            return y.detach().expand_as(z) if y.shape != z.shape else y.detach()
        return f
    return [nth(k) for k in range(order + 1)]


def _gaussian_points(cov: torch.Tensor, degree: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Points ``(..., P, k)`` and weights ``(P,)`` of a tensor Gauss-Hermite rule for
    ``N(0, cov)``, ``cov`` ``(..., k, k)`` (singular ones included: a symmetric square root)."""
    x, w = gauss_hermite(degree)
    x, w = torch.as_tensor(x, dtype=D), torch.as_tensor(w, dtype=D)
    k = cov.shape[-1]
    grid = torch.stack(torch.meshgrid(*[x] * k, indexing="ij"), -1).reshape(-1, k)
    weights = torch.stack(torch.meshgrid(*[w] * k, indexing="ij"), -1).reshape(-1, k).prod(-1)
    vals, vecs = torch.linalg.eigh(cov)
    root = vecs * vals.clamp_min(0).sqrt()[..., None, :]
    return grid @ root.transpose(-1, -2), weights


def _two_point(fns: list, K: torch.Tensor, degree: int) -> Callable:
    """``E(i, j) = <phi^(i)(z_a) phi^(j)(z_b)>`` ``(N, N)`` under ``K``, memoized."""
    n = K.shape[0]
    idx = torch.arange(n)
    a, b = torch.meshgrid(idx, idx, indexing="ij")
    cov = torch.stack([torch.stack([K[a, a], K[a, b]], -1), torch.stack([K[b, a], K[b, b]], -1)], -2)
    points, weights = _gaussian_points(cov, degree)  # (N, N, P, 2)
    cache: dict = {}

    def expect(i: int, j: int) -> torch.Tensor:
        if (i, j) not in cache:
            cache[(i, j)] = (fns[i](points[..., 0]) * fns[j](points[..., 1]) * weights).sum(-1)
        return cache[(i, j)]

    return expect


def _four_point(fn: Callable, K: torch.Tensor, degree: int) -> torch.Tensor:
    """``<s_a s_b s_c s_d>`` ``(N, N, N, N)`` under ``K``, over sorted index quadruples."""
    n = K.shape[0]
    quads = torch.tensor(list(itertools.combinations_with_replacement(range(n), 4)))
    values = torch.empty(len(quads), dtype=D)
    chunk = max(1, _POINTS_AT_ONCE // degree**4)
    for s in range(0, len(quads), chunk):
        q = quads[s:s + chunk]
        points, weights = _gaussian_points(K[q[:, :, None], q[:, None, :]], degree)  # (Q, P, 4)
        values[s:s + chunk] = (fn(points).prod(-1) * weights).sum(-1)
    out = torch.empty((n,) * 4, dtype=D)
    for perm in itertools.permutations(range(4)):
        out[tuple(quads[:, p] for p in perm)] = values
    return out


def _pair_derivative(E: Callable, n: int) -> torch.Tensor:
    """``M_(ab),(ef) = 1/2 <d_e d_f (s_a s_b)>`` as ``(N, N, N, N)``."""
    M = torch.zeros((n,) * 4, dtype=D)
    s2 = E(2, 0)  # <s''_a s_b>
    s11 = E(1, 1)  # <s'_a s'_b>
    for a, b in itertools.product(range(n), repeat=2):
        if a == b:
            M[a, a, a, a] = s11[a, a] + s2[a, a]  # 1/2 (phi^2)'' = phi'^2 + phi phi''
            continue
        M[a, b, a, a] += 0.5 * s2[a, b]
        M[a, b, b, b] += 0.5 * s2[b, a]
        M[a, b, a, b] += 0.5 * s11[a, b]
        M[a, b, b, a] += 0.5 * s11[a, b]
    return M


def _quartic_term(E: Callable, V: torch.Tensor) -> torch.Tensor:
    """``sum_efgh <d_e d_f d_g d_h (s_a s_b)> V_(ef)(gh)`` ``(N, N)``: each derivative acts on
    z_a or z_b, so the sum runs over the 16 ways of placing the four on the two factors, each
    giving ``<s_a^(k) s_b^(4-k)> V`` at the matching indices (O(N^2), not the N^6 tensor).
    (For a == b the 16 placements all land on (a, a, a, a) and add up to the fourth derivative
    of s^2, by Leibniz's rule.)"""
    n = V.shape[0]
    a, b = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
    out = torch.zeros((n, n), dtype=D)
    for slots in itertools.product((0, 1), repeat=4):
        on_a = slots.count(0)
        idx = tuple(a if s == 0 else b for s in slots)
        out += E(on_a, 4 - on_a) * V[idx]
    return out


_SUPPORTED = ("Dense, then (elementwise nonlinearity, Dense) pairs, every hidden layer of one width; "
              "convolutions, pooling, attention, LayerNorm and residual blocks are not supported yet")


def _flat_layers(owner: str, net) -> list:
    """The layers of ``net`` (a Serial, nested ones flattened, or a list of layers)."""
    from ..layers import ABRelu, Serial, Sign

    layers, todo = [], list(net.layers) if isinstance(net, Serial) else list(net)
    while todo:
        layer = todo.pop(0)
        if isinstance(layer, Serial):
            todo[:0] = list(layer.layers)
            continue
        if isinstance(layer, (ABRelu, Sign)):
            raise ParameterError(
                f"{owner}: {layer!r} at position {len(layers)} is kinked: its derivative expectations "
                f"are distributions the quadrature here cannot take; smooth activations only for now "
                f"(Tanh, Erf, Gelu, Sin, Softplus, Elementwise of a smooth function)")
        layers.append(layer)
    return layers


def finite_width_nngp(net, x, *, degree2: int = 48, degree4: int = 14) -> FiniteWidthNNGP:
    """The NNGP-side finite-width statistics of ``Serial(Dense, phi, Dense, ..., Dense)``
    (``net`` a Serial or a list of its layers) on inputs ``x`` ``(N, d)``."""
    from ..layers import Dense, Nonlinearity

    owner = "theory.finite_width"
    layers = _flat_layers(owner, net)
    x = as_inputs(owner, "x", x).to(D)
    if x.ndim != 2:
        raise ParameterError(f"{owner}: x must have shape (N, d) (got {tuple(x.shape)})")
    for i, layer in enumerate(layers):
        if not isinstance(layer, Dense if i % 2 == 0 else Nonlinearity):
            raise ParameterError(f"{owner}: {layer!r} at position {i} is not supported here: the network "
                                 f"must be {_SUPPORTED}")
    if not layers or len(layers) % 2 == 0:
        raise ParameterError(f"{owner}: the network must end with a Dense layer (its readout): {_SUPPORTED}")
    n = x.shape[0]
    first = layers[0]
    K = float(first.W_std) ** 2 * (x @ x.T) / x.shape[1] + (0.0 if first.b_std is None else float(first.b_std) ** 2)
    V = torch.zeros((n,) * 4, dtype=D)
    K1 = torch.zeros((n, n), dtype=D)
    rest = layers[1:]
    for phi, dense in zip(rest[::2], rest[1::2]):
        cw = float(dense.W_std) ** 2
        cb = 0.0 if dense.b_std is None else float(dense.b_std) ** 2
        fns = _derivatives(phi.fn, 4)
        E = _two_point(fns, K, degree2)
        M = _pair_derivative(E, n)
        F4 = _four_point(fns[0], K, degree4)
        # <s_a s_b> by the layer's own kernel rule (closed form or its exact mixture), so
        # that the limit is the network's NNGP to rounding; the corrections use quadrature.
        q = K.diagonal()
        s00, _ = phi.dual(q[:, None].expand_as(K), q[None, :].expand_as(K), K)
        V_new = cw**2 * (F4 - s00[:, :, None, None] * s00[None, None]) + cw**2 * torch.einsum(
            "abef,efgh,cdgh->abcd", M, V, M)
        K1_new = cw * (torch.einsum("abef,ef->ab", M, K1) + _quartic_term(E, V) / 8)
        K, V, K1 = cb + cw * s00, V_new, K1_new
    four = V + V.permute(0, 2, 1, 3) + V.permute(0, 2, 3, 1)  # V_(ab)(cd) + V_(ac)(bd) + V_(ad)(bc)
    return FiniteWidthNNGP(K, K1, V, four)
