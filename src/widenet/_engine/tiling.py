"""Tiles of input pairs: how a kernel over ``x1 x x2`` is cut, and how its tiles are put back.

Every kernel widenet computes over pairs of inputs goes through this module: the in-memory
kernels of architectures, ``widenet.blocked.compute`` (locally, into stores and on Dask)
and the empirical kernels of ``widenet.empirical``. So they all follow one rule of
symmetry.

**Symmetry rule** (``x2 = None``, a set of inputs against itself). Only tiles on or above the
diagonal are computed. A tile below the diagonal is the mirror image of the one above it:
rows and columns exchanged, and the *paired* trailing axes too (the two position halves of a
"full" spatial layout, the two output axes of an empirical kernel with ``outputs="full"``).
A tile on the diagonal keeps its entries above the diagonal (the values that a call with
those rows and columns as separate ``x1`` and ``x2`` gives), takes the mirror images of them
below, and averages each input against itself with its own mirror image. The result is
exactly symmetric, and its off-diagonal entries are the values of a cross-kernel call.

Tiles are written into preallocated outputs, except when autograd records the computation
(reverse-mode differentiation): then they are kept and concatenated at the end, so that no
output is written in place and the backward pass costs one pass per tile.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional, Tuple

import torch

from . import scratch

__all__ = ["Plan", "mirror", "swap_halves", "symmetric_block", "PairGrid", "RowBlocks", "blocks"]


@dataclass(frozen=True)
class Plan:
    """Tiles of ``rows x cols`` input pairs over ``n1 x n2`` (the last row and column of tiles
    smaller when the sizes divide nothing). With ``same`` (``x2 = None``), ``rows == cols``
    and only tiles on or above the diagonal are listed; the others are mirrored from them."""

    n1: int
    n2: int
    rows: int
    cols: int
    same: bool

    def __post_init__(self) -> None:
        if self.same and (self.rows != self.cols or self.n1 != self.n2):
            raise ValueError(f"Plan: a symmetric plan needs square tiles over a square kernel "
                             f"(got {self.rows} x {self.cols} tiles over {self.n1} x {self.n2})")

    @classmethod
    def square(cls, n1: int, n2: int, tile: int, same: bool) -> "Plan":
        return cls(n1, n2, tile, tile, same)

    @property
    def tile(self) -> int:
        """The side of square tiles."""
        if self.rows != self.cols:
            raise ValueError(f"Plan: tiles are {self.rows} x {self.cols}, not square")
        return self.rows

    @property
    def grid(self) -> Tuple[int, int]:
        return math.ceil(self.n1 / self.rows), math.ceil(self.n2 / self.cols)

    def tiles(self) -> List[Tuple[int, int]]:
        """``(i, j)`` of every tile to compute, row by row."""
        nr, nc = self.grid
        return [(i, j) for i in range(nr) for j in range(nc) if not (self.same and j < i)]

    def row_slice(self, i: int) -> slice:
        return slice(i * self.rows, min(self.n1, (i + 1) * self.rows))

    def col_slice(self, j: int) -> slice:
        return slice(j * self.cols, min(self.n2, (j + 1) * self.cols))

    def on_diagonal(self, i: int, j: int) -> bool:
        return self.same and i == j

    def pairs(self, i: int, j: int) -> int:
        """Input pairs the tile stands for (its mirror image included)."""
        r, c = self.row_slice(i), self.col_slice(j)
        count = (r.stop - r.start) * (c.stop - c.start)
        return count * (2 if self.same and i != j else 1)


def swap_halves(t: torch.Tensor, paired: int) -> torch.Tensor:
    """``t`` with the two halves of its last ``2 * paired`` axes exchanged (a view): an
    input's own covariance over position pairs ``(s, s')`` seen as ``(s', s)``."""
    if not paired:
        return t
    lead = list(range(t.ndim - 2 * paired))
    first = list(range(len(lead), len(lead) + paired))
    return t.permute(lead + [a + paired for a in first] + first)


def mirror(block: torch.Tensor, paired: int = 0) -> torch.Tensor:
    """The block of the transposed pairs: axes 0 and 1 exchanged and, when ``paired > 0``, the
    two halves of the last ``2 * paired`` axes too (a view)."""
    return swap_halves(block, paired).transpose(0, 1)


def symmetric_block(block: torch.Tensor, paired: int = 0) -> torch.Tensor:
    """A square diagonal block made exactly symmetric by the module's rule: entries (i, j)
    with i < j kept, those with i > j their mirror images, each (i, i) averaged with its
    mirror image. Returns a new tensor (``block`` is not modified)."""
    b = block.shape[0]
    swapped = mirror(block, paired)
    index = torch.arange(b, device=block.device)
    upper = (index[:, None] < index[None, :]).reshape((b, b) + (1,) * (block.ndim - 2))
    out = scratch.call(torch.where, upper, block, swapped, like=block)
    out.diagonal(0, 0, 1).copy_((block.diagonal(0, 0, 1) + swapped.diagonal(0, 0, 1)) / 2)
    return out


class PairGrid:
    """One pair array (``(n1, n2, *extra)``) filled tile by tile; a tile of a symmetric plan
    off the diagonal fills its mirror image too. ``differentiable``: tiles are kept and
    concatenated by ``result`` instead of written in place (see the module docstring)."""

    def __init__(self, plan: Plan, extra: Tuple[int, ...], like: torch.Tensor, *,
                 paired: int = 0, differentiable: bool = False) -> None:
        self.plan, self.paired, self.differentiable = plan, paired, differentiable
        self.blocks: Dict[Tuple[int, int], torch.Tensor] = {}
        self.out: Optional[torch.Tensor] = None
        if not differentiable:
            self.out = like.new_empty((plan.n1, plan.n2) + tuple(extra))

    def put(self, i: int, j: int, block: torch.Tensor) -> None:
        plan = self.plan
        if not self.differentiable:
            rows, cols = plan.row_slice(i), plan.col_slice(j)
            self.out[rows, cols] = block
            if plan.same and i != j:
                self.out[cols, rows] = mirror(block, self.paired)
            return
        self.blocks[i, j] = block
        if plan.same and i != j:
            self.blocks[j, i] = mirror(block, self.paired)

    def result(self) -> torch.Tensor:
        if not self.differentiable:
            return self.out
        nr, nc = self.plan.grid
        rows = [torch.cat([self.blocks[i, j] for j in range(nc)], 1) for i in range(nr)]
        return torch.cat(rows, 0)


class RowBlocks:
    """A per-input array (``(n, *extra)``) filled block by block, in place or (differentiable)
    by concatenation."""

    def __init__(self, n: int, block: int, extra: Tuple[int, ...], like: torch.Tensor, *,
                 differentiable: bool = False) -> None:
        self.n, self.block, self.differentiable = n, block, differentiable
        self.blocks: Dict[int, torch.Tensor] = {}
        self.out = None if differentiable else like.new_empty((n,) + tuple(extra))

    def put(self, i: int, values: torch.Tensor) -> None:
        if self.differentiable:
            self.blocks[i] = values
        else:
            self.out[i * self.block: min(self.n, (i + 1) * self.block)] = values

    def result(self) -> torch.Tensor:
        if not self.differentiable:
            return self.out
        return torch.cat([self.blocks[i] for i in sorted(self.blocks)], 0)


def blocks(n: int, size: int) -> Iterator[Tuple[int, int]]:
    """``(start, stop)`` of consecutive chunks of ``size`` over ``range(n)``."""
    for start in range(0, n, size):
        yield start, min(n, start + size)
