"""The input layer's kernel on a tile: ``K0(x, x') = x . x' / C`` (channels ``C``)."""

from __future__ import annotations

import math
from typing import Optional

import torch

from . import exact, scratch
from .replay import CovTape, Tapes
from .tile import Tile
from .tiling import symmetric_block

__all__ = ["input_tile"]

# Input channels up to which the full-layout input tile is summed from broadcast products:
# for one channel the GEMM below, its division and its transposing copy cost about five
# times as much.
_OUTER_CHANNELS = 4


def input_tile(xr: torch.Tensor, xc: torch.Tensor, *, same: bool, full: bool, tile: bool,
               diagonal: Optional[int], keep_r: Optional[torch.Tensor] = None,
               keep_c: Optional[torch.Tensor] = None, side_r: Optional[dict] = None,
               side_c: Optional[dict] = None, tapes: Optional[Tapes] = None) -> Tile:
    """The input layer's ``Tile`` for row inputs ``xr`` against column inputs ``xc``
    (``same``: the rows against themselves, ``xc`` ignored). ``tile=False`` propagates only the
    own covariances; those are replayed from ``tapes`` when an earlier tile recorded them.
    ``keep_r``/``keep_c`` and ``side_r``/``side_c``: the rows' and columns' padding masks and
    side inputs (see ``Tile``)."""
    c = xr.shape[1]
    spatial = tuple(xr.shape[2:])
    cov1 = _own(xr, full, None if tapes is None else tapes.side1)
    cov2 = cov1 if same else _own(xc, full, None if tapes is None else tapes.side2)
    nngp = None
    if tile:
        nngp = _pairs(xr, xc, full)
        if same:
            nngp = symmetric_block(nngp, len(spatial) if full else 0)
            nngp.diagonal(0, 0, 1).copy_(cov1.movedim(0, -1))
    out = Tile(nngp, None, cov1, cov2, width=c, diagonal=diagonal, spatial=spatial, full=full,
               keep1=keep_r, keep2=keep_r if same else keep_c, side1=side_r,
               side2=side_r if same else side_c, tapes=tapes)
    out.remask()
    return out


def _own(x: torch.Tensor, full: bool, tape: Optional[CovTape]) -> torch.Tensor:
    """Own covariances ``(B, *S)`` (diagonal layout) or ``(B, *S, *S)`` (full), recorded on
    ``tape`` or replayed from it."""
    if tape is not None and tape.input is not None:
        return tape.input
    b, c = x.shape[:2]
    spatial = tuple(x.shape[2:])
    if not (spatial and full):
        g = exact.sum(x.pow(2), 1).div_(c)
    else:
        n = math.prod(spatial)
        f = x.reshape(b, c, n)
        g = scratch.call(exact.matmul, f.transpose(1, 2), f, shape=(b, n, n)).div_(c)
        g = scratch.call(torch.add, g, g.transpose(1, 2)).div_(2)
        g = g.reshape((b,) + spatial + spatial)
    if tape is not None:
        scratch.release(g)
        tape.input = g
    return g


def _pairs(xr: torch.Tensor, xc: torch.Tensor, full: bool) -> torch.Tensor:
    """The tile ``x_i . x'_j / C`` at every position (pair) of the layout."""
    b, c = xr.shape[:2]
    m = xc.shape[0]
    spatial = tuple(xr.shape[2:])
    n = math.prod(spatial)
    if not spatial:
        return exact.matmul(xr, xc.T).div_(c)
    if not full:
        fr = xr.reshape(b, c, n).permute(2, 0, 1)
        fc = xc.reshape(m, c, n).permute(2, 1, 0)
        return exact.matmul(fr, fc).permute(1, 2, 0).div_(c).contiguous().reshape((b, m) + spatial)
    if c <= _OUTER_CHANNELS and not exact.active():
        # Few channels: a sum of broadcast products written straight into the tile's layout.
        fr = xr.reshape(b, 1, c, n, 1)
        fc = xc.reshape(1, m, c, 1, n)
        nngp = scratch.call(torch.mul, fr[:, :, 0], fc[:, :, 0])
        for i in range(1, c):
            nngp.addcmul_(fr[:, :, i], fc[:, :, i])
        if c > 1:
            nngp.div_(c)
        return nngp.reshape((b, m) + spatial + spatial)
    fr = xr.reshape(b, c, n).transpose(1, 2).reshape(b * n, c)
    fc = xc.reshape(m, c, n).transpose(1, 2).reshape(m * n, c)
    g = scratch.call(exact.matmul, fr, fc.T, shape=(b * n, m * n)).div_(c)
    g = g.reshape(b, n, m, n).permute(0, 2, 1, 3)
    return scratch.clone(g).reshape((b, m) + spatial + spatial)
