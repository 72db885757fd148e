"""Learning curves of kernel regression: eigenlearning predictions, KARE and measured curves.

On a data pool of ``P`` points with the spectrum of ``_spectra`` (eigenvalues ``lambda_i`` of
``K_pool / P``, target coefficients ``v_i``), kernel ridge regression on ``n`` points drawn from
the pool, ``f(x) = K(x, X) (K(X, X) + ridge I)^-1 y``, has the test and train errors predicted
by the eigenlearning equations (Bordelon, Canatar & Pehlevan 2020, arXiv 2002.02561; Canatar,
Bordelon & Pehlevan 2021, arXiv 2006.13198; Simon et al. 2021, arXiv 2110.03922):

    n = sum_i lambda_i / (lambda_i + kappa) + ridge / kappa         (effective regularization kappa)
    L_i = lambda_i / (lambda_i + kappa)                               (learnability of mode i)
    E0 = n / (n - sum_i L_i^2)                                        (overfitting coefficient)
    test MSE  = E0 (sum_i (1 - L_i)^2 v_i^2 + noise^2)
    train MSE = (ridge / (n kappa))^2 test MSE

Errors are means over points and outputs (the squared error of a ``(P, O)`` target averaged
over its ``P O`` entries, as scikit-learn's ``mean_squared_error``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np
import torch

from .._validate import as_tensor, check_choice, check_float, check_int
from ..errors import NumericalError, ParameterError, ShapeError
from ._spectra import KernelSpectrum, PowerLawFit, _square, _targets, fit_power_law
from ._plot import legend, new_axes

D = torch.float64


# --------------------------------------------------------------------------------------------
# Eigenlearning predictions


@dataclass(frozen=True)
class LearningCurvePrediction:
    """Eigenlearning predictions at each training-set size ``n`` (one row per ``n``)."""

    n: np.ndarray
    ridge: float
    noise: float
    kappa: np.ndarray  # effective regularization
    overfitting: np.ndarray  # E0 = n / (n - sum L_i^2)
    learnabilities: np.ndarray  # (len(n), P): L_i = lambda_i / (lambda_i + kappa)
    test_mse: np.ndarray
    train_mse: np.ndarray

    def exponent(self) -> PowerLawFit:
        """The predicted curve's power law ``test_mse ~ n^-exponent`` over all ``n``."""
        return fit_power_law(self.test_mse, index=self.n)


def _kappa(lam: torch.Tensor, n: torch.Tensor, ridge: float, owner: str) -> torch.Tensor:
    """Solves ``sum_i lam_i / (lam_i + kappa) + ridge / kappa = n`` for each n, by bisection in
    ``log kappa`` (the left side falls strictly from +inf (or the rank) to 0)."""
    total = float(lam.sum()) + ridge
    rank = int((lam > 0).sum())
    if ridge == 0 and bool((n >= rank).any()):
        raise ParameterError(f"{owner}: with ridge = 0, every n must be < the number of positive eigenvalues "
                             f"{rank} (got max n = {int(n.max())}); add a ridge")

    def excess(log_kappa):
        kappa = log_kappa.exp()
        return (lam[None, :] / (lam[None, :] + kappa[:, None])).sum(1) + ridge / kappa - n

    hi = torch.log(torch.full_like(n, total) / n)  # excess(hi) <= 0
    lo = hi - 5.0
    for _ in range(200):  # walk down until excess(lo) > 0
        bad = excess(lo) <= 0
        if not bool(bad.any()):
            break
        lo = torch.where(bad, lo - 5.0, lo)
    else:
        raise NumericalError(f"{owner}: no effective regularization found (the spectrum may be degenerate)")
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        pos = excess(mid) > 0
        lo, hi = torch.where(pos, mid, lo), torch.where(pos, hi, mid)
        if bool(((hi - lo) < 1e-13).all()):
            break
    return (0.5 * (lo + hi)).exp()


