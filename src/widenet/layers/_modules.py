"""Finite-width twins of widenet layers: plain ``torch.nn.Module`` objects.

Their random initialization and parameterization are exactly those whose infinite-width
limit the layers' kernel rules compute. Each parametrized module draws its parameters from
its own ``torch.Generator`` seeded from the network seed and the module's position, so a
network is reproducible from one integer whatever order its lazy parts materialize in.
Parameters are drawn in float64 on the CPU and then cast, so one seed gives the same network
in every dtype and on every device (up to rounding).
"""

from __future__ import annotations

import math
from contextvars import ContextVar
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn.modules.lazy import LazyModuleMixin
from torch.nn.parameter import UninitializedParameter


def derive_seed(base_seed: int, index: int) -> int:
    """A well-mixed 63-bit seed for the ``index``-th parametrized module of a network."""
    state = np.random.SeedSequence([base_seed & (2**64 - 1), index]).generate_state(2, np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1])) & (2**63 - 1)


def _standard_normal(shape: Sequence[int], generator: torch.Generator) -> torch.Tensor:
    return torch.randn(*shape, generator=generator, dtype=torch.float64)


INITS = ("gaussian", "orthogonal", "delta_orthogonal")


def _orthogonal(rows: int, cols: int, generator: torch.Generator) -> torch.Tensor:
    """A Haar-random (rows, cols) partial isometry: orthonormal rows or columns, whichever
    are fewer (QR of a Gaussian matrix with the signs of R's diagonal fixed)."""
    big, small = max(rows, cols), min(rows, cols)
    q, r = torch.linalg.qr(_standard_normal((big, small), generator))
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
        return _standard_normal(shape, generator)
    out = shape[0]
    if init == "orthogonal" or len(shape) == 2:
        q = _orthogonal(out, fan_in, generator)
        return (math.sqrt(max(out, fan_in)) * q).reshape(shape)
    in_channels, taps = shape[1], math.prod(shape[2:])
    if any(k % 2 == 0 for k in shape[2:]):
        from ..errors import ParameterError

        raise ParameterError(f"ConvModule: init='delta_orthogonal' needs odd kernel sizes, with a centre tap "
                             f"(got kernel_size {shape[2:]})")
    weight = torch.zeros(shape, dtype=torch.float64)
    centre = (slice(None), slice(None)) + tuple(k // 2 for k in shape[2:])
    # Effective centre weight W_std sqrt(max(out, in) / in) Q, in units of W_std / sqrt(in * taps).
    weight[centre] = math.sqrt(taps * max(out, in_channels)) * _orthogonal(out, in_channels, generator)
    return weight


def _draw_affine(module: nn.Module, fan_in: int) -> None:
    """Draws ``module.weight`` (see :func:`_draw_weight`) and ``module.bias`` (N(0, 1)) from
    ``module.seed`` in the "ntk" parameterization's units; "standard" scales them by
    ``W_std / sqrt(fan_in)`` and ``b_std`` here instead of in the forward pass."""
    generator = torch.Generator().manual_seed(module.seed)
    weight = _draw_weight(module, fan_in, generator)
    bias = None if module.bias is None else _standard_normal(module.bias.shape, generator)
    if module.parameterization == "standard":
        weight.mul_(module.W_std / math.sqrt(fan_in))
        if bias is not None:
            bias.mul_(module.b_std)
    with torch.no_grad():
        module.weight.copy_(weight)
        if bias is not None:
            module.bias.copy_(bias)


class DenseModule(LazyModuleMixin, nn.Module):
    """``y = x W^T + b`` on axis 1 (features, or channels at each position), like
    ``nn.Linear``, with widenet's initialization.

    parameterization "ntk": ``W, b ~ N(0, 1)``, ``y = (W_std / sqrt(in)) x W^T + b_std b``.
    parameterization "standard": ``W ~ N(0, W_std^2 / in)``, ``b ~ N(0, b_std^2)``,
    ``y = x W^T + b``. ``b_std=None`` means no bias parameter.
    With ``in_features=None`` the weight materializes on the first call (a lazy module).
    """

    cls_to_become = None

    def __init__(
        self,
        in_features: Optional[int],
        out_features: int,
        W_std: float,
        b_std: Optional[float],
        parameterization: str,
        seed: int,
        dtype: Optional[torch.dtype] = None,
        device: Optional[torch.device] = None,
        init: str = "gaussian",
    ) -> None:
        super().__init__()
        self.init = init
        self.in_features = in_features
        self.out_features = out_features
        self.W_std = W_std
        self.b_std = b_std
        self.parameterization = parameterization
        self.seed = seed
        factory = {"dtype": dtype or torch.get_default_dtype(), "device": device}
        if in_features is None:
            self.weight = UninitializedParameter(**factory)
        else:
            self.weight = nn.Parameter(torch.empty(out_features, in_features, **factory))
        self.bias = None if b_std is None else nn.Parameter(torch.empty(out_features, **factory))
        if in_features is not None:
            self.reset_parameters()

    def reset_parameters(self) -> None:
        """Redraws the parameters from this module's seed (the same values every time)."""
        if not self.has_uninitialized_params():
            _draw_affine(self, self.in_features)

    def initialize_parameters(self, input: torch.Tensor) -> None:  # called by LazyModuleMixin
        if self.has_uninitialized_params():
            with torch.no_grad():
                self.in_features = int(input.shape[1])
                self.weight.materialize((self.out_features, self.in_features))
                self.reset_parameters()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim < 2 or x.shape[1] != self.in_features:
            from ..errors import ShapeError

            raise ShapeError(
                f"DenseModule: input has {x.shape[1] if x.ndim >= 2 else 0} features on axis 1 but "
                f"the layer was built for {self.in_features} (input shape {tuple(x.shape)})"
            )
        if x.ndim > 2:  # per position, on the channel axis
            return self._linear(x.movedim(1, -1)).movedim(-1, 1)
        return self._linear(x)

    def _linear(self, x: torch.Tensor) -> torch.Tensor:
        if self.parameterization == "ntk":
            y = torch.nn.functional.linear(x, self.weight) * (self.W_std / math.sqrt(self.in_features))
            if self.bias is not None:
                y = y + self.b_std * self.bias
            return y
        return torch.nn.functional.linear(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"W_std={self.W_std}, b_std={self.b_std}, parameterization={self.parameterization!r}"
            + ("" if self.init == "gaussian" else f", init={self.init!r}")
        )


class ActivationModule(nn.Module):
    """Applies an elementwise function ``fn`` (a torch callable)."""

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], name: str) -> None:
        super().__init__()
        self.fn = fn
        self.name = name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)

    def extra_repr(self) -> str:
        return self.name


