"""Resizing the spatial dimensions, as ``jax.image.resize`` (and so ``stax.ImageResize``)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Sequence, Union

import numpy as np
import torch
from torch import nn

from .._engine import Flow, exact, spatial_axes
from .._validate import check_choice
from ..errors import ParameterError, ShapeError
from ._geometry import map_positions, spatial_of
from ._masks import require_no_padding
from .base import Build, Layer, Spec

__all__ = ["ImageResize", "ImageResizeModule", "resize_matrix"]

METHODS = ("linear", "nearest", "cubic", "lanczos3", "lanczos5")


def _triangle(x: np.ndarray) -> np.ndarray:
    return np.maximum(0.0, 1.0 - np.abs(x))


def _keys_cubic(x: np.ndarray) -> np.ndarray:  # Keys 1981, a = -0.5
    out = ((1.5 * x - 2.5) * x) * x + 1.0
    out = np.where(x >= 1.0, ((-0.5 * x + 2.5) * x - 4.0) * x + 2.0, out)
    return np.where(x >= 2.0, 0.0, out)


def _lanczos(radius: int):
    def kernel(x: np.ndarray) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            y = radius * np.sin(np.pi * x) * np.sin(np.pi * x / radius) / (np.pi**2 * x**2)
        return np.where(x > radius, 0.0, np.where(x > 1e-3, y, 1.0))
    return kernel


_KERNELS = {"linear": _triangle, "cubic": _keys_cubic, "lanczos3": _lanczos(3), "lanczos5": _lanczos(5)}


@lru_cache(maxsize=64)
def resize_matrix(size_in: int, size_out: int, method: str, antialias: bool) -> np.ndarray:
    """The ``(size_out, size_in)`` matrix of one axis' resampling, ``y = R x``, by the
    definition of ``jax.image.resize`` (scale ``size_out / size_in``, no translation):
    output ``j`` samples the input at ``f_j = (j + 0.5) / scale - 0.5`` with the method's
    kernel, stretched by ``1 / scale`` when downsampling with ``antialias``; weights
    normalized per output; outputs sampling outside ``[-0.5, size_in - 0.5]`` are zero.
    "nearest" picks input ``floor((j + 0.5) size_in / size_out)`` (computed in float32,
    as jax does). The identity where the size does not change."""
    if size_in == size_out:
        return np.eye(size_in)
    if method == "nearest":
        offsets = np.floor(((np.arange(size_out, dtype=np.float32) + 0.5) * np.float32(size_in)
                            / np.float32(size_out)).astype(np.float32)).astype(np.int64)
        out = np.zeros((size_out, size_in))
        out[np.arange(size_out), offsets] = 1.0
        return out
    scale = size_out / size_in
    inv = 1.0 / scale
    kernel_scale = max(inv, 1.0) if antialias else 1.0
    sample = (np.arange(size_out) + 0.5) * inv - 0.5
    weights = _KERNELS[method](np.abs(sample[None, :] - np.arange(size_in)[:, None]) / kernel_scale)
    total = weights.sum(0, keepdims=True)
    weights = np.where(np.abs(total) > 1000.0 * float(np.finfo(np.float32).eps),
                       weights / np.where(total != 0, total, 1), 0.0)
    inside = (sample >= -0.5) & (sample <= size_in - 0.5)
    return np.where(inside[None, :], weights, 0.0).T


def _apply(t: torch.Tensor, axes: Sequence[int], matrices: Sequence[torch.Tensor]) -> torch.Tensor:
    """``t`` with ``matrices[i]`` applied along ``axes[i]`` (``(out, in)`` each)."""
    for ax, m in zip(axes, matrices):
        if m is None:
            continue
        t = exact.matmul(t.movedim(ax, -1), m.T).movedim(-1, ax)
    return t


@dataclass(frozen=True)
class ImageResize(Layer):
    """Resizes the spatial dimensions to ``size`` (channels unchanged), as
    ``stax.ImageResize(shape=(-1, *size, -1), method, antialias)`` and ``jax.image.resize``.

    Every method is linear: along each resized axis the output is ``R x`` with ``R`` the
    method's ``(size_out, size_in)`` resampling matrix (``resize_matrix``), so the kernels
    are exact for all of them (Neural Tangents' kernel has "linear" and "nearest" only)::

        K'[s, s'] = sum_(u, u') R[s, u] R[s', u'] K[u, u']     (each axis, both positions)

    and likewise the NTK; Gaussian inputs stay Gaussian. The twin applies the same
    matrices, so the twin and the kernel agree exactly.

    Args:
        size: the output's spatial sizes, one per spatial dimension (-1 keeps that size), or
            one int for every dimension.
        method: "linear", "nearest", "cubic" (Keys, a = -0.5), "lanczos3" or "lanczos5".
        antialias: when downsampling, widen the kernel by the factor (a low-pass filter);
            no effect when upsampling or for "nearest".

    Example:

        >>> net = wn.Serial(wn.Conv(32, 3), wn.Relu(), wn.ImageResize((4, 4)), wn.Flatten(), wn.Dense(1))
        >>> net.kernel(torch.randn(3, 1, 8, 8)).nngp.shape
        torch.Size([3, 3])
    """

    size: Union[int, Sequence[int]]
    method: str = "linear"
    antialias: bool = True

    def __post_init__(self) -> None:
        size = self.size
        items = list(size) if isinstance(size, (tuple, list)) else [size]
        if not 1 <= len(items) <= 3 or any(isinstance(v, bool) or not isinstance(v, (int, np.integer))
                                           or (v < 1 and v != -1) for v in items):
            raise ParameterError(f"ImageResize: size must be an int >= 1 (or -1 to keep a size), or 1 to 3 of "
                                 f"them, one per spatial dimension (got {size!r})")
        object.__setattr__(self, "size", tuple(int(v) for v in items) if isinstance(size, (tuple, list)) else int(size))
        check_choice("ImageResize", "method", self.method, METHODS)
        if not isinstance(self.antialias, bool):
            raise ParameterError(f"ImageResize: antialias must be True or False (got {self.antialias!r})")

    def _needs_full(self) -> bool:
        return True

    def _sizes(self, spatial: Sequence[int]) -> tuple:
        sizes = self.size if isinstance(self.size, tuple) else (self.size,) * len(spatial)
        if len(sizes) != len(spatial):
            raise ShapeError(f"ImageResize: size {self.size!r} names {len(sizes)} spatial dimension(s) but the input "
                             f"has {len(spatial)} ({tuple(spatial)})")
        return tuple(n if s == -1 else s for n, s in zip(spatial, sizes))

    def _matrices(self, spatial: Sequence[int], like: torch.Tensor) -> list:
        return [None if n == m else torch.as_tensor(resize_matrix(n, m, self.method, self.antialias),
                                                    dtype=like.dtype, device=like.device)
                for n, m in zip(spatial, self._sizes(spatial))]

    def _rule(self, flow: Flow) -> Flow:
        w = self._single(flow)
        spatial = spatial_of("ImageResize", w)
        out = self._sizes(spatial)
        d = len(spatial)
        w.require_unmasked("ImageResize", "moves positions")

        def resize(t: torch.Tensor) -> torch.Tensor:
            first, second = spatial_axes(t.ndim, d, True)
            matrices = self._matrices(spatial, t)
            return _apply(_apply(t, first, matrices), second, matrices)

        return map_positions(w, resize, out)

    def _twin(self, spec: Spec, build: Build) -> tuple[nn.Module, Spec]:
        return ImageResizeModule(self), self._single_spec(spec)


class ImageResizeModule(nn.Module):
    """Resizes ``(N, C, *S)`` inputs with ``ImageResize``'s matrices (``resize_matrix``)."""

    def __init__(self, layer: ImageResize) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        require_no_padding(x, "ImageResizeModule", "moves positions")
        spatial = tuple(x.shape[2:])
        if not 1 <= len(spatial) <= 3:
            raise ShapeError(f"ImageResizeModule: expected input (N, C, *spatial) with 1 to 3 spatial axes "
                             f"(got {tuple(x.shape)})")
        matrices = self.layer._matrices(spatial, x)
        return _apply(x, range(2, 2 + len(spatial)), matrices)

    def extra_repr(self) -> str:
        return f"size={self.layer.size!r}, method={self.layer.method!r}, antialias={self.layer.antialias}"