# Sampling from a finite pool. With n draws from P points, the sample's second-moment operator is
# Lambda^1/2 B Lambda^1/2 with B = P U' C U (C: the draw counts, U: the eigenvectors). Taking B free
# from Lambda (delocalized eigenvectors, the same genericity the i.i.d. theory assumes), the
# first-order equivalence ridge (Lambda^1/2 B Lambda^1/2 + ridge)^-1 ~ kappa (Lambda + kappa)^-1 holds
# with kappa = ridge S_B(-df(kappa)), df = tr Lambda (Lambda + kappa)^-1 / P and S_B the
# S-transform of B's spectrum: P times the counts' distribution (LeJeune et al. 2024, arXiv
# 2211.08435 for sketches; Patil & Du 2023, arXiv 2305.18496). Test and train errors follow from its
# derivatives in the ridge and in a shift B + rho (see ``_pool_terms``). As P -> oo both samplings
# reduce to the i.i.d. equations; at n comparable to P they account for repeated draws and for the
# pool's finite rank.


def _pool_measure(n: float, p: int, replace: bool):
    """The spectrum of B: atoms ``P m`` with the probabilities of a point's draw count ``m``."""
    if not replace:
        a = n / p
        return np.array([0.0, float(p)]), np.array([1.0 - a, a])
    from scipy.stats import binom

    m = np.arange(0, int(n / p + 12 * math.sqrt(n / p + 1) + 12))
    pmf = binom.pmf(m, int(round(n)), 1.0 / p)
    keep = pmf > 1e-18
    return float(p) * m[keep], pmf[keep] / pmf[keep].sum()


def _pool_terms(lam: np.ndarray, n: float, ridge: float, replace: bool, p: int):
    """kappa of the first-order equivalence (see above) and its derivatives in the ridge
    (kappa_d) and in a shift ``B + rho`` at ``rho = 0`` (kappa_r), the latter two by implicit
    differentiation of ``log kappa = log ridge + log S(df(kappa))``."""
    from scipy.optimize import brentq

    b, probs = _pool_measure(n, p, replace)
    mass = float(probs[b > 0].sum())

    def solve_t(u, v):  # t > 0 with sum p t b / (1 + t b) = u (v = 1 - u, kept exact), for S_B(-u) = t v / u
        if u <= 0.5:
            f = lambda lt: float(np.sum(probs * b / (np.exp(-lt) + b))) - u  # noqa: E731
        else:
            f = lambda lt: v - float(np.sum(probs * np.exp(-lt) / (np.exp(-lt) + b)))  # noqa: E731
        return math.exp(brentq(f, -700.0, 700.0, xtol=1e-15, rtol=1e-15, maxiter=500))

    extra = (p - lam.size) / p  # modes beyond the given eigenvalues: zero eigenvalues

    def df(lk):  # (u, 1 - u), u = tr Lambda (Lambda + kappa)^-1 / P
        kappa = math.exp(lk)
        return float(np.sum(lam / (lam + kappa))) / p, float(np.sum(kappa / (lam + kappa))) / p + extra

    cap = mass * (1 - 1e-10)  # df must stay below the sample's rank fraction
    lo = math.log(max(float(lam.max()), 1e-300)) - 700.0
    if df(lo)[0] >= cap:
        lo = brentq(lambda lk: df(lk)[0] - cap, lo, math.log(float(lam.sum()) + 1.0) + 5.0, xtol=1e-15, rtol=1e-15)

    def g(lk):
        u, v = df(lk)
        if u <= 0:  # kappa so large that no eigenvalue counts: past the root
            return 1e300
        if u >= mass * (1 - 1e-12):  # only reached if the root lies below the bracket's edge
            return -1e300
        return lk - math.log(ridge) - math.log(solve_t(u, v) * v / u)

    hi = math.log(float(lam.sum()) + ridge) + 1.0
    while g(hi) <= 0:
        hi += 5.0
    kappa = math.exp(brentq(g, lo, hi, xtol=1e-14, rtol=1e-15, maxiter=500))
    u, v = df(math.log(kappa))
    t = solve_t(u, v)
    f_t = float(np.sum(probs * b / (1 + t * b) ** 2))  # d/dt of sum p t b / (1 + t b)
    f_r = float(np.sum(probs * t / (1 + t * b) ** 2))  # d/d(shift) of the same
    dlogs_du = 1 / (t * f_t) - 1 / v - 1 / u
    ddf = -float(np.sum(lam / (lam + kappa) ** 2)) / p
    g_k = 1 / kappa - dlogs_du * ddf
    g_r = (f_r / f_t) / t  # d log S / d shift at fixed u is (dt/d shift) / t = -(f_r / f_t) / t
    kappa_d = (1 / ridge) / g_k
    kappa_r = -g_r / g_k
    return kappa, kappa_d, kappa_r


