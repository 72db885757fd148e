"""The result of a kernel computation: ``Kernel``, an immutable dataclass.

While a kernel is being computed, layers transform its private, mutable counterpart on tiles
of input pairs (``widenet._engine.Tile``).
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
        """Moves or casts every tensor, like ``torch.Tensor.to``."""
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
