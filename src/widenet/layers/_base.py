"""The layer abstraction: one object, two faces.

A :class:`Layer` has an exact infinite-width kernel rule (``_apply`` on a private
:class:`~widenet.kernel.Work` tile) and a finite-width twin (``_build`` returning a
``torch.nn.Module``). Public entry points live here: ``kernel``/``nngp``/``ntk`` on inputs,
``apply`` on an existing :class:`~widenet.kernel.Kernel`, and ``module`` for the finite net.
"""

from __future__ import annotations

import itertools
from typing import Any, Iterator, Optional, Sequence, Union

import torch
from torch import nn

from .._validate import as_tensor, check_int
from ..errors import LayerOrderError, ShapeError
from ..kernel import Kernel, Work
from ._modules import derive_seed

Flow = Union[Work, tuple]  # one branch, or a tuple of branches after FanOut
Spec = Union[Optional[int], tuple]  # feature count of each branch (None: not known yet)

# Tiles hold about this many kernel entries; each elementwise rule allocates a few
# temporaries of tile size, so the working set stays in cache and peak memory stays close to
# the outputs however large N is.
_TILE_ENTRIES = 1 << 18


class Layer:
    """Base class of every widenet layer (see the module docstring)."""

    # ---- hooks for subclasses -------------------------------------------------------------
    def _apply(self, flow: Flow) -> Flow:
        raise NotImplementedError  # pragma: no cover - every concrete layer overrides it

    def _build(self, spec: Spec, seeds: Iterator[int], factory: dict) -> tuple[nn.Module, Spec]:
        raise NotImplementedError  # pragma: no cover

    # ---- helpers for subclasses -----------------------------------------------------------
    @property
    def _name(self) -> str:
        return type(self).__name__

    def _single(self, flow: Flow) -> Work:
        if isinstance(flow, tuple):
            raise LayerOrderError(
                f"{self._name}: expected one branch but received {len(flow)}; merge branches "
                f"with FanInSum, FanInProd or FanInConcat first"
            )
        return flow

    def _single_spec(self, spec: Spec) -> Optional[int]:
        if isinstance(spec, tuple):
            raise LayerOrderError(
                f"{self._name}: expected one branch but received {len(spec)}; merge branches "
                f"with FanInSum, FanInProd or FanInConcat first"
            )
        return spec

    # ---- public API -----------------------------------------------------------------------
    def kernel(self, x1: Any, x2: Any = None, *, block_size: Optional[int] = None) -> Kernel:
        """NNGP and NTK between ``x1`` ``(N1, d)`` and ``x2`` ``(N2, d)``.

        ``x2=None`` means ``x2 = x1``; then only the upper triangle is computed and mirrored,
        so the result is exactly symmetric. dtype and device follow the inputs (numpy arrays
        are converted; float64 is recommended for accuracy). ``block_size`` is the number of
        rows per tile (default: about 262,144 entries per tile).

        Returns:
            a :class:`Kernel` with ``nngp`` and ``ntk`` of shape ``(N1, N2)``.
        """
        return _compute(self, x1, x2, want_ntk=True, block_size=block_size)

    def nngp(self, x1: Any, x2: Any = None, *, block_size: Optional[int] = None) -> torch.Tensor:
        """Only the ``(N1, N2)`` NNGP kernel; no NTK work is done."""
        return _compute(self, x1, x2, want_ntk=False, block_size=block_size).nngp

    def ntk(self, x1: Any, x2: Any = None, *, block_size: Optional[int] = None) -> torch.Tensor:
        """Only the ``(N1, N2)`` NTK (its recursion needs the NNGP, which is not returned)."""
        return _compute(self, x1, x2, want_ntk=True, block_size=block_size).ntk

    def apply(self, kernel: Kernel) -> Kernel:
        """Transforms an existing :class:`Kernel` by this layer (the input is not modified)."""
        if not isinstance(kernel, Kernel):
            raise TypeError(f"{self._name}.apply: expected a widenet Kernel (got {type(kernel).__name__})")
        work = Work(
            kernel.nngp.clone(),
            None if kernel.ntk is None else kernel.ntk.clone(),
            kernel.var1,
            kernel.var1 if kernel.var2 is None else kernel.var2,
            is_gaussian=kernel.is_gaussian,
            width=kernel.width,
            diagonal=0 if kernel.same_inputs else None,
        )
        out = self._single(self._apply(work))
        return Kernel(out.nngp, out.ntk, out.var1, None if kernel.same_inputs else out.var2,
                      out.is_gaussian, out.width)

    def module(
        self,
        input_shape: Union[int, Sequence[int], None] = None,
        *,
        seed: Optional[int] = None,
        generator: Optional[torch.Generator] = None,
        dtype: Optional[torch.dtype] = None,
        device: Union[str, torch.device, None] = None,
    ) -> nn.Module:
        """The finite-width ``torch.nn.Module`` whose random initialization has this limit.

        Args:
            input_shape: features of one input, ``d`` or ``(d,)``. ``None`` builds the first
                affine layers lazily: their weights materialize on the first forward call.
            seed: network seed; the same seed gives the same network. Without ``seed`` or
                ``generator`` the seed is drawn from torch's global generator, so
                ``torch.manual_seed`` makes it reproducible too.
            generator: a ``torch.Generator`` from which the network seed is drawn.
            dtype, device: of the parameters (default: torch's default dtype, CPU).
        """
        if seed is not None and generator is not None:
            from ..errors import ParameterError

            raise ParameterError(f"{self._name}.module: give seed or generator, not both")
        if seed is None:
            seed = int(torch.randint(0, 2**62, (1,), generator=generator).item())
        else:
            seed = check_int(f"{self._name}.module", "seed", seed, minimum=0)
        if input_shape is not None:
            shape = (input_shape,) if isinstance(input_shape, int) else tuple(input_shape)
            if len(shape) != 1:
                raise ShapeError(
                    f"{self._name}.module: input_shape must be (features,) for fully connected "
                    f"networks (got {shape})"
                )
            spec: Spec = check_int(f"{self._name}.module", "input_shape[0]", shape[0], minimum=1)
        else:
            spec = None
        counter = itertools.count()
        seeds = (derive_seed(seed, i) for i in counter)
        factory = {"dtype": dtype, "device": device}
        module, _ = self._build(spec, seeds, factory)
        return module

    def __rshift__(self, other: "Layer") -> "Layer":
        """``a >> b`` is ``Serial(a, b)``."""
        from .combinators import Serial

        return Serial(self, other)