# Padding masks of the current forward call, as ``keep`` tensors (ones at real positions):
# set by the outermost module called with ``mask=``, read by the modules that mix positions.
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
        from ..errors import ShapeError

        raise ShapeError(f"{owner}: padding masks are supported only through layers that keep "
                         f"every position in place; this one {why}")


def check_mask(owner: str, name: str, mask, x: torch.Tensor) -> torch.Tensor:
    """A padding mask for inputs ``x`` (``(N, C, *S)``) as a boolean ``(N, *S)`` tensor on
    ``x``'s device, True at padded positions; clear errors for any other shape or dtype."""
    from ..errors import ParameterError, ShapeError

    if x.ndim < 3:
        raise ShapeError(f"{owner}: {name} needs inputs with positions (N, C, *S); inputs of "
                         f"shape {tuple(x.shape)} have none to pad")
    m = torch.as_tensor(mask, device=x.device)
    if m.dtype != torch.bool:
        raise ParameterError(f"{owner}: {name} must be a boolean tensor, True at padded "
                             f"positions (got dtype {m.dtype})")
    want = (x.shape[0],) + tuple(x.shape[2:])
    if tuple(m.shape) != want:
        raise ShapeError(f"{owner}: {name} must have shape {want} to match its inputs of "
                         f"shape {tuple(x.shape)} (got {tuple(m.shape)})")
    return m


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


