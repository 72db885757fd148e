"""Solvers on a Dask cluster: the kernel's row blocks live on the workers.

``ClusterRows`` holds a kernel matrix ``K(x, columns)`` as row blocks that the workers compute
(from the kernel function, scattered to every worker once) or read (from a store on a shared
disk), and keep in their memory as futures; every product ``K v``, ``K^T (K v)``, ``K^T y`` is
one task per block, and only vectors travel between the client and the workers. The kernel is
never gathered on one machine.

A worker that dies loses its blocks; the scheduler computes them again on another worker from
their tasks (the function and inputs are replicated on every worker), so the result does not
change: a block's bits depend only on its inputs in reproducible mode, and partial products
are summed on the client in block order, whichever worker made them.
"""

from __future__ import annotations

import hashlib
import itertools
from typing import Any, Optional

import torch

from ..errors import ParameterError

_IDS = itertools.count()


def check_workers(client: Any, owner: str) -> None:
    """Every worker can import widenet (its tasks run widenet's code), or a clear error first."""
    def probe():  # defined here, so that it travels by value even where widenet does not import
        import importlib.util

        try:
            return importlib.util.find_spec("widenet") is not None
        except (ImportError, ValueError):
            return False

    answers = client.run(probe)
    missing = sorted(address for address, ok in answers.items() if not ok)
    if not answers:
        raise ParameterError(f"{owner}: the Dask cluster has no workers")
    if missing:
        raise ParameterError(f"{owner}: the Dask workers {', '.join(missing)} cannot import widenet; install it in "
                             f"the workers' environment (pip install widenet, or the same editable checkout)")


def _threads() -> None:
    from ._dask import _threads as set_threads

    set_threads()


def _block(source, start: int, stop: int, dtype) -> torch.Tensor:
    """Rows ``start:stop``: ``("fn", fn, x, columns)`` computes them, ``("store", path, name)``
    reads them from a store."""
    _threads()
    if source[0] == "fn":
        _, fn, x, columns = source
        out = fn(x[start:stop], x if columns is None else columns)
        if columns is None:
            # the rows' own square: x against itself, whose diagonal the engine computes as
            # each input's own variance (a pair of equal inputs computed as two would carry
            # an error of sqrt(eps) through arccos-type rules)
            out = out if isinstance(out, torch.Tensor) else torch.as_tensor(out)
            out[:, start:stop] = torch.as_tensor(fn(x[start:stop], None)).to(out.dtype)
    else:
        from ._store import Store

        _, path, name = source
        out = Store.open(path)[name][start:stop]
    out = out if isinstance(out, torch.Tensor) else torch.as_tensor(out)
    # kept in the narrower of the kernel's dtype and the solver's: a float32 kernel under a
    # float64 solver stays float32 on the worker (half the memory) and is converted block by
    # block inside each product, as the single-process solvers stream it; the products are
    # the same numbers either way (the conversion is exact and deterministic)
    return out if out.element_size() <= torch.empty((), dtype=dtype).element_size() else out.to(dtype)


def _operands(v: Optional[torch.Tensor], index: Optional[torch.Tensor], dtype: torch.dtype) -> tuple:
    return v, index, dtype


def _op(kind: str, block, start: int, stop: int, operands: tuple):
    """One block's share of a product. ``block`` is the block itself (kept on the worker) or
    the recipe to compute it (``cache=False``)."""
    v, index, dtype = operands
    if isinstance(block, tuple):
        block = _block(block[0], start, stop, block[1])
    if kind in ("diagonal", "cols", "cols_t", "cols_gram"):  # a few columns: converted after selecting
        c = (torch.diagonal(block[:, start:stop]) if kind == "diagonal" else block[:, index]).to(dtype)
        if kind == "diagonal":
            return c.clone()
        if kind == "cols":  # K_b[:, index] u
            return c @ v
        if kind == "cols_t":  # K_b[:, index]^T r_b
            return c.T @ v[start:stop]
        return c.T @ c  # cols_gram: K_b[:, index]^T K_b[:, index]
    block = block.to(dtype)
    if kind == "matmul":  # (K v)[start:stop]
        return block @ v
    if kind == "gram":  # K_b^T (K_b v)
        return block.T @ (block @ v)
    if kind == "tmatmul":  # K_b^T y_b
        return block.T @ v[start:stop]
    raise ValueError(kind)  # pragma: no cover - internal


