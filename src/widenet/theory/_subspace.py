"""Gradient descent in the top Hessian subspace (Gur-Ari, Roberts & Dyer 2018, arXiv 1812.04754).

After a short initial phase, the training gradient of a classifier lies mostly in the span of
the Hessian's top ``k`` eigenvectors, with ``k`` the number of classes, and that span changes
slowly. ``hessian_subspace`` trains a copy of a model and measures both: the fraction
``||P_k g||^2 / ||g||^2`` of the full-batch gradient ``g`` inside the top-``k`` subspace
(``k / P`` for a random direction in ``P`` parameters), and the overlap
``||V_s V_t^T||_F^2 / k`` of the subspaces at two times (``subspace_overlap``).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np
import torch
from torch import nn

from .._validate import as_tensor, check_float, check_int
from ..empirical import ParameterSelector, select_parameters
from ..errors import NumericalError, ParameterError
from ._eigen import HessianOperator, _check_input, _eigenpairs
from ._progress import progress_bar
from ._plot import legend, new_axes

__all__ = ["HessianSubspace", "hessian_subspace"]


@dataclass(frozen=True)
class HessianSubspace:
    """Measurements at ``steps``: the full-batch ``loss``, the top-``k`` Hessian
    ``eigenvalues`` ``(T, k)``, the ``gradient_fraction`` in their span, the ``overlap``
    ``(T, T)`` between the spans, and ``parameters`` (the number ``P`` of trained parameters,
    so that ``k / P`` is a random direction's fraction)."""

    steps: torch.Tensor
    loss: torch.Tensor
    eigenvalues: torch.Tensor
    gradient_fraction: torch.Tensor
    overlap: torch.Tensor
    k: int
    parameters: int

    @property
    def random_fraction(self) -> float:
        return self.k / self.parameters

    def plot(self, axes: Optional[Sequence[Any]] = None, reference: Optional[int] = None):
        """Three panels against the step: the gradient fraction in the top subspace (with a
        random direction's ``k / P``), the top eigenvalues, and the overlap of each time's
        subspace with the one at ``reference`` (index into ``steps``; default the middle one).
        Returns the figure."""
        if axes is None:
            axes = new_axes(3, figsize=(13, 3.5))
        s = self.steps.cpu().numpy()
        axes[0].plot(s, self.gradient_fraction.cpu().numpy(), ".-", label="top-k Hessian subspace")
        axes[0].axhline(self.random_fraction, color="k", ls=":", lw=0.8, label="random subspace, k/P")
        axes[0].set_ylim(0, 1.02)
        axes[0].set_ylabel(r"$\|P_k g\|^2 / \|g\|^2$")
        legend(axes[0], fontsize=7)
        axes[1].plot(s, self.eigenvalues.cpu().numpy(), lw=0.8)
        axes[1].set_yscale("log")
        axes[1].set_ylabel(f"top {self.k} Hessian eigenvalues")
        ref = len(s) // 2 if reference is None else reference
        axes[2].plot(s, self.overlap[ref].cpu().numpy(), ".-")
        axes[2].axvline(s[ref], color="k", lw=0.6, ls="--")
        axes[2].set_ylim(0, 1.02)
        axes[2].set_ylabel(f"overlap with the subspace at step {int(s[ref])}")
        for ax in axes:
            ax.set_xlabel("step")
        return axes[0].figure


def _check_problem(owner: str, model: Any, loss: Any, x: Any, y: Any):
    """The checked model, loss, inputs ``x`` and targets ``y`` (one row per input) of a training run."""
    if not isinstance(model, nn.Module):
        raise ParameterError(f"{owner}: model must be a torch.nn.Module (got {type(model).__name__})")
    if not callable(loss):
        raise ParameterError(f"{owner}: loss must be a callable (outputs, y) -> scalar (got {type(loss).__name__})")
    x = _check_input(owner, model, x)
    if isinstance(y, torch.Tensor) and y.is_floating_point():
        y = as_tensor(owner, "y", y)
    if not isinstance(y, torch.Tensor) or y.shape[0] != x.shape[0]:
        raise ParameterError(f"{owner}: y must be a tensor with one row per input ({x.shape[0]}) "
                             f"(got {tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__})")
    return x, y


def _record_steps(owner: str, record: Union[int, Sequence[int], None], steps: int) -> list:
    """The sorted steps to measure at: every ``record`` (default ``steps // 20``) and the last, or those listed."""
    if record is None:
        record = max(1, steps // 20)
    if isinstance(record, (int, np.integer)):
        every = check_int(owner, "record", record, minimum=1)
        marks = sorted(set(range(0, steps + 1, every)) | {steps})
    else:
        marks = sorted(set(int(check_int(owner, "record", r, minimum=0)) for r in record))
        if not marks or marks[-1] > steps:
            raise ParameterError(f"{owner}: record steps must lie in 0..steps={steps} (got {list(record)})")
    return marks


def _subspace_dimension(owner: str, net: nn.Module, x: torch.Tensor, k: Optional[int], size: int) -> int:
    """The checked subspace dimension ``k`` (default: the network's number of outputs), below ``size - 1``."""
    if k is None:
        with torch.no_grad():
            k = int(net(x[:1]).reshape(1, -1).shape[1])
    k = check_int(owner, "k", k, minimum=1)
    if k >= size - 1:
        raise ParameterError(f"{owner}: k must be < P - 1 = {size - 1} trained parameters (got {k})")
    return k


def _train_step(owner: str, net: nn.Module, loss: Callable, opt: Any, batch: tuple, t: int, lr: float) -> None:
    """One optimizer step on ``loss(net(xb), yb)`` for ``batch = (xb, yb)``, refusing a non-finite loss."""
    xb, yb = batch
    opt.zero_grad(set_to_none=True)
    value = loss(net(xb), yb)
    if not torch.isfinite(value.detach()):
        raise NumericalError(f"{owner}: the loss became non-finite at step {t} (learning_rate={lr}); "
                             f"lower the learning rate")
    value.backward()
    opt.step()


def hessian_subspace(model: nn.Module, loss: Callable, x: Any, y: Any, *, k: Optional[int] = None,
                     steps: int = 1000, learning_rate: float = 0.1, batch_size: Optional[int] = None,
                     record: Union[int, Sequence[int], None] = None, optimizer: Optional[Callable] = None,
                     params: ParameterSelector = None, seed: int = 0, tol: float = 1e-8,
                     progress: bool = False) -> HessianSubspace:
    """Trains a copy of ``model`` on ``loss(model(x), y)`` and measures, at the recorded
    steps, the top-``k`` Hessian eigenpairs of the full-batch loss (Lanczos over
    Hessian-vector products), the fraction of the full-batch gradient inside their span and
    the overlaps between the spans at different times.

    Args:
        model: any ``torch.nn.Module``; it is copied, and the copy is trained in eval mode.
        loss: ``(outputs, y) -> scalar`` averaged over the batch, e.g.
            ``torch.nn.functional.cross_entropy``.
        x, y: the training set (the Hessian and gradient are always those of all of it).
        k: subspace dimension (default: the model's number of outputs, the number of classes).
        steps: optimizer steps.
        learning_rate: of plain SGD (ignored with ``optimizer``).
        batch_size: mini-batch size (default: full batch), drawn without replacement each
            epoch from ``seed``.
        record: measure every ``record`` steps (default ``steps // 20``), or at the listed
            steps. Step 0 is the initialization.
        optimizer: ``params -> torch.optim.Optimizer`` (default SGD at ``learning_rate``).
        params: which parameters train and span the Hessian (as in
            ``widenet.empirical.ntk``).
        tol: Lanczos relative tolerance.
        progress: show a progress bar.
    """
    owner = "theory.hessian_subspace"
    x, y = _check_problem(owner, model, loss, x, y)
    steps = check_int(owner, "steps", steps, minimum=1)
    lr = check_float(owner, "learning_rate", learning_rate, minimum=0.0, exclusive_minimum=True)
    seed = check_int(owner, "seed", seed, minimum=0)
    tol = check_float(owner, "tol", tol, minimum=0.0)
    n = x.shape[0]
    batch = n if batch_size is None else check_int(owner, "batch_size", batch_size, minimum=1)
    if batch > n:
        raise ParameterError(f"{owner}: batch_size must be <= the number of inputs {n} (got {batch})")
    marks = _record_steps(owner, record, steps)
    net = copy.deepcopy(model).eval()
    names = set(select_parameters(model, params, owner=owner))
    trained = [p for name, p in net.named_parameters() if name in names]
    size = sum(p.numel() for p in trained)
    k = _subspace_dimension(owner, net, x, k, size)
    opt = torch.optim.SGD(trained, lr=lr) if optimizer is None else optimizer(trained)
    gen = torch.Generator().manual_seed(seed)
    order, cursor = torch.randperm(n, generator=gen), 0

    out_steps, losses, values, fractions, spans = [], [], [], [], []

    def measure(t: int) -> None:
        op = HessianOperator(owner, net, loss, x, y, params)
        pairs = _eigenpairs(owner, op, op.size, k, "largest", "auto", tol, seed, None, x)
        g = op.gradient().to(torch.float64)
        v = pairs.vectors
        gn = float(g @ g)
        fractions.append(float(((v @ g) ** 2).sum()) / gn if gn > 0 else math.nan)
        with torch.no_grad():
            losses.append(float(loss(net(x), y)))
        out_steps.append(t)
        values.append(pairs.values)
        spans.append(v)

    with progress_bar(steps, "training with Hessian measurements", enabled=progress) as bar:
        for t in range(steps + 1):
            if t in marks:
                measure(t)
            if t == steps:
                break
            if batch == n:
                idx = None
            else:
                if cursor + batch > n:
                    order, cursor = torch.randperm(n, generator=gen), 0
                idx = order[cursor:cursor + batch]
                cursor += batch
            _train_step(owner, net, loss, opt, (x, y) if idx is None else (x[idx], y[idx]), t, lr)
            bar.advance(1)
    stack = torch.stack(spans)  # (T, k, P)
    overlap = torch.einsum("skp,tjp->stkj", stack, stack).pow(2).sum((2, 3)) / k
    return HessianSubspace(torch.as_tensor(out_steps), torch.as_tensor(losses, dtype=torch.float64),
                           torch.stack(values), torch.as_tensor(fractions, dtype=torch.float64), overlap, k, size)
