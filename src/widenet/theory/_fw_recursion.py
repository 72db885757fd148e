"""The layer-to-layer recursions of the 1/n statistics of a deep MLP (``theory.finite_width``).

Notation (Roberts, Yaida & Hanin, *The Principles of Deep Learning Theory*, arXiv 2106.10165,
"PDLT"; ntk parameterization, so PDLT's learning-rate factors are ``lambda_b = C_b`` and
``lambda_W = C_W``). Layer ``l`` has preactivations ``z_i;a`` (unit i, input a) and NTK
``H_i1i2;ab``; the next layer is ``z' = sqrt(C_b) b + sqrt(C_W / n) W phi(z)`` with every
``W``, ``b`` standard normal, so that

    H'_i1i2;ab = delta_i1i2 G_ab + (C_W / n) sum_j1j2 W_i1j1 W_i2j2 phi'_j1;a phi'_j2;b H_j1j2;ab,
    G_ab       = C_b + (C_W / n) sum_j phi_j;a phi_j;b.

To order 1/n every layer is described by (all tensors over the inputs; E the expectation
over initializations, Delta the deviation from it):

    E[z_a z_b]                                = K_ab + K1_ab / n
    E[z_i1 z_i2 z_i3 z_i4]_connected          = (d12 d34 V_(ab)(cd) + d13 d24 V_(ac)(bd) + d14 d23 V_(ad)(bc)) / n
    E[H_i1i2;ab]                              = d12 (Theta_ab + Theta1_ab / n)
    E[Delta H_i1i2;ab z_i3;c z_i4;d]          = (d12 d34 D_abcd + d13 d24 F_abcd + d14 d23 F_abdc) / n
    E[Delta H_i1i2;ab Delta H_i3i4;cd]        = (d12 d34 A_abcd + d13 d24 B_abcd + d14 d23 B_abdc) / n

(``d`` Kronecker deltas on the unit indices). PDLT's F and B carry their indices in the order
``F_{a c b d}``, ``B_{a c b d}``; here the NTK's two inputs come first. With ``s = phi(z)``,
``<.>`` the Gaussian expectation under K, ``S = <s_a s_b>``, ``S' = <s'_a s'_b>`` and the
Price's-theorem derivatives ``M_ab,ef = 1/2 <d_e d_f (s_a s_b)>``,
``N_ab,ef = 1/2 <d_e d_f (s'_a s'_b)>``, ``J_ac,e = <d_e (s'_a s_c)>``:

    V' = C_W^2 [(<s s s s> - S S) + M V M^T]
    K1' = C_W [M K1 + 1/8 <d^4 (s s)> V]
    X  = C_W^2 [Theta_ab (<s'_a s'_b s_c s_d> - S'_ab S_cd) + Theta_ab (N V M^T)_abcd + S'_ab (M D^T)_abcd]
    D' = V' + X
    F'_abcd = C_W^2 [Theta_ab <s'_a s'_b s_c s_d> + sum_ef J_ac,e J_bd,f F_abef]
    Y  = C_W^2 [Theta_ab Theta_cd (<s' s' s' s'> - S' S' + N V N^T) + S'_ab Theta_cd (N D^T)_cdab
                + Theta_ab S'_cd (N D^T)_abcd + S'_ab S'_cd A_abcd]
    A' = V' + X_abcd + X_cdab + Y
    B'_abcd = C_W^2 [Theta_ab Theta_cd <s'_a s'_b s'_c s'_d> + S'_ac S'_bd B_abcd]
    Theta1' = K1' + C_W [S' Theta1 + Theta (N K1 + 1/8 <d^4 (s' s')> V) + N (D + F + F^T)]

(the last contraction on the pair ``(a, b)`` itself: ``sum_ef N_ab,ef (D_abef + F_abef + F_abfe)``).

The dNTK ``dH_i0i1i2;a0a1a2 = sum_mu,nu d^2 z_i0;a0 / d mu d nu  d z_i1;a1 / d mu  d z_i2;a2 / d nu``
(PDLT ch. 11, ``lambda = C``) is odd in the parameters, ``E[dH] = 0``, and

    E[dH_i0i1i2;a0a1a2 z_i3;c] = (d03 d12 P_a0a1a2c + d01 d23 Q_a0a1a2c + d02 d13 Q_a0a2a1c) / n

(PDLT's P and Q, here in one index order). The new layer's dNTK has three parts: one new
weight and one earlier parameter in either order, and two earlier parameters; Gaussian
integration over the new weights gives, with ``L_a0a1,e = <d_e (s''_a0 s'_a1)>``,

    P'_a0a1a2c = C_W^2 [Theta_a0a1 Theta_a0a2 <s''_a0 s'_a1 s'_a2 s_c> + <s''_a0 s_c> S'_a1a2 B_a0a1a0a2
                        + S'_a1a2 sum_e J_a0c,e P_a0a1a2e]
    Q'_a0a1a2c = F'_a0a2a1c + C_W^2 [Theta_a0a1 Theta_a0a2 <s''_a0 s'_a1 s'_a2 s_c>
                        + Theta_a0a1 sum_ef L_a0a1,e J_a2c,f F_a0a2ef + S'_a0a1 sum_f J_a2c,f Q_a0a1a2f]

(the first term of Q' is the mixed part, a new weight against an earlier parameter, which is
exactly the new layer's F). The terms with ``s''`` in front (the fresh ones, B's and L's)
come from the activation's second derivative along the path; for the ReLU family it is
zero almost surely, so they drop there, while ``J``, a derivative of an expectation, keeps
its delta functions.
The ddNTKs ``ddI_i0i1i2i3 = d^3 z_i0 [g_i1, g_i2, g_i3]`` and ``ddII_i1i2i3i4 = <Hess z_i1 g_i3,
Hess z_i2 g_i4>`` (``g`` the gradients; PDLT ch. 11) have means of order 1/n,

    E[ddI_i0i1i2i3]  = (d01 d23 R_a0a1a2a3 + d02 d13 R_a0a2a1a3 + d03 d12 R_a0a3a1a2) / n
    E[ddII_i1i2i3i4] = (d12 d34 S_a1a2a3a4 + d13 d24 T_a1a2a3a4 + d14 d23 U_a1a2a3a4) / n

(R symmetric in its last two inputs; PDLT's R, S, T, U, here in slot order). With ``(a, b,
c, d)`` for the four inputs and ``L_ab,e = <d_e (s''_a s'_b)>`` (``L_ab,a = <s'''_a s'_b>``,
``L_ab,b = <s''_a s''_b>``), Gaussian integration over the new weights gives

    R' = P'_acdb + C_W^2 [Theta_ab Theta_ac Theta_ad <s'''_a s'_b s'_c s'_d> + Theta_ab <s'''_a s'_b> S'_cd B_acad
                          + Theta_ab S'_cd sum_e L_ab,e P_acde + S'_ab S'_cd R]
    S' = B'_acbd + C_W^2 [W + Theta_ab <s''_a s''_b> S'_cd B_acbd + S'_ab S'_cd S]
    T' = F' + C_W^2 [W + Theta_ab Theta_bd <s'_a s''_b s_c s'_d> + Theta_ab Theta_ac <s''_a s'_b s'_c s_d>
                     + Theta_bd (J L F)_abcd + Theta_ac (L J F)_abcd + Theta_ac Theta_bd (L L F)_abcd
                     + S'_bd sum_e (J + Theta_ac L)_ac,e Q_bdae + S'_ac sum_e (J + Theta_bd L)_bd,e Q_acbe
                     + S'_ac S'_bd T]
    U' = C_W^2 [W + S'_ad S'_bc U],     W = Theta_ab Theta_ac Theta_bd <s''_a s''_b s'_c s'_d>

where ``(X Y F)_abcd = sum_ef X_ac,e Y_bd,f F_abef``. A new weight in one slot gives back the new layer's own P (for
ddI) and B, F (for ddII), the first terms; the rest take two or three earlier parameters.
The first hidden layer is Gaussian with a deterministic NTK: ``V = D = F = A = B = K1 =
Theta1 = 0`` (and no dNTK or ddNTKs: ``P = Q = R = S = T = U = 0``). They follow from
Gaussian integration over the new layer's weights given the previous layer, the previous layer's statistics entering through cumulant expansions
(``E[f(z) X] = 1/2 sum <d_e d_f f> E[X z_e z_f]`` for the centred, order-1/sqrt(n) X). They
are the multi-input forms of PDLT's recursions for the four-point vertex and the
next-to-leading-order metric (ch. 4) and for the NTK's mean, its cross-correlations D, F with
the preactivations and its variance A, B (ch. 8), written for ``lambda = C``, and of
PDLT ch. 11's dNTK and ddNTK statistics; this derivation stands on its own, and the test suite checks every tensor against Monte Carlo of finite
networks.

Hidden layers of unequal widths ``n_l = rho_l n``: every term of a layer's statistics that is
born in that layer (the ones without a previous V, D, F, A, B) carries ``1 / rho_l``; the
propagated ones keep the factors they had. All tensors are batched: ``(B, m, ...)``, B
independent problems of m inputs each.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ._fw_gauss import Gauss, chain
from ._fw_relu import RectifiedExpectations


@dataclass
class State:
    """The statistics of one layer's preactivations, batched ``(B, m, ...)``; see the module
    docstring. ``A``, ``B``, ``P``, ``Q`` are None when the fluctuations are not wanted."""

    K: torch.Tensor
    Theta: torch.Tensor
    K1: torch.Tensor
    Theta1: torch.Tensor
    V: torch.Tensor
    D: torch.Tensor
    F: torch.Tensor
    A: torch.Tensor | None
    B: torch.Tensor | None
    P: torch.Tensor | None = None
    Q: torch.Tensor | None = None
    R: torch.Tensor | None = None
    S: torch.Tensor | None = None
    T: torch.Tensor | None = None
    U: torch.Tensor | None = None


def first_layer(K: torch.Tensor, variance: bool, dntk: bool = False) -> State:
    """The first layer's preactivations: Gaussian, NTK equal to their covariance, no dNTK
    (they are linear in the parameters). ``variance``: carry A, B; ``dntk``: and P, Q and the
    ddNTKs' R, S, T, U."""
    zero2 = torch.zeros_like(K)
    zero4 = K.new_zeros(K.shape + K.shape[1:])
    more = ([zero4.clone() for _ in range(2)] if variance else [None] * 2) + (
        [zero4.clone() for _ in range(6)] if variance and dntk else [None] * 6)
    return State(K, K.clone(), zero2, zero2.clone(), zero4, zero4.clone(), zero4.clone(), *more)


