"""``from_torch``: the infinite-width kernels of a ``torch.nn.Module`` as the user wrote it.

The model is traced by ``torch.fx`` (symbolic tracing), its values' shapes are propagated
with an example input, and every node of the graph becomes a widenet layer: ``nn.Linear``
a ``Dense``, ``nn.Conv*d`` a ``Conv``, activations (modules and their functional forms)
their closed forms or quadrature, additions of branches ``FanInSum``, concatenations along
channels ``FanInConcat``, and so on. A chain of nodes becomes a ``Serial``; anything with
branches (residuals, concatenations) a ``Graph``.

Which limit: as every hidden width of the model tends to infinity, with each layer's weights
and biases drawn as the model's own initialization draws them. With ``init="module"`` those
are PyTorch's defaults: ``nn.Linear`` and ``nn.Conv*d`` draw ``W`` and ``b`` uniformly
(Kaiming-uniform with ``a = sqrt(5)``), so ``Var(W) = Var(b) = 1 / (3 fan_in)``; only the
variances matter in the limit (central limit theorem), so the layers are ``Dense`` /
``Conv`` with ``W_std = 1 / sqrt(3)`` and ``b_std = 1 / sqrt(3 fan_in)``. ``scales=``
overrides them per layer by its name in the model (``{"fc1": (W_std, b_std)}``). The
variances alone decide the limit in every layer whose fan-in grows with the width; the first
layer sums only the input's dimension of uniform terms, so with a handful of inputs and a
nonlinearity right after it the model's own limit departs from this Gaussian-weight kernel
(docs/guide/from-torch.md gives the measured size).
"""

from __future__ import annotations

import math
import operator
import re
import warnings
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import fx, nn

from .. import layers as L
from .._validate import check_choice, check_int
from ..errors import ParameterError, ShapeError, UnsupportedModuleError
from ._fallback import MonteCarloModel
from ._graph import AffineNonlinearity, ElementwiseAffine, Graph, Layout, Scale, StandardAttention

__all__ = ["from_torch", "to_torch"]

# Activations: module types and functions, each to a widenet layer (a closed form where
# widenet has one, Gauss-Hermite quadrature of the function otherwise).
_SIGMOID = L.Elementwise(torch.sigmoid, name="sigmoid")
_SILU = L.Elementwise(F.silu, name="silu")
_FUNCTIONS = {
    torch.relu: L.Relu(), F.relu: L.Relu(), torch.tanh: L.Tanh(), F.tanh: L.Tanh(), torch.erf: L.Erf(),
    torch.sigmoid: _SIGMOID, F.sigmoid: _SIGMOID, F.silu: _SILU, torch.sin: L.Sin(), torch.cos: L.Cos(),
    torch.abs: L.Abs(),
}
_METHODS = {"relu": L.Relu(), "tanh": L.Tanh(), "sigmoid": _SIGMOID, "erf": L.Erf(), "sin": L.Sin(),
            "cos": L.Cos(), "abs": L.Abs()}
_IDENTITY_METHODS = {"contiguous", "clone", "detach"}
_PERMUTES = {torch.permute, torch.transpose, torch.swapaxes, "permute", "transpose", "swapaxes"}
_CHANNELS_FIRST = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d,
                   nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d,
                   nn.AdaptiveAvgPool3d)
_POOL_ARGS = ("kernel_size", "stride", "padding", "ceil_mode", "count_include_pad", "divisor_override")
_POOLS = {F.avg_pool1d: _POOL_ARGS[:5], F.avg_pool2d: _POOL_ARGS, F.avg_pool3d: _POOL_ARGS,
          F.adaptive_avg_pool1d: ("output_size",), F.adaptive_avg_pool2d: ("output_size",),
          F.adaptive_avg_pool3d: ("output_size",)}
_NO_KERNEL = {  # modules without an infinite-width kernel here, and what to do instead
    nn.MaxPool1d: "max pooling has no closed-form kernel; use nn.AvgPool, or strict=False for a Monte Carlo kernel",
    nn.MaxPool2d: "max pooling has no closed-form kernel; use nn.AvgPool, or strict=False for a Monte Carlo kernel",
    nn.MaxPool3d: "max pooling has no closed-form kernel; use nn.AvgPool, or strict=False for a Monte Carlo kernel",
    nn.BatchNorm1d: "batch normalization couples the examples of a batch; remove it or use LayerNorm",
    nn.BatchNorm2d: "batch normalization couples the examples of a batch; remove it or use LayerNorm",
    nn.BatchNorm3d: "batch normalization couples the examples of a batch; remove it or use LayerNorm",
    nn.LSTM: "gated recurrences have no kernel here; wn.Recurrent is the Elman RNN",
    nn.GRU: "gated recurrences have no kernel here; wn.Recurrent is the Elman RNN",
}


def to_torch(net: L.Layer, input_shape=None, **options) -> nn.Module:
    """The finite-width ``torch.nn.Module`` of a widenet network: ``net.module(input_shape,
    **options)`` (seed, dtype, device, init; see ``Layer.module``).

    Example:

        >>> model = wn.to_torch(wn.Serial(wn.Dense(64), wn.Relu(), wn.Dense(1)), 10, seed=0)
    """
    if not isinstance(net, L.Layer):
        raise ParameterError(f"to_torch: net must be a widenet layer (got {type(net).__name__})")
    return net.module(input_shape, **options)


