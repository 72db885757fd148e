"""Large-but-finite width: the 1/n corrections of perturbation theory for deep MLPs.

``finite_width(net, x)`` runs the layer-to-layer recursions of ``_fw_recursion`` (Roberts,
Yaida & Hanin, *The Principles of Deep Learning Theory*, arXiv 2106.10165, chapters 4 and 8;
Yaida, arXiv 1910.00019) on a network ``Dense -> phi -> Dense -> ... -> Dense`` and returns
the output's statistics to order 1/n, for one output unit.

The (N, N) objects need only the statistics of the pair of inputs they name, so they are
computed as N (N + 1) / 2 independent two-input problems (O(N^2) work and memory); the
(N, N, N, N) ones run the recursion on all N inputs at once, on first access, and check the
memory they need first.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cached_property
from numbers import Real
from typing import Any, Optional, Sequence

import torch

from .._validate import as_inputs, available_memory, check_memory
from ..errors import OutOfMemoryError, ParameterError, ShapeError
from ._fw_recursion import State, first_layer, step
from ._fw_training import TrainedMean
from ._progress import progress_bar

__all__ = ["FiniteWidth", "finite_width"]

D = torch.float64
OWNER = "theory.finite_width"
# Gauss-Hermite degree per dimension of the expectations over three and four distinct inputs
# for polynomial activations, where it is exact (the others use _fw_gauss's trapezoidal rules)
DEGREES = {3: 24, 4: 14}
# float64 tensors of N^4 entries alive at once in a step of the full recursion
_FULL_TENSORS = 32
# input pairs whose two-input problems run at once
_PAIRS_AT_ONCE = 512


@dataclass(frozen=True)
class FiniteWidth:
    """The output statistics of a deep MLP to order 1/n (one output unit), from
    :func:`finite_width`. ``n`` is the width scale: hidden layer l has width ``rho_l n``
    (``widths``, all 1 by default). E is the expectation over initializations, ``f_a`` the
    output on input a, ``Theta_hat`` the empirical NTK summed over all parameters.

    Fields (``(N, N)``, computed at once):
        nngp: K, the infinite-width NNGP.
        nngp_correction: K1 with ``E[f_a f_b] = K_ab + K1_ab / n + O(n^-2)``.
        ntk: Theta, the infinite-width NTK.
        ntk_correction: Theta1 with ``E[Theta_hat_ab] = Theta_ab + Theta1_ab / n + O(n^-2)``.

    Attributes computed on first access (``(N, N, N, N)``, the recursion on all N inputs at
    once; an :class:`~widenet.errors.OutOfMemoryError` says their size when they do not fit):
        four_point: V with ``E[f_a f_b f_c f_d] - (G_ab G_cd + G_ac G_bd + G_ad G_bc) =
            V_abcd / n + O(n^-2)``, G the exact width-n two-point function (PDLT's four-point
            vertex summed over the three pairings, ``V_(ab)(cd) + V_(ac)(bd) + V_(ad)(bc)``).
        ntk_variance: A with ``Cov(Theta_hat_ab, Theta_hat_cd) = A_abcd / n + O(n^-2)`` (PDLT's
            ``A_abcd + B_acbd + B_adbc`` in its index order).
        ntk_output_correlation: ``E[(Theta_hat_ab - E Theta_hat_ab) f_c f_d] = C_abcd / n +
            O(n^-2)`` (PDLT's ``D_abcd + F_acbd + F_adbc``): how the NTK's fluctuation at
            initialization correlates with the outputs.
        dntk: ``E[dH_abc f_d] = P_abcd / n + O(n^-2)`` with the dNTK
            ``dH_abc = sum_mu,nu d^2 f_a / d theta_mu d theta_nu  d f_b / d theta_mu  d f_c / d theta_nu``
            (PDLT ch. 11's dNTK, whose correlation with the outputs it defines through its
            tensors ``P_abcd + Q_abcd + Q_acbd``): how the NTK moves in the first step of
            training, see :meth:`ntk_change`.
        ddntk: ``(I, II)``, the two ddNTKs' means times n (see :attr:`ddntk`).

    Methods: :meth:`nngp_at`, :meth:`ntk_at` (the corrected expectations at width n),
    :meth:`ntk_change` (the NTK's expected first step) and :meth:`trained_mean` (the mean
    prediction of a width-n network trained by gradient descent for t steps).

    For networks of the ReLU family, the (N, N, N, N) fields are given for one or two inputs
    (see the docs' finite-width page).

    Example:

        >>> net = wn.Serial(wn.Dense(512, 1.5, 0.1), wn.Tanh(), wn.Dense(512, 1.5, 0.1), wn.Tanh(), wn.Dense(1))
        >>> fw = wn.theory.finite_width(net, torch.randn(4, 3))
        >>> fw.nngp_at(512).shape, fw.four_point.shape
        (torch.Size([4, 4]), torch.Size([4, 4, 4, 4]))
    """

    nngp: torch.Tensor
    nngp_correction: torch.Tensor
    ntk: torch.Tensor
    ntk_correction: torch.Tensor
    widths: tuple
    _layers: list = field(repr=False, compare=False)
    _x: torch.Tensor = field(repr=False, compare=False)
    _memory: Optional[int] = field(repr=False, compare=False)

    def __repr__(self) -> str:
        n = self.nngp.shape[0]
        return f"FiniteWidth(N={n}, hidden layers={len(self.widths)}, widths={self.widths})"

    def nngp_at(self, n: Any) -> torch.Tensor:
        """``E[f_a f_b]`` at width scale ``n``, to order 1/n: ``K + K1 / n`` ``(N, N)``.

        Example:

            >>> net = wn.Serial(wn.Dense(1, 1.5), wn.Erf(), wn.Dense(1, 1.5), wn.Erf(), wn.Dense(1))
            >>> fw = wn.theory.finite_width(net, torch.randn(3, 2))
            >>> torch.allclose(fw.nngp_at(10**9), fw.nngp)
            True
        """
        return self.nngp + self.nngp_correction / _width("nngp_at", n)

    def ntk_at(self, n: Any) -> torch.Tensor:
        """``E[Theta_hat_ab]`` at width scale ``n``, to order 1/n: ``Theta + Theta1 / n`` ``(N, N)``.

        Example:

            >>> net = wn.Serial(wn.Dense(1, 1.5), wn.Erf(), wn.Dense(1, 1.5), wn.Erf(), wn.Dense(1))
            >>> wn.theory.finite_width(net, torch.randn(3, 2)).ntk_at(256).shape
            torch.Size([3, 3])
        """
        return self.ntk + self.ntk_correction / _width("ntk_at", n)

    @cached_property
    def _full(self) -> State:
        return _full_state(self._layers, self._x, self.widths, self._memory)

    @cached_property
    def four_point(self) -> torch.Tensor:
        V = self._full.V[0]
        return V + V.permute(0, 2, 1, 3) + V.permute(0, 2, 3, 1)

    @cached_property
    def ntk_variance(self) -> torch.Tensor:
        A, B = self._full.A[0], self._full.B[0]
        return A + B + B.transpose(2, 3)

    @cached_property
    def ntk_output_correlation(self) -> torch.Tensor:
        Dt, F = self._full.D[0], self._full.F[0]
        return Dt + F + F.transpose(2, 3)

    @cached_property
    def dntk(self) -> torch.Tensor:
        P, Q = self._full.P[0], self._full.Q[0]
        return P + Q + Q.transpose(1, 2)

    @cached_property
    def ddntk(self) -> tuple:
        """``(I, II)``, the ddNTKs' means times n, each ``(N, N, N, N)``:
        ``E[ddI_abcd] = I_abcd / n + O(n^-2)`` and ``E[ddII_abcd] = II_abcd / n + O(n^-2)`` with

            ddI_abcd  = sum d^3 f_a / d theta_mu d theta_nu d theta_rho  d f_b / d theta_mu  d f_c / d theta_nu  d f_d / d theta_rho
            ddII_abcd = sum d^2 f_a / d theta_mu d theta_rho  d^2 f_b / d theta_mu d theta_sigma  d f_c / d theta_rho  d f_d / d theta_sigma

        (PDLT ch. 11's two ddNTKs, ``lambda = C``; for one output unit its tensors enter as
        ``I_abcd = R_abcd + R_acdb + R_adbc`` and ``II = S + T + U``, here in this module's index
        order). ``ddI`` is symmetric in its last three inputs, ``ddII_abcd = ddII_badc``. They
        drive the NTK's change at second order in the step and the dNTK's change at first
        (see :meth:`trained_mean`); their fluctuations are ``O(n^-3/2)``.

        Example:

            >>> net = wn.Serial(wn.Dense(1, 1.5), wn.Tanh(), wn.Dense(1, 1.5), wn.Tanh(), wn.Dense(1))
            >>> I, II = wn.theory.finite_width(net, torch.randn(3, 2)).ddntk
            >>> torch.allclose(I, I.permute(0, 2, 1, 3)), torch.allclose(II, II.permute(1, 0, 3, 2))
            (True, True)
        """
        st = self._full
        R = st.R[0]
        return R + R.permute(0, 2, 1, 3) + R.permute(0, 2, 3, 1), st.S[0] + st.T[0] + st.U[0]

    def trained_mean(self, x_test: Any, y_train: Any, lr: Any, t: Any) -> TrainedMean:
        """The mean output on ``x_test`` of a width-n network trained from initialization by
        ``t`` steps of full-batch gradient descent on ``1/2 sum_a (f(x_a) - y_a)^2`` over this
        object's inputs ``x`` (the training set) with learning rate ``lr``, to order 1/n:
        ``E[f_t(x_test)] = frozen + correction / n`` (a :class:`TrainedMean`; ``.at(n)``).

        ``frozen`` is the infinite-width prediction (the frozen NTK); the correction adds the
        NTK's 1/n mean shift, its fluctuation at initialization, its motion through the dNTK
        and the ddNTKs: PDLT ch. ∞'s order-1/n solution of the training dynamics,
        computed here by forward-mode differentiation of the exact step map expanded in those
        statistics (written out in ``widenet/theory/_fw_training.py``). Runs the recursion on
        the N + M inputs together (memory-checked like the (N, N, N, N) fields).

        Conditions: one output unit (``Dense(1)`` readout), MSE, full batch, constant ``lr``
        below ``2 / lambda_max(Theta)`` (where the infinite-width dynamics converge), t fixed
        as n grows; a smooth activation (the ReLU family is refused: its kink moves trained
        networks' mean at order n^-1/2, outside any 1/n expansion).

        Args:
            x_test: ``(M, d)`` inputs to predict on (``x`` itself for the training points).
            y_train: ``(N,)`` targets of the training inputs.
            lr: learning rate, positive, below ``2 / lambda_max(Theta)``.
            t: number of steps (int; fields ``(M,)``), or a sequence of them (``(T, M)``).

        Example:

            >>> net = wn.Serial(wn.Dense(1, 1.5, 0.1), wn.Tanh(), wn.Dense(1, 1.5, 0.1), wn.Tanh(), wn.Dense(1))
            >>> x, y = torch.randn(4, 2), torch.randn(4)
            >>> tm = wn.theory.finite_width(net, x).trained_mean(torch.randn(3, 2), y, lr=0.2, t=[10, 100])
            >>> tm.frozen.shape, tm.at(64).shape, sorted(tm.parts)
            (torch.Size([2, 3]), torch.Size([2, 3]), ['ddntk', 'dntk', 'ntk_fluctuation', 'ntk_mean'])
        """
        from ._fw_training import check, trained_mean

        xt, y, lr, steps, single = check(self, x_test, y_train, lr, t)
        xs = torch.cat([self._x, xt])
        st = _full_state(self._layers, xs, self.widths, self._memory)
        R = st.R[0]
        fields = {"ntk": st.Theta[0], "ntk_correction": st.Theta1[0], "nngp": st.K[0],
                  "ntk_variance": st.A[0] + st.B[0] + st.B[0].transpose(2, 3),
                  "dntk": st.P[0] + st.Q[0] + st.Q[0].transpose(1, 2),
                  "ddntk_i": R + R.permute(0, 2, 1, 3) + R.permute(0, 2, 3, 1),
                  "ddntk_ii": st.S[0] + st.T[0] + st.U[0]}
        out = trained_mean(fields, self._x.shape[0], y, lr, steps)
        n = self._x.shape[0]
        frozen = out["frozen"][:, n:]
        parts = {k: v[:, n:] for k, v in out["parts"].items()}
        correction = sum(parts.values())
        if single:
            frozen, correction, parts = frozen[0], correction[0], {k: v[0] for k, v in parts.items()}
        return TrainedMean(steps, frozen, correction, parts)

    def ntk_change(self, lr: Any, n: Any) -> torch.Tensor:
        """The expected change of the NTK on the inputs after one full-batch gradient-descent
        step on ``1/2 sum_b (f_b - y_b)^2`` from initialization, at width scale ``n``, to
        first order in the learning rate ``lr`` and in 1/n ``(N, N)``:

            E[Theta_hat_ab(after) - Theta_hat_ab(before)] = -(lr / n) sum_c (dntk_abcc + dntk_bacc)

        (the parameters move by ``-lr sum_c (f_c - y_c) grad f_c``; ``E[dNTK] = 0``, so the
        targets enter only at second order in ``lr``, through the ddNTK).

        Example:

            >>> net = wn.Serial(wn.Dense(1, 1.5), wn.Tanh(), wn.Dense(1, 1.5), wn.Tanh(), wn.Dense(1))
            >>> wn.theory.finite_width(net, torch.randn(3, 2)).ntk_change(lr=0.1, n=256).shape
            torch.Size([3, 3])
        """
        lr = float(lr)
        if not math.isfinite(lr) or lr <= 0:
            raise ParameterError(f"FiniteWidth.ntk_change: lr must be a positive number (got {lr!r})")
        d = self.dntk.diagonal(dim1=2, dim2=3).sum(-1)
        return -(lr / _width("ntk_change", n)) * (d + d.T)


def _full_state(layers: list, x: torch.Tensor, widths: tuple, memory: Optional[int]) -> State:
    """The recursion on all of ``x``'s inputs at once, with every (N, N, N, N) statistic, after
    checking the memory it needs against ``memory`` (default a quarter of what is available)."""
    n = x.shape[0]
    need = _FULL_TENSORS * n**4 * 8
    budget = memory if memory is not None else available_memory(torch.device("cpu")) // 4
    if need > budget:
        raise OutOfMemoryError(
            f"{OWNER}: the (N, N, N, N) statistics of N={n} inputs need about {need / 2**30:.2f} GiB "
            f"({_FULL_TENSORS} float64 tensors of N^4 = {n**4} entries), over the memory budget of "
            f"{budget / 2**30:.2f} GiB; use fewer inputs, or pass memory= to finite_width")
    return _run(layers, x[None], widths, variance=True, dntk=True)


def _width(method: str, n: Any) -> float:
    if isinstance(n, bool) or not isinstance(n, Real) or not math.isfinite(float(n)) or float(n) <= 0:
        raise ParameterError(f"FiniteWidth.{method}: n, the width scale, must be a positive number (got {n!r})")
    return float(n)


_SUPPORTED = ("Dense (ntk parameterization), then pairs (elementwise nonlinearity, Dense); "
              "nonlinearities: the ReLU family (Relu, LeakyRelu, Abs, ABRelu: the (N, N) statistics), and the smooth Tanh, Erf, SigmoidLike, Gelu, Sin, Cos, Softplus, Exp, Gaussian, "
              "Rbf, Polynomial, Monomial, Hermite, Elementwise of a smooth function")


def _flat_layers(net, owner: str = OWNER, smooth: bool = True) -> list:
    """The layers of ``net`` (a Serial, nested ones flattened, or a list of layers), checked;
    ``smooth``: refuse kinked nonlinearities."""
    from ..layers import Dense, Nonlinearity, RectifiedMonomial, Serial, Sign

    if not isinstance(net, (Serial, list, tuple)):
        raise ParameterError(f"{owner}: net must be a widenet Serial (or a list of its layers); got {net!r}")
    layers, todo = [], list(net.layers) if isinstance(net, Serial) else list(net)
    while todo:
        layer = todo.pop(0)
        if isinstance(layer, Serial):
            todo[:0] = list(layer.layers)
            continue
        at = f"{layer!r} at position {len(layers)}"
        if smooth and isinstance(layer, (Sign, RectifiedMonomial)):
            raise ParameterError(
                f"{owner}: {at} is not smooth: the 1/n recursions take derivatives of the activation "
                f"up to the fifth, which are distributions for it; supported: {_SUPPORTED}")
        want = Dense if len(layers) % 2 == 0 else Nonlinearity
        if not isinstance(layer, want):
            raise ParameterError(f"{owner}: {at} is not supported here; the network must be {_SUPPORTED}")
        if isinstance(layer, Dense) and layer.parameterization != "ntk":
            raise ParameterError(f"{owner}: {at} uses the {layer.parameterization!r} parameterization; "
                                 f"only 'ntk' is supported")
        layers.append(layer)
    if not layers or len(layers) % 2 == 0:
        raise ParameterError(f"{owner}: the network must end with a Dense layer (its readout); it must be {_SUPPORTED}")
    return layers


def _check_widths(widths: Any, hidden: int, owner: str = OWNER) -> tuple:
    if widths is None:
        return (1.0,) * hidden
    try:
        values = tuple(float(w) for w in widths)
    except (TypeError, ValueError):
        raise ParameterError(f"{owner}: widths must be a sequence of positive numbers (got {widths!r})") from None
    if len(values) != hidden or not all(math.isfinite(w) and w > 0 for w in values):
        raise ParameterError(f"{owner}: widths must hold one positive relative width per hidden layer "
                             f"({hidden} here; got {widths!r})")
    return values


def _run(layers: list, x: torch.Tensor, widths: tuple, variance: bool, dntk: bool = False) -> State:
    """The recursion on a batch of input sets ``x`` ``(B, m, d)``."""
    first = layers[0]
    K = float(first.W_std) ** 2 * (x @ x.transpose(1, 2)) / x.shape[-1]
    K = K + (0.0 if first.b_std is None else float(first.b_std) ** 2)
    state = first_layer(K, variance, dntk)
    rest = layers[1:]
    for phi, dense, rho in zip(rest[::2], rest[1::2], widths):
        cb = 0.0 if dense.b_std is None else float(dense.b_std) ** 2
        state = step(state, phi, float(dense.W_std) ** 2, cb, rho, DEGREES)
    return state


def finite_width(net, x: Any, *, widths: Optional[Sequence[float]] = None, memory: Any = None,
                 progress: bool = False) -> FiniteWidth:
    """The statistics of a finite-width deep MLP's output to order 1/n (one output unit).

    ``net`` is a :class:`~widenet.Serial` ``Dense -> phi -> Dense -> ... -> phi -> Dense``
    (nested Serials flattened) in the ntk parameterization, each ``phi`` smooth or of the ReLU
    family (for those the (N, N) fields, and the four-point function of one or two inputs); every hidden
    layer has width ``rho_l n`` and the result holds the coefficients of 1/n. The declared
    ``out_features`` do not enter (pass ``widths`` for unequal hidden widths).

    Definitions (E over initializations; ``Theta_hat`` the empirical NTK summed over all
    parameters, PDLT's NTK with ``lambda = C``): ``E[f_a f_b] = K + K1 / n``;
    ``E[Theta_hat] = Theta + Theta1 / n``; the connected four-point function, the NTK's
    variance and its correlation with the outputs are ``O(1/n)`` tensors (see
    :class:`FiniteWidth`). Sources: Roberts, Yaida & Hanin, *The Principles of Deep Learning
    Theory* (arXiv 2106.10165), ch. 4 (the four-point vertex and the next-to-leading-order
    metric) and ch. 8 (the NTK's mean, fluctuations and cross-correlations); Yaida (arXiv
    1910.00019). The recursions, their index conventions and how they differ from the book's
    are written out in ``widenet/theory/_fw_recursion.py`` and on the docs' finite-width page.

    Args:
        net: the network, as above.
        x: inputs ``(N, d)``, finite.
        widths: relative widths ``rho_l`` of the hidden layers (default all 1): layer l has
            width ``rho_l n``, and its own contributions carry ``1 / rho_l``.
        memory: budget (bytes or a string such as ``"2GiB"``) for the ``(N, N, N, N)``
            statistics, computed on first access; default a quarter of the available memory.
        progress: show a progress bar over the input pairs.

    Returns:
        a :class:`FiniteWidth`.

    Computed on the CPU in float64 (whatever ``x``'s device and dtype). Expectations over
    one and two inputs use the trapezoidal rule (spaced for the
    activation's smoothness), over three and four product trapezoidal rules in the
    covariance's eigenbasis (about 1e-5 relative); ReLU's are Price's-
    theorem derivatives of its closed forms. The leading order uses each nonlinearity's own
    kernel rule, so ``nngp`` and ``ntk`` equal ``net.kernel(x)``'s.

    Example:

        >>> net = wn.Serial(wn.Dense(1, 1.3, 0.2), wn.Tanh(), wn.Dense(1, 1.3, 0.2), wn.Tanh(), wn.Dense(1, 1.3))
        >>> x = torch.randn(5, 3, dtype=torch.float64)
        >>> fw = wn.theory.finite_width(net, x)
        >>> torch.allclose(fw.ntk, net.kernel(x).ntk)
        True
        >>> fw.ntk_at(128).shape
        torch.Size([5, 5])
    """
    layers = _flat_layers(net)
    x = as_inputs(OWNER, "x", x).to(device="cpu", dtype=D)  # small problems: CPU, float64
    if x.ndim != 2 or x.shape[0] < 1 or x.shape[1] < 1:
        raise ShapeError(f"{OWNER}: x must have shape (N, d) with N, d >= 1 (got {tuple(x.shape)})")
    hidden = len(layers) // 2
    rho = _check_widths(widths, hidden)
    budget = None if memory is None else check_memory(OWNER, "memory", memory)
    out = _two_point_fields(layers, x, rho, progress)
    return FiniteWidth(out[0], out[1], out[2], out[3], rho, layers, x, budget)


def _two_point_fields(layers: list, x: torch.Tensor, rho: tuple, progress: bool) -> torch.Tensor:
    """``(K, K1, Theta, Theta1)`` ``(4, N, N)`` from N one-input and N(N-1)/2 two-input problems."""
    n = x.shape[0]
    out = torch.empty(4, n, n, dtype=D)
    # each input alone (the diagonal), then each pair of distinct inputs, the pairs in the
    # order of their second axis' spread in the first layer, so that a chunk's trapezoidal
    # grid (sized by its widest pair) fits all its pairs closely
    i, j = torch.triu_indices(n, n, offset=1)
    K0 = x @ x.T
    order = torch.argsort(K0[j, j] - K0[i, j] ** 2 / K0[i, i].clamp_min(torch.finfo(D).tiny))
    i, j = i[order], j[order]
    diag = torch.arange(n)
    with progress_bar(n + len(i), "finite-width pairs", progress) as bar:
        for s in range(0, n, _PAIRS_AT_ONCE):
            a = diag[s:s + _PAIRS_AT_ONCE]
            st = _run(layers, x[a][:, None], rho, variance=False)
            out[:, a, a] = torch.stack([st.K, st.K1, st.Theta, st.Theta1])[:, :, 0, 0]
            bar.advance(len(a))
        for s in range(0, len(i), _PAIRS_AT_ONCE):
            a, b = i[s:s + _PAIRS_AT_ONCE], j[s:s + _PAIRS_AT_ONCE]
            st = _run(layers, torch.stack([x[a], x[b]], 1), rho, variance=False)
            values = torch.stack([st.K, st.K1, st.Theta, st.Theta1])[:, :, 0, 1]
            out[:, a, b] = values
            out[:, b, a] = values
            bar.advance(len(a))
    return out