class _Index:
    """Gathers of the pair contractions ``sum_ef C_ab,ef T_ef...`` where ``C_ab,ef`` is a
    Price's-theorem derivative of a product ``f(z_a) g(z_b)``: it is nonzero only for e, f in
    {a, b}, with coefficients ``(c_aa, c_ab = c_ba, c_bb)`` each ``(B, m, m)``. At a == b the
    four terms land on the same index and add up to the right value."""

    def __init__(self, m: int):
        r = torch.arange(m)
        self.a, self.b = torch.meshgrid(r, r, indexing="ij")
        self.a4, self.b4, self.c4, self.d4 = torch.meshgrid(r, r, r, r, indexing="ij")

    def first(self, c, T):
        """``out[a, b, ...] = sum_ef C_ab,ef T[e, f, ...]``, T ``(B, m, m, ...)``."""
        caa, cab, cbb = (x.reshape(x.shape + (1,) * (T.ndim - 3)) for x in c)
        a, b = self.a, self.b
        return caa * T[:, a, a] + cab * (T[:, a, b] + T[:, b, a]) + cbb * T[:, b, b]

    def last(self, c, T):
        """``out[x, y, a, b] = sum_ef C_ab,ef T[x, y, e, f]``."""
        return self.first(c, T.permute(0, 3, 4, 1, 2)).permute(0, 3, 4, 1, 2)

    def pair(self, c, T2):
        """``out[a, b] = sum_ef C_ab,ef T2[e, f]``."""
        return self.first(c, T2)

    def own(self, c, T):
        """``out[a, b] = sum_ef C_ab,ef T[a, b, e, f]``."""
        caa, cab, cbb = c
        a, b = self.a, self.b
        return caa * T[:, a, b, a, a] + cab * (T[:, a, b, a, b] + T[:, a, b, b, a]) + cbb * T[:, a, b, b, b]

    def quartic(self, g, base: int, V):
        """``out[a, b] = sum_efgh <d_e d_f d_g d_h (f(z_a) f(z_b))> V[e, f, g, h]`` with
        ``f = phi^(base)``: the 16 ways of placing the four derivatives on the two factors
        (O(m^2), not an m^6 tensor)."""
        values = g.placements(base)
        out = 0
        for slots in torch.cartesian_prod(*[torch.tensor([0, 1])] * 4).tolist():
            idx = tuple(self.a if s == 0 else self.b for s in slots)
            out = out + values[slots.count(0)] * V[(slice(None),) + idx]
        return out

    def carry_F(self, j1, j2, F):
        """``out[a, b, c, d] = sum_ef J_ac,e J_bd,f F[a, b, e, f]`` with ``J_ac,a = j1[a, c]``,
        ``J_ac,c = j2[a, c]`` (and their sum at a == c)."""
        return self.carry((j1, j2), (j1, j2), F)

    def carry(self, x, y, F):
        """``out[a, b, c, d] = sum_ef X_ac,e Y_bd,f F[a, b, e, f]``, ``X_ac,a = x[0][a, c]``,
        ``X_ac,c = x[1][a, c]``, Y the same from ``y``."""
        a, b, c, d = self.a4, self.b4, self.c4, self.d4
        ac1, ac2 = x[0][:, a, c], x[1][:, a, c]
        bd1, bd2 = y[0][:, b, d], y[1][:, b, d]
        return (ac1 * bd1 * F[:, a, b, a, b] + ac1 * bd2 * F[:, a, b, a, d]
                + ac2 * bd1 * F[:, a, b, c, b] + ac2 * bd2 * F)


