"""Reproducible kernels: every entry the same bits whatever tile, block, batch or thread
count computes it.

A kernel entry computed by the engine normally depends, in its last bits, on which other
entries were computed with it:

* matrix products (the input layer's ``x . x'``, attention's weighted sums) go through BLAS,
  which picks its kernels and summation order from the shapes, alignment and threads of the
  call;
* torch's elementwise kernels evaluate vector-sized runs with vectorized (SLEEF) functions and
  the leftover elements of each run with the C library's scalar ones, and for ``atan2``,
  ``pow``, ``exp2``, ``sinh`` and others the two differ in the last place;
* a sum with a single output is split across threads.

Within ``enabled``, the engine calls the helpers here instead, which remove each cause:

* ``matmul`` adds the terms of short contractions one by one, in order, and computes
  longer products exactly (Ozaki et al. 2012): each operand is scaled by a
  power of two per row (per column) and split into slices of at most ``beta`` bits, chosen
  so that every product of two slices, summed over the contraction axis in any order, is an
  integer below 2**53 times a power of two, which float64 holds exactly. The slice products
  are then added in one fixed order. The result depends only on the operands' values: not
  on the shapes, the BLAS, the threads, or even the order of the contraction axis.
* ``elementwise`` evaluates an op in runs of whole vectors only, so every element goes
  through the same vectorized function (chunks below torch's parallel grain, spread over a
  pool of threads).
* ``sum`` never lets a reduction be split across threads.

It costs several products per long product (6 for float64 operands, 3 for float32), a
pass per short one's term, copies around the listed elementwise ops and a second order of
summation in a few rules, so it is off by default; ``reproducible=True`` on a kernel call
turns it on (see ``Layer.kernel``).
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import math
import threading
import types
from typing import Callable, Iterator, Sequence

import torch

from . import scratch

# Contractions up to this length are summed term by term instead of sliced.
_SHORT = 4
_POOL = None  # threads for elementwise chunks
_POOL_LOCK = threading.Lock()
_ACTIVE = contextvars.ContextVar("widenet_reproducible", default=False)

# Runs of whole vectors: a multiple of the longest unrolled vector loop (2 x 16 float32
# lanes with AVX-512, doubled for margin), and under torch's parallel grain (32768
# elements), so that each call is one serial loop from its first element.
_RUN = 64
_CHUNK = 16384


def active() -> bool:
    return _ACTIVE.get()


@contextlib.contextmanager
def enabled(on: bool = True) -> Iterator[None]:
    """Within the block, the engine's products, listed elementwise ops and sums are
    computed by the helpers of this module (``on=False`` leaves the current setting)."""
    if not on:
        yield
        return
    token = _ACTIVE.set(True)
    try:
        yield
    finally:
        _ACTIVE.reset(token)


def _pow2(e: torch.Tensor) -> torch.Tensor:
    """``2.0 ** e`` for integer ``e`` in the normal range, built from its bits (exact)."""
    return ((e.to(torch.int64) + 1023) << 52).view(torch.float64)


def _scaled(x: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``x * 2**-e`` with ``e`` per slice along ``dim`` so that every entry is below 1 in
    magnitude, and ``2**e``. Both products by powers of two are exact."""
    m = x.abs().amax(dim, keepdim=True)
    e = torch.frexp(m).exponent.clamp_(-1021, 1021)  # m < 2**e; zero rows get e = 0
    return x * _pow2(-e), _pow2(e)


def _slices(x: torch.Tensor, beta: int, count: int) -> list[torch.Tensor]:
    """``x`` (entries below 1 in magnitude) as slices ``x = s_1 + s_2 + ... + rest``, where
    ``s_k`` is an integer of at most ``beta`` bits times ``2**(-beta k)``."""
    out = []
    rest = x
    for k in range(1, count + 1):
        up = 2.0 ** (beta * k)
        s = torch.round(rest * up).div_(up)  # both scalings by powers of two are exact
        out.append(s)
        rest = rest - s  # exact: s holds rest's leading bits
    return out


