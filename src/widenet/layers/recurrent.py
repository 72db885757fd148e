"""``Recurrent``: an Elman RNN over sequences, its weights shared across time steps.

Over inputs ``x_1 .. x_L`` (``(N, C, L)``, C features per step) the finite network is

    g_t = W_std / sqrt(n) W h_{t-1} + U_std / sqrt(C) U x_t + b_std b,   h_t = phi(g_t),
    h_0 = 0,

with ``W (n, n)``, ``U (n, C)``, ``b (n,)`` standard normal ("ntk" parameterization) and the
same ``W, U, b`` at every step. As ``n -> infinity`` the pre-activations of two sequences at
steps ``t`` and ``t'`` are jointly Gaussian with covariance (Alemohammad et al. 2021, the
recurrent NTK, arXiv 2006.10246; its enhanced variants arXiv 2012.04859)

    G[t, t'] = W_std^2 E[phi(g_{t-1}) phi(g'_{t'-1})] + U_std^2 X[t, t'] + b_std^2

(``X`` the input kernel, ``x_t . x'_{t'} / C``; the first term is zero at ``t = 1`` or
``t' = 1``), the expectation over the Gaussian pair with covariance ``G[t-1, t'-1]`` and
variances ``G[t-1, t-1]``, ``G'[t'-1, t'-1]``. The tangent kernel of the pre-activations
follows the same pairs, one step back on both sides (weights shared across time act as
independent ones in the limit, Yang 2019):

    T[t, t'] = G[t, t'] + U_std^2 Theta_in[t, t'] + W_std^2 E[phi'(g_{t-1}) phi'(g'_{t'-1})] T[t-1, t'-1].

The layer's outputs are ``h_t``: NNGP ``E[phi(g_t) phi(g'_{t'})]`` and NTK
``E[phi'(g_t) phi'(g'_{t'})] T[t, t']``, at every step (``readout="all"``) or at the last
one (``"last"``). Every pair ``(t, t')`` needs ``(t-1, t'-1)``, so the pairs are computed
front by front: at step ``k`` all pairs with ``min(t, t') = k``, ``2 (L - k) - 1`` of
them, vectorized over every pair of inputs of a tile (``O(L^2)`` work per pair of inputs).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

import torch
from torch import nn
from torch.nn.modules.lazy import LazyModuleMixin
from torch.nn.parameter import UninitializedParameter

from .._engine import Flow
from .._validate import check_choice, check_float, check_int
from ..errors import ParameterError, ShapeError
from ._init import standard_normal
from ._masks import current_keep
from .base import Build, Layer, Spec
from .nonlinearity import Nonlinearity
from .relu import Relu

__all__ = ["Recurrent", "RecurrentModule"]


@dataclass(frozen=True)
class Recurrent(Layer):
    """An Elman RNN over sequences ``(N, C, L)`` with weights shared across time, and its
    infinite-width NNGP and NTK (the recurrent NTK of Alemohammad et al. 2021).

    ``g_t = W_std / sqrt(n) W h_{t-1} + U_std / sqrt(C) U x_t + b_std b``,
    ``h_t = nonlinearity(g_t)``, ``h_0 = 0`` (``n = hidden_features``; "standard"
    parameterization: ``W ~ N(0, W_std^2 / n)``, ``U ~ N(0, U_std^2 / C)``,
    ``b ~ N(0, b_std^2)``, as ``Dense``). ``readout="last"`` outputs ``h_L`` ``(N, n)``,
    ``"all"`` every ``h_t`` ``(N, n, L)``. ``b_std=None``: no bias. ``nonlinearity`` is any
    elementwise widenet layer (its dual activation, closed form or quadrature, drives the
    kernel; its function drives the twin, ``RecurrentModule``).

    Padding masks (``mask1``/``mask2``, True at padded steps) skip padded steps: the state
    carries over them, so a padded sequence has exactly the kernel of the unpadded one, and
    ``"last"`` reads the state after each sequence's last real step. Sequences of different
    lengths are thus compared directly.

    Kernel: see the module docstring; cost ``O(L^2)`` per pair of inputs, in ``L``
    vectorized steps.

    Example:

        >>> rnn = wn.Serial(wn.Recurrent(256, W_std=1.2, U_std=1.0, b_std=0.1), wn.Dense(1))
        >>> seqs = torch.randn(4, 3, 10, dtype=torch.float64)     # 4 sequences, 3 features, 10 steps
        >>> rnn.kernel(seqs).ntk.shape
        torch.Size([4, 4])
    """

    hidden_features: int
    W_std: float = 1.0
    U_std: float = 1.0
    b_std: Optional[float] = 0.0
    nonlinearity: Nonlinearity = field(default_factory=Relu)
    readout: str = "last"
    parameterization: str = "ntk"

    def __post_init__(self) -> None:
        object.__setattr__(self, "hidden_features",
                           check_int("Recurrent", "hidden_features", self.hidden_features, minimum=1))
        for name in ("W_std", "U_std"):
            object.__setattr__(self, name, check_float("Recurrent", name, getattr(self, name), minimum=0.0,
                                                       tensor=True))
        if self.b_std is not None:
            object.__setattr__(self, "b_std", check_float("Recurrent", "b_std", self.b_std, minimum=0.0, tensor=True))
        if not isinstance(self.nonlinearity, Nonlinearity):
            raise ParameterError(
                f"Recurrent: nonlinearity must be an elementwise widenet layer such as wn.Relu() or "
                f"wn.Tanh() (got {self.nonlinearity!r})")
        check_choice("Recurrent", "readout", self.readout, ("last", "all"))
        check_choice("Recurrent", "parameterization", self.parameterization, ("ntk", "standard"))

    def _needs_full(self) -> bool:
        return True

    # ---- the kernel ---------------------------------------------------------------------------
    def _rule(self, flow: Flow) -> Flow:
        w = self._single(flow)
        if len(w.spatial) != 1:
            raise ShapeError(f"Recurrent: expects sequences (N, C, L), one time axis (got positions of "
                             f"shape {w.spatial or '()'}; reshape other inputs to (N, C, L))")
        length = w.spatial[0]
        order1, last1 = _real_first(w.keep1, w.var1.shape[0], length, w.var1.device)
        order2, last2 = _real_first(w.keep2, w.var2.shape[0], length, w.var2.device)
        q1 = self._variances(_take(w.var1, order1))
        q2 = q1 if w.cov2 is w.cov1 else self._variances(_take(w.var2, order2))
        m = w.width
        if w.nngp is not None:
            b, c = w.nngp.shape[:2]
            x = _pairs_first(w.nngp, order1, order2)
            t_in = None if w.ntk is None else _pairs_first(w.ntk, order1, order2)
            lead = (b, c)
            flat = lambda t: t.reshape(b * c, length, length)  # noqa: E731
            qa = q1[:, None, :].expand(b, c, length).reshape(b * c, length)
            qb = q2[None, :, :].expand(b, c, length).reshape(b * c, length)
            nngp, ntk = self._recur(flat(x), None if t_in is None else flat(t_in), qa, qb, m)
            w.nngp = self._out(nngp.reshape(lead + (length, length)), order1, order2, last1, last2)
            if ntk is not None:
                w.ntk = self._out(ntk.reshape(lead + (length, length)), order1, order2, last1, last2)

        def own(cov, order, last, q):
            e, _ = self._recur(_pairs_first(cov[:, None], order, order, same=True)[:, 0], None, q, q, m)
            return self._out(e[:, None], order, order, last, last, same=True)[:, 0]

        w.set_covs(lambda c: own(c, order1, last1, q1), lambda c: own(c, order2, last2, q2))
        if self.readout == "last":
            w.spatial = ()
            w.unmask()
        w.width = self.hidden_features
        w.is_gaussian = False
        return w

    def _variances(self, xvar: torch.Tensor) -> torch.Tensor:
        """Pre-activation variances ``G[t, t]`` ``(B, L)`` from the input variances ``(B, L)``."""
        wv, uv, bv = self._scales()
        steps = [uv * xvar[:, 0] + bv]
        for t in range(1, xvar.shape[1]):
            steps.append(uv * xvar[:, t] + bv + wv * self.nonlinearity.variance(steps[-1]))
        return torch.stack(steps, 1)

    def _scales(self):
        return self.W_std**2, self.U_std**2, (0.0 if self.b_std is None else self.b_std**2)

    def _recur(self, x: torch.Tensor, t_in: Optional[torch.Tensor], qa: torch.Tensor, qb: torch.Tensor,
               m: int) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """For ``P`` pairs of sequences, input kernels ``x`` (and input NTK ``t_in``)
        ``(P, L, L)`` and pre-activation variances ``qa``, ``qb`` ``(P, L)``: the NNGP and NTK
        of the states ``h`` at every pair of steps, ``(P, L, L)`` each (NTK None without
        ``t_in``)."""
        wv, uv, bv = self._scales()
        length = x.shape[1]
        standard = self.parameterization == "standard"
        g = x * uv + bv
        e = torch.empty_like(g)
        edot = None if t_in is None else torch.empty_like(g)
        tg = None if t_in is None else torch.empty_like(g)
        phi = self.nonlinearity
        for k in range(length):
            fronts = ((k, slice(k, length)), (slice(k + 1, length), k))
            for rows, cols in fronts:
                if k == length - 1 and isinstance(rows, slice):
                    continue  # the last front has no column part
                prev = (_back(rows), _back(cols))
                if k > 0:
                    g[:, rows, cols] = g[:, rows, cols] + wv * e[:, prev[0], prev[1]]
                a, b = qa[:, rows], qb[:, cols]
                a, b = (a if a.ndim == 2 else a[:, None]), (b if b.ndim == 2 else b[:, None])
                value, slope = phi.dual(a, b, g[:, rows, cols])
                e[:, rows, cols] = value
                if tg is None:
                    continue
                edot[:, rows, cols] = slope
                if standard:  # explicit terms: n E[phi phi] (W), C X (U), 1 (b)
                    explicit = m * x[:, rows, cols] + (0.0 if self.b_std is None else 1.0)
                    if k > 0:
                        explicit = explicit + self.hidden_features * e[:, prev[0], prev[1]]
                else:
                    explicit = g[:, rows, cols]
                through = uv * t_in[:, rows, cols]
                if k > 0:
                    through = through + wv * edot[:, prev[0], prev[1]] * tg[:, prev[0], prev[1]]
                tg[:, rows, cols] = explicit + through
        return e, (None if tg is None else edot * tg)

    def _out(self, t: torch.Tensor, order1, order2, last1, last2, same: bool = False) -> torch.Tensor:
        """``(B, C, L, L)`` values over reordered steps back to the layer's output: every step
        in its original place (``"all"``) or the pair of last real steps (``"last"``)."""
        if self.readout == "last":
            b, c, length, _ = t.shape
            i1 = last1.view(b, 1, 1, 1).expand(b, c, 1, length)
            rows = t.gather(2, i1)  # (b, c, 1, L)
            i2 = (last1.view(b, 1, 1, 1) if same else last2.view(1, c, 1, 1)).expand(b, c, 1, 1)
            return rows.gather(3, i2)[:, :, 0, 0]
        return _pairs_first(t, _inverse(order1), _inverse(order2), same=same)

    # ---- the twin -----------------------------------------------------------------------------
    def _twin(self, spec: Spec, build: Build) -> tuple[nn.Module, Spec]:
        spec = self._single_spec(spec)
        if spec.ndim is not None and spec.ndim != 1:
            raise ShapeError(f"Recurrent: expects sequences (N, C, L), one time axis (got inputs with "
                             f"{spec.ndim} spatial axes)")
        module = RecurrentModule(spec.features, self, build.seed(), dtype=build.dtype, device=build.device)
        out = spec.with_features(self.hidden_features)
        if self.readout == "last":
            out = type(spec)(self.hidden_features, 0)
        return module, out


def _back(index):
    """The index one step back (``k -> k - 1``, a slice ``k:L`` -> ``k-1:L-1``)."""
    if isinstance(index, int):
        return index - 1
    return slice(index.start - 1, index.stop - 1)


def _real_first(keep: Optional[torch.Tensor], count: int, length: int, device):
    """Per sequence, its steps with the real ones first in their order (``(B, L)``, or None
    without masks), and the index of its last real step in that order (``(B,)``)."""
    if keep is None:
        return None, torch.full((count,), length - 1, dtype=torch.long, device=device)
    order = torch.argsort((keep <= 0).to(torch.int8), dim=1, stable=True)
    return order, keep.sum(1).to(torch.long) - 1


def _inverse(order: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    return None if order is None else torch.argsort(order, dim=1)


def _take(v: torch.Tensor, order: Optional[torch.Tensor]) -> torch.Tensor:
    return v if order is None else v.gather(1, order)


def _pairs_first(t: torch.Tensor, order1, order2, same: bool = False) -> torch.Tensor:
    """``t[b, c, order1[b, s], order2[c, s']]`` for ``(B, C, L, L)`` (``same``: ``C = 1`` is
    input ``b`` itself, ``order2`` indexed by ``b``)."""
    if order1 is None:
        return t
    b, c, length, _ = t.shape
    t = t.gather(2, order1.view(b, 1, length, 1).expand(b, c, length, length))
    o2 = order2.view(b, 1, 1, length) if same else order2.view(1, c, 1, length)
    return t.gather(3, o2.expand(b, c, length, length))


class RecurrentModule(LazyModuleMixin, nn.Module):
    """``Recurrent``'s finite twin: an Elman RNN over ``(N, C, L)`` with ``weight_hh`` ``W``
    ``(n, n)``, ``weight_ih`` ``U`` ``(n, C)`` and ``bias`` ``(n,)`` (see ``Recurrent`` for
    the scalings); outputs ``(N, n)`` (``readout="last"``) or ``(N, n, L)`` (``"all"``). Under
    a padding mask (``SerialModule.forward(x, mask=)``) padded steps leave the state as it is.
    With ``in_features=None`` ``U`` materializes on the first call."""

    cls_to_become = None

    def __init__(self, in_features: Optional[int], layer: Recurrent, seed: int,
                 dtype: Optional[torch.dtype] = None, device=None) -> None:
        super().__init__()
        self.in_features, self.hidden_features = in_features, layer.hidden_features
        self.W_std, self.U_std, self.b_std = layer.W_std, layer.U_std, layer.b_std
        self.phi, self.readout, self.parameterization = layer.nonlinearity, layer.readout, layer.parameterization
        self.seed = seed
        factory = {"dtype": dtype or torch.get_default_dtype(), "device": device}
        n = layer.hidden_features
        self.weight_hh = nn.Parameter(torch.empty(n, n, **factory))
        if in_features is None:
            self.weight_ih = UninitializedParameter(**factory)
        else:
            self.weight_ih = nn.Parameter(torch.empty(n, in_features, **factory))
        self.bias = None if layer.b_std is None else nn.Parameter(torch.empty(n, **factory))
        if in_features is not None:
            self.reset_parameters()

    def reset_parameters(self) -> None:
        """Redraws the parameters from this module's seed (the same values every time)."""
        if self.has_uninitialized_params():
            return
        generator = torch.Generator().manual_seed(self.seed)
        n, m = self.hidden_features, self.in_features
        w = standard_normal((n, n), generator)
        u = standard_normal((n, m), generator)
        b = None if self.bias is None else standard_normal((n,), generator)
        if self.parameterization == "standard":
            w.mul_(self.W_std / math.sqrt(n))
            u.mul_(self.U_std / math.sqrt(m))
            if b is not None:
                b.mul_(self.b_std)
        with torch.no_grad():
            self.weight_hh.copy_(w)
            self.weight_ih.copy_(u)
            if b is not None:
                self.bias.copy_(b)

    def initialize_parameters(self, input: torch.Tensor) -> None:  # called by LazyModuleMixin
        if self.has_uninitialized_params():
            if input.ndim != 3:
                raise ShapeError(f"RecurrentModule: expected sequences (N, C, L) (got {tuple(input.shape)})")
            with torch.no_grad():
                self.in_features = int(input.shape[1])
                self.weight_ih.materialize((self.hidden_features, self.in_features))
                self.reset_parameters()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 3 or x.shape[1] != self.in_features:
            raise ShapeError(f"RecurrentModule: expected sequences (N, {self.in_features}, L) "
                             f"(got {tuple(x.shape)})")
        keep = current_keep(x)
        n, m = self.hidden_features, self.in_features
        w, u = self.weight_hh, self.weight_ih
        if self.parameterization == "ntk":
            w, u = w * (self.W_std / math.sqrt(n)), u * (self.U_std / math.sqrt(m))
        drive = torch.einsum("ncl,hc->lnh", x, u)  # U x_t for every step: (L, N, n)
        if self.bias is not None:
            drive = drive + (self.b_std * self.bias if self.parameterization == "ntk" else self.bias)
        h = x.new_zeros(x.shape[0], n)
        states = []
        for t in range(x.shape[2]):
            new = self.phi.fn(h @ w.T + drive[t])
            h = new if keep is None else torch.where(keep[:, t:t + 1] > 0, new, h)
            states.append(h)
        if self.readout == "last":
            return h
        out = torch.stack(states, 2)
        return out if keep is None else out * keep[:, None, :].to(out.dtype)

    def extra_repr(self) -> str:
        return (f"{self.in_features}, {self.hidden_features}, W_std={self.W_std}, U_std={self.U_std}, "
                f"b_std={self.b_std}, nonlinearity={self.phi!r}, readout={self.readout!r}, "
                f"parameterization={self.parameterization!r}")
