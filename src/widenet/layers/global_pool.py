"""Global pooling: the mean or sum over every spatial position."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from .._engine import Flow, exact
from ._geometry import spatial_of
from ._masks import current_keep, zero_padding
from .base import Build, Layer, Shape, Spec

__all__ = ["GlobalAvgPool", "GlobalSumPool", "GlobalPoolModule"]


class _GlobalPool(Layer):
    """The kernel of a global mean (sum) is the mean (sum) of the input kernel over every
    pair of positions; with padding masks, the mean over real positions."""

    _mode = "avg"

    def _needs_full(self) -> bool:
        return True

    def _rule(self, flow: Flow) -> Flow:
        w = self._single(flow)
        spatial = spatial_of(self._name, w)
        n = math.prod(spatial)
        scale = 1.0 / (n * n) if self._mode == "avg" else 1.0

        def pool(t: torch.Tensor) -> torch.Tensor:
            return exact.pair_sum(t, len(spatial))

        if w.masked and self._mode == "avg":
            # Padded positions hold zeros; the mean is over each input's real positions.
            n1 = w.keep1.reshape(w.keep1.shape[0], -1).sum(1)
            n2 = w.keep2.reshape(w.keep2.shape[0], -1).sum(1)
            if w.nngp is not None:
                counts = n1[:, None] * n2[None, :]
                w.map_tiles(lambda t: pool(t).div_(counts))
            w.set_covs(lambda c: pool(c).div_(n1 * n1), lambda c: pool(c).div_(n2 * n2))
        else:
            w.map_tiles(lambda t: pool(t).mul_(scale))
            w.set_covs(lambda t: pool(t).mul_(scale))
        w.spatial = ()
        w.unmask()
        return w

    def _twin(self, spec: Spec, build: Build) -> tuple[nn.Module, Spec]:
        return GlobalPoolModule(self._mode), Shape(self._single_spec(spec).features, 0)


@dataclass(frozen=True)
class GlobalAvgPool(_GlobalPool):
    """Mean over every spatial position: ``(N, C, *S) -> (N, C)``. Its kernel is the mean of
    the input kernel over all position pairs (full layout, chosen automatically).

    Example:

        >>> cnn = wn.Serial(wn.Conv(64, 3), wn.Relu(), wn.GlobalAvgPool(), wn.Dense(1))
        >>> cnn.kernel(torch.randn(4, 1, 8, 8)).nngp.shape
        torch.Size([4, 4])
    """

    _mode = "avg"


@dataclass(frozen=True)
class GlobalSumPool(_GlobalPool):
    """Sum over every spatial position: ``(N, C, *S) -> (N, C)``.

    Example:

        >>> cnn = wn.Serial(wn.Conv(64, 3), wn.Relu(), wn.GlobalSumPool(), wn.Dense(1))
    """

    _mode = "sum"


class GlobalPoolModule(nn.Module):
    """Mean ("avg") or sum over the spatial axes; the mean counts real positions only under a
    padding mask."""

    def __init__(self, mode: str) -> None:
        super().__init__()
        self.mode = mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dims = tuple(range(2, x.ndim))
        keep = current_keep(x)
        if keep is not None and self.mode == "avg":  # the mean over real positions
            counts = keep.reshape(keep.shape[0], -1).sum(1).to(x.dtype)
            return zero_padding(x).sum(dims) / counts[:, None]
        return x.mean(dims) if self.mode == "avg" else zero_padding(x).sum(dims)

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}"
