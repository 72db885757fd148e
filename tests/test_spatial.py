"""Convolution, pooling, normalization and dropout: Monte Carlo, layouts, tiles, memory."""

import json
import subprocess
import sys
import textwrap

import pytest
import torch

import widenet as wn
from oracles import monte_carlo, rel_frobenius
from widenet.errors import LayerOrderError, NoClosedFormError, ParameterError, ShapeError

TOL = 0.05  # REFERENCE: NT's Monte Carlo tests use 4-6% relative Frobenius


def _images(shape, n1=3, n2=2, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn((n1,) + shape, generator=g, dtype=dtype),
            torch.randn((n2,) + shape, generator=g, dtype=dtype))


# Every padding with stride 1 and 2, dilation, every head, in 1-D and 2-D.
CASES = {
    "same-s1/valid-s2/globalavg": (("same", 1, 1), ("valid", 2, 1), "globalavg"),
    "circular-s2/same-s1-dil2/flatten": (("circular", 2, 1), ("same", 1, 2), "flatten"),
    "valid-s1/circular-s1/avgpool-same": (("valid", 1, 1), ("circular", 1, 1), "avgpool"),
    "same-s2/valid-s1/sumpool-valid": (("same", 2, 1), ("valid", 1, 1), "sumpool"),
}


def _cnn(case, parameterization, width=256):
    (p1, s1, d1), (p2, s2, d2), head = CASES[case]
    heads = {
        "globalavg": [wn.GlobalAvgPool()],
        "flatten": [wn.Flatten()],
        "avgpool": [wn.AvgPool(2, stride=1, padding="same"), wn.GlobalSumPool()],
        "sumpool": [wn.SumPool(2, stride=1, padding="valid"), wn.Flatten()],
    }[head]
    return wn.Serial(
        wn.Conv(width, 3, stride=s1, padding=p1, dilation=d1, W_std=1.4, b_std=0.2, parameterization=parameterization),
        wn.Relu(),
        wn.Conv(width, 2, stride=s2, padding=p2, dilation=d2, W_std=1.2, b_std=0.1, parameterization=parameterization),
        wn.Erf(),
        *heads,
        wn.Dense(512, 1.1, 0.1, parameterization),
    )


@pytest.mark.parametrize("parameterization", ["ntk", "standard"])
@pytest.mark.parametrize("shape", [(2, 7), (2, 6, 5)], ids=["1d", "2d"])
@pytest.mark.parametrize("case", list(CASES))
def test_cnn_kernels_match_monte_carlo(case, shape, parameterization):
    net = _cnn(case, parameterization)
    x1, x2 = _images(shape)
    exact = net.kernel(x1, x2)
    nngp, ntk = monte_carlo(net, x1, x2, n_samples=80)
    assert rel_frobenius(nngp, exact.nngp) < TOL
    assert rel_frobenius(ntk, exact.ntk) < TOL


def test_finite_width_error_of_a_pooled_cnn_falls_with_width():
    # The estimate must approach the kernel, not merely land near it: the bias is O(1/width).
    x1, x2 = _images((1, 6), n1=2, n2=2, seed=3)
    errors = []
    for width in (16, 512):
        net = wn.Serial(wn.Conv(width, 3, W_std=1.5, b_std=0.3), wn.Relu(), wn.Conv(width, 3), wn.Relu(),
                        wn.GlobalAvgPool(), wn.Dense(width))
        exact = net.kernel(x1, x2)
        nngp, _ = monte_carlo(net, x1, x2, n_samples=200, ntk=False)
        errors.append(rel_frobenius(nngp, exact.nngp))
    assert errors[1] < errors[0] / 2 and errors[1] < 0.03


def test_layernorm_matches_monte_carlo():
    x1, x2 = _images((3, 4, 3), seed=1)
    x1 = x1 * torch.tensor([0.5, 1.0, 2.0], dtype=x1.dtype).reshape(1, 3, 1, 1)  # unequal scales
    net = wn.Serial(wn.Conv(512, 3, W_std=1.3, b_std=0.4), wn.LayerNorm(), wn.Relu(),
                    wn.Conv(512, 2, padding="valid"), wn.LayerNorm(axis=(1, 2, 3)), wn.Gelu(),
                    wn.GlobalAvgPool(), wn.Dense(64))
    exact = net.kernel(x1, x2)
    nngp, ntk = monte_carlo(net, x1, x2, n_samples=60)
    assert rel_frobenius(nngp, exact.nngp) < TOL
    assert rel_frobenius(ntk, exact.ntk) < TOL


