"""The kernel state of one tile of input pairs, which layer rules transform.

A ``Tile`` is what a layer's kernel rule receives (see ``widenet.layers.base`` for
the contract): the NNGP and NTK of a block of row inputs against a block of column inputs,
the inputs' own covariances, and the geometry of the layer's output. It is mutable and
private to a kernel call: rules update it in place on tensors the engine owns, which keeps
peak memory close to the size of the outputs.
"""

from __future__ import annotations

import math
import weakref
from typing import Callable, Optional, Union

import torch

from ..errors import ShapeError
from . import scratch
from .replay import Tapes

__all__ = ["Tile", "Flow"]

Cov = Callable[[torch.Tensor], torch.Tensor]


class Tile:
    """Mutable kernel state on one tile of input pairs.

    ``nngp``/``ntk`` have shape ``(B, C, *P)`` in the grid mode (``B`` row inputs against
    ``C`` column inputs) and ``(B, *P)`` in the self mode (each input against itself), where
    the position-pair shape ``P`` is ``S`` in the diagonal layout and ``S + S`` in the full
    one (``S`` the spatial shape; empty for features). ``nngp is None`` means that only the
    covariances are propagated; ``ntk is None`` that only the NNGP is asked for.

    ``cov1``/``cov2`` are the row and column inputs' own covariances in the same layout
    (``(B, *P)`` and ``(C, *P)``; one tensor when the tile is a block against itself);
    ``var1``/``var2`` their per-position variances ``(B, *S)``. Rules change them only
    through ``set_covs``. ``diagonal`` is the offset of the tile's main diagonal (x_i
    against itself) when the tile contains it, else ``None``. ``keep1``/``keep2`` are
    ``(B, *S)``/``(C, *S)`` ones at real positions and zeros at padding, or ``None``.
    ``side1``/``side2`` hold the row and column inputs' side inputs (a graph's edges for
    ``Aggregate``): a dict of tensors whose leading axis runs over the tile's inputs, empty
    when the call has none. ``is_gaussian`` (the output of an affine layer) and ``width`` (declared features or
    channels) describe the layer represented.
    """

    __slots__ = ("nngp", "ntk", "cov1", "cov2", "self_mode", "is_gaussian", "width",
                 "diagonal", "spatial", "full", "keep1", "keep2", "side1", "side2", "tapes", "_zero_ntk")

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
        side1: Optional[dict] = None,
        side2: Optional[dict] = None,
        tapes: Optional[Tapes] = None,
    ) -> None:
        self.nngp, self.ntk, self.cov1, self.cov2 = nngp, ntk, cov1, cov2
        self.self_mode, self.is_gaussian, self.width = self_mode, is_gaussian, width
        self.diagonal, self.spatial, self.full = diagonal, tuple(spatial), full
        self.keep1, self.keep2, self.tapes = keep1, keep2, tapes
        self.side1 = {} if side1 is None else side1
        self.side2 = self.side1 if side2 is None else side2
        self._zero_ntk: Optional[tuple] = None

    # ---- the input layer's NTK ----------------------------------------------------------------
    def start_ntk(self) -> None:
        """``ntk = 0`` (the input layer's), remembered as zero until something writes to it,
        so that a first layer may skip transforming it (``ntk_is_zero``)."""
        self.ntk = scratch.empty_like(self.nngp).zero_()
        self._zero_ntk = (weakref.ref(self.ntk), self.ntk._version)

    @property
    def ntk_is_zero(self) -> bool:
        """True when ``ntk`` is the zero tensor of ``start_ntk``, untouched since: the same
        tensor, with the same in-place version counter (any write would have raised it)."""
        if self._zero_ntk is None or self.ntk is None:
            return False
        ref, version = self._zero_ntk
        return ref() is self.ntk and self.ntk._version == version

    @property
    def masked(self) -> bool:
        """True when some inputs carry padding masks (``keep1``/``keep2``)."""
        return self.keep1 is not None

    # ---- geometry -----------------------------------------------------------------------------
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

    def variances(self, cov: torch.Tensor) -> torch.Tensor:
        """Per-position variances ``(B, *S)`` of own covariances ``cov`` ``(B, *P)``."""
        if not self.is_full:
            return cov
        n, b = self.npos, cov.shape[0]
        return cov.reshape(b, n, n).diagonal(dim1=1, dim2=2).reshape((b,) + self.spatial)

    @property
    def var1(self) -> torch.Tensor:
        """Per-position variances of the row inputs, ``(B, *S)``."""
        return self.variances(self.cov1)

    @property
    def var2(self) -> torch.Tensor:
        return self.variances(self.cov2)

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
        return scratch.call(torch.mul, r, c)

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

    # ---- updates ------------------------------------------------------------------------------
    def set_covs(self, fn1: Cov, fn2: Optional[Cov] = None) -> None:
        """``cov1 = fn1(cov1)`` and ``cov2 = fn2(cov2)`` (``fn2`` defaults to ``fn1``; once when
        they are the same tensor). One covariance step: a step that an earlier tile of the
        same block recorded is replayed instead of computed (``widenet._engine.replay``).
        ``fn1`` and ``fn2`` return new tensors; they must not write into their argument."""
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

    def map_tiles(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
        """Applies ``fn`` to the NNGP and NTK tiles (those present)."""
        if self.nngp is not None:
            self.nngp = fn(self.nngp)
            if self.ntk is not None:
                self.ntk = fn(self.ntk)

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
            raise ShapeError(
                f"{owner}: padding masks are supported only through layers that keep every "
                f"position in place (Dense, nonlinearities, stride-1 'same' Conv, LayerNorm, "
                f"Dropout, SelfAttention, global pooling); this one {why}"
            )

    def pair_diagonal(self, tile: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
        """View of the tile's entries (x_i, x_i), shape ``(*P, m)``, or None."""
        if self.diagonal is None or tile is None or self.self_mode:
            return None
        return tile.diagonal(self.diagonal, 0, 1)

    def sync_diagonal(self) -> None:
        """Gives each input against itself its own covariance's exact bits."""
        d = self.pair_diagonal(self.nngp)
        if d is not None:
            d.copy_(self.cov1[: d.shape[-1]].movedim(0, -1))

    def copy(self) -> "Tile":
        """An independent copy (FanOut's branches), sharing masks, side inputs and tapes."""
        clone = lambda t: None if t is None else scratch.clone(t)  # noqa: E731
        cov1 = scratch.clone(self.cov1)
        cov2 = cov1 if self.cov2 is self.cov1 else scratch.clone(self.cov2)
        return Tile(
            clone(self.nngp), clone(self.ntk), cov1, cov2,
            self_mode=self.self_mode, is_gaussian=self.is_gaussian, width=self.width,
            diagonal=self.diagonal, spatial=self.spatial, full=self.full,
            keep1=self.keep1, keep2=self.keep2, side1=self.side1, side2=self.side2, tapes=self.tapes,
        )


Flow = Union[Tile, tuple]  # one branch, or a tuple of branches after FanOut
