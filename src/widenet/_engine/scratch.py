"""Reused working buffers for kernel tiles.

A kernel call pushes hundreds of tiles of the same shape through the same rules, and each
rule needs a few tile-sized temporaries. Allocated fresh, every temporary above the C
allocator's mmap threshold is mapped from the operating system and faulted in page by page,
then unmapped again when it dies, which costs pooled CNNs much of their time. Inside
``reusing``, ``empty`` hands out views of buffers kept from earlier tiles instead.

The pool keeps at most ``limit`` bytes (a kernel call's memory budget): past it, free
buffers are let go first, then new ones are no longer kept. A buffer is handed out again
only once no tensor uses its memory any more: every view of it (and every view of those
views) holds a reference to its storage, and the pool reuses a
buffer only when the pool's own two references are the only ones left. So a temporary that
escapes into a result, a cache or a user's hands is never overwritten; it only stops being
reused. Buffers are dropped when the outermost ``reusing`` block ends, so nothing is held
between calls, and the pool is per thread (Dask runs tiles in worker threads). Only CPU
tensors are pooled: accelerators have caching allocators of their own.

Rules call ``empty`` wherever they would call ``torch.empty``; outside ``reusing``
it is ``torch.empty``. The pool never changes a value: ops write every element of the
buffers they are given (``out=`` tensors of the exact shape).
"""

from __future__ import annotations

import contextlib
import functools
import math
import threading
from typing import Iterator, Sequence

import torch

_use_count = getattr(torch._C, "_storage_Use_Count", None)

# Below this many bytes a fresh allocation comes from the allocator's free lists, costs
# nothing to fault in, and is not worth a pool slot.
_MIN_BYTES = 1 << 16


class _State(threading.local):
    def __init__(self) -> None:
        self.depth = 0
        self.buffers: dict[tuple, list[tuple[torch.Tensor, torch.UntypedStorage]]] = {}
        self.held = 0  # bytes in ``buffers``
        self.limit = 0


_state = _State()


@contextlib.contextmanager
def reusing(enabled: bool = True, limit: float = math.inf) -> Iterator[None]:
    """Within the block (on this thread), ``empty`` reuses buffers that are no longer
    referenced, keeping at most ``limit`` bytes of them. ``enabled=False`` leaves allocation
    alone (for forward-mode AD, whose dual tensors cannot be written through ``out=``).
    Nested blocks share the outer pool and its limit."""
    if not enabled or _use_count is None or _state.depth < 0:
        # A disabled block also disables the blocks nested in it.
        saved = _state.depth
        _state.depth = -1
        try:
            yield
        finally:
            _state.depth = saved
        return
    if _state.depth == 0:
        _state.limit = limit
    _state.depth += 1
    try:
        yield
    finally:
        _state.depth -= 1
        if _state.depth == 0:
            _state.buffers = {}
            _state.held = 0


def active() -> bool:
    return _state.depth > 0


def empty(shape: Sequence[int], like: torch.Tensor) -> torch.Tensor:
    """An uninitialized tensor of ``shape`` with ``like``'s dtype and device (contiguous)."""
    shape = tuple(shape)
    numel = math.prod(shape)
    if _state.depth <= 0 or like.device.type != "cpu" or numel * like.element_size() < _MIN_BYTES:
        return torch.empty(shape, dtype=like.dtype, device=like.device)
    key = (numel, like.dtype, like.device)
    slots = _state.buffers.setdefault(key, [])
    for base, storage in slots:
        # The base tensor and the pool's storage object are the only users: free.
        if _use_count(storage._cdata) == 2:
            return base.view(shape)
    base = torch.empty(numel, dtype=like.dtype, device=like.device)
    size = numel * like.element_size()
    if _state.held + size > _state.limit:
        # Over the pool's bound: let go of the free buffers of every size first, and if
        # that is not enough, hand out this one without keeping it.
        for kept in _state.buffers.values():
            busy = [(b, st) for b, st in kept if _use_count(st._cdata) != 2]
            _state.held -= sum(b.numel() * b.element_size() for b, st in kept) - sum(
                b.numel() * b.element_size() for b, st in busy)
            kept[:] = busy
        if _state.held + size > _state.limit:
            return base.view(shape)
    slots.append((base, base.untyped_storage()))
    _state.held += size
    return base.view(shape)


def release(t: torch.Tensor) -> None:
    """Lets the pool forget the buffer behind ``t`` (if it is one of the pool's), for a tensor
    kept past the tile it was made for: the pool would never hand it out again anyway, and
    would keep scanning it."""
    if _state.depth <= 0:
        return
    ptr = t.untyped_storage().data_ptr()
    for slots in _state.buffers.values():
        for i, (base, storage) in enumerate(slots):
            if storage.data_ptr() == ptr:
                del slots[i]
                _state.held -= base.numel() * base.element_size()
                return


def empty_like(t: torch.Tensor) -> torch.Tensor:
    return empty(t.shape, t)


def clone(t: torch.Tensor) -> torch.Tensor:
    """A contiguous copy of ``t``."""
    return empty(t.shape, t).copy_(t)


def call(fn, *args, like: torch.Tensor | None = None, shape: Sequence[int] | None = None,
         **kwargs) -> torch.Tensor:
    """``fn(*args, **kwargs)``, written into a reused buffer when the pool is active. The
    buffer has ``shape``, by default the broadcast shape of the tensor arguments (right for
    elementwise ops; give it for others, such as matrix products), and the dtype and device
    of ``like`` (default the first tensor argument). Outside the pool it is the plain call,
    so forward-mode AD and dtype promotion behave as without it."""
    if _state.depth <= 0:
        return fn(*args, **kwargs)
    tensors = [a for a in args if isinstance(a, torch.Tensor)]
    like = tensors[0] if like is None else like
    if shape is None:
        shape = broadcast_shape(*(t.shape for t in tensors))
    return fn(*args, **kwargs, out=empty(shape, like))


@functools.lru_cache(maxsize=1024)
def broadcast_shape(*shapes: tuple[int, ...]) -> torch.Size:
    """``torch.broadcast_shapes``, remembered: torch computes it through its symbolic-shape
    reference code, slow next to the small ops of a tile, and the few tile shapes of a kernel
    call repeat it thousands of times."""
    return torch.broadcast_shapes(*shapes)


def plain(*tensors) -> bool:
    """True when no tensor carries autograd or functorch state, so that ``out=`` may be used."""
    wrapped = getattr(getattr(torch._C, "_functorch", None), "is_functorch_wrapped_tensor", None)
    for t in tensors:
        if not isinstance(t, torch.Tensor):
            continue
        if t.requires_grad or (wrapped is not None and wrapped(t)):
            return False
        try:
            if torch.autograd.forward_ad.unpack_dual(t).tangent is not None:
                return False
        except RuntimeError:
            return False
    return True
