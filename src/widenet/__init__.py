"""widenet: infinite-width neural networks in PyTorch.

One architecture description gives a finite-width ``torch.nn.Module`` (``net.module()``)
and its exact infinite-width NNGP and NTK kernels (``net.kernel(x1, x2)``).
"""

from . import empirical, errors, layers, predict
from ._engine.compiled import compile_enabled, set_compile
from .empirical import monte_carlo
from .features import feature_ridge, features
from .kernel import Kernel
from .layers import *  # noqa: F401,F403 - every layer, exported once in layers/__init__.py
from .linearize import linearize, taylor_expand
from .interop import from_torch, to_torch

__version__ = "0.1.0"

# Subpackages with optional dependencies or heavier imports load on first use.
_LAZY = ("estimators", "theory", "blocked", "datasets")


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'widenet' has no attribute {name!r}")


__all__ = ["errors", "predict", "empirical", "monte_carlo", "features", "feature_ridge", "linearize",
           "taylor_expand", "Kernel", "set_compile", "compile_enabled", "from_torch", "to_torch", *_LAZY,
           *layers.__all__, "__version__"]
