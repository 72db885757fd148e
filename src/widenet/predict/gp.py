"""Gaussian-process inference with NNGP and NTK kernels, and the NNGP marginal likelihood."""

from __future__ import annotations

from typing import Any, NamedTuple, Optional

import torch

from .._validate import by_get, check_gets
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
    """The function returned by ``gp_inference`` (factorization cached on first use)."""

    def __init__(self, owner, k_train_train, y_train, diag_reg, absolute, get, dtype, memory, solver="cholesky",
                 tol=1e-10):
        self._owner = owner
        self._get = get
        self._dtype = dtype
        self._memory = memory
        self._solver, self._tol = solver, tol
        self._kind = "nngp" if get == "nngp" else "ntk"
        if _is_store(k_train_train):
            if solver != "cg":
                raise C.ParameterError(f"{owner}: a kernel store is solved by conjugate gradients: pass solver='cg'")
            # Streamed from disk by blocked.cg; never loaded whole.
            self._o, self._ktt = None, k_train_train
            self._out_dtype, self._device = torch.float64, torch.device("cpu")
            n = k_train_train.plan.n1
        else:
            train = C.pick(owner, "k_train_train", k_train_train, self._kind)
            self._o = C.train_outputs(owner, "k_train_train", train)  # None, or O of a full-output kernel
            self._ktt = C.train_kernel(owner, "k_train_train", train, full=True)
            self._out_dtype = self._ktt.dtype
            self._device = self._ktt.device
            n = self._ktt.shape[0]
        self._y, self._flat = C.targets(owner, y_train, n, self._device, self._o)
        self._nngp_train = None
        if get == "ntk" and C.is_kernel(k_train_train):
            nngp = C.pick(owner, "k_train_train", k_train_train, "nngp")
            self._nngp_train = C.matrix(owner, "k_train_train.nngp", nngp, outputs=self._o).to(dtype)
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
        """``(K + reg)^{-1} b``: with the cached Cholesky factor, or by conjugate gradients
        (``solver="cg"``, each column to a relative residual ``tol``)."""
        if self._solver == "cg":
            from ..blocked import cg

            reg = float(self._reg.detach()) if isinstance(self._reg, torch.Tensor) else self._reg
            out = cg(self._ktt, b.to(self._dtype), reg, get=self._kind, diag_reg_absolute_scale=self._absolute,
                     tol=self._tol, memory=self._memory, dtype=self._dtype)
            if bool((out.residual > self._tol).any()):
                raise C.NumericalError(
                    f"{self._owner}: conjugate gradients stopped at relative residual {float(out.residual.max()):.2g} "
                    f"after {out.iterations} iterations (tol {self._tol:g}); raise diag_reg or use solver='cholesky'"
                )
            return out.solution.to(b.device)
        return torch.cholesky_solve(b.to(self._dtype), self.cholesky)

    @property
    def alpha(self) -> torch.Tensor:
        if self._alpha is None:
            self._alpha = self.solve(self._y)
        return self._alpha

    def _shape(self, out: torch.Tensor) -> torch.Tensor:
        out = out.to(self._out_dtype)
        if self._o is not None:
            return out.reshape(-1, self._o)
        return out[:, 0] if self._flat else out

    def _points(self, flat: torch.Tensor) -> torch.Tensor:
        """A covariance over (point, output) pairs in the full-output kernels' layout."""
        return flat if self._o is None else C.unflatten(flat, self._o)

    def __call__(self, k_test_train: Any = None, k_test_test: Any = None):
        owner = self._owner + " predictor"
        n = self._y.shape[0]
        o = self._o or 1  # rows of the flattened kernels per point
        if k_test_train is None:
            # Training points: the posterior interpolates (use k_test_train=k_train_train for the
            # regularized train-set posterior).
            mean = self._shape(self._y)
            if k_test_test is None:
                return mean
            return Gaussian(mean, self._points(torch.zeros((n, n), dtype=self._out_dtype, device=self._device)))
        ktd = C.matrix(owner, "k_test_train", C.pick(owner, "k_test_train", k_test_train, self._kind),
                       cols=n // o, device=self._device, outputs=self._o)
        m = ktd.shape[0] // o  # test points
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
                               rows=m, cols=n // o, device=self._device, outputs=self._o)
        ktt = None if k_test_test is None else self._test_test(owner, k_test_test, m)
        per_point = ktt is not None and ktt.ndim == (1 if self._o is None else 3)
        budget = self._memory if per_point else None
        means, covs = [], []
        for a, b in _chunks(m, n * o, 8, budget):
            td = ktd[a * o:b * o].to(self._dtype)
            means.append(td @ self.alpha)
            if not per_point:
                continue
            init = None if init_td is None else init_td[a * o:b * o].to(self._dtype)
            if self._o is None:
                covs.append(self._variance(td, init, ktt[a:b].to(self._dtype)))
            else:  # the (O, O) diagonal blocks of the chunk's covariance
                block = self._covariance(td, init, torch.block_diag(*ktt[a:b].to(self._dtype)))
                covs.append(torch.diagonal(block.reshape(b - a, o, b - a, o), dim1=0, dim2=2).permute(2, 0, 1))
        mean = self._shape(torch.cat(means))
        if ktt is None:
            return mean
        if per_point:
            cov = torch.cat(covs)
        else:
            cov = self._points(self._covariance(ktd.to(self._dtype), None if init_td is None else init_td.to(self._dtype),
                                                ktt.to(self._dtype)))
        return Gaussian(mean, cov.to(self._out_dtype))

    def _test_test(self, owner: str, k_test_test: Any, m: int) -> torch.Tensor:
        """``k_test_test`` checked for ``m`` test points (covariance or its diagonal), full outputs flattened."""
        o = self._o or 1  # rows of the flattened kernels per point
        init = "ntk" if self._get == "ntkgp" else "nngp"
        ktt = C.tensor(owner, "k_test_test", C.pick(owner, "k_test_test", k_test_test, init),
                       device=self._device)
        forms = ((m, m), (m,)) if self._o is None else ((m, m, o, o), (m, o, o))
        if ktt.shape not in forms:
            what = "variances only" if self._o is None else "each point's output covariance only"
            raise C.ShapeError(
                f"{owner}: k_test_test must be {forms[0]} (covariance) or {forms[1]} ({what}) "
                f"for {m} test points (got {tuple(ktt.shape)})"
            )
        if self._o is not None and ktt.ndim == 4:
            ktt = C.flatten(ktt)
        return ktt

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
                 diag_reg_absolute_scale: bool = False, get: Any = "nngp",
                 dtype: torch.dtype = torch.float64, memory: Any = None, solver: str = "auto",
                 tol: float = 1e-10) -> GPPredictor:
    """Posterior of a Gaussian process with an NNGP or NTK kernel, as a reusable predictor.

    ``predict = gp_inference(k_train_train, y_train)``, then ``predict(k_test_train)`` gives
    the posterior mean and ``predict(k_test_train, k_test_test)`` a ``Gaussian``
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
      covariance needs both kernels (pass ``widenet.Kernel`` objects).

    Plain matrices are used as they are; Kernel-like objects (with ``.nngp``/``.ntk``) give
    the matrix the mode needs.

    Args:
        k_train_train: ``(N, N)`` training kernel (or a Kernel), shared by every output
            column; or a full-output kernel ``(N, N, O, O)`` (``empirical.ntk(...,
            outputs="full")``) that couples the outputs: the GP is then over all (point,
            output) pairs, test kernels must be full-output too, means are ``(M, O)``,
            covariances ``(M, M, O, O)``, and a per-point ``k_test_test`` of shape
            ``(M, O, O)`` gives each test point's ``(O, O)`` output covariance.
        y_train: ``(N,)`` or ``(N, outputs)`` targets (``(N, O)`` with a full-output kernel).
        diag_reg: ridge added to the diagonal, relative to the mean diagonal
            (``diag_reg * Tr K / N``) unless ``diag_reg_absolute_scale``. A 0-d tensor is kept,
            so gradients flow through it.
        get: "nngp", "ntk" or "ntkgp", or a tuple of them (Neural Tangents' form): then a
            named tuple of predictors, one per name.
        dtype: precision of the solves (float64 by default); results come back in the dtype
            of ``k_train_train``.
        memory: bytes (or "512MB") for the chunked variance computation (and, with
            ``solver="cg"``, for the kernel rows read at once).
        solver: "cholesky" (factor once, exact), "cg": conjugate gradients
            (``widenet.blocked.cg``), which also takes ``k_train_train`` as a
            ``widenet.blocked.Store`` and streams it from disk, so the training kernel
            never has to fit in memory; or "auto": CG for a store, Cholesky for a kernel in
            memory.
        tol: relative residual of each CG solve.

    Raises:
        NumericalError: the regularized kernel is not positive definite in ``dtype``; the
            message gives its size and what to change.
    """
    owner = "gp_inference"
    names, many = check_gets(owner, get, ("nngp", "ntk", "ntkgp"))
    if many:
        return by_get(names, True, lambda g: gp_inference(
            k_train_train, y_train, diag_reg, diag_reg_absolute_scale=diag_reg_absolute_scale, get=g,
            dtype=dtype, memory=memory, solver=solver, tol=tol))
    get = names[0]
    dtype = C.solve_dtype(owner, dtype)
    budget = None
    if memory is not None:
        from .._validate import check_memory

        budget = check_memory(owner, "memory", memory)
    if not isinstance(diag_reg_absolute_scale, bool):
        raise C.ParameterError(f"{owner}: diag_reg_absolute_scale must be a bool (got {diag_reg_absolute_scale!r})")
    solver = C.check_choice(owner, "solver", solver, ("auto", "cholesky", "cg"))
    if solver == "auto":
        solver = "cg" if _is_store(k_train_train) else "cholesky"
    from .._validate import check_float

    tol = check_float(owner, "tol", tol, minimum=0.0, exclusive_minimum=True)
    return GPPredictor(owner, k_train_train, y_train, diag_reg, diag_reg_absolute_scale, get, dtype,
                       budget if budget is not None else 2**28, solver, tol)


