"""Side-by-side runs against Neural Tangents, the reference peer.

Neural Tangents only imports with JAX 0.4.23, so it lives in its own virtual environment
(built by the shared ``tools/nt-env.sh``). This module translates a widenet architecture into
a JSON spec, runs ``_nt_runner.py`` with that environment's python in a subprocess and reads
the kernels back. Nothing here is used by the library itself; tests marked ``nt`` and the
benchmarks use it, and skip when no such environment exists.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from dataclasses import fields
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from .. import layers as L

_RUNNER = Path(__file__).with_name("_nt_runner.py")
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


def to_spec(layer: L.Layer) -> dict:
    """A JSON-able description of a widenet architecture."""
    kind = type(layer).__name__
    if isinstance(layer, (L.Serial, L.Parallel)):
        return {"type": kind, "children": [to_spec(c) for c in layer.layers]}
    if isinstance(layer, L.Repeat):
        return {"type": kind, "params": {"n": layer.n}, "children": [to_spec(layer.layer)]}
    params = {}
    for f in fields(layer):
        value = getattr(layer, f.name)
        if callable(value):  # functions do not cross to the runner; it refuses them
            value = f"<function {getattr(value, '__name__', '?')}>"
        params[f.name] = list(value) if isinstance(value, tuple) else value
    if kind == "Cos":  # NT's Cos shares the Sin parameters
        params = {"a": layer.a, "b": layer.b, "c": layer.c}
    return {"type": kind, "params": params}


def nt_kernel(
    layer: L.Layer,
    x1: torch.Tensor,
    x2: Optional[torch.Tensor] = None,
    *,
    get: Sequence[str] = ("nngp", "ntk"),
    repeats: int = 1,
    warmup: bool = False,
    batch_size: int = 0,
    mask1: Optional[torch.Tensor] = None,
    mask2: Optional[torch.Tensor] = None,
    python: Optional[str] = None,
    timeout: float = 1800,
) -> dict:
    """Neural Tangents' kernels of ``layer`` on the same inputs, and its run times.

    Returns a dict with one numpy array per name in ``get`` and ``times`` (seconds per run,
    jit-compiled, after an optional warm-up run). ``mask1``/``mask2`` (True at padded
    positions) become Neural Tangents' ``mask_constant`` masking.
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
        job = {
            "spec": to_spec(layer), "dtype": dtype, "x1": str(tmp / "x1.npy"),
            "x2": None if x2 is None else str(tmp / "x2.npy"), "get": list(get),
            "repeats": repeats, "warmup": warmup, "batch_size": batch_size,
            "out": str(tmp / "out.npz"), "mask_constant": constant,
        }
        (tmp / "job.json").write_text(json.dumps(job))
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "JAX_PLATFORMS": "cpu"}
        run = subprocess.run([python, str(_RUNNER), str(tmp / "job.json")], capture_output=True,
                             text=True, env=env, timeout=timeout)
        if run.returncode != 0:
            raise RuntimeError(f"Neural Tangents run failed:\n{run.stderr[-4000:]}")
        with np.load(tmp / "out.npz") as data:
            return {name: data[name] for name in data.files}
