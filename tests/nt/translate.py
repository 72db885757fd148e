"""widenet architectures as Neural Tangents ``stax`` calls.

A translation turns one widenet layer into a *call*, a JSON-able description
``{"fn": "Conv", "args": [...], "kwargs": {...}}`` of the ``stax`` function that builds the
same layer (arguments may be calls themselves, for combinators). The runner, in the Neural
Tangents environment, evaluates calls without knowing any layer (:mod:`runner`).

Translations are registered per class with :func:`translates` and found along the class's
method resolution order, so a subclass without its own translation uses its parent's. A new
layer registers its translation in its own test file::

    @translates(wn.MyLayer)
    def _my_layer(layer, ndim):
        return call("MyLayer", layer.size, W_std=layer.W_std)
"""

from __future__ import annotations

from typing import Any, Callable, Dict

import torch

import widenet as wn

__all__ = ["translates", "translate", "call", "NoCounterpart"]

_PADDING = {"same": "SAME", "valid": "VALID", "circular": "CIRCULAR"}
_TRANSLATIONS: Dict[type, Callable[[Any, int], dict]] = {}


class NoCounterpart(ValueError):
    """The layer (or this configuration of it) has no Neural Tangents counterpart."""


def translates(cls: type):
    """Registers the decorated ``fn(layer, ndim) -> call`` as the translation of ``cls``
    (``ndim``: spatial dimensions of the network's inputs)."""
    def register(fn):
        _TRANSLATIONS[cls] = fn
        return fn

    return register


def call(fn: str, *args, **kwargs) -> dict:
    """The call ``stax.<fn>(*args, **kwargs)``; 0-d tensors become floats, tuples lists."""
    return {"fn": fn, "args": [_plain(a) for a in args], "kwargs": {k: _plain(v) for k, v in kwargs.items()}}


def translate(layer: wn.Layer, ndim: int = 0) -> dict:
    """The call that builds ``layer`` in Neural Tangents; :class:`NoCounterpart` if none."""
    for cls in type(layer).__mro__:
        if cls in _TRANSLATIONS:
            return _TRANSLATIONS[cls](layer, ndim)
    raise NoCounterpart(f"no Neural Tangents counterpart for {type(layer).__name__}")


def _plain(value):
    if isinstance(value, dict) and "fn" in value:
        return value
    if isinstance(value, torch.Tensor) and value.ndim == 0:
        return float(value)
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if callable(value):
        raise NoCounterpart(f"functions do not cross to Neural Tangents (got {value!r})")
    return value


def _size(value, ndim: int) -> tuple:
    return tuple(value) if isinstance(value, (list, tuple)) else (value,) * ndim


# ---- combinators ------------------------------------------------------------------------------
@translates(wn.Serial)
def _serial(layer, ndim):
    return call("serial", *(translate(c, ndim) for c in layer.layers))


@translates(wn.Parallel)
def _parallel(layer, ndim):
    return call("parallel", *(translate(c, ndim) for c in layer.layers))


@translates(wn.Repeat)
def _repeat(layer, ndim):
    return call("serial", *([translate(layer.layer, ndim)] * layer.n))


@translates(wn.FanOut)
def _fan_out(layer, ndim):
    return call("FanOut", layer.num)


@translates(wn.FanInSum)
def _fan_in_sum(layer, ndim):
    return call("FanInSum")


@translates(wn.FanInProd)
def _fan_in_prod(layer, ndim):
    return call("FanInProd")


@translates(wn.FanInConcat)
def _fan_in_concat(layer, ndim):
    return call("FanInConcat", axis=-1)


@translates(wn.Identity)
def _identity(layer, ndim):
    return call("Identity")


# ---- affine layers ------------------------------------------------------------------------------
@translates(wn.Dense)
def _dense(layer, ndim):
    return call("Dense", layer.out_features, W_std=layer.W_std, b_std=layer.b_std,
                parameterization=layer.parameterization)


@translates(wn.Conv)
def _conv(layer, ndim):
    if _size(layer.dilation, ndim) != (1,) * ndim:
        raise NoCounterpart("Neural Tangents' Conv has no dilation")
    return call("Conv", layer.out_channels, _size(layer.kernel_size, ndim), _size(layer.stride, ndim),
                _PADDING[layer.padding], W_std=layer.W_std, b_std=layer.b_std,
                parameterization=layer.parameterization)


@translates(wn.ConvTranspose)
def _conv_transpose(layer, ndim):
    return call("ConvTranspose", layer.out_channels, _size(layer.kernel_size, ndim), _size(layer.stride, ndim),
                _PADDING[layer.padding], W_std=layer.W_std, b_std=layer.b_std,
                parameterization=layer.parameterization)


@translates(wn.ConvLocal)
def _conv_local(layer, ndim):
    return call("ConvLocal", layer.out_channels, _size(layer.kernel_size, ndim), _size(layer.stride, ndim),
                _PADDING[layer.padding], W_std=layer.W_std, b_std=layer.b_std,
                parameterization=layer.parameterization)