def from_torch(model: nn.Module, example_input: Optional[torch.Tensor] = None, *,
               parameterization: str = "standard", init: str = "module",
               scales: Optional[dict] = None, strict: bool = True, n_samples: int = 64,
               attention: str = "exact") -> L.Layer:
    """The widenet network whose kernels are ``model``'s infinite-width limit.

    Args:
        model: a ``torch.nn.Module`` that ``torch.fx.symbolic_trace`` can trace (no
            data-dependent control flow), with parameters, returning one tensor.
        example_input: one batch the model accepts, ``(N, ...)`` (needed when the first
            layer does not fix the input's shape, e.g. a convolution); by default
            ``(2, in_features)`` for a model that opens with ``nn.Linear``.
        parameterization: ``"standard"`` (default: the NTK of the model's own
            parameters, which grows with the layers' widths, as Neural Tangents'
            ``parameterization="standard"`` with the model's actual widths) or ``"ntk"``
            (the same NNGP; the NTK of the rescaled parameters ``W = W_std / sqrt(fan_in) w``,
            independent of the widths).
        init: ``"module"``: the weight and bias variances of PyTorch's default initialization
            of each layer (see the module docstring); ``"ntk"``: the theory's convention (and
            Neural Tangents' ``stax`` defaults), ``W_std = 1`` and ``b_std = 0`` in every affine
            layer, whatever the model's own initialization.
        scales: ``{name: (W_std, b_std)}`` overriding layers by their names in the model
            (``dict(model.named_modules())``).
        strict: with False, a model that has no exact kernel here (the
            ``UnsupportedModuleError`` cases) falls back, with a warning that says why, to
            Monte Carlo kernels of the model itself: a ``MonteCarloModel`` whose ``kernel``
            averages ``n_samples`` re-initialized copies (``widenet.empirical.monte_carlo``;
            standard errors included). Bad input still raises.
        attention: how ``nn.MultiheadAttention`` (alone or in ``nn.TransformerEncoderLayer``
            / ``nn.TransformerEncoder``) is read. ``"exact"`` (default) refuses it: PyTorch's
            logits, scaled by ``1/sqrt(head_dim)`` with independent query and key weights, stay
            random at infinite width and their softmax has no closed-form kernel.
            ``"linear"``: as ``wn.SelfAttention(scaling="linear")`` with the module's heads,
            widths and variances (the kernel of a related network, see docs/guide/from-torch.md);
            ``scales={name: {"W_query_std": ..., "W_key_std": ..., "W_value_std": ...,
            "W_out_std": ..., "b_std": ...}}`` overrides them.

    Returns:
        a widenet network (``Serial``, or ``Graph`` with branches; in a ``Layout`` when the
        model keeps its channels on another dim than 1): ``kernel``, ``nngp``, ``ntk``,
        ``module()`` and everything else work on it.

    Supported: ``nn.Linear`` (on the last dim), ``nn.Conv1d/2d/3d`` (groups 1; zero padding
    "same" for odd kernels, 0, or circular), ``nn.ConvTranspose1d/2d/3d`` (padding and output
    padding crop as PyTorch's; no dilation), ``nn.AvgPool*`` without padding and
    ``nn.AdaptiveAvgPool*`` to 1 or to sizes that divide the input (modules and functions),
    ``nn.Flatten`` and ``flatten``/``view``/``reshape`` to ``(N, -1)``, means over every
    position axis, indexing positions (``h[:, 0]``), ``permute``/``transpose`` that keep the
    batch on dim 0 and the positions in order, ``nn.Identity``, ``nn.Dropout`` (identity in eval
    mode, ``wn.Dropout`` in train mode), activations (``nn.ReLU``, ``nn.LeakyReLU``,
    ``nn.GELU``, ``nn.Tanh``, ``nn.Sigmoid``, ``nn.SiLU``, ``nn.ELU``, ``nn.Softplus``,
    ``nn.Hardtanh``, ``nn.Mish`` and their functional forms), additions of branches
    (residuals), ``torch.cat`` along channels, multiplication by a constant, ``nn.Sequential``
    / ``nn.ModuleList`` loops, ``nn.LayerNorm`` over the last dims holding the channels (its
    trainable scale and shift add their NTK terms), attention and encoder layers with
    ``attention="linear"``. Channels may sit on any dim (tokens ``(N, L, C)``, images
    ``(N, H, W, C)``): the result then wraps the network in a ``Layout`` that takes inputs in
    the model's own layout. Anything else raises ``UnsupportedModuleError`` naming the node,
    its source line and what to do instead.

    Example:

        >>> class Net(torch.nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.fc1, self.fc2 = torch.nn.Linear(10, 256), torch.nn.Linear(256, 256)
        ...         self.out = torch.nn.Linear(256, 1)
        ...     def forward(self, x):
        ...         h = torch.relu(self.fc1(x))
        ...         return self.out(h + self.fc2(h))    # a residual block
        >>> net = wn.from_torch(Net())
        >>> net.kernel(torch.randn(5, 10)).ntk.shape
        torch.Size([5, 5])
    """
    owner = "from_torch"
    if not isinstance(model, nn.Module):
        raise ParameterError(f"{owner}: model must be a torch.nn.Module (got {type(model).__name__})")
    check_choice(owner, "parameterization", parameterization, ("standard", "ntk"))
    check_choice(owner, "init", init, ("module", "ntk"))
    check_choice(owner, "attention", attention, ("exact", "linear"))
    if isinstance(getattr(model, "widenet_layer", None), L.Layer):
        return model.widenet_layer  # a widenet twin: its own architecture
    scales = dict(scales or {})
    if isinstance(model, (nn.TransformerEncoderLayer, nn.TransformerEncoder)):
        # modules read whole (torch.fx cannot trace their forward): as the one step of a model
        model = nn.Sequential(model)
        scales = {f"0.{name}" if name else "0": v for name, v in scales.items()}
    params = list(model.parameters())
    if not params:
        raise ParameterError(f"{owner}: model has no parameters, so no kernel to take the limit of "
                             f"({type(model).__name__})")
    named = dict(model.named_modules())
    for name in scales:
        if name not in named:
            raise ParameterError(f"{owner}: scales names {name!r}, which is not a module of the model "
                                 f"(modules: {', '.join(n for n in named if n) or 'none'})")
    device = params[0].device
    if example_input is None:
        example_input = _default_input(owner, model, named, device)
    if not isinstance(example_input, torch.Tensor):
        raise ParameterError(f"{owner}: example_input must be a torch.Tensor (got {type(example_input).__name__})")
    if example_input.device != device:
        raise ParameterError(f"{owner}: example_input is on {example_input.device} but the model's parameters are "
                             f"on {device}; move one of them")
    if not isinstance(strict, bool):
        raise ParameterError(f"{owner}: strict must be a bool (got {strict!r})")
    n_samples = check_int(owner, "n_samples", n_samples, minimum=2)
    x = example_input.to(params[0].dtype) if example_input.is_floating_point() else example_input
    try:
        graph = _trace(owner, model)
        _propagate(owner, graph, x)
        return _Converter(owner, graph, named, parameterization, scales, init, attention).run()
    except UnsupportedModuleError as err:
        if strict:
            raise
        warnings.warn(f"{err}\nstrict=False: falling back to Monte Carlo kernels of the model itself over "
                      f"{n_samples} re-initialized copies (estimates with standard errors, not exact kernels)",
                      stacklevel=2)
        return MonteCarloModel(model, n_samples)