def expectations(phi, K: torch.Tensor, degrees: dict):
    """The Gaussian expectations the recursions need, for ``phi`` under ``K``: by quadrature
    of the activation's derivatives for smooth ones, by Price's theorem on closed forms for
    the ReLU family (two inputs at a time)."""
    from ..layers import ABRelu

    if isinstance(phi, ABRelu):
        return RectifiedExpectations(K, float(phi.a), float(phi.b))
    return Gauss(K, chain(phi), degrees)


def _outer(x, y):
    return x[:, :, :, None, None] * y[:, None, None, :, :]


def step(state: State, phi, cw: float, cb: float, rho: float, degrees: dict) -> State:
    """The statistics after ``phi`` and then a Dense layer ``(C_W, C_b)``, the averaged hidden
    layer having relative width ``rho``."""
    K, Theta, V, Dt, F, A, Bt = state.K, state.Theta, state.V, state.D, state.F, state.A, state.B
    m = K.shape[-1]
    ix = _Index(m)
    g = expectations(phi, K, degrees)
    g.prepare(variance=A is not None, dntk=state.P is not None)
    q = K.diagonal(dim1=1, dim2=2)
    # the leading order by the layer's own kernel rule (closed form or its exact mixture), so
    # that the limit is the network's NNGP and NTK to rounding; corrections by quadrature.
    S, S1 = phi.dual(q[:, :, None].expand_as(K), q[:, None, :].expand_as(K), K)
    M, N = g.pair(0), g.pair(1)
    T4, U = g.four((0, 0, 0, 0)), g.four((1, 1, 0, 0))
    w2 = cw * cw

    K_new = cb + cw * S
    Theta_new = K_new + cw * S1 * Theta
    V_new = w2 * ((T4 - _outer(S, S)) / rho + ix.last(M, ix.first(M, V)))
    K1_new = cw * (ix.pair(M, state.K1) + ix.quartic(g, 0, V) / 8)
    th = Theta[:, :, :, None, None]
    X = w2 * (th * (U - _outer(S1, S)) / rho + th * ix.last(M, ix.first(N, V))
              + S1[:, :, :, None, None] * ix.last(M, Dt))
    D_new = V_new + X
    F_new = w2 * (th * U / rho + ix.carry_F(*g.first(), F))
    Theta1_new = K1_new + cw * (S1 * state.Theta1 + Theta * (ix.pair(N, state.K1) + ix.quartic(g, 1, V) / 8)
                                + ix.own(N, Dt + F + F.transpose(3, 4)))
    A_new = B_new = None
    if A is not None:
        W4 = g.four((1, 1, 1, 1))
        tt = _outer(Theta, Theta)
        Z = ix.last(N, Dt)  # Z[x, y, a, b] = sum_ef N_ab,ef D[x, y, e, f]
        Y = w2 * (tt * ((W4 - _outer(S1, S1)) / rho + ix.last(N, ix.first(N, V)))
                  + _outer(S1, Theta) * Z + _outer(Theta, S1) * Z.permute(0, 3, 4, 1, 2)
                  + _outer(S1, S1) * A)
        A_new = V_new + X + X.permute(0, 3, 4, 1, 2) + Y
        a, b, c, d = ix.a4, ix.b4, ix.c4, ix.d4
        B_new = w2 * (tt * W4 / rho + S1[:, a, c] * S1[:, b, d] * Bt)
        if state.P is not None:
            P_new, Q_new = _dntk(state, g, ix, S1, F_new, w2, rho)
            dd = _ddntk(state, g, ix, S1, B_new, F_new, P_new, w2, rho)
            return State(K_new, Theta_new, K1_new, Theta1_new, V_new, D_new, F_new, A_new, B_new, P_new, Q_new, *dd)
    return State(K_new, Theta_new, K1_new, Theta1_new, V_new, D_new, F_new, A_new, B_new)


