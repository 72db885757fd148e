"""Side by side with Neural Tangents 0.6.5 on identical inputs (REFERENCE oracle 3).

Marked ``nt``: skipped unless the Neural Tangents environment (shared tools/nt-env.sh) exists.
"""

import numpy as np
import pytest
import torch

import widenet as wn

pytestmark = pytest.mark.nt

ACTIVATIONS = [wn.Relu(), wn.LeakyRelu(0.1), wn.ABRelu(-0.5, 2.0), wn.Abs(), wn.Erf(1.2, 0.7, 0.3),
               wn.SigmoidLike(), wn.Gelu(), wn.Sin(1.1, 0.8, 0.4), wn.Cos(0.9, 1.1, 0.2), wn.Rbf(0.7),
               wn.Sign(), wn.Exp(0.5, 0.4), wn.Gaussian(1.0, -0.5), wn.Monomial(3),
               wn.Polynomial((0.1, -0.5, 0.3, 0.2)), wn.Identity()]


def _inputs():
    g = torch.Generator().manual_seed(0)
    x1 = torch.randn(12, 7, generator=g, dtype=torch.float64)
    x1[3] = 0
    return x1, torch.randn(9, 7, generator=g, dtype=torch.float64)


def _rel(a, b):
    return float(np.abs(a - b).max() / np.abs(b).max())


def _assert_same_inputs_match(net, x1):
    """Same inputs: NT evaluates the diagonal with the off-diagonal formula, where
    sqrt(q1 q2 - K^2) of a rounding residue costs it about sqrt(machine epsilon) for the
    angle-based activations; widenet keeps the diagonal exact. Off-diagonals must agree."""
    from nt import nt_kernel

    ours, theirs = net.kernel(x1), nt_kernel(net, x1)
    off = ~np.eye(x1.shape[0], dtype=bool)
    for name in ("nngp", "ntk"):
        a, b = getattr(ours, name).numpy(), theirs[name]
        assert float(np.abs(a - b)[off].max() / np.abs(b).max()) <= 1e-10
        assert _rel(np.diag(a), np.diag(b)) <= 1e-3


@pytest.mark.parametrize("parameterization", ["ntk", "standard"])
@pytest.mark.parametrize("act", ACTIVATIONS, ids=repr)
def test_kernels_match_neural_tangents(act, parameterization):
    from nt import nt_kernel

    net = wn.Serial(wn.Dense(64, 1.3, 0.2, parameterization), act, wn.Dense(32, 1.1, 0.1, parameterization),
                    act, wn.Dense(3, 1.0, None, parameterization))
    x1, x2 = _inputs()
    ours, theirs = net.kernel(x1, x2), nt_kernel(net, x1, x2)
    assert _rel(ours.nngp.numpy(), theirs["nngp"]) <= 1e-10
    assert _rel(ours.ntk.numpy(), theirs["ntk"]) <= 1e-10
    _assert_same_inputs_match(net, x1)


def test_combinators_match_neural_tangents():
    from nt import nt_kernel

    net = wn.Serial(
        wn.Dense(64, 1.2, 0.1), wn.FanOut(3),
        wn.Parallel(wn.Serial(wn.Relu(), wn.Dense(64, 1.4, 0.0)), wn.Identity(), wn.Serial(wn.Erf(), wn.Dense(64))),
        wn.FanInSum(), wn.Gelu(), wn.Dense(32), wn.FanOut(2),
        wn.Parallel(wn.Serial(wn.Sin(), wn.Dense(16)), wn.Serial(wn.Relu(), wn.Dense(48))), wn.FanInConcat(),
        wn.FanOut(2), wn.Parallel(wn.Dense(8), wn.Serial(wn.Dense(8), wn.Erf(), wn.Dense(8))), wn.FanInProd(),
        wn.Repeat(wn.Serial(wn.Dense(8), wn.Relu()), 2), wn.Dense(1),
    )
    x1, x2 = _inputs()
    ours, theirs = net.kernel(x1, x2), nt_kernel(net, x1, x2)
    assert _rel(ours.nngp.numpy(), theirs["nngp"]) <= 1e-10
    assert _rel(ours.ntk.numpy(), theirs["ntk"]) <= 1e-10


