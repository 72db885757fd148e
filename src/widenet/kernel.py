"""The kernel state that flows through an architecture.

:class:`Kernel` is the public, immutable result. :class:`Work` is its private, mutable
counterpart used while a kernel is being computed: layers transform a ``Work`` in place on
tiles that the engine owns, which is what keeps peak memory close to the size of the outputs.
"""

from __future__ import annotations

import dataclasses
import math
import weakref
from dataclasses import dataclass
from typing import Optional

import torch

from . import _scratch

__all__ = ["Kernel"]


@dataclass(frozen=True)
class Kernel:
    """Infinite-width kernels between two sets of inputs.

    Attributes:
        nngp: NNGP covariance ``E[f(x1) f(x2)]`` of one output unit (one channel), of shape
            ``(N1, N2)`` for outputs without spatial axes. Outputs that keep spatial axes
            ``S`` give ``(N1, N2, *S)`` in the "diagonal" layout (position ``s`` of ``x1``
            against the same position of ``x2``) and ``(N1, N2, *S, *S)`` in the "full"
            layout (every position of ``x1`` against every position of ``x2``).
        ntk: neural tangent kernel, same shape, or ``None`` when only the NNGP was asked for.
        var1: per-input covariances ``K(x, x)`` of ``x1``: ``(N1,)`` without spatial axes,
            ``(N1, *S)`` in the diagonal layout, ``(N1, *S, *S)`` in the full one.
        var2: the same for ``x2``; ``None`` when ``x2`` is ``x1`` (computed with ``x2=None``).
        is_gaussian: whether the outputs are Gaussian given the inputs (true after an affine
            layer, false after a nonlinearity); a nonlinearity requires a Gaussian input.
        width: number of features (channels) of the represented layer, as declared in the
            architecture. It enters the "standard" parameterization, whose NTK depends on it.
        layout: "diagonal" or "full", the spatial layout described above (meaningless, and
            "diagonal", for outputs without spatial axes).

    Kernels follow Neural Tangents' conventions (input kernel ``x . x' / d``), so values
    compare number for number (Neural Tangents lays spatial axes out channels-last and
    interleaves the two position axes of the full layout; widenet keeps PyTorch's order).
    """

    nngp: torch.Tensor
    ntk: Optional[torch.Tensor]
    var1: torch.Tensor
    var2: Optional[torch.Tensor] = None
    is_gaussian: bool = False
    width: int = 0
    layout: str = "diagonal"

    @property
    def same_inputs(self) -> bool:
        """True when the kernel was computed between a set of inputs and itself."""
        return self.var2 is None

    @property
    def spatial(self) -> tuple[int, ...]:
        """The spatial shape ``S`` of the outputs (empty for outputs without spatial axes)."""
        extra = tuple(self.var1.shape[1:])
        return extra[: len(extra) // 2] if self.layout == "full" else extra

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.nngp.shape)

    @property
    def dtype(self) -> torch.dtype:
        return self.nngp.dtype

    @property
    def device(self) -> torch.device:
        return self.nngp.device

    def replace(self, **changes) -> "Kernel":
        """A copy with the given fields replaced (the kernel itself never changes)."""
        return dataclasses.replace(self, **changes)

    def to(self, *args, **kwargs) -> "Kernel":
        """Moves or casts every tensor, like :meth:`torch.Tensor.to`."""
        move = lambda t: None if t is None else t.to(*args, **kwargs)  # noqa: E731
        return self.replace(
            nngp=move(self.nngp), ntk=move(self.ntk), var1=move(self.var1), var2=move(self.var2)
        )

    def __repr__(self) -> str:
        parts = [f"shape={self.shape}", f"dtype={self.dtype}", f"ntk={'yes' if self.ntk is not None else 'no'}"]
        if self.spatial:
            parts.append(f"layout={self.layout!r}")
        if self.same_inputs:
            parts.append("same_inputs=True")
        return f"Kernel({', '.join(parts)})"


