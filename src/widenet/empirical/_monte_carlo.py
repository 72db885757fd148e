"""Monte Carlo kernels: empirical NNGP and NTK averaged over freshly initialized networks."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional, Union

import torch
from torch import nn

from .._validate import as_inputs, check_int
from ..errors import ParameterError
from ..kernel import Kernel
from ._ntk import nngp as empirical_nngp
from ._ntk import ntk as empirical_ntk

__all__ = ["MonteCarloKernel", "monte_carlo"]


@dataclass(frozen=True)
class MonteCarloKernel(Kernel):
    """A ``widenet.Kernel`` estimated by Monte Carlo, with the standard errors of its
    entries (the sample standard deviation over networks divided by ``sqrt(n_samples)``)."""

    nngp_stderr: Optional[torch.Tensor] = None
    ntk_stderr: Optional[torch.Tensor] = None
    n_samples: int = 0


class _Running:
    """Streaming mean and variance (Welford), entrywise."""

    def __init__(self) -> None:
        self.n, self.mean, self.m2 = 0, None, None

    def add(self, value: torch.Tensor) -> None:
        self.n += 1
        if self.mean is None:
            self.mean, self.m2 = value.clone(), torch.zeros_like(value)
            return
        delta = value - self.mean
        self.mean += delta / self.n
        self.m2 += delta * (value - self.mean)

    def stderr(self) -> torch.Tensor:
        if self.n < 2:
            return torch.full_like(self.mean, float("nan"))
        return (self.m2 / (self.n - 1) / self.n).sqrt()


def monte_carlo(net: Union[Any, Callable[[int], nn.Module]], x1: Any, x2: Any = None, n_samples: int = 64, *,
                seed: int = 0, ntk: bool = True, outputs: str = "mean", params: Any = None,
                method: str = "auto", memory: Any = "1GB", progress: bool = False) -> MonteCarloKernel:
    """Empirical NNGP and NTK averaged over ``n_samples`` freshly initialized finite networks.

    This estimates the infinite-width kernels of a widenet architecture from its finite twins
    (their error is the Monte Carlo error plus the O(1/width) finite-width bias), and gives
    kernels to layers without a closed form (MaxPool; BatchNorm, whose networks are evaluated
    in eval mode, on their running statistics). Estimates are streamed (no per-sample storage)
    and come with standard errors.

    Args:
        net: a widenet architecture (network ``s`` is ``net.module(seed=seed + s)``) or any
            factory ``seed -> torch.nn.Module``.
        x1, x2: inputs (``x2=None``: ``x2 = x1``).
        n_samples: number of networks (>= 1; standard errors need >= 2).
        seed: seed of the first network.
        ntk: also estimate the NTK (Jacobians; otherwise only forward passes).
        outputs, params, method, memory: as ``widenet.empirical.ntk``.
        progress: show a progress bar (rich).

    Returns:
        A ``MonteCarloKernel`` (``nngp``, ``ntk``, ``nngp_stderr``, ``ntk_stderr``).
    """
    owner = "monte_carlo"
    n_samples = check_int(owner, "n_samples", n_samples, minimum=1)
    seed = check_int(owner, "seed", seed, minimum=0)
    x1 = as_inputs(owner, "x1", x1, half="keep")
    x2 = None if x2 is None else as_inputs(owner, "x2", x2, like=x1, half="keep")
    if hasattr(net, "module") and hasattr(net, "kernel"):
        shape = tuple(x1.shape[1:])
        factory = lambda s: net.module(shape, seed=s, dtype=x1.dtype, device=x1.device)  # noqa: E731
    elif callable(net):
        factory = net
    else:
        raise ParameterError(
            f"{owner}: net must be a widenet architecture or a factory seed -> nn.Module (got {type(net).__name__})"
        )
    nngp_acc, ntk_acc = _Running(), _Running()
    var1_acc, var2_acc = _Running(), _Running()
    bar = None
    if progress:
        from rich.progress import Progress

        bar = Progress(transient=True)
        bar.start()
        task = bar.add_task("Monte Carlo networks", total=n_samples)
    try:
        for s in range(n_samples):
            model = factory(seed + s)
            if not isinstance(model, nn.Module):
                raise ParameterError(f"{owner}: the factory must return a torch.nn.Module (got {type(model).__name__})")
            k = empirical_nngp(model, x1, x2, outputs=outputs)
            nngp_acc.add(k)
            var1_acc.add(_self(model, x1, outputs))
            if x2 is not None:
                var2_acc.add(_self(model, x2, outputs))
            if ntk:
                ntk_acc.add(empirical_ntk(model, x1, x2, outputs=outputs, params=params, method=method,
                                          memory=memory))
            if bar is not None:
                bar.advance(task)
    finally:
        if bar is not None:
            bar.stop()
    return MonteCarloKernel(
        nngp_acc.mean, ntk_acc.mean if ntk else None, var1_acc.mean, var2_acc.mean if x2 is not None else None,
        nngp_stderr=nngp_acc.stderr(), ntk_stderr=ntk_acc.stderr() if ntk else None, n_samples=n_samples,
    )


def _self(model, x, outputs):
    k = empirical_nngp(model, x, None, outputs=outputs)
    return torch.diagonal(k, dim1=0, dim2=1).movedim(-1, 0)
