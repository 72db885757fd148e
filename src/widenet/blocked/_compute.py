"""``blocked.compute``: any kernel function over ``x1 x x2`` in memory-sized tiles, in memory
or into an on-disk store that survives interruption, on this machine or a Dask cluster."""

from __future__ import annotations

import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch

from .._engine import exact
from .._validate import as_inputs, available_memory, by_get, check_gets, check_int, check_memory
from ..errors import OutOfMemoryError, ParameterError
from ..kernel import Kernel
from ._store import Store, fingerprint
from ._tiles import PAIR, Assembly, Plan, parts, run_tile, to_numpy

OWNER = "blocked.compute"


class _Architecture:
    """A widenet architecture as a tile function within a memory budget: ``net.kernel``, or
    only ``net.ntk`` / ``net.nngp``."""

    def __init__(self, net, memory: int, get: Optional[str], reproducible: bool = False):
        self.net, self.memory, self.get, self.reproducible = net, memory, get, reproducible

    def __call__(self, x1, x2):
        method = self.net.kernel if self.get is None else getattr(self.net, self.get)
        return method(x1, x2, memory=self.memory, reproducible=self.reproducible)


class _Reproducible:
    """A callable run in reproducible mode: the widenet kernels it computes give the same
    bits whatever tile they are computed in (``widenet._engine.exact``)."""

    def __init__(self, fn):
        self.fn = fn

    def __call__(self, x1, x2):
        with exact.enabled():
            return self.fn(x1, x2)


class _Pick:
    """One matrix of a Kernel-valued function."""

    def __init__(self, fn, get: str):
        self.fn, self.get = fn, get

    def __call__(self, x1, x2):
        out = self.fn(x1, x2)
        if isinstance(out, Kernel):
            value = getattr(out, self.get)
            if value is None:
                raise ParameterError(f"{OWNER}: get={self.get!r}, but the kernel function gives no {self.get}")
            return value
        return out


def _function(fn: Any, key: Optional[str], memory: int, get: Optional[str] = None, reproducible: bool = False):
    """The tile function and the key the store records for it."""
    suffix = ("" if get is None else f" ({get} only)") + (" (reproducible)" if reproducible else "")
    if hasattr(fn, "kernel") and callable(fn.kernel) and hasattr(fn, "module"):
        return _Architecture(fn, memory, get, reproducible), (key or f"widenet architecture {fn!r}") + suffix
    if not callable(fn):
        raise ParameterError(
            f"{OWNER}: fn must be a widenet architecture or a callable (x1_block, x2_block) -> Kernel or tensor "
            f"(got {type(fn).__name__})"
        )
    if key is None:
        name = getattr(fn, "__qualname__", type(fn).__qualname__)
        key = f"callable {getattr(fn, '__module__', '?')}.{name}"
    fn = fn if get is None else _Pick(fn, get)
    return (_Reproducible(fn) if reproducible else fn), key + suffix


