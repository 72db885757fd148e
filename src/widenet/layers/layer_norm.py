"""Layer normalization over channels (and optionally positions)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence, Union

import torch
from torch import nn

from .._engine import Flow, exact
from .._validate import check_float, check_int
from ..errors import LayerOrderError, ParameterError, ShapeError
from ._masks import current_keep
from .base import Build, Layer, Spec

__all__ = ["LayerNorm", "LayerNormModule"]


@dataclass(frozen=True)
class LayerNorm(Layer):
    """Normalizes each input to zero mean and unit variance over ``axis`` (no affine
    parameters), like ``torch.nn.functional.layer_norm`` over those axes.

    ``axis`` counts in the input's layout ``(N, C, *S)``: 1 (the default) normalizes over
    channels at each position; ``(1, 2, ...)`` over channels and those spatial axes too.
    Its input must be Gaussian (the output of an affine layer). In the infinite-width limit
    the mean vanishes and the variance is the kernel's own, so
    (Xiao et al. 2020; Neural Tangents' LayerNorm):

        K'(x, x')_{s s'} = K(x, x')_{s s'} / sqrt((eps + v(x)_s) (eps + v(x')_{s'}))

    and the same divisor for Theta, where ``v(x)_s`` is ``K(x, x)_{s s}`` averaged over the
    normalized spatial axes.

    Example:

        >>> net = wn.Serial(wn.Dense(64), wn.LayerNorm(), wn.Relu(), wn.Dense(1))
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

    def _rule(self, flow: Flow) -> Flow:
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
                    v = exact.mean(v, axes, keepdim=True).expand_as(v)
                else:  # the mean over real positions (padded ones hold zero variance)
                    v = (exact.sum(v, axes, keepdim=True) / keep.sum(axes, keepdim=True)).expand_as(v)
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

    def _twin(self, spec: Spec, build: Build) -> tuple[nn.Module, Spec]:
        return LayerNormModule(self._axes, self.eps), self._single_spec(spec)


class LayerNormModule(nn.Module):
    """``(x - mean) / sqrt(var + eps)`` over ``axes`` (biased variance, no affine parameters);
    statistics over real positions only under a padding mask."""

    def __init__(self, axes: Sequence[int], eps: float) -> None:
        super().__init__()
        self.axes, self.eps = tuple(axes), eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        keep = current_keep(x)
        if keep is None or all(a == 1 for a in self.axes):
            mean = x.mean(self.axes, keepdim=True)
            var = x.var(self.axes, keepdim=True, unbiased=False)
        else:  # statistics over real positions only
            k = keep.unsqueeze(1).to(x.dtype).expand_as(x)
            count = k.sum(self.axes, keepdim=True)
            mean = (x * k).sum(self.axes, keepdim=True) / count
            var = ((x - mean).pow(2) * k).sum(self.axes, keepdim=True) / count
        return (x - mean) / torch.sqrt(var + self.eps)

    def extra_repr(self) -> str:
        return f"axes={self.axes}, eps={self.eps}"
