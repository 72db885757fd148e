"""Derivatives of kernels: reverse mode over in-place rules, and square roots at zero.

Kernel rules update tiles in place to keep memory low. Forward-mode AD (``torch.func.jvp``,
``torch.autograd.forward_ad``) carries tangents through in-place ops as they are. Reverse mode
cannot by itself: autograd saves some operands for the backward pass and refuses to use one
that a later in-place op changed. Within ``recording`` (the driver enters it when an input
or hyperparameter requires a gradient), every tensor autograd saves is copied at that moment,
so later in-place updates cannot reach it and the rules are differentiable as written. The
copies cost memory (about one more tile per saved operand); the buffer pool is off there
anyway, since ``out=`` carries no derivatives.

Rules with square roots of ``q1 q2 - K^2`` (zero for an input against itself) use
``safe_sqrt``, whose derivative at 0 is taken as 0: the limits of those rules at
``rho = 1`` are smooth (their infinite partial derivatives cancel), and this gives that limit
instead of ``inf - inf``.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
import torch.autograd.forward_ad as fwAD

from . import exact

__all__ = ["recording", "safe_sqrt", "is_dual"]


def _pack(t: torch.Tensor) -> torch.Tensor:
    # The user's tensors that require gradients (inputs, hyperparameters) are leaves, which
    # no rule may write; anything else may be written after it was saved.
    return t if t.is_leaf and t.requires_grad else t.clone()


def _unpack(t: torch.Tensor) -> torch.Tensor:
    return t


@contextlib.contextmanager
def recording() -> Iterator[None]:
    """Within the block, autograd saves copies of the tensors it needs for the backward pass
    (see the module docstring)."""
    with torch.autograd.graph.saved_tensors_hooks(_pack, _unpack):
        yield


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

    Float64 tensors on the CPU take ``1 / rsqrt(t)``, which torch computes faster than its
    float64 ``sqrt`` there (``benchmarks/run.py`` shows the effect on whole kernels). The
    result is within 1.5 units in the last place of the correctly rounded root (the tests
    draw arguments over 600 decades), exactly 0 at 0, and may be 0 for subnormal ``t`` (below
    2.2e-308). Reproducible mode and compiled rules keep ``sqrt``: the former because torch's
    scalar ``rsqrt`` (for the end of a vector run) may differ from its vector one in the last
    bit.
    """
    if is_dual(t):
        return _SafeSqrt.apply(t)
    if (t.dtype is torch.float64 and t.device.type == "cpu" and not torch.compiler.is_compiling()
            and not exact.active()):
        return t.rsqrt_().reciprocal_()
    return t.sqrt_()
