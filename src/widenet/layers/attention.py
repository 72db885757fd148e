"""Multi-head self-attention in the infinite-heads limit (Hron et al. 2020, arXiv 2006.10540)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import nn
from torch.nn.modules.lazy import LazyModuleMixin
from torch.nn.parameter import UninitializedParameter

from .._engine import Flow, exact, pair_sandwich, sandwich
from .._validate import check_choice, check_float, check_int
from ..errors import LayerOrderError, NoClosedFormError, ParameterError, ShapeError
from ._geometry import spatial_of
from ._init import standard_normal
from ._masks import current_keep, masking, zero_padding
from .base import Build, Layer, Spec

__all__ = ["SelfAttention", "SelfAttentionModule", "position_covariance"]

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

    The finite layer, per head ``h`` (``x`` the input at every position, row vectors):

        A_h = mechanism(scale * Q_h(x) K_h(x)^T)        head_h = A_h V_h(x)
        f(x) = OV_std / sqrt(heads * value_features * n_in) * concat_h(head_h) W_out + b_std b

    with ``K_h = x W_key_h``, ``Q_h`` likewise and ``V_h = x W_value_h``, all weights standard
    normal (the NTK parameterization of Neural Tangents' ``GlobalSelfAttention``).

    scaling "linear" (``scale = QK_std / (n_in key_features)``, with the key and query
    weights tied): the logits converge to the input's own covariance and the kernel has a
    closed form for every mechanism (Hron et al. 2020):

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
    (``position_covariance``; ``R = I`` without ``pos_emb_decay``), weighted by the
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

    def _rule(self, flow: Flow) -> Flow:
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
        R = None
        if self.pos_emb is not None:
            R = position_covariance(spatial, self.pos_emb_decay, self.pos_emb_p,
                                    dtype=w.cov1.dtype, device=w.cov1.device)
        flat = lambda k: None if k is None else k.reshape(k.shape[0], n)  # noqa: E731
        side1 = _Side(self, w.cov1.reshape(-1, n, n), flat(w.keep1), R, w.width)
        side2 = side1 if w.cov2 is w.cov1 else _Side(self, w.cov2.reshape(-1, n, n), flat(w.keep2), R, w.width)
        if w.nngp is not None:
            shape = w.nngp.shape
            nngp = w.nngp.reshape(shape[:2] + (n, n))
            ntk = None if w.ntk is None else w.ntk.reshape(nngp.shape)
            nngp, ntk = (self._linear_tile if self.scaling == "linear" else self._sqrt_tile)(
                nngp, ntk, side1, side2, R, w.width)
            w.nngp = nngp.reshape(shape)
            w.ntk = None if ntk is None else ntk.reshape(shape)
        pair = w.pair_shape
        w.set_covs(lambda c: side1.own().reshape((-1,) + pair), lambda c: side2.own().reshape((-1,) + pair))
        w.is_gaussian = True
        w.width = self.out_features
        w.sync_diagonal()
        return w

    def _variances(self) -> tuple:
        """``(b_var, OV_std^2, QK_std)`` of the linear scaling; ``std2 = (QK OV)^2`` of "sqrt"."""
        b_var = 0.0 if self.b_std is None else self.b_std**2
        return b_var, (self.W_out_std * self.W_value_std) ** 2, self.W_query_std * self.W_key_std

    def _interp(self, t: torch.Tensor, R: Optional[torch.Tensor], width: int, keep1, keep2) -> torch.Tensor:
        """The pair tile ``(B, C, n, n)`` of the attention's input with the embeddings'
        covariance added (``t`` itself without embeddings)."""
        if R is None:
            return t
        w_in, w_pe = self._weights(width)
        out = t * w_in + R * w_pe
        if keep1 is not None:
            out = out * (keep1[:, None, :, None] * keep2[None, :, None, :])
        return out

    def _linear_tile(self, nngp, ntk, side1: "_Side", side2: "_Side", R, width):
        """``K' = OV^2 G(x) K G(x')^T + b^2`` and ``Theta' = OV^2 G(x) Theta G(x')^T + 2 K' - b^2``."""
        b_var, ov_var, _ = self._variances()
        interp = lambda t: self._interp(t, R, width, side1.keep, side2.keep)  # noqa: E731
        vn = interp(nngp) if self.values_pos_emb else nngp
        k = pair_sandwich(side1.g, vn, side2.g).mul_(ov_var).add_(b_var)
        if ntk is not None:
            vt = interp(ntk) if self.values_pos_emb else ntk
            ntk = pair_sandwich(side1.g, vt, side2.g).mul_(ov_var).add_(k, alpha=2.0).sub_(b_var)
        return k, ntk

    def _sqrt_tile(self, nngp, ntk, side1: "_Side", side2: "_Side", R, width):
        """The identity mechanism with 1/sqrt(d_key) logits (see the class docstring)."""
        b_var = 0.0 if self.b_std is None else self.b_std**2
        std2 = (self.W_query_std * self.W_key_std * self.W_out_std * self.W_value_std) ** 2
        vals = self.values_pos_emb
        ni = self._interp(nngp, R, width, side1.keep, side2.keep)
        d12 = exact.pair_sum(ni * (ni if vals else nngp), 1)[:, :, None, None]
        if ntk is not None:
            ti = self._interp(ntk, R, width, side1.keep, side2.keep)
            if vals or R is None:
                dt = 2 * exact.pair_sum(ni * ti, 1)
            else:
                dt = exact.pair_sum(ni * ntk, 1) + exact.pair_sum(nngp * ti, 1)
            ntk = (ni * dt[:, :, None, None] + d12 * (ti + 4 * ni)).mul_(std2).add_(b_var)
        return (ni * d12).mul_(std2).add_(b_var), ntk

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
    def _twin(self, spec: Spec, build: Build) -> tuple[nn.Module, Spec]:
        spec = self._single_spec(spec)
        module = SelfAttentionModule(
            spec.features, self.out_features, heads=self.heads,
            key_features=self.key_features, value_features=self.value_features,
            QK_std=self.W_query_std * self.W_key_std, OV_std=self.W_out_std * self.W_value_std,
            b_std=self.b_std, scaling=self.scaling, mechanism=self.mechanism,
            pos_emb=self.pos_emb, pos_emb_std=self.pos_emb_std,
            pos_emb_features=self.pos_emb_features,
            pos_emb_covariance=None if self.pos_emb is None or self.pos_emb_decay is None else (
                lambda spatial, dtype, device: position_covariance(
                    spatial, self.pos_emb_decay, self.pos_emb_p, dtype=dtype, device=device)),
            values_pos_emb=self.values_pos_emb, seed=build.seed(),
            dtype=build.dtype, device=build.device,
        )
        return module, spec.with_features(self.out_features)


