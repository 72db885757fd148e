"""Gaussian-process inference with NNGP and NTK kernels, and the NNGP marginal likelihood."""

from __future__ import annotations

from typing import Any, NamedTuple, Optional

import torch

from . import _common as C

__all__ = ["Gaussian", "gp_inference", "marginal_log_likelihood"]


class Gaussian(NamedTuple):
    """A predictive distribution: ``mean`` of shape ``(M,)`` or ``(M, outputs)`` like
    ``y_train``, and ``covariance``: ``(M, M)`` when a full test-test kernel was given, ``(M,)``
    (variances) when only its diagonal was. Every output shares the covariance."""

    mean: torch.Tensor
    covariance: torch.Tensor


def _chunks(m: int, n: int, itemsize: int, budget: Optional[int]):
    """Row ranges of the test set such that one chunk's ``(rows, n)`` work fits ``budget``."""
    rows = m if budget is None else max(1, budget // (4 * max(n, 1) * itemsize))
    for start in range(0, m, rows):
        yield start, min(m, start + rows)


class GPPredictor:
    """The function returned by :func:`gp_inference` (factorization cached on first use)."""

    def __init__(self, owner, k_train_train, y_train, diag_reg, absolute, get, dtype, memory):
        self._owner = owner
        self._get = get
        self._dtype = dtype
        self._memory = memory
        self._kind = "nngp" if get == "nngp" else "ntk"
        self._ktt = C.train_kernel(owner, "k_train_train", C.pick(owner, "k_train_train", k_train_train, self._kind))
        self._out_dtype = self._ktt.dtype
        self._device = self._ktt.device
        n = self._ktt.shape[0]
        self._y, self._flat = C.targets(owner, y_train, n, self._device)
        self._nngp_train = None
        if get == "ntk" and C.is_kernel(k_train_train):
            self._nngp_train = C.train_kernel(
                owner, "k_train_train", C.pick(owner, "k_train_train", k_train_train, "nngp")
            ).to(dtype)
            if self._nngp_train.shape != self._ktt.shape:
                raise C.ShapeError(f"{owner}: the nngp and ntk of k_train_train differ in shape")
        self._reg = C.check_reg(owner, diag_reg)
        self._absolute = absolute
        self._chol = None
        self._alpha = None

    @property
    def cholesky(self) -> torch.Tensor:
        """Lower Cholesky factor of the regularized training kernel (cached)."""
        if self._chol is None:
            k = C.regularize(self._ktt.to(self._dtype), self._reg, self._absolute)
            self._chol = C.cholesky(self._owner, k, self._reg)
        return self._chol

    def solve(self, b: torch.Tensor) -> torch.Tensor:
        """``(K + reg)^{-1} b`` with the cached factor."""
        return torch.cholesky_solve(b.to(self._dtype), self.cholesky)

    @property
    def alpha(self) -> torch.Tensor:
        if self._alpha is None:
            self._alpha = self.solve(self._y)
        return self._alpha

    def _shape(self, out: torch.Tensor) -> torch.Tensor:
        out = out.to(self._out_dtype)
        return out[:, 0] if self._flat else out

    def __call__(self, k_test_train: Any = None, k_test_test: Any = None):
        owner = self._owner + " predictor"
        n = self._ktt.shape[0]
        if k_test_train is None:
            # Training points: the posterior interpolates (use k_test_train=k_train_train for the
            # regularized train-set posterior).
            mean = self._shape(self._y)
            if k_test_test is None:
                return mean
            return Gaussian(mean, torch.zeros((n, n), dtype=self._out_dtype, device=self._device))
        ktd = C.matrix(owner, "k_test_train", C.pick(owner, "k_test_train", k_test_train, self._kind),
                       cols=n, device=self._device)
        m = ktd.shape[0]
        init_td = None
        if self._get == "ntkgp":
            init_td = ktd  # the NTK-GP: the NTK is the prior covariance too
        elif self._get == "ntk" and k_test_test is not None:
            if self._nngp_train is None or not C.is_kernel(k_test_train):
                raise C.ParameterError(
                    f"{owner}: the covariance of get='ntk' needs both the NNGP and the NTK of "
                    f"k_train_train and k_test_train: pass Kernel objects (net.kernel(...)), not matrices"
                )
            init_td = C.matrix(owner, "k_test_train", C.pick(owner, "k_test_train", k_test_train, "nngp"),
                               rows=m, cols=n, device=self._device)
        ktt = None
        if k_test_test is not None:
            init = "ntk" if self._get == "ntkgp" else "nngp"
            ktt = C.tensor(owner, "k_test_test", C.pick(owner, "k_test_test", k_test_test, init),
                           device=self._device)
            if ktt.shape not in ((m, m), (m,)):
                raise C.ShapeError(
                    f"{owner}: k_test_test must be ({m}, {m}) (covariance) or ({m},) (variances only) "
                    f"for {m} test points (got {tuple(ktt.shape)})"
                )
        budget = None if ktt is None or ktt.ndim == 2 else self._memory
        means, covs = [], []
        for a, b in _chunks(m, n, 8, budget):
            td = ktd[a:b].to(self._dtype)
            means.append(td @ self.alpha)
            if ktt is None:
                continue
            if ktt.ndim == 1:
                covs.append(self._variance(td, None if init_td is None else init_td[a:b].to(self._dtype),
                                           ktt[a:b].to(self._dtype)))
        mean = self._shape(torch.cat(means))
        if ktt is None:
            return mean
        if ktt.ndim == 2:
            cov = self._covariance(ktd.to(self._dtype), None if init_td is None else init_td.to(self._dtype),
                                   ktt.to(self._dtype))
        else:
            cov = torch.cat(covs)
        return Gaussian(mean, cov.to(self._out_dtype))

    def _covariance(self, td, init_td, tt):
        if self._get in ("nngp", "ntkgp"):
            cov = tt - td @ self.solve(td.T)
        else:
            # Ensemble of infinitely wide networks trained to convergence (Lee et al. 2019):
            # Theta_td Theta^-1 K Theta^-1 Theta_dt - (Theta_td Theta^-1 K_dt + transpose) + K_tt.
            a = self.solve(td.T)  # (n, m)
            cross = td @ self.solve(init_td.T)
            cov = a.T @ self._nngp_train @ a - cross - cross.T + tt
        return 0.5 * (cov + cov.T)

    def _variance(self, td, init_td, tt_diag):
        if self._get in ("nngp", "ntkgp"):
            return tt_diag - (td * self.solve(td.T).T).sum(1)
        a = self.solve(td.T).T  # (m, n)
        return ((a @ self._nngp_train) * a).sum(1) - 2 * (a * init_td).sum(1) + tt_diag


def gp_inference(k_train_train: Any, y_train: Any, diag_reg: Any = 0.0, *,
                 diag_reg_absolute_scale: bool = False, get: str = "nngp",
                 dtype: torch.dtype = torch.float64, memory: Any = None) -> GPPredictor:
    """Posterior of a Gaussian process with an NNGP or NTK kernel, as a reusable predictor.

    ``predict = gp_inference(k_train_train, y_train)``, then ``predict(k_test_train)`` gives
    the posterior mean and ``predict(k_test_train, k_test_test)`` a :class:`Gaussian`
    ``(mean, covariance)`` (unpack it as ``mean, cov``). ``k_test_test`` may be the full
    ``(M, M)`` test kernel or only its diagonal ``(M,)`` (then the variances are returned,
    computed in chunks of test points within ``memory``). ``k_test_train=None`` returns the
    (exact, unregularized) train-set posterior ``N(y_train, 0)``.

    Modes (``get``), following Lee et al. 2018 (arXiv 1711.00165), Lee et al. 2019
    (arXiv 1902.06720) and He et al. 2020 (arXiv 2007.05864):

    * ``"nngp"``: the exact posterior of an infinitely wide Bayesian network,
      ``mean = K_*x (K + r)^-1 y``, ``cov = K_** - K_*x (K + r)^-1 K_x*``.
    * ``"ntkgp"``: the same with the NTK as covariance (the NTK-GP).
    * ``"ntk"``: the distribution over random initializations of infinitely wide networks
      trained by gradient descent on the MSE to convergence; its mean uses the NTK, its
      covariance needs both kernels (pass :class:`widenet.Kernel` objects).

    Plain matrices are used as they are; Kernel-like objects (with ``.nngp``/``.ntk``) give
    the matrix the mode needs.

    Args:
        k_train_train: ``(N, N)`` training kernel (or a Kernel).
        y_train: ``(N,)`` or ``(N, outputs)`` targets; outputs share the kernel.
        diag_reg: ridge added to the diagonal, relative to the mean diagonal
            (``diag_reg * Tr K / N``) unless ``diag_reg_absolute_scale``. A 0-d tensor is kept,
            so gradients flow through it.
        get: "nngp", "ntk" or "ntkgp".
        dtype: precision of the solves (float64 by default); results come back in the dtype
            of ``k_train_train``.
        memory: bytes (or "512MB") for the chunked variance computation.

    Raises:
        NumericalError: the regularized kernel is not positive definite in ``dtype``; the
            message gives its size and what to change.
    """
    owner = "gp_inference"
    get = C.check_get(owner, get, ("nngp", "ntk", "ntkgp"))
    dtype = C.solve_dtype(owner, dtype)
    budget = None
    if memory is not None:
        from .._validate import check_memory

        budget = check_memory(owner, "memory", memory)
    if not isinstance(diag_reg_absolute_scale, bool):
        raise C.ParameterError(f"{owner}: diag_reg_absolute_scale must be a bool (got {diag_reg_absolute_scale!r})")
    return GPPredictor(owner, k_train_train, y_train, diag_reg, diag_reg_absolute_scale, get, dtype,
                       budget if budget is not None else 2**28)


def marginal_log_likelihood(k_train_train: Any, y_train: Any, diag_reg: Any = 0.0, *,
                            diag_reg_absolute_scale: bool = False,
                            dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Log marginal likelihood ``log p(y | X)`` of targets under a zero-mean GP prior.

    With ``Ky = K + r I`` and ``k`` independent output columns sharing the kernel
    (Rasmussen & Williams 2006, eq. 2.30)::

        log p = -1/2 sum_c y_c^T Ky^-1 y_c  -  k/2 log det Ky  -  N k/2 log(2 pi)

    Differentiable in the kernel and in ``diag_reg`` (pass 0-d tensors that require grad);
    this is what :func:`fit_hyperparameters` maximizes. Returns a 0-d tensor in ``dtype``.
    """
    owner = "marginal_log_likelihood"
    dtype = C.solve_dtype(owner, dtype)
    k = C.train_kernel(owner, "k_train_train", C.pick(owner, "k_train_train", k_train_train, "nngp"))
    y, _ = C.targets(owner, y_train, k.shape[0], k.device)
    reg = C.check_reg(owner, diag_reg)
    ky = C.regularize(k.to(dtype), reg, diag_reg_absolute_scale)
    chol = C.cholesky(owner, ky, reg)
    y = y.to(dtype)
    alpha = torch.cholesky_solve(y, chol)
    n, outputs = y.shape
    logdet = 2 * torch.log(chol.diagonal()).sum()
    return -0.5 * (y * alpha).sum() - 0.5 * outputs * logdet - 0.5 * n * outputs * C.log2pi()
