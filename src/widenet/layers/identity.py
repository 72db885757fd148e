"""The identity layer."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from .._engine import Flow
from .base import Build, Layer, Spec

__all__ = ["Identity"]


@dataclass(frozen=True)
class Identity(Layer):
    """``phi(x) = x``; leaves the kernel unchanged (and does not need a Gaussian input).

    Example:

        >>> wn.Identity().kernel(torch.randn(4, 3)).nngp.shape   # the input kernel x . x' / d
        torch.Size([4, 4])
    """

    def _rule(self, flow: Flow) -> Flow:
        return flow

    def _twin(self, spec: Spec, build: Build) -> tuple[nn.Module, Spec]:
        return nn.Identity(), spec
