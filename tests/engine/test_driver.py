"""The tile driver (src/widenet/_engine/driver.py): structural properties of every kernel
(exact symmetry, batch invariance, tiles, dtypes, layouts, memory budgets) and input checks
before any work."""

import json
import math
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

import widenet as wn
import widenet.layers.dense as dense_module
from widenet.errors import NonFiniteInputError, ParameterError, ShapeError

from nets import NETS, inputs as _x

X = torch.randn(4, 3, dtype=torch.float64)

@pytest.mark.parametrize("name", list(NETS))
def test_same_inputs_kernel_is_exactly_symmetric_and_psd(name):
    k = NETS[name].kernel(_x(23))
    for m in (k.nngp, k.ntk):
        assert torch.equal(m, m.T)
        assert torch.linalg.eigvalsh(m).min() > -1e-10 * m.diagonal().max()
    assert torch.equal(k.nngp.diagonal(), k.var1)
    assert k.same_inputs and k.var2 is None


@pytest.mark.parametrize("name", list(NETS))
def test_batch_invariance_and_cross_kernel_consistency(name):
    net, x = NETS[name], _x(30, seed=1)
    full = net.kernel(x)
    sub = net.kernel(x[5:12], x[20:29])
    torch.testing.assert_close(sub.nngp, full.nngp[5:12, 20:29], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(sub.ntk, full.ntk[5:12, 20:29], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(sub.var1, full.var1[5:12], rtol=1e-13, atol=0)
    torch.testing.assert_close(sub.var2, full.var1[20:29], rtol=1e-13, atol=0)


@pytest.mark.parametrize("block_size", [1, 4, 7, 29, 1000])
def test_tile_size_does_not_change_the_result(block_size):
    net, x1, x2 = NETS["relu"], _x(29, seed=2), _x(17, seed=3)
    ref = net.kernel(x1, x2)
    k = net.kernel(x1, x2, block_size=block_size)
    # Equal up to the summation order of the tiles' matrix products.
    torch.testing.assert_close(k.nngp, ref.nngp, rtol=1e-14, atol=1e-14)
    torch.testing.assert_close(k.ntk, ref.ntk, rtol=1e-14, atol=1e-14)
    ref_same = net.kernel(x1)
    k_same = net.kernel(x1, block_size=block_size)
    torch.testing.assert_close(k_same.nngp, ref_same.nngp, rtol=1e-14, atol=1e-14)
    torch.testing.assert_close(k_same.ntk, ref_same.ntk, rtol=1e-14, atol=1e-14)


@pytest.mark.parametrize("name", list(NETS))
def test_float32_agrees_with_float64(name):
    net, x = NETS[name], _x(20, seed=4)
    k64 = net.kernel(x)
    k32 = net.kernel(x.float())
    assert k32.nngp.dtype == torch.float32
    torch.testing.assert_close(k32.nngp.double(), k64.nngp, rtol=1e-4, atol=1e-4 * k64.nngp.abs().max())
    torch.testing.assert_close(k32.ntk.double(), k64.ntk, rtol=1e-4, atol=1e-4 * k64.ntk.abs().max())


def test_nngp_only_does_no_ntk_work(monkeypatch):
    seen = []
    original = dense_module.Dense._rule

    def spy(self, flow):
        seen.append(flow.ntk is None)
        return original(self, flow)

    monkeypatch.setattr(dense_module.Dense, "_rule", spy)
    net, x = NETS["relu"], _x(7)
    nngp = net.nngp(x)
    assert seen and all(seen)
    monkeypatch.undo()
    assert torch.equal(nngp, net.kernel(x).nngp)
    assert torch.equal(net.ntk(x), net.kernel(x).ntk)


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


def _images(shape, n1=3, n2=2, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn((n1,) + shape, generator=g, dtype=dtype),
            torch.randn((n2,) + shape, generator=g, dtype=dtype))


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
        import json, sys, torch, widenet as wn
        sys.path.insert(0, TESTS)
        from nt.memory import peak_rss
        torch.set_num_threads(1)
        net = wn.Serial(wn.Conv(8, 3), wn.Relu(), wn.Conv(8, 3), wn.Relu(), wn.GlobalAvgPool(), wn.Dense(1))
        x = torch.randn(40, 1, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
        net.kernel(x[:2], memory="48MB")  # warm up: libraries, allocator
        before = peak_rss()
        k = net.kernel(x, memory="48MB")
        after = peak_rss()
        print(json.dumps({"growth": after - before, "finite": bool(torch.isfinite(k.ntk).all())}))
    """)
    script = script.replace("TESTS", repr(str(Path(__file__).resolve().parents[1])))
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["finite"]
    naive = 40 * 40 * 256**2 * 8
    assert result["growth"] < 48e6 * 1.25, result
    assert result["growth"] < naive / 10


# ---- the dtype policy and results that cannot exist -------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs_are_computed_in_float32(dtype):
    net = NETS["relu"]
    x = _x(5, dtype=torch.float32)
    k = net.kernel(x.to(dtype))
    assert k.nngp.dtype == k.ntk.dtype == torch.float32
    expected = net.kernel(x.to(dtype).float())
    assert torch.equal(k.ntk, expected.ntk) and bool(torch.isfinite(k.ntk).all())
    # the second set follows the first: float32 against half is computed in float32
    assert net.kernel(x, x.to(dtype)).ntk.dtype == torch.float32


@pytest.mark.parametrize("bad, shown", [
    (torch.ones(4, 5, dtype=torch.int64), "torch.int64"), (torch.ones(4, 5, dtype=torch.bool), "torch.bool"),
    (np.ones((4, 5), dtype=np.int32), "int32"), ([[1, 2, 3, 4, 5]], "int64"),
])
def test_integer_and_bool_inputs_are_refused_with_their_dtype(bad, shown):
    with pytest.raises(ParameterError, match=rf"x1 must hold floating-point numbers \(got dtype {shown}\)"):
        NETS["relu"].kernel(bad)
    with pytest.raises(ParameterError, match=rf"x2 must hold floating-point numbers \(got dtype {shown}\)"):
        NETS["relu"].kernel(_x(3), bad)


def test_a_result_larger_than_the_available_memory_is_refused_before_any_tile(monkeypatch):
    import widenet._engine.driver as driver

    monkeypatch.setattr(driver, "available_memory", lambda device: 10_000)
    ran = []
    monkeypatch.setattr(driver, "_plan", lambda *a: ran.append(a))
    with pytest.raises(wn.errors.OutOfMemoryError,
                       match=r"the NNGP and NTK of 30 x 40 inputs \(torch.float64\) take 19.2 kB, more than "
                             r"the 10 kB of memory available; .*widenet.blocked.compute"):
        NETS["relu"].kernel(_x(30), _x(40))
    with pytest.raises(MemoryError, match=r"the NNGP of 40 x 40 inputs"):
        NETS["relu"].nngp(_x(40))
    assert ran == []


def test_a_kernel_that_leaves_the_dtypes_range_raises_instead_of_returning_inf():
    x = torch.full((3, 4), 1e30, dtype=torch.float32)
    with pytest.raises(wn.errors.NumericalError, match=r"entries of the NNGP are NaN or Inf although the inputs "
                                                       r"are finite \(largest \|x1\| = 1e\+30, dtype torch.float32\)"):
        NETS["relu"].kernel(x)
    assert bool(torch.isfinite(NETS["relu"].kernel(x.double()).ntk).all())
