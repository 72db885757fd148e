"""The kernel state that flows through an architecture.

:class:`Kernel` is the public, immutable result. :class:`Work` is its private, mutable
counterpart used while a kernel is being computed: layers transform a ``Work`` in place on
tiles that the engine owns, which is what keeps peak memory close to the size of the outputs.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional

import torch

__all__ = ["Kernel"]


@dataclass(frozen=True)
class Kernel:
    """Infinite-width kernels between two sets of inputs.

    Attributes:
        nngp: ``(N1, N2)`` NNGP covariance ``E[f(x1) f(x2)]`` of one output unit.
        ntk: ``(N1, N2)`` neural tangent kernel, or ``None`` when only the NNGP was asked for.
        var1: ``(N1,)`` per-input variances ``K(x, x)`` of ``x1``.
        var2: ``(N2,)`` per-input variances of ``x2``; ``None`` when ``x2`` is ``x1``
            (the kernel was computed with ``x2=None``).
        is_gaussian: whether the outputs are Gaussian given the inputs (true after an affine
            layer, false after a nonlinearity); a nonlinearity requires a Gaussian input.
        width: number of features of the represented layer, as declared in the architecture.
            It enters the "standard" parameterization, whose NTK depends on layer widths.

    Kernels follow Neural Tangents' conventions (input kernel ``x . x' / d``), so values
    compare number for number.
    """

    nngp: torch.Tensor
    ntk: Optional[torch.Tensor]
    var1: torch.Tensor
    var2: Optional[torch.Tensor] = None
    is_gaussian: bool = False
    width: int = 0

    @property
    def same_inputs(self) -> bool:
        """True when the kernel was computed between a set of inputs and itself."""
        return self.var2 is None

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
        if self.same_inputs:
            parts.append("same_inputs=True")
        return f"Kernel({', '.join(parts)})"


class Work:
    """Mutable kernel state on one tile of input pairs (private to widenet).

    ``nngp``/``ntk`` hold the tile: shape ``(B, C)`` in the grid layout (row inputs against
    column inputs) or ``(B,)`` in the paired layout (input i against input i of the other set).
    ``nngp is None`` means a variance-only pass: layers just propagate ``var1``/``var2``.
    ``diagonal`` is the offset of the tile's main diagonal (x_i against itself) when the tile
    contains it, else ``None``; nonlinearities re-synchronize that diagonal with ``var1`` so
    that correlations of an input with itself stay exactly one.
    """

    __slots__ = ("nngp", "ntk", "var1", "var2", "paired", "is_gaussian", "width", "diagonal")

    def __init__(
        self,
        nngp: Optional[torch.Tensor],
        ntk: Optional[torch.Tensor],
        var1: torch.Tensor,
        var2: torch.Tensor,
        *,
        paired: bool = False,
        is_gaussian: bool = False,
        width: int = 0,
        diagonal: Optional[int] = None,
    ) -> None:
        self.nngp = nngp
        self.ntk = ntk
        self.var1 = var1
        self.var2 = var2
        self.paired = paired
        self.is_gaussian = is_gaussian
        self.width = width
        self.diagonal = diagonal

    def outer(self, a1: torch.Tensor, a2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Row and column operands shaped to broadcast against the tile."""
        if self.paired:
            return a1, a2
        return a1[:, None], a2[None, :]

    def prod(self, a1: torch.Tensor, a2: torch.Tensor) -> torch.Tensor:
        """The tile of products ``a1[i] * a2[j]`` (a fresh tensor)."""
        r, c = self.outer(a1, a2)
        return r * c

    def sum(self, a1: torch.Tensor, a2: torch.Tensor) -> torch.Tensor:
        """The tile of sums ``a1[i] + a2[j]`` (a fresh tensor)."""
        r, c = self.outer(a1, a2)
        return r + c

    def zero_variance_mask(self) -> Optional[torch.Tensor]:
        """Boolean tile marking pairs where either input has zero variance, or None if none."""
        z1, z2 = self.var1 == 0, self.var2 == 0
        if not (bool(z1.any()) or bool(z2.any())):
            return None
        r, c = self.outer(z1, z2)
        return r | c

    def sync_diagonal(self) -> None:
        if self.diagonal is not None and self.nngp is not None and not self.paired:
            d = self.nngp.diagonal(self.diagonal)
            d.copy_(self.var1[: d.shape[0]])

    def copy(self) -> "Work":
        clone = lambda t: None if t is None else t.clone()  # noqa: E731
        return Work(
            clone(self.nngp), clone(self.ntk), self.var1.clone(), self.var2.clone(),
            paired=self.paired, is_gaussian=self.is_gaussian, width=self.width,
            diagonal=self.diagonal,
        )