def matmul(a: torch.Tensor, b: torch.Tensor, *, out: torch.Tensor | None = None) -> torch.Tensor:
    """``a @ b`` (broadcasting batch axes like ``torch.matmul``; into ``out`` if given, as
    ``widenet.scratch.call`` passes it); within ``enabled``,
    a value that depends only on the operands' values: for contractions of up to ``_SHORT``
    terms, their sum in the axis' order; for longer ones, the exact product rounded (then not
    even the order of the contraction axis matters).

    Accuracy: the slices keep at least ``precision + 3`` bits of each row (column) relative
    to its largest entry, and the slice products left out are below that too, so the error
    is a few units of ``eps * |a| |b|``, as for BLAS."""
    if not active():
        return torch.matmul(a, b, out=out)
    p = _exact_matmul(a, b)
    return p if out is None else out.copy_(p)


def _exact_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    if a.ndim < 2 or b.ndim < 2:
        raise ValueError(f"reproducible products take operands of at least 2 axes (got {a.ndim} and {b.ndim})")
    if a.dtype not in (torch.float64, torch.float32) or b.dtype != a.dtype:
        raise TypeError(f"reproducible products take two float32 or float64 operands (got {a.dtype} and {b.dtype})")
    dtype = a.dtype
    k = a.shape[-1]
    if 0 < k <= _SHORT:
        # A short contraction (the input layer of images with a few channels): the products
        # one term at a time, added in the order of the contraction axis. Each entry is then
        # the same sequence of roundings whatever the shapes around it, and cheaper than
        # slicing. Float32 operands multiply exactly in float64.
        a64, b64 = a.to(torch.float64), b.to(torch.float64)
        acc = a64[..., :, :1] * b64[..., :1, :]
        for i in range(1, k):
            acc = acc.add_(a64[..., :, i:i + 1] * b64[..., i:i + 1, :])
        return acc.to(dtype)
    # Every slice product summed over k terms stays below 2**52 (exact in float64).
    beta = (52 - max(0, math.ceil(math.log2(max(k, 1))))) // 2
    if beta < 8:
        raise ValueError(f"reproducible products support contractions of up to 2**36 terms (got {k})")
    bits = 53 if dtype == torch.float64 else 24
    count = math.ceil((bits + 3) / beta)
    sa, ea = _scaled(a.to(torch.float64), -1)
    sb, eb = _scaled(b.to(torch.float64), -2)
    left = _slices(sa, beta, count)
    right = _slices(sb, beta, count)
    nonzero_l = [bool(s.any()) for s in left]
    nonzero_r = [bool(s.any()) for s in right]

    def term(i: int, j: int):
        if i > count or j > count or not (nonzero_l[i - 1] and nonzero_r[j - 1]):
            return None
        return torch.matmul(left[i - 1], right[j - 1])

    acc = None
    # Smallest terms first; every term is exact, so only this fixed order rounds. Terms
    # (i, j) and (j, i) are added to each other first, so that the product of the transposed
    # operands is the transposed product, bit for bit.
    for total in range(count + 1, 1, -1):
        for i in range(1, total // 2 + 1):
            j = total - i
            p, q = term(i, j), (term(j, i) if j != i else None)
            if p is None or q is None:
                p = p if q is None else q
            else:
                p = p.add_(q)
            if p is not None:
                acc = p if acc is None else acc.add_(p)
    if acc is None:  # an operand of zeros: a product over an empty axis has the result's shape
        acc = torch.matmul(sa[..., :0], sb[..., :0, :])
    acc = acc * ea
    acc.mul_(eb)
    return acc.to(dtype)


def elementwise(op: Callable[..., torch.Tensor], *args) -> torch.Tensor:
    """``op(*args)`` for an elementwise ``op``; within ``enabled``, every element is
    computed by the op's vectorized loop (whole runs of vectors, each call one serial loop),
    never by its scalar tail, so its bits do not depend on where it falls in the tensor."""
    if not active():
        return op(*args)
    tensors = [t for t in args if isinstance(t, torch.Tensor)]
    shape = scratch.broadcast_shape(*(t.shape for t in tensors))
    n = math.prod(shape)
    if (isinstance(op, types.BuiltinFunctionType) and n >= _RUN
            and all(t.shape == shape and t.is_contiguous() for t in tensors)):
        # A torch op on contiguous operands: whole runs straight from them into the result,
        # and the last partial run as the end of the last full run.
        flat = [a.reshape(-1) if isinstance(a, torch.Tensor) else a for a in args]
        out = torch.empty(n, dtype=torch.result_type(*args[:2]) if len(args) > 1 else tensors[0].dtype,
                          device=tensors[0].device)
        whole = n - n % _RUN
        _chunks(whole, lambda c0, c1: op(*_part(flat, c0, c1), out=out[c0:c1]))
        if whole < n:
            out[whole:] = op(*_part(flat, n - _RUN, n))[whole - n:]
        return out.view(shape)
    # Otherwise (broadcast or strided operands, any callable): padded contiguous copies.
    padded = max(_RUN, -(-n // _RUN) * _RUN)
    flat = []
    for t in args:
        if isinstance(t, torch.Tensor):
            f = torch.empty(padded, dtype=t.dtype, device=t.device)
            f[:n].view(shape).copy_(t.expand(shape))
            f[n:] = f[0] if n else 1.0  # a value inside the op's domain
            t = f
        flat.append(t)
    first = op(*_part(flat, 0, min(_CHUNK, padded)))
    out = torch.empty(padded, dtype=first.dtype, device=tensors[0].device)
    out[:first.numel()] = first

    def write(c0: int, c1: int) -> None:
        out[c0:c1] = op(*_part(flat, c0, c1))

    _chunks(padded, write, start=first.numel())
    return out[:n].view(shape)


def _part(flat: list, c0: int, c1: int) -> list:
    return [f[c0:c1] if isinstance(f, torch.Tensor) else f for f in flat]


def _chunks(end: int, fn: Callable[[int, int], object], start: int = 0) -> None:
    """``fn(c0, c1)`` over ``[start, end)`` in chunks of ``_CHUNK`` (each under torch's
    parallel grain, so one serial loop), spread over a pool of threads: torch's kernels
    release the GIL."""
    starts = range(start, end, _CHUNK)
    threads = min(torch.get_num_threads(), len(starts))
    if threads <= 1:
        for c0 in starts:
            fn(c0, min(c0 + _CHUNK, end))
        return

    def share(k: int) -> None:
        for c0 in starts[k::threads]:
            fn(c0, min(c0 + _CHUNK, end))

    with _POOL_LOCK:
        global _POOL
        if _POOL is None or _POOL._max_workers < threads:
            from concurrent.futures import ThreadPoolExecutor

            _POOL = ThreadPoolExecutor(threads, thread_name_prefix="widenet-exact")
        pool = _POOL
    for future in [pool.submit(share, k) for k in range(threads)]:
        future.result()


def call(op: Callable[..., torch.Tensor], *args) -> torch.Tensor:
    """``op(*args)`` into a reused tile buffer (``widenet.scratch.call``); within
    ``enabled``, by ``elementwise``."""
    return elementwise(op, *args) if active() else scratch.call(op, *args)


def apply_(op: Callable[..., torch.Tensor], t: torch.Tensor, *args) -> torch.Tensor:
    """``t.<op>_(*args)`` (e.g. ``t.exp_()``); within ``enabled``, by ``elementwise``."""
    if not active():
        return getattr(t, op.__name__ + "_")(*args)
    return t.copy_(elementwise(op, t, *args))


def scale_add_(t: torch.Tensor, scale, shift) -> torch.Tensor:
    """``t = t * scale + shift`` in place (``shift`` a number or a tensor).

    One pass (torch's add with ``alpha``, a fused multiply-add) when ``scale`` is a Python
    number, ``shift`` a number or a tensor of ``t``'s shape, and no tensor carries autograd
    or forward-mode state (``out=`` does not carry them). Otherwise, and within
    ``enabled``, a multiply and an add, separately rounded (torch's scalar and vector
    loops may differ in whether they fuse). Traced by ``torch.compile`` (a compiled rule),
    the plain expression, which Inductor fuses anyway.
    """
    if (torch.compiler.is_compiling() or not isinstance(scale, (int, float)) or active()
            or (isinstance(shift, torch.Tensor) and shift.shape != t.shape)
            or not scratch.plain(t, shift)):
        t.mul_(scale)
        return t if isinstance(shift, (int, float)) and shift == 0 else t.add_(shift)
    if isinstance(shift, (int, float)):
        if shift == 0:
            return t.mul_(scale)
        shift = _constant(float(shift), t.dtype, t.device)
    return torch.add(shift, t, alpha=scale, out=t)


@functools.lru_cache(maxsize=256)
def _constant(value: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A 0-d tensor holding ``value`` (remembered; never written to)."""
    return torch.tensor(value, dtype=dtype, device=device)


def pair_sum(t: torch.Tensor, nd: int) -> torch.Tensor:
    """The sum over the last ``2 nd`` axes of ``t`` (every pair of positions ``(s, s')`` of a
    full-layout kernel); within ``enabled``, taken over ``(t + t^T) / 2`` (positions
    exchanged) so that the kernel of ``(x', x)`` sums the same numbers in the same order as
    that of ``(x, x')``, and gives its value bit for bit."""
    lead = t.shape[: t.ndim - 2 * nd]
    if not active():
        return t.reshape(lead + (-1,)).sum(-1)
    n = math.prod(t.shape[t.ndim - nd:])
    m = t.reshape(lead + (n, n))
    return sum((m + m.transpose(-1, -2)).reshape(lead + (-1,)), -1).mul_(0.5)


def sum(t: torch.Tensor, dims: Sequence[int] | int, keepdim: bool = False) -> torch.Tensor:  # noqa: A001
    """``t.sum(dims)``; within ``enabled``, never split across threads (see ``mean``)."""
    return _reduce(torch.sum, t, dims, keepdim)


def mean(t: torch.Tensor, dims: Sequence[int] | int, keepdim: bool = False) -> torch.Tensor:
    """``t.mean(dims)``; within ``enabled``, every output is reduced from one contiguous
    row by the same loop, whatever the input's strides, and a reduction with a single output
    (which torch splits across threads once it is long enough) is taken as one of two equal
    rows."""
    return _reduce(torch.mean, t, dims, keepdim)


def _reduce(op, t: torch.Tensor, dims: Sequence[int] | int, keepdim: bool) -> torch.Tensor:
    if not active():
        return op(t, dims, keepdim=keepdim)
    dims_t = sorted(d % t.ndim for d in ((dims,) if isinstance(dims, int) else dims))
    kept = [d for d in range(t.ndim) if d not in dims_t]
    # One layout for every call: the reduced axes last and contiguous, so each output is one
    # contiguous run, reduced by the same loop whatever the input's strides.
    rows = t.permute(kept + dims_t).reshape(math.prod(t.shape[d] for d in kept), -1)
    if rows.shape[0] == 1:
        rows = rows.expand(2, -1)
    out = op(rows.contiguous(), -1)[: max(1, math.prod(t.shape[d] for d in kept))]
    shape = [1 if d in dims_t else n for d, n in enumerate(t.shape)] if keepdim else [t.shape[d] for d in kept]
    return out.reshape(shape)
