"""Spatial geometry shared by convolution and pooling: padding rules and window sums.

Kernel tiles keep their spatial axes last: ``(..., *S)`` in the diagonal layout and
``(..., *S, *S')`` in the full one. Convolution sums a covariance over *tied* offsets (the
same filter offset on both inputs' positions); pooling sums over *independent* offsets on
each side. Both are separable over spatial dimensions, so a window sum is a few strided
slice-adds per axis group: cheap, exact, and without temporaries larger than the tile.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

from ..errors import ParameterError, ShapeError

PADDINGS = ("same", "valid", "circular")


def as_tuple(owner: str, name: str, value, ndim: int, *, minimum: int = 1) -> tuple[int, ...]:
    """``value`` (an int or a sequence of ``ndim`` ints, each >= ``minimum``) as a tuple."""
    from .._validate import check_int

    if isinstance(value, (list, tuple)):
        if len(value) != ndim:
            raise ParameterError(
                f"{owner}: {name} must be an int or a sequence of {ndim} ints, one per spatial "
                f"dimension (got {value!r})"
            )
        return tuple(check_int(owner, f"{name}[{i}]", v, minimum=minimum) for i, v in enumerate(value))
    return (check_int(owner, name, value, minimum=minimum),) * ndim


def pads_for(owner: str, size: int, window: int, stride: int, dilation: int, padding: str) -> tuple[int, int, int]:
    """``(pad_before, pad_after, out_size)`` along one axis.

    "same" and "circular" follow the usual SAME rule (output ``ceil(size / stride)``, the
    padding split with the extra element after); "valid" pads nothing.
    """
    span = (window - 1) * dilation + 1
    if padding == "valid":
        if size < span:
            raise ShapeError(
                f"{owner}: with padding='valid' each spatial size must be at least the "
                f"(dilated) window {span} (got {size})"
            )
        return 0, 0, (size - span) // stride + 1
    out = -(-size // stride)
    total = max((out - 1) * stride + span - size, 0)
    if padding == "circular" and total > size:
        raise ShapeError(
            f"{owner}: circular padding needs at most {size} wrapped positions per axis "
            f"(window {span} on size {size} needs {total})"
        )
    return total // 2, total - total // 2, out


def _pad_axes(t: torch.Tensor, axes: Sequence[int], lo: int, hi: int, circular: bool) -> torch.Tensor:
    if lo == 0 and hi == 0:
        return t
    for ax in axes:
        n = t.shape[ax]
        if circular:
            index = torch.arange(-lo, n + hi, device=t.device) % n
            t = t.index_select(ax, index)
        else:
            shape = list(t.shape)
            shape[ax] = n + lo + hi
            padded = t.new_zeros(shape)
            padded.narrow(ax, lo, n).copy_(t)
            t = padded
    return t


def window_sum(
    t: torch.Tensor,
    groups: Sequence[Sequence[int]],
    window: Sequence[int],
    stride: Sequence[int],
    dilation: Sequence[int],
    pads: Sequence[tuple[int, int]],
    circular: bool,
) -> torch.Tensor:
    """Sum over window offsets, group by group.

    ``groups[g]`` lists the axes that share the offset of group ``g`` (one axis for pooling
    and for the diagonal layout; the two position axes of a dimension for a convolution in
    the full layout). Returns a new tensor; ``t`` is not modified.
    """
    out = t
    for axes, k, st, dil, (lo, hi) in zip(groups, window, stride, dilation, pads):
        if k == 1 and st == 1 and lo == 0 and hi == 0:
            continue
        padded = _pad_axes(out, axes, lo, hi, circular)
        size = padded.shape[axes[0]]
        n_out = (size - (k - 1) * dil - 1) // st + 1
        acc = None
        for o in range(k):
            piece = padded
            for ax in axes:
                piece = piece.narrow(ax, o * dil, (n_out - 1) * st + 1)
                if st > 1:
                    piece = _stride(piece, ax, st)
            acc = piece.clone(memory_format=torch.contiguous_format) if acc is None else acc.add_(piece)
        out = acc
    return out if out is not t else t.clone()


def _stride(t: torch.Tensor, ax: int, step: int) -> torch.Tensor:
    index = [slice(None)] * t.ndim
    index[ax] = slice(None, None, step)
    return t[tuple(index)]


def spatial_axes(w_ndim: int, nspatial: int, full: bool) -> tuple[list[int], list[int]]:
    """Axes of the first and second position of each spatial dimension in a tensor of
    ``w_ndim`` dims whose last axes are the position pairs (second list empty if diagonal)."""
    npair = 2 * nspatial if full else nspatial
    first = list(range(w_ndim - npair, w_ndim - npair + nspatial))
    second = [a + nspatial for a in first] if full else []
    return first, second


def numel(shape: Sequence[int]) -> int:
    return math.prod(shape)
