"""Runs inside the Neural Tangents environment (see shared tools/nt-env.sh).

Usage: python runner.py job.json
The job holds an architecture as a call tree (``translate.py``), input files and what to
compute; results go to an .npz. This file imports only numpy, jax and neural_tangents:
widenet is not installed there.
"""

import json
import sys
import time

import numpy as np


def build(node, stax):
    """Evaluates a call written by ``translate.py``: ``stax.<fn>(*args, **kwargs)``, its
    arguments built first (calls in turn; JSON lists become tuples)."""
    if isinstance(node, dict) and "fn" in node:
        args = [build(a, stax) for a in node["args"]]
        kwargs = {k: build(v, stax) for k, v in node["kwargs"].items()}
        return getattr(stax, node["fn"])(*args, **kwargs)
    if isinstance(node, dict) and "slice" in node:  # a slice (for Index)
        return slice(*node["slice"])
    if isinstance(node, list):
        return tuple(build(v, stax) for v in node)
    return node


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
    _, _, kernel_fn = build(job["spec"], stax)
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
    if job.get("patterns"):
        # Aggregate's graphs, for the row and the column inputs.
        pattern = tuple(jnp.asarray(np.load(path)) for path in job["patterns"])
        with_graphs = fn
        fn = lambda a, b, g, **kw: with_graphs(a, b, g, pattern=pattern, **kw)  # noqa: E731
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
    # widenet is not importable here; the stdlib-only memory helper is loaded by path.
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("_widenet_memory", Path(__file__).with_name("memory.py"))
    memory = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(memory)
    peak = memory.peak_rss()
    np.savez(job["out"], times=np.asarray(times), peak=np.asarray(peak), **result)


if __name__ == "__main__":
    main(sys.argv[1])
