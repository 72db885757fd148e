"""Random initialization of the twins' parameters.

Each parametrized twin draws its parameters from its own ``torch.Generator`` seeded from the
network seed and its position in the network (``widenet.layers.base.derive_seed``), so a
network is reproducible from one integer whatever order its lazy parts materialize in.
Parameters are drawn in float64 on the CPU and then cast, so one seed gives the same network
in every dtype and on every device (up to rounding).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from ..errors import ParameterError

__all__ = ["standard_normal", "draw_affine"]


def standard_normal(shape: Sequence[int], generator: torch.Generator) -> torch.Tensor:
    return torch.randn(*shape, generator=generator, dtype=torch.float64)


def _orthogonal(rows: int, cols: int, generator: torch.Generator) -> torch.Tensor:
    """A Haar-random (rows, cols) partial isometry: orthonormal rows or columns, whichever
    are fewer (QR of a Gaussian matrix with the signs of R's diagonal fixed)."""
    big, small = max(rows, cols), min(rows, cols)
    q, r = torch.linalg.qr(standard_normal((big, small), generator))
    q = q * torch.sign(torch.diagonal(r))
    return q if rows >= cols else q.T


def _draw_weight(module: nn.Module, fan_in: int, generator: torch.Generator) -> torch.Tensor:
    """The weight in the "ntk" parameterization's units (multiplied by W_std / sqrt(fan_in) in
    the forward pass). "gaussian": N(0, 1) entries. "orthogonal": the (out, fan_in) matrix is
    sqrt(max(out, fan_in)) times a Haar partial isometry, so the effective weight has the
    Gaussian's entry variance W_std^2 / fan_in and singular values all equal (W_std when
    out <= fan_in; Saxe et al. 2014). "delta_orthogonal" (convolutions; Xiao et al. 2018):
    zero except at the kernel's centre, an orthogonal (out, in) matrix scaled the same way
    against the centre's fan-in ``in``, so every position's channels map isometrically."""
    shape = tuple(module.weight.shape)
    init = module.init
    if init == "gaussian":
        return standard_normal(shape, generator)
    out = shape[0]
    if init == "orthogonal" or len(shape) == 2:
        q = _orthogonal(out, fan_in, generator)
        return (math.sqrt(max(out, fan_in)) * q).reshape(shape)
    in_channels, taps = shape[1], math.prod(shape[2:])
    if any(k % 2 == 0 for k in shape[2:]):
        raise ParameterError(f"ConvModule: init='delta_orthogonal' needs odd kernel sizes, with a centre tap "
                             f"(got kernel_size {shape[2:]})")
    weight = torch.zeros(shape, dtype=torch.float64)
    centre = (slice(None), slice(None)) + tuple(k // 2 for k in shape[2:])
    # Effective centre weight W_std sqrt(max(out, in) / in) Q, in units of W_std / sqrt(in * taps).
    weight[centre] = math.sqrt(taps * max(out, in_channels)) * _orthogonal(out, in_channels, generator)
    return weight


def draw_affine(module: nn.Module, fan_in: int) -> None:
    """Draws ``module.weight`` (see ``_draw_weight``) and ``module.bias`` (N(0, 1)) from
    ``module.seed`` in the "ntk" parameterization's units; "standard" scales them by
    ``W_std / sqrt(fan_in)`` and ``b_std`` here instead of in the forward pass."""
    generator = torch.Generator().manual_seed(module.seed)
    weight = _draw_weight(module, fan_in, generator)
    bias = None if module.bias is None else standard_normal(module.bias.shape, generator)
    if module.parameterization == "standard":
        weight.mul_(module.W_std / math.sqrt(fan_in))
        if bias is not None:
            bias.mul_(module.b_std)
    with torch.no_grad():
        module.weight.copy_(weight)
        if bias is not None:
            module.bias.copy_(bias)
