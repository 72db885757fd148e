"""Side-by-side runs against Neural Tangents, the reference peer (tests and benchmarks only).

Neural Tangents only imports with JAX 0.4.23, so it lives in its own virtual environment
(built by the shared ``tools/nt-env.sh``). This package translates a widenet architecture
into a call tree (:mod:`nt.translate`), runs ``runner.py`` with that environment's python in
a subprocess and reads the kernels back. Tests marked ``nt`` and the benchmarks use it, and
skip when no such environment exists; the library never does.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

import widenet as wn

from .translate import NoCounterpart, call, translate, translates

__all__ = ["nt_python", "nt_kernel", "nt_predict", "translate", "translates", "call", "NoCounterpart"]

_RUNNER = Path(__file__).with_name("runner.py")
_DEFAULT_ENV = Path.home() / ".cache" / "widenet-nt-env" / "bin" / "python"


def nt_python() -> Optional[str]:
    """Path of a python that imports neural_tangents, or None.

    Looked up in ``$WIDENET_NT_PYTHON``, then in nt-env.sh's default location.
    """
    candidates = [os.environ.get("WIDENET_NT_PYTHON"), str(_DEFAULT_ENV)]
    for candidate in candidates:
        if candidate and Path(candidate).exists():
            probe = subprocess.run(
                [candidate, "-c", "import neural_tangents"], capture_output=True,
                env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
            )
            if probe.returncode == 0:
                return candidate
    return None


def _run(python: str, tmp: Path, job: dict, timeout: float) -> None:
    """Runs one job of ``_nt_runner.py`` in the Neural Tangents environment."""
    (tmp / "job.json").write_text(json.dumps(job))
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "JAX_PLATFORMS": "cpu"}
    run = subprocess.run([python, str(_RUNNER), str(tmp / "job.json")], capture_output=True,
                         text=True, env=env, timeout=timeout)
    if run.returncode != 0:
        raise RuntimeError(f"Neural Tangents run failed:\n{run.stderr[-4000:]}")


def nt_kernel(
    layer: wn.Layer,
    x1: torch.Tensor,
    x2: Optional[torch.Tensor] = None,
    *,
    get: Sequence[str] = ("nngp", "ntk"),
    repeats: int = 1,
    warmup: bool = False,
    batch_size: int = 0,
    mask1: Optional[torch.Tensor] = None,
    mask2: Optional[torch.Tensor] = None,
    pattern1: Optional[torch.Tensor] = None,
    pattern2: Optional[torch.Tensor] = None,
    python: Optional[str] = None,
    timeout: float = 1800,
) -> dict:
    """Neural Tangents' kernels of ``layer`` on the same inputs, and its run times.

    Returns a dict with one numpy array per name in ``get`` and ``times`` (seconds per run,
    jit-compiled, after an optional warm-up run). ``mask1``/``mask2`` (True at padded
    positions) become Neural Tangents' ``mask_constant`` masking. ``pattern1``/``pattern2``:
    the graphs of an ``Aggregate`` network (dense adjacencies, or integer arcs, which switch
    its Aggregate layers to ``implementation="SPARSE"``; weighted arcs have no counterpart).
    """
    python = python or nt_python()
    if python is None:
        raise RuntimeError("Neural Tangents environment not found (run shared tools/nt-env.sh)")
    dtype = "float64" if x1.dtype == torch.float64 else "float32"
    constant = None
    if mask1 is not None or mask2 is not None:
        constant = -123.25  # any value the inputs never take

        def fill(x, mask):
            if mask is None:
                return x
            return x.masked_fill(mask.unsqueeze(1).expand_as(x), constant)

        x1, x2 = fill(x1, mask1), (None if x2 is None else fill(x2, mask2))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        np.save(tmp / "x1.npy", x1.detach().cpu().numpy())
        if x2 is not None:
            np.save(tmp / "x2.npy", x2.detach().cpu().numpy())
        spec = translate(layer, x1.ndim - 2)
        patterns = None
        if pattern1 is not None:
            if isinstance(pattern1, tuple):
                raise NoCounterpart("Neural Tangents' sparse Aggregate takes unweighted arcs only")
            sparse = not (pattern1.is_floating_point() or pattern1.dtype == torch.bool)
            if sparse:
                spec = _sparse_aggregates(spec)
            patterns = []
            for i, p in enumerate((pattern1, pattern1 if pattern2 is None else pattern2)):
                p = p.detach().cpu().numpy()
                np.save(tmp / f"p{i}.npy", p if sparse else p.astype(x1.detach().cpu().numpy().dtype))
                patterns.append(str(tmp / f"p{i}.npy"))
        job = {
            "spec": spec, "patterns": patterns, "dtype": dtype, "x1": str(tmp / "x1.npy"),
            "x2": None if x2 is None else str(tmp / "x2.npy"), "get": list(get),
            "repeats": repeats, "warmup": warmup, "batch_size": batch_size,
            "out": str(tmp / "out.npz"), "mask_constant": constant,
        }
        _run(python, tmp, job, timeout)
        with np.load(tmp / "out.npz") as data:
            return {name: data[name] for name in data.files}


def _sparse_aggregates(spec):
    """``spec`` with every Aggregate call set to ``implementation="SPARSE"``."""
    if isinstance(spec, dict) and "fn" in spec:
        kwargs = {k: _sparse_aggregates(v) for k, v in spec["kwargs"].items()}
        if spec["fn"] == "Aggregate":
            kwargs["implementation"] = "SPARSE"
        return {"fn": spec["fn"], "args": [_sparse_aggregates(a) for a in spec["args"]], "kwargs": kwargs}
    if isinstance(spec, list):
        return [_sparse_aggregates(v) for v in spec]
    return spec


def _encode(value, arrays: dict):
    """``value`` as JSON for the runner; arrays go to ``arrays`` and are named by reference."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    if isinstance(value, np.ndarray):
        key = f"a{len(arrays)}"
        arrays[key] = value
        return {"__array__": key}
    if isinstance(value, wn.Layer):
        return {"__spec__": translate(value)}
    if hasattr(value, "nngp") and hasattr(value, "ntk"):  # widenet.Kernel or any Kernel-like object
        return {"__kernel__": {"nngp": _encode(value.nngp, arrays), "ntk": _encode(value.ntk, arrays)}}
    if isinstance(value, dict):
        return {str(k): _encode(v, arrays) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_encode(v, arrays) for v in value]
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"nt_predict: cannot pass a {type(value).__name__} to Neural Tangents")