def test_dropout_matches_monte_carlo_with_its_documented_semantics():
    # One forward pass of x draws one mask per example: an example shares its mask with
    # itself (the diagonal), and distinct examples are independent.
    x, _ = _images((2, 5), n1=4, seed=2)
    net = wn.Serial(wn.Conv(512, 3, W_std=1.3, b_std=0.2), wn.Relu(), wn.Dropout(0.3),
                    wn.Conv(512, 3), wn.Relu(), wn.Dropout(0.2), wn.GlobalAvgPool(), wn.Dense(256))
    exact = net.kernel(x)
    total = torch.zeros(4, 4, dtype=x.dtype)
    n = 200
    for s in range(n):
        model = net.module(tuple(x.shape[1:]), seed=s, dtype=x.dtype)
        torch.manual_seed(10_000 + s)
        with torch.no_grad():
            f = model(x)
        total += f @ f.T / f.shape[1]
    assert rel_frobenius(total / n, exact.nngp) < TOL
    # The diagonal is larger than without dropout, the off-diagonal the same in expectation.
    plain = wn.Serial(*[layer for layer in net.layers if not isinstance(layer, wn.Dropout)]).kernel(x)
    assert bool((exact.nngp.diagonal() > plain.nngp.diagonal()).all())
    assert wn.Dropout(0.3, mode="eval").apply(plain).nngp.equal(plain.nngp)


def test_residual_myrtle_style_network_matches_monte_carlo():
    block = wn.Serial(wn.FanOut(2), wn.Parallel(wn.Serial(wn.Relu(), wn.Conv(256, 3, W_std=1.2), wn.Relu(),
                                                          wn.Conv(256, 3, W_std=1.2)), wn.Identity()),
                      wn.FanInSum())
    net = wn.Serial(wn.Conv(256, 3, W_std=1.4, b_std=0.1), block, wn.Relu(), wn.AvgPool(2),
                    wn.Conv(256, 3), wn.Relu(), wn.GlobalAvgPool(), wn.Dense(64))
    x1, x2 = _images((2, 4, 4), seed=4)
    exact = net.kernel(x1, x2)
    nngp, ntk = monte_carlo(net, x1, x2, n_samples=60)
    assert rel_frobenius(nngp, exact.nngp) < TOL
    assert rel_frobenius(ntk, exact.ntk) < TOL


LAYOUT_NETS = {
    "conv-relu": wn.Serial(wn.Conv(8, 3, W_std=1.5, b_std=0.1), wn.Relu(), wn.Conv(8, 2, stride=2, padding="valid"),
                           wn.Tanh(), wn.Conv(8, 3, padding="circular")),
    "dropout-layernorm": wn.Serial(wn.Conv(8, 3), wn.LayerNorm(), wn.Gelu(), wn.Dropout(0.25), wn.Conv(8, (3, 1)),
                                   wn.LayerNorm(axis=(1, 3)), wn.Erf(), wn.Dense(4)),
    "residual-flatten": wn.Serial(wn.Conv(8, 3), wn.FanOut(2), wn.Parallel(wn.Relu(), wn.Sin()),
                                  wn.FanInConcat(), wn.Conv(8, 1), wn.Relu(), wn.Flatten(), wn.Dense(3)),
}


@pytest.mark.parametrize("name", list(LAYOUT_NETS))
def test_diagonal_layout_equals_the_diagonal_of_the_full_layout(name):
    net = LAYOUT_NETS[name]
    x1, x2 = _images((2, 5, 4), n1=4, n2=3, seed=5)
    for a, b in ((x1, None), (x1, x2)):
        diag, full = net.kernel(a, b, layout="diagonal"), net.kernel(a, b, layout="full")
        if not diag.spatial:  # after Flatten both give (N1, N2)
            torch.testing.assert_close(diag.nngp, full.nngp, rtol=1e-13, atol=0)
            torch.testing.assert_close(diag.ntk, full.ntk, rtol=1e-13, atol=0)
            continue
        n = diag.nngp.shape[2] * diag.nngp.shape[3]
        take = lambda t, lead: t.reshape(lead + (n, n)).diagonal(dim1=-2, dim2=-1).reshape(  # noqa: E731
            lead + diag.spatial)
        lead = tuple(diag.nngp.shape[:2])
        assert full.layout == "full" and diag.layout == "diagonal"
        torch.testing.assert_close(take(full.nngp, lead), diag.nngp, rtol=1e-13, atol=1e-15)
        torch.testing.assert_close(take(full.ntk, lead), diag.ntk, rtol=1e-13, atol=1e-15)
        torch.testing.assert_close(take(full.var1, lead[:1]), diag.var1, rtol=1e-13, atol=1e-15)


