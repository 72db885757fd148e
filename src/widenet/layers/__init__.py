"""Layers: each one an exact infinite-width kernel rule and a finite-width module."""

from ._base import Layer
from .attention import SelfAttention, position_covariance
from .combinators import FanInConcat, FanInProd, FanInSum, FanOut, Parallel, Repeat, Serial
from .dense import Dense
from .elementwise import (
    ABRelu, Abs, Cos, Erf, Exp, Gaussian, Gelu, Hermite, Identity, LeakyRelu, Monomial,
    Nonlinearity, Polynomial, Rbf, RectifiedMonomial, Relu, SigmoidLike, Sign, Sin,
)
from .conv import Conv
from .normalization import BatchNorm, Dropout, LayerNorm
from .pooling import AvgPool, Flatten, GlobalAvgPool, GlobalSumPool, MaxPool, SumPool
from .quadrature import Elementwise, Tanh

__all__ = [
    "Layer", "Nonlinearity", "Serial", "Parallel", "FanOut", "FanInSum", "FanInProd",
    "FanInConcat", "Repeat", "Dense", "Identity", "Relu", "LeakyRelu", "ABRelu", "Abs", "Erf",
    "SigmoidLike", "Gelu", "Sin", "Cos", "Rbf", "Sign", "Exp", "Gaussian", "Monomial",
    "RectifiedMonomial", "Hermite", "Polynomial", "Elementwise", "Tanh",
    "Conv", "AvgPool", "SumPool", "MaxPool", "GlobalAvgPool", "GlobalSumPool", "Flatten",
    "LayerNorm", "BatchNorm", "Dropout", "SelfAttention", "position_covariance",
]
