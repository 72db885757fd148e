"""What one tile of a blocked computation computes, and how its results are laid out,
mirrored and assembled; shared by the local and the Dask runners. The tiles themselves and
the rule of symmetry are those of every widenet kernel (``widenet._engine.tiling``)."""

from __future__ import annotations

from typing import Any, Callable, Dict, Optional, Tuple

import numpy as np
import torch

from .._engine import tiling
from ..errors import ParameterError
from ..kernel import Kernel

Plan = tiling.Plan  # the engine's, for the local and Dask runners

__all__ = ["PAIR", "SINGLE", "Plan", "parts", "mirror", "run_tile", "placements", "Assembly", "build"]

# The arrays one tile gives. Pair arrays are (rows, cols, *extra); per-input arrays (rows, *extra).
PAIR = ("nngp", "ntk", "kernel")
SINGLE = ("var1", "var2")


def parts(owner: str, out: Any) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
    """A kernel function's result as named tensors and the metadata needed to rebuild it:
    a ``widenet.Kernel`` (nngp, ntk, var1, var2) or one tensor (a kernel matrix with any
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
    """The block of the transposed pair of inputs (``widenet._engine.tiling.mirror``):
    rows and columns exchanged and, where the trailing axes pair two things up, those too:
    the two position halves of a Kernel's "full" spatial layout, the two output axes of a 4-D
    tensor (an empirical NTK with ``outputs="full"``)."""
    paired = 0
    if meta["kind"] == "kernel" and meta["layout"] == "full":
        paired = meta["spatial"]
    elif meta["kind"] == "tensor" and block.ndim == 4:
        paired = 1
    return tiling.mirror(block, paired)


def run_tile(fn: Callable, x1: torch.Tensor, x2: Optional[torch.Tensor], plan: Plan, i: int, j: int,
             owner: str = "blocked.compute") -> Dict[str, torch.Tensor]:
    """One tile's arrays: ``fn(x1 rows, x2 cols)``, or ``fn(rows, None)`` on the diagonal of
    a symmetric computation (so that those tiles are exactly symmetric). Per-input arrays are
    kept only by the tiles that own them (var1: first column, or the diagonal; var2: first
    row)."""
    rows, cols = plan.row_slice(i), plan.col_slice(j)
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
    rows, cols = plan.row_slice(i), plan.col_slice(j)
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