class CovTape:
    """One block of inputs' own covariances after each covariance step of a network.

    Own covariances depend on nothing but the inputs they belong to, and every tile of a call
    applies the same network: so the first tile that meets a block records its covariances
    step by step (:meth:`Work.set_covs`) and every later tile with that block replays them
    instead of computing them again. Replayed values are the recorded tensors themselves; no
    rule writes into a covariance it is given, so they stay what was recorded.
    """

    __slots__ = ("input", "steps")

    def __init__(self) -> None:
        self.input: Optional[torch.Tensor] = None  # the input layer's covariances
        self.steps: list[torch.Tensor] = []

    def nbytes(self) -> int:
        tensors = ([] if self.input is None else [self.input]) + self.steps
        return sum(t.numel() * t.element_size() for t in tensors)


class Tapes:
    """The tapes of a tile's row and column blocks (one tape when the tile is a block against
    itself) and the index of the next step; shared by a :class:`Work` and its FanOut copies,
    whose steps run in a fixed order."""

    __slots__ = ("side1", "side2", "pos")

    def __init__(self, side1: CovTape, side2: CovTape) -> None:
        self.side1, self.side2, self.pos = side1, side2, 0

    def take(self, tape: CovTape, index: int, make) -> torch.Tensor:
        if index < len(tape.steps):
            return tape.steps[index]
        # Steps are taken in order, so this is the next one (the engine checks the count).
        value = make()
        _scratch.release(value)  # kept across tiles: no longer the pool's to hand out
        tape.steps.append(value)
        return value