def _dntk(state: State, g, ix: _Index, S1, F_new, w2: float, rho: float):
    """The dNTK's correlation with the preactivations, ``P`` and ``Q`` (module docstring).
    The terms with ``s''`` come from the second derivative of the activation along a path;
    for the ReLU family it is zero almost surely (``g.pathwise_second`` False) and they drop,
    while the derivatives of expectations (``J``) keep their delta functions."""
    Theta, F, Bt, P, Q = state.Theta, state.F, state.B, state.P, state.Q
    a0, a1, a2, c = ix.a4, ix.b4, ix.c4, ix.d4
    j1, j2 = g.first()  # J_(a c), a and J_(a c), c of s'_a s_c
    P_new = w2 * S1[:, a1, a2] * (j1[:, a0, c] * P[:, a0, a1, a2, a0] + j2[:, a0, c] * P)
    Q_new = F_new[:, a0, a2, a1, c] + w2 * S1[:, a0, a1] * (j1[:, a2, c] * Q[:, a0, a1, a2, a2] + j2[:, a2, c] * Q)
    if g.pathwise_second:
        k1, k2 = g.two(3, 1), g.two(2, 2)  # the same of s''_a0 s'_a1
        fresh = Theta[:, a0, a1] * Theta[:, a0, a2] * g.four((2, 1, 1, 0)) / rho
        P_new = P_new + w2 * (fresh + g.two(2, 0)[:, a0, c] * S1[:, a1, a2] * Bt[:, a0, a1, a0, a2])
        carried_F = (k1[:, a0, a1] * j1[:, a2, c] * F[:, a0, a2, a0, a2]
                     + k1[:, a0, a1] * j2[:, a2, c] * F[:, a0, a2, a0, c]
                     + k2[:, a0, a1] * j1[:, a2, c] * F[:, a0, a2, a1, a2]
                     + k2[:, a0, a1] * j2[:, a2, c] * F[:, a0, a2, a1, c])
        Q_new = Q_new + w2 * (fresh + Theta[:, a0, a1] * carried_F)
    return P_new, Q_new


