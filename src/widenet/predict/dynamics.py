"""Outputs of infinitely wide networks trained by gradient descent, at any training time."""

from __future__ import annotations

from typing import Any, Callable, Optional

import numpy as np
import torch

from .._validate import check_float, check_int
from . import _common as C

__all__ = ["gradient_descent_mse", "gradient_descent", "max_learning_rate"]


class MSEPredictor:
    """The function returned by ``gradient_descent_mse`` (eigendecomposition and Cholesky
    factor computed on first use and cached)."""

    def __init__(self, ntk, y_train, learning_rate, diag_reg, absolute, weight_decay, dtype):
        owner = self._owner = "gradient_descent_mse"
        train = C.pick(owner, "ntk_train_train", ntk, "ntk")
        self._o = C.train_outputs(owner, "ntk_train_train", train)  # None, or O of a full-output kernel
        self._k = C.train_kernel(owner, "ntk_train_train", train, full=True)
        self._out_dtype, self._device = self._k.dtype, self._k.device
        self._y, self._flat = C.targets(owner, y_train, self._k.shape[0], self._device, self._o)
        self._lr = check_float(owner, "learning_rate", learning_rate, minimum=0.0, exclusive_minimum=True)
        self._reg = C.check_reg(owner, diag_reg)
        self._absolute = absolute
        self._wd = check_float(owner, "weight_decay", weight_decay, minimum=0.0)
        self._dtype = dtype
        self._norm = self._y.numel()  # the loss is ||f - y||^2 / (2 y.numel())
        self._eig = None
        self._chol = None

    def _regularized(self) -> torch.Tensor:
        k = C.regularize(self._k.to(self._dtype), self._reg, self._absolute)
        if self._wd:
            # Weight decay toward the initial parameters adds weight_decay * y.numel() to the
            # function-space operator Theta / y.numel().
            k = k + self._wd * self._norm * torch.eye(k.shape[0], dtype=k.dtype, device=k.device)
        return k

    @property
    def eigh(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Eigenvalues (clamped at 0) and eigenvectors of the regularized NTK (cached)."""
        if self._eig is None:
            k = C.regularize(self._k.to(self._dtype), self._reg, self._absolute)
            self._eig = C.eigh(self._owner, k, self._reg)
        return self._eig

    def __call__(self, t: Any = None, k_test_train: Any = None, fx_train_0: Any = 0.0,
                 fx_test_0: Any = 0.0):
        owner = self._owner + " predictor"
        n, outputs = self._y.shape
        o = self._o or 1  # rows of the flattened kernels per point
        y = self._y.to(self._dtype)
        f0 = C.initial(owner, "fx_train_0", fx_train_0, self._shape_of(n // o), self._y).to(self._dtype)
        f0 = f0.reshape(n, outputs)
        ktd = None
        if k_test_train is not None:
            ktd = C.matrix(owner, "k_test_train", C.pick(owner, "k_test_train", k_test_train, "ntk"),
                           cols=n // o, device=self._device, outputs=self._o).to(self._dtype)
            m = ktd.shape[0]
            g0 = C.initial(owner, "fx_test_0", fx_test_0, self._shape_of(m // o), self._y)
            g0 = g0.to(self._dtype).reshape(m, outputs)
        tt, t_shape = C.times(owner, t, self._dtype, self._device)
        if tt is None:
            train, test = self._infinite(y, f0, ktd)
            train, test = train[None], None if test is None else test[None]
        else:
            train, test = self._finite(tt * self._lr, y, f0, ktd)
        train = self._finish(train + f0, t_shape)
        if ktd is None:
            return train
        return train, self._finish(test + g0, t_shape)

    def _shape_of(self, points: int) -> tuple:
        if self._o is not None:
            return (points, self._o)
        return (points,) if self._flat else (points, self._y.shape[1])

    def _finish(self, out: torch.Tensor, t_shape: tuple) -> torch.Tensor:
        out = out.reshape(t_shape + out.shape[1:]).to(self._out_dtype)
        if self._o is not None:
            return out.reshape(t_shape + (-1, self._o))
        return out[..., 0] if self._flat else out

    def _infinite(self, y, f0, ktd):
        if self._chol is None:
            self._chol = C.cholesky(self._owner, self._regularized(), self._reg)
        residual = torch.cholesky_solve(y - f0, self._chol)
        # Without weight decay the training outputs reach the targets; with it, kernel ridge
        # regression's fit Theta_r (Theta_r + wd N)^-1 (y - f0).
        if self._wd:
            train = C.regularize(self._k.to(self._dtype), self._reg, self._absolute) @ residual
        else:
            train = y - f0
        test = None if ktd is None else ktd @ residual
        return train, test

    def _finite(self, t, y, f0, ktd):
        # In the eigenbasis of Theta (plus ridge), with rates a_i = lambda_i / N + weight_decay:
        #   train: f(t) = f0 + V diag(lambda_i / N * expm1(-a_i t) / a_i) V^T (f0 - y)
        #   test:  g(t) = g0 + Theta_td / N * V diag(expm1(-a_i t) / a_i) V^T (f0 - y)
        # (Lee et al. 2019, eqs. 9-10; weight decay toward the initial parameters).
        evals, evecs = self.eigh
        rates = evals / self._norm + self._wd
        h = C.expm1_ratio(rates, t)  # (T, N)
        proj = evecs.T @ (f0 - y)  # (N, k)
        train = torch.einsum("ij,tj,jk->tik", evecs, h * (evals / self._norm), proj)
        test = None
        if ktd is not None:
            test = torch.einsum("mj,tj,jk->tmk", (ktd @ evecs) / self._norm, h, proj)
        return train, test


def gradient_descent_mse(ntk_train_train: Any, y_train: Any, learning_rate: float = 1.0,
                         diag_reg: Any = 0.0, *, diag_reg_absolute_scale: bool = False,
                         weight_decay: float = 0.0, dtype: torch.dtype = torch.float64) -> MSEPredictor:
    """Outputs of an infinitely wide network trained by gradient flow on the MSE, at any time.

    The loss is ``||f(x_train) - y||^2 / (2 y.numel())`` (Neural Tangents' convention), so in
    function space ``df/dt = -lr * Theta (f - y) / y.numel()`` (Jacot et al. 2018; Lee et al.
    2019, arXiv 1902.06720). ``predict = gradient_descent_mse(ntk, y)``, then:

        fx_train_t = predict(t)                                   # train outputs
        fx_train_t, fx_test_t = predict(t, k_test_train=ntk_test_train)

    ``t`` is in steps (absolute time ``learning_rate * t``): a number, an array of any shape
    (results gain those leading axes), ``inf``, or ``None`` (infinite time, computed by a
    Cholesky solve rather than the eigendecomposition). ``fx_train_0``/``fx_test_0`` are the
    network's outputs at initialization (0 by default: the mean over initializations).

    Args:
        ntk_train_train: ``(N, N)`` NTK on the training inputs (or a Kernel), shared by
            every output column; or a full-output NTK ``(N, N, O, O)`` (a finite network's
            ``empirical.ntk(..., outputs="full")``, whose outputs are coupled): the dynamics
            then run over all (point, output) pairs, ``k_test_train`` must be ``(M, N, O, O)``
            and outputs are ``(..., N, O)`` / ``(..., M, O)``.
        y_train: ``(N,)`` or ``(N, outputs)`` targets (``(N, O)`` with a full-output NTK).
        learning_rate: step size (> 0).
        diag_reg: ridge added to the NTK diagonal, relative to its mean diagonal unless
            ``diag_reg_absolute_scale`` (the dynamics then use ``Theta + ridge``).
        weight_decay: L2 term ``weight_decay/2 * ||params - params_0||^2`` added to the loss.
            Decay toward the initial parameters is the one that closes in function space: it
            adds ``weight_decay`` to every rate, and at ``t = inf`` gives kernel ridge
            regression with ridge ``weight_decay * y.numel()``.
        dtype: precision of the eigendecomposition and solves (float64 by default); results
            come back in the dtype of the kernel.
    """
    owner = "gradient_descent_mse"
    if not isinstance(diag_reg_absolute_scale, bool):
        raise C.ParameterError(f"{owner}: diag_reg_absolute_scale must be a bool (got {diag_reg_absolute_scale!r})")
    return MSEPredictor(ntk_train_train, y_train, learning_rate, diag_reg, diag_reg_absolute_scale,
                        weight_decay, C.solve_dtype(owner, dtype))


class ODEPredictor:
    """The function returned by ``gradient_descent``."""

    def __init__(self, loss, ntk, y_train, learning_rate, momentum, dtype, rtol, atol):
        owner = self._owner = "gradient_descent"
        if not callable(loss):
            raise C.ParameterError(f"{owner}: loss must be a callable loss(fx, y) -> scalar tensor (got {loss!r})")
        self._loss = loss
        train = C.pick(owner, "ntk_train_train", ntk, "ntk")
        self._o = C.train_outputs(owner, "ntk_train_train", train)  # None, or O of a full-output kernel
        self._k = C.train_kernel(owner, "ntk_train_train", train, full=True)
        self._out_dtype, self._device = self._k.dtype, self._k.device
        if self._o is not None:
            self._y = C.targets(owner, y_train, self._k.shape[0], self._device, self._o)[0].reshape(-1, self._o)
        else:
            self._y = C.tensor(owner, "y_train", y_train, device=self._device)
        if self._y.ndim == 0 or self._y.shape[0] * (self._o or 1) != self._k.shape[0]:
            raise C.ShapeError(
                f"{owner}: y_train must have one row per training point: kernel is "
                f"{self._k.shape[0]}x{self._k.shape[0]}, y_train has shape {tuple(self._y.shape)}"
            )
        self._lr = check_float(owner, "learning_rate", learning_rate, minimum=0.0, exclusive_minimum=True)
        self._momentum = None if momentum is None else check_float(owner, "momentum", momentum, minimum=0.0,
                                                                   maximum=1.0)
        self._dtype = dtype
        self._rtol = check_float(owner, "rtol", rtol, minimum=0.0, exclusive_minimum=True)
        self._atol = check_float(owner, "atol", atol, minimum=0.0, exclusive_minimum=True)

    def _grad(self, f: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with torch.enable_grad():
            f = f.detach().requires_grad_(True)
            value = self._loss(f, y)
            if not isinstance(value, torch.Tensor) or value.numel() != 1:
                raise C.ParameterError(
                    f"{self._owner}: loss(fx, y) must return a scalar tensor (got {type(value).__name__}"
                    f"{'' if not isinstance(value, torch.Tensor) else ' of shape ' + str(tuple(value.shape))})"
                )
            (grad,) = torch.autograd.grad(value.reshape(()), f, allow_unused=True)
        return torch.zeros_like(f) if grad is None else grad

    def _time_scale(self) -> tuple[float, float]:
        """The time unit and the friction of the ODE: plain gradient flow, or heavy-ball momentum."""
        if self._momentum is None:
            return self._lr, 0.0
        # Heavy-ball momentum in continuous time (Neural Tangents' convention): time in units
        # of sqrt(learning_rate), friction (momentum - 1) / sqrt(learning_rate).
        scale = self._lr ** 0.5
        return scale, (self._momentum - 1.0) / scale

    def _integrate(self, owner: str, rhs: Callable, tt: torch.Tensor, scale: float,
                   start: torch.Tensor) -> torch.Tensor:
        """The ODE's float64 states from ``start`` at the times ``tt`` (any order, times ``scale``), a row each."""
        from scipy.integrate import solve_ivp

        order = torch.argsort(tt)
        absolute = (tt[order] * scale).numpy()
        state0 = start.cpu().double().numpy()
        if absolute[-1] > 0:
            sol = solve_ivp(rhs, (0.0, float(absolute[-1])), state0, method="DOP853", t_eval=absolute,
                            rtol=self._rtol, atol=self._atol)
            if not sol.success:
                raise C.NumericalError(f"{owner}: the ODE solver failed: {sol.message}")
            values = sol.y.T
        else:
            values = np.repeat(state0[None], len(absolute), 0)
        states = torch.empty((len(tt), values.shape[1]), dtype=torch.float64)
        states[order] = torch.from_numpy(np.ascontiguousarray(values))
        return states

    def __call__(self, t: Any, k_test_train: Any = None, fx_train_0: Any = 0.0, fx_test_0: Any = 0.0):
        owner = self._owner + " predictor"
        dtype = self._dtype
        o = self._o or 1  # rows of the flattened kernels per point
        n = self._k.shape[0] // o
        tt, t_shape = C.times(owner, t, torch.float64, torch.device("cpu"))
        if tt is None or bool(torch.isinf(tt).any()):
            raise C.ParameterError(
                f"{owner}: t must be finite for the ODE solver (got {t!r}); gradient_descent_mse gives "
                f"t = inf in closed form for the MSE loss"
            )
        y = self._y.to(dtype)
        k = self._k.to(dtype)
        f0 = C.initial(owner, "fx_train_0", fx_train_0, tuple(y.shape), y)
        ktd, g0 = None, None
        if k_test_train is not None:
            ktd = C.matrix(owner, "k_test_train", C.pick(owner, "k_test_train", k_test_train, "ntk"),
                           cols=n, device=self._device, outputs=self._o).to(dtype)
            g0 = C.initial(owner, "fx_test_0", fx_test_0, (ktd.shape[0] // o,) + tuple(y.shape[1:]), y)
        parts = [f0] + ([] if ktd is None else [g0])
        shapes = [p.shape for p in parts]
        sizes = [p.numel() for p in parts]
        total = sum(sizes)
        momentum = self._momentum
        scale, friction = self._time_scale()

        def unpack(vector: torch.Tensor):
            out, start = [], 0
            for shape, size in zip(shapes, sizes):
                out.append(vector[start:start + size].reshape(shape))
                start += size
            return out

        def velocity(f_parts):
            grad = self._grad(f_parts[0], y).reshape(k.shape[1], -1)
            out = [-(k @ grad).reshape(shapes[0])]
            if ktd is not None:
                out.append(-(ktd @ grad).reshape(shapes[1]))
            return torch.cat([o.reshape(-1) for o in out])

        def rhs(_time, state):
            state = torch.from_numpy(state).to(dtype=dtype, device=self._device)
            if momentum is None:
                return velocity(unpack(state)).cpu().double().numpy()
            f, q = state[:total], state[total:]
            dq = velocity(unpack(f)) + friction * q
            return torch.cat([q, dq]).cpu().double().numpy()

        start = torch.cat([p.reshape(-1) for p in parts])
        if momentum is not None:
            start = torch.cat([start, torch.zeros_like(start)])
        states = self._integrate(owner, rhs, tt, scale, start)
        states = states[:, :total].to(dtype=self._out_dtype, device=self._device)
        train = states[:, :sizes[0]].reshape(t_shape + tuple(shapes[0]))
        if ktd is None:
            return train
        return train, states[:, sizes[0]:].reshape(t_shape + tuple(shapes[1]))


def gradient_descent(loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], ntk_train_train: Any,
                     y_train: Any, learning_rate: float = 1.0, momentum: Optional[float] = None, *,
                     dtype: torch.dtype = torch.float64, rtol: float = 1e-10,
                     atol: float = 1e-12) -> ODEPredictor:
    """Outputs of an infinitely wide network trained by gradient flow on any loss.

    Integrates the function-space ODE ``df/dt = -lr * Theta grad_f loss(f, y)`` on the training
    outputs and ``dg/dt = -lr * Theta_td grad_f loss(f, y)`` on the test outputs (Lee et al. 2019,
    arXiv 1902.06720) with an adaptive 8th-order Runge-Kutta method (scipy's DOP853). The loss
    is any differentiable torch function ``loss(fx, y) -> scalar``; with
    ``loss = lambda f, y: ((f - y) ** 2).sum() / (2 * y.numel())`` this reproduces
    ``gradient_descent_mse``. For cross-entropy, e.g.
    ``lambda f, y: -(torch.log_softmax(f, -1) * y).mean()`` with one-hot ``y``.

    With ``momentum`` (heavy ball, as ``torch.optim.SGD(momentum=...)``) the second-order ODE
    ``f'' = -Theta grad loss + (momentum - 1)/sqrt(lr) f'`` is solved in time units of
    ``sqrt(lr)``: the continuous limit of heavy-ball steps with ``1 - momentum`` of order
    ``sqrt(lr)`` (Neural Tangents' convention).

    ``predict(t, k_test_train=None, fx_train_0=0.0, fx_test_0=0.0)`` takes finite times
    (number or array, any order) and returns train outputs, or ``(train, test)`` outputs,
    with leading axes of ``t``'s shape. A full-output NTK ``(N, N, O, O)`` (outputs coupled)
    takes targets ``(N, O)`` and test kernels ``(M, N, O, O)``, as in
    ``gradient_descent_mse``.
    """
    owner = "gradient_descent"
    return ODEPredictor(loss, ntk_train_train, y_train, learning_rate, momentum, C.solve_dtype(owner, dtype),
                        rtol, atol)


def max_learning_rate(ntk_train_train: Any, y_train_size: Optional[int] = None, momentum: float = 0.0,
                      eps: float = 1e-12) -> float:
    """Largest learning rate for which full-batch gradient descent (with ``momentum``) on the
    MSE ``||f - y||^2 / (2 y_train_size)`` converges for an infinitely wide network:

        2 (1 + momentum) y_train_size / lambda_max(Theta)

    (the rate at which ``I - lr Theta / y_train_size`` stops being a contraction; Lee et al.
    2019, and Goh 2017 for momentum). ``y_train_size`` defaults to the number of training
    points (one output). A full-output NTK ``(N, N, O, O)`` is taken as its ``(N O, N O)``
    matrix, and ``y_train_size`` defaults to ``N O``.
    """
    owner = "max_learning_rate"
    k = C.train_kernel(owner, "ntk_train_train", C.pick(owner, "ntk_train_train", ntk_train_train, "ntk"), full=True)
    size = k.shape[0] if y_train_size is None else check_int(owner, "y_train_size", y_train_size, minimum=1)
    momentum = check_float(owner, "momentum", momentum, minimum=0.0, maximum=1.0)
    eps = check_float(owner, "eps", eps, minimum=0.0)
    top = float(torch.linalg.eigvalsh(k.double())[-1])
    return 2.0 * (1.0 + momentum) * size / (top + eps)
