"""Indexing the channel and spatial axes, ``x[idx]``, as ``stax.Index``."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .._engine import Flow, spatial_axes
from ..errors import ParameterError, ShapeError
from ._geometry import map_positions
from ._masks import require_no_padding
from .base import Build, Layer, Spec

__all__ = ["Index", "Slice", "IndexModule"]


class Slice:
    """Writes an index for ``Index`` with Python's slice syntax: ``wn.Slice[:, :8, ::2]`` is
    ``(slice(None), slice(None, 8), slice(None, None, 2))`` (as ``stax.Slice``).

    Example:

        >>> wn.Slice[:, :, 1:, 0]
        (slice(None, None, None), slice(None, None, None), slice(1, None, None), 0)
    """

    def __class_getitem__(cls, idx: Any) -> Any:
        return idx


def _normalize(owner: str, idx: Any, ndim: int) -> tuple:
    """``idx`` as one entry (a slice or an int) per axis of an ``ndim``-axis input."""
    items = list(idx) if isinstance(idx, tuple) else [idx]
    if sum(item is Ellipsis for item in items) > 1:
        raise ParameterError(f"{owner}: idx may hold one Ellipsis at most (got {idx!r})")
    for item in items:
        if not (item is Ellipsis or isinstance(item, slice) or (isinstance(item, int) and not isinstance(item, bool))):
            raise ParameterError(f"{owner}: idx must hold slices, ints and at most one Ellipsis, as x[idx] "
                                 f"(got {item!r} in {idx!r})")
        if isinstance(item, slice) and item.step == 0:
            raise ParameterError(f"{owner}: a slice step must not be zero (got {idx!r})")
    if Ellipsis in items:
        at = items.index(Ellipsis)
        fill = ndim - (len(items) - 1)
        items = items[:at] + [slice(None)] * max(fill, 0) + items[at + 1:]
    if len(items) > ndim:
        raise ShapeError(f"{owner}: idx {idx!r} indexes {len(items)} axes but the input has {ndim} "
                         f"((N, C, *spatial))")
    return tuple(items) + (slice(None),) * (ndim - len(items))


def _positions(owner: str, item: Any, size: int, axis: int) -> Any:
    """The kept positions of one axis of ``size``: an index tensor (a slice) or an int."""
    if isinstance(item, int):
        if not -size <= item < size:
            raise ShapeError(f"{owner}: index {item} is out of range for spatial axis {axis} of size {size}")
        return item % size
    kept = range(*item.indices(size))
    if len(kept) == 0:
        raise ShapeError(f"{owner}: the slice {item!r} keeps no position of spatial axis {axis} of size {size}")
    return torch.tensor(list(kept), dtype=torch.long)


@dataclass(frozen=True)
class Index(Layer):
    """``x[idx]`` on inputs ``(N, C, *S)`` (or ``(N, C)``), as ``stax.Index`` in PyTorch's
    layout: slices (any step, negative included) and ints on the spatial axes, slices on the
    channel axis; the batch axis stays whole.

    Kernel rule: selecting positions selects them on both sides of every position pair,
    ``K'[s, s'] = K[p(s), p(s')]`` (an int drops that spatial axis); selecting channels
    leaves the kernels unchanged (channels are exchangeable in the limit) and sets the width
    the next layer sees in the standard parameterization to the number kept.

    Args:
        idx: as in ``x[idx]``: a tuple of slices, ints and at most one Ellipsis over the axes
            ``(N, C, *S)``; ``wn.Slice[:, :, 2:, ::-1]`` writes one.

    Example:

        >>> crop = wn.Serial(wn.Conv(32, 3), wn.Relu(), wn.Index(wn.Slice[:, :, 1:-1, ::2]), wn.Flatten(), wn.Dense(1))
        >>> crop.kernel(torch.randn(3, 1, 6, 6)).nngp.shape
        torch.Size([3, 3])
    """

    idx: Any

    def __post_init__(self) -> None:
        _normalize("Index", self.idx, 64)  # the entries' types, before any input is known

    def _plan(self, ndim: int) -> tuple:
        items = _normalize("Index", self.idx, ndim)
        if items[0] != slice(None):
            raise ParameterError(f"Index: the batch axis (axis 0) must stay whole (slice(None) or ':'); "
                                 f"select the inputs before calling kernel (got {items[0]!r})")
        if isinstance(items[1], int):
            raise ParameterError(f"Index: an int on the channel axis (axis 1) would drop it; widenet keeps "
                                 f"channels on axis 1 (use a slice, e.g. {items[1]}:{items[1] + 1})")
        return items

    def _rule(self, flow: Flow) -> Flow:
        w = self._single(flow)
        spatial = tuple(w.spatial)
        items = self._plan(2 + len(spatial))
        channels = items[1]
        if w.width:
            kept = len(range(*channels.indices(int(w.width))))
            if kept == 0:
                raise ShapeError(f"Index: the slice {channels!r} keeps no channel of {w.width}")
            w.width = kept
        picks = [_positions("Index", item, n, a) for a, (item, n) in enumerate(zip(items[2:], spatial))]
        if all(isinstance(p, torch.Tensor) and torch.equal(p, torch.arange(n)) for p, n in zip(picks, spatial)):
            return w
        w.require_unmasked("Index", "moves positions")
        d, full = len(spatial), w.is_full

        def select(t: torch.Tensor) -> torch.Tensor:
            first, second = spatial_axes(t.ndim, d, full)
            # the last axes first, so that dropping one leaves the others' numbers valid
            for i in reversed(range(d)):
                for ax in ([second[i]] if full else []) + [first[i]]:
                    p = picks[i]
                    t = t.select(ax, p) if isinstance(p, int) else t.index_select(ax, p.to(t.device))
            return t

        return map_positions(w, select, [len(p) for p in picks if not isinstance(p, int)])

    def _twin(self, spec: Spec, build: Build) -> tuple[nn.Module, Spec]:
        spec = self._single_spec(spec)
        features = spec.features
        if spec.ndim is not None:
            items = self._plan(2 + spec.ndim)
            if features is not None:
                features = len(range(*items[1].indices(features)))
            spec = dataclasses.replace(spec, features=features,
                                       ndim=spec.ndim - sum(isinstance(i, int) for i in items[2:]))
        return IndexModule(self), spec


class IndexModule(nn.Module):
    """``x[idx]`` with ``Index``'s checks; the twin of ``Index``."""

    def __init__(self, layer: Index) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        items = self.layer._plan(x.ndim)
        if any(not (isinstance(i, slice) and i == slice(None)) for i in items[2:]):
            require_no_padding(x, "IndexModule", "moves positions")
        # index_select rather than x[items]: torch's slices take no negative steps
        channels = torch.tensor(list(range(*items[1].indices(x.shape[1]))), dtype=torch.long, device=x.device)
        x = x.index_select(1, channels)
        for a in reversed(range(x.ndim - 2)):
            p = _positions("IndexModule", items[2 + a], x.shape[2 + a], a)
            x = x.select(2 + a, p) if isinstance(p, int) else x.index_select(2 + a, p.to(x.device))
        return x

    def extra_repr(self) -> str:
        return f"idx={self.layer.idx!r}"
