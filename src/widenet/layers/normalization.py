"""Normalization and dropout layers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Union

import torch
from torch import nn

from .. import _exact
from .._validate import check_choice, check_float, check_int
from ..errors import LayerOrderError, NoClosedFormError, ParameterError, ShapeError
from ._base import Flow, Layer, Spec
from ._modules import LayerNormModule

__all__ = ["LayerNorm", "BatchNorm", "Dropout"]


@dataclass(frozen=True)
class LayerNorm(Layer):
    """Normalizes each input to zero mean and unit variance over ``axis`` (no affine
    parameters), like ``torch.nn.functional.layer_norm`` over those axes.

    ``axis`` counts in the input's layout ``(N, C, *S)``: 1 (the default) normalizes over
    channels at each position; ``(1, 2, ...)`` over channels and those spatial axes too.
    Its input must be Gaussian (the output of an affine layer). In the infinite-width limit
    the mean vanishes and the variance is the kernel's own, so
    (Xiao et al. 2020; Neural Tangents' LayerNorm)::

        K'(x, x')_{s s'} = K(x, x')_{s s'} / sqrt((eps + v(x)_s) (eps + v(x')_{s'}))

    and the same divisor for Theta, where ``v(x)_s`` is ``K(x, x)_{s s}`` averaged over the
    normalized spatial axes.
    """

    axis: Union[int, tuple] = 1
    eps: float = 1e-12

    def __post_init__(self) -> None:
        axes = self.axis if isinstance(self.axis, (tuple, list)) else (self.axis,)
        axes = tuple(sorted(set(check_int("LayerNorm", "axis", a, minimum=1) for a in axes)))
        if 1 not in axes:
            raise ParameterError(
                f"LayerNorm: axis must include the channel axis 1 (got {self.axis!r}); in the "
                f"infinite-width limit only normalizations over channels have a kernel"
            )
        object.__setattr__(self, "axis", axes if len(axes) > 1 else 1)
        object.__setattr__(self, "eps", check_float("LayerNorm", "eps", self.eps, minimum=0.0, tensor=True))

    @property
    def _axes(self) -> tuple[int, ...]:
        return self.axis if isinstance(self.axis, tuple) else (self.axis,)

    def _apply(self, flow: Flow) -> Flow:
        w = self._single(flow)
        if not w.is_gaussian:
            raise LayerOrderError(
                "LayerNorm: its input must be Gaussian with zero mean, i.e. the output of an "
                "affine layer such as Dense or Conv (after a nonlinearity the channel mean does "
                "not vanish and the limit has no such closed form)"
            )
        spatial_axes = [a - 2 for a in self._axes if a >= 2]
        if any(a >= len(w.spatial) for a in spatial_axes):
            raise ShapeError(
                f"LayerNorm: axis {self._axes} does not fit the layer's input, which has "
                f"{len(w.spatial)} spatial axes (axes count in (N, C, *S))"
            )

        def norms(v: torch.Tensor, keep) -> torch.Tensor:
            if spatial_axes:
                axes = tuple(1 + a for a in spatial_axes)
                if keep is None:
                    v = _exact.mean(v, axes, keepdim=True).expand_as(v)
                else:  # the mean over real positions (padded ones hold zero variance)
                    v = (_exact.sum(v, axes, keepdim=True) / keep.sum(axes, keepdim=True)).expand_as(v)
            return (v + self.eps).sqrt()

        n1, n2 = norms(w.var1, w.keep1), norms(w.var2, w.keep2)
        if w.nngp is not None:
            divisor = w.prod(n1, n2)
            w.nngp.div_(divisor)
            if w.ntk is not None:
                w.ntk.div_(divisor)
        w.set_covs(lambda c: c / w.own_prod(n1), lambda c: c / w.own_prod(n2))
        w.sync_diagonal()
        return w

    def _build(self, spec: Spec, seeds: Iterator[int], factory: dict) -> tuple[nn.Module, Spec]:
        return LayerNormModule(self._axes, self.eps), self._single_spec(spec)


@dataclass(frozen=True)
class BatchNorm(Layer):
    """Batch normalization, like ``nn.BatchNorm1d/2d/3d`` (``nn.LazyBatchNorm*d``).

    In training mode each output depends on the whole batch, so there is no per-pair kernel:
    ``kernel()`` raises. Its finite-width twin is torch's own module; estimate kernels of
    networks that contain it by Monte Carlo (``wn.monte_carlo``), or by the empirical NTK
    with the model in eval mode.
    """

    eps: float = 1e-5
    momentum: float = 0.1
    affine: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "eps", check_float("BatchNorm", "eps", self.eps, minimum=0.0, exclusive_minimum=True))
        object.__setattr__(self, "momentum", check_float("BatchNorm", "momentum", self.momentum, minimum=0.0, maximum=1.0))

    def _apply(self, flow: Flow) -> Flow:
        raise NoClosedFormError(
            "BatchNorm: batch normalization couples the inputs of a batch and has no per-pair "
            "infinite-width kernel; estimate kernels by Monte Carlo over finite networks with "
            "wn.monte_carlo(net, x1, x2, n_samples=...)"
        )

    def _build(self, spec: Spec, seeds: Iterator[int], factory: dict) -> tuple[nn.Module, Spec]:
        d = factory.get("ndim")
        kind = {None: nn.LazyBatchNorm2d, 0: nn.LazyBatchNorm1d, 1: nn.LazyBatchNorm1d,
                2: nn.LazyBatchNorm2d, 3: nn.LazyBatchNorm3d}[d]
        if d is None:
            return _AnyBatchNorm(self.eps, self.momentum, self.affine, factory), self._single_spec(spec)
        module = kind(eps=self.eps, momentum=self.momentum, affine=self.affine,
                      dtype=factory["dtype"], device=factory["device"])
        return module, self._single_spec(spec)


class _AnyBatchNorm(nn.Module):
    """``nn.BatchNorm`` of the dimension of its first input (the network was built without
    ``input_shape``)."""

    def __init__(self, eps: float, momentum: float, affine: bool, factory: dict) -> None:
        super().__init__()
        self.norm = nn.LazyBatchNorm1d(eps=eps, momentum=momentum, affine=affine,
                                       dtype=factory["dtype"], device=factory["device"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # BatchNorm1d accepts (N, C) and (N, C, L); flatten the spatial axes of images.
        if x.ndim > 3:
            return self.norm(x.flatten(2)).view_as(x)
        return self.norm(x)


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
    """

    rate: float = 0.5
    mode: str = "train"

    def __post_init__(self) -> None:
        object.__setattr__(self, "rate", check_float("Dropout", "rate", self.rate, minimum=0.0, maximum=1.0, tensor=True))
        if self.rate == 1.0:
            raise ParameterError("Dropout: rate must be a finite float >= 0 and < 1 (got 1.0)")
        check_choice("Dropout", "mode", self.mode, ("train", "eval"))

    def _apply(self, flow: Flow) -> Flow:
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

    def _build(self, spec: Spec, seeds: Iterator[int], factory: dict) -> tuple[nn.Module, Spec]:
        return (nn.Dropout(self.rate) if self.mode == "train" else nn.Identity()), self._single_spec(spec)

