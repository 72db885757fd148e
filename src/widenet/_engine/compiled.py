"""Compiled kernel rules: the pointwise rules of the common nonlinearities through
``torch.compile`` (Inductor), off unless asked for.

A nonlinearity's rule is a chain of elementwise ops over a tile (products of variances,
``sqrt``, ``atan2``, a few multiply-adds). Run eagerly, each op is a pass over memory;
compiled, Inductor generates one loop from the same code. The eager rules use fused
multiply-adds and a faster float64 square root (``widenet._engine.autodiff.safe_sqrt``),
the compiled loop the plain ``sqrt``; window sums and the rest stay eager. Whether compiling
pays off depends on the machine and the network: ``benchmarks/run.py --variants
eager,compiled`` measures it, and the README gives the figures.

The rules are written once, as functions of tensors (``run``'s ``fn``): eagerly they write
their temporaries into the tile buffer pool; compiled, Inductor fuses them into one loop that
updates the tile in place. Compiled values agree with eager ones to a few units in the last
place (the generated loops use the same vectorized math, in another order of evaluation).
Each entry is computed the same way whatever the shape of its tile, so a call's tiled
results still equal its untiled ones exactly.

The first call of each rule compiles it (seconds; Inductor keeps the result in its on-disk
cache for later processes) and needs a C++ compiler on CPU. Calls whose tensors carry autograd
or forward-mode tangents always run eagerly.
"""

from __future__ import annotations

import warnings
from typing import Callable

import torch

from .._validate import env_flag
from ..errors import ParameterError
from . import exact, scratch

__all__ = ["set_compile", "compile_enabled", "run", "run_rule"]


def _from_environment() -> bool:
    return env_flag("WIDENET_COMPILE", False)


_enabled = _from_environment()
_compiled: dict[Callable, Callable] = {}

# Every rule meets a handful of tile forms (grid or self tiles, full or diagonal layout, with
# or without an NTK, zero variances or not, two dtypes): more than dynamo's default of eight
# compiled variants per function, past which it silently runs the function uncompiled.
_RECOMPILE_LIMIT = 64


class set_compile:
    """Turns compiled kernel rules on or off, for the process or, as a context manager, for a
    block (the previous setting comes back on exit):

        wn.set_compile(True)             # from now on
        with wn.set_compile(True):       # only inside the block
            k = net.kernel(x)

    The initial setting comes from the environment variable ``WIDENET_COMPILE`` (``1`` or
    ``0``), which also reaches Dask workers started from this process's environment.
    """

    def __init__(self, enabled: bool) -> None:
        global _enabled
        if not isinstance(enabled, bool):
            raise ParameterError(f"set_compile: enabled must be True or False (got {enabled!r})")
        self._previous = _enabled
        _enabled = enabled

    def __enter__(self) -> "set_compile":
        return self

    def __exit__(self, *exc) -> None:
        global _enabled
        _enabled = self._previous

    def __repr__(self) -> str:
        return f"set_compile({_enabled})"


def compile_enabled() -> bool:
    """Whether kernel rules currently run compiled (see ``set_compile``)."""
    return _enabled


def _load_inductor() -> None:
    # Importing Inductor defines TorchScript modules that warn of TorchScript's deprecation
    # (torch.utils.mkldnn): torch's own business, which should not reach the caller's filters.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.")
        import torch._inductor.compile_fx  # noqa: F401


def run(fn: Callable, *args):
    """``fn(*args)``, compiled when compiled rules are on and no tensor argument carries
    autograd or forward-mode state; eagerly (with the tile buffer pool) otherwise, and always
    in reproducible mode (``widenet._engine.exact``), whose elementwise ops must take one path."""
    if not _enabled or exact.active() or not scratch.plain(*args):
        return fn(*args)
    compiled = _compiled.get(fn)
    if compiled is None:
        _load_inductor()
        compiled = _compiled[fn] = torch.compile(fn, fullgraph=True, dynamic=None)
    # Python floats become 0-d tensors of the tile's dtype: as graph inputs they never cause a
    # recompile, and dynamo's symbolic floats miscompile some values (in torch 2.13, a float
    # argument equal to 1.0 after a recompile made the float dynamic gave wrong kernels).
    like = next(a for a in args if isinstance(a, torch.Tensor))
    args = tuple(torch.tensor(a, dtype=like.dtype, device=like.device) if isinstance(a, float) else a
                 for a in args)
    # The compiled code allocates its own (few) temporaries: the pool stays out of the trace.
    with scratch.reusing(False), torch._dynamo.config.patch(recompile_limit=_RECOMPILE_LIMIT):
        return compiled(*args)


def run_rule(rule: Callable, *args, **exact_ops):
    """A rule written as a tensor function: compiled when asked (``run``); in
    reproducible mode (``widenet._engine.exact``) eagerly, with ``exact_ops`` (its
    vector-path ops, by keyword) in place of its defaults."""
    if exact.active():
        return rule(*args, **exact_ops)
    return run(rule, *args)