class SerialModule(nn.Sequential):
    """Applies its children in order; children may pass tuples of tensors between them.

    ``forward(x, mask=None)``: ``mask`` (boolean ``(N, *S)``, True at padded positions) runs
    the network on variable-length inputs: padded positions are zero after every layer and
    left out of attention, global pooling and LayerNorm, as in the kernels' masks.
    """

    def forward(self, x, mask: Optional[torch.Tensor] = None):
        with masking(x, mask, "SerialModule"):
            x = zero_padding(x)
            for module in self:
                x = zero_padding(module(x))
        return x


class ParallelModule(nn.ModuleList):
    """Applies the i-th child to the i-th element of a tuple of inputs."""

    def forward(self, xs):
        if not isinstance(xs, (tuple, list)) or len(xs) != len(self):
            from ..errors import ShapeError

            got = len(xs) if isinstance(xs, (tuple, list)) else 1
            raise ShapeError(f"Parallel: expected a tuple of {len(self)} inputs (got {got})")
        return tuple(module(x) for module, x in zip(self, xs))


class FanOutModule(nn.Module):
    def __init__(self, num: int) -> None:
        super().__init__()
        self.num = num

    def forward(self, x: torch.Tensor):
        return (x,) * self.num

    def extra_repr(self) -> str:
        return f"num={self.num}"


class FanInModule(nn.Module):
    """Merges a tuple of branches: ``mode`` is "sum", "prod" or "concat" (along ``axis``)."""

    def __init__(self, mode: str, axis: int = 1) -> None:
        super().__init__()
        self.mode = mode
        self.axis = axis

    def forward(self, xs) -> torch.Tensor:
        if self.mode == "concat":
            return torch.cat(tuple(xs), dim=self.axis)
        out = xs[0]
        for x in xs[1:]:
            out = out + x if self.mode == "sum" else out * x
        return out

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}" + (f", axis={self.axis}" if self.mode == "concat" else "")


def torch_pads(pads: Sequence[tuple[int, int]]) -> list[int]:
    """``torch.nn.functional.pad`` order (last axis first) of per-axis ``(before, after)``."""
    out: list[int] = []
    for lo, hi in reversed(list(pads)):
        out += [lo, hi]
    return out


def spatial_pads(shape: Sequence[int], window, stride, dilation, padding: str, owner: str):
    from ._spatial import pads_for

    return [pads_for(owner, n, k, s, d, padding)[:2] for n, k, s, d in zip(shape, window, stride, dilation)]


def pad_input(x: torch.Tensor, pads, padding: str) -> torch.Tensor:
    flat = torch_pads(pads)
    if not any(flat):
        return x
    return torch.nn.functional.pad(x, flat, mode="circular" if padding == "circular" else "constant")