def _check_inputs(owner: str, x1: Any, x2: Any) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    x1 = as_tensor(owner, "x1", x1)
    if x1.ndim != 2:
        raise ShapeError(
            f"{owner}: x1 must have shape (N, features) for fully connected networks "
            f"(got shape {tuple(x1.shape)})"
        )
    if x1.shape[0] < 1 or x1.shape[1] < 1:
        raise ShapeError(f"{owner}: x1 must hold at least one input with at least one feature "
                         f"(got shape {tuple(x1.shape)})")
    if x2 is None:
        return x1, None
    x2 = as_tensor(owner, "x2", x2, like=x1)
    if x2.ndim != 2 or x2.shape[1] != x1.shape[1] or x2.shape[0] < 1:
        raise ShapeError(
            f"{owner}: x2 must have shape (N2, {x1.shape[1]}) to match x1 "
            f"(got x1 {tuple(x1.shape)} and x2 {tuple(x2.shape)})"
        )
    return x1, x2


def _run_single(layer: Layer, work: Work) -> Work:
    out = layer._apply(work)
    if isinstance(out, tuple):
        raise LayerOrderError(
            f"{layer._name}: the network ends with {len(out)} branches; merge them with "
            f"FanInSum, FanInProd or FanInConcat so that it has one output"
        )
    return out


def _compute(layer: Layer, x1: Any, x2: Any, *, want_ntk: bool, block_size: Optional[int]) -> Kernel:
    owner = f"{layer._name}.kernel"
    if block_size is not None:
        block_size = check_int(owner, "block_size", block_size, minimum=1)
    x1, x2 = _check_inputs(owner, x1, x2)
    same = x2 is None
    xb = x1 if same else x2
    n1, d = x1.shape
    n2 = xb.shape[0]
    sq1 = x1.pow(2).sum(1).div_(d)
    sq2 = sq1 if same else xb.pow(2).sum(1).div_(d)

    # Per-input variances: a cheap O(N) pass in the paired layout.
    var1_out = _run_single(layer, Work(None, None, sq1, sq1, paired=True, width=d))
    var2_out = var1_out if same else _run_single(layer, Work(None, None, sq2, sq2, paired=True, width=d))

    nngp = x1.new_empty(n1, n2)
    ntk = x1.new_zeros(n1, n2) if want_ntk else None
    rows = block_size or max(1, _TILE_ENTRIES // n2)
    for r0 in range(0, n1, rows):
        r1 = min(r0 + rows, n1)
        c0 = r0 if same else 0
        tile = nngp[r0:r1, c0:]
        torch.matmul(x1[r0:r1], xb[c0:].T, out=tile) if tile.is_contiguous() else tile.copy_(
            x1[r0:r1] @ xb[c0:].T
        )
        tile.div_(d)
        if same:
            _symmetrize_diagonal_block(tile, sq1[r0:r1])
        ntk_tile = None if ntk is None else ntk[r0:r1, c0:]
        work = Work(tile, ntk_tile, sq1[r0:r1], sq2[c0:], width=d, diagonal=0 if same else None)
        work = _run_single(layer, work)
        if work.nngp.data_ptr() != tile.data_ptr():
            tile.copy_(work.nngp)
        if ntk_tile is not None and work.ntk.data_ptr() != ntk_tile.data_ptr():
            ntk_tile.copy_(work.ntk)
    if same:
        for out in (nngp, ntk):
            if out is not None:
                _mirror_upper(out, rows)
        nngp.diagonal().copy_(var1_out.var1)
    return Kernel(
        nngp, ntk, var1_out.var1, None if same else var2_out.var1,
        is_gaussian=var1_out.is_gaussian, width=var1_out.width,
    )


def _symmetrize_diagonal_block(tile: torch.Tensor, sq: torch.Tensor) -> None:
    """Makes the square block on the tile's diagonal exactly symmetric, with exact variances."""
    b = sq.shape[0]
    block = tile[:, :b]
    upper = torch.triu(block, 1)
    block.copy_(upper + upper.T)
    block.diagonal().copy_(sq)


def _mirror_upper(out: torch.Tensor, rows: int) -> None:
    """Copies the computed upper triangle onto the lower one, block by block."""
    n = out.shape[0]
    for r0 in range(0, n, rows):
        r1 = min(r0 + rows, n)
        block = out[r0:r1, r0:r1]
        lower = torch.tril(block.T, -1)
        block.copy_(torch.triu(block) + lower)
        if r1 < n:
            out[r1:, r0:r1].copy_(out[r0:r1, r1:].T)