# ---- tracing --------------------------------------------------------------------------------------

class _Tracer(fx.Tracer):
    def __init__(self) -> None:
        super().__init__()
        self.record_stack_traces = True

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        # a widenet twin (``net.module()``) is read back as the architecture it came from
        return isinstance(getattr(m, "widenet_layer", None), L.Layer) or super().is_leaf_module(m, qualname)


def _trace(owner: str, model: nn.Module) -> fx.GraphModule:
    tracer = _Tracer()
    try:
        graph = tracer.trace(model)
    except Exception as err:  # torch.fx raises TraceError, TypeError, ... for untraceable code
        raise UnsupportedModuleError(
            f"{owner}: torch.fx cannot trace {type(model).__name__}: {type(err).__name__}: {err}. "
            f"Control flow that depends on the data (an if on a tensor's values, a loop of data-dependent "
            f"length) has no fixed graph, so no kernel; move it out of forward") from err
    return fx.GraphModule(tracer.root, graph)


def _default_input(owner: str, model: nn.Module, named: dict, device) -> torch.Tensor:
    sequences = any(isinstance(m, nn.MultiheadAttention) for m in named.values())
    for module in [] if sequences else named.values():
        if isinstance(module, nn.Linear):
            return torch.zeros(2, module.in_features, device=device)
        if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d)):
            break
    raise ParameterError(f"{owner}: give example_input, one batch the model accepts: its input's shape "
                         f"is not fixed by a first nn.Linear ({type(model).__name__})")


def _propagate(owner: str, graph: fx.GraphModule, x: torch.Tensor) -> None:
    from torch.fx.passes.shape_prop import ShapeProp

    try:
        with torch.no_grad():
            ShapeProp(graph).propagate(x)
    except Exception as err:
        raise ShapeError(f"{owner}: the model rejects example_input of shape {tuple(x.shape)}: "
                         f"{type(err).__name__}: {err}") from err
    out = [n for n in graph.graph.nodes if n.op == "output"][0]
    if not isinstance(out.args[0], fx.Node) or "tensor_meta" not in out.args[0].meta:
        raise UnsupportedModuleError(f"{owner}: the model must return one tensor (its forward returns "
                                     f"{type(out.args[0]).__name__})")


def _where(node: fx.Node) -> str:
    """The node's name, its code and the source line of the model's that made it."""
    frames = re.findall(r'File "([^"]+)", line (\d+), in (\S+)\n\s+(.*)', node.stack_trace or "")
    user = [f for f in frames if "/torch/" not in f[0]]
    where = f"node {node.name!r} ({node.format_node()})"
    if user:
        path, line, function, code = user[-1]
        where += f", {path}:{line} in {function}: {code.strip()}"
    return where


def _shape(node: Any) -> Optional[tuple]:
    meta = getattr(node, "meta", {}).get("tensor_meta") if isinstance(node, fx.Node) else None
    return None if meta is None or not hasattr(meta, "shape") else tuple(meta.shape)


# ---- conversion -----------------------------------------------------------------------------------

