"""Multiplying the spatial axes by a fixed tensor, as ``stax.DotGeneral`` with a constant ``rhs``."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import nn

from .._engine import Flow, exact, spatial_axes
from ..errors import ParameterError, ShapeError
from ._geometry import map_positions, spatial_of
from ._masks import require_no_padding
from .base import Build, Layer, Spec

__all__ = ["DotGeneral", "DotGeneralModule"]


def _contract(t: torch.Tensor, axes: Sequence[int], rhs: torch.Tensor, rhs_axes: Sequence[int], at: int) -> torch.Tensor:
    """``t`` with its ``axes`` contracted against ``rhs``'s ``rhs_axes`` (through
    ``exact.matmul``), ``rhs``'s other axes inserted at position ``at`` of the result (counted
    among ``t``'s axes that remain)."""
    rest = [a for a in range(rhs.ndim) if a not in rhs_axes]
    keep = [a for a in range(t.ndim) if a not in axes]
    moved = t.permute(keep + list(axes))
    lead = moved.shape[:len(keep)]
    k = math.prod(t.shape[a] for a in axes)
    r = rhs.permute(list(rhs_axes) + rest).reshape(k, -1).to(t.dtype)
    out = exact.matmul(moved.reshape(-1, k), r).reshape(lead + tuple(rhs.shape[a] for a in rest))
    return out.movedim(tuple(range(len(keep), out.ndim)), tuple(range(at, at + len(rest))))