def _tile_size(plan_n1: int, plan_n2: int, per_pair: int, budget: int, workers: int) -> int:
    """The largest square tile whose outputs take a quarter of the budget (the rest is the
    kernel function's working set), cut further so that a cluster has tiles for every worker."""
    tile = max(1, int(math.sqrt(budget / 4 / max(per_pair, 1))))
    if workers > 1:
        # about four tiles per worker, so that the work balances and a lost worker costs little
        wanted = 4 * workers
        while tile > 1 and math.ceil(plan_n1 / tile) * math.ceil(plan_n2 / tile) < wanted:
            tile = max(1, tile // 2)
    return int(min(tile, max(plan_n1, plan_n2)))


def compute(fn: Any, x1: Any, x2: Any = None, *, memory: Any = None, tile: Optional[int] = None,
            store: Union[str, os.PathLike, None] = None, overwrite: bool = False, client: Any = None,
            key: Optional[str] = None, get: Optional[str] = None, progress: Optional[bool] = None,
            reproducible: bool = False):
    """Computes a kernel over ``x1 x x2`` tile by tile.

    Args:
        fn: a widenet architecture (its ``kernel(x1, x2)``, within the budget), or any callable
            ``(x1_block, x2_block) -> widenet.Kernel or tensor`` whose first two axes are the
            two blocks' inputs (e.g. ``lambda a, b: empirical.ntk(model, a, b)``). It is called
            with ``x2_block=None`` on the diagonal tiles of a symmetric computation.
        x1, x2: inputs; ``x2=None`` computes ``x1 x x1`` and only the tiles on or above the
            diagonal: the others are their mirror images (rows and columns exchanged, and the
            two position halves of a "full" spatial layout, or the two output axes of a 4-D
            tensor such as a full-output empirical NTK).
        memory: bytes (or "2GB") for one tile: its outputs take a quarter, the kernel
            function the rest. Default: a quarter of the memory available now.
        tile: inputs per tile side (default: from ``memory``). No divisibility rule: the last
            tiles are smaller.
        store: a directory for a zarr store. Every finished tile is written atomically and
            recorded; calling again with the same store resumes, computing only the tiles not
            yet done (a run killed at any moment loses at most the tiles in flight). The store
            records a fingerprint of the computation and refuses a different one.
        overwrite: discard an existing store at ``store`` instead of resuming it.
        client: a ``distributed.Client`` (or a scheduler address) to run the tiles as tasks
            on a Dask cluster. With a store, the workers write their tiles into it (it must be
            on a file system they share); a worker lost mid-run has its tiles recomputed.
        key: what identifies ``fn`` in the store's fingerprint. Default: the architecture's
            description (every layer and hyperparameter), or a callable's qualified name (pass
            a key that also names the callable's parameters, e.g. its model's checkpoint).
        get: "nngp" or "ntk" to compute and keep only that kernel, as a tensor (an
            architecture then computes only it: less memory and, for the NNGP, less work), or
            a tuple of names (Neural Tangents' form) for a named tuple of tensors (with a
            store, the store, which holds them).
        progress: show a progress bar with throughput and ETA (default: when the standard
            error is a terminal).
        reproducible: compute widenet kernels in reproducible mode (``Layer.kernel``'s
            ``reproducible``): every entry then has the same bits whatever tile size, memory,
            cluster or thread count computes it, and equals the one-call kernel
            ``fn.kernel(x1, x2, reproducible=True)`` exactly. A callable runs with the mode
            on, which reaches the widenet kernels it calls (other computations in it are its
            own). The store's fingerprint records the mode.

    Returns:
        Without a store, what ``fn`` returns for the whole inputs (a Kernel with per-input
        variances, or a tensor). With a store, the ``Store`` (``store.load()`` reads
        it into memory, ``store["ntk"]`` is the zarr array).
    """
    x1 = as_inputs(OWNER, "x1", x1)
    x2 = None if x2 is None else as_inputs(OWNER, "x2", x2, like=x1)
    if x1.ndim < 1 or x1.shape[0] == 0:
        raise ParameterError(f"{OWNER}: x1 must hold at least one input (got shape {tuple(x1.shape)})")
    if x2 is not None and tuple(x2.shape[1:]) != tuple(x1.shape[1:]):
        raise ParameterError(
            f"{OWNER}: x1 and x2 must have the same shape per input (got {tuple(x1.shape)} and {tuple(x2.shape)})"
        )
    budget = check_memory(OWNER, "memory", memory) if memory is not None else available_memory(x1.device) // 4
    if tile is not None:
        tile = check_int(OWNER, "tile", tile, minimum=1)
    if not isinstance(overwrite, bool):
        raise ParameterError(f"{OWNER}: overwrite must be a bool (got {overwrite!r})")
    names, many = (None, False) if get is None else check_gets(OWNER, get, ("nngp", "ntk"))
    get = None if names is None or len(names) > 1 else names[0]
    if not isinstance(reproducible, bool):
        raise ParameterError(f"{OWNER}: reproducible must be a bool (got {reproducible!r})")
    fn, fn_key = _function(fn, key, max(1, budget * 3 // 4), get, reproducible)
    if client is None:
        out = _run(fn, fn_key, x1, x2, budget, tile, store, overwrite, None, progress)
    else:
        from ._dask import connected

        with connected(client) as opened:
            out = _run(fn, fn_key, x1, x2, budget, tile, store, overwrite, opened, progress)
    if not many or store is not None:
        return out
    return by_get(names, True, lambda g: out if len(names) == 1 else _named(out, g))


def _named(out: Any, name: str) -> torch.Tensor:
    value = getattr(out, name, None) if isinstance(out, Kernel) else None
    if value is None:
        raise ParameterError(f"{OWNER}: get names {name!r}, but the kernel function gives no {name}")
    return value


def _run(fn, fn_key, x1, x2, budget, tile, store, overwrite, client, progress):
    same = x2 is None
    n1, n2 = x1.shape[0], (x1 if same else x2).shape[0]
    print_ = fingerprint(fn_key, x1, x2)

    existing = None
    if store is not None:
        path = Path(os.fspath(store))
        if path.exists() and not overwrite:
            existing = Store.open(path)
            existing.check(print_)
            existing.clean()

    if existing is not None:
        plan, meta = existing.plan, existing.meta
    else:
        # One pair through the function: the arrays it gives, their trailing shapes and dtype.
        arrays, meta = parts(OWNER, fn(x1[:1], None if same else x2[:1]))
        per_pair = sum(v[0, 0].numel() * v.element_size() for k, v in arrays.items() if k in PAIR)
        workers = 1
        if client is not None:
            from ._dask import workers as count

            workers = count(client)
        size = tile or _tile_size(n1, n2, per_pair, budget, workers)
        plan = Plan.square(n1, n2, min(size, max(n1, n2)), same)
        shapes = {k: tuple(v.shape[2:] if k in PAIR else v.shape[1:]) for k, v in arrays.items()}
        dtype = next(iter(arrays.values())).dtype
        if store is not None:
            existing = Store.create(path, print_, plan, meta, shapes, np.dtype(str(dtype).replace("torch.", "")))

    todo = plan.tiles()
    sink = existing
    if existing is not None:
        finished = existing.finished()
        todo = [t for t in todo if t not in finished]
    else:
        _check_fits(n1, n2, per_pair, x1.device)
        sink = Assembly(plan, meta, shapes, dtype, x1.device)

    show = sys.stderr.isatty() if progress is None else bool(progress)
    with _Progress(show, plan, todo) as bar:
        if client is None:
            for i, j in todo:
                tile_arrays = run_tile(fn, x1, x2, plan, i, j)
                if isinstance(sink, Store):
                    sink.write(i, j, to_numpy(tile_arrays))
                else:
                    sink.put(i, j, tile_arrays)
                bar.advance(i, j)
        else:
            from ._dask import run as run_dask

            run_dask(client, fn, x1, x2, plan, todo, None if existing is None else str(existing.path),
                     sink, bar)
    if isinstance(sink, Store):
        return sink
    return sink.result()


def _check_fits(n1: int, n2: int, per_pair: int, device) -> None:
    """Refuses, before any tile, an in-memory result larger than the memory available."""
    nbytes, available = n1 * n2 * per_pair, available_memory(device)
    if nbytes > available:
        raise OutOfMemoryError(
            f"{OWNER}: the kernels of {n1} x {n2} inputs take {nbytes / 1e9:.3g} GB, more than the "
            f"{available / 1e9:.3g} GB of memory available; pass store='kernel.zarr' to write the "
            f"tiles to disk instead of assembling them in memory"
        )


class _Progress:
    """A rich progress bar over tiles: kernel entries per second and the time left."""

    def __init__(self, show: bool, plan: Plan, todo):
        self.show, self.plan = show, plan
        self.total = sum(plan.pairs(i, j) for i, j in todo)
        self._bar = None

    def __enter__(self):
        if self.show and self.total:
            from rich.console import Console
            from rich.progress import (BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn,
                                       TimeRemainingColumn)

            self._bar = Progress(TextColumn("kernel tiles"), BarColumn(), TaskProgressColumn(),
                                 TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TextColumn("ETA"),
                                 TimeRemainingColumn(), console=Console(stderr=True), transient=False)
            self._bar.__enter__()
            self._task = self._bar.add_task("tiles", total=self.total, rate="")
            self._start = time.perf_counter()
            self._done = 0
        return self

    def advance(self, i: int, j: int) -> None:
        if self._bar is None:
            return
        pairs = self.plan.pairs(i, j)
        self._done += pairs
        rate = self._done / max(time.perf_counter() - self._start, 1e-9)
        self._bar.update(self._task, advance=pairs, rate=f"{rate:,.0f} pairs/s")

    def __exit__(self, *exc):
        if self._bar is not None:
            self._bar.__exit__(*exc)
        return False
