"""Self-attention (src/widenet/layers/attention.py) and padding masks: Monte Carlo, padded ==
unpadded, transformer block, errors."""

import math

import pytest
import torch

import widenet as wn
from layers.contract import KernelContract
from oracles import monte_carlo, rel_frobenius
from widenet.errors import LayerOrderError, NoClosedFormError, ParameterError, ShapeError

TOL = 0.05  # REFERENCE: NT's Monte Carlo tests use 4-6% relative Frobenius


class TestSelfAttention(KernelContract):
    params = {"W_query_std": 1.2, "W_value_std": 1.1, "b_std": 0.2, "pos_emb": "sum", "pos_emb_std": 0.7}
    float_params = ("W_query_std", "W_value_std", "b_std", "pos_emb_std")
    input_shape = (3, 6)
    twin = "SelfAttentionModule"
    mc_samples = 100
    bad = (
        (lambda: wn.SelfAttention(0), ParameterError, r"SelfAttention: out_features must be an integer >= 1 \(got 0\)"),
        (lambda: wn.SelfAttention(8, mechanism="max"), ParameterError,
         r"SelfAttention: mechanism must be one of 'softmax', 'identity', 'relu', 'abs' \(got 'max'\)"),
        (lambda: wn.SelfAttention(8, values_pos_emb=True), ParameterError,
         r"SelfAttention: values_pos_emb=True needs pos_emb='sum' or 'concat'"),
    )

    def network(self, width, parameterization="ntk", **params):
        return wn.Serial(wn.Dense(width, 1.2, 0.1, parameterization),
                         wn.SelfAttention(width, heads=4, key_features=width, value_features=64, **params),
                         wn.Relu(), wn.GlobalAvgPool(), wn.Dense(width, 1.0, 0.1, parameterization))


def _seqs(n=4, c=3, length=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, c, length, generator=g, dtype=torch.float64)


def _mask(n=4, length=6):
    mask = torch.zeros(n, length, dtype=torch.bool)
    mask[1, 4:] = True  # two padded positions at the end
    mask[3, :2] = True  # and two at the start
    return mask


def _decay(d):
    return torch.exp(-d / 4)


def _attention_net(width=256, **attention):
    sizes = dict(heads=4, key_features=width, value_features=64)
    sizes.update(attention)
    return wn.Serial(
        wn.Dense(width, 1.2, 0.1),
        wn.SelfAttention(width, W_value_std=1.1, b_std=0.2, **sizes),
        wn.Relu(),
        wn.GlobalAvgPool(),
        wn.Dense(width),
    )


SOFTMAX_CASES = {
    "plain": dict(),
    "sum-pos-emb": dict(pos_emb="sum", pos_emb_std=0.7, W_key_std=1.5),
    "concat-pos-emb-in-values": dict(pos_emb="concat", pos_emb_features=128, values_pos_emb=True),
    "decaying-pos-emb": dict(pos_emb="sum", pos_emb_decay=_decay),
}


@pytest.mark.parametrize("masked", [False, True], ids=["unmasked", "masked"])
@pytest.mark.parametrize("case", list(SOFTMAX_CASES))
def test_softmax_attention_matches_monte_carlo(case, masked):
    x = _seqs()
    mask = _mask() if masked else None
    net = _attention_net(**SOFTMAX_CASES[case])
    k = net.kernel(x, mask1=mask)
    nngp, ntk = monte_carlo(net, x, x, n_samples=100, mask1=mask, mask2=mask)
    assert rel_frobenius(nngp, k.nngp) <= TOL
    assert rel_frobenius(ntk, k.ntk) <= TOL


def test_sqrt_scaled_identity_attention_matches_monte_carlo():
    """With 1/sqrt(d_key) scaling the attention weights stay Gaussian, so one head's estimate
    is heavy-tailed: many heads per network keep 100 samples informative (measured 2.8% /
    1.6%; with 4 heads the same error is 5-20% from sample to sample)."""
    x = _seqs(n=3, length=5)
    net = wn.Serial(wn.Dense(256), wn.SelfAttention(256, heads=64, key_features=64, value_features=4,
                                                     scaling="sqrt", mechanism="identity",
                                                     W_query_std=0.5),
                    wn.GlobalAvgPool(), wn.Dense(256))
    k = net.kernel(x)
    nngp, ntk = monte_carlo(net, x, x, n_samples=100)
    assert rel_frobenius(nngp, k.nngp) <= TOL
    assert rel_frobenius(ntk, k.ntk) <= TOL


def test_unnormalized_linear_attention_converges_to_its_kernel():
    """ReLU attention weights are not normalized, so finite key widths bias them strongly;
    the Monte Carlo error must fall like 1/width (measured about 35% at width 48, 5% at 384,
    0.5% at 1024)."""
    x = _seqs(n=3, length=5)
    errors = []
    for width in (48, 384):
        net = wn.Serial(wn.Dense(width), wn.SelfAttention(width, heads=4, key_features=width,
                                                           value_features=64, mechanism="relu",
                                                           pos_emb="sum"),
                        wn.GlobalAvgPool(), wn.Dense(width))
        k = net.kernel(x)
        nngp, ntk = monte_carlo(net, x, x, n_samples=100)
        errors.append(max(rel_frobenius(nngp, k.nngp), rel_frobenius(ntk, k.ntk)))
    assert errors[1] <= 0.08
    assert errors[1] <= errors[0] / 3


