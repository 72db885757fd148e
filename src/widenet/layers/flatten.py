"""Flattening positions into features."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .._engine import Flow
from ._masks import require_no_padding
from .base import Build, Layer, Shape, Spec

__all__ = ["Flatten", "FlattenModule"]


@dataclass(frozen=True)
class Flatten(Layer):
    """``(N, C, *S) -> (N, C * prod(S))`` in PyTorch's order (``x.flatten(1)``).

    The next affine layer averages over channels and positions alike, so the kernel becomes
    the mean over positions of the spatial diagonal ``K(s, s)``: only the diagonal layout is
    needed (Novak et al. 2019). The flattened features have position-dependent variances, so
    they are not one Gaussian law: put an affine layer (Dense) after Flatten before any
    nonlinearity.

    Example:

        >>> cnn = wn.Serial(wn.Conv(64, 3), wn.Relu(), wn.Flatten(), wn.Dense(1))
        >>> cnn.kernel(torch.randn(4, 1, 8, 8)).nngp.shape
        torch.Size([4, 4])
    """

    def _rule(self, flow: Flow) -> Flow:
        w = self._single(flow)
        if not w.spatial:
            return w
        w.require_unmasked("Flatten", "flattens positions into features, padding included")
        n, full, d = w.npos, w.is_full, len(w.spatial)

        def flat(t: torch.Tensor) -> torch.Tensor:
            lead = t.shape[: t.ndim - (2 * d if full else d)]
            if full:
                return t.reshape(lead + (n, n)).diagonal(dim1=-2, dim2=-1).mean(-1)
            return t.reshape(lead + (n,)).mean(-1)

        w.map_tiles(flat)
        w.set_covs(flat)
        w.spatial = ()
        w.width = w.width * n
        w.is_gaussian = w.is_gaussian and n == 1
        return w

    def _twin(self, spec: Spec, build: Build) -> tuple[nn.Module, Spec]:
        return FlattenModule(1), Shape(None, 0)


class FlattenModule(nn.Flatten):
    """``x.flatten(1)``, refusing padded inputs (padding would enter the features)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        require_no_padding(x, "FlattenModule", "flattens positions into features, padding included")
        return super().forward(x)
