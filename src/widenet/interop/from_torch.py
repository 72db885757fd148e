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
from ._graph import ElementwiseAffine, Graph, Scale

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
               scales: Optional[dict] = None, strict: bool = True, n_samples: int = 64) -> L.Layer:
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

    Returns:
        a widenet network (``Serial``, or ``Graph`` with branches): ``kernel``, ``nngp``,
        ``ntk``, ``module()`` and everything else work on it.

    Supported: ``nn.Linear`` (on ``(N, features)``), ``nn.Conv1d/2d/3d`` (groups 1; zero
    padding "same" for odd kernels, 0, or circular), ``nn.ConvTranspose1d/2d/3d`` (without
    padding, output padding or dilation), ``nn.AvgPool*`` without padding,
    ``nn.AdaptiveAvgPool*`` to 1 or to sizes that divide the input, ``nn.Flatten`` and
    ``flatten``/``view``/``reshape`` to ``(N, -1)``, ``nn.Identity``, ``nn.Dropout`` (identity
    in eval mode, ``wn.Dropout`` in train mode), activations (``nn.ReLU``, ``nn.LeakyReLU``,
    ``nn.GELU``, ``nn.Tanh``, ``nn.Sigmoid``, ``nn.SiLU``, ``nn.ELU``, ``nn.Softplus``,
    ``nn.Hardtanh``, ``nn.Mish`` and their functional forms), additions of branches
    (residuals), ``torch.cat`` along channels, multiplication by a constant, and
    ``nn.Sequential`` / ``nn.ModuleList`` loops, ``nn.LayerNorm`` over the features of
    ``(N, features)`` (its trainable scale and shift add their NTK terms). Anything else raises
    ``UnsupportedModuleError`` naming the node, its source line and what to do instead.

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
    if isinstance(getattr(model, "widenet_layer", None), L.Layer):
        return model.widenet_layer  # a widenet twin: its own architecture
    params = list(model.parameters())
    if not params:
        raise ParameterError(f"{owner}: model has no parameters, so no kernel to take the limit of "
                             f"({type(model).__name__})")
    named = dict(model.named_modules())
    scales = dict(scales or {})
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
        return _Converter(owner, graph, named, parameterization, scales, init).run()
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
    for module in named.values():
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
                 init: str = "module"):
        self.owner, self.graph, self.named, self.init = owner, graph, named, init
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

    def add(self, layer: L.Layer, args: list, flat: Optional[bool] = None) -> int:
        self.layers.append(layer)
        self.inputs.append(tuple(args))
        index = len(self.layers)
        self.flat[index] = self.flat[args[0]] if flat is None else flat
        self.ancestors[index] = frozenset({index}).union(*(self.ancestors[a] for a in args))
        if isinstance(layer, (L.Dense, L.Conv)):
            self.fresh[index] = index
        elif isinstance(layer, (L.AvgPool, L.GlobalAvgPool, L.Flatten, Scale)):
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
            elif node.op == "output":
                result = self.value[node.args[0]]
            elif node.op in ("call_module", "call_function", "call_method"):
                self.value[node] = self.node(node)
            elif node.op == "get_attr":
                raise self.unsupported(node, "reads a parameter or buffer directly in forward",
                                       "use it through a module (nn.Linear, nn.Conv*d)")
        if result == 0:
            return L.Serial(L.Identity())
        return self.build(result)

    def build(self, result: int) -> L.Layer:
        chain = all(len(a) == 1 and a[0] == i for i, a in enumerate(self.inputs)) and result == len(self.layers)
        if chain:
            return L.Serial(*self.layers)
        if result != len(self.layers):  # values computed after the output are dropped
            self.layers, self.inputs = self.layers[:result], self.inputs[:result]
        self.merge_runs()
        return Graph(tuple(self.layers), tuple(self.inputs))

    def merge_runs(self) -> None:
        """Nonlinearities in a row (the first one's value used by the second only) become one
        ``Chain``, the second an ``Identity`` of it: their kernel is that of the composed
        function (``Serial`` does the same for its runs)."""
        uses = [0] * (len(self.layers) + 1)
        for args in self.inputs:
            for a in args:
                uses[a] += 1
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
            return self.add(m.widenet_layer, [x])
        if isinstance(m, nn.Linear):
            shape = _shape(node.args[0])
            if shape is None or len(shape) != 2:
                raise self.unsupported(node, f"nn.Linear {name!r} on a tensor of shape {shape}",
                                       "widenet's Dense acts on axis 1 of (N, features); flatten first")
            w, b = self.std(name, m, m.in_features)
            return self.add(L.Dense(m.out_features, w, b, self.parameterization), [x], flat=True)
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            return self.add(self.conv(node, name, m), [x])
        if isinstance(m, (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
            return self.add(self.conv_transpose(node, name, m), [x])
        if isinstance(m, (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d)):
            if any(_tuple(m.padding)) or m.ceil_mode:
                raise self.unsupported(node, f"{type(m).__name__} {name!r} with padding or ceil_mode",
                                       "pool without padding (padding=0, ceil_mode=False)")
            return self.add(L.AvgPool(_tuple(m.kernel_size), _tuple(m.stride), padding="valid"), [x])
        if isinstance(m, (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d)):
            return self.adaptive(node, name, m, x)
        if isinstance(m, nn.Flatten):
            return self.flatten(node)
        if isinstance(m, nn.LayerNorm):
            shape = _shape(node.args[0])
            if len(shape) != 2 or tuple(m.normalized_shape) != shape[1:]:
                raise self.unsupported(node, f"nn.LayerNorm {name!r} over {tuple(m.normalized_shape)} of a tensor "
                                             f"of shape {shape}", "normalize (N, features) over the features")
            out = self.add(L.LayerNorm(axis=1, eps=float(m.eps)), [x])
            if m.elementwise_affine:
                out = self.add(ElementwiseAffine(bias=m.bias is not None), [out])
            return out
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

    def conv_transpose(self, node: fx.Node, name: str, m: nn.Module) -> L.Layer:
        if (m.groups != 1 or any(_tuple(m.padding)) or any(_tuple(m.output_padding)) or any(d != 1 for d in _tuple(m.dilation))
                or m.padding_mode != "zeros"):
            raise self.unsupported(node, f"{type(m).__name__} {name!r} with padding, output_padding, dilation, "
                                         f"groups or a padding mode", "use the full transposed convolution (their defaults)")
        k = _tuple(m.kernel_size)
        # PyTorch's default draws the (in, out, *k) weight with fan_in = out * prod(k) (its
        # second axis): Var(W) = 1 / (3 out prod(k)); widenet's scale counts in * prod(k).
        w, b = self.std(name, m, m.out_channels * math.prod(k))
        if name not in self.scales and self.init == "module":
            w = math.sqrt(m.in_channels / (3 * m.out_channels))
        return L.ConvTranspose(m.out_channels, k, stride=_tuple(m.stride), padding="valid", W_std=w, b_std=b,
                               parameterization=self.parameterization)

    def adaptive(self, node: fx.Node, name: str, m: nn.Module, x: int) -> int:
        shape = _shape(node.args[0])[2:]
        out = _tuple(m.output_size)
        out = tuple(s if o is None else o for o, s in zip(out * (len(shape) // len(out)), shape))
        if all(o == 1 for o in out):
            return self.add(L.GlobalAvgPool(), [x], flat=True)
        if any(s % o for s, o in zip(shape, out)):
            raise self.unsupported(node, f"{type(m).__name__} {name!r} from {shape} to {out}",
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
        if not isinstance(parts, (list, tuple)) or dim not in (1, -len(_shape(node)) + 1):
            raise self.unsupported(node, f"torch.cat along dim {dim}", "concatenate along channels (dim=1)")
        return self.add(L.FanInConcat(), [self.value[p] for p in parts])


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
