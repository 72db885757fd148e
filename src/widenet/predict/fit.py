"""Type-II maximum likelihood: architecture hyperparameters that maximize the NNGP evidence."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Optional

import numpy as np
import torch
import torch.autograd.forward_ad as fwAD

from .._validate import check_choice, check_float, check_int
from . import _common as C
from .gp import marginal_log_likelihood

__all__ = ["FitResult", "fit_hyperparameters"]


@dataclass
class FitResult:
    """Outcome of ``fit_hyperparameters``.

    Attributes:
        params: the fitted hyperparameters, by name (floats).
        diag_reg: the fitted (or fixed) relative ridge.
        log_likelihood: the NNGP log marginal likelihood at the optimum.
        method: "gradient" or "grid".
        evaluations: how many times the kernel was computed.
        history: ``(params, diag_reg, log_likelihood)`` of every evaluation, in order.
        success, message: the optimizer's report.
    """

    params: Dict[str, float]
    diag_reg: float
    log_likelihood: float
    method: str
    evaluations: int
    history: list = field(default_factory=list, repr=False)
    success: bool = True
    message: str = ""
    build: Optional[Callable] = field(default=None, repr=False)

    @property
    def architecture(self):
        """``build(**params)``: the architecture with the fitted hyperparameters."""
        return self.build(**self.params)


def _kernel(build, params: dict, x, nngp_fn):
    net = build(**params)
    return nngp_fn(net, x)


class _Problem:
    def __init__(self, owner, build, x, y, names, init, fit_reg, reg0, absolute, bounds, nngp_fn, dtype):
        self.owner, self.build, self.x, self.y = owner, build, x, y
        self.names, self.init, self.fit_reg, self.reg0 = names, init, fit_reg, reg0
        self.absolute, self.nngp_fn, self.dtype = absolute, nngp_fn, dtype
        # Positive parameters are optimized on a log scale (so they stay positive and steps
        # are relative); others on their own scale.
        lower = {n: bounds.get(n, (0.0, None))[0] for n in names}
        self.log = {n: init[n] > 0 and lower[n] is not None and lower[n] >= 0 for n in names}
        self.bounds = bounds
        self.history = []
        self.evaluations = 0
        self.worst = math.nan  # the largest objective value_and_grad returned so far

    def decode(self, u):
        params = {}
        for i, n in enumerate(self.names):
            params[n] = math.exp(u[i]) if self.log[n] else float(u[i])
        reg = math.exp(u[-1]) if self.fit_reg else self.reg0
        return params, reg

    def encode(self, params, reg):
        u = [math.log(params[n]) if self.log[n] else params[n] for n in self.names]
        if self.fit_reg:
            u.append(math.log(reg))
        return np.array(u, dtype=float)

    def scipy_bounds(self):
        out = []
        for n in self.names:
            lo, hi = self.bounds.get(n, (0.0 if self.log[n] else None, None))
            if self.log[n]:
                lo = None if lo is None or lo <= 0 else math.log(lo)
                hi = None if hi is None else math.log(hi)
            out.append((lo, hi))
        if self.fit_reg:
            out.append((math.log(1e-10), math.log(10.0)))
        return out

    def mll(self, k, reg):
        return marginal_log_likelihood(k, self.y, reg, diag_reg_absolute_scale=self.absolute, dtype=self.dtype)

    def value(self, params, reg) -> float:
        with torch.no_grad():
            k = _kernel(self.build, params, self.x, self.nngp_fn)
            value = float(self.mll(k, reg))
        self.evaluations += 1
        self.history.append((dict(params), reg, value))
        return value

    def value_and_grad(self, u):
        """The objective and its gradient at ``u``; a point where the kernel leaves the dtype's
        range or is not positive definite (a line search's trial step far out on the log scale)
        gets an objective far above every value seen and no slope, so the line search steps back
        instead of the fit failing (an infinite value would end L-BFGS-B's line search)."""
        try:
            value, grad = self._value_and_grad(u)
        except C.NumericalError:
            worst = self.worst if math.isfinite(self.worst) else 0.0
            return worst + 1e3 * (1.0 + abs(worst)), np.zeros(len(u))
        self.worst = value if not math.isfinite(self.worst) else max(self.worst, value)
        return value, grad

    def _value_and_grad(self, u):
        params, reg = self.decode(u)
        base = {n: torch.tensor(v, dtype=torch.float64) for n, v in params.items()}
        tangents = []
        k = None
        for n in self.names:
            with fwAD.dual_level():
                duals = {m: (fwAD.make_dual(v, torch.ones_like(v)) if m == n else v) for m, v in base.items()}
                try:
                    out = _kernel(self.build, duals, self.x, self.nngp_fn)
                except C.ParameterError:
                    self.value(params, reg)  # re-raises if the values themselves are invalid
                    raise _NotDifferentiable(n) from None
                primal, tangent = fwAD.unpack_dual(out)
                if tangent is None:
                    raise _NotDifferentiable(n)
                k = primal.detach()
                tangents.append(tangent.detach())
        if k is None:
            with torch.no_grad():
                k = _kernel(self.build, params, self.x, self.nngp_fn)
        self.evaluations += 1
        k_leaf = k.to(self.dtype).requires_grad_(True)
        reg_t = torch.tensor(reg, dtype=self.dtype, requires_grad=True)
        value = self.mll(k_leaf, reg_t)
        g_k, g_reg = torch.autograd.grad(value, (k_leaf, reg_t))
        value = value.detach()
        grad = [float((g_k * t.to(self.dtype)).sum()) * (params[n] if self.log[n] else 1.0)
                for n, t in zip(self.names, tangents)]
        if self.fit_reg:
            grad.append(float(g_reg) * reg)
        self.history.append((dict(params), reg, float(value)))
        scale = self.y.numel()
        return -float(value) / scale, -np.array(grad) / scale


class _NotDifferentiable(Exception):
    pass


def fit_hyperparameters(build: Callable[..., Any], x_train: Any, y_train: Any, init: Dict[str, float], *,
                        diag_reg: float = 1e-4, fit_diag_reg: bool = True,
                        bounds: Optional[Dict[str, tuple]] = None, method: str = "auto",
                        grid: Optional[Dict[str, Any]] = None, max_iter: int = 100,
                        diag_reg_absolute_scale: bool = False, memory: Any = None,
                        dtype: torch.dtype = torch.float64) -> FitResult:
    """Fits architecture hyperparameters by maximizing the NNGP marginal likelihood.

    ``build(**params)`` returns a widenet architecture for given hyperparameter values, e.g.
    ``lambda W_std, b_std: wn.Serial(wn.Dense(1, W_std, b_std), wn.Relu(), wn.Dense(1, W_std, b_std))``;
    any float layer parameter can be fitted this way (``W_std``, ``b_std``, Erf's ``a``,
    attention's ``W_query_std``, ...). ``diag_reg`` (the observation noise, relative to the
    kernel's mean diagonal) is fitted too unless ``fit_diag_reg=False``.

    ``method="gradient"`` runs L-BFGS-B (scipy) on the negative log marginal likelihood per
    target entry. Its gradient is exact: the kernel's derivative in each hyperparameter comes
    from forward-mode automatic differentiation through the kernel rules (one kernel
    evaluation per hyperparameter), and the likelihood's derivative in the kernel from
    reverse mode. Positive parameters are optimized on a log scale. ``method="grid"``
    evaluates every combination of ``grid`` (a dict ``name -> values``; by default 9 values
    per parameter from init/4 to init*4, and 7 values of ``diag_reg``) and keeps the best.
    ``method="auto"`` uses the gradient and falls back to the grid when a parameter does not
    reach the kernel differentiably.

    Args:
        build: callable ``(**params) -> architecture``.
        x_train, y_train: inputs and ``(N,)`` or ``(N, outputs)`` targets.
        init: starting values, by name; these names are the ones fitted.
        diag_reg: starting (or fixed) relative ridge, > 0.
        bounds: optional ``name -> (low, high)`` (``None`` for no bound on a side).
        max_iter: L-BFGS-B iterations.
        memory: memory budget for each kernel computation.
        dtype: precision of the likelihood (float64).

    Returns:
        A ``FitResult`` (``.params``, ``.diag_reg``, ``.log_likelihood``,
        ``.architecture``).
    """
    owner = "fit_hyperparameters"
    if not callable(build):
        raise C.ParameterError(f"{owner}: build must be a callable (**params) -> architecture (got {build!r})")
    if not isinstance(init, dict) or not init:
        raise C.ParameterError(f"{owner}: init must be a non-empty dict of name -> starting value (got {init!r})")
    names = list(init)
    init = {n: check_float(owner, f"init[{n!r}]", v) for n, v in init.items()}
    reg0 = check_float(owner, "diag_reg", diag_reg, minimum=0.0, exclusive_minimum=fit_diag_reg)
    method = check_choice(owner, "method", method, ("auto", "gradient", "grid"))
    max_iter = check_int(owner, "max_iter", max_iter, minimum=1)
    bounds = dict(bounds or {})
    for n in bounds:
        if n not in init:
            raise C.ParameterError(f"{owner}: bounds names a parameter that init does not: {n!r}")
    dtype = C.solve_dtype(owner, dtype)
    x = x_train if isinstance(x_train, torch.Tensor) else C.tensor(owner, "x_train", x_train)
    y, _ = C.targets(owner, y_train, len(x), x.device)

    def nngp_fn(net, xx):
        if not hasattr(net, "nngp"):
            raise C.ParameterError(f"{owner}: build(**params) must return a widenet architecture (got {net!r})")
        return net.nngp(xx, memory=memory)

    problem = _Problem(owner, build, x, y, names, init, fit_diag_reg, reg0, diag_reg_absolute_scale, bounds,
                       nngp_fn, dtype)
    # Validate the architecture once, before any optimization.
    problem.value(init, reg0)
    if method in ("auto", "gradient"):
        from scipy.optimize import minimize

        try:
            res = minimize(problem.value_and_grad, problem.encode(init, reg0), jac=True, method="L-BFGS-B",
                           bounds=problem.scipy_bounds(), options={"maxiter": max_iter})
        except _NotDifferentiable as err:
            if method == "gradient":
                raise C.ParameterError(
                    f"{owner}: the kernel is not differentiable in {err.args[0]!r} (the layer keeps it as a "
                    f"plain float); use method='grid'"
                ) from None
        else:
            params, reg = problem.decode(res.x)
            value = problem.value(params, reg)
            return FitResult(params, reg, value, "gradient", problem.evaluations, problem.history,
                             bool(res.success), str(res.message), build)
    return _grid(owner, problem, names, init, reg0, fit_diag_reg, grid, build)


def _grid(owner, problem, names, init, reg0, fit_reg, grid, build) -> FitResult:
    grid = dict(grid or {})
    axes = []
    for n in names:
        values = grid.get(n)
        if values is None:
            v = init[n]
            values = [v * 4.0 ** (i / 4) for i in range(-4, 5)] if v != 0 else list(np.linspace(-1, 1, 9))
        axes.append([float(v) for v in values])
    regs = [reg0]
    if fit_reg:
        regs = [float(v) for v in grid.get("diag_reg", [reg0 * 10.0 ** e for e in range(-3, 4)])]
    combos = math.prod(len(a) for a in axes) * len(regs)
    if combos > 5000:
        raise C.ParameterError(
            f"{owner}: the grid has {combos} combinations (> 5000); pass a smaller grid= dict"
        )
    best = None
    for values in itertools.product(*axes):
        params = dict(zip(names, values))
        with torch.no_grad():
            k = problem.nngp_fn(problem.build(**params), problem.x)
        problem.evaluations += 1
        for reg in regs:
            try:
                value = float(problem.mll(k, reg))
            except C.NumericalError:
                continue
            problem.history.append((dict(params), reg, value))
            if best is None or value > best[2]:
                best = (params, reg, value)
    if best is None:
        raise C.NumericalError(f"{owner}: every grid point gave a kernel that is not positive definite; raise diag_reg")
    return FitResult(best[0], best[1], best[2], "grid", problem.evaluations, problem.history, True,
                     f"best of {combos} grid points", build)