def test_float32_matches_neural_tangents_float32():
    from nt import nt_kernel

    net = wn.Serial(wn.Dense(64, 1.5, 0.05), wn.Relu(), wn.Dense(64, 1.5, 0.05), wn.Relu(), wn.Dense(1, 1.5, 0.05))
    x1, x2 = (x.float() for x in _inputs())
    ours, theirs = net.kernel(x1, x2), nt_kernel(net, x1, x2)
    assert _rel(ours.ntk.numpy(), theirs["ntk"]) <= 1e-5


def _images(shape, n1=5, n2=4):
    g = torch.Generator().manual_seed(1)
    return (torch.randn((n1,) + shape, generator=g, dtype=torch.float64),
            torch.randn((n2,) + shape, generator=g, dtype=torch.float64))


CNNS = {
    "flatten-strides": wn.Serial(
        wn.Conv(8, 3, padding="same", W_std=1.3, b_std=0.2), wn.Relu(),
        wn.Conv(8, (3, 2), stride=2, padding="valid", W_std=1.1, b_std=0.1), wn.Erf(),
        wn.Conv(8, 3, stride=(1, 2), padding="circular"), wn.Relu(), wn.Flatten(), wn.Dense(4)),
    "pools": wn.Serial(
        wn.Conv(8, 3, padding="circular", W_std=1.3, b_std=0.2), wn.Relu(), wn.AvgPool(2, padding="same"),
        wn.Conv(8, 2, padding="same", stride=2), wn.Gelu(), wn.SumPool((2, 1), stride=1, padding="circular"),
        wn.Conv(8, 2, padding="valid"), wn.GlobalAvgPool(), wn.Dense(4)),
    "standard-layernorm": wn.Serial(
        wn.Conv(8, 3, W_std=1.3, b_std=0.2, parameterization="standard"), wn.LayerNorm(), wn.Relu(),
        wn.Conv(8, 2, parameterization="standard"), wn.LayerNorm(axis=(1, 2, 3)), wn.Relu(),
        wn.AvgPool(3, stride=2, padding="valid"), wn.GlobalSumPool(), wn.Dense(4, parameterization="standard")),
    "dropout-residual": wn.Serial(
        wn.Conv(8, 3, W_std=1.4), wn.FanOut(2),
        wn.Parallel(wn.Serial(wn.Relu(), wn.Dropout(0.2), wn.Conv(8, 3)), wn.Identity()), wn.FanInSum(),
        wn.Relu(), wn.Conv(8, 3, padding="valid"), wn.Relu(), wn.GlobalAvgPool(), wn.Dense(2)),
}


@pytest.mark.parametrize("name", list(CNNS))
@pytest.mark.parametrize("shape", [(3, 9), (3, 7, 6)], ids=["1d", "2d"])
def test_cnn_kernels_match_neural_tangents(name, shape):
    from nt import nt_kernel

    net = CNNS[name]
    if len(shape) == 2 and name == "flatten-strides":
        net = wn.Serial(*[wn.Conv(l.out_channels, 3, l.stride if isinstance(l.stride, int) else 2, l.padding,
                                  W_std=l.W_std, b_std=l.b_std) if isinstance(l, wn.Conv) else l for l in net.layers])
    if len(shape) == 2 and name == "pools":
        net = wn.Serial(*[wn.SumPool(2, stride=1, padding="circular") if isinstance(l, wn.SumPool) else l
                          for l in net.layers])
    if len(shape) == 2 and name == "standard-layernorm":
        net = wn.Serial(*[wn.LayerNorm(axis=(1, 2)) if isinstance(l, wn.LayerNorm) and l.axis != 1 else l
                          for l in net.layers])
    x1, x2 = _images(shape)
    ours, theirs = net.kernel(x1, x2), nt_kernel(net, x1, x2)
    assert _rel(ours.nngp.numpy(), theirs["nngp"]) <= 1e-10
    assert _rel(ours.ntk.numpy(), theirs["ntk"]) <= 1e-10
    _assert_same_inputs_match(net, x1)


