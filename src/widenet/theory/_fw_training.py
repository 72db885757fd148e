"""The mean prediction of a finite-width MLP trained by gradient descent, to order 1/n.

Full-batch gradient descent on ``L = 1/2 sum_alpha (f_alpha - y_alpha)^2`` (alpha over the
training inputs, one output unit, constant learning rate ``lr``) moves the parameters by
``-lr sum_alpha e_alpha grad f_alpha`` with ``e = f - y``. Taylor's theorem in that step
gives the exact updates, to the order at which they matter at 1/n (PDLT ch. 11 and ∞; the
fourth derivatives of f and beyond enter at ``O(n^-2)``), of the outputs on every input
delta, the NTK ``H``, the dNTK ``dH`` and the ddNTKs (constant at this order):

    f'_d      = f_d - lr H_da e_a + lr^2/2 dH_dab e_a e_b - lr^3/6 ddI_dabc e_a e_b e_c
    H'_de     = H_de - lr (dH_dea + dH_eda) e_a + lr^2/2 (ddI_deab + ddI_edab + 2 ddII_deab) e_a e_b
    dH'_def   = dH_def - lr (ddI_defa + ddII_defa + ddII_dfea) e_a

(sums over repeated training indices; ``dH_def = d^2 f_d [grad f_e, grad f_f]``,
``ddI_defg = d^3 f_d [grad f_e, grad f_f, grad f_g]``, ``ddII_defg = <Hess f_d grad f_f,
Hess f_e grad f_g>``, PDLT's dNTK and ddNTKs). At initialization the outputs are Gaussian
(``K``), the NTK is ``Theta + Theta1 / n`` plus a fluctuation of covariance ``A / n``, the dNTK
is ``O(1/n)`` with ``E[dH_abc f_d] = P_abcd / n`` and the ddNTKs are ``O(1/n)`` with means
``R / n``, ``S / n`` (``FiniteWidth``'s fields). Expanding the trajectory in these to order
1/n, the expected output after t steps is

    E[f_t] = m_t(Theta) + (1/n) [ m_t'(Theta)[Theta1] + 1/2 m_t''(Theta)[A]
                                  + sum_d d_(f0_d) d_dH f_t [P_...d] + E_f0 d_dd f_t [R, S] ]

where ``m_t(H)`` is the frozen-kernel mean prediction ``lr H_:A sum_(s<t) (1 - lr H_AA)^s y``,
and the last two are the first-order responses of the trajectory to the dNTK (paired with
the initial outputs it correlates with) and to the ddNTKs (averaged over the initial
outputs, a cubic polynomial in them). Every term is computed exactly by forward-mode
differentiation of the step map above (``torch.func.jvp``), not by truncated sums; the
result is the order-1/n solution of PDLT ch. ∞ written as derivatives of the trajectory.
The NTK's correlation with the outputs, the four-point function and the outputs' own 1/n
correction do not enter the mean: each would pair with an odd power of the initial
outputs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from ..errors import ParameterError, ShapeError

D = torch.float64
OWNER = "FiniteWidth.trained_mean"


@dataclass(frozen=True)
class TrainedMean:
    """The mean output of a width-n network after t steps of gradient descent, to order 1/n,
    from :meth:`FiniteWidth.trained_mean` (shapes ``(T, M)`` for T requested steps and M
    test inputs, or ``(M,)`` for one step count).

    Fields:
        steps: the step counts.
        frozen: the infinite-width prediction, kernel regression with the frozen NTK Theta:
            ``lr Theta_xA sum_(s<t) (1 - lr Theta_AA)^s y``.
        correction: c with ``E[f_t(x)] = frozen + c / n + O(n^-2)``.
        parts: the correction split by its source: ``"ntk_mean"`` (Theta1),
            ``"ntk_fluctuation"`` (the NTK's variance at initialization), ``"dntk"`` (the NTK
            moving, through the dNTK's correlation with the initial outputs) and
            ``"ddntk"`` (the ddNTKs' means); they add up to ``correction``.
    """

    steps: tuple
    frozen: torch.Tensor
    correction: torch.Tensor
    parts: dict

    def at(self, n: Any) -> torch.Tensor:
        """``frozen + correction / n``: the expected prediction at width scale ``n``.

        Example:

            >>> net = wn.Serial(wn.Dense(1, 1.5), wn.Tanh(), wn.Dense(1, 1.5), wn.Tanh(), wn.Dense(1))
            >>> fw = wn.theory.finite_width(net, torch.randn(4, 2))
            >>> tm = fw.trained_mean(torch.randn(2, 2), torch.randn(4), lr=0.1, t=50)
            >>> tm.at(128).shape
            torch.Size([2])
        """
        from ._finite_width import _width

        return self.frozen + self.correction / _width("trained_mean(...).at", n)


def _steps(t: Any) -> tuple[tuple, bool]:
    single = isinstance(t, (int,)) and not isinstance(t, bool)
    values = [t] if single else t
    try:
        steps = tuple(int(s) for s in values)
        ok = all(not isinstance(s, bool) and float(s) == int(s) and int(s) >= 0 for s in values)
    except (TypeError, ValueError):
        ok = False
    if not ok or not steps:
        raise ParameterError(f"{OWNER}: t must be a non-negative number of steps or a sequence of them (got {t!r})")
    return steps, single


def check(fw, x_test: Any, y_train: Any, lr: Any, t: Any):
    """Validated ``(x_test (M, d), y (N,), lr, steps, single)``, before any work."""
    from .._validate import as_inputs

    x = fw._x
    readout = fw._layers[-1]
    if int(readout.out_features) != 1:
        raise ParameterError(
            f"{OWNER}: the network's readout {readout!r} has {readout.out_features} outputs; the trained "
            "mean is derived for one output unit (outputs trained together on MSE couple at order 1/n "
            "through the NTK's off-diagonal fluctuations): end the network with Dense(1)")
    from ..layers import ABRelu

    kinked = [layer for layer in fw._layers if isinstance(layer, ABRelu)]
    if kinked:
        raise ParameterError(
            f"{OWNER}: the trained mean needs a smooth activation, and {kinked[0]!r} is of the ReLU family: "
            "trained by gradient descent, a ReLU network's units whose preactivations cross the kink move "
            "its mean prediction at order n^-1/2 (measured: n (E f_t - frozen) grows with n instead of "
            "settling), which no 1/n expansion holds; use a smooth activation (Gelu, Softplus, Tanh, Erf) or "
            "train finite networks with theory.finite_width_training")
    xt = as_inputs(OWNER, "x_test", x_test).to(device="cpu", dtype=D)
    if xt.ndim != 2 or xt.shape[1] != x.shape[1] or xt.shape[0] < 1:
        raise ShapeError(f"{OWNER}: x_test must have shape (M, {x.shape[1]}) like the training inputs "
                         f"{tuple(x.shape)} (got {tuple(xt.shape)})")
    y = as_inputs(OWNER, "y_train", y_train).to(device="cpu", dtype=D)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.shape != (x.shape[0],):
        raise ShapeError(f"{OWNER}: y_train must have shape ({x.shape[0]},) (or ({x.shape[0]}, 1)), one target "
                         f"per training input (got {tuple(y.shape)})")
    try:
        lr = float(lr)
    except (TypeError, ValueError):
        lr = math.nan
    top = float(torch.linalg.eigvalsh(fw.ntk).max())
    if not math.isfinite(lr) or lr <= 0 or lr * top >= 2:
        raise ParameterError(
            f"{OWNER}: lr must be positive and below 2 / lambda_max(Theta) = {2 / top:.4g}, where gradient "
            f"descent on the infinite-width network converges and the 1/n expansion holds (got {lr!r})")
    steps, single = _steps(t)
    return xt, y, lr, steps, single


def trained_mean(fields: dict, n_train: int, y: torch.Tensor, lr: float, steps: Sequence[int]) -> dict:
    """The frozen prediction and the four parts of the correction on every input (train
    first) at each step of ``steps``, from the (N_all, ...) ``fields``: ``ntk``,
    ``ntk_correction``, ``nngp`` (train block), ``ntk_variance``, ``dntk``, ``ddntk_i``,
    ``ddntk_ii`` (module docstring)."""
    Theta = fields["ntk"]
    m, a = Theta.shape[0], n_train
    wanted = sorted(set(steps))
    last, keep_at = wanted[-1], set(wanted)
    Th, ThA = Theta[:, :a], Theta[:a, :a]

    def record(out, s, value):
        if s in keep_at:
            out.append(value)

    # the frozen trajectory from outputs z0 (B, a) on the training inputs: errors e_t (B, a)
    def errors(z0):
        e, out = z0 - y, []
        for _ in range(last + 1):
            out.append(e)
            e = e - lr * e @ ThA
        return out

    # the NTK's mean shift and fluctuation: the frozen prediction (outputs at zero) along
    # H = Theta + eps V, to second order in eps, for a batch of directions V (B, m, a)
    def frozen(V):
        e0 = errors(torch.zeros(1, a, dtype=D))
        B = V.shape[0]
        z, z1, z2 = (torch.zeros(B, m, dtype=D) for _ in range(3))
        out = [], [], []
        for s in range(last + 1):
            for acc, value in zip(out, (z, z1, z2)):
                record(acc, s, value)
            e, e1, e2 = e0[s].expand(B, a), z1[:, :a], z2[:, :a]
            Ve = torch.einsum("bij,bj->bi", V, e)
            Ve1 = torch.einsum("bij,bj->bi", V, e1)
            z, z1, z2 = z - lr * e @ Th.T, z1 - lr * (e1 @ Th.T + Ve), z2 - lr * (e2 @ Th.T + Ve1)
        return [torch.stack(o, 1) for o in out]  # (B, T, m): the coefficients of eps^0, eps^1, eps^2

    base, ntk_mean, _ = (o[0] for o in frozen(fields["ntk_correction"][None, :, :a]))
    C = fields["ntk_variance"][:, :a, :, :a].reshape(m * a, m * a)
    lam, vec = torch.linalg.eigh((C + C.T) / 2)
    keep = lam > lam.abs().max() * 1e-12
    fluct = 0
    for s in range(0, int(keep.sum()), _DIRECTIONS):
        lm, vc = lam[keep][s:s + _DIRECTIONS], vec[:, keep].T[s:s + _DIRECTIONS].reshape(-1, m, a)
        fluct = fluct + torch.einsum("b,btm->tm", lm, frozen(vc)[2])  # 1/2 lambda d^2/deps^2 = lambda eps^2-coefficient

    # the first-order response of the outputs to a dNTK dH0 (B, m, m, a) at initialization
    # and (dd) to the ddNTKs, along the frozen trajectory from z0 (B, a): the step map's
    # linearization (module docstring)
    def response(z0, dH0=None, dd=None):
        es = errors(z0)
        B = z0.shape[0]
        dz = torch.zeros(B, m, dtype=D)
        dH = torch.zeros(B, m, a, dtype=D)
        ddH = dH0 if dH0 is not None else torch.zeros(B, m, m, a, dtype=D)
        out = []
        for s in range(last + 1):
            record(out, s, dz)
            e = es[s]
            dHe = torch.einsum("bijk,bk->bij", ddH, e)
            dz_new = dz - lr * (dz[:, :a] @ Th.T + torch.einsum("bij,bj->bi", dH, e)
                                - lr / 2 * torch.einsum("bij,bj->bi", dHe[:, :, :a], e))
            dH_new = dH - lr * (dHe[:, :, :a] + dHe[:, :a].transpose(1, 2))
            if dd is not None:
                I4, IIa, IIb = dd
                Ie = torch.einsum("ijkl,bl->bijk", I4, e)
                IIe = torch.einsum("ijkl,bl->bijk", IIa, e)
                Iee = torch.einsum("bijk,bk->bij", Ie, e)
                IIee = torch.einsum("bijk,bk->bij", IIe, e)
                dz_new = dz_new - lr**3 / 6 * torch.einsum("bij,bj->bi", Iee[:, :, :a], e)
                dH_new = dH_new + lr**2 / 2 * (Iee[:, :, :a] + Iee[:, :a].transpose(1, 2) + 2 * IIee[:, :, :a])
                ddH = ddH - lr * (Ie + IIe + torch.einsum("ijkl,bl->bikj", IIb, e))
            dz, dH = dz_new, dH_new
        return torch.stack(out, 1)  # (B, T, m)

    # the dNTK: E[dH . G(f0)] = sum_d E[dH f0_d] d G / d f0_d, G quadratic in f0, so the
    # derivative at zero is an exact central difference
    eye = torch.eye(a, dtype=D)
    P = fields["dntk"][:, :, :a, :a].permute(3, 0, 1, 2)
    r = response(torch.cat([eye, -eye]), torch.cat([P, P]))
    dntk = 0.5 * (r[:a] - r[a:]).sum(0)
    # the ddNTKs: a cubic polynomial in the initial outputs, averaged over N(0, K_AA) by its
    # value at zero and exact second differences along K_AA's scaled eigenvectors
    I4, II4 = fields["ddntk_i"], fields["ddntk_ii"]
    dd = (I4[:, :, :a, :a], II4[:, :, :a, :a], II4[:, :a, :, :a])
    kappa, kv = torch.linalg.eigh(fields["nngp"][:a, :a])
    w = (kv * kappa.clamp_min(0).sqrt()).T
    r = response(torch.cat([torch.zeros(1, a, dtype=D), w, -w]), dd=dd)
    ddntk = r[0] + 0.5 * (r[1:a + 1] + r[a + 1:] - 2 * r[:1]).sum(0)
    parts = {"ntk_mean": ntk_mean, "ntk_fluctuation": fluct, "dntk": dntk, "ddntk": ddntk}
    index = [wanted.index(s) for s in steps]
    return {"frozen": base[index], "parts": {k: v[index] for k, v in parts.items()}}


# directions pushed through the trajectory at once
_DIRECTIONS = 256