def _transformer_block(width=256):
    attention = wn.SelfAttention(width, heads=4, key_features=width, value_features=64,
                                 pos_emb="sum", b_std=0.1)
    mlp = wn.Serial(wn.Dense(width, 1.4, 0.1), wn.Relu(), wn.Dense(width, 1.0, 0.1))
    return wn.Serial(
        wn.Conv(width, 1, W_std=1.0, b_std=0.1),
        wn.FanOut(2), wn.Parallel(wn.Identity(), attention), wn.FanInSum(), wn.LayerNorm(),
        wn.FanOut(2), wn.Parallel(wn.Identity(), mlp), wn.FanInSum(), wn.LayerNorm(axis=(1, 2)),
        wn.GlobalAvgPool(),
        wn.Dense(width),
    )


@pytest.mark.parametrize("masked", [False, True], ids=["unmasked", "masked"])
def test_transformer_block_matches_monte_carlo(masked):
    x = _seqs()
    mask = _mask() if masked else None
    net = _transformer_block()
    k = net.kernel(x, mask1=mask)
    nngp, ntk = monte_carlo(net, x, x, n_samples=100, mask1=mask, mask2=mask)
    assert rel_frobenius(nngp, k.nngp) <= TOL
    assert rel_frobenius(ntk, k.ntk) <= TOL


def _padding_net():
    # Every mask-aware rule: conv zero padding, attention softmax and sums, positional
    # embeddings, LayerNorm statistics over positions, dropout and the global mean.
    return wn.Serial(
        wn.Conv(16, 3, W_std=1.3, b_std=0.2), wn.Erf(),
        wn.SelfAttention(16, pos_emb="sum", pos_emb_decay=_decay, values_pos_emb=True, b_std=0.3),
        wn.LayerNorm(axis=(1, 2)), wn.Relu(),
        wn.SelfAttention(16, scaling="sqrt", mechanism="identity", pos_emb="concat", b_std=0.1),
        wn.Gelu(), wn.Dropout(0.2),
        wn.Conv(16, 2, dilation=2), wn.Relu(), wn.GlobalAvgPool(), wn.Dense(4),
    )


@pytest.mark.parametrize("where", ["end", "start"])
def test_a_padded_sequence_has_exactly_the_kernel_of_the_unpadded_one(where):
    net = _padding_net()
    g = torch.Generator().manual_seed(3)
    lengths = [5, 3, 5, 7]
    seqs = [torch.randn(2, n, generator=g, dtype=torch.float64) for n in lengths]
    total = 9
    x = torch.randn(len(seqs), 2, total, generator=g, dtype=torch.float64) * 50  # garbage padding
    mask = torch.ones(len(seqs), total, dtype=torch.bool)
    for i, s in enumerate(seqs):
        sl = slice(0, s.shape[1]) if where == "end" else slice(total - s.shape[1], total)
        x[i, :, sl] = s
        mask[i, sl] = False
    padded = net.kernel(x, mask1=mask)
    for i, a in enumerate(seqs):
        for j, b in enumerate(seqs):
            if a.shape[1] != b.shape[1]:
                continue
            # (x_i, x_i) must come from a same-inputs call: Dropout's examples share their
            # mask with themselves only there.
            exact = net.kernel(a[None]) if i == j else net.kernel(a[None], b[None])
            for name in ("nngp", "ntk"):
                ours = getattr(padded, name)[i, j]
                assert torch.allclose(ours, getattr(exact, name)[0, 0], rtol=1e-12, atol=0), (name, i, j)
    # Pairs of different lengths: padding only the shorter one, on the same side (so the
    # sequences stay aligned as in the batch), gives the same entries.
    i, j = 0, 1  # lengths 5 and 3
    a, b = x[i:i + 1], x[j:j + 1]
    pads, flags = ((0, 2), [False] * 3 + [True] * 2) if where == "end" else ((2, 0), [True] * 2 + [False] * 3)
    only = net.kernel(seqs[i][None], torch.nn.functional.pad(seqs[j], pads)[None],
                      mask2=torch.tensor([flags]))
    assert torch.allclose(padded.nngp[i, j], only.nngp[0, 0], rtol=1e-12, atol=0)
    assert torch.allclose(padded.ntk[i, j], only.ntk[0, 0], rtol=1e-12, atol=0)
    # Same inputs and one cross call agree, and padding never leaks into the result.
    cross = net.kernel(a, b, mask1=mask[i:i + 1], mask2=mask[j:j + 1])
    assert torch.allclose(cross.nngp[0, 0], padded.nngp[i, j], rtol=1e-12, atol=0)


