"""Own covariances computed once per input and replayed by later tiles: the same kernels, bit for
bit, with each input's covariances computed once instead of once per tile."""

import pytest
import torch

import widenet as wn
from widenet._engine import driver as _driver
from widenet.layers import Nonlinearity

D = torch.float64


def _nets():
    g = torch.Generator().manual_seed(11)
    pooled = wn.Serial(wn.Conv(4, 3, W_std=1.4, b_std=0.1), wn.Relu(), wn.Conv(4, 2, padding="valid"),
                       wn.Erf(), wn.AvgPool(2, stride=1, padding="same"), wn.GlobalAvgPool(), wn.Dense(1))
    residual = wn.Serial(
        wn.Conv(4, 3), wn.FanOut(2), wn.Parallel(wn.Serial(wn.Relu(), wn.Conv(4, 3)), wn.Identity()),
        wn.FanInSum(), wn.LayerNorm(), wn.Relu(), wn.Dropout(0.2), wn.SumPool(2), wn.Flatten(),
        wn.Dense(1))
    branches = wn.Serial(
        wn.Conv(4, 3), wn.FanOut(3), wn.Parallel(wn.Relu(), wn.Erf(), wn.Identity()), wn.FanInConcat(),
        wn.Dense(4), wn.FanOut(2), wn.Parallel(wn.Relu(), wn.Gelu()), wn.FanInProd(), wn.Dense(2),
        wn.Sin(), wn.GlobalAvgPool(), wn.Dense(1))
    attention = wn.Serial(
        wn.Dense(8, 1.0, 0.1), wn.FanOut(2),
        wn.Parallel(wn.Identity(), wn.SelfAttention(8, pos_emb="sum", b_std=0.1)),
        wn.FanInSum(), wn.LayerNorm(), wn.Relu(), wn.GlobalAvgPool(), wn.Dense(1))
    fc = wn.Serial(wn.Dense(8, 1.3, 0.1), wn.Relu(), wn.Dense(8), wn.Erf(), wn.Dense(1))
    images = torch.randn(13, 2, 5, 4, generator=g, dtype=D)
    seqs = torch.randn(11, 3, 6, generator=g, dtype=D)
    lengths = torch.randint(2, 7, (11, 1), generator=g)
    return {
        "pooled cnn": (pooled, images, {}),
        "residual, LayerNorm, Dropout, Flatten": (residual, images, {}),
        "FanInConcat, FanInProd": (branches, images, {}),
        "masked attention": (attention, seqs, {"mask1": torch.arange(6)[None, :] >= lengths}),
        "fully connected": (fc, torch.randn(17, 5, generator=g, dtype=D), {}),
    }


def _without_tapes(monkeypatch, call):
    monkeypatch.setattr(_driver, "_TAPES", False)
    try:
        return call()
    finally:
        monkeypatch.undo()


@pytest.mark.parametrize("name", list(_nets()))
@pytest.mark.parametrize("block_size", [None, 3, 4])
def test_replayed_covariances_change_no_bit_of_any_kernel(monkeypatch, name, block_size):
    net, x, masks = _nets()[name]
    calls = [lambda: net.kernel(x, block_size=block_size, **masks),
             lambda: net.kernel(x[:5], x[5:], block_size=block_size,
                                **{k: v[:5] for k, v in masks.items()},
                                **{"mask2": v[5:] for v in masks.values()})]
    for call in calls:
        taped = call()
        fresh = _without_tapes(monkeypatch, call)
        for field in ("nngp", "ntk", "var1", "var2"):
            a, b = getattr(taped, field), getattr(fresh, field)
            assert (a is None and b is None) or torch.equal(a, b), field
        assert torch.isfinite(taped.ntk).all()


def _own_rows(monkeypatch, call):
    """Rows of own covariances that nonlinearities transformed during ``call``."""
    rows = []
    rule = Nonlinearity._self_rule

    def counting(self, w, cov, new_var):
        rows.append(cov.shape[0])
        return rule(self, w, cov, new_var)

    monkeypatch.setattr(Nonlinearity, "_self_rule", counting)
    call()
    monkeypatch.setattr(Nonlinearity, "_self_rule", rule)
    return sum(rows)


def test_each_input_covariance_is_computed_once_per_layer(monkeypatch):
    net, x, _ = _nets()["pooled cnn"]  # two nonlinearities in the full layout
    n = x.shape[0]
    # 13 inputs in blocks of 3: five row blocks, 15 tiles of the upper triangle.
    taped = _own_rows(monkeypatch, lambda: net.kernel(x, block_size=3))
    assert taped == 2 * (1 + n)  # the one-input probe, then each input once
    fresh = _own_rows(monkeypatch, lambda: _without_tapes(monkeypatch, lambda: net.kernel(x, block_size=3)))
    assert fresh > 3 * taped
    cross = _own_rows(monkeypatch, lambda: net.kernel(x[:5], x[5:], block_size=2))
    assert cross == 2 * (1 + n)


def test_covariances_that_would_crowd_the_budget_are_not_kept(monkeypatch):
    net, x, _ = _nets()["pooled cnn"]
    # Each input's recorded covariances take 13 KB (its input covariance and seven steps, of
    # 400 or 144 float64s in the full layout): 13 inputs' 170 KB exceed the 70 KB that tiles
    # of 2 x 2 pairs (38 KB of working memory each, plus two for the carried covariances)
    # leave of this budget.
    memory = 300_000
    kept = _own_rows(monkeypatch, lambda: net.kernel(x))
    tight = _own_rows(monkeypatch, lambda: net.kernel(x, memory=memory))
    assert kept == 2 * (1 + x.shape[0]) and tight > kept
    assert torch.equal(net.kernel(x, memory=memory).ntk, net.kernel(x).ntk)