SAMPLINGS = ("auto", "iid", "replace", "subsample")


def _modes(owner: str, spectrum: Any, coefficients: Any, sampling: str):
    """The checked eigenvalues, ``(P, O)`` target coefficients and resolved sampling of ``eigenlearning``."""
    if isinstance(spectrum, KernelSpectrum):
        lam = spectrum.eigenvalues
        coef = spectrum.coefficients if coefficients is None else coefficients
        if sampling == "auto":
            sampling = "replace"
    else:
        lam = as_tensor(owner, "spectrum", spectrum).to(D).ravel()
        coef = coefficients
        if sampling == "auto":
            sampling = "iid"
    if coef is None:
        raise ParameterError(f"{owner}: the target's coefficients are needed: pass kernel_spectrum(kernel, y) or "
                             f"coefficients=")
    coef = as_tensor(owner, "coefficients", coef).to(D)
    if coef.ndim == 1:
        coef = coef[:, None]
    if coef.ndim != 2 or coef.shape[0] != lam.shape[0]:
        raise ShapeError(f"{owner}: coefficients must be (P,) or (P, O) with P = {lam.shape[0]} like the "
                         f"eigenvalues (got {tuple(coef.shape)})")
    if bool((lam < 0).any()):
        raise ParameterError(f"{owner}: eigenvalues must be >= 0 (got min {float(lam.min()):.3g})")
    return lam, coef, sampling


def eigenlearning(spectrum: Any, n: Any, *, ridge: float = 0.0, noise: float = 0.0, coefficients: Any = None,
                  sampling: str = "auto") -> LearningCurvePrediction:
    """Predicted test and train MSE of kernel ridge regression ``K(x, X)(K(X, X) + ridge I)^-1 y``
    with ``n`` training points drawn from the data distribution (each entry of ``n``), from the
    kernel's spectrum alone (the eigenlearning equations of Simon et al. 2021, equivalently
    Bordelon et al. 2020 and Canatar et al. 2021; see the module docstring).

    ``spectrum`` is a ``KernelSpectrum`` with target coefficients (from
    ``kernel_spectrum`` with ``y``), or eigenvalues of the integral operator with their
    ``coefficients`` ``(P,)`` or ``(P, O)`` given separately (e.g. a synthetic power law).
    ``noise`` is the standard deviation of label noise; the predicted test MSE is measured
    against noisy labels (subtract ``noise**2`` for the error against the clean target).

    ``sampling`` says how training sets are drawn: ``"iid"`` from a continuous distribution
    (the classical equations), ``"replace"`` as ``n`` draws with replacement from the ``P``
    pool points, ``"subsample"`` as ``n`` distinct pool points (both corrected for the pool's
    finiteness, which matters once ``n`` is a sizeable fraction of ``P``; they need
    ``ridge > 0``). ``"auto"`` is ``"replace"`` for a ``KernelSpectrum`` (as
    ``learning_curve`` draws by default) and ``"iid"`` for bare eigenvalues."""
    owner = "theory.eigenlearning"
    ridge = check_float(owner, "ridge", ridge, minimum=0.0)
    noise = check_float(owner, "noise", noise, minimum=0.0)
    sampling = check_choice(owner, "sampling", sampling, SAMPLINGS)
    lam, coef, sampling = _modes(owner, spectrum, coefficients, sampling)
    ns = np.atleast_1d(np.asarray(n, dtype=float))
    if ns.ndim != 1 or not np.all(np.isfinite(ns)) or np.any(ns <= 0):
        raise ParameterError(f"{owner}: n must hold training-set sizes > 0 (got {np.asarray(n).tolist()})")
    p = lam.shape[0]
    if sampling != "iid" and ridge == 0:
        raise ParameterError(f"{owner}: sampling={sampling!r} needs a ridge > 0 (got ridge = 0)")
    if sampling == "subsample" and float(ns.max()) > p:
        raise ParameterError(f"{owner}: sampling='subsample' needs every n <= the pool size {p} (got {ns.max():g})")
    power = (coef ** 2).mean(1)  # mean over outputs
    nt = torch.as_tensor(ns, dtype=D)
    if sampling == "iid":
        kappa = _kappa(lam, nt, ridge, owner)
        learn = lam[None, :] / (lam[None, :] + kappa[:, None])
        e0 = nt / (nt - (learn ** 2).sum(1))
        kappa_d = e0 / nt
    else:
        lam_np = lam.cpu().numpy()
        terms = np.array([_pool_terms(lam_np, float(m), ridge, sampling == "replace", p) for m in ns])
        kappa = torch.as_tensor(terms[:, 0], dtype=D)
        kappa_d = torch.as_tensor(terms[:, 1], dtype=D)
        learn = lam[None, :] / (lam[None, :] + kappa[:, None])
        e0 = -ridge * torch.as_tensor(terms[:, 2], dtype=D) / kappa ** 2
    bias = ((1 - learn) ** 2 * power[None, :]).sum(1)
    test = e0 * bias + noise ** 2 * (kappa_d * (learn ** 2).sum(1) + 1)
    # Train: ridge^2 / n [w' G M G w + noise^2 tr (X X' + ridge)^-2], the latter the ridge
    # derivative of tr (X'X + ridge)^-1 + (n - P) / ridge with the same equivalence.
    inv = (1 / (lam[None, :] + kappa[:, None])).sum(1)
    inv2 = (1 / (lam[None, :] + kappa[:, None]) ** 2).sum(1)
    if ridge > 0:
        minus_dt = -(kappa_d / ridge - kappa / ridge ** 2) * inv + kappa * kappa_d / ridge * inv2 + (nt - p) / ridge ** 2
        train = ridge ** 2 / nt * (kappa_d / kappa ** 2 * bias + noise ** 2 * minus_dt)
    else:
        train = torch.zeros_like(test)
    return LearningCurvePrediction(ns, ridge, noise, kappa.numpy(), e0.numpy(), learn.numpy(), test.numpy(),
                                   train.numpy())


