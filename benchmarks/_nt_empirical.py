"""Runs inside the Neural Tangents environment: NT's empirical NTK of the benchmark models
with the weights widenet's torch models were given. Usage: python _nt_empirical.py job.json"""

import json
import sys
import time

import numpy as np


def main(path):
    job = json.load(open(path))
    import jax

    jax.config.update("jax_enable_x64", job["dtype"] == "float64")
    import jax.numpy as jnp
    import neural_tangents as nt
    from neural_tangents import stax

    data = np.load(job["arrays"])
    x = jnp.asarray(data["x"])
    if job["model"] == "mlp":
        layers = [stax.Dense(1024, parameterization="standard"), stax.Relu(),
                  stax.Dense(1024, parameterization="standard"), stax.Relu(),
                  stax.Dense(10, parameterization="standard")]
        params = [(data["w0"].T, data["b0"]), (), (data["w1"].T, data["b1"]), (), (data["w2"].T, data["b2"])]
    else:  # NHWC, HWIO
        x = jnp.moveaxis(x, 1, -1)
        conv = lambda c: stax.Conv(c, (3, 3), padding="SAME", parameterization="standard")  # noqa: E731
        layers = [conv(32), stax.Relu(), conv(32), stax.Relu(), stax.GlobalAvgPool(),
                  stax.Dense(10, parameterization="standard")]
        hwio = lambda w: np.transpose(w, (2, 3, 1, 0))  # noqa: E731
        params = [(hwio(data["w0"]), data["b0"]), (), (hwio(data["w1"]), data["b1"]), (), (),
                  (data["w2"].T, data["b2"])]
    _, apply_fn, _ = stax.serial(*layers)
    params = jax.tree_util.tree_map(jnp.asarray, params)
    out = {}
    impls = {"jacobian": nt.NtkImplementation.JACOBIAN_CONTRACTION,
             "ntvp": nt.NtkImplementation.NTK_VECTOR_PRODUCTS,
             "structured": nt.NtkImplementation.STRUCTURED_DERIVATIVES}
    for name in job["implementations"]:
        fn = jax.jit(nt.empirical_ntk_fn(apply_fn, trace_axes=tuple(job["trace_axes"]), vmap_axes=0,
                                         implementation=impls[name]))
        k = fn(x, None, params).block_until_ready()  # compile and warm up
        times = []
        for _ in range(job["repeats"]):
            start = time.perf_counter()
            k = fn(x, None, params).block_until_ready()
            times.append(time.perf_counter() - start)
        np.save(job["out"] + f".{name}.npy", np.asarray(k))
        out[name] = min(times)
    # widenet is not importable here; its stdlib-only memory helper is loaded by path.
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "tests" / "nt" / "memory.py"
    spec = importlib.util.spec_from_file_location("_widenet_memory", path)
    memory = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(memory)
    out["peak"] = memory.peak_rss()
    json.dump(out, open(job["out"] + ".json", "w"))


if __name__ == "__main__":
    main(sys.argv[1])