class _Side:
    """One side's (row or column inputs') own covariances ``(B, n, n)`` as the attention sees
    them: with the embeddings (``interp``), the limit weights ``g`` and, on demand, the own
    covariance after the layer."""

    def __init__(self, layer: "SelfAttention", cov: torch.Tensor, keep, R, width: int) -> None:
        self.layer, self.cov, self.keep = layer, cov, keep
        self.interp = cov
        if R is not None:
            w_in, w_pe = layer._weights(width)
            self.interp = cov * w_in + R * w_pe
            if keep is not None:
                self.interp = self.interp * keep[:, :, None] * keep[:, None, :]
        b_var, self.ov_var, qk = layer._variances()
        self.b_var = b_var
        self.g = layer._weighting(self.interp, keep, qk) if layer.scaling == "linear" else None

    def own(self) -> torch.Tensor:
        """The own covariance after the layer, ``(B, n, n)``."""
        layer, i = self.layer, self.interp
        values = i if layer.values_pos_emb else self.cov
        if layer.scaling == "linear":
            return sandwich(self.g, values, self.g).mul_(self.ov_var).add_(self.b_var)
        std2 = (layer.W_query_std * layer.W_key_std * layer.W_out_std * layer.W_value_std) ** 2
        d = exact.sum(i * values, (1, 2))
        return (i * d[:, None, None]).mul_(std2).add_(self.b_var)