def test_spatial_outputs_are_zero_at_padded_positions_and_the_module_agrees():
    x, mask = _seqs(), _mask()
    net = wn.Serial(wn.Dense(8), wn.SelfAttention(8, pos_emb="sum"), wn.Relu())
    k = net.kernel(x, mask1=mask)
    assert k.layout == "full" and k.nngp.shape == (4, 4, 6, 6)
    assert torch.all(k.nngp[1, :, 4:, :] == 0) and torch.all(k.var1[3, :2] == 0)
    module = net.module((3, 6), seed=1, dtype=torch.float64)
    y = module(x, mask=mask)
    assert torch.all(y[1, :, 4:] == 0) and torch.all(y[3, :, :2] == 0)
    # Garbage at padded positions changes nothing, in the module and in the kernel.
    x2 = x.clone()
    x2[1, :, 4:] = 1e3
    assert torch.equal(module(x2, mask=mask), y)
    assert torch.equal(net.kernel(x2, mask1=mask).nngp, k.nngp)


def test_attention_module_is_reproducible_and_lazy():
    net = wn.Serial(wn.Dense(8), wn.SelfAttention(8, heads=2, key_features=4, value_features=3, pos_emb="concat"))
    x = _seqs()
    eager = net.module((3, 6), seed=5, dtype=torch.float64)
    lazy = net.module(seed=5, dtype=torch.float64)
    assert torch.equal(eager(x), lazy(x))
    shapes = {name: tuple(p.shape) for name, p in lazy.named_parameters()}
    assert shapes["1.W_key"] == (2, 16, 4) and shapes["1.W_value"] == (2, 8, 3)
    assert shapes["1.W_out"] == (8, 6) and shapes["1.pos_emb"] == (8, 6)
    with pytest.raises(ShapeError, match="positions"):
        lazy(_seqs(length=7))


def test_attention_and_mask_errors_are_clear():
    x = _seqs()
    with pytest.raises(NoClosedFormError, match="monte_carlo"):
        wn.Serial(wn.Dense(4), wn.SelfAttention(4, scaling="sqrt")).kernel(x)
    with pytest.raises(ParameterError, match="values_pos_emb"):
        wn.SelfAttention(4, values_pos_emb=True)
    with pytest.raises(ParameterError, match="pos_emb_features"):
        wn.SelfAttention(4, pos_emb="sum", pos_emb_features=3)
    with pytest.raises(ParameterError, match="mechanism"):
        wn.SelfAttention(4, mechanism="sigmoid")
    with pytest.raises(ShapeError, match="spatial axes"):
        wn.SelfAttention(4).kernel(torch.randn(3, 5, dtype=torch.float64))
    diagonal = wn.Dense(4).kernel(x, layout="diagonal")
    with pytest.raises(LayerOrderError, match="layout"):
        wn.SelfAttention(4).apply(diagonal)
    net = wn.Serial(wn.Dense(4), wn.SelfAttention(4), wn.GlobalAvgPool())
    with pytest.raises(ShapeError, match=r"mask1 must have shape \(4, 6\)"):
        net.kernel(x, mask1=torch.zeros(4, 5, dtype=torch.bool))
    with pytest.raises(ParameterError, match="boolean"):
        net.kernel(x, mask1=torch.zeros(4, 6))
    with pytest.raises(ParameterError, match="every position of input 2"):
        full = torch.zeros(4, 6, dtype=torch.bool)
        full[2] = True
        net.kernel(x, mask1=full)
    with pytest.raises(ParameterError, match="mask2 must be None"):
        net.kernel(x, mask2=_mask())
    with pytest.raises(ShapeError, match="none to pad"):
        wn.Dense(3).kernel(torch.randn(4, 3, dtype=torch.float64), mask1=torch.zeros(4, 3, dtype=torch.bool))
    for layer in (wn.AvgPool(2), wn.Flatten(), wn.Conv(4, 3, stride=2), wn.Conv(4, 3, padding="circular")):
        bad = wn.Serial(wn.Dense(4), layer)
        with pytest.raises(ShapeError, match="padding masks"):
            bad.kernel(x, mask1=_mask())
        with pytest.raises(ShapeError, match="padding masks"):
            bad.module((3, 6), seed=0, dtype=torch.float64)(x, mask=_mask())


def test_apply_on_a_full_kernel_equals_the_kernel_call():
    x = _seqs()
    att = wn.SelfAttention(8, pos_emb="concat", b_std=0.3)
    first = wn.Serial(wn.Dense(8), wn.Relu(), wn.Dense(8))
    direct = wn.Serial(first, att).kernel(x, layout="full")
    applied = att.apply(first.kernel(x, layout="full"))
    assert torch.allclose(applied.nngp, direct.nngp, rtol=1e-13, atol=0)
    assert torch.allclose(applied.ntk, direct.ntk, rtol=1e-13, atol=0)


def test_position_covariance():
    r = wn.position_covariance((2, 3), _decay, p=1.0)
    assert r.shape == (6, 6)
    assert math.isclose(float(r[0, 5]), math.exp(-3 / 4))  # (0,0) to (1,2): |1| + |2|
    assert torch.equal(wn.position_covariance((4,)), torch.eye(4, dtype=torch.float64))