def _is_store(k: Any) -> bool:
    """A ``widenet.blocked.Store`` (checked by name, so predict needs no import of it)."""
    return type(k).__name__ == "Store" and hasattr(k, "plan") and hasattr(k, "names")


def marginal_log_likelihood(k_train_train: Any, y_train: Any, diag_reg: Any = 0.0, *,
                            diag_reg_absolute_scale: bool = False,
                            dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Log marginal likelihood ``log p(y | X)`` of targets under a zero-mean GP prior.

    With ``Ky = K + r I`` and ``k`` independent output columns sharing the kernel
    (Rasmussen & Williams 2006, eq. 2.30):

        log p = -1/2 sum_c y_c^T Ky^-1 y_c  -  k/2 log det Ky  -  N k/2 log(2 pi)

    Differentiable in the kernel and in ``diag_reg`` (pass 0-d tensors that require grad);
    this is what ``fit_hyperparameters`` maximizes. A full-output kernel ``(N, N, O, O)``
    with targets ``(N, O)`` gives the evidence of the joint Gaussian over all ``N O`` outputs.
    Returns a 0-d tensor in ``dtype``.
    """
    owner = "marginal_log_likelihood"
    dtype = C.solve_dtype(owner, dtype)
    train = C.pick(owner, "k_train_train", k_train_train, "nngp")
    k = C.train_kernel(owner, "k_train_train", train, full=True)
    y, _ = C.targets(owner, y_train, k.shape[0], k.device, C.train_outputs(owner, "k_train_train", train))
    reg = C.check_reg(owner, diag_reg)
    ky = C.regularize(k.to(dtype), reg, diag_reg_absolute_scale)
    chol = C.cholesky(owner, ky, reg)
    y = y.to(dtype)
    alpha = torch.cholesky_solve(y, chol)
    n, outputs = y.shape
    logdet = 2 * torch.log(chol.diagonal()).sum()
    return -0.5 * (y * alpha).sum() - 0.5 * outputs * logdet - 0.5 * n * outputs * C.log2pi()