class SelfAttentionModule(LazyModuleMixin, nn.Module):
    """Multi-head self-attention over the positions of ``(N, C, *S)`` inputs, with widenet's
    (Neural Tangents') NTK parameterization; see ``widenet.SelfAttention``.

    Parameters, all drawn standard normal from the module's seed: ``W_key``
    ``(heads, n_in_k, key_features)``, ``W_query`` (same shape, only for scaling "sqrt"; the
    "linear" scaling ties queries to keys), ``W_value`` ``(heads, n_in_v, value_features)``,
    ``W_out`` ``(out, heads * value_features)``, ``bias`` ``(out,)`` and ``pos_emb``
    ``(pos_emb_features, *S)`` (correlated by ``pos_emb_covariance(spatial, dtype, device)``
    when given; independent otherwise). The parameters materialize on the first call when the input
    channels or (with positional embeddings) the positions are not known before.
    ``forward(x, mask=None)`` takes the same padding masks as ``SerialModule``.
    """

    cls_to_become = None

    def __init__(self, in_features: Optional[int], out_features: int, *, heads: int, key_features: int,
                 value_features: int, QK_std: float, OV_std: float, b_std: Optional[float],
                 scaling: str, mechanism: str, pos_emb: Optional[str], pos_emb_std: float,
                 pos_emb_features: Optional[int], pos_emb_covariance: Optional[Callable],
                 values_pos_emb: bool, seed: int, dtype: Optional[torch.dtype] = None,
                 device=None) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.heads, self.key_features, self.value_features = heads, key_features, value_features
        self.QK_std, self.OV_std, self.b_std = QK_std, OV_std, b_std
        self.scaling, self.mechanism = scaling, mechanism
        self.pos_emb_type, self.pos_emb_std = pos_emb, pos_emb_std
        self.pos_emb_features, self.pos_emb_covariance = pos_emb_features, pos_emb_covariance
        self.values_pos_emb, self.seed = values_pos_emb, seed
        factory = {"dtype": dtype or torch.get_default_dtype(), "device": device}
        lazy = lambda: UninitializedParameter(**factory)  # noqa: E731
        self.W_key = lazy()
        self.W_query = lazy() if scaling == "sqrt" else None
        self.W_value = lazy()
        self.W_out = nn.Parameter(torch.empty(out_features, heads * value_features, **factory))
        self.bias = None if b_std is None else nn.Parameter(torch.empty(out_features, **factory))
        self.pos_emb = None if pos_emb is None else lazy()
        if in_features is not None and pos_emb is None:
            self._materialize(in_features, ())

    def _channels(self, n_in: int) -> tuple[int, int, int]:
        """Channels of the embeddings, of the key/query input and of the value input."""
        if self.pos_emb_type is None:
            return 0, n_in, n_in
        n_pe = n_in if self.pos_emb_features is None else self.pos_emb_features
        if self.pos_emb_type == "sum":
            return n_in, n_in, n_in
        n_k = n_in + n_pe
        return n_pe, n_k, n_k if self.values_pos_emb else n_in

    def _materialize(self, n_in: int, spatial: tuple) -> None:
        self.in_features = n_in
        n_pe, n_k, n_v = self._channels(n_in)
        shapes = {"W_key": (self.heads, n_k, self.key_features),
                  "W_query": (self.heads, n_k, self.key_features),
                  "W_value": (self.heads, n_v, self.value_features),
                  "pos_emb": (n_pe,) + tuple(spatial)}
        with torch.no_grad():
            for name, shape in shapes.items():
                param = getattr(self, name)
                if isinstance(param, UninitializedParameter):
                    param.materialize(shape)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Redraws every parameter from the module's seed (in a fixed order)."""
        if self.has_uninitialized_params():
            return
        generator = torch.Generator().manual_seed(self.seed)
        with torch.no_grad():
            for name in ("W_key", "W_query", "W_value", "W_out", "bias", "pos_emb"):
                param = getattr(self, name)
                if param is not None:
                    param.copy_(standard_normal(param.shape, generator))

    def initialize_parameters(self, x: torch.Tensor, mask=None) -> None:  # LazyModuleMixin
        if self.has_uninitialized_params():
            self._check(x)
            self._materialize(int(x.shape[1]), tuple(x.shape[2:]))

    def _check(self, x: torch.Tensor) -> None:
        if x.ndim < 3:
            raise ShapeError(f"SelfAttentionModule: expected inputs (N, C, *S) with positions to "
                             f"attend over (got shape {tuple(x.shape)})")
        if self.in_features is not None and x.shape[1] != self.in_features:
            raise ShapeError(f"SelfAttentionModule: input has {x.shape[1]} channels but the layer "
                             f"was built for {self.in_features} (input shape {tuple(x.shape)})")
        if self.pos_emb is not None and not isinstance(self.pos_emb, UninitializedParameter) \
                and tuple(self.pos_emb.shape[1:]) != tuple(x.shape[2:]):
            raise ShapeError(f"SelfAttentionModule: positional embeddings were built for positions "
                             f"{tuple(self.pos_emb.shape[1:])} but the input has {tuple(x.shape[2:])}; "
                             f"pad variable-length inputs and pass mask=")

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        with masking(x, mask, "SelfAttentionModule"):
            self._check(x)
            return zero_padding(self._attend(zero_padding(x)))

    def _attend(self, x: torch.Tensor) -> torch.Tensor:
        batch, n_in, spatial = x.shape[0], x.shape[1], tuple(x.shape[2:])
        n = math.prod(spatial)
        keep = current_keep(x)
        keep = None if keep is None else keep.reshape(batch, n).to(x.dtype)
        xf = x.reshape(batch, n_in, n).transpose(1, 2)  # (N, n, C)
        xk = xv = xf
        if self.pos_emb is not None:
            pe = self.pos_emb.reshape(self.pos_emb.shape[0], n).T  # (n, n_pe)
            if self.pos_emb_covariance is not None:  # correlated embeddings: L z, R = L L^T
                r = self.pos_emb_covariance(spatial, torch.float64, None)
                pe = torch.linalg.cholesky(r).to(pe) @ pe
            pe = (pe * self.pos_emb_std).expand(batch, n, pe.shape[1])
            if keep is not None:
                pe = pe * keep[:, :, None]
            xk = xf + pe if self.pos_emb_type == "sum" else torch.cat([xf, pe], dim=-1)
            if self.values_pos_emb:
                xv = xk
        n_k = xk.shape[-1]
        keys = torch.einsum("bnc,hcd->hbnd", xk, self.W_key)
        queries = keys if self.W_query is None else torch.einsum("bnc,hcd->hbnd", xk, self.W_query)
        power = 1.0 if self.scaling == "linear" else 0.5
        logits = torch.matmul(queries, keys.transpose(-1, -2)) * (
            self.QK_std / (n_k * self.key_features**power))  # (H, N, n, n)
        if self.mechanism == "softmax":
            if keep is not None:
                logits = logits.masked_fill(keep[None, :, None, :] == 0, -math.inf)
            weights = torch.softmax(logits, dim=-1)
        else:
            weights = {"identity": lambda t: t, "relu": torch.relu, "abs": torch.abs}[self.mechanism](logits)
            if keep is not None:
                weights = weights * keep[None, :, None, :]
        values = torch.einsum("bnc,hcd->hbnd", xv, self.W_value)
        heads = torch.matmul(weights, values)  # (H, N, n, dv)
        heads = heads.permute(1, 2, 0, 3).reshape(batch, n, self.heads * self.value_features)
        scale = self.OV_std / math.sqrt(self.value_features * self.heads * xv.shape[-1])
        out = torch.nn.functional.linear(heads, self.W_out) * scale
        if self.bias is not None:
            out = out + self.b_std * self.bias
        return out.transpose(1, 2).reshape((batch, self.out_features) + spatial)

    def extra_repr(self) -> str:
        return (f"{self.in_features}, {self.out_features}, heads={self.heads}, key_features={self.key_features}, "
                f"value_features={self.value_features}, scaling={self.scaling!r}, mechanism={self.mechanism!r}, "
                f"pos_emb={self.pos_emb_type!r}")