ATTENTIONS = {
    "softmax": dict(W_query_std=1.3, W_value_std=0.9, b_std=0.2),
    "softmax-sum-pos-emb": dict(pos_emb="sum", pos_emb_std=0.8, b_std=None),
    "softmax-concat-pos-emb-values": dict(pos_emb="concat", pos_emb_features=5, values_pos_emb=True),
    "relu-concat-pos-emb": dict(mechanism="relu", pos_emb="concat", W_key_std=0.7),
    "abs": dict(mechanism="abs", W_key_std=0.7),
    "sqrt-identity": dict(scaling="sqrt", mechanism="identity", W_query_std=0.6, b_std=0.1),
    "sqrt-identity-sum-pos-emb": dict(scaling="sqrt", mechanism="identity", pos_emb="sum"),
    "sqrt-identity-pos-emb-values": dict(scaling="sqrt", mechanism="identity", pos_emb="concat",
                                         values_pos_emb=True),
}


def _attention_net(params):
    return wn.Serial(wn.Dense(8, 1.2, 0.1), wn.SelfAttention(8, **params), wn.Relu(),
                     wn.SelfAttention(6, **params), wn.GlobalAvgPool(), wn.Dense(3))


@pytest.mark.parametrize("name", list(ATTENTIONS))
@pytest.mark.parametrize("shape", [(3, 7), (2, 4, 3)], ids=["1d", "2d"])
def test_attention_kernels_match_neural_tangents(name, shape):
    from nt import nt_kernel

    net = _attention_net(ATTENTIONS[name])
    x1, x2 = _images(shape)
    ours, theirs = net.kernel(x1, x2), nt_kernel(net, x1, x2)
    assert _rel(ours.nngp.numpy(), theirs["nngp"]) <= 1e-10
    assert _rel(ours.ntk.numpy(), theirs["ntk"]) <= 1e-10
    _assert_same_inputs_match(net, x1)


@pytest.mark.parametrize("name", ["softmax-sum-pos-emb", "sqrt-identity", "relu-concat-pos-emb"])
def test_masked_attention_matches_neural_tangents(name):
    from nt import nt_kernel

    net = wn.Serial(wn.Dense(8, 1.2, 0.1), wn.SelfAttention(8, **ATTENTIONS[name]), wn.Relu(),
                    wn.Dense(8), wn.SelfAttention(6, **ATTENTIONS[name]), wn.GlobalAvgPool(), wn.Dense(3))
    x1, x2 = _images((3, 7))
    mask1 = torch.zeros(x1.shape[0], 7, dtype=torch.bool)
    mask1[0, 5:] = True
    mask1[2, :3] = True
    mask2 = torch.zeros(x2.shape[0], 7, dtype=torch.bool)
    mask2[1, 4:] = True
    ours = net.kernel(x1, x2, mask1=mask1, mask2=mask2)
    theirs = nt_kernel(net, x1, x2, mask1=mask1, mask2=mask2)
    assert _rel(ours.nngp.numpy(), theirs["nngp"]) <= 1e-10
    assert _rel(ours.ntk.numpy(), theirs["ntk"]) <= 1e-10


@pytest.mark.parametrize("name", ["dropout-residual", "standard-layernorm"])
def test_compiled_rules_match_neural_tangents(name):
    # The compiled ReLU-family and Erf rules (wn.set_compile) against the same oracle.
    from nt import nt_kernel

    net = CNNS[name]
    x1, x2 = _images((3, 7, 6))
    with wn.set_compile(True):
        ours = net.kernel(x1, x2)
        _assert_same_inputs_match(net, x1)
    theirs = nt_kernel(net, x1, x2)
    assert _rel(ours.nngp.numpy(), theirs["nngp"]) <= 1e-10
    assert _rel(ours.ntk.numpy(), theirs["ntk"]) <= 1e-10


@pytest.mark.parametrize("name", ["pools", "standard-layernorm", "dropout-residual", "attention-softmax"])
def test_reproducible_kernels_match_neural_tangents(name):
    # Reproducible mode (exact products, vector-path ops, symmetric sums) against the same
    # oracle, computed in tiles of one input (each entry in its own piece).
    from nt import nt_kernel

    if name == "attention-softmax":
        net = _attention_net(ATTENTIONS["softmax-sum-pos-emb"])
        x1, x2 = _images((3, 7))
    else:
        net = CNNS[name]
        x1, x2 = _images((3, 7, 6))
    ours = net.kernel(x1, x2, reproducible=True, block_size=1)
    theirs = nt_kernel(net, x1, x2)
    assert _rel(ours.nngp.numpy(), theirs["nngp"]) <= 1e-10
    assert _rel(ours.ntk.numpy(), theirs["ntk"]) <= 1e-10