def test_auto_layout_is_diagonal_without_pooling_and_full_with_it():
    x, _ = _images((1, 6, 6), n1=3)
    assert LAYOUT_NETS["conv-relu"].kernel(x).layout == "diagonal"
    pooled = wn.Serial(wn.Conv(4, 3), wn.Relu(), wn.AvgPool(2), wn.Conv(4, 3))
    k = pooled.kernel(x)
    assert k.layout == "full" and k.nngp.shape == (3, 3, 3, 3, 3, 3)
    with pytest.raises(ParameterError, match="layout must be 'auto' or 'full' for this network"):
        pooled.kernel(x, layout="diagonal")


POOLED = wn.Serial(wn.Conv(16, 3, W_std=1.5, b_std=0.1), wn.Relu(), wn.Conv(16, 3, stride=2), wn.Gelu(),
                   wn.SumPool(2, stride=1, padding="circular"), wn.Conv(16, 2), wn.Relu(), wn.GlobalAvgPool(),
                   wn.Dense(2))


@pytest.mark.parametrize("block_size", [1, 2, 5, 13])
def test_tiles_change_nothing_and_same_input_kernels_are_exactly_symmetric(block_size):
    x1, x2 = _images((2, 6, 5), n1=11, n2=7, seed=6)
    ref_same, ref_cross = POOLED.kernel(x1, block_size=1000), POOLED.kernel(x1, x2, block_size=1000)
    same, cross = POOLED.kernel(x1, block_size=block_size), POOLED.kernel(x1, x2, block_size=block_size)
    for name in ("nngp", "ntk"):
        a = getattr(same, name)
        assert torch.equal(a, a.T)
        torch.testing.assert_close(a, getattr(ref_same, name), rtol=1e-13, atol=0)
        torch.testing.assert_close(getattr(cross, name), getattr(ref_cross, name), rtol=1e-13, atol=0)
    assert torch.equal(same.nngp.diagonal(), same.var1)
    joint = POOLED.kernel(torch.cat([x1, x2]), block_size=block_size)
    torch.testing.assert_close(cross.nngp, joint.nngp[:11, 11:], rtol=1e-12, atol=0)
    torch.testing.assert_close(cross.ntk, joint.ntk[:11, 11:], rtol=1e-12, atol=0)


def test_a_small_memory_budget_only_shrinks_the_tiles():
    x1, _ = _images((1, 8, 8), n1=9, seed=7)
    big = POOLED.kernel(x1)
    small = POOLED.kernel(x1, memory="2MB")
    torch.testing.assert_close(small.nngp, big.nngp, rtol=1e-13, atol=0)
    torch.testing.assert_close(small.ntk, big.ntk, rtol=1e-13, atol=0)
    with pytest.raises(ParameterError, match=r"memory must be at least \d+ bytes to hold one pair"):
        POOLED.kernel(x1, memory=10_000)
    with pytest.raises(ParameterError, match=r"memory must be a positive number of bytes"):
        POOLED.kernel(x1, memory="lots")


def test_pooled_cnn_kernel_runs_within_its_memory_budget():
    # Naively (all pairs of 16x16 images at once) this kernel needs 40 * 40 * 256^2 * 8 bytes
    # = 840 MB per intermediate; with a 48 MB budget the peak RSS must grow by about that.
    script = textwrap.dedent("""
        import json, torch, widenet as wn
        from widenet.testing.memory import peak_rss
        torch.set_num_threads(1)
        net = wn.Serial(wn.Conv(8, 3), wn.Relu(), wn.Conv(8, 3), wn.Relu(), wn.GlobalAvgPool(), wn.Dense(1))
        x = torch.randn(40, 1, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
        net.kernel(x[:2], memory="48MB")  # warm up: libraries, allocator
        before = peak_rss()
        k = net.kernel(x, memory="48MB")
        after = peak_rss()
        print(json.dumps({"growth": after - before, "finite": bool(torch.isfinite(k.ntk).all())}))
    """)
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["finite"]
    naive = 40 * 40 * 256**2 * 8
    assert result["growth"] < 48e6 * 1.25, result
    assert result["growth"] < naive / 10


