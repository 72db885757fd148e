"""widenet: infinite-width neural networks in PyTorch.

One architecture description gives a finite-width ``torch.nn.Module`` (``net.module()``)
and its exact infinite-width NNGP and NTK kernels (``net.kernel(x1, x2)``).
"""

from . import empirical, errors, predict
from .empirical import monte_carlo
from .linearize import linearize, taylor_expand
from ._compiled import compile_enabled, set_compile
from .kernel import Kernel
from .layers import (
    ABRelu, Abs, Cos, Dense, Elementwise, Erf, Exp, FanInConcat, FanInProd, FanInSum, FanOut,
    Gaussian, Gelu, Hermite, Identity, Layer, LeakyRelu, Monomial, Parallel, Polynomial, Rbf,
    RectifiedMonomial, Relu, Repeat, Serial, SigmoidLike, Sign, Sin, Tanh,
    AvgPool, BatchNorm, Conv, Dropout, Flatten, GlobalAvgPool, GlobalSumPool, LayerNorm, MaxPool,
    SumPool, SelfAttention, position_covariance,
)

__version__ = "0.1.0"


def __getattr__(name):
    # scikit-learn is an optional dependency: the estimators load on first use.
    if name == "estimators":
        import importlib

        return importlib.import_module(".estimators", __name__)
    raise AttributeError(f"module 'widenet' has no attribute {name!r}")

__all__ = [
    "errors", "predict", "estimators", "empirical", "monte_carlo", "linearize", "taylor_expand", "Kernel", "set_compile", "compile_enabled", "Layer", "Serial", "Parallel", "FanOut", "FanInSum", "FanInProd",
    "FanInConcat", "Repeat", "Dense", "Identity", "Relu", "LeakyRelu", "ABRelu", "Abs", "Erf",
    "SigmoidLike", "Gelu", "Sin", "Cos", "Rbf", "Sign", "Exp", "Gaussian", "Monomial",
    "RectifiedMonomial", "Hermite", "Polynomial", "Elementwise", "Tanh",
    "Conv", "AvgPool", "SumPool", "MaxPool", "GlobalAvgPool", "GlobalSumPool", "Flatten",
    "LayerNorm", "BatchNorm", "Dropout", "SelfAttention", "position_covariance", "__version__",
]
