"""The Dask backend: tiles as tasks on a ``distributed`` cluster.

The kernel function and the inputs are scattered to every worker once; each tile is one task
with a deterministic key. With a store, a task writes its tile into the (shared) store and
marks it done, returning nothing; without one, it returns the tile's arrays to the client.
A worker that dies mid-run loses only its tasks in flight: the scheduler runs them again on
another worker (and they overwrite any chunk they had half-written, atomically)."""

from __future__ import annotations

import contextlib
import hashlib
from typing import Any, Dict, Optional

import torch

from ..errors import ParameterError
from ._tiles import Plan, run_tile, to_numpy

_STORES: Dict[str, Any] = {}


@contextlib.contextmanager
def connected(client: Any):
    """A ``distributed.Client`` from a client (used as it is) or a scheduler address (a client
    opened for the call and closed after it)."""
    from distributed import Client

    if isinstance(client, Client):
        yield client
    elif isinstance(client, str):
        with Client(client) as opened:
            yield opened
    else:
        raise ParameterError(
            f"blocked.compute: client must be a distributed.Client or a scheduler address such as "
            f"'tcp://host:8786' (got {type(client).__name__})"
        )


def workers(client) -> int:
    """Threads across the cluster's workers."""
    info = client.scheduler_info()
    return max(1, sum(w.get("nthreads", 1) for w in info.get("workers", {}).values()))


_PREPARED = False


def _malloc() -> None:
    """Dask's nanny starts workers with ``MALLOC_TRIM_THRESHOLD_=65536``, which also fixes
    glibc's mmap threshold at 128 kB: every large temporary tensor is then mapped and unmapped
    again, and kernel tiles run several times slower (``benchmarks/blocked_scale.py`` shows
    it). A worker running widenet's tiles maps only blocks over 64 MB and keeps up to 256 MB
    of freed memory for reuse (glibc only; elsewhere nothing changes)."""
    global _PREPARED
    if _PREPARED:
        return
    _PREPARED = True
    try:
        import ctypes
        import ctypes.util

        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        libc.mallopt(m_mmap_threshold, 64 * 2**20)
        libc.mallopt(m_trim_threshold, 256 * 2**20)
    except (OSError, AttributeError):
        pass


def _threads() -> None:
    """Torch uses the worker's threads, not every core of the machine (workers share it)."""
    _malloc()
    try:
        from distributed import get_worker

        worker = get_worker()
        threads = getattr(worker, "nthreads", None) or getattr(worker.state, "nthreads", 1)
        if torch.get_num_threads() != threads:
            torch.set_num_threads(int(threads))
    except (ImportError, ValueError, AttributeError):
        pass


def _task(fn, x1, x2, plan: Plan, i: int, j: int, store: Optional[str]):
    _threads()
    arrays = to_numpy(run_tile(fn, x1, x2, plan, i, j))
    if store is None:
        return i, j, arrays
    from ._store import Store

    if store not in _STORES:
        _STORES[store] = Store.open(store)
    _STORES[store].write(i, j, arrays)
    return i, j, None


def run(client: Any, fn, x1: torch.Tensor, x2: Optional[torch.Tensor], plan: Plan, todo, store: Optional[str],
        sink, bar) -> None:
    from distributed import as_completed

    if not todo:
        return
    token = hashlib.sha256(repr((plan, store, id(fn), x1.shape, tuple(todo[:1]))).encode()).hexdigest()[:16]
    shared = client.scatter([fn, x1, x2], broadcast=True, hash=False)
    futures = [client.submit(_task, *shared, plan, i, j, store, key=f"widenet-tile-{token}-{i}-{j}", retries=2)
               for i, j in todo]
    try:
        for future in as_completed(futures):
            i, j, arrays = future.result()
            if arrays is not None:
                sink.put(i, j, arrays)
            bar.advance(i, j)
    finally:
        for future in futures:
            future.release()
