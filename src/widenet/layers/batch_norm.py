"""Batch normalization: a finite twin without an infinite-width kernel."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .._engine import Flow
from .._validate import check_float
from ..errors import NoClosedFormError
from .base import Build, Layer, Spec

__all__ = ["BatchNorm"]


@dataclass(frozen=True)
class BatchNorm(Layer):
    """Batch normalization, like ``nn.BatchNorm1d/2d/3d`` (``nn.LazyBatchNorm*d``).

    In training mode each output depends on the whole batch, so there is no per-pair kernel:
    ``kernel()`` raises. Its finite-width twin is torch's own module; estimate kernels of
    networks that contain it by Monte Carlo (``wn.monte_carlo``), or by the empirical NTK
    with the model in eval mode.

    Example:

        >>> model = wn.Serial(wn.Dense(64), wn.BatchNorm(), wn.Relu(), wn.Dense(1)).module(10)
    """

    eps: float = 1e-5
    momentum: float = 0.1
    affine: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "eps", check_float("BatchNorm", "eps", self.eps, minimum=0.0, exclusive_minimum=True))
        object.__setattr__(self, "momentum", check_float("BatchNorm", "momentum", self.momentum, minimum=0.0, maximum=1.0))

    def _rule(self, flow: Flow) -> Flow:
        raise NoClosedFormError(
            "BatchNorm: batch normalization couples the inputs of a batch and has no per-pair "
            "infinite-width kernel; estimate kernels by Monte Carlo over finite networks with "
            "wn.monte_carlo(net, x1, x2, n_samples=...)"
        )

    def _twin(self, spec: Spec, build: Build) -> tuple[nn.Module, Spec]:
        spec = self._single_spec(spec)
        if spec.ndim is None:
            return _AnyBatchNorm(self.eps, self.momentum, self.affine, build), spec
        kind = (nn.LazyBatchNorm1d, nn.LazyBatchNorm1d, nn.LazyBatchNorm2d, nn.LazyBatchNorm3d)[spec.ndim]
        module = kind(eps=self.eps, momentum=self.momentum, affine=self.affine,
                      dtype=build.dtype, device=build.device)
        return module, spec


class _AnyBatchNorm(nn.Module):
    """``nn.BatchNorm`` of the dimension of its first input (the network was built without
    ``input_shape``)."""

    def __init__(self, eps: float, momentum: float, affine: bool, build: Build) -> None:
        super().__init__()
        self.norm = nn.LazyBatchNorm1d(eps=eps, momentum=momentum, affine=affine,
                                       dtype=build.dtype, device=build.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # BatchNorm1d accepts (N, C) and (N, C, L); flatten the spatial axes of images.
        if x.ndim > 3:
            return self.norm(x.flatten(2)).view_as(x)
        return self.norm(x)
