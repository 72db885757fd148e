"""Finite networks against their infinite-width limit, as the width grows.

``finite_width_study`` trains finite twins of one widenet architecture at several widths
by full-batch gradient descent on ``||f - y||^2 / (2 N O)`` and measures, per width and seed:

- ``linearization_gap``: RMS difference of the trained network's outputs from its
  linearization around the same initialization trained identically (Lee et al. 2019, arXiv
  1902.06720; the linearized run is exact, from the empirical NTK's eigendecomposition);
- ``infinite_gap``: RMS difference from the infinite-width prediction (the architecture's
  NTK, started from the same initial outputs, after the same discrete steps);
- ``ntk_change``: ``||Theta_T - Theta_0||_F / ||Theta_0||_F`` on the training set;
- ``parameter_change``: ``||theta_T - theta_0|| / ||theta_0||``;
- ``ntk_distance``: ``||Theta_0 - Theta_inf||_F / ||Theta_inf||_F`` at initialization;
- ``nngp_distance``: the same for the NNGP: the readout's conditional output covariance
  ``W_std^2 <z(x), z(x')> / n + b_std^2`` (``z`` the readout layer's input) against the
  architecture's NNGP (Golubeva et al. 2020, arXiv 2010.14495, measured its squared
  pointwise distance).

Each is fitted as ``C width^slope`` (``WidthStudy.slope``): every gap closes with width,
at ``width^-1/2`` for initialization fluctuations and parameter changes, and about
``width^-1`` for the NTK's change during training in the paper's experiments.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch
from torch import nn

from .._validate import as_inputs, as_tensor, check_float, check_int
from ..empirical import ntk as empirical_ntk
from ..errors import NumericalError, ParameterError, ShapeError
from ._progress import progress_bar
from ._spectra import fit_power_law
from ._plot import legend, new_axes

__all__ = ["WidthStudy", "finite_width_study"]

METRICS = ("linearization_gap", "infinite_gap", "ntk_change", "parameter_change", "ntk_distance", "nngp_distance")
D = torch.float64


@dataclass(frozen=True)
class WidthStudy:
    """``values[name]`` is ``(len(widths), seeds)`` for each name in ``METRICS``;
    ``learning_rate`` and ``steps`` are those of the training runs."""

    widths: torch.Tensor
    values: dict
    learning_rate: float
    steps: int

    def mean(self, name: str) -> torch.Tensor:
        return self._get(name).mean(1)

    def sem(self, name: str) -> torch.Tensor:
        v = self._get(name)
        return v.std(1) / math.sqrt(v.shape[1]) if v.shape[1] > 1 else torch.full((v.shape[0],), math.nan, dtype=D)

    def slope(self, name: str) -> tuple[float, float]:
        """``(slope, stderr)`` of the least-squares fit ``log mean = log C + slope log width``
        (negative: the gap closes with width)."""
        fit = fit_power_law(self.mean(name), index=self.widths)
        return -fit.exponent, fit.stderr

    @property
    def measured(self) -> tuple:
        """The metrics this study could measure (``nngp_distance`` needs a Dense readout)."""
        return tuple(n for n in METRICS if bool(torch.isfinite(self.values[n]).all()))

    def table(self) -> str:
        """Each metric's mean per width and its fitted slope, as text."""
        head = f"{'metric':<18}" + "".join(f"{int(w):>11d}" for w in self.widths) + "   slope +- stderr"
        rows = [head]
        for name in self.measured:
            s, e = self.slope(name)
            rows.append(f"{name:<18}" + "".join(f"{float(v):>11.3g}" for v in self.mean(name)) + f"   {s:+.3f} +- {e:.3f}")
        return "\n".join(rows)

    def plot(self, ax: Optional[Any] = None, names: Optional[Sequence[str]] = None):
        """Every metric (mean and standard error over seeds) against width on log-log axes,
        with its fitted power law. Returns the figure."""
        if ax is None:
            ax = new_axes(figsize=(6, 4.2))
        w = self.widths.cpu().numpy()
        for name in self.measured if names is None else names:
            m, e = self.mean(name).numpy(), self.sem(name).numpy()
            s, err = self.slope(name)
            line = ax.errorbar(w, m, yerr=np.nan_to_num(e), fmt="o", ms=4, capsize=2,
                               label=f"{name.replace('_', ' ')}: slope {s:+.2f}$\\pm${err:.2f}")
            c = math.exp(np.mean(np.log(m) - s * np.log(w)))
            ax.plot(w, c * w ** s, "-", color=line[0].get_color(), lw=0.8)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("width")
        ax.set_ylabel("relative change / distance, RMS gap")
        legend(ax, fontsize=7)
        return ax.figure

    def _get(self, name: str) -> torch.Tensor:
        if name not in self.values:
            raise ParameterError(f"WidthStudy: name must be one of {METRICS} (got {name!r})")
        return self.values[name]


