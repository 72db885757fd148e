"""Window sums over the position axes of kernel tiles (convolution and pooling).

Kernel tiles keep their spatial axes last: ``(..., *S)`` in the diagonal layout and
``(..., *S, *S')`` in the full one. Convolution sums a covariance over *tied* offsets (the
same filter offset on both inputs' positions); pooling sums over *independent* offsets on
each side. Both are separable over spatial dimensions, so a window sum is a few strided
slice-adds per axis group: cheap, exact, and without temporaries larger than the tile.
"""

from __future__ import annotations

import functools
import math
from typing import Sequence

import torch

from . import fused, scratch

__all__ = ["window_sum", "spatial_axes"]


def _wrap_axes(t: torch.Tensor, axes: Sequence[int], lo: int, hi: int) -> torch.Tensor:
    """Circular padding of ``axes`` by ``lo`` before and ``hi`` after."""
    if lo == 0 and hi == 0:
        return t
    for ax in axes:
        n = t.shape[ax]
        t = t.index_select(ax, torch.arange(-lo, n + hi, device=t.device) % n)
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
    the full layout). Zero padding is never materialized: each offset adds the overlapping
    slice of the input into the matching slice of the output. Returns a new tensor; ``t`` is
    not modified.
    """
    out = t
    for axes, k, st, dil, (lo, hi) in zip(groups, window, stride, dilation, pads):
        if k == 1 and st == 1 and lo == 0 and hi == 0:
            continue
        if circular:
            out = _padded_sum(_wrap_axes(out, axes, lo, hi), axes, k, st, dil)
        elif (st == 1 and lo + hi == (k - 1) * dil and out.is_contiguous() and out.numel()
              and math.prod(out.shape[min(axes):]) <= _FLAT_BLOCK):
            out = _flat_sum(out, axes, k, dil, lo)
        else:
            out = _shifted_sum(out, axes, k, st, dil, lo, hi)
    return out if out is not t else t.clone()


# Largest trailing block (entries) summed through flat offsets. The masks are cached per
# shape, and beyond this size the strided slices of ``_shifted_sum`` have inner loops
# long enough to run as fast.
_FLAT_BLOCK = 1 << 16


def _flat_sum(t: torch.Tensor, axes: Sequence[int], k: int, dil: int, lo: int) -> torch.Tensor:
    """The size-preserving, stride-1 case of ``_shifted_sum``, with the same values.

    Shifting every axis of the group by ``s`` moves a contiguous tensor's flat index by one
    constant, so each offset is one contiguous multiply-add of the flattened trailing block
    (from the group's first axis on) against a 0/1 mask of the positions whose source lies
    inside the input. The offsets are added in the same order as there (the unshifted one
    first), so the sums are the same numbers, not just close ones.
    """
    first = min(axes)
    lead = math.prod(t.shape[:first])
    flat = t.reshape(lead, -1)
    block = flat.shape[1]
    shifts = [o * dil - lo for o in range(k)]
    out = scratch.empty_like(flat)
    if flat.is_contiguous() and fused.enabled(flat):
        strides = sum(t.stride(ax) for ax in axes)
        offsets = [(s * strides, s) for s in shifts if s != 0 and abs(s * strides) < block]
        masks = [_shift_mask(tuple(t.shape[first:]), tuple(ax - first for ax in axes), s, t.dtype, t.device)
                 for _, s in offsets]
        fused.shifted_sum(flat, out, [d for d, _ in offsets], masks, 0 in shifts)
        return out.view(t.shape)
    # Windows without the unshifted offset start from zeros; the others from the input, which
    # the first shifted offset reads while it adds (one pass instead of a copy and a pass).
    # ``out=`` does not carry forward-mode tangents: outside the buffer pool (which is off for
    # them), the input is copied first.
    start = flat if 0 in shifts and scratch.active() else None
    if start is None and 0 in shifts:
        out.copy_(flat)
    elif start is None:
        out.zero_()
    for s in shifts:
        if s == 0:
            continue
        delta = s * sum(t.stride(ax) for ax in axes)
        if abs(delta) >= block:
            continue  # every source lies outside the input (the mask would be all zeros)
        mask = _shift_mask(tuple(t.shape[first:]), tuple(ax - first for ax in axes), s, t.dtype, t.device)
        if delta > 0:
            target, source, weight, rest = (slice(None, block - delta), flat[:, delta:],
                                            mask[:block - delta], slice(block - delta, None))
        else:
            target, source, weight, rest = (slice(-delta, None), flat[:, :block + delta],
                                            mask[-delta:], slice(None, -delta))
        if start is None:
            out[:, target].addcmul_(source, weight)
        else:
            torch.addcmul(start[:, target], source, weight, out=out[:, target])
            out[:, rest].copy_(start[:, rest])
            start = None
    if start is not None:
        out.copy_(start)  # only the unshifted offset lies inside the input
    return out.view(t.shape)


@functools.lru_cache(maxsize=64)
def _shift_mask(shape: tuple, axes: tuple, s: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Flat 0/1 mask over a block of ``shape``: one where every axis in ``axes`` still lies
    inside its range after moving by ``s``."""
    keep = torch.ones(shape, dtype=torch.bool, device=device)
    for ax in axes:
        index = torch.arange(shape[ax], device=device) + s
        inside = (index >= 0) & (index < shape[ax])
        keep &= inside.reshape((-1,) + (1,) * (len(shape) - ax - 1))
    return keep.reshape(-1).to(dtype)


def _padded_sum(padded: torch.Tensor, axes: Sequence[int], k: int, st: int, dil: int) -> torch.Tensor:
    size = padded.shape[axes[0]]
    n_out = (size - (k - 1) * dil - 1) // st + 1
    acc = None
    for o in range(k):
        piece = padded
        for ax in axes:
            piece = _stride(piece.narrow(ax, o * dil, (n_out - 1) * st + 1), ax, st)
        acc = piece.clone(memory_format=torch.contiguous_format) if acc is None else acc.add_(piece)
    return acc


def _shifted_sum(t: torch.Tensor, axes: Sequence[int], k: int, st: int, dil: int, lo: int, hi: int) -> torch.Tensor:
    n = t.shape[axes[0]]
    n_out = (n + lo + hi - (k - 1) * dil - 1) // st + 1
    shape = list(t.shape)
    for ax in axes:
        shape[ax] = n_out
    out = scratch.empty(shape, t)
    # Output position p reads input p * st + o * dil - lo, when that lies inside [0, n).
    spans = []
    for o in range(k):
        shift = o * dil - lo
        first = max(0, -(-(-shift) // st))  # ceil(-shift / st), at least 0
        last = min(n_out - 1, (n - 1 - shift) // st)
        if last >= first:
            spans.append((first, last - first + 1, first * st + shift))
    # Start from an offset that covers every output position (a copy, not a zero fill).
    full = [s for s in spans if s[0] == 0 and s[1] == n_out]
    if full:
        spans.remove(full[0])
        _, count, start = full[0]
        out.copy_(_slice(t, axes, start, count, st))
    else:
        out.zero_()
    for first, count, start in spans:
        target = out
        for ax in axes:
            target = target.narrow(ax, first, count)
        target.add_(_slice(t, axes, start, count, st))
    return out


def _slice(t: torch.Tensor, axes: Sequence[int], start: int, count: int, st: int) -> torch.Tensor:
    for ax in axes:
        t = _stride(t.narrow(ax, start, (count - 1) * st + 1), ax, st)
    return t


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

