"""Differentiating kernels in their hyperparameters.

Kernel rules work in place on tiles to keep memory low, so kernels are differentiated in
their hyperparameters by forward-mode automatic differentiation (``torch.func.jvp`` or
``torch.autograd.forward_ad``): hyperparameters passed as 0-d tensors carry tangents through
every in-place rule. Forward mode costs one kernel evaluation per hyperparameter direction,
which is what few-hyperparameter fitting needs.

Rules with square roots of ``q1 q2 - K^2`` (zero for an input against itself) use
:func:`safe_sqrt`, whose derivative at 0 is taken as 0: the limits of those rules at
``rho = 1`` are smooth (their infinite partial derivatives cancel), and this gives that limit
instead of ``inf - inf``.
"""

from __future__ import annotations

import torch
import torch.autograd.forward_ad as fwAD

from .. import _exact

__all__ = ["safe_sqrt", "is_dual"]


class _SafeSqrt(torch.autograd.Function):
    @staticmethod
    def forward(x):
        return torch.sqrt(x)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(output)
        ctx.save_for_forward(output)
        ctx.root = output

    @staticmethod
    def backward(ctx, grad):
        (root,) = ctx.saved_tensors
        return torch.where(root > 0, grad / (2 * torch.where(root > 0, root, 1)), 0)

    @staticmethod
    def jvp(ctx, tangent):
        root = ctx.root
        return torch.where(root > 0, tangent / (2 * torch.where(root > 0, root, 1)), 0)


def is_dual(t: torch.Tensor) -> bool:
    """Whether ``t`` carries a forward-mode tangent or requires a gradient."""
    if t.requires_grad:
        return True
    try:
        return fwAD.unpack_dual(t).tangent is not None
    except RuntimeError:
        return False


def safe_sqrt(t: torch.Tensor) -> torch.Tensor:
    """``sqrt(t)`` for ``t >= 0`` (in place when nothing is differentiated), derivative 0 at 0.

    Float64 tensors on the CPU take ``1 / rsqrt(t)``: on the x86 machine the benchmarks run
    on, torch's float64 ``sqrt`` costs 1.37 ns an element on one thread, against 0.66 + 0.13 ns
    for its ``rsqrt`` and ``reciprocal``, and it was the ReLU rule's second most expensive
    op. The result is within 1.5 units in the last place of the correctly rounded root (the
    test draws arguments over 600 decades), exactly 0 at 0, and may be 0 for subnormal ``t``
    (below 2.2e-308).
    Reproducible mode and compiled rules keep ``sqrt``: the former because torch's scalar
    ``rsqrt`` (for the end of a vector run) may differ from its vector one in the last bit.
    """
    if is_dual(t):
        return _SafeSqrt.apply(t)
    if (t.dtype is torch.float64 and t.device.type == "cpu" and not torch.compiler.is_compiling()
            and not _exact.active()):
        return t.rsqrt_().reciprocal_()
    return t.sqrt_()
