"""Reused tile buffers and flat-offset window sums: same numbers as without them."""

import threading

import pytest
import torch

import widenet as wn
from widenet._engine import scratch as _scratch


# ---- the buffer pool ------------------------------------------------------------------------

LIKE = torch.empty(0, dtype=torch.float64)
BIG = (128, 128)  # 128 KiB of float64: above the pool's minimum size


def test_outside_a_block_nothing_is_pooled():
    held = [_scratch.empty(BIG, LIKE) for _ in range(3)]
    assert not _scratch.active()
    assert all(t.shape == BIG and t.dtype == torch.float64 for t in held)
    assert _scratch._state.buffers == {}


def test_a_buffer_is_reused_only_once_nothing_uses_its_memory():
    with _scratch.reusing():
        a = _scratch.empty(BIG, LIKE)
        ptr = a.data_ptr()
        view = a[3:].t()  # a view keeps the buffer busy after the tensor itself is gone
        del a
        b = _scratch.empty(BIG, LIKE)
        assert b.data_ptr() != ptr
        del view
        c = _scratch.empty((64, 256), LIKE)  # same size, other shape: the same buffer
        assert c.data_ptr() == ptr and c.shape == (64, 256)
        assert b.data_ptr() != c.data_ptr()
    assert _scratch._state.buffers == {}  # dropped when the block ends


def test_small_tensors_and_disabled_blocks_are_not_pooled():
    with _scratch.reusing():
        small = _scratch.empty((4, 4), LIKE)
        del small
        assert _scratch._state.buffers == {}
        with _scratch.reusing(False):
            assert not _scratch.active()
            assert _scratch.call(torch.mul, torch.ones(BIG, dtype=torch.float64), 2.0).sum() == 2 * 128 * 128
            assert _scratch._state.buffers == {}
        assert _scratch.active()


def test_a_released_buffer_leaves_the_pool_and_its_count():
    with _scratch.reusing():
        kept = _scratch.empty(BIG, LIKE)
        other = _scratch.empty(BIG, LIKE)
        held = _scratch._state.held
        _scratch.release(kept.t())  # any view of the buffer names it
        assert _scratch._state.held == held - 128 * 128 * 8
        assert [b.data_ptr() for b, _ in _scratch._state.buffers[(128 * 128, torch.float64, LIKE.device)]] == [other.data_ptr()]
        _scratch.release(torch.ones(BIG, dtype=torch.float64))  # not the pool's: nothing happens
        assert _scratch._state.held == held - 128 * 128 * 8
        ptr = kept.data_ptr()
        del kept, other
        again = _scratch.empty(BIG, LIKE)  # the released buffer is never handed out again
        assert again.data_ptr() != ptr
    _scratch.release(again)  # outside a block: nothing to do


def test_the_pool_belongs_to_its_thread():
    seen = []
    with _scratch.reusing():
        worker = threading.Thread(target=lambda: seen.append(_scratch.active()))
        worker.start()
        worker.join()
        assert _scratch.active()
    assert seen == [False]


def test_call_writes_every_element_and_takes_a_shape_for_non_elementwise_ops():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(128, 80, generator=g, dtype=torch.float64)
    b = torch.randn(80, 96, generator=g, dtype=torch.float64)
    with _scratch.reusing():
        junk = _scratch.empty((128, 96), LIKE).fill_(float("nan"))
        ptr = junk.data_ptr()
        del junk  # its buffer, full of NaN, is what the next call gets
        prod = _scratch.call(torch.matmul, a, b, shape=(128, 96))
        assert prod.data_ptr() == ptr
        assert torch.equal(prod, a @ b)
        r, c = a[:, :1], b[:1, :]
        assert torch.equal(_scratch.call(torch.mul, r, c), r * c)


def test_plain_refuses_tensors_with_autograd_state():
    x = torch.ones(3)
    assert _scratch.plain(x, None, 1.0)
    assert not _scratch.plain(torch.ones(3, requires_grad=True))
    import torch.autograd.forward_ad as fwAD

    with fwAD.dual_level():
        assert not _scratch.plain(fwAD.make_dual(x, torch.ones(3)))


# ---- kernels with and without the pool --------------------------------------------------------

