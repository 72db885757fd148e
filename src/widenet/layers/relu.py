"""The ReLU family: ``phi(x) = a min(x, 0) + b max(x, 0)`` (ReLU, leaky ReLU, absolute value).

Their kernels are Cho & Saul's arc-cosine kernels ``J1`` and ``J0`` (Cho & Saul 2009),
written with the angle ``theta = atan2(sqrt(q1 q2 - K^2), K)`` between the inputs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .._engine import Tile, compiled, exact, fused
from ._arccos import PI, atan2, exact_atan2, root_of
from .nonlinearity import Nonlinearity

__all__ = ["ABRelu", "Relu", "LeakyRelu", "Abs"]


def _abrelu_rule(nngp, ntk, q1, q2, zero, factor, half, atan2=atan2):
    """ABRelu's rule on a tile, in place: ``tdot = half - factor * theta``, ``Theta *= tdot``,
    ``K = K tdot + factor sqrt(q1 q2 - K^2)``; ``q1``/``q2`` broadcast against the tile and
    ``zero`` marks pairs with a zero variance (or is None). Compiled when asked
    (``widenet._engine.compiled``); reproducible mode passes its own ``atan2``."""
    root = root_of(nngp, q1, q2)
    tdot = atan2(root, nngp)
    if zero is not None:
        tdot.masked_fill_(zero, PI / 2)
    tdot = exact.scale_add_(tdot, -factor, half)
    if ntk is not None:
        ntk.mul_(tdot)
    if isinstance(factor, torch.Tensor):
        nngp.mul_(tdot).add_(root.mul_(factor))
    else:
        nngp.mul_(tdot).add_(root, alpha=factor)
    return nngp, ntk


class _ABReluRule(torch.autograd.Function):
    """The rule with its derivatives in closed form, for calls that autograd records.

    Recorded op by op, the rule keeps about ten tile-sized tensors per layer for the backward
    pass; this keeps its inputs only and differentiates the rule itself. With ``root =
    sqrt(q1 q2 - K^2)`` and ``theta`` the angle (Price's theorem gives ``dK'/dK = tdot``):

        dK'/dK = tdot                  dK'/dq1 = factor root / (2 q1)
        dTheta'/dTheta = tdot          dTheta'/dK = factor Theta / root
        dTheta'/dq1 = -factor Theta K / (2 q1 root)
        dK'/dfactor = root - K theta   dTheta'/dfactor = -Theta theta
        dK'/dhalf = K                  dTheta'/dhalf = Theta

    (and ``q2`` like ``q1``). Where ``root`` is 0 (an input against itself, a zero variance)
    the angle's derivatives are taken as 0, as ``widenet._engine.safe_sqrt`` and the
    recorded rule take them.
    """

    @staticmethod
    def forward(ctx, nngp, ntk, q1, q2, factor, half, rule):
        # ``rule(nngp, ntk)``: the plain rule, in place on copies (the fused pass if it can).
        k, t = rule(nngp.clone(), None if ntk is None else ntk.clone())
        ctx.save_for_backward(nngp, ntk, q1, q2, *(v for v in (factor, half) if isinstance(v, torch.Tensor)))
        ctx.scalars = tuple(None if isinstance(v, torch.Tensor) else v for v in (factor, half))
        return k, t

    @staticmethod
    def backward(ctx, grad_k, grad_t):
        nngp, ntk, q1, q2, *tensors = ctx.saved_tensors
        factor, half = (tensors.pop(0) if v is None else v for v in ctx.scalars)
        root = torch.sqrt((q1 * q2 - nngp * nngp).clamp(min=0))
        live = root > 0
        theta = torch.where((q1 == 0) | (q2 == 0), PI / 2, torch.atan2(root, nngp))
        tdot = half - factor * theta
        inv_root = torch.where(live, 1 / torch.where(live, root, 1), 0)
        gk = torch.zeros_like(nngp) if grad_k is None else grad_k
        # Derivatives of the NNGP's output, then the NTK's, in each input.
        d_k, d_q_half, d_factor, d_half = gk * tdot, gk * (factor * root), gk * (root - nngp * theta), gk * nngp
        d_t = None
        if ntk is not None and grad_t is not None:
            d_t = grad_t * tdot
            d_k = d_k + grad_t * (factor * ntk) * inv_root
            d_q_half = d_q_half - grad_t * (factor * ntk * nngp) * inv_root
            d_factor = d_factor - grad_t * ntk * theta
            d_half = d_half + grad_t * ntk
        d_q1 = torch.where(q1 > 0, d_q_half / (2 * torch.where(q1 > 0, q1, 1)), 0).sum_to_size(q1.shape)
        d_q2 = torch.where(q2 > 0, d_q_half / (2 * torch.where(q2 > 0, q2, 1)), 0).sum_to_size(q2.shape)
        grads_scalar = [d.sum() if isinstance(v, torch.Tensor) and v.requires_grad else None
                        for d, v in ((d_factor, factor), (d_half, half))]
        return d_k, d_t, d_q1, d_q2, *grads_scalar, None


def _recorded(w: Tile, var1: torch.Tensor, var2: torch.Tensor, factor, half) -> bool:
    """The rule through ``_ABReluRule`` where autograd records and no forward-mode
    tangent is carried (the closed-form backward has no forward-mode rule)."""
    tensors = [t for t in (w.nngp, w.ntk, var1, var2, factor, half) if isinstance(t, torch.Tensor)]
    if not torch.is_grad_enabled() or not any(t.requires_grad for t in tensors):
        return False
    if any(_tangent(t) for t in tensors) or exact.active():
        return False
    plain = tuple(float(v.detach()) if isinstance(v, torch.Tensor) else v for v in (factor, half))
    v1, v2 = var1.detach(), var2.detach()

    def rule(nngp: torch.Tensor, ntk):
        tile = Tile(nngp, ntk, w.cov1, w.cov2, self_mode=w.self_mode, spatial=w.spatial, full=w.full)
        if not _fused(tile, v1, v2, *plain):
            zero = w.zero_variance_mask(v1, v2)
            tile.nngp, tile.ntk = _abrelu_rule(nngp, ntk, *w.outer(v1, v2), zero, *plain)
        return tile.nngp, tile.ntk

    w.nngp, w.ntk = _ABReluRule.apply(w.nngp, w.ntk, *w.outer(var1, var2), factor, half, rule)
    return True


def _tangent(t: torch.Tensor) -> bool:
    try:
        return torch.autograd.forward_ad.unpack_dual(t).tangent is not None
    except RuntimeError:
        return False


def _fused(w: Tile, var1: torch.Tensor, var2: torch.Tensor, factor, half) -> bool:
    """The rule as one pass (``widenet._engine.fused``) on a grid tile, where it applies."""
    nngp, ntk = w.nngp, w.ntk
    if (w.self_mode or compiled.compile_enabled() or not nngp.is_contiguous()
            or (ntk is not None and not ntk.is_contiguous())
            or not fused.enabled(nngp, ntk, var1, var2, factor, half)):
        return False
    b, c = nngp.shape[:2]
    if w.is_full:  # rows (b, c, s): q1 one variance per (b, s), q2 a row of position variances
        n = w.npos
        fused.abrelu(nngp, ntk, var1.reshape(b * n), var2.reshape(c, n), C=c, S=n, L=n, q1_scalar=True,
                     factor=float(factor), half=float(half))
    elif w.spatial:  # rows (b, c): both rows of variances at the same positions
        n = w.npos
        fused.abrelu(nngp, ntk, var1.reshape(b, n), var2.reshape(c, n), C=c, S=1, L=n, q1_scalar=False,
                     factor=float(factor), half=float(half))
    else:  # rows b: q1 one variance per row, q2 the column inputs'
        fused.abrelu(nngp, ntk, var1.reshape(b), var2.reshape(1, c), C=1, S=1, L=c, q1_scalar=True,
                     factor=float(factor), half=float(half))
    return True


@dataclass(frozen=True)
class ABRelu(Nonlinearity):
    """``phi(x) = a min(x, 0) + b max(x, 0)``.

    With ``theta`` the angle between the inputs (Cho & Saul 2009; Pedamonti 2018):

        T    = (a - b)^2 / (2 pi) sqrt(q1 q2 - K^2) + [(a^2 + b^2)/2 - (a - b)^2 theta / (2 pi)] K
        Tdot = (a^2 + b^2)/2 - (a - b)^2 theta / (2 pi)

    Example:

        >>> net = wn.Serial(wn.Dense(512), wn.ABRelu(-0.5, 1.0), wn.Dense(1))
    """

    a: float = 0.0
    b: float = 1.0

    def __post_init__(self) -> None:
        self._check_floats("a", "b")

    def fn(self, x: torch.Tensor) -> torch.Tensor:
        return self.a * torch.clamp(x, max=0) + self.b * torch.clamp(x, min=0)

    def derivative(self, x: torch.Tensor) -> torch.Tensor:
        """``a`` where ``x < 0``, ``b`` where ``x > 0``, 0 at the kink (as autograd has it for
        ``torch.relu``); differentiable in ``a`` and ``b`` when they are tensors."""
        return self.a * (x < 0).to(x.dtype) + self.b * (x > 0).to(x.dtype)

    def _tile(self, w: Tile) -> None:
        factor = (self.a - self.b) ** 2 / (2 * PI)
        half = (self.a**2 + self.b**2) / 2
        var1, var2 = w.var1, w.var2
        if _fused(w, var1, var2, factor, half) or _recorded(w, var1, var2, factor, half):
            return
        w.nngp, w.ntk = compiled.run_rule(_abrelu_rule, w.nngp, w.ntk, *w.outer(var1, var2),
                                          w.zero_variance_mask(var1, var2), factor, half,
                                          atan2=exact_atan2)

    def _diag(self, q: torch.Tensor) -> torch.Tensor:
        return q * ((self.a**2 + self.b**2) / 2)


@dataclass(frozen=True)
class Relu(ABRelu):
    """``phi(x) = max(x, 0)``: ``T = sqrt(q1 q2)/(2 pi) (sin theta + (pi - theta) cos theta)``,
    ``Tdot = (pi - theta) / (2 pi)`` (arc-cosine kernels J1, J0; Cho & Saul 2009).

    Example:

        >>> wn.Serial(wn.Dense(512), wn.Relu(), wn.Dense(1)).kernel(torch.randn(5, 3)).ntk.shape
        torch.Size([5, 5])
    """

    a: float = field(default=0.0, init=False, repr=False)
    b: float = field(default=1.0, init=False, repr=False)

    def fn(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x)


@dataclass(frozen=True)
class LeakyRelu(ABRelu):
    """``phi(x) = max(x, 0) + alpha min(x, 0)`` (= ``ABRelu(alpha, 1)``).

    Example:

        >>> net = wn.Serial(wn.Dense(512), wn.LeakyRelu(0.1), wn.Dense(1))
    """

    alpha: float = 0.01
    a: float = field(default=0.0, init=False, repr=False)
    b: float = field(default=1.0, init=False, repr=False)

    def __post_init__(self) -> None:
        self._check_floats("alpha")
        object.__setattr__(self, "a", self.alpha)


@dataclass(frozen=True)
class Abs(ABRelu):
    """``phi(x) = |x|`` (= ``ABRelu(-1, 1)``).

    Example:

        >>> net = wn.Serial(wn.Dense(512), wn.Abs(), wn.Dense(1))
    """

    a: float = field(default=-1.0, init=False, repr=False)
    b: float = field(default=1.0, init=False, repr=False)

    def fn(self, x: torch.Tensor) -> torch.Tensor:
        return torch.abs(x)