def _flat(t: torch.Tensor) -> torch.Tensor:
    """A full-output kernel ``(N1, N2, O, O)`` as its ``(N1 O, N2 O)`` matrix."""
    n1, n2, o, _ = t.shape
    return t.permute(0, 2, 1, 3).reshape(n1 * o, n2 * o)


def _gd_linear(theta: torch.Tensor, theta_star: Optional[torch.Tensor], r0: torch.Tensor, rate: float,
               steps: int) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Exact discrete gradient descent of a linear model with NTK ``theta`` (``rate`` already
    divided by N O): the training residual ``(I - rate theta)^T r0`` and the change of the test
    outputs ``-theta_* (rate sum_t (I - rate theta)^t) r0``."""
    s, u = torch.linalg.eigh(0.5 * (theta + theta.T))
    c = u.T @ r0
    decay = (1.0 - rate * s) ** steps
    resid = u @ (decay * c)
    if theta_star is None:
        return resid, None
    a = rate * s
    summed = torch.where(a.abs() > 1e-12, (1.0 - decay) / torch.where(s == 0, torch.ones_like(s), s),
                         rate * steps * torch.ones_like(s))
    return resid, -theta_star @ (u @ (summed * c))


def _readout(model: nn.Module):
    """The last affine module with a ``W_std`` (widenet's Dense/Conv twins)."""
    last = None
    for m in model.modules():
        if hasattr(m, "W_std") and getattr(m, "weight", None) is not None:
            last = m
    return last


def _readout_nngp(model: nn.Module, x: torch.Tensor) -> Optional[torch.Tensor]:
    last = _readout(model)
    if last is None or not isinstance(last.weight, torch.Tensor) or last.weight.ndim != 2:
        return None
    seen = []
    handle = last.register_forward_hook(lambda m, inp, out: seen.append(inp[0].detach()))
    try:
        with torch.no_grad():
            model(x)
    finally:
        handle.remove()
    z = seen[0].reshape(x.shape[0], -1)
    b = 0.0 if last.b_std is None else last.b_std ** 2
    return last.W_std ** 2 * (z @ z.T) / z.shape[1] + b


def study_inputs(owner: str, architecture: Any, x_train: Any, y_train: Any, x_test: Any):
    """Checks a width study's inputs: ``architecture`` callable, ``y_train`` as ``(N, O)`` in
    ``x_train``'s dtype, ``x_test`` (default ``x_train``) of the same input shape."""
    if not callable(architecture):
        raise ParameterError(f"{owner}: architecture must be a callable width -> widenet layer "
                             f"(got {type(architecture).__name__})")
    x_train = as_inputs(owner, "x_train", x_train)
    y = as_tensor(owner, "y_train", y_train).to(x_train.dtype)
    if y.ndim == 1:
        y = y[:, None]
    if y.ndim != 2 or y.shape[0] != x_train.shape[0]:
        raise ShapeError(f"{owner}: y_train must be (N, O) with N = {x_train.shape[0]} (got {tuple(y.shape)})")
    x_test = x_train if x_test is None else as_inputs(owner, "x_test", x_test, like=x_train)
    if tuple(x_test.shape[1:]) != tuple(x_train.shape[1:]):
        raise ShapeError(f"{owner}: x_test and x_train must have one input shape "
                         f"(got {tuple(x_test.shape)} and {tuple(x_train.shape)})")
    return x_train, y, x_test


def finite_width_study(architecture: Callable[[int], Any], x_train: Any, y_train: Any, x_test: Any = None, *,
                       widths: Sequence[int] = (64, 128, 256, 512, 1024), steps: int = 200,
                       learning_rate: Optional[float] = None, seeds: int = 3, progress: bool = False) -> WidthStudy:
    """Trains finite twins ``architecture(width).module(seed=s)`` for every width and seed
    and measures how far each is from its linearization and from the infinite-width limit
    (module docstring).

    Args:
        architecture: ``width -> widenet layer``; the NTK and NNGP of the limit must not
            depend on ``width`` (as for every widenet architecture in the "ntk"
            parameterization, where widths only appear in the finite twin).
        x_train, y_train: the training set (``y_train`` ``(N, O)``, or ``(N,)`` for one output).
        x_test: where output gaps are measured (default: ``x_train``).
        widths: at least three.
        steps: full-batch gradient-descent steps.
        learning_rate: default ``1 / lambda_max(Theta_inf / N O)``, half the critical rate.
        seeds: networks per width.
        progress: show a progress bar.
    """
    owner = "theory.finite_width_study"
    x_train, y, x_eval = study_inputs(owner, architecture, x_train, y_train, x_test)
    widths = [check_int(owner, "widths", w, minimum=1) for w in widths]
    if len(set(widths)) < 3:
        raise ParameterError(f"{owner}: widths must hold at least three distinct widths for a fit (got {widths})")
    widths = sorted(set(widths))
    steps = check_int(owner, "steps", steps, minimum=1)
    seeds = check_int(owner, "seeds", seeds, minimum=1)
    n, o = y.shape
    size = n * o
    net = architecture(widths[0])
    if not hasattr(net, "kernel") or not hasattr(net, "module"):
        raise ParameterError(f"{owner}: architecture(width) must return a widenet layer (got {type(net).__name__})")
    k_inf = net.kernel(x_train)
    eye = torch.eye(o, dtype=D)
    theta_inf = torch.kron(k_inf.ntk.to(D), eye)
    nngp_inf = k_inf.nngp.to(D)
    theta_inf_star = torch.kron(net.ntk(x_eval, x_train).to(D), eye)
    top = float(torch.linalg.eigvalsh(theta_inf)[-1]) / size
    lr = 1.0 / top if learning_rate is None else check_float(owner, "learning_rate", learning_rate, minimum=0.0,
                                                              exclusive_minimum=True)
    if lr * top >= 2.0:
        raise ParameterError(f"{owner}: learning_rate must be below the critical 2 / lambda_max = {2 / top:.4g} of "
                             f"the infinite-width NTK, where the linearized dynamics converge (got {lr})")
    rate = lr / size
    values = {name: torch.full((len(widths), seeds), math.nan, dtype=D) for name in METRICS}
    yf = y.to(D).reshape(-1)
    with progress_bar(len(widths) * seeds, "training finite twins", enabled=progress) as bar:
        for i, width in enumerate(widths):
            for s in range(seeds):
                model = architecture(width).module(tuple(x_train.shape[1:]), seed=s, dtype=x_train.dtype,
                                                   device=x_train.device)
                m = _measure(model, width, x_train, y, x_eval, lr, steps, rate, yf, theta_inf, theta_inf_star, nngp_inf)
                for name, v in m.items():
                    values[name][i, s] = v
                bar.advance(1)
    return WidthStudy(torch.as_tensor(widths), values, lr, steps)


def _rms(a: torch.Tensor) -> float:
    return float(a.pow(2).mean().sqrt())


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.linalg.norm(a - b) / torch.linalg.norm(b))


