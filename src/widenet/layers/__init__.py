"""Layers: each one an exact infinite-width kernel rule and a finite-width twin, in one file.

This is the one place a layer's public names are exported (``widenet`` re-exports them): a
new layer adds one line here.
"""

# ruff: noqa: F401 - the imports are the exports (__all__ below is computed from them)
from types import ModuleType as _ModuleType

from .base import Layer
from .nonlinearity import Nonlinearity
from .combinators import FanOut, Parallel, Repeat, Serial
from .fan_in import FanInConcat, FanInProd, FanInSum
from .identity import Identity
from .dense import Dense
from .conv import Conv
from .conv_transpose import ConvTranspose
from .conv_local import ConvLocal
from .relu import ABRelu, Abs, LeakyRelu, Relu
from .erf import Erf, SigmoidLike
from .gelu import Gelu
from .sin import Cos, Sin
from .exponential import Exp, Gaussian, Rbf
from .sign import Sign
from .polynomial import Hermite, Monomial, Polynomial
from .rectified_monomial import RectifiedMonomial
from .quadrature import Elementwise
from .tanh import Tanh
from .softplus import Softplus
from .chain import Chain
from .pooling import AvgPool, MaxPool, SumPool
from .global_pool import GlobalAvgPool, GlobalSumPool
from .flatten import Flatten
from .image_resize import ImageResize
from .index import Index, Slice
from .dot_general import DotGeneral
from .aggregate import Aggregate
from .recurrent import Recurrent
from .layer_norm import LayerNorm
from .batch_norm import BatchNorm
from .dropout import Dropout
from .attention import SelfAttention, position_covariance

# Every name imported above, in import order (not the submodules, which the imports also bind).
__all__ = [name for name, value in dict(globals()).items()
           if not name.startswith("_") and not isinstance(value, _ModuleType)]