def _without_pool(monkeypatch, fn):
    monkeypatch.setattr(_scratch, "_use_count", None)
    try:
        return fn()
    finally:
        monkeypatch.undo()


def _nets():
    g = torch.Generator().manual_seed(1)
    cnn = wn.Serial(wn.Conv(8, 3, W_std=1.4, b_std=0.1), wn.Relu(), wn.Conv(8, 3, W_std=1.3),
                    wn.Erf(), wn.AvgPool(2, stride=1, padding="same"), wn.GlobalAvgPool(),
                    wn.Dense(3))
    block = wn.Serial(
        wn.Dense(16, 1.0, 0.1), wn.FanOut(2),
        wn.Parallel(wn.Identity(), wn.SelfAttention(16, pos_emb="sum", b_std=0.1)),
        wn.FanInSum(), wn.LayerNorm(), wn.Relu(), wn.GlobalAvgPool(), wn.Dense(2))
    flat = wn.Serial(wn.Conv(8, 3, dilation=2), wn.Relu(), wn.Flatten(), wn.Dense(4))
    return [
        ("pooled cnn", cnn, torch.randn(11, 2, 6, 5, generator=g, dtype=torch.float64),
         torch.randn(4, 2, 6, 5, generator=g, dtype=torch.float64), {}),
        ("attention, masked", block, torch.randn(9, 3, 7, generator=g, dtype=torch.float64), None,
         {"mask1": torch.arange(7)[None, :] >= torch.randint(2, 8, (9, 1), generator=g)}),
        ("diagonal layout", flat, torch.randn(13, 2, 9, 9, generator=g, dtype=torch.float64),
         torch.randn(5, 2, 9, 9, generator=g, dtype=torch.float64), {}),
    ]


@pytest.mark.parametrize("case", range(3), ids=lambda i: ["pooled cnn", "attention", "diagonal"][i])
@pytest.mark.parametrize("block_size", [None, 3])
def test_reused_buffers_change_no_bit_of_any_kernel(monkeypatch, case, block_size):
    _, net, x1, x2, masks = _nets()[case]
    calls = [lambda: net.kernel(x1, block_size=block_size, **masks)]
    if x2 is not None:
        calls.append(lambda: net.kernel(x1, x2, block_size=block_size))
    for call in calls:
        pooled = call()
        fresh = _without_pool(monkeypatch, call)
        for name in ("nngp", "ntk", "var1"):
            assert torch.equal(getattr(pooled, name), getattr(fresh, name)), name
        assert torch.isfinite(pooled.ntk).all()


def test_results_do_not_share_memory_with_later_calls():
    _, net, x1, x2, _ = _nets()[0]
    first = net.kernel(x1)
    kept = first.nngp.clone(), first.ntk.clone()
    net.kernel(x2)
    net.kernel(x1, x2)
    assert torch.equal(first.nngp, kept[0]) and torch.equal(first.ntk, kept[1])


# ---- window sums ------------------------------------------------------------------------------


def test_the_pool_keeps_at_most_its_limit():
    size = 128 * 128 * 8
    with _scratch.reusing(limit=2.5 * size):
        a, b = _scratch.empty(BIG, LIKE), _scratch.empty(BIG, LIKE)
        c = _scratch.empty(BIG, LIKE)  # over the limit, nothing free: handed out, not kept
        assert _scratch._state.held == 2 * size
        assert sum(len(v) for v in _scratch._state.buffers.values()) == 2
        del a
        d = _scratch.empty((256, 256), LIKE)  # 4x larger: the free one goes, d is not kept
        assert _scratch._state.held == size and d.shape == (256, 256)
        del c
        e = _scratch.empty(BIG, LIKE)  # c was never pooled: a fresh buffer, now kept
        assert _scratch._state.held == 2 * size
        assert b.data_ptr() != e.data_ptr()
    assert _scratch._state.held == 0 and _scratch._state.buffers == {}


def test_broadcast_shape_is_torchs():
    assert _scratch.broadcast_shape((3, 1, 5), (1, 4, 1)) == torch.broadcast_shapes((3, 1, 5), (1, 4, 1))
    with pytest.raises(RuntimeError):
        _scratch.broadcast_shape((3,), (4,))