def _ddntk(state: State, g, ix: _Index, S1, B_new, F_new, P_new, w2: float, rho: float):
    """The ddNTKs' means ``R``, ``S``, ``T``, ``U`` (module docstring). As in ``_dntk``, the
    terms with ``s''`` or ``s'''`` along a path drop for the ReLU family."""
    Theta, F, Bt, P, Q = state.Theta, state.F, state.B, state.P, state.Q
    a, b, c, d = ix.a4, ix.b4, ix.c4, ix.d4
    j = g.first()  # J_(a c), a and J_(a c), c of s'_a s_c
    Sab, Scd, Sac, Sbd = S1[:, a, b], S1[:, c, d], S1[:, a, c], S1[:, b, d]

    def with_q(x):  # (sum_e X_(a c), e Q[b, d, a, e], the same with (a, c) and (b, d) swapped)
        return (x[0][:, a, c] * Q[:, b, d, a, a] + x[1][:, a, c] * Q[:, b, d, a, c],
                x[0][:, b, d] * Q[:, a, c, b, b] + x[1][:, b, d] * Q[:, a, c, b, d])

    jq_ac, jq_bd = with_q(j)
    R_new = P_new[:, a, c, d, b] + w2 * Sab * Scd * state.R
    S_new = B_new[:, a, c, b, d] + w2 * Sab * Scd * state.S
    T_new = F_new + w2 * (Sbd * jq_ac + Sac * jq_bd + Sac * Sbd * state.T)
    U_new = w2 * S1[:, a, d] * S1[:, b, c] * state.U
    if g.pathwise_second:
        k = g.two(3, 1), g.two(2, 2)  # L_(a b), a and L_(a b), b of s''_a s'_b
        th = Theta
        t3 = th[:, a, b] * th[:, a, c] * th[:, b, d] * g.four((2, 2, 1, 1)) / rho
        f2110 = g.four((2, 1, 1, 0))
        lq_ac, lq_bd = with_q(k)
        R_new = R_new + w2 * (th[:, a, b] * th[:, a, c] * th[:, a, d] * g.four((3, 1, 1, 1)) / rho
                              + th[:, a, b] * k[0][:, a, b] * Scd * Bt[:, a, c, a, d]
                              + th[:, a, b] * Scd * (k[0][:, a, b] * P[:, a, c, d, a] + k[1][:, a, b] * P[:, a, c, d, b]))
        S_new = S_new + w2 * (t3 + th[:, a, b] * k[1][:, a, b] * Scd * Bt[:, a, c, b, d])
        T_new = T_new + w2 * (th[:, a, b] * th[:, b, d] * f2110.permute(0, 2, 1, 4, 3) / rho
                              + th[:, a, b] * th[:, a, c] * f2110 / rho + t3
                              + th[:, b, d] * ix.carry(j, k, F) + th[:, a, c] * ix.carry(k, j, F)
                              + th[:, a, c] * th[:, b, d] * ix.carry(k, k, F)
                              + th[:, a, c] * Sbd * lq_ac + th[:, b, d] * Sac * lq_bd)
        U_new = U_new + w2 * t3
    return R_new, S_new, T_new, U_new