@dataclass(frozen=True)
class DotGeneral(Layer):
    """Contracts spatial axes of the input with a fixed tensor ``rhs`` (no parameters), like
    ``torch.tensordot(x, rhs, dims=(axes, rhs_axes))`` on inputs ``(N, C, *S)``: the batch and
    channel axes stay first, the input's uncontracted spatial axes follow, then ``rhs``'s
    uncontracted axes as new spatial axes. Any linear map of positions (a fixed blur, a
    permutation, a graph's averaging operator) is one; ``stax.DotGeneral(rhs=...)`` in
    PyTorch's layout.

    Kernel rule: a linear map of the positions, applied to both positions of every pair::

        K'[s, s'] = sum_(u, u') R[u, s] R[u', s'] K[u, u']

    (``u`` the contracted positions, ``s`` the new ones); likewise the NTK and the own
    covariances. Gaussian inputs stay Gaussian.

    Args:
        rhs: the fixed tensor (float).
        axes: the input's spatial axes to contract, counted among the spatial axes (0 is the
            first spatial axis, input axis 2).
        rhs_axes: ``rhs``'s axes they contract with, as many and of the same sizes.

    Example:

        >>> blur = torch.tensor([[0.5, 0.5, 0.0], [0.0, 0.5, 0.5]]).T   # (3 positions -> 2)
        >>> net = wn.Serial(wn.Conv(16, 3), wn.Relu(), wn.DotGeneral(blur, axes=(0,), rhs_axes=(0,)),
        ...                 wn.Flatten(), wn.Dense(1))
        >>> net.kernel(torch.randn(4, 1, 3)).nngp.shape
        torch.Size([4, 4])
    """

    rhs: Any
    axes: Sequence[int] = (0,)
    rhs_axes: Sequence[int] = (0,)

    def __post_init__(self) -> None:
        rhs = self.rhs
        if not isinstance(rhs, torch.Tensor):
            try:
                rhs = torch.as_tensor(rhs, dtype=torch.float64)
            except (TypeError, ValueError, RuntimeError) as err:
                raise ParameterError(f"DotGeneral: rhs must be a tensor of floats (got {type(self.rhs).__name__})") from err
        if not rhs.is_floating_point() or rhs.ndim < 1 or not bool(torch.isfinite(rhs).all()):
            raise ParameterError(f"DotGeneral: rhs must be a finite float tensor with at least one axis "
                                 f"(got dtype {rhs.dtype}, shape {tuple(rhs.shape)})")
        axes, rhs_axes = tuple(self.axes), tuple(self.rhs_axes)
        if (len(axes) != len(rhs_axes) or not axes or len(set(axes)) != len(axes)
                or len(set(rhs_axes)) != len(rhs_axes)
                or any(isinstance(a, bool) or not isinstance(a, int) or a < 0 for a in axes + rhs_axes)
                or any(a >= rhs.ndim for a in rhs_axes)):
            raise ParameterError(f"DotGeneral: axes and rhs_axes must be equally many distinct non-negative ints, "
                                 f"rhs_axes below rhs's {rhs.ndim} axes (got axes={axes}, rhs_axes={rhs_axes})")
        object.__setattr__(self, "rhs", rhs.detach())
        object.__setattr__(self, "axes", axes)
        object.__setattr__(self, "rhs_axes", rhs_axes)

    def __repr__(self) -> str:
        return f"DotGeneral(rhs of shape {tuple(self.rhs.shape)}, axes={self.axes}, rhs_axes={self.rhs_axes})"

    def _needs_full(self) -> bool:
        return True

    def _out_spatial(self, spatial: Sequence[int]) -> tuple:
        d = len(spatial)
        if max(self.axes) >= d:
            raise ShapeError(f"DotGeneral: axes {self.axes} name spatial axes the input has not (it has {d}: "
                             f"{tuple(spatial)})")
        for a, b in zip(self.axes, self.rhs_axes):
            if spatial[a] != self.rhs.shape[b]:
                raise ShapeError(f"DotGeneral: spatial axis {a} of size {spatial[a]} cannot contract with rhs axis "
                                 f"{b} of size {self.rhs.shape[b]} (rhs shape {tuple(self.rhs.shape)}, input "
                                 f"spatial {tuple(spatial)})")
        kept = tuple(n for i, n in enumerate(spatial) if i not in self.axes)
        new = tuple(n for i, n in enumerate(self.rhs.shape) if i not in self.rhs_axes)
        if not 1 <= len(kept + new) <= 3:
            raise ShapeError(f"DotGeneral: the output would have {len(kept + new)} spatial axes ({kept + new}); "
                             f"widenet's layouts take 1 to 3")
        return kept + new

    def _rule(self, flow: Flow) -> Flow:
        w = self._single(flow)
        spatial = spatial_of("DotGeneral", w)
        out = self._out_spatial(spatial)
        w.require_unmasked("DotGeneral", "moves positions")
        d, d_kept = len(spatial), len(spatial) - len(self.axes)

        def apply(t: torch.Tensor) -> torch.Tensor:
            first, _ = spatial_axes(t.ndim, d, True)
            lead = first[0]
            # the first positions: new axes after the kept first ones
            t = _contract(t, [first[a] for a in self.axes], self.rhs.to(t.device), self.rhs_axes, lead + d_kept)
            # the second positions now sit after all first ones; their new axes go last
            second = [lead + len(out) + a for a in range(d)]
            return _contract(t, [second[a] for a in self.axes], self.rhs.to(t.device), self.rhs_axes,
                             t.ndim - len(self.axes))

        return map_positions(w, apply, out)

    def _twin(self, spec: Spec, build: Build) -> tuple[nn.Module, Spec]:
        spec = self._single_spec(spec)
        if spec.ndim is not None:
            import dataclasses

            spec = dataclasses.replace(spec, ndim=spec.ndim - len(self.axes) + self.rhs.ndim - len(self.rhs_axes))
        return DotGeneralModule(self), spec


class DotGeneralModule(nn.Module):
    """``torch.tensordot(x, rhs, dims=(2 + axes, rhs_axes))``; the twin of ``DotGeneral``."""

    def __init__(self, layer: DotGeneral) -> None:
        super().__init__()
        self.layer = layer
        self.register_buffer("rhs", layer.rhs.clone(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        require_no_padding(x, "DotGeneralModule", "moves positions")
        self.layer._out_spatial(tuple(x.shape[2:]))
        axes = [2 + a for a in self.layer.axes]
        return _contract(x, axes, self.rhs.to(x.dtype), self.layer.rhs_axes, x.ndim - len(axes))

    def extra_repr(self) -> str:
        return f"rhs {tuple(self.rhs.shape)}, axes={self.layer.axes}, rhs_axes={self.layer.rhs_axes}"
