"""Fused kernel rules: the hottest rules as one C++ pass over a tile (``fused.cpp``).

Run eagerly, a rule is a pass over the tile per torch operation (about a dozen for the ReLU
family's, one per filter offset for a window sum); fused, it reads and writes each entry
once, with ATen's vectorized types. It also takes SLEEF's ``atan2`` with a 3.5-ulp bound
instead of torch's 1-ulp one, which costs about twice as much and is most of the rule's time:
entries agree with the eager rule to a few units in the last place (the tests bound it), and
an input against itself still has an angle of exactly 0.

The extension is compiled on first use with ``torch.utils.cpp_extension`` (a C++ compiler and
ninja; tens of seconds, announced by a logged warning) and cached on disk for later processes,
keyed by the source, the CPU features, and the torch installation (its version and place: an
environment with another torch builds its own) and Python's version. A build lock left behind by
a killed build is removed after ``_STALE_LOCK_S`` seconds (logged) instead of waited on forever.
Where it cannot be built, or with ``WIDENET_FUSED=0`` in the environment, rules run eagerly.
Fused rules serve only plain calls: no autograd or forward-mode state, not reproducible mode,
CPU tensors.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sys
import threading
import warnings
from pathlib import Path
from typing import Optional

import torch

from .._validate import env_flag
from . import exact, scratch

__all__ = ["enabled", "abrelu", "shifted_sum", "tanh_mixture"]

_SOURCE = Path(__file__).with_name("fused.cpp")
_LOCK = threading.Lock()
_MODULE = None
_FAILED: Optional[str] = None
_LOG = logging.getLogger("widenet")
_STALE_LOCK_S = 600.0  # a build takes tens of seconds; a lock this old belongs to a killed one


def _from_environment() -> bool:
    return env_flag("WIDENET_FUSED", True)


_ENABLED = _from_environment()


def _flags() -> list[str]:
    """Compiler flags for the vector instructions torch itself uses on this CPU (and OpenMP,
    which ATen's parallel_for needs to use more than one thread). No contraction of a product
    and a sum into a fused multiply-add where the source does not ask for one: an input
    against itself needs q1 q2 - K^2 to be exactly 0."""
    base = ["-O3", "-fopenmp", "-ffp-contract=off"]
    capability = torch.backends.cpu.get_cpu_capability()
    if capability == "AVX512":
        return base + ["-mavx512f", "-mavx512dq", "-mavx512vl", "-mavx512bw", "-mfma",
                       "-DCPU_CAPABILITY_AVX512", "-DCPU_CAPABILITY=AVX512"]
    if capability == "AVX2":
        return base + ["-mavx2", "-mfma", "-DCPU_CAPABILITY_AVX2", "-DCPU_CAPABILITY=AVX2"]
    return base


def _build_directory(name: str) -> Path:
    """Where the extension is built: torch's extension cache (``TORCH_EXTENSIONS_DIR``, by
    default ``~/.cache/torch_extensions``), one folder per source and flags. The source is
    copied there, so every checkout and installation of the same source shares one build."""
    root = os.environ.get("TORCH_EXTENSIONS_DIR") or str(Path.home() / ".cache" / "torch_extensions")
    folder = Path(root) / name
    folder.mkdir(parents=True, exist_ok=True)
    source = folder / "fused.cpp"
    if not source.exists() or source.read_bytes() != _SOURCE.read_bytes():
        partial = folder / f"fused.cpp.{os.getpid()}"
        partial.write_bytes(_SOURCE.read_bytes())
        partial.replace(source)  # atomic: a concurrent build never reads half a file
    return folder


def _wait_for_build_lock(folder: Path, stale_after: Optional[float] = None, poll: float = 0.5) -> None:
    """Wait while another process builds in ``folder`` (torch's ``lock`` file exists), and
    remove the lock once it is ``stale_after`` seconds old: torch's own wait has no end, and a
    build killed mid-way leaves its lock behind for good."""
    import time

    stale_after = _STALE_LOCK_S if stale_after is None else stale_after
    lock = folder / "lock"
    while True:
        try:
            age = time.time() - lock.stat().st_mtime
        except FileNotFoundError:
            return
        if age >= stale_after:
            _LOG.warning("widenet: removing a stale build lock %s (%.0f s old; the build that "
                         "held it was killed)", lock, age)
            try:
                lock.unlink()
            except FileNotFoundError:
                pass
            return
        time.sleep(poll)


def _load():
    """The compiled extension, or None (and the reason in ``_FAILED``) if it cannot be built."""
    global _MODULE, _FAILED
    if _MODULE is not None or _FAILED is not None:
        return _MODULE
    with _LOCK:
        if _MODULE is not None or _FAILED is not None:
            return _MODULE
        flags = _flags()
        # The build links against this torch and Python: both are part of its name.
        identity = (f"{' '.join(flags)} torch {torch.__version__} at {Path(torch.__file__).parent} "
                    f"python {sys.version_info[:2]}")
        name = "widenet_fused_" + hashlib.sha256(_SOURCE.read_bytes() + identity.encode()).hexdigest()[:12]
        try:
            from torch.utils import cpp_extension

            folder = _build_directory(name)
            _wait_for_build_lock(folder)
            if not (folder / f"{name}.so").exists():
                _LOG.warning("widenet: building the fused kernel rules in %s (once for this source "
                             "and CPU; about 20 s; WIDENET_FUSED=0 skips it)", folder)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                _MODULE = cpp_extension.load(name=name, sources=[str(folder / "fused.cpp")],
                                             extra_cflags=flags, extra_ldflags=["-fopenmp"],
                                             build_directory=str(folder), verbose=False)
        except Exception as err:  # no compiler, no ninja, a broken toolchain: rules run eagerly
            _FAILED = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
    return _MODULE


def enabled(*tensors: torch.Tensor) -> bool:
    """Whether a fused rule may run on these tensors (and the extension is built)."""
    if not _ENABLED or exact.active() or not scratch.plain(*tensors):
        return False
    for t in tensors:
        if isinstance(t, torch.Tensor) and (t.device.type != "cpu" or t.dtype not in (torch.float32, torch.float64)):
            return False
    return _load() is not None


def abrelu(nngp: torch.Tensor, ntk: Optional[torch.Tensor], q1: torch.Tensor, q2: torch.Tensor, *,
           C: int, S: int, L: int, q1_scalar: bool, factor: float, half: float) -> None:
    """ABRelu's rule in place on a contiguous tile of ``R = B * C * S`` rows of ``L`` entries
    (see ``fused.cpp``): ``q1`` holds ``B * S`` variances (``q1_scalar``) or ``B`` rows of
    ``L``, ``q2`` ``C`` rows of ``L``."""
    _MODULE.abrelu(nngp, ntk, q1.contiguous(), q2.contiguous(), C, S, L, q1_scalar, float(factor), float(half))


def shifted_sum(flat: torch.Tensor, out: torch.Tensor, deltas: list[int], masks: list[torch.Tensor],
                has_zero: bool) -> None:
    """``out`` = ``flat`` (``has_zero``, else 0) plus ``flat`` shifted by each ``delta`` times
    its 0/1 ``mask``, in order, row by row of ``(rows, block)`` tiles (see ``fused.cpp``)."""
    _MODULE.shifted_sum(flat, out, deltas, masks, has_zero)


def tanh_mixture(nngp: torch.Tensor, ntk: Optional[torch.Tensor], a1: torch.Tensor, a2: torch.Tensor,
                 ww: torch.Tensor) -> None:
    """Tanh's erf-mixture rule in place on a flat tile of ``E`` entries (see ``fused.cpp``):
    ``a1``, ``a2`` the row and column operands ``(M, E)``, ``ww`` the weights ``(M, M)``."""
    _MODULE.tanh_mixture(nngp, ntk, a1.contiguous(), a2.contiguous(), ww.contiguous())