@translates(wn.ImageResize)
def _image_resize(layer, ndim):
    if layer.method not in ("linear", "nearest"):
        raise NoCounterpart(f"Neural Tangents' ImageResize kernel has no {layer.method!r} method")
    size = layer.size if isinstance(layer.size, tuple) else (layer.size,) * ndim
    return call("ImageResize", (-1,) + size + (-1,), method=layer.method, antialias=layer.antialias)


@translates(wn.Aggregate)
def _aggregate(layer, ndim):
    # "DENSE"; nt_kernel makes it "SPARSE" when the patterns are integer arcs.
    return call("Aggregate", implementation="DENSE")


@translates(wn.Index)
def _index(layer, ndim):
    items = layer._plan(2 + ndim)
    if items[1] != slice(None):
        raise NoCounterpart("Neural Tangents' Index kernel cannot slice the channel axis")
    as_json = [item if isinstance(item, int) else {"slice": [item.start, item.stop, item.step]} for item in items]
    return call("Index", (as_json[0],) + tuple(as_json[2:]) + (as_json[1],))


# ---- nonlinearities -----------------------------------------------------------------------------
@translates(wn.Relu)
def _relu(layer, ndim):
    return call("Relu")


@translates(wn.Abs)
def _abs(layer, ndim):
    return call("Abs")


@translates(wn.ABRelu)
def _abrelu(layer, ndim):
    return call("ABRelu", layer.a, layer.b)


@translates(wn.LeakyRelu)
def _leaky_relu(layer, ndim):
    return call("LeakyRelu", layer.alpha)


@translates(wn.Gelu)
def _gelu(layer, ndim):
    return call("Gelu")


@translates(wn.Sign)
def _sign(layer, ndim):
    return call("Sign")


@translates(wn.Erf)
def _erf(layer, ndim):
    return call("Erf", a=layer.a, b=layer.b, c=layer.c)


@translates(wn.SigmoidLike)
def _sigmoid_like(layer, ndim):
    return call("Sigmoid_like")


@translates(wn.Sin)
def _sin(layer, ndim):
    return call("Sin", a=layer.a, b=layer.b, c=layer.c)


@translates(wn.Cos)
def _cos(layer, ndim):  # Neural Tangents' Cos shares the Sin parameters
    return call("Cos", a=layer.a, b=layer.b, c=layer.c)


@translates(wn.Rbf)
def _rbf(layer, ndim):
    return call("Rbf", layer.gamma)


@translates(wn.Exp)
def _exp(layer, ndim):
    return call("Exp", a=layer.a, b=layer.b)


@translates(wn.Gaussian)
def _gaussian(layer, ndim):
    return call("Gaussian", a=layer.a, b=layer.b)


@translates(wn.Monomial)
def _monomial(layer, ndim):
    return call("Monomial", layer.degree)


@translates(wn.RectifiedMonomial)
def _rectified_monomial(layer, ndim):
    return call("RectifiedMonomial", layer.degree)


@translates(wn.Hermite)
def _hermite(layer, ndim):
    return call("Hermite", layer.degree)


@translates(wn.Polynomial)
def _polynomial(layer, ndim):
    return call("Polynomial", layer.coef)


# ---- positions ----------------------------------------------------------------------------------
def _pool(name):
    def translation(layer, ndim):
        window = _size(layer.window, ndim)
        stride = window if layer.stride is None else _size(layer.stride, ndim)
        return call(name, window, stride, _PADDING[layer.padding])

    return translation


translates(wn.AvgPool)(_pool("AvgPool"))
translates(wn.SumPool)(_pool("SumPool"))


@translates(wn.GlobalAvgPool)
def _global_avg_pool(layer, ndim):
    return call("GlobalAvgPool")


@translates(wn.GlobalSumPool)
def _global_sum_pool(layer, ndim):
    return call("GlobalSumPool")


@translates(wn.Flatten)
def _flatten(layer, ndim):
    return call("Flatten")


@translates(wn.LayerNorm)
def _layer_norm(layer, ndim):
    axes = layer.axis if isinstance(layer.axis, tuple) else (layer.axis,)
    return call("LayerNorm", axis=tuple(-1 if a == 1 else a - 1 for a in axes), eps=layer.eps)  # channels-last


@translates(wn.Dropout)
def _dropout(layer, ndim):
    return call("Dropout", 1.0 - float(layer.rate), mode="train" if layer.mode == "train" else "test")


@translates(wn.SelfAttention)
def _self_attention(layer, ndim):
    if layer.pos_emb_decay is not None:
        raise NoCounterpart("positional-embedding decays are not passed to Neural Tangents")
    return call(
        "GlobalSelfAttention", layer.out_features, layer.key_features, layer.value_features, layer.heads,
        linear_scaling=layer.scaling == "linear", W_key_std=layer.W_key_std,
        W_value_std=layer.W_value_std, W_query_std=layer.W_query_std, W_out_std=layer.W_out_std,
        b_std=layer.b_std, attention_mechanism=layer.mechanism.upper(),
        pos_emb_type=(layer.pos_emb or "none").upper(), pos_emb_p_norm=layer.pos_emb_p,
        n_chan_pos_emb=layer.pos_emb_features, W_pos_emb_std=layer.pos_emb_std,
        val_pos_emb=layer.values_pos_emb)
