"""Spatial geometry shared by convolution and pooling: sizes, paddings and output shapes.

Paddings follow one rule in kernels and twins: "same" (zeros, output ``ceil(size /
stride)``, the padding split with the extra element after), "valid" (none) and "circular"
(wrap-around, sizes as "same").
"""

from __future__ import annotations

from typing import Sequence, Union

import torch

from .._engine import Tile
from .._validate import check_int
from ..errors import ParameterError, ShapeError

__all__ = ["PADDINGS", "Size", "as_tuple", "check_size", "pads_for", "spatial_of", "pad_input",
           "torch_pads", "spatial_pads", "map_positions"]

PADDINGS = ("same", "valid", "circular")

Size = Union[int, Sequence[int]]


def check_size(owner: str, name: str, value: Size) -> Size:
    """An int >= 1, or 1 to 3 of them (one per spatial dimension)."""
    if isinstance(value, (list, tuple)):
        if not 1 <= len(value) <= 3:
            raise ParameterError(f"{owner}: {name} must be an int or 1 to 3 ints (got {value!r})")
        return tuple(check_int(owner, f"{name}[{i}]", v, minimum=1) for i, v in enumerate(value))
    return check_int(owner, name, value, minimum=1)


def as_tuple(owner: str, name: str, value, ndim: int, *, minimum: int = 1) -> tuple[int, ...]:
    """``value`` (an int or a sequence of ``ndim`` ints, each >= ``minimum``) as a tuple."""
    if isinstance(value, (list, tuple)):
        if len(value) != ndim:
            raise ParameterError(
                f"{owner}: {name} must be an int or a sequence of {ndim} ints, one per spatial "
                f"dimension (got {value!r})"
            )
        return tuple(check_int(owner, f"{name}[{i}]", v, minimum=minimum) for i, v in enumerate(value))
    return (check_int(owner, name, value, minimum=minimum),) * ndim


def pads_for(owner: str, size: int, window: int, stride: int, dilation: int, padding: str) -> tuple[int, int, int]:
    """``(pad_before, pad_after, out_size)`` along one axis (see the module docstring)."""
    span = (window - 1) * dilation + 1
    if padding == "valid":
        if size < span:
            raise ShapeError(
                f"{owner}: with padding='valid' each spatial size must be at least the "
                f"(dilated) window {span} (got {size})"
            )
        return 0, 0, (size - span) // stride + 1
    out = -(-size // stride)
    total = max((out - 1) * stride + span - size, 0)
    if padding == "circular" and total > size:
        raise ShapeError(
            f"{owner}: circular padding needs at most {size} wrapped positions per axis "
            f"(window {span} on size {size} needs {total})"
        )
    return total // 2, total - total // 2, out


def spatial_of(owner: str, tile: Tile) -> tuple[int, ...]:
    """The tile's spatial shape; a clear error when it has none."""
    if not tile.spatial:
        raise ShapeError(
            f"{owner}: needs inputs with spatial axes, (N, C, *S) with 1 to 3 spatial axes; this "
            f"layer's input has none (after Flatten or global pooling, or (N, features) inputs)"
        )
    return tile.spatial


def torch_pads(pads: Sequence[tuple[int, int]]) -> list[int]:
    """``torch.nn.functional.pad`` order (last axis first) of per-axis ``(before, after)``."""
    out: list[int] = []
    for lo, hi in reversed(list(pads)):
        out += [lo, hi]
    return out


def spatial_pads(shape: Sequence[int], window, stride, dilation, padding: str, owner: str):
    """Per-axis ``(before, after)`` paddings of a twin's input."""
    return [pads_for(owner, n, k, s, d, padding)[:2] for n, k, s, d in zip(shape, window, stride, dilation)]


def pad_input(x: torch.Tensor, pads, padding: str) -> torch.Tensor:
    flat = torch_pads(pads)
    if not any(flat):
        return x
    return torch.nn.functional.pad(x, flat, mode="circular" if padding == "circular" else "constant")


def map_positions(tile: Tile, fn, out_spatial: Sequence[int]) -> Tile:
    """Applies a linear map of positions ``fn`` (a new tensor from a kernel tensor: both
    positions of every pair, as ``ImageResize``, ``Index`` and ``DotGeneral`` do) to the
    tile's NNGP, NTK and own covariances, and sets its spatial shape."""
    if tile.nngp is not None:
        tile.nngp = fn(tile.nngp)
        if tile.ntk is not None:
            tile.ntk = fn(tile.ntk)
    tile.set_covs(fn)
    tile.spatial = tuple(out_spatial)
    return tile
