"""Fused kernel rules (src/widenet/_engine/fused.py, fused.cpp) against the eager rules they
replace, on every tile layout, and the conditions under which they run."""

import math

import pytest
import torch

import widenet as wn
from widenet._engine import exact, fused, scratch
from widenet.layers.relu import _abrelu_rule

from toolchain import fused_or_skip


@pytest.fixture(autouse=True)
def _fused_rules():
    fused_or_skip()


def _tile(shape, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(shape, generator=g, dtype=torch.float64) - 0.5).to(dtype), torch.rand(shape, generator=g, dtype=torch.float64).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("layout", ["full-1d", "full-2d", "diagonal", "features"])
@pytest.mark.parametrize("with_ntk", [True, False])
def test_the_fused_relu_family_rule_equals_the_eager_one_within_a_few_ulps(dtype, layout, with_ntk):
    g = torch.Generator().manual_seed(1)
    b, c, spatial = 5, 7, {"full-1d": (9,), "full-2d": (3, 4), "diagonal": (6,), "features": ()}[layout]
    n = math.prod(spatial)
    var1 = (torch.rand((b,) + spatial, generator=g, dtype=torch.float64) + 0.2).to(dtype)
    var2 = (torch.rand((c,) + spatial, generator=g, dtype=torch.float64) + 0.2).to(dtype)
    var1.view(-1)[3] = 0  # a zero variance: the angle is pi/2
    full = layout.startswith("full")
    shape = (b, c) + (spatial + spatial if full else spatial)
    K, T = _tile(shape, dtype, 2)
    d = len(spatial)
    q1 = var1.reshape(var1.shape[:1] + (1,) + var1.shape[1:] + ((1,) * d if full else ()))
    q2 = var2.reshape((1,) + var2.shape[:1] + ((1,) * d if full else ()) + var2.shape[1:])
    zero = (q1 == 0) | (q2 == 0)
    factor, half = (0.3 - 1.2) ** 2 / (2 * math.pi), (0.3**2 + 1.2**2) / 2
    eager_k, eager_t = K.clone(), T.clone()
    _abrelu_rule(eager_k, eager_t if with_ntk else None, q1, q2, zero, factor, half)
    fused_k, fused_t = K.clone(), T.clone()
    kwargs = dict(factor=factor, half=half)
    if full:
        fused.abrelu(fused_k, fused_t if with_ntk else None, var1.reshape(b * n), var2.reshape(c, n),
                     C=c, S=n, L=n, q1_scalar=True, **kwargs)
    elif layout == "diagonal":
        fused.abrelu(fused_k, fused_t if with_ntk else None, var1, var2, C=c, S=1, L=n, q1_scalar=False, **kwargs)
    else:
        fused.abrelu(fused_k, fused_t if with_ntk else None, var1, var2.reshape(1, c), C=1, S=1, L=c,
                     q1_scalar=True, **kwargs)
    eps = torch.finfo(dtype).eps
    # atan2 within 3.5 ulp of pi, carried into the tile by at most a few roundings.
    assert (fused_k - eager_k).abs().max() <= 16 * eps * eager_k.abs().max()
    if with_ntk:
        assert (fused_t - eager_t).abs().max() <= 16 * eps * eager_t.abs().max()
    else:
        assert torch.equal(fused_t, T)


def test_fused_rules_run_only_where_they_apply(monkeypatch):
    x = torch.randn(3, dtype=torch.float64)
    assert fused.enabled(x, 0.5)
    assert not fused.enabled(x.requires_grad_())
    assert not fused.enabled(torch.randn(3, dtype=torch.float16))
    with exact.enabled():
        assert not fused.enabled(torch.randn(3, dtype=torch.float64))
    monkeypatch.setattr(fused, "_ENABLED", False)
    assert not fused.enabled(torch.randn(3, dtype=torch.float64))


