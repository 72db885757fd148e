"""Exponential nonlinearities (src/widenet/layers/exponential.py)."""

import math

import widenet as wn
from layers.contract import NonlinearityContract
from widenet.errors import ParameterError


class TestExp(NonlinearityContract):
    layer_type = wn.Exp
    params = {"a": 0.6, "b": 0.5}
    float_params = ("a", "b")
    bad = ((lambda: wn.Exp(b=math.nan), ParameterError, r"Exp: b must be a finite float \(got nan\)"),)


class TestGaussian(NonlinearityContract):
    layer_type = wn.Gaussian
    params = {"a": 1.0, "b": -0.4}
    float_params = ("a", "b")
    bad = ((lambda: wn.Gaussian(a=math.inf), ParameterError, r"Gaussian: a must be a finite float \(got inf\)"),)

    def dual_cases(self):
        return [{"a": 1.2, "b": -0.4}]


class TestRbf(NonlinearityContract):
    layer_type = wn.Rbf
    params = {"gamma": 0.4}
    float_params = ("gamma",)
    bad = ((lambda: wn.Rbf(-1.0), ParameterError, r"Rbf: gamma must be a finite float >= 0 \(got -1.0\)"),)