def test_conv_module_is_an_nn_conv_with_the_stated_initialization():
    x, _ = _images((3, 6, 5), n1=2)
    std = wn.Conv(5, 3, padding="same", W_std=1.3, b_std=0.4, parameterization="standard").module((3, 6, 5), seed=1,
                                                                                              dtype=x.dtype)
    ref = torch.nn.Conv2d(3, 5, 3, padding=1, dtype=x.dtype)
    with torch.no_grad():
        ref.weight.copy_(std.weight)
        ref.bias.copy_(std.bias)
    torch.testing.assert_close(std(x), ref(x))
    # ntk parameterization: N(0, 1) parameters scaled in the forward pass.
    ntk = wn.Conv(5, 3, W_std=1.3, b_std=0.4).module((3, 6, 5), seed=1, dtype=x.dtype)
    expected = torch.nn.functional.conv2d(x, ntk.weight, padding=1) * (1.3 / 27**0.5)
    torch.testing.assert_close(ntk(x), expected + 0.4 * ntk.bias.reshape(1, -1, 1, 1))
    lazy = wn.Conv(5, 3, stride=2, padding="circular").module(seed=1, dtype=x.dtype)
    eager = wn.Conv(5, 3, stride=2, padding="circular").module((3, 6, 5), seed=1, dtype=x.dtype)
    torch.testing.assert_close(lazy(x), eager(x), rtol=0, atol=0)
    assert lazy(x).shape == (2, 5, 3, 3)


def test_maxpool_and_batchnorm_have_twins_but_no_kernel():
    x, _ = _images((2, 6, 6), n1=4)
    for layer in (wn.MaxPool(2), wn.BatchNorm()):
        net = wn.Serial(wn.Conv(4, 3), wn.Relu(), layer, wn.GlobalAvgPool(), wn.Dense(1))
        with pytest.raises(NoClosedFormError, match=r"wn\.monte_carlo"):
            net.kernel(x)
        assert net.module((2, 6, 6), seed=0, dtype=x.dtype)(x).shape == (4, 1)
        assert net.module(seed=0, dtype=x.dtype)(x).shape == (4, 1)


def test_spatial_errors_are_clear():
    x, _ = _images((2, 4, 4), n1=2)
    with pytest.raises(ShapeError, match=r"Conv: needs inputs with spatial axes"):
        wn.Conv(4, 3).kernel(torch.randn(3, 5, dtype=torch.float64))
    with pytest.raises(ShapeError, match=r"padding='valid' each spatial size must be at least the \(dilated\) window 5 \(got 4\)"):
        wn.Conv(4, 3, padding="valid", dilation=2).kernel(x)
    with pytest.raises(ParameterError, match=r"Conv: padding must be one of 'same', 'valid', 'circular' \(got 'SAME'\)"):
        wn.Conv(4, 3, padding="SAME")
    with pytest.raises(ParameterError, match=r"Conv: kernel_size must be an int or a sequence of 2 ints"):
        wn.Conv(4, (3, 3, 3)).kernel(x)
    with pytest.raises(LayerOrderError, match=r"LayerNorm: its input must be Gaussian"):
        wn.Serial(wn.Conv(4, 3), wn.Relu(), wn.LayerNorm()).kernel(x)
    with pytest.raises(LayerOrderError, match=r"Relu: its input must be Gaussian"):
        wn.Serial(wn.Conv(4, 3), wn.Flatten(), wn.Relu()).kernel(x)
    with pytest.raises(ParameterError, match=r"Dropout: rate must be a finite float >= 0 and < 1 \(got 1.0\)"):
        wn.Dropout(1.0)
    with pytest.raises(ShapeError, match=r"x2 must have shape \(N2, 2, 4, 4\) to match x1"):
        wn.Conv(4, 3).kernel(x, torch.randn(2, 2, 4, 5, dtype=torch.float64))