class ConvModule(LazyModuleMixin, nn.Module):
    """N-d convolution with widenet's initialization and padding rules.

    Its parameters are laid out like ``nn.ConvNd``'s: ``weight`` ``(out, in, *kernel_size)``
    and ``bias`` ``(out,)``; the forward pass pads (zeros for "same", wrap-around for
    "circular", nothing for "valid", with the SAME rule's split) and calls
    ``torch.nn.functional.convNd``. Parameterization "ntk": ``W, b ~ N(0, 1)`` and the output
    is ``W_std / sqrt(in * prod(kernel_size)) * conv(x, W) + b_std * b``; "standard":
    ``W ~ N(0, W_std^2 / (in * prod(kernel_size)))``, ``b ~ N(0, b_std^2)``, a plain ``nn.ConvNd``.
    """

    cls_to_become = None

    def __init__(self, in_channels: Optional[int], out_channels: int, kernel_size, stride, dilation,
                 padding: str, W_std: float, b_std: Optional[float], parameterization: str, seed: int,
                 ndim: Optional[int] = None, dtype: Optional[torch.dtype] = None, device=None,
                 init: str = "gaussian") -> None:
        super().__init__()
        self.init = init
        self.in_channels = in_channels
        self.out_channels = out_channels
        self._sizes = (kernel_size, stride, dilation)
        self.kernel_size = self.stride = self.dilation = None
        self.padding = padding
        self.W_std, self.b_std, self.parameterization, self.seed = W_std, b_std, parameterization, seed
        if ndim is None and isinstance(kernel_size, tuple):
            ndim = len(kernel_size)
        if ndim is not None:
            self._resolve(ndim)
        factory = {"dtype": dtype or torch.get_default_dtype(), "device": device}
        if in_channels is None or ndim is None:
            self.weight = UninitializedParameter(**factory)
        else:
            self.weight = nn.Parameter(torch.empty((out_channels, in_channels) + self.kernel_size, **factory))
        self.bias = None if b_std is None else nn.Parameter(torch.empty(out_channels, **factory))
        if not self.has_uninitialized_params():
            self.reset_parameters()

    def _resolve(self, ndim: int) -> None:
        as_tuple = lambda v: tuple(v) if isinstance(v, (tuple, list)) else (int(v),) * ndim  # noqa: E731
        self.kernel_size, self.stride, self.dilation = (as_tuple(v) for v in self._sizes)

    @property
    def fan_in(self) -> int:
        return self.in_channels * math.prod(self.kernel_size)

    def reset_parameters(self) -> None:
        """Redraws the parameters from this module's seed (the same values every time)."""
        if not self.has_uninitialized_params():
            _draw_affine(self, self.fan_in)

    def initialize_parameters(self, input: torch.Tensor) -> None:  # called by LazyModuleMixin
        if self.has_uninitialized_params():
            with torch.no_grad():
                self.in_channels = int(input.shape[1])
                if self.kernel_size is None:
                    self._resolve(input.ndim - 2)
                self.weight.materialize((self.out_channels, self.in_channels) + self.kernel_size)
                self.reset_parameters()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d = len(self.kernel_size)
        if self.padding != "same" or any(s != 1 for s in self.stride):
            require_no_padding(x, "ConvModule", "moves or wraps positions (masks need "
                                                "padding='same' and stride 1)")
        if x.ndim != d + 2 or x.shape[1] != self.in_channels:
            from ..errors import ShapeError

            raise ShapeError(
                f"ConvModule: expected input (N, {self.in_channels}, <{d} spatial sizes>) "
                f"(got {tuple(x.shape)})"
            )
        pads = spatial_pads(x.shape[2:], self.kernel_size, self.stride, self.dilation, self.padding, "ConvModule")
        x = pad_input(x, pads, self.padding)
        conv = (torch.nn.functional.conv1d, torch.nn.functional.conv2d, torch.nn.functional.conv3d)[d - 1]
        if self.parameterization == "ntk":
            y = conv(x, self.weight, None, self.stride, 0, self.dilation) * (self.W_std / math.sqrt(self.fan_in))
            if self.bias is not None:
                y = y + (self.b_std * self.bias).reshape((1, -1) + (1,) * d)
            return y
        return conv(x, self.weight, self.bias, self.stride, 0, self.dilation)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"padding={self.padding!r}, dilation={self.dilation}, W_std={self.W_std}, b_std={self.b_std}, "
            f"parameterization={self.parameterization!r}"
            + ("" if self.init == "gaussian" else f", init={self.init!r}")
        )


