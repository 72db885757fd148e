"""Multi-head self-attention in the infinite-heads limit (Hron et al. 2020, arXiv 2006.10540)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterator, Optional

import torch
from torch import nn

from .. import _exact, _scratch
from .._validate import check_choice, check_float, check_int
from ..errors import LayerOrderError, NoClosedFormError, ParameterError
from ._base import Flow, Layer, Spec
from ._modules import SelfAttentionModule
from .conv import spatial_of

__all__ = ["SelfAttention", "position_covariance"]

_MECHANISMS = ("softmax", "identity", "relu", "abs")


def position_covariance(spatial: tuple, decay: Optional[Callable] = None, p: float = 2.0, *,
                        dtype=torch.float64, device=None) -> torch.Tensor:
    """Covariance ``R`` of positional embeddings between every pair of positions, ``(n, n)``
    with ``n = prod(spatial)`` in row-major position order.

    ``decay=None`` gives independent embeddings (``R = I``); otherwise
    ``R[s, s'] = decay(sum_axes |s_a - s'_a|^p)`` (e.g. ``lambda d: torch.exp(-d / 4)``), which
    must be a positive semi-definite covariance for the finite network to exist.
    """
    n = math.prod(spatial)
    if decay is None:
        return torch.eye(n, dtype=dtype, device=device)
    grids = torch.meshgrid(*[torch.arange(k, dtype=dtype, device=device) for k in spatial], indexing="ij")
    coords = torch.stack([g.reshape(-1) for g in grids], dim=1)  # (n, d)
    dist = (coords[:, None, :] - coords[None, :, :]).abs().pow(p).sum(-1)
    r = decay(dist)
    if not isinstance(r, torch.Tensor) or r.shape != (n, n):
        raise ParameterError(
            f"SelfAttention: pos_emb_decay must map a tensor of distances to a tensor of the same "
            f"shape (got {type(r).__name__}{'' if not isinstance(r, torch.Tensor) else tuple(r.shape)})"
        )
    return r.to(dtype)


@dataclass(frozen=True)
class SelfAttention(Layer):
    """Multi-head dot-product self-attention over the positions of ``(N, C, *S)`` inputs
    (sequences ``(N, C, L)``; images are attended over all positions), in the limit of
    infinitely many heads and key/value features.

    The finite layer, per head ``h`` (``x`` the input at every position, row vectors)::

        A_h = mechanism(scale * Q_h(x) K_h(x)^T)        head_h = A_h V_h(x)
        f(x) = OV_std / sqrt(heads * value_features * n_in) * concat_h(head_h) W_out + b_std b

    with ``K_h = x W_key_h``, ``Q_h`` likewise and ``V_h = x W_value_h``, all weights standard
    normal (the NTK parameterization of Neural Tangents' ``GlobalSelfAttention``).

    scaling "linear" (``scale = QK_std / (n_in key_features)``, with the key and query
    weights tied): the logits converge to the input's own covariance and the kernel has a
    closed form for every mechanism (Hron et al. 2020)::

        G(x) = mechanism(QK_std * K(x, x))                 (softmax over keys)
        K'   = OV_std^2 G(x) K(x, x') G(x')^T + b_std^2
        Theta' = OV_std^2 G(x) Theta(x, x') G(x')^T + 2 K' - b_std^2

    scaling "sqrt" (``scale = QK_std / (n_in sqrt(key_features))``, independent key and query
    weights): the logits stay Gaussian; only the identity mechanism has a closed form,
    ``K' = (QK_std OV_std)^2 <K_qk, K>(x, x') K_qk(x, x') + b_std^2`` with ``<.,.>`` the sum
    over all position pairs (and its NTK counterpart).

    Positional embeddings (standard normal parameters times ``pos_emb_std``, shared by all
    inputs) are summed with the input ("sum") or concatenated to it ("concat", with
    ``pos_emb_features`` channels; default as many as the input) before keys and queries,
    and before values too if ``values_pos_emb``. Their covariance is ``pos_emb_std^2 R``
    (:func:`position_covariance`; ``R = I`` without ``pos_emb_decay``), weighted by the
    channel shares for "concat".

    Padding masks (``kernel(..., mask1=, mask2=)``, or ``module(x, mask=)``) leave padded
    positions out of every softmax and sum: masked keys get ``-inf`` logits (zero weight for
    the other mechanisms) and the embeddings are zero there.

    Args:
        out_features: output channels (>= 1).
        heads, key_features, value_features: sizes of the finite twin (>= 1); the kernel is
            their infinite limit.
        W_query_std, W_key_std: enter as ``QK_std = W_query_std * W_key_std``.
        W_value_std, W_out_std: enter as ``OV_std = W_value_std * W_out_std``.
        b_std: bias standard deviation, or None for no bias.
        scaling: "linear" (1/key_features, closed form for every mechanism) or "sqrt".
        mechanism: "softmax", "identity", "relu" or "abs".
        pos_emb: None, "sum" or "concat".
        pos_emb_std, pos_emb_features, pos_emb_decay, pos_emb_p, values_pos_emb: see above.
    """

    out_features: int
    heads: int = 8
    key_features: int = 64
    value_features: int = 64
    W_query_std: float = 1.0
    W_key_std: float = 1.0
    W_value_std: float = 1.0
    W_out_std: float = 1.0
    b_std: Optional[float] = 0.0
    scaling: str = "linear"
    mechanism: str = "softmax"
    pos_emb: Optional[str] = None
    pos_emb_std: float = 1.0
    pos_emb_features: Optional[int] = None
    pos_emb_decay: Optional[Callable] = None
    pos_emb_p: float = 2.0
    values_pos_emb: bool = False

    def __post_init__(self) -> None:
        name = "SelfAttention"
        set_ = object.__setattr__
        for field in ("out_features", "heads", "key_features", "value_features"):
            set_(self, field, check_int(name, field, getattr(self, field), minimum=1))
        for field in ("W_query_std", "W_key_std", "W_value_std", "W_out_std", "pos_emb_std"):
            set_(self, field, check_float(name, field, getattr(self, field), minimum=0.0, tensor=True))
        set_(self, "b_std", check_float(name, "b_std", self.b_std, minimum=0.0, allow_none=True, tensor=True))
        set_(self, "pos_emb_p", check_float(name, "pos_emb_p", self.pos_emb_p, minimum=0.0, tensor=True))
        check_choice(name, "scaling", self.scaling, ("linear", "sqrt"))
        check_choice(name, "mechanism", self.mechanism, _MECHANISMS)
        if self.pos_emb is not None:
            check_choice(name, "pos_emb", self.pos_emb, ("sum", "concat"))
        if self.pos_emb_features is not None:
            if self.pos_emb != "concat":
                raise ParameterError(
                    f"SelfAttention: pos_emb_features applies to pos_emb='concat' only (got "
                    f"pos_emb={self.pos_emb!r}); summed embeddings have the input's channels"
                )
            set_(self, "pos_emb_features",
                 check_int(name, "pos_emb_features", self.pos_emb_features, minimum=1))
        if self.pos_emb_decay is not None and not callable(self.pos_emb_decay):
            raise ParameterError(f"SelfAttention: pos_emb_decay must be callable or None "
                                 f"(got {type(self.pos_emb_decay).__name__})")
        if not isinstance(self.values_pos_emb, bool):
            raise ParameterError(f"SelfAttention: values_pos_emb must be a bool (got {self.values_pos_emb!r})")
        if self.values_pos_emb and self.pos_emb is None:
            raise ParameterError("SelfAttention: values_pos_emb=True needs pos_emb='sum' or 'concat'")

    def _needs_full(self) -> bool:
        return True

    # ---- kernel -------------------------------------------------------------------------------
    def _weights(self, n_in: int) -> tuple[float, float]:
        """Shares of the input kernel and of the embeddings' covariance R in the kernel of
        the attention's input (with embeddings)."""
        pe_var = self.pos_emb_std**2
        if self.pos_emb == "concat":
            n_pe = n_in if self.pos_emb_features is None else self.pos_emb_features
            total = n_in + n_pe
            return n_in / total, pe_var * n_pe / total
        return 1.0, pe_var

    def _apply(self, flow: Flow) -> Flow:
        w = self._single(flow)
        spatial = spatial_of("SelfAttention", w)
        if not w.is_full:
            raise LayerOrderError(
                "SelfAttention: its input kernel must hold every pair of positions (layout "
                "'full'); kernel() chooses it automatically, so this happens only when applying "
                "the layer to a Kernel computed with layout='diagonal'"
            )
        if self.scaling == "sqrt" and self.mechanism != "identity":
            raise NoClosedFormError(
                f"SelfAttention: with scaling='sqrt' only mechanism='identity' has a closed-form "
                f"kernel (got {self.mechanism!r}); use scaling='linear', or estimate it by Monte "
                f"Carlo over finite networks with wn.monte_carlo(net, x1, x2, n_samples=...)"
            )
        n = math.prod(spatial)
        dtype, device = w.cov1.dtype, w.cov1.device
        b_var = 0.0 if self.b_std is None else self.b_std**2
        ov_var = (self.W_out_std * self.W_value_std) ** 2
        qk = self.W_query_std * self.W_key_std
        w_in, w_pe = self._weights(w.width)
        R = None
        if self.pos_emb is not None:
            R = position_covariance(spatial, self.pos_emb_decay, self.pos_emb_p, dtype=dtype, device=device)

        same = w.cov2 is w.cov1
        flat1 = lambda k: None if k is None else k.reshape(k.shape[0], n)  # noqa: E731
        keep1, keep2 = flat1(w.keep1), flat1(w.keep2)
        cov1 = w.cov1.reshape(-1, n, n)
        cov2 = cov1 if same else w.cov2.reshape(-1, n, n)

        def own_interp(cov, keep):
            if R is None:
                return cov
            out = cov * w_in + R * w_pe
            return out if keep is None else out * keep[:, :, None] * keep[:, None, :]

        def pair_interp(t):  # (B, C, n, n) tile with the embeddings' covariance added
            if R is None or t is None:
                return t
            out = t * w_in + R * w_pe
            if keep1 is not None:
                out = out * (keep1[:, None, :, None] * keep2[None, :, None, :])
            return out

        i1 = own_interp(cov1, keep1)
        i2 = i1 if same else own_interp(cov2, keep2)
        tiles = w.nngp is not None
        nngp = ntk = None
        if tiles:
            nngp = w.nngp.reshape(w.nngp.shape[:2] + (n, n))
            ntk = None if w.ntk is None else w.ntk.reshape(nngp.shape)

        if self.scaling == "linear":
            g1 = self._weighting(i1, keep1, qk)
            g2 = g1 if same else self._weighting(i2, keep2, qk)
            v1 = i1 if self.values_pos_emb else cov1
            v2 = i2 if self.values_pos_emb else cov2
            new_cov1 = _sandwich(g1, v1, g1).mul_(ov_var).add_(b_var)
            new_cov2 = new_cov1 if same else _sandwich(g2, v2, g2).mul_(ov_var).add_(b_var)
            if tiles:
                vn = pair_interp(nngp) if self.values_pos_emb else nngp
                k = _pair_sandwich(g1, vn, g2).mul_(ov_var).add_(b_var)
                if ntk is not None:
                    vt = pair_interp(ntk) if self.values_pos_emb else ntk
                    ntk = _pair_sandwich(g1, vt, g2).mul_(ov_var).add_(k, alpha=2.0).sub_(b_var)
                nngp = k
        else:
            std2 = (qk * self.W_out_std * self.W_value_std) ** 2
            vals = self.values_pos_emb
            d11 = _exact.sum(i1 * (i1 if vals else cov1), (1, 2))
            new_cov1 = (i1 * d11[:, None, None]).mul_(std2).add_(b_var)
            if same:
                new_cov2 = new_cov1
            else:
                d22 = _exact.sum(i2 * (i2 if vals else cov2), (1, 2))
                new_cov2 = (i2 * d22[:, None, None]).mul_(std2).add_(b_var)
            if tiles:
                ni = pair_interp(nngp)
                d12 = _exact.pair_sum(ni * (ni if vals else nngp), 1)[:, :, None, None]
                if ntk is not None:
                    ti = pair_interp(ntk)
                    if vals or R is None:
                        dt = 2 * _exact.pair_sum(ni * ti, 1)
                    else:
                        dt = _exact.pair_sum(ni * ntk, 1) + _exact.pair_sum(nngp * ti, 1)
                    ntk = (ni * dt[:, :, None, None] + d12 * (ti + 4 * ni)).mul_(std2).add_(b_var)
                nngp = (ni * d12).mul_(std2).add_(b_var)

        pair = w.pair_shape
        if tiles:
            w.nngp = nngp.reshape(nngp.shape[:2] + pair)
            if ntk is not None:
                w.ntk = ntk.reshape(nngp.shape[:2] + pair)
        w.cov1 = new_cov1.reshape((-1,) + pair)
        w.cov2 = w.cov1 if same else new_cov2.reshape((-1,) + pair)
        w.is_gaussian = True
        w.width = self.out_features
        w.sync_diagonal()
        return w

    def _weighting(self, cov: torch.Tensor, keep: Optional[torch.Tensor], qk: float) -> torch.Tensor:
        """The limit attention weights ``G = mechanism(QK_std K(x, x))``, ``(B, n, n)``."""
        logits = cov * qk
        if self.mechanism == "softmax":
            if keep is not None:
                logits = logits.masked_fill(keep[:, None, :] == 0, -math.inf)
            return torch.softmax(logits, dim=-1)
        if self.mechanism == "relu":
            logits = logits.clamp_min(0.0)
        elif self.mechanism == "abs":
            logits = logits.abs()
        if keep is not None:
            logits = logits * keep[:, None, :]
        return logits

    # ---- finite twin --------------------------------------------------------------------------
    def _build(self, spec: Spec, seeds: Iterator[int], factory: dict) -> tuple[nn.Module, Spec]:
        module = SelfAttentionModule(
            self._single_spec(spec), self.out_features, heads=self.heads,
            key_features=self.key_features, value_features=self.value_features,
            QK_std=self.W_query_std * self.W_key_std, OV_std=self.W_out_std * self.W_value_std,
            b_std=self.b_std, scaling=self.scaling, mechanism=self.mechanism,
            pos_emb=self.pos_emb, pos_emb_std=self.pos_emb_std,
            pos_emb_features=self.pos_emb_features,
            pos_emb_covariance=None if self.pos_emb is None or self.pos_emb_decay is None else (
                lambda spatial, dtype, device: position_covariance(
                    spatial, self.pos_emb_decay, self.pos_emb_p, dtype=dtype, device=device)),
            values_pos_emb=self.values_pos_emb, seed=next(seeds),
            dtype=factory["dtype"], device=factory["device"],
        )
        return module, self.out_features


def _sandwich(g1: torch.Tensor, k: torch.Tensor, g2: torch.Tensor) -> torch.Tensor:
    """``g1 @ k @ g2^T`` over the last two axes (broadcasting the leading ones). In
    reproducible mode, the mean of both ways of associating it, with exact products: the
    transposed operands then give the transposed result, bit for bit."""
    if _exact.active():
        g2t = g2.transpose(-1, -2)
        one = _exact.matmul(_exact.matmul(g1, k), g2t)
        return one.add_(_exact.matmul(g1, _exact.matmul(k, g2t))).mul_(0.5)
    return torch.matmul(torch.matmul(g1, k), g2.transpose(-1, -2))


def _pair_sandwich(g1: torch.Tensor, k: torch.Tensor, g2: torch.Tensor) -> torch.Tensor:
    """``g1[i] @ k[i, j] @ g2[j]^T`` for every pair of a ``(B, C, n, n)`` tile, contiguous.

    As a batch of B * C products of n x n matrices this runs far from the matrix-multiply
    peak for sequence lengths of tens, and broadcasting copies ``g1`` and ``g2`` C and B
    times. Instead each row input's weights multiply all its columns in one (n x n) @
    (n x C n) product, and each column input's weights all its rows in one (B n x n) @
    (n x n) product."""
    if _exact.active():
        return _exact_pair_sandwich(g1, k, g2)
    b, c, n, _ = k.shape
    by_row = _scratch.clone(k.transpose(1, 2)).view(b, n, c * n)  # (b, t, c, u)
    left = _scratch.call(torch.bmm, g1, by_row, shape=(b, n, c * n))  # (b, s, c, u)
    by_col = _scratch.clone(left.view(b, n, c, n).permute(2, 0, 1, 3)).view(c, b * n, n)
    right = _scratch.call(torch.bmm, by_col, g2.transpose(1, 2), shape=(c, b * n, n))
    return _scratch.clone(right.view(c, b, n, n).transpose(0, 1))


def _exact_pair_sandwich(g1: torch.Tensor, k: torch.Tensor, g2: torch.Tensor) -> torch.Tensor:
    """:func:`_pair_sandwich` in reproducible mode: the mean of ``(g1 k) g2^T`` and
    ``g1 (k g2^T)``, with exact-then-rounded products laid out as in :func:`_pair_sandwich`
    (a product's rounding depends only on its rows and columns, not on the batch around it)."""
    b, c, n, _ = k.shape
    mm = _exact.matmul
    g2t = g2.transpose(1, 2)
    left = mm(g1, k.transpose(1, 2).reshape(b, n, c * n)).view(b, n, c, n)  # (b, s, c, u): g1 k
    one = mm(left.permute(2, 0, 1, 3).reshape(c, b * n, n), g2t)  # (c, b s, v): (g1 k) g2^T
    right = mm(k.transpose(0, 1).reshape(c, b * n, n), g2t).view(c, b, n, n)  # (c, b, t, v): k g2^T
    two = mm(g1, right.permute(1, 2, 0, 3).reshape(b, n, c * n)).view(b, n, c, n)  # g1 (k g2^T)
    out = one.view(c, b, n, n).transpose(0, 1).add(two.transpose(1, 2))
    return out.mul_(0.5).contiguous()
