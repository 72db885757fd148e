"""Kernel spectra and power-law fits: the eigensystem of a kernel on a data pool, and the
decay exponents of its eigenvalues and of learning curves.

A data pool of ``P`` points stands for the data distribution (uniform over the pool). The
kernel's integral operator on that distribution has the eigenvalues of ``K_pool / P`` and the
eigenfunctions ``phi_i(x_j) = sqrt(P) U_ji``; a target ``y`` has the coefficients
``v_i = <y, phi_i> = U_i . y / sqrt(P)``. The learning curves predicted from them
(eigenlearning), KARE and measured learning curves are in ``_learning``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch

from .._validate import as_tensor, check_int
from ..errors import NumericalError, ParameterError, ShapeError
from ._plot import legend, new_axes

D = torch.float64


def _square(owner: str, name: str, kernel: Any) -> torch.Tensor:
    k = as_tensor(owner, name, kernel)
    if k.ndim != 2 or k.shape[0] != k.shape[1] or k.shape[0] < 2:
        raise ShapeError(f"{owner}: {name} must be a square (P, P) matrix with P >= 2 (got {tuple(k.shape)})")
    return k.to(D)


def _targets(owner: str, y: Any, n: int) -> torch.Tensor:
    y = as_tensor(owner, "y", y).to(D)
    if y.ndim not in (1, 2) or y.shape[0] != n:
        raise ShapeError(f"{owner}: y must be (P,) or (P, O) with P = {n} rows like the kernel (got {tuple(y.shape)})")
    return y[:, None] if y.ndim == 1 else y


# --------------------------------------------------------------------------------------------
# Spectra and power laws


@dataclass(frozen=True)
class PowerLawFit:
    """``values_i ~ prefactor * i^-exponent`` fitted by least squares in log-log over the
    1-based indices ``start..stop`` (inclusive)."""

    exponent: float
    prefactor: float
    stderr: float  # standard error of the exponent
    r2: float  # coefficient of determination of the log-log fit
    start: int
    stop: int

    @property
    def data_exponent(self) -> float:
        """``alpha = exponent - 1``: the resolution-limited data-scaling exponent of Bahri et
        al. 2021 (arXiv 2102.06701): a kernel whose eigenvalues fall as ``i^-(1 + alpha)``
        learns a target drawn from its own Gaussian process with a test loss that falls as
        ``D^-alpha`` in the number ``D`` of training points."""
        return self.exponent - 1.0

    def __call__(self, index: Any) -> np.ndarray:
        return self.prefactor * np.asarray(index, dtype=float) ** -self.exponent


def fit_power_law(values: Any, *, start: int = 1, stop: Optional[int] = None,
                  index: Optional[Any] = None) -> PowerLawFit:
    """Fits ``values ~ C i^-s`` over ``i = start..stop`` (1-based, inclusive; ``stop`` defaults
    to the last positive value), or over the explicit positions ``index`` (e.g. training-set
    sizes, to fit a learning curve's slope). Returns the exponent ``s``, ``C``, the standard
    error of ``s`` and the R^2 of the log-log fit."""
    owner = "theory.fit_power_law"
    v = np.asarray(as_tensor(owner, "values", values).to(D).cpu(), dtype=float).ravel()
    if index is None:
        start = check_int(owner, "start", start, minimum=1)
        stop = len(v) if stop is None else check_int(owner, "stop", stop, minimum=start + 2)
        if stop > len(v):
            raise ParameterError(f"{owner}: stop must be <= len(values) = {len(v)} (got {stop})")
        i = np.arange(start, stop + 1, dtype=float)
        v = v[start - 1:stop]
    else:
        i = np.asarray(index, dtype=float).ravel()
        if i.shape != v.shape:
            raise ShapeError(f"{owner}: index and values must have the same length (got {i.shape} and {v.shape})")
        if not np.all(np.isfinite(i)) or np.any(i <= 0):
            raise ParameterError(f"{owner}: index must hold finite positions > 0 (got {i.tolist()})")
    if np.any(v <= 0):
        raise ParameterError(f"{owner}: values must be > 0 over the fitted range (got min {v.min():.3g}); "
                             f"choose start/stop within the positive part")
    if len(v) < 3:
        raise ParameterError(f"{owner}: at least 3 values are needed for a fit with an error (got {len(v)})")
    lx, ly = np.log(i), np.log(v)
    a = np.stack([np.ones_like(lx), -lx], axis=1)
    coef, *_ = np.linalg.lstsq(a, ly, rcond=None)
    resid = ly - a @ coef
    ss_res = float(resid @ resid)
    ss_tot = float(((ly - ly.mean()) ** 2).sum())
    sxx = float(((lx - lx.mean()) ** 2).sum())
    stderr = math.sqrt(ss_res / (len(v) - 2) / sxx) if sxx > 0 else float("inf")
    r2 = 1.0 - ss_res / ss_tot if ss_tot > 0 else 1.0
    return PowerLawFit(float(coef[1]), float(math.exp(coef[0])), stderr, r2, int(i[0]), int(i[-1]))


@dataclass(frozen=True)
class KernelSpectrum:
    """The eigensystem of a kernel's integral operator on the uniform distribution over a data
    pool: ``eigenvalues`` (descending, of ``K / P``), ``eigenvectors`` (columns, orthonormal in
    R^P) and, when targets were given, their ``coefficients`` ``(P, O)`` in the eigenbasis."""

    eigenvalues: torch.Tensor
    eigenvectors: torch.Tensor
    coefficients: Optional[torch.Tensor]

    @property
    def size(self) -> int:
        return int(self.eigenvalues.shape[0])

    def fit_power_law(self, start: int = 1, stop: Optional[int] = None) -> PowerLawFit:
        """``fit_power_law`` of the eigenvalues over ``start..stop``."""
        return fit_power_law(self.eigenvalues, start=start, stop=stop)

    def cumulative_power(self) -> torch.Tensor:
        """Fraction of the target's power in the top ``i`` modes, for ``i = 1..P`` (the
        kernel-target alignment curve of Canatar et al. 2021, fig. 2)."""
        if self.coefficients is None:
            raise ParameterError("KernelSpectrum.cumulative_power: the spectrum was computed without targets y")
        power = (self.coefficients ** 2).sum(1)
        return power.cumsum(0) / power.sum()

    def plot(self, ax: Optional[Any] = None, fit: Optional[PowerLawFit] = None):
        """Eigenvalues (and the target's power per mode, if known) against the mode index on
        log-log axes, with a fitted power law. Returns the matplotlib figure."""
        if ax is None:
            ax = new_axes(figsize=(5, 3.8))
        i = np.arange(1, self.size + 1)
        lam = self.eigenvalues.cpu().numpy()
        keep = lam > 0
        ax.loglog(i[keep], lam[keep], label=r"eigenvalue $\lambda_i$")
        if self.coefficients is not None:
            power = (self.coefficients ** 2).mean(1).cpu().numpy()
            ok = power > 0
            ax.loglog(i[ok], power[ok], ".", ms=2, alpha=0.5, label=r"target power $v_i^2$")
        if fit is not None:
            j = np.arange(fit.start, fit.stop + 1)
            ax.loglog(j, fit(j), "k--", label=rf"fit $i^{{-{fit.exponent:.3f}}}$, $R^2$ = {fit.r2:.3f}")
        ax.set_xlabel("mode index i")
        legend(ax, fontsize=8)
        return ax.figure


def kernel_spectrum(kernel: Any, y: Any = None) -> KernelSpectrum:
    """Eigendecomposition of a kernel matrix ``(P, P)`` on a data pool (an NNGP or NTK from
    ``net.kernel(x_pool)``, or any PSD matrix), as the integral operator on the uniform
    distribution over the pool; with targets ``y`` ``(P,)`` or ``(P, O)`` also their
    eigen-coefficients. The matrix is symmetrized; tiny negative eigenvalues from rounding are
    set to zero."""
    owner = "theory.kernel_spectrum"
    k = _square(owner, "kernel", kernel)
    p = k.shape[0]
    targets = None if y is None else _targets(owner, y, p)
    lam, u = torch.linalg.eigh(0.5 * (k + k.T) / p)
    lam, u = lam.flip(0), u.flip(1)
    if float(lam[-1]) < -1e-8 * max(float(lam[0]), 0.0):
        raise NumericalError(f"{owner}: kernel is not positive semi-definite (eigenvalue {float(lam[-1]):.3g} "
                             f"against the largest {float(lam[0]):.3g})")
    lam = lam.clamp_min(0)
    coef = None if targets is None else u.T @ targets / math.sqrt(p)
    return KernelSpectrum(lam, u, coef)