class PoolModule(nn.Module):
    """Average, sum or max pooling with widenet's padding rules ("valid", "same" with zeros
    counted in the average, "circular")."""

    def __init__(self, mode: str, window: Sequence[int], stride: Sequence[int], padding: str) -> None:
        super().__init__()
        self.mode, self.window, self.stride, self.padding = mode, tuple(window), tuple(stride), padding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        require_no_padding(x, "PoolModule", "pools windows of positions")
        d = len(self.window)
        pads = spatial_pads(x.shape[2:], self.window, self.stride, (1,) * d, self.padding, "PoolModule")
        if self.mode == "max" and self.padding == "same":
            x = torch.nn.functional.pad(x, torch_pads(pads), value=-math.inf)
        else:
            x = pad_input(x, pads, self.padding)
        F = torch.nn.functional
        if self.mode == "max":
            return (F.max_pool1d, F.max_pool2d, F.max_pool3d)[d - 1](x, self.window, self.stride)
        y = (F.avg_pool1d, F.avg_pool2d, F.avg_pool3d)[d - 1](x, self.window, self.stride)
        return y * math.prod(self.window) if self.mode == "sum" else y

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}, window={self.window}, stride={self.stride}, padding={self.padding!r}"


class GlobalPoolModule(nn.Module):
    def __init__(self, mode: str) -> None:
        super().__init__()
        self.mode = mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dims = tuple(range(2, x.ndim))
        keep = current_keep(x)
        if keep is not None and self.mode == "avg":  # the mean over real positions
            counts = keep.reshape(keep.shape[0], -1).sum(1).to(x.dtype)
            return zero_padding(x).sum(dims) / counts[:, None]
        return x.mean(dims) if self.mode == "avg" else zero_padding(x).sum(dims)

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}"


class LayerNormModule(nn.Module):
    """``(x - mean) / sqrt(var + eps)`` over ``axes`` (biased variance, no affine parameters)."""

    def __init__(self, axes: Sequence[int], eps: float) -> None:
        super().__init__()
        self.axes, self.eps = tuple(axes), eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        keep = current_keep(x)
        if keep is None or all(a == 1 for a in self.axes):
            mean = x.mean(self.axes, keepdim=True)
            var = x.var(self.axes, keepdim=True, unbiased=False)
        else:  # statistics over real positions only
            k = keep.unsqueeze(1).to(x.dtype).expand_as(x)
            count = k.sum(self.axes, keepdim=True)
            mean = (x * k).sum(self.axes, keepdim=True) / count
            var = ((x - mean).pow(2) * k).sum(self.axes, keepdim=True) / count
        return (x - mean) / torch.sqrt(var + self.eps)


class FlattenModule(nn.Flatten):
    """``x.flatten(1)``, refusing padded inputs (padding would enter the features)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        require_no_padding(x, "FlattenModule", "flattens positions into features, padding included")
        return super().forward(x)

    def extra_repr(self) -> str:
        return f"axes={self.axes}, eps={self.eps}"


class SelfAttentionModule(LazyModuleMixin, nn.Module):
    """Multi-head self-attention over the positions of ``(N, C, *S)`` inputs, with widenet's
    (Neural Tangents') NTK parameterization; see :class:`widenet.SelfAttention`.

    Parameters, all drawn standard normal from the module's seed: ``W_key``
    ``(heads, n_in_k, key_features)``, ``W_query`` (same shape, only for scaling "sqrt"; the
    "linear" scaling ties queries to keys), ``W_value`` ``(heads, n_in_v, value_features)``,
    ``W_out`` ``(out, heads * value_features)``, ``bias`` ``(out,)`` and ``pos_emb``
    ``(pos_emb_features, *S)`` (correlated by ``pos_emb_covariance(spatial, dtype, device)``
    when given; independent otherwise). The parameters materialize on the first call when the input
    channels or (with positional embeddings) the positions are not known before.
    ``forward(x, mask=None)`` takes the same padding masks as :class:`SerialModule`.
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
                    param.copy_(_standard_normal(param.shape, generator))

    def initialize_parameters(self, x: torch.Tensor, mask=None) -> None:  # LazyModuleMixin
        if self.has_uninitialized_params():
            self._check(x)
            self._materialize(int(x.shape[1]), tuple(x.shape[2:]))

    def _check(self, x: torch.Tensor) -> None:
        from ..errors import ShapeError

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