def kare(kernel: Any, y: Any, *, ridge: float) -> float:
    """The kernel alignment risk estimator of Jacot et al. 2020 (arXiv 2006.09796): the test
    MSE of kernel ridge regression ``K(x, X)(K + ridge I)^-1 y`` estimated from the training
    set alone, ``(y' (K/n + r I)^-2 y / n) / (tr (K/n + r I)^-1 / n)^2`` with ``r = ridge / n``
    (mean over outputs for ``(n, O)`` targets). ``ridge`` must be > 0."""
    owner = "theory.kare"
    k = _square(owner, "kernel", kernel)
    n = k.shape[0]
    targets = _targets(owner, y, n)
    ridge = check_float(owner, "ridge", ridge, minimum=0.0, exclusive_minimum=True)
    lam, u = torch.linalg.eigh(0.5 * (k + k.T) / n)
    shifted = lam.clamp_min(0) + ridge / n
    proj = u.T @ targets
    num = float(((proj ** 2) / shifted[:, None] ** 2).sum() / (n * targets.shape[1]))
    den = float((1 / shifted).sum() / n)
    return num / den ** 2


# --------------------------------------------------------------------------------------------
# Measured learning curves


@dataclass(frozen=True)
class LearningCurve:
    """Measured kernel-regression errors over ``trials`` training sets per size ``n``."""

    n: np.ndarray
    ridge: float
    test_mse: np.ndarray  # (len(n), trials)
    train_mse: np.ndarray  # (len(n), trials)

    @property
    def test_mean(self) -> np.ndarray:
        return self.test_mse.mean(1)

    @property
    def train_mean(self) -> np.ndarray:
        return self.train_mse.mean(1)

    @property
    def test_sem(self) -> np.ndarray:
        """Standard error of the mean test MSE at each n."""
        t = self.test_mse.shape[1]
        return self.test_mse.std(1, ddof=1) / math.sqrt(t) if t > 1 else np.full(len(self.n), np.nan)

    def exponent(self) -> PowerLawFit:
        """The measured curve's power law ``test_mse ~ n^-exponent`` over all ``n``."""
        return fit_power_law(self.test_mean, index=self.n)

    def plot(self, ax: Optional[Any] = None, prediction: Optional[LearningCurvePrediction] = None,
             label: str = "measured"):
        """Measured mean test (and train, if the ridge is > 0) MSE with error bars, and the
        prediction's curves if given, on log-log axes. Returns the matplotlib figure."""
        if ax is None:
            ax = new_axes(figsize=(5, 3.8))
        line = ax.errorbar(self.n, self.test_mean, yerr=self.test_sem, fmt="o", ms=4, label=f"{label}: test")
        if self.ridge > 0:
            ax.plot(self.n, self.train_mean, "s", ms=3, mfc="none", color=line[0].get_color(),
                    label=f"{label}: train")
        if prediction is not None:
            ax.plot(prediction.n, prediction.test_mse, "-", color=line[0].get_color(), label="eigenlearning: test")
            if prediction.ridge > 0:
                ax.plot(prediction.n, prediction.train_mse, ":", color=line[0].get_color(),
                        label="eigenlearning: train")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("training points n")
        ax.set_ylabel("MSE")
        legend(ax, fontsize=7)
        return ax.figure