class ClusterRows:
    """A kernel matrix ``(n, m)`` as row blocks on a Dask cluster (see the module docstring).

    ``cache=True`` computes every block once and keeps it on its worker; ``cache=False``
    computes each block inside every product again (worker memory of one block)."""

    def __init__(self, client: Any, source: tuple, n: int, m: int, block: int, dtype: torch.dtype,
                 cache: bool = True) -> None:
        self.client, self.n, self.m, self.dtype = client, n, m, dtype
        self.bounds = [(s, min(n, s + block)) for s in range(0, n, block)]
        self._given, self._cache, self._ids = source, cache, (n, m, block)
        self._place()

    def _place(self) -> None:
        """Scatter the source and submit the blocks (again, after a worker's death lost a
        dependency for good: the blocks are the same numbers wherever they are computed)."""
        client, source = self.client, self._given
        n, m, block = self._ids
        token = hashlib.sha256(f"{next(_IDS)}-{id(self)}-{n}-{m}-{block}".encode()).hexdigest()[:16]
        self.token = token
        if source[0] == "fn":
            _, fn, x, columns = source
            shared = client.scatter([fn, x, columns], broadcast=True, hash=False)
            self.source = ("fn", *shared)
        else:
            self.source = source
        if self._cache:
            self.blocks = [client.submit(_block, self.source, s, e, self.dtype, key=f"widenet-rows-{token}-{s}",
                                         retries=2) for s, e in self.bounds]
        else:
            self.blocks = [(self.source, self.dtype)] * len(self.bounds)

    @classmethod
    def of_function(cls, client, fn, x: torch.Tensor, columns: Optional[torch.Tensor], block: int, dtype,
                    cache: bool = True) -> "ClusterRows":
        m = x.shape[0] if columns is None else columns.shape[0]
        return cls(client, ("fn", fn, x, columns), x.shape[0], m, block, dtype, cache)

    @classmethod
    def of_store(cls, client, path: str, name: str, n: int, m: int, block: int, dtype) -> "ClusterRows":
        return cls(client, ("store", path, name), n, m, block, dtype)

    def _map(self, kind: str, v: Optional[torch.Tensor] = None, index: Optional[torch.Tensor] = None) -> list:
        """Every block's share of a product, in block order. A round that a dying worker
        cancels (its results gone while they were fetched) runs again: the shares are the
        same numbers whichever worker computes them."""
        from distributed.client import CancelledError

        for attempt in range(3):
            try:
                return self._round(kind, v, index)
            except CancelledError:
                if attempt == 2:
                    raise
                if attempt == 1:  # cancelled twice: a dependency is lost for good, place anew
                    self._place()
        raise AssertionError("unreachable")  # pragma: no cover

    def _round(self, kind: str, v: Optional[torch.Tensor], index: Optional[torch.Tensor]) -> list:
        client = self.client
        # the operands as a task (not scattered data): a worker that dies holding them has
        # them made again from the task, as its blocks
        operands = client.submit(_operands, v, index, self.dtype, pure=False)
        futures = [client.submit(_op, kind, block, s, e, operands, pure=False, retries=2)
                   for block, (s, e) in zip(self.blocks, self.bounds)]
        try:
            return client.gather(futures)
        finally:
            for f in futures + [operands]:
                f.release()

    def _sum(self, parts: list) -> torch.Tensor:
        out = parts[0].clone()
        for p in parts[1:]:  # in block order: the same sum whichever worker made each part
            out += p
        return out

    def matmul(self, v: torch.Tensor) -> torch.Tensor:
        return torch.cat(self._map("matmul", v))

    def gram(self, v: torch.Tensor) -> torch.Tensor:
        return self._sum(self._map("gram", v))

    def transpose_matmul(self, y: torch.Tensor) -> torch.Tensor:
        return self._sum(self._map("tmatmul", y))

    def diagonal(self) -> torch.Tensor:
        return torch.cat(self._map("diagonal"))

    def columns_matmul(self, index: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        return torch.cat(self._map("cols", u, index))

    def columns_transpose_matmul(self, index: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        return self._sum(self._map("cols_t", r, index))

    def columns_gram(self, index: torch.Tensor) -> torch.Tensor:
        return self._sum(self._map("cols_gram", torch.zeros(0), index))

    def release(self) -> None:
        for f in self.blocks:
            if hasattr(f, "release"):
                f.release()