class _Converter:
    """Walks the traced graph in order; each node becomes a layer (or passes its value on)."""

    def __init__(self, owner: str, graph: fx.GraphModule, named: dict, parameterization: str, scales: dict,
                 init: str = "module", attention: str = "exact"):
        self.owner, self.graph, self.named, self.init = owner, graph, named, init
        self.attention_mode = attention
        self.parameterization, self.scales = parameterization, scales
        self.layers: list = []
        self.inputs: list = []
        self.value: dict = {}  # fx node -> index of the widenet value (0: the input)
        self.flat: dict = {}  # index -> True when widenet's value has no positions left
        # index -> the affine layer whose fresh weights make the value a zero-mean Gaussian
        # uncorrelated with anything computed without them (None: not such a value), and the
        # layers the value depends on.
        self.fresh: dict = {0: None}
        self.calls: dict = {}  # parametrized module name -> (input index, output index)
        self.ancestors: dict = {0: frozenset()}
        # Layouts. Batch is the torch tensor's dim 0; ``chan[node]`` is the dim holding its
        # channels, the other dims are positions in order (widenet's value is
        # ``t.permute(0, chan, *positions)``). Until a layer reads them, the input's channels
        # are unknown: ``rel[node]`` says ``node == input.permute(rel[node])``.
        self.chan: dict = {}
        self.rel: dict = {}
        self.input_chan: Optional[int] = None
        self.input_ndim = 2
        self.attention_nodes: set = set()

    def add(self, layer: L.Layer, args: list, flat: Optional[bool] = None) -> int:
        self.layers.append(layer)
        self.inputs.append(tuple(args))
        index = len(self.layers)
        self.flat[index] = self.flat[args[0]] if flat is None else flat
        self.ancestors[index] = frozenset({index}).union(*(self.ancestors[a] for a in args))
        if isinstance(layer, (L.Dense, L.Conv, L.ConvTranspose, L.SelfAttention, StandardAttention)):
            self.fresh[index] = index
        elif isinstance(layer, (L.AvgPool, L.GlobalAvgPool, L.Flatten, Scale, L.Index)):
            self.fresh[index] = self.fresh[args[0]]  # linear maps keep it
        else:
            self.fresh[index] = None
        return index

    def run(self) -> L.Layer:
        result = None
        for node in self.graph.graph.nodes:
            if node.op == "placeholder":
                if self.value:
                    raise UnsupportedModuleError(f"{self.owner}: the model's forward takes more than one input "
                                                 f"({_where(node)}); kernels are of one input tensor")
                self.value[node] = 0
                self.flat[0] = len(_shape(node)) <= 2
                self.input_ndim = len(_shape(node))
                if self.input_ndim <= 2:
                    self.chan[node] = 1
                else:
                    self.rel[node] = tuple(range(self.input_ndim))
            elif node.op == "output":
                result = self.value[node.args[0]]
                out = node.args[0]
            elif node.op in ("call_module", "call_function", "call_method"):
                self.value[node] = self.node(node)
                self.settle(node)
            elif node.op == "get_attr":
                raise self.unsupported(node, "reads a parameter or buffer directly in forward",
                                       "use it through a module (nn.Linear, nn.Conv*d)")
        if self.input_chan is None:
            self.resolve(out, 1)  # nothing read the channels: PyTorch's (N, C, *S)
        net = L.Serial(L.Identity()) if result == 0 else self.build(result)
        c_out = self.chan[out]
        if self.input_chan == 1 and c_out == 1:
            return net
        n_out = len(_shape(out))
        order_out = _order(c_out, n_out)
        return Layout(net, _order(self.input_chan, self.input_ndim),
                      None if c_out == 1 else tuple(order_out.index(d) for d in range(n_out)))

    # -- layouts --
    def settle(self, node: fx.Node) -> None:
        """The layout of a node's value that its handler did not set: (N, C) for two axes, else
        its first tensor argument's (elementwise layers, sums, dropout keep it)."""
        if node in self.chan or node in self.rel:
            return
        shape = _shape(node)
        if shape is None:
            return
        if len(shape) <= 2:
            self.chan[node] = 1
            return
        for a in node.args:
            if isinstance(a, fx.Node) and len(_shape(a) or ()) == len(shape):
                if a in self.chan:
                    self.chan[node] = self.chan[a]
                    return
                if a in self.rel:
                    self.rel[node] = self.rel[a]
                    return
        self.chan[node] = 1

    def need(self, node: fx.Node, arg: Any, c: int, what: str) -> None:
        """The layer at ``node`` reads channels at dim ``c`` of ``arg``."""
        ndim = len(_shape(arg))
        c = c % ndim
        if arg in self.chan:
            if self.chan[arg] != c:
                raise self.unsupported(node, f"{what} reading channels at dim {c} of a tensor {_shape(arg)} whose "
                                             f"channels are at dim {self.chan[arg]}",
                                       "permute the channels to the dim the layer reads")
            return
        self.resolve(node, self.rel[arg][c])

    def resolve(self, node: fx.Node, c_in: int) -> None:
        """The input's channels are at its dim ``c_in``: every value waiting on it learns its own."""
        self.input_chan = c_in
        for waiting, q in list(self.rel.items()):
            c = q.index(c_in)
            positions = [q[j] for j in range(1, len(q)) if j != c]
            if positions != sorted(positions):
                raise self.unsupported(node, f"a permutation of the input {tuple(q)} that reorders its position "
                                             f"axes (channels at dim {c_in})",
                                       "permute channels only; position axes keep their order")
            self.chan[waiting] = c
        self.rel.clear()

    def permute(self, node: fx.Node) -> int:
        x = self.arg(node)
        src = node.args[0]
        ndim = len(_shape(src))
        args = list(node.args[1:]) or list(node.kwargs.values())
        if node.target in ("transpose", torch.transpose, "swapaxes", torch.swapaxes):
            a, b = (int(d) % ndim for d in args[:2])
            q = list(range(ndim))
            q[a], q[b] = q[b], q[a]
        else:
            dims = args[0] if len(args) == 1 and isinstance(args[0], (tuple, list)) else args
            q = [int(d) % ndim for d in dims]
        if q[0] != 0:
            raise self.unsupported(node, f"a permutation {tuple(q)} that moves the batch axis",
                                   "keep the examples on dim 0")
        if src in self.chan:
            c = q.index(self.chan[src])
            positions = [q[j] for j in range(1, ndim) if j != c]
            if positions != sorted(positions):
                raise self.unsupported(node, f"a permutation {tuple(q)} that reorders position axes",
                                       "permute channels only; position axes keep their order")
            self.chan[node] = c
        else:
            self.rel[node] = tuple(self.rel[src][j] for j in q)
        return x

    def build(self, result: int) -> L.Layer:
        if result != len(self.layers):  # values computed after the output are dropped
            self.layers, self.inputs = self.layers[:result], self.inputs[:result]
        chain = all(len(a) == 1 and a[0] == i for i, a in enumerate(self.inputs))
        if chain and not any(isinstance(layer, ElementwiseAffine) for layer in self.layers):
            return L.Serial(*self.layers)
        self.merge_runs()
        self.merge_affine()
        if chain:
            return L.Serial(*(layer for layer in self.layers if not isinstance(layer, L.Identity)))
        return Graph(tuple(self.layers), tuple(self.inputs))

    def merge_affine(self) -> None:
        """An ``ElementwiseAffine`` whose value only a nonlinearity takes becomes one
        ``AffineNonlinearity`` with it (its scale's NTK term goes through the nonlinearity's
        derivative at the same pre-activation)."""
        uses = self.uses()
        for i, (layer, args) in enumerate(zip(self.layers, self.inputs)):
            a = args[0]
            if (isinstance(layer, L.Nonlinearity) and len(args) == 1 and a >= 1 and uses[a] == 1
                    and isinstance(self.layers[a - 1], ElementwiseAffine)):
                affine = self.layers[a - 1]
                self.layers[i] = AffineNonlinearity(layer, affine.bias, affine.axes)
                self.layers[a - 1] = L.Identity()

    def uses(self) -> list:
        uses = [0] * (len(self.layers) + 1)
        for args in self.inputs:
            for a in args:
                uses[a] += 1
        return uses

    def merge_runs(self) -> None:
        """Nonlinearities in a row (the first one's value used by the second only) become one
        ``Chain``, the second an ``Identity`` of it: their kernel is that of the composed
        function (``Serial`` does the same for its runs)."""
        uses = self.uses()
        for i, (layer, args) in enumerate(zip(self.layers, self.inputs)):
            a = args[0]
            if (isinstance(layer, L.Nonlinearity) and len(args) == 1 and a >= 1 and uses[a] == 1
                    and isinstance(self.layers[a - 1], L.Nonlinearity)):
                self.layers[a - 1] = L.Chain(self.layers[a - 1], layer)
                self.layers[i] = L.Identity()

    def unsupported(self, node: fx.Node, what: str, instead: str) -> UnsupportedModuleError:
        return UnsupportedModuleError(f"{self.owner}: {what} at {_where(node)}, which has no infinite-width kernel "
                                      f"here; {instead}")

    def arg(self, node: fx.Node, i: int = 0) -> int:
        a = node.args[i]
        if not isinstance(a, fx.Node) or a not in self.value:
            raise self.unsupported(node, f"{node.op} {_name(node.target)} takes a non-tensor or untracked input",
                                   "compute it from the model's input")
        return self.value[a]

    # -- one node --
    def node(self, node: fx.Node) -> int:
        if node.op == "call_module":
            m = self.graph.get_submodule(node.target)
            if not any(True for _ in m.parameters()):
                return self.module(node, m)
            x = self.arg(node)
            if node.target in self.calls:  # one module, called again: the same weights
                seen, out = self.calls[node.target]
                if seen == x:
                    return out
                raise self.unsupported(node, f"the module {node.target!r} called on a second, different input "
                                             f"(its weights shared between branches)",
                                       "call each parametrized module once (weight sharing correlates the branches)")
            out = self.module(node, m)
            self.calls[node.target] = (x, out)
            return out
        target = node.target
        if node.op == "call_method" and target in _IDENTITY_METHODS:
            return self.arg(node)
        if target in _FUNCTIONS or (node.op == "call_method" and target in _METHODS):
            layer = _FUNCTIONS.get(target) if node.op == "call_function" else _METHODS[target]
            return self.add(layer, [self.arg(node)])
        if target is F.gelu:
            approximate = node.kwargs.get("approximate", "none")
            return self.add(_gelu(approximate), [self.arg(node)])
        if target is F.leaky_relu:
            slope = node.args[1] if len(node.args) > 1 else node.kwargs.get("negative_slope", 0.01)
            return self.add(L.LeakyRelu(float(slope)), [self.arg(node)])
        if target in (operator.add, torch.add, operator.iadd) or (node.op == "call_method" and target == "add"):
            return self.sum(node)
        if target in (operator.mul, torch.mul) or (node.op == "call_method" and target == "mul"):
            return self.scale(node)
        if target is torch.cat:
            return self.cat(node)
        if target in _PERMUTES:
            return self.permute(node)
        if target in (torch.mean, "mean"):
            return self.mean(node)
        if target is operator.getitem:
            return self.getitem(node)
        if target in _POOLS:
            return self.functional_pool(node)
        if target in (torch.flatten,) or (node.op == "call_method" and target in ("flatten", "view", "reshape")):
            return self.flatten(node)
        if target is F.dropout:
            return self.arg(node)  # functional dropout follows `training=`; at init the eval map
        raise self.unsupported(node, f"the operation {_name(target)}",
                               "write it with supported modules (see from_torch's docstring)")

    def module(self, node: fx.Node, m: nn.Module) -> int:
        x = self.arg(node)
        name = node.target
        if isinstance(getattr(m, "widenet_layer", None), L.Layer):
            layer = m.widenet_layer
            if isinstance(layer, Layout):  # a twin that permutes: its own channel dims in and out
                self.need(node, node.args[0], layer.input_order[1], f"the widenet twin {name!r}")
                n_out = len(_shape(node))
                self.chan[node] = 1 if layer.output_order is None else layer.output_order.index(1)
                return self.add(layer.net, [x], flat=n_out <= 2)
            return self.add(layer, [x])
        if isinstance(m, nn.Linear):
            shape = _shape(node.args[0])
            if len(shape) > 2:  # on the last dim at every position: tokens (N, L, C)
                self.need(node, node.args[0], -1, f"nn.Linear {name!r}")
            w, b = self.std(name, m, m.in_features)
            return self.add(L.Dense(m.out_features, w, b, self.parameterization), [x], flat=len(shape) <= 2)
        if isinstance(m, _CHANNELS_FIRST):
            self.need(node, node.args[0], 1, f"{type(m).__name__} {name!r}")
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            return self.add(self.conv(node, name, m), [x])
        if isinstance(m, (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
            return self.conv_transpose(node, name, m, x)
        if isinstance(m, (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d)):
            return self.avg_pool(node, f"{type(m).__name__} {name!r}", m.kernel_size, m.stride, m.padding,
                                 m.ceil_mode, x)
        if isinstance(m, (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d)):
            return self.adaptive(node, f"{type(m).__name__} {name!r}", m.output_size, x)
        if isinstance(m, nn.Flatten):
            return self.flatten(node)
        if isinstance(m, nn.LayerNorm):
            return self.layer_norm(node, name, m, x)
        if isinstance(m, nn.MultiheadAttention):
            return self.attention(node, name, m, x)
        if isinstance(m, nn.TransformerEncoderLayer):
            return self.encoder_layer(node, name, m, x)
        if isinstance(m, nn.TransformerEncoder):
            self.need(node, node.args[0], -1, f"nn.TransformerEncoder {name!r}")
            for i, layer in enumerate(m.layers):
                x = self.encoder_layer(node, f"{name}.layers.{i}", layer, x)
            if m.norm is not None:
                x = self.layer_norm(node, f"{name}.norm", m.norm, x)
            return x
        if isinstance(m, nn.Identity):
            return x
        if isinstance(m, (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d)):
            if not m.training or m.p == 0:
                return x
            if not isinstance(m, nn.Dropout):
                raise self.unsupported(node, f"{type(m).__name__} {name!r} in train mode", "call model.eval()")
            return self.add(L.Dropout(m.p), [x])
        if isinstance(m, nn.Sequential) and len(m) == 0:
            return x
        layer = _activation(m)
        if layer is not None:
            return self.add(layer, [x])
        for kind, instead in _NO_KERNEL.items():
            if isinstance(m, kind):
                raise self.unsupported(node, f"{type(m).__name__} {name!r}", instead)
        raise self.unsupported(node, f"the module {type(m).__name__} {name!r}",
                               "write it with supported modules (see from_torch's docstring)")

    def std(self, name: str, m: nn.Module, fan_in: int) -> tuple:
        if name in self.scales:
            w, b = self.scales[name]
            return w, (None if m.bias is None else b)
        if self.init == "ntk":
            return 1.0, (None if m.bias is None else 0.0)
        # PyTorch's default: kaiming_uniform_(a=sqrt(5)) and U(+-1/sqrt(fan_in)): variances 1/(3 fan_in)
        return 1 / math.sqrt(3), (None if m.bias is None else 1 / math.sqrt(3 * fan_in))

    def conv(self, node: fx.Node, name: str, m: nn.Module) -> L.Layer:
        if m.groups != 1:
            raise self.unsupported(node, f"{type(m).__name__} {name!r} with groups={m.groups}",
                                   "use groups=1")
        k, dilation, stride = _tuple(m.kernel_size), _tuple(m.dilation), _tuple(m.stride)
        if m.padding == "same":
            padding = "same"
        elif m.padding == "valid" or not any(_tuple(m.padding)):
            padding = "valid"
        elif all(p == d * (kk - 1) // 2 and kk % 2 == 1 for p, d, kk in zip(_tuple(m.padding), dilation, k)):
            padding = "same"
        else:
            raise self.unsupported(node, f"{type(m).__name__} {name!r} with padding={m.padding}",
                                   "pad by (kernel_size - 1) // 2 with odd kernels ('same'), or not at all")
        if m.padding_mode == "circular" and padding == "same":
            padding = "circular"
        elif m.padding_mode != "zeros" and padding != "valid":
            raise self.unsupported(node, f"{type(m).__name__} {name!r} with padding_mode={m.padding_mode!r}",
                                   "use zero or circular padding")
        w, b = self.std(name, m, m.in_channels * math.prod(k))
        return L.Conv(m.out_channels, k, stride=stride, padding=padding, dilation=dilation, W_std=w, b_std=b,
                      parameterization=self.parameterization)

    def conv_transpose(self, node: fx.Node, name: str, m: nn.Module, x: int) -> int:
        pad, out_pad = _tuple(m.padding), _tuple(m.output_padding)
        if m.groups != 1 or any(d != 1 for d in _tuple(m.dilation)) or m.padding_mode != "zeros":
            raise self.unsupported(node, f"{type(m).__name__} {name!r} with dilation, groups or a padding mode",
                                   "use their defaults")
        if any(o > p for o, p in zip(out_pad, pad)):
            raise self.unsupported(node, f"{type(m).__name__} {name!r} with output_padding {out_pad} beyond "
                                         f"padding {pad}", "keep output_padding <= padding")
        k = _tuple(m.kernel_size)
        # PyTorch's default draws the (in, out, *k) weight with fan_in = out * prod(k) (its
        # second axis): Var(W) = 1 / (3 out prod(k)); widenet's scale counts in * prod(k).
        w, b = self.std(name, m, m.out_channels * math.prod(k))
        if name not in self.scales and self.init == "module":
            w = math.sqrt(m.in_channels / (3 * m.out_channels))
        x = self.add(L.ConvTranspose(m.out_channels, k, stride=_tuple(m.stride), padding="valid", W_std=w, b_std=b,
                                     parameterization=self.parameterization), [x])
        if not any(pad):
            return x
        # PyTorch's padding p crops p positions from the start of the full output and
        # p - output_padding from its end
        crop = tuple(slice(p, -(p - o) if p > o else None) for p, o in zip(pad, out_pad))
        return self.add(L.Index((slice(None), slice(None)) + crop), [x])

    def adaptive(self, node: fx.Node, name: str, output_size, x: int) -> int:
        shape = _shape(node.args[0])[2:]
        out = _tuple(output_size)
        out = tuple(s if o is None else o for o, s in zip(out * (len(shape) // len(out)), shape))
        if all(o == 1 for o in out):
            return self.add(L.GlobalAvgPool(), [x], flat=True)
        if any(s % o for s, o in zip(shape, out)):
            raise self.unsupported(node, f"{name} from {shape} to {out}",
                                   "pool to sizes that divide the input's")
        window = tuple(s // o for s, o in zip(shape, out))
        return self.add(L.AvgPool(window, window, padding="valid"), [x])

    def flatten(self, node: fx.Node) -> int:
        x = self.arg(node)
        before, after = _shape(node.args[0]), _shape(node)
        if after is None or len(after) != 2 or after[0] != before[0]:
            raise self.unsupported(node, f"reshaping {before} to {after}",
                                   "only flattening to (N, features) keeps a meaningful layout")
        if self.flat[x] or len(before) <= 2:
            return x  # nothing left to flatten (after global pooling: (N, C, 1, 1) -> (N, C))
        return self.add(L.Flatten(), [x], flat=True)

    def sum(self, node: fx.Node) -> int:
        tensors = [a for a in node.args if isinstance(a, fx.Node)]
        if len(tensors) != 2 or len(node.args) != 2 or node.kwargs.get("alpha", 1) != 1:
            raise self.unsupported(node, "an addition with a constant or a scaled branch",
                                   "add two branches (x + f(x)); scale a branch by multiplying it")
        if _shape(tensors[0]) != _shape(tensors[1]):
            raise self.unsupported(node, f"adding shapes {_shape(tensors[0])} and {_shape(tensors[1])} (broadcast)",
                                   "add branches of one shape")
        for t, other in ((tensors[0], tensors[1]), (tensors[1], tensors[0])):
            if other in self.chan and len(_shape(t)) > 2:
                self.need(node, t, self.chan[other], "an addition")
        a, b = (self.value[t] for t in tensors)
        if not (self._independent(a, b) or self._independent(b, a)):
            raise self.unsupported(
                node, "an addition of two branches that are correlated (neither ends in an affine layer of "
                      "its own, such as x + relu(x) or h + gelu(fc(h)))",
                "end one branch with its own nn.Linear / nn.Conv (x + f(x) with f ending in one): the kernel "
                "of a sum adds the branches' kernels, exact only for uncorrelated branches")
        return self.add(L.FanInSum(), [a, b])

    def _independent(self, a: int, b: int) -> bool:
        """True when ``a`` is a zero-mean Gaussian made by an affine layer that ``b`` does
        not depend on: then a and b are uncorrelated and their sum's kernel is the sum."""
        source = self.fresh.get(a)
        return source is not None and source not in self.ancestors[b]

    def scale(self, node: fx.Node) -> int:
        tensors = [a for a in node.args if isinstance(a, fx.Node)]
        consts = [a for a in node.args if isinstance(a, (int, float))]
        if len(tensors) == 1 and len(consts) == 1:
            return self.add(Scale(float(consts[0])), [self.value[tensors[0]]])
        raise self.unsupported(node, "a product of tensors", "multiply a branch by a constant only")

    def cat(self, node: fx.Node) -> int:
        parts = node.args[0]
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
        ndim = len(_shape(node))
        if not isinstance(parts, (list, tuple)) or int(dim) % ndim == 0:
            raise self.unsupported(node, f"torch.cat along dim {dim}", "concatenate along channels")
        for part in parts:
            self.need(node, part, int(dim), "torch.cat")
        self.chan[node] = int(dim) % ndim
        return self.add(L.FanInConcat(), [self.value[p] for p in parts])

    def mean(self, node: fx.Node) -> int:
        """``x.mean(dim=positions)``: global average pooling (all positions, keepdim False)."""
        x = self.arg(node)
        src, ndim = node.args[0], len(_shape(node.args[0]))
        dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
        dims = (dims,) if isinstance(dims, int) else tuple(dims or ())
        dims = {int(d) % ndim for d in dims}
        keepdim = node.args[2] if len(node.args) > 2 else node.kwargs.get("keepdim", False)
        rest = set(range(1, ndim)) - dims
        if ndim < 3 or 0 in dims or len(rest) != 1 or keepdim:
            raise self.unsupported(node, f"a mean over dims {sorted(dims)} of a tensor {_shape(src)}",
                                   "average over every position axis (keepdim=False), which is global pooling")
        self.need(node, src, rest.pop(), "a mean over positions")
        return self.add(L.GlobalAvgPool(), [x], flat=True)

    def getitem(self, node: fx.Node) -> int:
        src = node.args[0]
        if src in self.attention_nodes:  # (output, weights) of nn.MultiheadAttention
            if node.args[1] != 0:
                raise self.unsupported(node, "the attention weights of nn.MultiheadAttention",
                                       "use its output only (element 0)")
            self.chan[node] = len(_shape(node)) - 1
            return self.value[src]
        x = self.arg(node)
        ndim = len(_shape(src))
        idx = node.args[1] if isinstance(node.args[1], tuple) else (node.args[1],)
        if any(i is Ellipsis or i is None or isinstance(i, fx.Node) for i in idx) or len(idx) > ndim:
            raise self.unsupported(node, f"indexing with {idx}", "index with ints and slices, one per leading dim")
        idx = idx + (slice(None),) * (ndim - len(idx))
        if ndim <= 2 or src in self.rel:
            self.need(node, src, 1 if ndim <= 2 else -1, "indexing")
        c = self.chan[src]
        if isinstance(idx[c], int):
            raise self.unsupported(node, f"indexing one channel ({idx})", "keep every channel")
        order = _order(c, ndim)
        kept = [d for d in range(ndim) if not isinstance(idx[d], int)]
        self.chan[node] = kept.index(c)
        return self.add(L.Index(tuple(idx[d] for d in order)), [x], flat=len(kept) <= 2)

    def functional_pool(self, node: fx.Node) -> int:
        x, src, fn = self.arg(node), node.args[0], node.target
        self.need(node, src, 1, _name(fn))
        args = dict(zip(_POOLS[fn], node.args[1:]), **node.kwargs)
        if "output_size" in _POOLS[fn]:
            return self.adaptive(node, _name(fn), args["output_size"], x)
        for key, default in (("count_include_pad", True), ("divisor_override", None)):
            if args.get(key, default) != default:
                raise self.unsupported(node, f"{_name(fn)} with {key}={args[key]}", f"leave {key} at {default}")
        return self.avg_pool(node, _name(fn), args["kernel_size"], args.get("stride") or args["kernel_size"],
                             args.get("padding", 0), args.get("ceil_mode", False), x)

    def avg_pool(self, node: fx.Node, what: str, kernel_size, stride, padding, ceil_mode, x: int) -> int:
        if any(_tuple(padding)) or ceil_mode:
            raise self.unsupported(node, f"{what} with padding or ceil_mode",
                                   "pool without padding (padding=0, ceil_mode=False)")
        d = len(_shape(node.args[0])) - 2
        k, st = _tuple(kernel_size), _tuple(stride)
        return self.add(L.AvgPool(k * (d // len(k)), st * (d // len(st)), padding="valid"), [x])

    def layer_norm(self, node: fx.Node, name: str, m: nn.LayerNorm, x: int) -> int:
        """Over the last dims of the value (``normalized_shape``), which must hold its channels;
        its trainable scale and shift are per channel and per normalized position."""
        src = node.args[0]
        shape = _shape(src)
        ndim, k = len(shape), len(m.normalized_shape)
        what = f"nn.LayerNorm {name!r} over {tuple(m.normalized_shape)} of a tensor of shape {shape}"
        if k >= ndim or tuple(m.normalized_shape) != shape[ndim - k:]:
            raise self.unsupported(node, what, "normalize over the last dims, not the batch")
        dims = set(range(ndim - k, ndim))
        if src in self.rel or ndim <= 2:
            self.need(node, src, 1 if 1 in dims else -1, f"nn.LayerNorm {name!r}")
        c = self.chan[src]
        if c not in dims:
            raise self.unsupported(node, what + " without its channels",
                                   "normalize over the channels (in the limit only they have a variance to take)")
        positions = [d for d in range(1, ndim) if d != c]
        axes = tuple(2 + positions.index(d) for d in sorted(dims) if d != c)
        out = self.add(L.LayerNorm(axis=(1,) + axes if axes else 1, eps=float(m.eps)), [x])
        if m.elementwise_affine:
            out = self.add(ElementwiseAffine(bias=m.bias is not None, axes=tuple(a - 1 for a in axes)), [out])
        self.chan.setdefault(node, c)
        return out

    # -- attention --
    def attention_layer(self, node: fx.Node, name: str, m: nn.MultiheadAttention) -> L.Layer:
        what = f"nn.MultiheadAttention {name!r}"
        if self.attention_mode == "exact":
            raise self.unsupported(
                node, what,
                "PyTorch's attention scales its logits by 1/sqrt(head_dim) with independent query and key "
                "weights, so at infinite width the logits stay random (Gaussian) and the softmax over them has "
                "no closed-form kernel (Hron et al. 2020). Pass attention='linear' for the kernel of the same "
                "model with widenet's closed-form attention (wn.SelfAttention(scaling='linear'): queries tied "
                "to keys, logits scaled by 1/head_dim; the twin net.module() is that network), or strict=False "
                "for Monte Carlo kernels of the model itself")
        if not m.batch_first:
            raise self.unsupported(node, what + " with batch_first=False", "build it with batch_first=True")
        if not m._qkv_same_embed_dim or m.bias_k is not None or m.add_zero_attn:
            raise self.unsupported(node, what + " with kdim/vdim, add_bias_kv or add_zero_attn",
                                   "use PyTorch's defaults for them")
        if m.training and m.dropout > 0:
            raise self.unsupported(node, what + f" in train mode with dropout={m.dropout} on its weights",
                                   "call model.eval() (attention-weight dropout has no kernel here)")
        e, h = m.embed_dim, m.num_heads
        if self.init == "ntk":
            stds = dict(W_query_std=1.0, W_key_std=1.0, W_value_std=1.0, W_out_std=1.0, b_std=0.0)
        else:
            # in_proj: xavier_uniform over (3E, E): Var = 2 / (E + 3E) = 1 / (2E); out_proj:
            # nn.Linear's default, Var = 1 / (3E); both projections' biases start at 0
            q = math.sqrt(0.5)
            stds = dict(W_query_std=q, W_key_std=q, W_value_std=q, W_out_std=1 / math.sqrt(3), b_std=0.0)
        given = self.scales.get(name)
        if isinstance(given, dict):
            unknown = sorted(set(given) - set(stds))
            if unknown:
                raise ParameterError(f"{self.owner}: scales[{name!r}] names {unknown}; an attention's scales are "
                                     f"{', '.join(stds)}")
            stds.update(given)
        elif given is not None:
            w, b = given
            stds = dict(W_query_std=w, W_key_std=w, W_value_std=w, W_out_std=w, b_std=b)
        if m.out_proj.bias is None:
            stds["b_std"] = None
        layer = L.SelfAttention(e, heads=h, key_features=e // h, value_features=e // h, scaling="linear",
                                mechanism="softmax", **stds)
        if self.parameterization == "standard":
            return StandardAttention(layer, value_bias=m.in_proj_bias is not None)
        return layer

    def attention(self, node: fx.Node, name: str, m: nn.MultiheadAttention, x: int) -> int:
        q, k, v = (list(node.args) + [node.kwargs.get(n) for n in ("query", "key", "value")])[:3]
        if not (q is k is v):
            raise self.unsupported(node, f"nn.MultiheadAttention {name!r} on different query, key and value "
                                         f"(cross-attention)", "attend a sequence to itself (query = key = value)")
        for key in ("key_padding_mask", "attn_mask"):
            if node.kwargs.get(key) is not None:
                raise self.unsupported(node, f"nn.MultiheadAttention {name!r} with {key}",
                                       "give padding masks to kernel(mask1=, mask2=) instead")
        if node.kwargs.get("is_causal"):
            raise self.unsupported(node, f"nn.MultiheadAttention {name!r} with is_causal=True",
                                   "causal attention has no kernel here")
        self.need(node, q, -1, f"nn.MultiheadAttention {name!r}")
        out = self.add(self.attention_layer(node, name, m), [x])
        self.attention_nodes.add(node)
        return out

    def encoder_layer(self, node: fx.Node, name: str, m: nn.TransformerEncoderLayer, x: int) -> int:
        """PyTorch's encoder layer: x + SA(x) and x + FF(x), normalized after (post-norm) or
        before each branch (``norm_first``)."""
        self.need(node, node.args[0], -1, f"nn.TransformerEncoderLayer {name!r}")
        if node.kwargs.get("src_mask") is not None or node.kwargs.get("src_key_padding_mask") is not None \
                or len(node.args) > 1 or node.kwargs.get("is_causal"):
            raise self.unsupported(node, f"nn.TransformerEncoderLayer {name!r} with a mask",
                                   "give padding masks to kernel(mask1=, mask2=) instead")
        if m.training and any(d.p > 0 for d in (m.dropout, m.dropout1, m.dropout2)):
            raise self.unsupported(node, f"nn.TransformerEncoderLayer {name!r} in train mode with dropout",
                                   "call model.eval() (or build it with dropout=0)")
        act = m.activation
        if isinstance(act, nn.Module):
            act = _activation(act)
        else:
            act = _gelu("none") if act is F.gelu else _FUNCTIONS.get(act)
        if act is None:
            raise self.unsupported(node, f"nn.TransformerEncoderLayer {name!r} with activation {m.activation}",
                                   "use an activation widenet has a rule for")

        def norm(i: int, v: int) -> int:
            return self.layer_norm(node, f"{name}.norm{i}", getattr(m, f"norm{i}"), v)

        def attend(v: int) -> int:
            return self.add(self.attention_layer(node, f"{name}.self_attn", m.self_attn), [v])

        def feed_forward(v: int) -> int:
            lin1, lin2 = m.linear1, m.linear2
            w1, b1 = self.std(f"{name}.linear1", lin1, lin1.in_features)
            w2, b2 = self.std(f"{name}.linear2", lin2, lin2.in_features)
            v = self.add(L.Dense(lin1.out_features, w1, b1, self.parameterization), [v])
            v = self.add(act, [v])
            return self.add(L.Dense(lin2.out_features, w2, b2, self.parameterization), [v])

        if m.norm_first:
            x = self.add(L.FanInSum(), [x, attend(norm(1, x))])
            return self.add(L.FanInSum(), [x, feed_forward(norm(2, x))])
        x = norm(1, self.add(L.FanInSum(), [x, attend(x)]))
        return norm(2, self.add(L.FanInSum(), [x, feed_forward(x)]))


def _order(c: int, ndim: int) -> tuple:
    """The permutation taking a tensor with channels at dim ``c`` to widenet's ``(N, C, *S)``."""
    return (0, c) + tuple(d for d in range(1, ndim) if d != c)


def _tuple(v) -> tuple:
    return tuple(v) if isinstance(v, (tuple, list)) else (v,)


def _name(target) -> str:
    return getattr(target, "__name__", str(target))


def _gelu(approximate: str) -> L.Layer:
    if approximate == "none":
        return L.Gelu()
    return L.Elementwise(lambda x: F.gelu(x, approximate="tanh"), name="gelu_tanh")


def _activation(m: nn.Module) -> Optional[L.Layer]:
    if isinstance(m, nn.ReLU):
        return L.Relu()
    if isinstance(m, nn.LeakyReLU):
        return L.LeakyRelu(float(m.negative_slope))
    if isinstance(m, nn.GELU):
        return _gelu(m.approximate)
    if isinstance(m, nn.Tanh):
        return L.Tanh()
    if isinstance(m, nn.Sigmoid):
        return _SIGMOID
    if isinstance(m, nn.SiLU):
        return _SILU
    if isinstance(m, nn.Softplus):
        if m.threshold < 10:
            return L.Elementwise(m, name="softplus")
        return L.Softplus(float(m.beta))
    if isinstance(m, (nn.ELU, nn.Hardtanh, nn.Mish, nn.CELU, nn.SELU, nn.Softsign, nn.Hardswish)):
        return L.Elementwise(m, name=type(m).__name__.lower())
    return None
