"""Padding masks inside finite twins.

A network's twin called with ``mask=`` (boolean ``(N, *S)``, True at padded positions) runs
on variable-length inputs as the kernels' masks describe: padded positions are zero after
every layer and left out of attention, global pooling and LayerNorm. The outermost module
called with a mask sets it for the call; the modules that mix positions read it here.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import Optional

import torch

from .._validate import check_mask
from ..errors import ShapeError

__all__ = ["current_keep", "zero_padding", "require_no_padding", "masking"]

# ``keep`` tensors (ones at real positions) of the current forward call.
_KEEP: ContextVar[Optional[torch.Tensor]] = ContextVar("widenet_keep", default=None)


def current_keep(x: torch.Tensor) -> Optional[torch.Tensor]:
    """The active ``keep`` tensor when it matches ``x``'s positions, else None."""
    keep = _KEEP.get()
    if keep is None or not isinstance(x, torch.Tensor) or x.ndim != keep.ndim + 1:
        return None
    if x.shape[0] != keep.shape[0] or tuple(x.shape[2:]) != tuple(keep.shape[1:]):
        return None
    return keep


def zero_padding(x):
    """``x`` with zeros at padded positions (tuples of branches element by element)."""
    if isinstance(x, tuple):
        return tuple(zero_padding(t) for t in x)
    keep = current_keep(x)
    return x if keep is None else x * keep.unsqueeze(1).to(x.dtype)


def require_no_padding(x: torch.Tensor, owner: str, why: str) -> None:
    if current_keep(x) is not None:
        raise ShapeError(f"{owner}: padding masks are supported only through layers that keep "
                         f"every position in place; this one {why}")


class masking:
    """Context in which padded positions of ``x`` (``mask`` True) are zero and left out of
    every position-mixing operation. ``mask=None`` keeps the enclosing context."""

    def __init__(self, x: torch.Tensor, mask: Optional[torch.Tensor], owner: str) -> None:
        self.keep = None if mask is None else (~check_mask(owner, "mask", mask, x)).to(x.dtype)
        self.token = None

    def __enter__(self) -> None:
        if self.keep is not None:
            self.token = _KEEP.set(self.keep)

    def __exit__(self, *exc) -> None:
        if self.token is not None:
            _KEEP.reset(self.token)
