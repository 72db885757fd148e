"""Runs inside the Neural Tangents environment (see shared tools/nt-env.sh).

Usage: python _nt_runner.py job.json
The job names an architecture spec, input files and what to compute; results go to an .npz.
This file imports only numpy, jax and neural_tangents: widenet is not installed there.
"""

import json
import sys
import time

import numpy as np


_PADDING = {"same": "SAME", "valid": "VALID", "circular": "CIRCULAR"}


def _size(value, ndim):
    return tuple(value) if isinstance(value, (list, tuple)) else (value,) * ndim


def build(spec, stax, ndim=0):
    """NT layers for a widenet spec; ``ndim`` spatial dimensions, inputs channels-last."""
    kind = spec["type"]
    p = spec.get("params", {})
    children = [build(c, stax, ndim) for c in spec.get("children", [])]
    if kind == "Serial":
        return stax.serial(*children)
    if kind == "Parallel":
        return stax.parallel(*children)
    if kind == "FanOut":
        return stax.FanOut(p["num"])
    if kind == "FanInSum":
        return stax.FanInSum()
    if kind == "FanInProd":
        return stax.FanInProd()
    if kind == "FanInConcat":
        return stax.FanInConcat(axis=-1)
    if kind == "Repeat":
        return stax.serial(*([children[0]] * p["n"]))
    if kind == "Dense":
        return stax.Dense(p["out_features"], W_std=p["W_std"], b_std=p["b_std"],
                          parameterization=p["parameterization"])
    if kind == "Identity":
        return stax.Identity()
    if kind in ("Relu", "Abs", "Gelu", "Sign"):
        return getattr(stax, kind)()
    if kind == "ABRelu":
        return stax.ABRelu(p["a"], p["b"])
    if kind == "LeakyRelu":
        return stax.LeakyRelu(p["alpha"])
    if kind in ("Erf", "Sin", "Cos"):
        return getattr(stax, kind)(a=p["a"], b=p["b"], c=p["c"])
    if kind == "SigmoidLike":
        return stax.Sigmoid_like()
    if kind == "Rbf":
        return stax.Rbf(p["gamma"])
    if kind in ("Exp", "Gaussian"):
        return getattr(stax, kind)(a=p["a"], b=p["b"])
    if kind in ("Monomial", "RectifiedMonomial", "Hermite"):
        return getattr(stax, kind)(p["degree"])
    if kind == "Polynomial":
        return stax.Polynomial(p["coef"])
    if kind == "Conv":
        if _size(p["dilation"], ndim) != (1,) * ndim:
            raise ValueError("Neural Tangents' Conv has no dilation")
        return stax.Conv(p["out_channels"], _size(p["kernel_size"], ndim), _size(p["stride"], ndim),
                         _PADDING[p["padding"]], W_std=p["W_std"], b_std=p["b_std"],
                         parameterization=p["parameterization"])
    if kind in ("AvgPool", "SumPool"):
        window = _size(p["window"], ndim)
        stride = window if p["stride"] is None else _size(p["stride"], ndim)
        return getattr(stax, kind)(window, stride, _PADDING[p["padding"]])
    if kind in ("GlobalAvgPool", "GlobalSumPool", "Flatten"):
        return getattr(stax, kind)()
    if kind == "LayerNorm":
        axes = p["axis"] if isinstance(p["axis"], list) else [p["axis"]]
        nt_axes = tuple(-1 if a == 1 else a - 1 for a in axes)  # channels-last
        return stax.LayerNorm(axis=nt_axes, eps=p["eps"])
    if kind == "SelfAttention":
        if p["pos_emb_decay"] is not None:
            raise ValueError("positional-embedding decays are not passed to Neural Tangents")
        return stax.GlobalSelfAttention(
            p["out_features"], p["key_features"], p["value_features"], p["heads"],
            linear_scaling=p["scaling"] == "linear", W_key_std=p["W_key_std"],
            W_value_std=p["W_value_std"], W_query_std=p["W_query_std"], W_out_std=p["W_out_std"],
            b_std=p["b_std"], attention_mechanism=p["mechanism"].upper(),
            pos_emb_type=(p["pos_emb"] or "none").upper(), pos_emb_p_norm=p["pos_emb_p"],
            n_chan_pos_emb=p["pos_emb_features"], W_pos_emb_std=p["pos_emb_std"],
            val_pos_emb=p["values_pos_emb"])
    if kind == "Dropout":
        return stax.Dropout(1.0 - p["rate"], mode="train" if p["mode"] == "train" else "test")
    raise ValueError(f"no Neural Tangents counterpart for {kind}")


def _losses(jax, jnp):
    """The losses that ``nt_predict`` names (their widenet twins are written in torch)."""
    return {
        "mse": lambda fx, y: 0.5 * jnp.sum((fx - y) ** 2) / y.size,
        "cross_entropy": lambda fx, y: -jnp.mean(jax.nn.log_softmax(fx, axis=-1) * y),
    }


