"""The layer base (src/widenet/layers/base.py): kernel calls, apply, twins, frozen layers."""

import pytest
import torch

import widenet as wn
from widenet.errors import ParameterError, ShapeError

from nets import NETS, inputs as _x

X = torch.randn(4, 3, dtype=torch.float64)
NET = wn.Serial(wn.Dense(8), wn.Relu(), wn.Dense(1))


def test_every_exported_layer_is_a_layer_subclass_exported_once():
    exported = [n for n in wn.layers.__all__ if isinstance(getattr(wn, n), type) and issubclass(getattr(wn, n), wn.Layer)]
    assert len(exported) == len(set(exported)) >= 38
    assert set(wn.layers.__all__) <= set(wn.__all__)
    assert all(getattr(wn, n) is getattr(wn.layers, n) for n in wn.layers.__all__)


def test_numpy_inputs_and_apply_on_kernels():
    net, x = NETS["erf-standard"], _x(6, seed=5)
    torch.testing.assert_close(net.kernel(x.numpy()).ntk, net.kernel(x).ntk, rtol=0, atol=0)
    first, rest = wn.Dense(64, 1.2, 0.3, "standard"), wn.Serial(wn.Erf(), wn.Dense(8, 0.9, None, "standard"))
    staged = rest.apply(first.kernel(x))
    torch.testing.assert_close(staged.nngp, net.kernel(x).nngp, rtol=1e-14, atol=1e-14)
    torch.testing.assert_close(staged.ntk, net.kernel(x).ntk, rtol=1e-14, atol=1e-14)


def test_module_is_reproducible_and_lazy_equals_eager():
    net, x = NETS["relu"], _x(4)
    a = net.module(5, seed=3, dtype=torch.float64)
    b = net.module(5, seed=3, dtype=torch.float64)
    lazy = net.module(seed=3, dtype=torch.float64)
    assert torch.equal(a(x), b(x)) and torch.equal(a(x), lazy(x))
    assert not torch.equal(a(x), net.module(5, seed=4, dtype=torch.float64)(x))
    g1, g2 = torch.Generator().manual_seed(9), torch.Generator().manual_seed(9)
    assert torch.equal(net.module(5, generator=g1, dtype=torch.float64)(x),
                       net.module(5, generator=g2, dtype=torch.float64)(x))
    assert net.module(5)(x.float()).shape == (4, 1)


def test_layers_are_frozen_and_round_trip_through_repr():
    layer = wn.Dense(3, W_std=2.0, b_std=None, parameterization="standard")
    with pytest.raises(Exception):
        layer.W_std = 1.0
    assert eval(repr(layer), {"Dense": wn.Dense}) == layer
    assert wn.Serial(wn.Dense(3), wn.Relu()) == wn.Serial(wn.Dense(3), wn.Relu())


def test_option_errors():
    with pytest.raises(ParameterError, match=r"Serial.kernel: block_size must be an integer >= 1 \(got 0\)"):
        NET.kernel(X, block_size=0)
    with pytest.raises(ParameterError, match=r"Serial.module: give seed or generator, not both"):
        NET.module(3, seed=1, generator=torch.Generator())
    with pytest.raises(ShapeError, match=r"Serial.module: input_shape must be \(features,\) or \(channels, \*spatial\) with 1 to 3 spatial axes \(got \(3, 4, 5, 6, 7\)\)"):
        NET.module((3, 4, 5, 6, 7))
    with pytest.raises(ShapeError, match=r"Serial twin: expected inputs of shape \(N, 3\), the input_shape it was "
                                         r"built for \(got \(2, 5\)\)"):
        NET.module(3)(torch.randn(2, 5))
    lazy = NET.module()
    lazy(torch.randn(2, 3))  # the first call sets its widths
    with pytest.raises(ShapeError, match=r"DenseModule: input has 5 features on axis 1 but the layer was built for 3"):
        lazy(torch.randn(2, 5))


def test_a_twin_checks_its_inputs_against_the_shape_it_was_built_for():
    import pickle

    cnn = wn.Serial(wn.Conv(8, 3, padding="same"), wn.Relu(), wn.GlobalAvgPool(), wn.Dense(1))
    twin = cnn.module((1, 8, 8), seed=0, dtype=torch.float64)
    assert twin(torch.randn(5, 1, 8, 8, dtype=torch.float64)).shape == (5, 1)
    with pytest.raises(ShapeError, match=r"Serial twin: expected inputs of shape \(N, 1, 8, 8\), the input_shape it "
                                         r"was built for \(got \(5, 64\)\)"):
        twin(torch.randn(5, 64, dtype=torch.float64))
    pickle.loads(pickle.dumps(twin))  # the check is a picklable hook, not a closure
    lazy = cnn.module(seed=0, dtype=torch.float64)  # no input_shape: the first layer says what it needs
    with pytest.raises(ShapeError, match=r"ConvModule: expected input \(N, C, \*spatial\) with 1 to 3 spatial axes "
                                         r"\(got \(5, 64\)\)"):
        lazy(torch.randn(5, 64, dtype=torch.float64))
    mlp = NET.module(3, seed=0)
    with pytest.raises(ShapeError, match=r"expected inputs of shape \(N, 3\).*\(got \(4, 3, 2\)\)"):
        mlp(torch.randn(4, 3, 2))