def _decode(value, arrays):
    if isinstance(value, dict):
        return arrays[value["__array__"]]
    if isinstance(value, list):
        return tuple(_decode(v, arrays) for v in value)
    return value


def nt_predict(calls: Sequence[dict], *, dtype: str = "float64", python: Optional[str] = None,
               timeout: float = 1800) -> list:
    """Neural Tangents' ``neural_tangents.predict`` on the same kernels, targets and options.

    All ``calls`` run in one Neural Tangents process (each start costs seconds). A call is a
    dict ``{"fn": name, "args": {...}, "predict": [{...}, ...]}``: ``fn`` names a function of
    ``neural_tangents.predict`` (``gp_inference``, ``gradient_descent_mse``,
    ``gradient_descent``, ``gradient_descent_mse_ensemble``, ``max_learning_rate``), ``args``
    are its keyword arguments, and ``predict`` (optional) lists keyword arguments of calls of
    the predictor that it returns. Names and conventions are Neural Tangents' own (for
    instance ``fx_test_0`` must be given for test outputs of ``gradient_descent_mse``).

    Values may be numbers (``inf`` included), strings, None, lists, numpy arrays or torch
    tensors, and Kernel-like objects (with ``nngp`` and ``ntk``, such as :class:`widenet.Kernel`;
    they arrive as a ``(nngp, ntk)`` namedtuple). Two arguments are translated:

    * ``loss`` of ``gradient_descent``: ``"mse"`` (``||f - y||^2 / (2 y.size)``) or
      ``"cross_entropy"`` (``-mean(log_softmax(f, -1) * y)``).
    * ``kernel_fn`` of ``gradient_descent_mse_ensemble``: a widenet architecture (Neural
      Tangents' own kernel function of it, as in :func:`nt_kernel`; inputs without spatial
      axes), or a Kernel-like object of precomputed ``(P, P)`` matrices over P points, when
      ``x_train`` and ``x_test`` are integer index arrays into them and
      ``kernel_fn(x1, x2) = matrices[x1][:, x2]`` (this isolates the predictions from any
      difference between the kernels).

    Returns one entry per call: the list of the predictor's results, or the function's own
    result for a call without ``predict`` (``max_learning_rate``). Arrays come back as numpy
    arrays, tuples and namedtuples (``Gaussian``) as tuples, scalars as floats.
    """
    python = python or nt_python()
    if python is None:
        raise RuntimeError("Neural Tangents environment not found (run shared tools/nt-env.sh)")
    arrays: dict = {}
    encoded = [_encode(dict(call), arrays) for call in calls]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        np.savez(tmp / "in.npz", **arrays)
        job = {"mode": "predict", "dtype": dtype, "calls": encoded, "arrays": str(tmp / "in.npz"),
               "out": str(tmp / "out.npz"), "out_json": str(tmp / "out.json")}
        _run(python, tmp, job, timeout)
        results = json.loads((tmp / "out.json").read_text())
        with np.load(tmp / "out.npz") as data:
            out = {name: data[name] for name in data.files}
    return [_decode(r, out) for r in results]