class Work:
    """Mutable kernel state on one tile of input pairs (private to widenet).

    The tile ``nngp``/``ntk`` has shape ``(B, C, *P)`` in the grid mode (``B`` row inputs
    against ``C`` column inputs) and ``(B, *P)`` in the self mode (each input against
    itself), where the position-pair shape ``P`` is ``S`` in the diagonal layout and
    ``S + S`` in the full one (``S`` the spatial shape; empty for fully connected features).
    ``nngp is None`` means that only the covariances are propagated.

    ``cov1``/``cov2`` are the row and column inputs' own covariances in the same layout
    (``(B, *P)`` and ``(C, *P)``); ``var1``/``var2`` are their per-position variances
    ``(B, *S)``. Nonlinearities and attention read them; every layer transforms them along
    with the tile, so they are always those of the layer being represented.
    ``diagonal`` is the offset of the tile's main diagonal (x_i against itself) when the tile
    contains it, else ``None``; nonlinearities copy ``cov1`` onto it so that an input's
    kernel with itself is exactly its covariance.
    ``keep1``/``keep2`` are ``(B, *S)``/``(C, *S)`` tensors of ones at real positions and zeros
    at padding, or ``None`` without masks: padded positions carry zero covariance after every
    layer (:meth:`remask`), and layers that mix positions leave them out of their sums.
    """

    __slots__ = ("nngp", "ntk", "cov1", "cov2", "self_mode", "is_gaussian", "width",
                 "diagonal", "spatial", "full", "keep1", "keep2", "tapes", "_zero_ntk")

    def __init__(
        self,
        nngp: Optional[torch.Tensor],
        ntk: Optional[torch.Tensor],
        cov1: torch.Tensor,
        cov2: torch.Tensor,
        *,
        self_mode: bool = False,
        is_gaussian: bool = False,
        width: int = 0,
        diagonal: Optional[int] = None,
        spatial: tuple = (),
        full: bool = False,
        keep1: Optional[torch.Tensor] = None,
        keep2: Optional[torch.Tensor] = None,
        tapes: Optional[Tapes] = None,
    ) -> None:
        self.nngp = nngp
        self.ntk = ntk
        self.cov1 = cov1
        self.cov2 = cov2
        self.self_mode = self_mode
        self.is_gaussian = is_gaussian
        self.width = width
        self.diagonal = diagonal
        self.spatial = tuple(spatial)
        self.full = full
        self.keep1 = keep1
        self.keep2 = keep2
        self.tapes = tapes
        self._zero_ntk: Optional[tuple] = None

    # ---- the input layer's NTK ----------------------------------------------------------------
    def start_ntk(self) -> None:
        """``ntk = 0`` (the input layer's), remembered as zero until something writes to it,
        so that a first layer may skip transforming it (:attr:`ntk_is_zero`)."""
        self.ntk = _scratch.empty_like(self.nngp).zero_()
        self._zero_ntk = (weakref.ref(self.ntk), self.ntk._version)

    @property
    def ntk_is_zero(self) -> bool:
        """True when ``ntk`` is the zero tensor of :meth:`start_ntk`, untouched since: the same
        tensor, with the same in-place version counter (any write would have raised it)."""
        if self._zero_ntk is None or self.ntk is None:
            return False
        ref, version = self._zero_ntk
        return ref() is self.ntk and self.ntk._version == version

    @property
    def masked(self) -> bool:
        """True when some inputs carry padding masks (``keep1``/``keep2``)."""
        return self.keep1 is not None

    # ---- geometry ---------------------------------------------------------------------------
    @property
    def npos(self) -> int:
        return math.prod(self.spatial)

    @property
    def is_full(self) -> bool:
        """True when position pairs are all present (full layout with spatial axes)."""
        return self.full and bool(self.spatial)

    @property
    def pair_shape(self) -> tuple[int, ...]:
        return self.spatial + self.spatial if self.is_full else self.spatial

    def _variances(self, cov: torch.Tensor) -> torch.Tensor:
        if not self.is_full:
            return cov
        n, b = self.npos, cov.shape[0]
        return cov.reshape(b, n, n).diagonal(dim1=1, dim2=2).reshape((b,) + self.spatial)

    @property
    def var1(self) -> torch.Tensor:
        """Per-position variances of the row inputs, ``(B, *S)``."""
        return self._variances(self.cov1)

    @property
    def var2(self) -> torch.Tensor:
        return self._variances(self.cov2)

    def outer(self, a1: torch.Tensor, a2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Row and column operands of shape ``(B, *S)``/``(C, *S)`` shaped to broadcast
        against the tile (position ``s`` of the row against ``s'`` of the column)."""
        d = len(self.spatial)
        if self.self_mode:
            if not self.is_full:
                return a1, a2
            return a1.reshape(a1.shape + (1,) * d), a2.reshape(a2.shape[:1] + (1,) * d + a2.shape[1:])
        if not self.is_full:
            return a1.unsqueeze(1), a2.unsqueeze(0)
        r = a1.reshape(a1.shape[:1] + (1,) + a1.shape[1:] + (1,) * d)
        c = a2.reshape((1,) + a2.shape[:1] + (1,) * d + a2.shape[1:])
        return r, c

    def prod(self, a1: torch.Tensor, a2: torch.Tensor) -> torch.Tensor:
        """The tile of products ``a1[i, s] * a2[j, s']`` (a fresh tensor)."""
        r, c = self.outer(a1, a2)
        return _scratch.call(torch.mul, r, c)

    def sum(self, a1: torch.Tensor, a2: torch.Tensor) -> torch.Tensor:
        """The tile of sums ``a1[i, s] + a2[j, s']`` (a fresh tensor)."""
        r, c = self.outer(a1, a2)
        return r + c

    def zero_variance_mask(self, var1: Optional[torch.Tensor] = None,
                           var2: Optional[torch.Tensor] = None) -> Optional[torch.Tensor]:
        """Boolean tile marking pairs where either input has zero variance, or None if none
        (``var1``/``var2``: the variances, when the caller already has them)."""
        var1 = self.var1 if var1 is None else var1
        var2 = self.var2 if var2 is None else var2
        if bool(var1.all()) and bool(var2.all()):
            return None
        r, c = self.outer(var1 == 0, var2 == 0)
        return r | c

    def own_prod(self, a: torch.Tensor) -> torch.Tensor:
        """Products ``a[i, s] * a[i, s']`` shaped like an input's own covariance."""
        if not self.is_full:
            return a * a
        d = len(self.spatial)
        return a.reshape(a.shape + (1,) * d) * a.reshape(a.shape[:1] + (1,) * d + a.shape[1:])

    # ---- updates ----------------------------------------------------------------------------
    def remask(self) -> None:
        """Zeroes every entry that involves a padded position (no-op without masks)."""
        if self.keep1 is None:
            return
        if self.nngp is not None:
            m = self.prod(self.keep1, self.keep2)
            self.nngp.mul_(m)
            if self.ntk is not None:
                self.ntk.mul_(m)
        self.set_covs(lambda c: c * self.own_prod(self.keep1), lambda c: c * self.own_prod(self.keep2))

    def unmask(self) -> None:
        """Drops the masks once the positions are gone (global pooling)."""
        self.keep1 = self.keep2 = None

    def require_unmasked(self, owner: str, why: str) -> None:
        if self.keep1 is not None:
            from .errors import ShapeError

            raise ShapeError(
                f"{owner}: padding masks are supported only through layers that keep every "
                f"position in place (Dense, nonlinearities, stride-1 'same' Conv, LayerNorm, "
                f"Dropout, SelfAttention, global pooling); this one {why}"
            )
    def set_covs(self, fn1, fn2=None) -> None:
        """``cov1 = fn1(cov1)`` and ``cov2 = fn2(cov2)`` (``fn2`` defaults to ``fn1``; once when
        they are the same tensor). One covariance step: with :class:`Tapes`, a step that an
        earlier tile of the same block recorded is replayed instead of computed. ``fn1`` and
        ``fn2`` return new tensors; they must not write into their argument."""
        same = self.cov2 is self.cov1
        fn2 = fn1 if fn2 is None else fn2
        tapes = self.tapes
        if tapes is None:
            self.cov1 = fn1(self.cov1)
            self.cov2 = self.cov1 if same else fn2(self.cov2)
            return
        index = tapes.pos
        tapes.pos += 1
        cov1, cov2 = self.cov1, self.cov2
        self.cov1 = tapes.take(tapes.side1, index, lambda: fn1(cov1))
        self.cov2 = self.cov1 if same else tapes.take(tapes.side2, index, lambda: fn2(cov2))

    def map_tiles(self, fn) -> None:
        """Applies ``fn`` to the NNGP and NTK tiles (those present)."""
        if self.nngp is not None:
            self.nngp = fn(self.nngp)
            if self.ntk is not None:
                self.ntk = fn(self.ntk)

    def pair_diagonal(self, tile: torch.Tensor) -> Optional[torch.Tensor]:
        """View of the tile's entries (x_i, x_i), shape ``(*P, m)``, or None."""
        if self.diagonal is None or tile is None or self.self_mode:
            return None
        return tile.diagonal(self.diagonal, 0, 1)

    def sync_diagonal(self) -> None:
        d = self.pair_diagonal(self.nngp)
        if d is not None:
            m = d.shape[-1]
            d.copy_(self.cov1[:m].movedim(0, -1))

    def copy(self) -> "Work":
        clone = lambda t: None if t is None else _scratch.clone(t)  # noqa: E731
        cov1 = _scratch.clone(self.cov1)
        cov2 = cov1 if self.cov2 is self.cov1 else _scratch.clone(self.cov2)
        return Work(
            clone(self.nngp), clone(self.ntk), cov1, cov2,
            self_mode=self.self_mode, is_gaussian=self.is_gaussian, width=self.width,
            diagonal=self.diagonal, spatial=self.spatial, full=self.full,
            keep1=self.keep1, keep2=self.keep2, tapes=self.tapes,
        )
