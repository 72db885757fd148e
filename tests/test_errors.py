"""Every error message, pinned."""

import math

import pytest
import torch

import widenet as wn
from widenet.errors import (LayerOrderError, NonFiniteInputError, ParameterError, ShapeError,
                            WidenetError)

X = torch.randn(4, 3, dtype=torch.float64)


@pytest.mark.parametrize("make,match", [
    (lambda: wn.Dense(0), r"Dense: out_features must be an integer >= 1 \(got 0\)"),
    (lambda: wn.Dense(2.5), r"Dense: out_features must be an integer >= 1 \(got 2.5\)"),
    (lambda: wn.Dense(3, W_std=-1.0), r"Dense: W_std must be a finite float >= 0 \(got -1.0\)"),
    (lambda: wn.Dense(3, b_std=-0.1), r"Dense: b_std must be a finite float >= 0 or None \(got -0.1\)"),
    (lambda: wn.Dense(3, W_std=math.nan), r"Dense: W_std must be a finite float >= 0 \(got nan\)"),
    (lambda: wn.Dense(3, parameterization="mup"),
     r"Dense: parameterization must be one of 'ntk', 'standard' \(got 'mup'\)"),
    (lambda: wn.FanOut(0), r"FanOut: num must be an integer >= 1 \(got 0\)"),
    (lambda: wn.Repeat(wn.Relu(), 0), r"Repeat: n must be an integer >= 1 \(got 0\)"),
    (lambda: wn.Repeat("relu", 2), r"Repeat: layer must be a widenet layer \(got str\)"),
    (lambda: wn.Serial(), r"Serial: layers must hold at least one layer \(got none\)"),
    (lambda: wn.Serial(wn.Relu(), torch.nn.ReLU()), r"Serial: layers must be widenet layers \(got ReLU at position 1\)"),
    (lambda: wn.FanInConcat(axis=0), r"FanInConcat: axis must be 1 or -1"),
    (lambda: wn.Monomial(-1), r"Monomial: degree must be an integer >= 0 \(got -1\)"),
    (lambda: wn.Rbf(-1.0), r"Rbf: gamma must be a finite float >= 0 \(got -1.0\)"),
    (lambda: wn.Erf(a=math.inf), r"Erf: a must be a finite float \(got inf\)"),
    (lambda: wn.Polynomial(()), r"Polynomial: coef must be a non-empty sequence of floats"),
    (lambda: wn.Elementwise("tanh"), r"Elementwise: fn must be a callable on tensors \(got 'tanh'\)"),
    (lambda: wn.Tanh(degree=1), r"Tanh: degree must be an integer >= 2 \(got 1\)"),
])
def test_invalid_hyperparameters_fail_at_construction(make, match):
    with pytest.raises(ParameterError, match=match):
        make()


def test_errors_are_also_builtin_errors():
    with pytest.raises(ValueError):
        wn.Dense(0)
    assert issubclass(ShapeError, WidenetError) and issubclass(ShapeError, ValueError)


NET = wn.Serial(wn.Dense(8), wn.Relu(), wn.Dense(1))


def test_shape_mismatch_names_both_shapes():
    with pytest.raises(ShapeError, match=r"x2 must have shape \(N2, 3\) to match x1 \(got x1 \(4, 3\) and x2 \(2, 5\)\)"):
        NET.kernel(X, torch.randn(2, 5, dtype=torch.float64))
    with pytest.raises(ShapeError, match=r"x1 must have shape \(N, features\) or \(N, C, \*spatial\) with 1 to 3 spatial axes \(got shape \(4,\)\)"):
        NET.kernel(torch.randn(4))
    with pytest.raises(ShapeError, match=r"x1 and x2 must share one dtype \(got torch.float64 and torch.float32\)"):
        NET.kernel(X, X.float())


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_inputs_fail_before_any_work(bad, monkeypatch):
    x = X.clone()
    x[1, 2] = bad
    import widenet.layers.dense as dense

    monkeypatch.setattr(dense.Dense, "_rule", lambda *a: pytest.fail("kernel work started"))
    with pytest.raises(NonFiniteInputError, match=r"Serial.kernel: x1 must be finite, but 1 of its 12 entries are NaN or Inf"):
        NET.kernel(x)
    with pytest.raises(NonFiniteInputError, match=r"x2 must be finite"):
        NET.kernel(X, x)


def test_nonlinearity_needs_a_gaussian_input():
    with pytest.raises(LayerOrderError, match=r"Relu: its input must be Gaussian, i.e. the output of an affine layer"):
        wn.Serial(wn.Relu(), wn.Dense(1)).kernel(X)
    with pytest.raises(LayerOrderError, match=r"Erf: its input must be Gaussian.*cannot follow .* another nonlinearity"):
        wn.Serial(wn.Dense(4), wn.Relu(), wn.Erf()).kernel(X)


def test_nonlinearity_after_concatenation_is_refused():
    net = wn.Serial(wn.Dense(4), wn.FanOut(2), wn.Parallel(wn.Relu(), wn.Erf()), wn.FanInConcat(), wn.Gelu())
    with pytest.raises(LayerOrderError, match=r"Gelu: its input must be Gaussian"):
        net.kernel(X)


def test_branch_errors():
    with pytest.raises(LayerOrderError, match=r"Dense: expected one branch but received 2; merge branches"):
        wn.Serial(wn.FanOut(2), wn.Dense(3)).kernel(X)
    with pytest.raises(LayerOrderError, match=r"Serial.kernel: the network ends with 2 branches"):
        wn.Serial(wn.Dense(3), wn.FanOut(2)).kernel(X)
    with pytest.raises(LayerOrderError, match=r"FanInSum: expected a tuple of branches"):
        wn.Serial(wn.Dense(3), wn.FanInSum()).kernel(X)
    with pytest.raises(LayerOrderError, match=r"Parallel: has 2 layers but received 3 branch\(es\)"):
        wn.Serial(wn.FanOut(3), wn.Parallel(wn.Dense(2), wn.Dense(2))).kernel(X)
    with pytest.raises(ShapeError, match=r"FanInSum: branches must have equal widths \(got 3, 5\)"):
        wn.Serial(wn.FanOut(2), wn.Parallel(wn.Dense(3), wn.Dense(5)), wn.FanInSum()).kernel(X)


def test_option_errors():
    with pytest.raises(ParameterError, match=r"Serial.kernel: block_size must be an integer >= 1 \(got 0\)"):
        NET.kernel(X, block_size=0)
    with pytest.raises(ParameterError, match=r"Serial.module: give seed or generator, not both"):
        NET.module(3, seed=1, generator=torch.Generator())
    with pytest.raises(ShapeError, match=r"Serial.module: input_shape must be \(features,\) or \(channels, \*spatial\) with 1 to 3 spatial axes \(got \(3, 4, 5, 6, 7\)\)"):
        NET.module((3, 4, 5, 6, 7))
    with pytest.raises(ShapeError, match=r"DenseModule: input has 5 features on axis 1 but the layer was built for 3"):
        NET.module(3)(torch.randn(2, 5))
