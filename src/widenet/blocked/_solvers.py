"""Solvers for kernels that do not fit in memory: conjugate gradients over a stored kernel
streamed row block by row block, and FALKON (Rudi, Carratino and Rosasco 2017, arXiv
1705.10958): Nystrom-preconditioned conjugate gradients with M centers."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Optional

import numpy as np
import torch

from .._validate import (as_inputs, as_tensor, available_memory, by_get, check_choice, check_float, check_gets,
                         check_int, check_memory)
from ..errors import NumericalError, ParameterError, ShapeError
from ..kernel import Kernel
from ._store import Store


@dataclass
class CGResult:
    """``solution`` of ``(K + reg I) x = b`` (shape of ``b``), the iterations taken and the
    final relative residual of each column."""

    solution: torch.Tensor
    iterations: int
    residual: torch.Tensor


class _Report:
    """Each CG iteration to the user: ``callback(iteration, residual)`` (the largest relative
    residual over the columns) and, with ``progress``, a rich bar on the standard error whose
    length is the residual's way down to ``tol`` on a log scale, so that its ETA follows the
    convergence rate."""

    def __init__(self, owner: str, tol: float, callback: Optional[Callable], progress: bool):
        if callback is not None and not callable(callback):
            raise ParameterError(f"{owner}: callback must be a callable (iteration, residual) -> None or None "
                                 f"(got {callback!r})")
        if not isinstance(progress, bool):
            raise ParameterError(f"{owner}: progress must be a bool (got {progress!r})")
        self.owner, self.tol, self.callback, self.progress = owner, tol, callback, progress
        self._bar = None

    def __enter__(self):
        return self

    def __call__(self, iteration: int, residual: float) -> None:
        if self.callback is not None:
            self.callback(iteration, residual)
        if not self.progress:
            return
        if self._bar is None:
            self._start_bar(residual)
        done = math.log10(self._first / max(residual, self.tol)) if residual > 0 else self._total
        self._bar.update(self._task, completed=min(max(done, 0.0), self._total), iteration=iteration,
                         residual=f"{residual:.2e}")

    def _start_bar(self, residual: float) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self._first = max(residual, self.tol)
        self._total = max(math.log10(self._first / self.tol), 1e-9)
        self._bar = Progress(TextColumn(f"{self.owner}"), BarColumn(), TextColumn("iteration {task.fields[iteration]}"),
                             TextColumn("residual {task.fields[residual]} -> {task.fields[goal]}"),
                             TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                             console=Console(stderr=True))
        self._bar.__enter__()
        self._task = self._bar.add_task("cg", total=self._total, iteration=0, residual=f"{residual:.2e}",
                                        goal=f"{self.tol:.0e}")

    def __exit__(self, *exc):
        if self._bar is not None:
            self._bar.__exit__(*exc)
        return False


def conjugate_gradients(apply: Callable[[torch.Tensor], torch.Tensor], b: torch.Tensor, *, tol: float,
                        maxiter: int, precondition: Optional[Callable] = None, owner: str = "blocked.cg",
                        report: Optional[Callable[[int, float], None]] = None):
    """Column-wise (preconditioned) CG on a symmetric positive-definite operator: every column of
    ``b`` takes its own steps; stops when every relative residual is below ``tol``.
    ``report(iteration, residual)`` is called before the first step and after each."""
    x = torch.zeros_like(b)
    r = b.clone()
    z = r if precondition is None else precondition(r)
    p = z.clone()
    rz = (r * z).sum(0)
    norm_b = b.norm(dim=0).clamp_min(torch.finfo(b.dtype).tiny)
    rel = r.norm(dim=0) / norm_b
    it = 0
    if report is not None:
        report(it, float(rel.max()))
    while it < maxiter and bool((rel > tol).any()):
        ap = apply(p)
        curvature = (p * ap).sum(0)
        if bool((curvature[rel > tol] <= 0).any()):
            raise NumericalError(
                f"{owner}: the kernel is not positive definite (conjugate gradients met a direction of "
                f"curvature {float(curvature.min()):.3g} at iteration {it}); raise diag_reg"
            )
        active = (rel > tol).to(b.dtype)
        alpha = active * rz / torch.where(curvature > 0, curvature, torch.ones_like(curvature))
        x += alpha * p
        r -= alpha * ap
        z = r if precondition is None else precondition(r)
        rz_new = (r * z).sum(0)
        beta = rz_new / torch.where(rz != 0, rz, torch.ones_like(rz))
        p = z + beta * p
        rz = rz_new
        rel = r.norm(dim=0) / norm_b
        it += 1
        if report is not None:
            report(it, float(rel.max()))
    return x, it, rel


class _Rows:
    """A kernel matrix read row block by row block: a tensor, an array, a zarr array or a
    ``Store``'s pair array."""

    def __init__(self, owner: str, kernel: Any, get: str, memory: Optional[int], dtype: torch.dtype):
        if isinstance(kernel, Store):
            names = kernel.names
            name = get if get in names else ("kernel" if "kernel" in names else None)
            if name is None:
                raise ParameterError(f"{owner}: the store holds {list(names)}, not {get!r}")
            source = kernel[name]
        elif isinstance(kernel, Kernel):
            source = getattr(kernel, get)
        else:
            source = kernel
        if isinstance(source, np.ndarray):
            source = torch.from_numpy(source)
        shape = tuple(source.shape)
        if len(shape) != 2 or shape[0] != shape[1]:
            raise ShapeError(f"{owner}: the kernel must be a square (N, N) matrix (got shape {shape})")
        self.source, self.n, self.dtype = source, shape[0], dtype
        budget = memory if memory is not None else available_memory(torch.device("cpu")) // 8
        self.block = max(1, min(self.n, budget // (8 * self.n)))

    def rows(self, start: int, stop: int) -> torch.Tensor:
        block = self.source[start:stop]
        block = block if isinstance(block, torch.Tensor) else torch.from_numpy(np.asarray(block))
        if not bool(torch.isfinite(block).all()):
            raise NumericalError(f"blocked.cg: rows {start}:{stop} of the kernel hold NaN or Inf (an unfinished store?)")
        return block.to(self.dtype)

    def diagonal(self) -> torch.Tensor:
        out = torch.empty(self.n, dtype=self.dtype)
        for start in range(0, self.n, self.block):
            stop = min(self.n, start + self.block)
            out[start:stop] = torch.diagonal(self.rows(start, stop)[:, start:stop])
        return out

    def matmul(self, v: torch.Tensor) -> torch.Tensor:
        out = torch.empty_like(v)
        for start in range(0, self.n, self.block):
            stop = min(self.n, start + self.block)
            out[start:stop] = self.rows(start, stop) @ v
        return out

    def _column_blocks(self, index: torch.Tensor):
        for start in range(0, self.n, self.block):
            stop = min(self.n, start + self.block)
            yield start, stop, self.rows(start, stop)[:, index]

    def columns_matmul(self, index: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        return torch.cat([c @ u for _, _, c in self._column_blocks(index)])

    def columns_transpose_matmul(self, index: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        out = torch.zeros((len(index),) + r.shape[1:], dtype=self.dtype)
        for start, stop, c in self._column_blocks(index):
            out += c.T @ r[start:stop]
        return out

    def columns_gram(self, index: torch.Tensor) -> torch.Tensor:
        out = torch.zeros((len(index), len(index)), dtype=self.dtype)
        for _, _, c in self._column_blocks(index):
            out += c.T @ c
        return out

    def release(self) -> None:
        pass


def _nystrom_preconditioner(owner: str, op, reg: float, m: int, seed: int, dtype: torch.dtype) -> Callable:
    """``r -> P^-1 r`` for ``P = C W^-1 C^T + reg I``, the Nystrom approximation of ``K + reg I``
    on ``m`` columns drawn uniformly (``C = K[:, idx]``, ``W = K[idx, idx]``), by the Woodbury
    identity: ``P^-1 r = (r - C S^-1 C^T r) / reg`` with ``S = reg W + C^T C`` (``m x m``)."""
    if reg <= 0:
        raise ParameterError(f"{owner}: precondition='nystrom' needs a ridge (diag_reg > 0)")
    index = torch.randperm(op.n, generator=torch.Generator().manual_seed(int(seed)))[:m].sort().values
    gram = op.columns_gram(index)
    w = op.columns_transpose_matmul(index, _selector(op.n, index, dtype))  # C^T E = C[idx]^T = W
    s_matrix = reg * (w + w.T) / 2 + gram
    jitter = m * torch.finfo(dtype).eps * float(s_matrix.diagonal().mean())
    chol = _cholesky_upper(owner, s_matrix + jitter * torch.eye(m, dtype=dtype), "the Nystrom preconditioner")

    def apply(r: torch.Tensor) -> torch.Tensor:
        t = op.columns_transpose_matmul(index, r)
        t = torch.cholesky_solve(t, chol, upper=True)
        return (r - op.columns_matmul(index, t)) / reg

    return apply


def _selector(n: int, index: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``E`` (n x m) with ``E[idx_j, j] = 1``: ``K[:, idx]^T E = K[idx, idx]``."""
    e = torch.zeros((n, len(index)), dtype=dtype)
    e[index, torch.arange(len(index))] = 1
    return e


def cg(kernel: Any, y: Any, diag_reg: float = 0.0, *, get: Any = "ntk", diag_reg_absolute_scale: bool = False,
       tol: float = 1e-10, maxiter: Optional[int] = None, memory: Any = None,
       dtype: torch.dtype = torch.float64, callback: Optional[Callable[[int, float], None]] = None,
       progress: bool = False, x: Any = None, client: Any = None, precondition: Optional[str] = None,
       n_centers: int = 500, seed: int = 0, reproducible: bool = False) -> CGResult:
    """Solves ``(K + reg I) x = y`` by conjugate gradients, reading ``K`` row block by row block
    (a ``Store`` on disk, a zarr or numpy array, a tensor or a Kernel), so that only
    ``memory`` bytes of it are in memory at once.

    With ``x``, ``kernel`` is a widenet architecture or kernel function (as in ``compute``) and
    ``K = kernel(x, x)``. With ``client`` (a ``distributed.Client`` or a scheduler address) the
    solve runs on a Dask cluster where the kernel is: the workers compute ``K``'s row blocks
    (given ``x``) or read them from a ``Store`` on a disk they share, keep them, and do every
    product ``K v`` there; only vectors travel, the kernel is never gathered on one machine,
    and a worker that dies has its blocks computed again elsewhere (``reproducible=True`` makes
    them the same bits). ``memory`` then bounds one block on a worker.

    ``precondition="nystrom"`` preconditions CG with the Nystrom approximation of ``K + reg I``
    on ``n_centers`` columns drawn uniformly (``seed``), as FALKON does, applied by the
    Woodbury identity (``P^-1 r = (r - C S^-1 C^T r) / reg``, ``C = K[:, idx]``,
    ``S = reg K[idx, idx] + C^T C``): when the spectrum decays fast, a few tens of iterations
    instead of hundreds or thousands (``diag_reg > 0`` needed).

    ``reg = diag_reg * Tr K / N`` (relative to the mean diagonal, as the predict functions)
    unless ``diag_reg_absolute_scale``. ``y`` is ``(N,)`` or ``(N, k)``; each column is solved
    to a relative residual ``tol``. Returns a ``CGResult``; ``K_test_train @ solution``
    is then the posterior mean (``gp_inference``) or the converged NTK prediction.

    ``callback(iteration, residual)`` is called before the first step and after each (the
    largest relative residual over the columns); ``progress=True`` shows a bar with the
    iteration, the residual and the time left on the standard error. ``get`` names the kernel
    of a Store or Kernel ("nngp" or "ntk"); a tuple of names solves against each and returns
    a named tuple of results.

    Example:

        >>> k = wn.Serial(wn.Dense(1), wn.Relu(), wn.Dense(1)).kernel(x)
        >>> out = wn.blocked.cg(k, torch.ones(len(x), dtype=x.dtype), diag_reg=1e-3,
        ...                     callback=lambda it, res: None)
        >>> out.solution.shape == (len(x),)
        True
    """
    owner = "blocked.cg"
    names, many = check_gets(owner, get, ("nngp", "ntk"))
    if many:
        return by_get(names, True, lambda g: cg(
            kernel, y, diag_reg, get=g, diag_reg_absolute_scale=diag_reg_absolute_scale, tol=tol, maxiter=maxiter,
            memory=memory, dtype=dtype, callback=callback, progress=progress))
    get = names[0]
    budget = None if memory is None else check_memory(owner, "memory", memory)
    diag_reg = check_float(owner, "diag_reg", diag_reg, minimum=0.0)
    tol = check_float(owner, "tol", tol, minimum=0.0, exclusive_minimum=True)
    if precondition is not None:
        check_choice(owner, "precondition", precondition, ("nystrom",))
    n_centers = check_int(owner, "n_centers", n_centers, minimum=1)
    if not isinstance(reproducible, bool):
        raise ParameterError(f"{owner}: reproducible must be a bool (got {reproducible!r})")
    if x is not None:
        x = as_inputs(owner, "x", x)
    elif client is not None and not isinstance(kernel, Store):
        raise ParameterError(f"{owner}: with client, give the kernel as a Store on a disk the workers share, or "
                             f"as an architecture or kernel function with x= (the workers compute it); a "
                             f"{type(kernel).__name__} is already on this machine")
    y = as_tensor(owner, "y", y).to(dtype)
    flat = y.ndim == 1
    y = y[:, None] if flat else y
    n = x.shape[0] if x is not None else None
    if n is not None and y.shape[0] != n:
        raise ShapeError(f"{owner}: y must have one row per input: x {tuple(x.shape)}, y {tuple(y.shape)}")
    if client is None:
        return _cg(owner, _local_rows(owner, kernel, x, get, budget, dtype, reproducible), y, flat, diag_reg,
                   diag_reg_absolute_scale, tol, maxiter, precondition, n_centers, seed, dtype, callback, progress)
    from ._dask import connected

    with connected(client) as opened:
        op = _cluster_rows(owner, opened, kernel, x, get, budget, dtype, reproducible)
        try:
            return _cg(owner, op, y, flat, diag_reg, diag_reg_absolute_scale, tol, maxiter, precondition, n_centers,
                       seed, dtype, callback, progress)
        finally:
            op.release()


def _local_rows(owner, kernel, x, get, budget, dtype, reproducible):
    if x is None:
        return _Rows(owner, kernel, get, budget, dtype)
    from ._compute import compute

    return _Rows(owner, compute(kernel, x, memory=budget, get=get, progress=False, reproducible=reproducible),
                 get, budget, dtype)


def _cluster_rows(owner, client, kernel, x, get, budget, dtype, reproducible):
    from ._cluster import ClusterRows, check_workers
    from ._compute import _function
    from ._dask import workers

    check_workers(client, owner)
    per_worker = budget if budget is not None else available_memory(torch.device("cpu")) // 8
    if x is not None:
        n = x.shape[0]
        fn, _ = _function(kernel, None, per_worker, get, reproducible)
        return ClusterRows.of_function(client, fn, x, None, _cluster_block(n, n, per_worker, workers(client)), dtype)
    names = kernel.names
    name = get if get in names else ("kernel" if "kernel" in names else None)
    if name is None:
        raise ParameterError(f"{owner}: the store holds {list(names)}, not {get!r}")
    n, m = kernel[name].shape[:2]
    if n != m:
        raise ShapeError(f"{owner}: the kernel must be a square (N, N) matrix (got shape {(n, m)})")
    return ClusterRows.of_store(client, str(kernel.path), name, n, n, _cluster_block(n, n, per_worker,
                                                                                    workers(client)), dtype)


def _cluster_block(n: int, m: int, budget: int, workers: int) -> int:
    """Rows per block: within a worker's budget, and at least two blocks per worker thread."""
    return max(1, min(budget // (8 * m), -(-n // (2 * workers))))


def _cg(owner, op, y, flat, diag_reg, absolute, tol, maxiter, precondition, n_centers, seed, dtype, callback,
        progress) -> CGResult:
    if y.shape[0] != op.n:
        raise ShapeError(f"{owner}: y must have one row per kernel row: kernel {op.n}x{op.n}, y {tuple(y.shape)}")
    maxiter = 10 * op.n if maxiter is None else check_int(owner, "maxiter", maxiter, minimum=1)
    reg = diag_reg if absolute else diag_reg * float(op.diagonal().mean())
    pre = None
    if precondition == "nystrom":
        pre = _nystrom_preconditioner(owner, op, reg, min(n_centers, op.n), seed, dtype)
    with _Report(owner, tol, callback, progress) as report:
        x, it, rel = conjugate_gradients(lambda v: op.matmul(v) + reg * v, y, tol=tol, maxiter=maxiter, owner=owner,
                                         precondition=pre, report=report)
    return CGResult(x[:, 0] if flat else x, it, rel)


class FalkonPredictor:
    """The model fitted by ``falkon``: ``predictor(x_test)`` gives the predictions
    ``k(x_test, centers) @ alpha``; ``centers``, ``alpha``, ``iterations`` and ``residual``
    describe the fit."""

    def __init__(self, fn, get, centers, alpha, flat, iterations, residual, memory, out_dtype):
        self._fn, self._get, self._memory, self._flat = fn, get, memory, flat
        self.centers, self.alpha = centers, alpha
        self.iterations, self.residual = iterations, residual
        self._out_dtype = out_dtype

    def __call__(self, x_test: Any) -> torch.Tensor:
        from ._compute import compute

        x_test = as_inputs("falkon predictor", "x_test", x_test, like=self.centers)
        k = compute(self._fn, x_test, self.centers, memory=self._memory, get=self._get, progress=False)
        out = (k.to(self.alpha.dtype) @ self.alpha).to(self._out_dtype)
        return out[:, 0] if self._flat else out


def falkon(fn: Any, x: Any, y: Any, n_centers: int = 1000, diag_reg: float = 1e-6, *, get: Any = "ntk",
           seed: int = 0, tol: float = 1e-8, maxiter: int = 100, memory: Any = None, client: Any = None,
           store: Any = None, relative: bool = False, cache: bool = True,
           dtype: torch.dtype = torch.float64, callback: Optional[Callable[[int, float], None]] = None,
           progress: bool = False) -> FalkonPredictor:
    """Kernel ridge regression on many points by FALKON (Rudi, Carratino and Rosasco 2017).

    Minimizes ``||K_nM a - y||^2 / n + diag_reg * a^T K_MM a`` over combinations of ``M``
    centers drawn uniformly from ``x`` (seeded), i.e. solves
    ``(K_nM^T K_nM + diag_reg n K_MM) a = K_nM^T y`` by conjugate gradients preconditioned with
    the Nystrom approximation ``B = T^-1 A^-1 / sqrt(n)`` (``T = chol(K_MM)``,
    ``A = chol(T T^T / M + diag_reg I)``), which makes a few tens of iterations enough. With
    ``M = n`` it is exact kernel ridge regression with ridge ``diag_reg * n``.

    ``K_nM`` is computed once by ``compute`` (tiles within ``memory``; on a Dask cluster
    with ``client``; into a resumable store with ``store``) and streamed by row blocks in
    every iteration; or, with ``cache=False``, its row blocks are computed on the fly in every
    iteration and never kept (memory of one block, at the price of one kernel evaluation of
    ``n x M`` per iteration). ``K_MM`` (``M x M``) is held in memory.

    Args:
        fn: a widenet architecture or a kernel function (see ``compute``).
        x, y: training inputs ``(n, ...)`` and targets ``(n,)`` or ``(n, k)``.
        n_centers: M (at most n).
        diag_reg: the ridge (absolute, in the normalization above).
        get: which kernel of a Kernel-valued function: "ntk" (the converged infinitely wide
            network trained by gradient descent) or "nngp" (the Bayesian posterior mean); a
            tuple of both fits one predictor per kernel and returns them as a named tuple
            (with ``store``, one store per kernel: the path with ``-nngp`` / ``-ntk`` appended).
        relative: ``diag_reg`` relative to the kernel's mean diagonal, as in ``predict``: the
            ridge ``diag_reg * n`` becomes ``diag_reg * mean diag(K)`` (estimated on the centers).
        callback: ``callback(iteration, residual)`` after each CG iteration (as ``cg``).
        progress: a bar of the kernel tiles, then of the CG iterations (residual, time left),
            on the standard error.

    Example:

        >>> net = wn.Serial(wn.Dense(1), wn.Relu(), wn.Dense(1))
        >>> model = wn.blocked.falkon(net, x, torch.ones(len(x), dtype=x.dtype), n_centers=4)
        >>> model(x).shape == (len(x),)
        True
    """
    from ._compute import compute

    owner = "blocked.falkon"
    names, many = check_gets(owner, get, ("nngp", "ntk"))
    if many:
        return by_get(names, True, lambda g: falkon(
            fn, x, y, n_centers, diag_reg, get=g, seed=seed, tol=tol, maxiter=maxiter, memory=memory, client=client,
            store=None if store is None else f"{store}-{g}", relative=relative, cache=cache, dtype=dtype,
            callback=callback, progress=progress))
    get = names[0]
    x = as_inputs(owner, "x", x)
    n = x.shape[0]
    y = as_tensor(owner, "y", y).to(dtype)
    flat = y.ndim == 1
    y = y[:, None] if flat else y
    if y.shape[0] != n:
        raise ShapeError(f"{owner}: y must have one row per input: x {tuple(x.shape)}, y {tuple(y.shape)}")
    m = check_int(owner, "n_centers", n_centers, minimum=1)
    if m > n:
        raise ParameterError(f"{owner}: n_centers must be at most the number of inputs {n} (got {m})")
    lam = check_float(owner, "diag_reg", diag_reg, minimum=0.0, exclusive_minimum=True)
    tol = check_float(owner, "tol", tol, minimum=0.0, exclusive_minimum=True)
    maxiter = check_int(owner, "maxiter", maxiter, minimum=1)
    budget = None if memory is None else check_memory(owner, "memory", memory)

    if not isinstance(relative, bool):
        raise ParameterError(f"{owner}: relative must be a bool (got {relative!r})")

    if client is not None:  # before any kernel work
        from ._cluster import check_workers
        from ._dask import connected

        with connected(client) as opened:
            check_workers(opened, owner)
    g = torch.Generator().manual_seed(int(seed))
    centers = x[torch.randperm(n, generator=g)[:m].to(x.device)]
    report = _Report(owner, tol, callback, progress)  # checks both before any work
    kmm = compute(fn, centers, memory=budget, client=client, get=get, progress=progress).to(dtype)
    if relative:
        lam = lam * float(kmm.diagonal().mean()) / n
    if not isinstance(cache, bool):
        raise ParameterError(f"{owner}: cache must be a bool (got {cache!r})")
    if client is not None:
        from ._dask import connected

        with connected(client) as opened:
            rows = _falkon_cluster_rows(owner, opened, fn, x, centers, get, budget, store, cache, dtype, progress)
            try:
                with report:
                    alpha, it, rel = _nystrom_cg(owner, rows, kmm, y, lam, n, m, tol, maxiter, dtype, report)
            finally:
                rows.release()
        return FalkonPredictor(fn, get, centers, alpha, flat, it, rel, budget, x.dtype)
    if cache:
        rows = _RectRows(compute(fn, x, centers, memory=budget, store=store, get=get, progress=progress), get,
                         budget, dtype)
    else:
        rows = _RectRows(_OnTheFly(fn, x, centers, get, budget), get, budget, dtype)
    with report:
        alpha, it, rel = _nystrom_cg(owner, rows, kmm, y, lam, n, m, tol, maxiter, dtype, report)
    return FalkonPredictor(fn, get, centers, alpha, flat, it, rel, budget, x.dtype)


def _falkon_cluster_rows(owner, client, fn, x, centers, get, budget, store, cache, dtype, progress):
    """``K_nM`` as row blocks on the workers: computed there (kept, or again in every product
    with ``cache=False``), or written by them into ``store`` and read back there."""
    from ._cluster import ClusterRows
    from ._compute import _function, compute
    from ._dask import workers

    per_worker = budget if budget is not None else available_memory(torch.device("cpu")) // 8
    n, m = x.shape[0], centers.shape[0]
    block = _cluster_block(n, m, per_worker, workers(client))
    if store is not None:
        stored = compute(fn, x, centers, memory=budget, client=client, store=store, get=get, progress=progress)
        return ClusterRows.of_store(client, str(stored.path), "kernel", n, m, block, dtype)
    tile_fn, _ = _function(fn, None, per_worker, get)
    return ClusterRows.of_function(client, tile_fn, x, centers, block, dtype, cache=cache)


def _nystrom_cg(owner, rows, kmm, y, lam, n, m, tol, maxiter, dtype, report=None):
    """``(a, iterations, residual)`` of ``(K_nM^T K_nM + lam n K_MM) a = K_nM^T y`` by Nystrom-preconditioned CG."""
    # T^T T = K_MM (a jitter of M eps keeps it factorizable), A^T A = T T^T / M + lam I.
    eye = torch.eye(m, dtype=dtype)
    jitter = m * torch.finfo(dtype).eps * float(kmm.diagonal().mean())
    t_upper = _cholesky_upper(owner, kmm + jitter * eye, "K_MM")
    a_upper = _cholesky_upper(owner, t_upper @ t_upper.T / m + lam * eye, "the preconditioner")

    def b_apply(v):  # B v = T^-1 A^-1 v / sqrt(n)
        v = torch.linalg.solve_triangular(a_upper, v, upper=True)
        return torch.linalg.solve_triangular(t_upper, v, upper=True) / math.sqrt(n)

    def bt_apply(v):  # B^T v = A^-T T^-T v / sqrt(n)
        v = torch.linalg.solve_triangular(t_upper.T, v, upper=False)
        return torch.linalg.solve_triangular(a_upper.T, v, upper=False) / math.sqrt(n)

    def h_apply(v):  # (K_nM^T K_nM + lam n K_MM) v, streaming K_nM
        return rows.gram(v) + lam * n * (kmm @ v)

    rhs = bt_apply(rows.transpose_matmul(y))
    beta, it, rel = conjugate_gradients(lambda v: bt_apply(h_apply(b_apply(v))), rhs, tol=tol, maxiter=maxiter,
                                        owner=owner, report=report)
    return b_apply(beta), it, rel


def _cholesky_upper(owner, k, what):
    chol, info = torch.linalg.cholesky_ex(k)
    if int(info) != 0:
        raise NumericalError(f"{owner}: {what} is not numerically positive definite (Cholesky failed at column "
                             f"{int(info)}); raise diag_reg or use fewer, more distinct centers")
    return chol.T


class _OnTheFly:
    """Row blocks of ``K(x, centers)`` computed when read (``FALKON(cache=False)``)."""

    def __init__(self, fn, x, centers, get, memory):
        self.fn, self.x, self.centers, self.get, self.memory = fn, x, centers, get, memory
        self.shape = (x.shape[0], centers.shape[0])

    def __getitem__(self, rows: slice) -> torch.Tensor:
        from ._compute import compute

        return compute(self.fn, self.x[rows], self.centers, memory=self.memory, get=self.get, progress=False)


class _RectRows:
    """``K_nM`` (n x M) held in memory, in a store or computed on the fly, used as
    ``K^T (K v)`` and ``K^T y``."""

    def __init__(self, source, get, memory, dtype):
        if isinstance(source, Store):
            source = source["kernel"]
        self.source, self.dtype = source, dtype
        self.n, self.m = source.shape[:2]
        budget = memory if memory is not None else available_memory(torch.device("cpu")) // 8
        self.block = max(1, min(self.n, budget // (8 * self.m * 2)))

    def _blocks(self):
        for start in range(0, self.n, self.block):
            stop = min(self.n, start + self.block)
            block = self.source[start:stop]
            block = block if isinstance(block, torch.Tensor) else torch.from_numpy(np.asarray(block))
            yield start, stop, block.to(self.dtype)

    def gram(self, v: torch.Tensor) -> torch.Tensor:
        out = torch.zeros_like(v)
        for _, _, block in self._blocks():
            out += block.T @ (block @ v)
        return out

    def transpose_matmul(self, y: torch.Tensor) -> torch.Tensor:
        out = torch.zeros((self.m, y.shape[1]), dtype=self.dtype)
        for start, stop, block in self._blocks():
            out += block.T @ y[start:stop]
        return out
