"""The on-disk kernel store: a zarr group whose chunks are the tiles.

Layout of a store directory:

    nngp, ntk (or kernel)   (N1, N2, *extra), one chunk per tile
    var1, var2              (N, *extra), one chunk per tile of inputs
    done                    (tile rows, tile columns) uint8, one chunk per tile: 1 once the
                            tile (and its mirror) is written

zarr's local store writes every chunk to a temporary file and renames it into place, so a
chunk is either absent or whole; a tile is marked done only after all its chunks are written.
A run killed at any moment (SIGKILL included) therefore loses at most the tiles in flight,
and a resumed run recomputes exactly the tiles not marked done.

The group's attributes record a fingerprint of the computation (the kernel function, the
inputs, their dtype and shapes); opening a store for a different computation is refused.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import numpy as np
import torch

from ..errors import ParameterError, WidenetError
from ._tiles import PAIR, Plan, build, placements

FORMAT = 1


class StoreMismatchError(WidenetError, ValueError):
    """A store holds (part of) a different computation than the one asked for."""


def _digest(x: Optional[torch.Tensor]) -> Optional[str]:
    if x is None:
        return None
    data = np.ascontiguousarray(x.detach().cpu().numpy())
    h = hashlib.sha256()
    h.update(str((tuple(data.shape), str(data.dtype))).encode())
    h.update(data.tobytes())
    return h.hexdigest()


def fingerprint(function_key: str, x1: torch.Tensor, x2: Optional[torch.Tensor]) -> Dict[str, Any]:
    """What identifies a computation: the kernel function (its key), the inputs (SHA-256 of
    their bytes), their dtype and shapes."""
    return {
        "function": function_key,
        "x1": _digest(x1),
        "x2": _digest(x2),
        "dtype": str(x1.dtype).replace("torch.", ""),
        "shape1": list(x1.shape),
        "shape2": None if x2 is None else list(x2.shape),
    }


class Store:
    """A kernel store on disk (see the module docstring). Open one with ``open_store``,
    or get one from ``blocked.compute(..., store=path)``."""

    def __init__(self, path: Path, group):
        self.path = Path(path)
        self._group = group
        attrs = dict(group.attrs)["widenet"]
        self.fingerprint: Dict[str, Any] = attrs["fingerprint"]
        self.meta: Dict[str, Any] = attrs["meta"]
        self.plan = Plan.square(*attrs["plan"])
        self.names: Tuple[str, ...] = tuple(attrs["arrays"])

    # -- creation and opening -------------------------------------------------------------
    @classmethod
    def create(cls, path: Path, print_: Dict[str, Any], plan: Plan, meta: Dict[str, Any],
               shapes: Dict[str, tuple], dtype: np.dtype) -> "Store":
        import zarr

        group = zarr.open_group(str(path), mode="w")
        t = plan.tile
        for name, extra in shapes.items():
            if name in PAIR:
                shape, chunks = (plan.n1, plan.n2) + extra, (t, t) + extra
            elif name == "var1":
                shape, chunks = (plan.n1,) + extra, (t,) + extra
            else:
                if plan.same:
                    continue
                shape, chunks = (plan.n2,) + extra, (t,) + extra
            group.create_array(name, shape=shape, chunks=chunks, dtype=dtype, fill_value=np.nan)
        group.create_array("done", shape=plan.grid, chunks=(1, 1), dtype="uint8", fill_value=0)
        names = [n for n in shapes if n in group]
        # The attributes go last: a store without them is one whose creation was interrupted.
        group.attrs["widenet"] = {"format": FORMAT, "fingerprint": print_, "meta": meta,
                                  "plan": [plan.n1, plan.n2, plan.tile, plan.same], "arrays": names}
        return cls(path, group)

    @classmethod
    def open(cls, path: Path, mode: str = "r+") -> "Store":
        import zarr

        group = zarr.open_group(str(path), mode=mode)
        if "widenet" not in dict(group.attrs):
            raise StoreMismatchError(f"blocked: {path} is not a widenet kernel store (or its creation was interrupted)")
        return cls(path, group)

    def check(self, print_: Dict[str, Any]) -> None:
        """Refuses a store made for another computation, naming what differs."""
        differ = [k for k in print_ if self.fingerprint.get(k) != print_[k]]
        if differ:
            detail = "; ".join(f"{k}: store has {self.fingerprint.get(k)!r}, this call {print_[k]!r}"
                               for k in differ if k not in ("x1", "x2")) or "the input values differ"
            raise StoreMismatchError(
                f"blocked.compute: the store at {self.path} holds a different computation ({', '.join(differ)} "
                f"differ: {detail}); pass another store path, or overwrite=True to discard it"
            )

    # -- tiles ----------------------------------------------------------------------------
    def finished(self) -> set:
        """The tiles marked done."""
        done = self._group["done"][...]
        return {(int(i), int(j)) for i, j in zip(*np.nonzero(done))}

    def write(self, i: int, j: int, tile: Dict[str, Any]) -> None:
        """Writes one tile's chunks (and its mirror's), then marks it done."""
        for name, index, value in placements(self.plan, self.meta, i, j, tile):
            self._group[name][index] = np.ascontiguousarray(value.numpy())
        self._group["done"][i, j] = 1

    def clean(self) -> None:
        """Removes temporary chunk files left by a killed writer."""
        for partial in self.path.rglob("*.partial"):
            try:
                partial.unlink()
            except OSError:
                pass

    # -- reading ----------------------------------------------------------------------------
    @property
    def complete(self) -> bool:
        return len(self.finished()) == len(self.plan.tiles())

    def __getitem__(self, name: str):
        """The zarr array ``name`` ("nngp", "ntk", "kernel", "var1", "var2")."""
        if name not in self.names:
            raise KeyError(f"the store holds {list(self.names)}, not {name!r}")
        return self._group[name]

    def load(self, device: Any = None):
        """The whole result in memory: a ``widenet.Kernel`` or a tensor, as the kernel
        function returned. Refused while tiles are missing."""
        missing = len(self.plan.tiles()) - len(self.finished())
        if missing:
            raise ParameterError(
                f"blocked: the store at {self.path} still misses {missing} of {len(self.plan.tiles())} tiles; "
                f"run blocked.compute again with this store to finish it"
            )
        arrays = {name: torch.from_numpy(np.asarray(self._group[name][...])) for name in self.names}
        if device is not None:
            arrays = {k: v.to(device) for k, v in arrays.items()}
        return build(arrays, self.meta)

    def __repr__(self) -> str:
        return (f"Store({str(self.path)!r}, shape=({self.plan.n1}, {self.plan.n2}), tile={self.plan.tile}, "
                f"done={len(self.finished())}/{len(self.plan.tiles())})")


def open_store(path: Any) -> Store:
    """Opens an existing kernel store to read it (``store.load()``, ``store["ntk"]``)."""
    path = Path(os.fspath(path))
    if not path.exists():
        raise ParameterError(f"blocked.open_store: no store at {path}")
    return Store.open(path, mode="r")
