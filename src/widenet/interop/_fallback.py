"""``from_torch(strict=False)``'s fallback: Monte Carlo kernels of the model itself."""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

__all__ = ["MonteCarloModel"]


class MonteCarloModel:
    """The kernels of ``model``'s initialization estimated over ``n_samples`` copies, each
    re-initialized by its modules' own ``reset_parameters`` (PyTorch's defaults) from seed
    ``seed + s``: ``kernel(x1, x2)`` returns a ``widenet.empirical.MonteCarloKernel``
    (``nngp``, ``ntk`` and their standard errors ``nngp_stderr``, ``ntk_stderr``).

    Example:

        >>> from widenet.interop._fallback import MonteCarloModel     # what from_torch(strict=False) returns
        >>> mc = MonteCarloModel(torch.nn.Sequential(torch.nn.Linear(3, 64), torch.nn.Tanh(),
        ...                                          torch.nn.Linear(64, 1)), n_samples=8)
        >>> mc.kernel(torch.randn(4, 3)).ntk.shape
        torch.Size([4, 4])
    """

    def __init__(self, model: nn.Module, n_samples: int = 64, seed: int = 0) -> None:
        self.model, self.n_samples, self.seed = model, n_samples, seed

    def module(self, seed: int = 0) -> nn.Module:
        """A copy of the model, re-initialized from ``seed``."""
        copied = copy.deepcopy(self.model)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            for m in copied.modules():
                if hasattr(m, "reset_parameters"):
                    m.reset_parameters()
        return copied

    def kernel(self, x1: Any, x2: Any = None, **options):
        from ..empirical import monte_carlo

        return monte_carlo(self.module, x1, x2, n_samples=self.n_samples, seed=self.seed, **options)

    def nngp(self, x1: Any, x2: Any = None) -> torch.Tensor:
        return self.kernel(x1, x2, ntk=False).nngp

    def ntk(self, x1: Any, x2: Any = None) -> torch.Tensor:
        return self.kernel(x1, x2).ntk

    def __repr__(self) -> str:
        return f"MonteCarloModel({type(self.model).__name__}, n_samples={self.n_samples})"