def learning_curve(kernel: Any, y: Any, n: Sequence[int], *, ridge: float = 0.0, trials: int = 10,
                   seed: int = 0, replace: bool = True, noise: float = 0.0) -> LearningCurve:
    """Measures kernel ridge regression's learning curve on a data pool: for each training-set
    size in ``n``, ``trials`` training sets of that size are drawn from the pool (uniformly,
    with replacement by default: i.i.d. from the pool's distribution, as the eigenlearning
    predictions assume), the regressor ``K(x, X)(K(X, X) + ridge I)^-1 y`` is fitted, and its
    test MSE over the whole pool (the population error of that distribution) and train MSE are
    recorded. ``noise`` adds Gaussian label noise of that standard deviation to the training
    labels (the test error is then measured against noisy labels, ``+ noise**2``, as
    ``eigenlearning`` predicts). ``kernel`` is the pool's ``(P, P)`` kernel matrix."""
    owner = "theory.learning_curve"
    k = _square(owner, "kernel", kernel)
    p = k.shape[0]
    targets = _targets(owner, y, p)
    ridge = check_float(owner, "ridge", ridge, minimum=0.0)
    noise = check_float(owner, "noise", noise, minimum=0.0)
    trials = check_int(owner, "trials", trials, minimum=1)
    seed = check_int(owner, "seed", seed)
    sizes = [check_int(owner, "n", v, minimum=1) for v in n]
    if not sizes:
        raise ParameterError(f"{owner}: n must list at least one training-set size (got {list(n)})")
    if not replace and max(sizes) > p:
        raise ParameterError(f"{owner}: without replacement every n must be <= the pool size {p} (got {max(sizes)})")
    if ridge == 0 and replace:
        raise ParameterError(f"{owner}: ridge = 0 with replace=True would solve with repeated points; give a "
                             f"ridge > 0 or replace=False")
    gen = torch.Generator().manual_seed(seed)
    test = np.empty((len(sizes), trials))
    train = np.empty((len(sizes), trials))
    for a, m in enumerate(sizes):
        for t in range(trials):
            if replace:
                idx = torch.randint(p, (m,), generator=gen)
            else:
                idx = torch.randperm(p, generator=gen)[:m]
            yt = targets[idx]
            if noise > 0:
                yt = yt + noise * torch.randn(yt.shape, generator=gen, dtype=D)
            kk = k[idx[:, None], idx[None, :]]  # one gather, no (n, P) intermediate
            kk.diagonal().add_(ridge)
            chol, info = torch.linalg.cholesky_ex(kk)
            if int(info) != 0:
                raise NumericalError(f"{owner}: K(X, X) + ridge I is not positive definite at n = {m} "
                                     f"(ridge = {ridge:g}); increase the ridge")
            alpha = torch.cholesky_solve(yt, chol)
            f = k[:, idx] @ alpha
            test[a, t] = float(((f - targets) ** 2).mean()) + noise ** 2
            train[a, t] = float(((f[idx] - yt) ** 2).mean())
    return LearningCurve(np.asarray(sizes, dtype=float), ridge, test, train)
