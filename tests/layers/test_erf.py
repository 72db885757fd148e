"""Erf-shaped nonlinearities (src/widenet/layers/erf.py)."""

import math

import torch

import widenet as wn
from layers.contract import NonlinearityContract
from widenet.errors import ParameterError


class TestErf(NonlinearityContract):
    layer_type = wn.Erf
    params = {"a": 1.1, "b": 0.8, "c": 0.2}
    float_params = ("a", "b", "c")
    bad = ((lambda: wn.Erf(a=math.inf), ParameterError, r"Erf: a must be a finite float \(got inf\)"),)


class TestSigmoidLike(NonlinearityContract):
    layer_type = wn.SigmoidLike


def test_erf_derivative_is_known_in_closed_form_at_zero():
    assert torch.allclose(wn.Erf().derivative(torch.zeros(3, dtype=torch.float64)),
                          torch.full((3,), 2 / math.sqrt(math.pi), dtype=torch.float64), rtol=1e-15)
