"""Sinusoidal nonlinearities (src/widenet/layers/sin.py)."""

import math

import widenet as wn
from layers.contract import NonlinearityContract
from widenet.errors import ParameterError


class TestSin(NonlinearityContract):
    layer_type = wn.Sin
    params = {"a": 1.0, "b": 0.9, "c": 0.3}
    float_params = ("a", "b", "c")
    bad = ((lambda: wn.Sin(c=math.nan), ParameterError, r"Sin: c must be a finite float \(got nan\)"),)


class TestCos(NonlinearityContract):
    layer_type = wn.Cos
    params = {"a": 1.0, "b": 1.1, "c": 0.1}
    float_params = ("a", "b", "c")
    bad = ((lambda: wn.Cos(b=math.inf), ParameterError, r"Cos: b must be a finite float \(got inf\)"),)

    def dual_cases(self):
        return [{"a": 0.7, "b": 1.2, "c": 0.1}]