def _measure(model, width, x, y, x_eval, lr, steps, rate, yf, theta_inf, theta_inf_star, nngp_inf) -> dict:
    same = x_eval is x
    with torch.no_grad():
        f0 = model(x).reshape(x.shape[0], -1).to(D)
        g0 = f0 if same else model(x_eval).reshape(x_eval.shape[0], -1).to(D)
    theta0 = _flat(empirical_ntk(model, x, outputs="full").to(D))
    theta0_star = theta0 if same else _flat(empirical_ntk(model, x_eval, x, outputs="full").to(D))
    readout = _readout_nngp(model, x)
    p0 = torch.cat([p.detach().reshape(-1) for p in model.parameters()]).to(D)
    r0 = f0.reshape(-1) - yf
    resid_lin, delta_lin = _gd_linear(theta0, theta0_star, r0, rate, steps)
    resid_inf, delta_inf = _gd_linear(theta_inf, theta_inf_star, r0, rate, steps)
    params = [p for p in model.parameters() if p.requires_grad]
    yt = y.reshape(x.shape[0], -1)
    for _ in range(steps):
        for p in params:
            p.grad = None
        out = model(x).reshape(x.shape[0], -1)
        loss = ((out - yt) ** 2).sum() / (2 * yt.numel())
        loss.backward()
        with torch.no_grad():
            for p in params:
                p.sub_(lr * p.grad)
    with torch.no_grad():
        g_t = model(x_eval).reshape(-1).to(D)
    if not bool(torch.isfinite(g_t).all()):
        raise NumericalError(f"theory.finite_width_study: gradient descent diverged at width {width} (learning_rate "
                             f"{lr:.4g} is above this network's critical rate); lower learning_rate")
    theta_t = _flat(empirical_ntk(model, x, outputs="full").to(D))
    p_t = torch.cat([p.detach().reshape(-1) for p in model.parameters()]).to(D)
    if same:
        lin, inf = yf + resid_lin, yf + resid_inf
    else:
        lin, inf = g0.reshape(-1) + delta_lin, g0.reshape(-1) + delta_inf
    return {
        "linearization_gap": _rms(g_t - lin),
        "infinite_gap": _rms(g_t - inf),
        "ntk_change": _rel(theta_t, theta0),
        "parameter_change": float(torch.linalg.norm(p_t - p0) / torch.linalg.norm(p0)),
        "ntk_distance": _rel(theta0, theta_inf),
        "nngp_distance": math.nan if readout is None else _rel(readout.to(D), nngp_inf),
    }
