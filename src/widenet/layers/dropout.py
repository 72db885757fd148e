"""Dropout, whose kernel keeps independent masks per example."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .._engine import Flow
from .._validate import check_choice, check_float
from ..errors import ParameterError
from .base import Build, Layer, Spec

__all__ = ["Dropout"]


@dataclass(frozen=True)
class Dropout(Layer):
    """Dropout with drop probability ``rate`` (torch's ``p``), like ``nn.Dropout``.

    Semantics of the kernel (mode "train"): every example draws its own mask, independent
    of every other example and of every position, and an example's two appearances in a
    kernel call with ``x2=None`` (the diagonal) share one mask. Hence, with
    ``keep = 1 - rate``, the covariance of an input with itself at one position is
    multiplied by ``1 / keep`` while every other entry is unchanged; the same holds for the
    NTK. Kernels between ``x1`` and a separate ``x2`` treat the two sets as different
    examples even if their values coincide. Mode "eval" is the identity (as at test time).
    The output is not Gaussian: put an affine layer after Dropout before a nonlinearity.

    Example:

        >>> net = wn.Serial(wn.Dense(64), wn.Relu(), wn.Dropout(0.1), wn.Dense(1))
    """

    rate: float = 0.5
    mode: str = "train"

    def __post_init__(self) -> None:
        object.__setattr__(self, "rate", check_float("Dropout", "rate", self.rate, minimum=0.0, maximum=1.0, tensor=True))
        if self.rate == 1.0:
            raise ParameterError("Dropout: rate must be a finite float >= 0 and < 1 (got 1.0)")
        check_choice("Dropout", "mode", self.mode, ("train", "eval"))

    def _rule(self, flow: Flow) -> Flow:
        w = self._single(flow)
        if self.mode == "eval" or self.rate == 0.0:
            return w
        factor = 1.0 / (1.0 - self.rate)

        def scale_own(cov: torch.Tensor) -> torch.Tensor:
            cov = cov.clone()
            if w.is_full:
                n, b = w.npos, cov.shape[0]
                cov.view(b, n, n).diagonal(dim1=1, dim2=2).mul_(factor)
            else:
                cov.mul_(factor)
            return cov

        w.set_covs(scale_own)
        if w.ntk is not None:
            d = w.pair_diagonal(w.ntk)
            if d is not None:
                if w.is_full:  # only s = s': masks are independent across positions
                    n = w.npos
                    scale = torch.ones(n, n, dtype=d.dtype, device=d.device)
                    scale.diagonal().fill_(factor)
                    d.mul_(scale.reshape(w.pair_shape + (1,)))
                else:
                    d.mul_(factor)
        w.sync_diagonal()
        w.is_gaussian = False
        return w

    def _twin(self, spec: Spec, build: Build) -> tuple[nn.Module, Spec]:
        return (nn.Dropout(self.rate) if self.mode == "train" else nn.Identity()), self._single_spec(spec)
