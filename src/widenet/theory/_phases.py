"""Learning-rate phases of gradient descent (Lewkowycz et al. 2020, arXiv 2003.02218).

Full-batch gradient descent on the loss ``||f - y||^2 / (2 N O)`` at rate ``eta``, with
``lambda_0`` the top eigenvalue of the NTK divided by ``N O`` at initialization
(``ntk_eigenpairs``):

- lazy (``eta < 2 / lambda_0``): the loss falls monotonically and the kernel barely moves, as
  in the infinite-width limit;
- catapult (``2 / lambda_0 < eta < eta_max``): the loss first grows exponentially along the
  top eigendirection, the growth drives the curvature down, and once ``lambda_t < 2 / eta``
  the run converges in a flatter region;
- divergent (``eta > eta_max``): the loss blows up.

For the two-layer linear network ``f = v^T u x / sqrt(n)`` the maximal rate is exactly
``4 / lambda_0``; ReLU networks tolerate larger rates, ``eta_max lambda_0 ~ 12`` in the paper's
wide networks. ``catapult_probe`` classifies one rate by training a copy of the model;
``learning_rate_sweep`` measures ``eta_max lambda_0``.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np
import torch
from torch import nn

from .._validate import as_tensor, check_float, check_int
from ..empirical import ParameterSelector, select_parameters
from ..errors import ParameterError, ShapeError
from ._eigen import _check_input, ntk_eigenpairs
from ._progress import progress_bar
from ._plot import legend, new_axes

__all__ = ["LearningRateThresholds", "learning_rate_thresholds", "CatapultRun", "catapult_probe",
           "LearningRateSweep", "learning_rate_sweep"]

PHASES = ("lazy", "catapult", "divergent")
_COLORS = {"lazy": "tab:blue", "catapult": "tab:orange", "divergent": "tab:red"}


@dataclass(frozen=True)
class LearningRateThresholds:
    """``lambda_0`` and the rates it predicts: ``critical = 2 / lambda_0`` (the end of the lazy
    phase, for every model) and ``maximal = 4 / lambda_0`` (the end of the catapult phase,
    exact for the two-layer linear network; measure other models' with
    ``learning_rate_sweep``)."""

    lambda0: float

    @property
    def critical(self) -> float:
        return 2.0 / self.lambda0

    @property
    def maximal(self) -> float:
        return 4.0 / self.lambda0


def learning_rate_thresholds(model: nn.Module, x: Any, *, params: ParameterSelector = None,
                             method: str = "auto") -> LearningRateThresholds:
    """``lambda_0`` of ``model`` on the batch ``x`` (matrix-free, ``ntk_eigenpairs``) and
    the learning rates it predicts."""
    return LearningRateThresholds(ntk_eigenpairs(model, x, 1, params=params, method=method).top)


@dataclass(frozen=True)
class CatapultRun:
    """One short gradient-descent run: ``loss[t]`` before step ``t`` (``t = 0..steps``, cut
    short at the first non-finite loss), the curvature ``lambda_t`` (top NTK eigenvalue / N O)
    at ``curvature_steps``, and the phase it was classified in."""

    learning_rate: float
    lambda0: float
    loss: torch.Tensor
    curvature_steps: torch.Tensor
    curvature: torch.Tensor
    phase: str
    rise: float

    @property
    def ratio(self) -> float:
        """``eta lambda_0``: 2 and 4 are the linear model's phase boundaries."""
        return self.learning_rate * self.lambda0

    @property
    def peak_loss(self) -> float:
        return float(self.loss.max())

    @property
    def final_loss(self) -> float:
        return float(self.loss[-1])

    @property
    def final_curvature(self) -> float:
        """``lambda_T`` after the last step (NaN when the run blew up before it)."""
        if not len(self.curvature) or int(self.curvature_steps[-1]) != len(self.loss) - 1 \
                or not math.isfinite(self.final_loss):
            return math.nan
        return float(self.curvature[-1])

    def plot(self, axes: Optional[Sequence[Any]] = None, label: Optional[str] = None):
        """Loss (log scale) and ``eta lambda_t`` against the step, on two axes; the second
        marks ``eta lambda = 2``, below which the run can converge. Returns the figure."""
        if axes is None:
            axes = new_axes(2, figsize=(9, 3.5))
        label = label or f"$\\eta\\lambda_0$ = {self.ratio:.3g} ({self.phase})"
        loss = self.loss.cpu().numpy()
        axes[0].semilogy(np.arange(len(loss)), loss, label=label)
        axes[0].set_xlabel("step")
        axes[0].set_ylabel("training loss")
        axes[1].plot(self.curvature_steps.cpu().numpy(), self.learning_rate * self.curvature.cpu().numpy(), ".-",
                     label=label)
        axes[1].axhline(2.0, color="k", lw=0.8, ls="--")
        axes[1].set_xlabel("step")
        axes[1].set_ylabel(r"$\eta\,\lambda_t$")
        legend(axes[0], fontsize=7)
        return axes[0].figure