def _indexed_kernel_fn(matrices, Kernel):
    """``kernel_fn(x1, x2, get)`` over points named by integer index: ``matrices[x1][:, x2]``."""

    def kernel_fn(x1, x2=None, get=None, **unused_kwargs):
        i = np.asarray(x1).reshape(-1)
        j = i if x2 is None else np.asarray(x2).reshape(-1)
        pick = lambda m: None if m is None else m[i][:, j]  # noqa: E731
        out = Kernel(pick(matrices.nngp), pick(matrices.ntk))
        return getattr(out, get) if isinstance(get, str) else out

    return kernel_fn


def predict(job):
    """Runs the ``neural_tangents.predict`` calls of a job written by ``nt.nt_predict``."""
    import collections

    import jax

    jax.config.update("jax_enable_x64", job["dtype"] == "float64")
    import jax.numpy as jnp
    from neural_tangents import predict as nt_predict
    from neural_tangents import stax

    Kernel = collections.namedtuple("Kernel", "nngp ntk")
    with np.load(job["arrays"]) as data:
        arrays = {name: data[name] for name in data.files}

    def decode(value):
        if isinstance(value, dict):
            if "__array__" in value:
                return jnp.asarray(arrays[value["__array__"]])
            if "__kernel__" in value:
                return Kernel(**{k: decode(v) for k, v in value["__kernel__"].items()})
            if "__spec__" in value:
                return value  # only kernel_fn takes one; built below
            return {k: decode(v) for k, v in value.items()}
        if isinstance(value, list):
            return [decode(v) for v in value]
        return value

    out_arrays = {}

    def encode(value):
        if isinstance(value, tuple):  # Gaussian and (train, test) pairs
            return [encode(v) for v in value]
        value = np.asarray(jax.device_get(value))
        if value.ndim == 0:
            return float(value)
        key = f"r{len(out_arrays)}"
        out_arrays[key] = value
        return {"__array__": key}

    results = []
    for call in job["calls"]:
        args = decode(call.get("args", {}))
        if call["fn"] == "gradient_descent":
            args["loss"] = _losses(jax, jnp)[args["loss"]]
        if call["fn"] == "gradient_descent_mse_ensemble":
            fn = args["kernel_fn"]
            if isinstance(fn, dict):
                fn = build(fn["__spec__"], stax)[2]
            else:
                fn = _indexed_kernel_fn(fn, Kernel)
            args["kernel_fn"] = fn
        value = getattr(nt_predict, call["fn"])(**args)
        if "predict" in call:
            results.append([encode(value(**decode(kwargs))) for kwargs in call["predict"]])
        else:
            results.append(encode(value))
    with open(job["out_json"], "w") as f:
        json.dump(results, f)
    np.savez(job["out"], **out_arrays)


def main(path):
    with open(path) as f:
        job = json.load(f)
    if job.get("mode") == "predict":
        return predict(job)
    import jax

    jax.config.update("jax_enable_x64", job["dtype"] == "float64")
    import jax.numpy as jnp
    from neural_tangents import stax

    x1 = np.load(job["x1"])
    ndim = x1.ndim - 2
    _, _, kernel_fn = build(job["spec"], stax, ndim)
    # widenet is channels-first (N, C, *S); Neural Tangents is channels-last (N, *S, C).
    last = lambda x: np.moveaxis(x, 1, -1) if x.ndim > 2 else x  # noqa: E731
    x1 = jnp.asarray(last(x1))
    x2 = None if job.get("x2") is None else jnp.asarray(last(np.load(job["x2"])))
    get = tuple(job["get"])
    batch = job.get("batch_size", 0)
    if batch:
        import neural_tangents as nt

        fn = nt.batch(kernel_fn, batch_size=batch)
    else:
        fn = jax.jit(kernel_fn, static_argnames="get")
    if job.get("mask_constant") is not None:
        # Padded positions hold mask_constant in every channel (Neural Tangents' masking).
        constant = job["mask_constant"]
        plain = fn
        fn = lambda a, b, g: plain(a, b, g, mask_constant=constant)  # noqa: E731
    times = []
    out = None
    for _ in range(job.get("repeats", 1) + (1 if job.get("warmup", False) else 0)):
        start = time.perf_counter()
        out = fn(x1, x2, get)
        out = jax.block_until_ready(out)
        times.append(time.perf_counter() - start)
    if job.get("warmup", False):
        times = times[1:]
    result = {name: np.asarray(value) for name, value in zip(get, out)}
    # widenet is not importable here; its stdlib-only memory helper is loaded by path.
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("_widenet_memory", Path(__file__).with_name("memory.py"))
    memory = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(memory)
    peak = memory.peak_rss()
    np.savez(job["out"], times=np.asarray(times), peak=np.asarray(peak), **result)


if __name__ == "__main__":
    main(sys.argv[1])
