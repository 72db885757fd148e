"""Tiles: how a kernel over ``x1 x x2`` is cut, what one tile computes, and how a tile's
results are laid out, mirrored and assembled. Shared by the local and the Dask runners."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import torch

from ..errors import ParameterError
from ..kernel import Kernel

# The arrays one tile gives. Pair arrays are (rows, cols, *extra); per-input arrays (rows, *extra).
PAIR = ("nngp", "ntk", "kernel")
SINGLE = ("var1", "var2")


@dataclass(frozen=True)
class Plan:
    """Tiles of ``tile x tile`` input pairs over ``n1 x n2`` (the last row and column of
    tiles smaller when ``tile`` divides nothing); with ``same``, only tiles on or above the
    diagonal are computed and the others mirrored from them."""

    n1: int
    n2: int
    tile: int
    same: bool

    @property
    def grid(self) -> Tuple[int, int]:
        return math.ceil(self.n1 / self.tile), math.ceil(self.n2 / self.tile)

    def tiles(self) -> List[Tuple[int, int]]:
        rows, cols = self.grid
        return [(i, j) for i in range(rows) for j in range(cols) if not (self.same and j < i)]

    def rows(self, i: int) -> slice:
        return slice(i * self.tile, min(self.n1, (i + 1) * self.tile))

    def cols(self, j: int) -> slice:
        return slice(j * self.tile, min(self.n2, (j + 1) * self.tile))

    def pairs(self, i: int, j: int) -> int:
        """Input pairs the tile stands for (mirrored ones included)."""
        r, c = self.rows(i), self.cols(j)
        count = (r.stop - r.start) * (c.stop - c.start)
        return count * (2 if self.same and i != j else 1)


def parts(owner: str, out: Any) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
    """A kernel function's result as named tensors and the metadata needed to rebuild it:
    a :class:`widenet.Kernel` (nngp, ntk, var1, var2) or one tensor (a kernel matrix with any
    trailing axes, e.g. an empirical NTK)."""
    if isinstance(out, Kernel):
        arrays = {"nngp": out.nngp, "var1": out.var1}
        if out.ntk is not None:
            arrays["ntk"] = out.ntk
        if out.var2 is not None:
            arrays["var2"] = out.var2
        meta = {"kind": "kernel", "is_gaussian": bool(out.is_gaussian), "width": int(out.width),
                "layout": out.layout, "spatial": len(out.spatial)}
        return {k: v.detach() for k, v in arrays.items()}, meta
    if isinstance(out, torch.Tensor):
        if out.ndim < 2:
            raise ParameterError(
                f"{owner}: the kernel function must return a widenet.Kernel or a tensor (x1 block, x2 block, ...) "
                f"(got a tensor of shape {tuple(out.shape)})"
            )
        return {"kernel": out.detach()}, {"kind": "tensor", "ndim": out.ndim}
    raise ParameterError(
        f"{owner}: the kernel function must return a widenet.Kernel or a tensor (got {type(out).__name__})"
    )


def mirror(name: str, block: torch.Tensor, meta: Dict[str, Any]) -> torch.Tensor:
    """The block of the transposed pair of inputs: rows and columns exchanged and, where
    the trailing axes pair two things up, those too: the two position halves of a Kernel's
    "full" spatial layout, the two output axes of a 4-D tensor (an empirical NTK with
    ``outputs="full"``)."""
    order = [1, 0]
    if meta["kind"] == "kernel" and meta["layout"] == "full" and meta["spatial"]:
        s = meta["spatial"]
        order += list(range(2 + s, 2 + 2 * s)) + list(range(2, 2 + s))
    elif meta["kind"] == "tensor" and block.ndim == 4:
        order += [3, 2]
    else:
        order += list(range(2, block.ndim))
    return block.permute(order)


def run_tile(fn: Callable, x1: torch.Tensor, x2: Optional[torch.Tensor], plan: Plan, i: int, j: int,
             owner: str = "blocked.compute") -> Dict[str, torch.Tensor]:
    """One tile's arrays: ``fn(x1 rows, x2 cols)``, or ``fn(rows, None)`` on the diagonal of
    a symmetric computation (so that those tiles are exactly symmetric). Per-input arrays are
    kept only by the tiles that own them (var1: first column, or the diagonal; var2: first
    row)."""
    rows, cols = plan.rows(i), plan.cols(j)
    # Fresh copies: the allocator aligns them alike wherever the inputs came from (a Dask
    # worker's deserialized buffer, say), and BLAS rounding can depend on alignment.
    a = x1[rows].clone()
    if plan.same:
        out = fn(a, None) if i == j else fn(a, x1[cols].clone())
    else:
        out = fn(a, x2[cols].clone())
    arrays, _ = parts(owner, out)
    keep = {k: v for k, v in arrays.items() if k in PAIR}
    if "var1" in arrays and (j == i if plan.same else j == 0):
        keep["var1"] = arrays["var1"]
    if "var2" in arrays and not plan.same and i == 0:
        keep["var2"] = arrays["var2"]
    return keep


def placements(plan: Plan, meta: Dict[str, Any], i: int, j: int, tile: Dict[str, Any]):
    """Where a tile's arrays go in the whole result: ``(name, index, tensor)`` for its block,
    the mirrored block of a symmetric computation, and the per-input arrays it owns."""
    rows, cols = plan.rows(i), plan.cols(j)
    for name, value in tile.items():
        value = torch.as_tensor(value)
        if name in PAIR:
            yield name, (rows, cols), value
            if plan.same and i != j:
                yield name, (cols, rows), mirror(name, value, meta)
        else:
            yield name, rows if name == "var1" else cols, value


def to_numpy(arrays: Dict[str, torch.Tensor]) -> Dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy() for k, v in arrays.items()}


class Assembly:
    """The in-memory result, filled tile by tile."""

    def __init__(self, plan: Plan, meta, shapes, dtype, device):
        self.plan, self.meta = plan, meta
        self.arrays = {}
        for name, extra in shapes.items():
            if name in PAIR:
                self.arrays[name] = torch.empty((plan.n1, plan.n2) + extra, dtype=dtype, device=device)
            elif name == "var1":
                self.arrays[name] = torch.empty((plan.n1,) + extra, dtype=dtype, device=device)
            elif name == "var2" and not plan.same:
                self.arrays[name] = torch.empty((plan.n2,) + extra, dtype=dtype, device=device)

    def put(self, i: int, j: int, tile: Dict[str, Any]) -> None:
        for name, index, value in placements(self.plan, self.meta, i, j, tile):
            self.arrays[name][index] = value

    def result(self):
        return build(self.arrays, self.meta)


def build(arrays: Dict[str, torch.Tensor], meta: Dict[str, Any]):
    """The function's kind of result from whole arrays."""
    if meta["kind"] == "tensor":
        return arrays["kernel"]
    return Kernel(arrays["nngp"], arrays.get("ntk"), arrays["var1"], arrays.get("var2"),
                  is_gaussian=meta["is_gaussian"], width=meta["width"], layout=meta["layout"])