def _mse(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return ((out - y) ** 2).sum() / (2 * y.numel())


def _check_targets(owner: str, model: nn.Module, x: torch.Tensor, y: Any) -> torch.Tensor:
    y = as_tensor(owner, "y", y)
    with torch.no_grad():
        out = model(x[:1])
    if not isinstance(out, torch.Tensor) or out.shape[0] != 1:
        raise ShapeError(f"{owner}: the model must map a batch to a tensor batch (got {type(out).__name__})")
    want = (x.shape[0],) + tuple(out.shape[1:])
    if y.numel() != math.prod(want):
        raise ShapeError(f"{owner}: y must hold the model's outputs' shape {want} (got {tuple(y.shape)})")
    return y.reshape(want).to(out.dtype)


def _classify(loss: np.ndarray, spike: float) -> tuple[str, float]:
    """"divergent" if the loss became non-finite or has not come back below its initial
    value; "catapult" if it rose by a factor ``spike`` above its running minimum (values below
    1e-8 of the initial loss count as that floor, so round-off near convergence is no spike);
    "lazy" otherwise."""
    start = loss[0]
    floor = np.maximum(np.minimum.accumulate(loss), 1e-8 * start)
    rise = float(np.max(loss / floor)) if np.all(np.isfinite(loss)) else math.inf
    if not np.all(np.isfinite(loss)) or loss[-1] >= start:
        return "divergent", rise
    return ("catapult" if rise >= spike else "lazy"), rise


def catapult_probe(model: nn.Module, x: Any, y: Any, learning_rate: float, *, steps: int = 300,
                   curvature_every: Optional[int] = None, spike: float = 2.0, params: ParameterSelector = None,
                   lambda0: Optional[float] = None) -> CatapultRun:
    """Trains a copy of ``model`` by full-batch gradient descent on ``||f(x) - y||^2 / (2 N O)``
    at ``learning_rate`` for ``steps`` steps, tracking the loss and the curvature
    ``lambda_t`` (top eigenvalue of the NTK / N O on ``x``), and classifies the rate:

    - "divergent": the loss became non-finite, or after ``steps`` it is not below its initial
      value (give a catapult enough steps to come back down);
    - "catapult": the loss rose to ``spike`` times its running minimum, then ended below its
      initial value;
    - "lazy": neither.

    The model is left untouched; the copy is trained in eval mode (deterministic). Only the
    parameters selected by ``params`` move. ``curvature_every`` (default ``steps // 20``) sets
    how often ``lambda_t`` is measured (Lanczos, ``ntk_eigenpairs``); ``lambda0`` skips its
    measurement at step 0 when already known.
    """
    owner = "theory.catapult_probe"
    if not isinstance(model, nn.Module):
        raise ParameterError(f"{owner}: model must be a torch.nn.Module (got {type(model).__name__})")
    x = _check_input(owner, model, x)
    y = _check_targets(owner, model, x, y)
    lr = check_float(owner, "learning_rate", learning_rate, minimum=0.0, exclusive_minimum=True)
    steps = check_int(owner, "steps", steps, minimum=1)
    every = max(1, steps // 20) if curvature_every is None else check_int(owner, "curvature_every",
                                                                         curvature_every, minimum=1)
    spike = check_float(owner, "spike", spike, minimum=1.0, exclusive_minimum=True)
    net = copy.deepcopy(model).eval()
    names = set(select_parameters(model, params, owner=owner))
    chosen = [p for n, p in net.named_parameters() if n in names]

    def curvature() -> float:
        return ntk_eigenpairs(net, x, 1, params=params).top

    lam0 = curvature() if lambda0 is None else check_float(owner, "lambda0", lambda0, minimum=0.0,
                                                            exclusive_minimum=True)
    losses, lam_steps, lams = [], [0], [lam0]
    for t in range(steps + 1):
        for p in chosen:
            p.grad = None
        value = _mse(net(x), y)
        losses.append(float(value.detach()))
        if not math.isfinite(losses[-1]):
            break  # blown up: nothing left to measure
        if t and (t % every == 0 or t == steps):
            lam_steps.append(t)
            lams.append(curvature())
        if t == steps:
            break
        value.backward()
        with torch.no_grad():
            for p in chosen:
                p.sub_(lr * p.grad)
    loss = np.asarray(losses)
    phase, rise = _classify(loss, spike)
    return CatapultRun(lr, lam0, torch.as_tensor(loss), torch.as_tensor(lam_steps), torch.as_tensor(lams, dtype=torch.float64),
                       phase, rise)


@dataclass(frozen=True)
class LearningRateSweep:
    """Short runs at ``learning_rate = ratio / lambda_0`` for each ratio (ascending), their
    phases, final and peak losses and final curvatures; ``max_ratio`` is ``eta_max lambda_0``,
    the largest ratio below the first divergent one (refined by bisection; the largest ratio
    tried when none diverged, and then ``divergent_ratio`` is infinite), and
    ``critical_ratio`` the smallest ratio that catapulted (NaN if none did)."""

    lambda0: float
    ratios: torch.Tensor
    phases: tuple
    final_loss: torch.Tensor
    peak_loss: torch.Tensor
    final_curvature: torch.Tensor
    max_ratio: float
    divergent_ratio: float
    critical_ratio: float

    @property
    def max_learning_rate(self) -> float:
        return self.max_ratio / self.lambda0

    def plot(self, axes: Optional[Sequence[Any]] = None, label: Optional[str] = None):
        """Final loss and final curvature ``lambda_T / lambda_0`` against ``eta lambda_0``,
        points coloured by phase, with the linear model's boundaries 2 and 4 and the measured
        maximum. Returns the figure."""
        if axes is None:
            axes = new_axes(2, figsize=(9, 3.5))
        r = self.ratios.cpu().numpy()
        loss = self.final_loss.cpu().numpy()
        curv = self.final_curvature.cpu().numpy() / self.lambda0
        colors = [_COLORS[p] for p in self.phases]
        finite = np.isfinite(loss)
        axes[0].scatter(r[finite], np.maximum(loss[finite], 1e-30), c=[c for c, f in zip(colors, finite) if f], s=14)
        axes[0].set_yscale("log")
        axes[0].set_ylabel("final training loss")
        ok = np.isfinite(curv)
        axes[1].scatter(r[ok], curv[ok], c=[c for c, f in zip(colors, ok) if f], s=14)
        axes[1].plot(r[r > 0], 2.0 / r[r > 0], "k:", lw=0.8, label=r"$2/(\eta\lambda_0)$")
        axes[1].set_ylabel(r"final curvature $\lambda_T/\lambda_0$")
        axes[1].set_ylim(0, max(1.5, float(np.nanmax(curv[ok])) * 1.1) if ok.any() else 2)
        for ax in axes:
            ax.set_xlabel(r"$\eta\,\lambda_0$")
            for v in (2.0, 4.0):
                ax.axvline(v, color="k", lw=0.6, ls="--")
            ax.axvline(self.max_ratio, color="tab:red", lw=1.0,
                       label=f"{label + ': ' if label else ''}measured max {self.max_ratio:.3g}")
        for phase, color in _COLORS.items():
            axes[0].scatter([], [], c=color, s=14, label=phase)
        legend(axes[0], fontsize=7)
        legend(axes[1], fontsize=7)
        return axes[0].figure


def learning_rate_sweep(model: nn.Module, x: Any, y: Any, ratios: Optional[Sequence[float]] = None, *,
                        steps: int = 300, refine: int = 5, spike: float = 2.0, params: ParameterSelector = None,
                        progress: bool = False) -> LearningRateSweep:
    """Measures the phases of gradient descent across learning rates ``ratio / lambda_0``.

    Every rate trains a fresh copy of ``model`` (same initialization) with
    ``catapult_probe`` (curvature measured at the start and the end only). Between the
    largest ratio below the first divergent one and that divergent ratio, ``refine`` bisection
    steps locate ``eta_max lambda_0``.

    Args:
        ratios: rates in units of ``1 / lambda_0`` (default 0.5, 1, ..., 20).
        steps, spike, params: as in ``catapult_probe``.
        refine: bisection steps on the divergence boundary.
        progress: show a progress bar.
    """
    owner = "theory.learning_rate_sweep"
    if not isinstance(model, nn.Module):
        raise ParameterError(f"{owner}: model must be a torch.nn.Module (got {type(model).__name__})")
    x = _check_input(owner, model, x)
    y = _check_targets(owner, model, x, y)
    grid = np.arange(1, 41) * 0.5 if ratios is None else np.asarray(
        as_tensor(owner, "ratios", ratios).to(torch.float64).cpu()).ravel()
    if grid.size < 1 or np.any(grid <= 0):
        raise ParameterError(f"{owner}: ratios must be positive numbers (got {grid.tolist()})")
    refine = check_int(owner, "refine", refine, minimum=0)
    lam0 = ntk_eigenpairs(model, x, 1, params=params).top
    runs = {}

    def run(r: float) -> CatapultRun:
        if r not in runs:
            runs[r] = catapult_probe(model, x, y, r / lam0, steps=steps, curvature_every=steps, spike=spike,
                                     params=params, lambda0=lam0)
        return runs[r]

    with progress_bar(len(grid) + refine, "learning-rate sweep", enabled=progress) as bar:
        for r in sorted(set(float(v) for v in grid)):
            run(r)
            bar.advance(1)
            if run(r).phase == "divergent":
                break
        ordered = sorted(runs)
        first_bad = next((r for r in ordered if runs[r].phase == "divergent"), math.inf)
        good = [r for r in ordered if r < first_bad]
        lo, hi = (good[-1] if good else 0.0), first_bad
        if math.isfinite(hi) and good:
            for _ in range(refine):
                mid = 0.5 * (lo + hi)
                if run(mid).phase == "divergent":
                    hi = mid
                else:
                    lo = mid
                bar.advance(1)
    ordered = sorted(runs)
    catapults = [r for r in ordered if runs[r].phase == "catapult"]
    return LearningRateSweep(
        lam0, torch.as_tensor(ordered, dtype=torch.float64), tuple(runs[r].phase for r in ordered),
        torch.as_tensor([runs[r].final_loss for r in ordered], dtype=torch.float64),
        torch.as_tensor([runs[r].peak_loss for r in ordered], dtype=torch.float64),
        torch.as_tensor([runs[r].final_curvature for r in ordered], dtype=torch.float64),
        lo, hi, catapults[0] if catapults else math.nan)
