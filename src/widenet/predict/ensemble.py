"""Mean and covariance over random initializations of infinitely wide networks trained by
gradient descent on the MSE, at any time (Lee et al. 2019, arXiv 1902.06720, section 2.3)."""

from __future__ import annotations

from typing import Any, Callable

import torch

from .._validate import by_get, check_float, check_gets, check_memory
from . import _common as C
from .gp import Gaussian, gp_inference

__all__ = ["gradient_descent_mse_ensemble"]


class EnsemblePredictor:
    """The function returned by ``gradient_descent_mse_ensemble``."""

    def __init__(self, kernel_fn, x_train, y_train, learning_rate, diag_reg, absolute, dtype, memory):
        owner = self._owner = "gradient_descent_mse_ensemble"
        if hasattr(kernel_fn, "kernel") and callable(kernel_fn.kernel):
            kernel_fn = kernel_fn.kernel  # a widenet architecture
        if not callable(kernel_fn):
            raise C.ParameterError(
                f"{owner}: kernel_fn must be a widenet architecture or a callable (x1, x2) -> Kernel "
                f"(got {type(kernel_fn).__name__})"
            )
        self._fn = kernel_fn
        self._x = x_train
        n = len(x_train)
        self._y, self._flat = C.targets(owner, y_train, n, None)
        self._lr = check_float(owner, "learning_rate", learning_rate, minimum=0.0, exclusive_minimum=True)
        self._reg = C.check_reg(owner, diag_reg)
        self._absolute = absolute
        self._dtype = dtype
        self._budget = memory
        self._k = None
        self._eig = {}
        self._gp = {}

    @property
    def train_kernel(self):
        """``kernel_fn(x_train, None)``, computed once."""
        if self._k is None:
            k = self._fn(self._x, None)
            if not C.is_kernel(k):
                raise C.ParameterError(
                    f"{self._owner}: kernel_fn must return an object with .nngp and .ntk (got {type(k).__name__})"
                )
            self._k = k
            self._y = self._y.to(C.tensor(self._owner, "kernel", k.nngp).device)
        return self._k

    def _matrix(self, get: str) -> torch.Tensor:
        return C.train_kernel(self._owner, f"kernel_fn(x_train).{get}", getattr(self.train_kernel, get)).to(self._dtype)

    def _eigh(self, get: str):
        if get not in self._eig:
            k = C.regularize(self._matrix(get), self._reg, self._absolute)
            self._eig[get] = C.eigh(self._owner, k, self._reg)
        return self._eig[get]

    def __call__(self, t: Any = None, x_test: Any = None, get: Any = "ntk", compute_cov: Any = False):
        """Mean (and covariance) of the outputs on ``x_test`` at time(s) ``t``.

        Args:
            t: steps (number, array, ``inf``) or ``None`` for infinite time.
            x_test: test inputs, or ``None`` for the training inputs (unregularized).
            get: "ntk" (all layers trained) or "nngp" (only the readout layer trained), or a
                tuple of both (Neural Tangents' form): then a named tuple with one result per
                name, from one pass over the test kernels.
            compute_cov: False (mean only), True (full covariance over ``x_test``) or
                "variance" (its diagonal only, computed in chunks of test points).
        Returns:
            The mean, or a ``Gaussian`` ``(mean, covariance)``; leading axes follow ``t``.
        """
        owner = self._owner + " predictor"
        names, many = check_gets(owner, get, ("nngp", "ntk"))
        if compute_cov not in (False, True, "variance"):
            raise C.ParameterError(f"{owner}: compute_cov must be False, True or 'variance' (got {compute_cov!r})")
        tt, t_shape = C.times(owner, t, self._dtype, self.train_kernel.nngp.device)
        if x_test is None:
            return by_get(names, many, lambda g: self._train(tt, t_shape, g, compute_cov, self.train_kernel.nngp.dtype))
        parts = {g: ([], []) for g in names}
        for ktd, ktt in self._test_chunks(x_test, compute_cov):
            for g in names:
                mean, cov = self._predict(tt, g, ktd, ktt)
                parts[g][0].append(mean)
                parts[g][1].append(cov)
        return by_get(names, many, lambda g: self._assemble(parts[g], t_shape, compute_cov))

    def _test_chunks(self, x_test, compute_cov):
        """``(k_test_train, k_test_test)`` for chunks of test points within the budget."""
        m, n = len(x_test), self._y.shape[0]
        if compute_cov is True:
            ranges = [(0, m)]
        else:
            rows = max(1, self._budget // (8 * max(n, 1) * 8))
            ranges = [(a, min(m, a + rows)) for a in range(0, m, rows)]
        for a, b in ranges:
            ktd = self._fn(x_test[a:b], self._x)
            ktt = None
            if compute_cov is True:
                ktt = self._fn(x_test, None).nngp
            elif compute_cov == "variance":
                ktt = self._test_variances(x_test[a:b], ktd)
            yield ktd, ktt

    def _assemble(self, part, t_shape, compute_cov):
        means, variances = part
        out_dtype = self.train_kernel.nngp.dtype
        mean = torch.cat(means, dim=1)
        mean = mean.reshape(t_shape + mean.shape[1:]).to(out_dtype)
        mean = mean[..., 0] if self._flat else mean
        if compute_cov is False:
            return mean
        cov = variances[0] if compute_cov is True else torch.cat(variances, dim=1)
        cov = cov.reshape(t_shape + cov.shape[1:]).to(out_dtype)
        return Gaussian(mean, cov)

    def _test_variances(self, x, ktd) -> torch.Tensor:
        var = getattr(ktd, "var1", None)
        if isinstance(var, torch.Tensor) and var.shape == (len(x),):
            return var
        return torch.diagonal(self._fn(x, None).nngp)

    def _predict(self, tt, get, ktd, ktt):
        owner = self._owner
        n = self._y.shape[0]
        td = C.matrix(owner, f"kernel_fn(x_test, x_train).{get}", getattr(ktd, get), cols=n).to(self._dtype)
        y = self._y.to(dtype=self._dtype, device=td.device)
        if tt is None:
            if get not in self._gp:
                self._gp[get] = gp_inference(self.train_kernel, self._y, self._reg,
                                             diag_reg_absolute_scale=self._absolute, get=get, dtype=self._dtype)
            out = self._gp[get](ktd, ktt)
            if ktt is None:
                mean, cov = out, None
            else:
                mean, cov = out
            mean = mean.to(self._dtype)[None]  # gp_inference was given 2-D targets
            return mean, None if cov is None else cov.to(self._dtype)[None]
        evals, evecs = self._eigh(get)
        norm = self._y.numel()
        t = tt * self._lr
        h = -C.expm1_ratio(evals / norm, t) / norm  # (T, N): V diag(h) V^T = (I - e^{-Theta t/N}) Theta^-1
        a = td @ evecs  # (M, N)
        mean = torch.einsum("mi,ti,ik->tmk", a, h, evecs.T @ y)
        if ktt is None:
            return mean, None
        ktt = ktt.to(self._dtype)
        if get == "nngp":
            h2 = -C.expm1_ratio(evals / norm, 2 * t) / norm
            if ktt.ndim == 2:
                cov = ktt[None] - torch.einsum("mi,ti,li->tml", a, h2, a)
            else:
                cov = ktt[None] - torch.einsum("mi,ti,mi->tm", a, h2, a)
            return mean, cov
        # NTK: with A = Theta_td V diag(h) V^T (the map from training residuals to test outputs),
        # cov = A K_dd A^T - A K_dt - K_td A^T + K_tt.
        nngp_dd = self._matrix("nngp")
        nngp_td = C.matrix(owner, "kernel_fn(x_test, x_train).nngp", ktd.nngp, cols=n).to(self._dtype)
        amap = torch.einsum("mi,ti,ji->tmj", a, h, evecs)  # (T, M, N)
        if ktt.ndim == 2:
            cross = amap @ nngp_td.T
            cov = amap @ nngp_dd @ amap.transpose(1, 2) - cross - cross.transpose(1, 2) + ktt[None]
        else:
            cov = ((amap @ nngp_dd) * amap).sum(-1) - 2 * (amap * nngp_td[None]).sum(-1) + ktt[None]
        return mean, cov

    def _train(self, tt, t_shape, get, compute_cov, out_dtype):
        n = self._y.shape[0]
        y = self._y.to(self._dtype)
        if tt is None:
            mean = y[None]
            cov = torch.zeros((1, n, n) if compute_cov is True else (1, n), dtype=self._dtype, device=y.device)
        else:
            evals, evecs = self._eigh(get)
            norm = self._y.numel()
            t = tt * self._lr
            decay = torch.exp(-evals[None] * t[:, None] / norm)  # e^{-lambda t / N}
            mean = torch.einsum("ji,ti,ki,kc->tjc", evecs, 1 - decay, evecs, y)
            cov = None
            if compute_cov:
                if get == "nngp":
                    cov = torch.einsum("ji,ti,ki->tjk", evecs, evals[None] * decay**2, evecs)
                else:
                    e = torch.einsum("ji,ti,ki->tjk", evecs, decay, evecs)
                    cov = e @ self._matrix("nngp") @ e
                if compute_cov == "variance":
                    cov = torch.diagonal(cov, dim1=1, dim2=2)
        mean = mean.reshape(t_shape + mean.shape[1:]).to(out_dtype)
        mean = mean[..., 0] if self._flat else mean
        if not compute_cov:
            return mean
        return Gaussian(mean, cov.reshape(t_shape + cov.shape[1:]).to(out_dtype))


def gradient_descent_mse_ensemble(kernel_fn: Callable, x_train: Any, y_train: Any, learning_rate: float = 1.0,
                                  diag_reg: Any = 0.0, *, diag_reg_absolute_scale: bool = False,
                                  dtype: torch.dtype = torch.float64, memory: Any = "256MB") -> EnsemblePredictor:
    """Distribution of an infinite ensemble of infinitely wide networks trained on the MSE.

    Over random initializations, the outputs of infinitely wide networks trained by gradient
    flow on ``||f - y||^2 / (2 y.numel())`` are Gaussian at every time ``t`` (Lee et al. 2019,
    arXiv 1902.06720, eqs. 13-16). With ``h_t(Theta) = (I - exp(-lr t Theta / N)) Theta^-1``:

        mean_t(x) = Theta_xd h_t y
        cov_t     = K_xx + A K_dd A^T - A K_dx - K_xd A^T,   A = Theta_xd h_t

    ``get="nngp"`` gives the same with the NNGP in place of the NTK (only the readout layer
    trained), whose covariance is ``K_xx - K_xd h_2t K_dx``. ``t = None`` is infinite time
    (``gp_inference``'s "nngp"/"ntk" modes).

    ``predict = gradient_descent_mse_ensemble(net, x_train, y_train)``, then
    ``predict(t, x_test, get="ntk", compute_cov=False | True | "variance")``. The training
    kernel is computed once; test points are processed in chunks whose working set fits
    ``memory`` (for means and variances), so very large test sets run in bounded memory.

    Args:
        kernel_fn: a widenet architecture (its ``kernel`` is used) or any callable
            ``(x1, x2) -> Kernel`` (``x2=None`` meaning ``x1``).
        x_train, y_train: training inputs and ``(N,)`` or ``(N, outputs)`` targets.
        learning_rate, diag_reg, diag_reg_absolute_scale, dtype: as in
            ``gradient_descent_mse``.
        memory: bytes (or "256MB") for one chunk of test points.
    """
    owner = "gradient_descent_mse_ensemble"
    if not isinstance(diag_reg_absolute_scale, bool):
        raise C.ParameterError(f"{owner}: diag_reg_absolute_scale must be a bool (got {diag_reg_absolute_scale!r})")
    budget = check_memory(owner, "memory", memory)
    return EnsemblePredictor(kernel_fn, x_train, y_train, learning_rate, diag_reg, diag_reg_absolute_scale,
                             C.solve_dtype(owner, dtype), budget)