def test_kernels_with_and_without_fused_rules_agree(monkeypatch):
    net = wn.Serial(wn.Conv(8, 3, W_std=1.4, b_std=0.1), wn.Relu(), wn.AvgPool(2, stride=1, padding="same"),
                    wn.Conv(8, 3), wn.LeakyRelu(0.2), wn.Flatten(), wn.Dense(4), wn.Abs(), wn.Dense(1))
    x = torch.randn(7, 2, 5, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    with_fused = net.kernel(x, x[:3])
    monkeypatch.setattr(fused, "_ENABLED", False)
    eager = net.kernel(x, x[:3])
    for name in ("nngp", "ntk"):
        a, b = getattr(with_fused, name), getattr(eager, name)
        assert (a - b).abs().max() <= 64 * torch.finfo(a.dtype).eps * b.abs().max(), name


def test_the_extension_refuses_variances_that_do_not_match_the_tile():
    K, T = _tile((2, 3, 4), torch.float64, 4)
    with pytest.raises(RuntimeError, match="variances do not match the tile"):
        fused.abrelu(K, T, torch.ones(3, 4, dtype=torch.float64), torch.ones(3, 4, dtype=torch.float64),
                     C=3, S=1, L=4, q1_scalar=False, factor=0.1, half=0.5)


@pytest.mark.parametrize("shape,groups,k,dil,lo", [((3, 4, 9, 9), [[2, 3]], 3, 1, 1), ((2, 2, 4, 5, 4, 5), [[2, 4], [3, 5]], 3, 1, 1),
                                                   ((2, 3, 6, 6), [[2], [3]], 2, 1, 0), ((2, 7, 11), [[2]], 3, 2, 2),
                                                   ((2, 2, 3, 3), [[2, 3]], 5, 1, 2)])
def test_fused_window_sums_equal_the_eager_ones_bit_for_bit(monkeypatch, shape, groups, k, dil, lo):
    from widenet._engine import windows

    t = torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    args = ([k] * len(groups), [1] * len(groups), [dil] * len(groups), [(lo, (k - 1) * dil - lo)] * len(groups), False)
    with scratch.reusing():
        ours = windows.window_sum(t, groups, *args)
        monkeypatch.setattr(fused, "_ENABLED", False)
        eager = windows.window_sum(t, groups, *args)
    assert torch.equal(ours, eager)


def test_the_build_folder_holds_its_own_copy_of_the_source(monkeypatch, tmp_path):
    # Every process with the same source, flags and torch installation builds in, and reuses,
    # one folder named by them; the copy there is what ninja sees, whatever the checkout's path.
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    folder = fused._build_directory("widenet_fused_test")
    assert folder == tmp_path / "widenet_fused_test"
    assert (folder / "fused.cpp").read_bytes() == fused._SOURCE.read_bytes()
    (folder / "fused.cpp").write_bytes(b"// stale")
    assert fused._build_directory("widenet_fused_test") == folder
    assert (folder / "fused.cpp").read_bytes() == fused._SOURCE.read_bytes()
    assert [p.name for p in folder.iterdir()] == ["fused.cpp"]


def test_a_stale_build_lock_is_removed_and_a_live_one_waited_for(tmp_path, caplog):
    # torch waits forever on a lock left by a killed build; the loader removes one older than
    # the limit (with a logged reason) and waits while a younger one exists.
    import os
    import threading
    import time

    lock = tmp_path / "lock"
    lock.write_text("")
    old = time.time() - 2 * fused._STALE_LOCK_S
    os.utime(lock, (old, old))
    with caplog.at_level("WARNING", logger="widenet"):
        fused._wait_for_build_lock(tmp_path)
    assert not lock.exists() and "stale build lock" in caplog.text

    lock.write_text("")  # a build in progress that finishes after 0.3 s
    timer = threading.Timer(0.3, lock.unlink)
    start = time.perf_counter()
    timer.start()
    fused._wait_for_build_lock(tmp_path, poll=0.02)
    assert time.perf_counter() - start >= 0.25 and not lock.exists()

    lock.write_text("")  # a young lock whose holder died: removed once it is stale_after old
    fused._wait_for_build_lock(tmp_path, stale_after=0.2, poll=0.02)
    assert not lock.exists()
    fused._wait_for_build_lock(tmp_path)  # no lock: returns at once
