"""Kernel stores (widenet.blocked._store): compute into a store, refuse other computations,
resume after SIGKILL losing only the tiles in flight."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

import widenet as wn
from blocked._helpers import _net, _same
from widenet import blocked

D = torch.float64


def test_memory_sets_the_tile_and_the_store_matches_memory(tmp_path):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(30, 4, generator=g, dtype=D)
    net = _net()
    # 2 arrays x 8 bytes per pair; a quarter of 8 kB is 2 kB: tiles of 11 inputs, none dividing 30.
    stored = blocked.compute(net, x, memory=8000, store=tmp_path / "k")
    assert stored.plan.tile == 11 and stored.complete
    _same(stored.load(), blocked.compute(net, x, memory=8000))
    _same(blocked.open_store(tmp_path / "k").load(), net.kernel(x), exact=False)
    assert stored["ntk"].chunks == (11, 11)


def test_store_refuses_another_computation_and_resumes_its_own(tmp_path):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(12, 4, generator=g, dtype=D)
    net = _net()
    blocked.compute(net, x, tile=5, store=tmp_path / "k")
    with pytest.raises(blocked.StoreMismatchError, match="function"):
        blocked.compute(wn.Serial(wn.Dense(64, W_std=1.5), wn.Relu(), wn.Dense(1)), x, store=tmp_path / "k")
    with pytest.raises(blocked.StoreMismatchError, match="x1"):
        blocked.compute(net, x + 1, store=tmp_path / "k")
    with pytest.raises(blocked.StoreMismatchError, match="dtype"):
        blocked.compute(net, x.float(), store=tmp_path / "k")
    calls = []
    counted = lambda a, b: calls.append(1) or net.kernel(a, b)  # noqa: E731
    again = blocked.compute(counted, x, store=tmp_path / "k2", tile=5, key="net")
    assert len(calls) == 1 + 6  # the probe, then the 6 tiles on or above the diagonal of a 3 x 3 grid
    calls.clear()
    blocked.compute(counted, x, store=tmp_path / "k2", key="net")
    assert calls == []  # everything was done: nothing recomputed
    _same(again.load(), blocked.compute(net, x, tile=5))
    # overwrite discards the old store
    blocked.compute(net, x + 1, store=tmp_path / "k", overwrite=True)


KILLED = textwrap.dedent("""
    import sys, time, torch
    import widenet as wn
    from widenet import blocked
    net = wn.Serial(wn.Conv(4, 3, padding="same"), wn.Relu(), wn.GlobalAvgPool(), wn.Dense(1))
    x = torch.randn(24, 1, 5, 5, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    def slow(a, b):
        time.sleep(0.15)
        return net.kernel(a, b)
    blocked.compute(slow, x, tile=3, store=sys.argv[1], key="slow conv net")
""")


def test_sigkill_loses_only_tiles_in_flight_and_resume_finishes_identically(tmp_path):
    script = tmp_path / "run.py"
    script.write_text(KILLED)
    path = tmp_path / "store"
    proc = subprocess.Popen([sys.executable, str(script), str(path)])
    try:
        deadline = time.time() + 60
        while time.time() < deadline:
            time.sleep(0.1)
            try:
                done = len(blocked.open_store(path).finished())
            except Exception:  # the store is still being created
                done = 0
            if done >= 8:
                break
        assert proc.poll() is None, "the run finished before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    interrupted = blocked.open_store(path)
    finished = interrupted.finished()
    assert 8 <= len(finished) < len(interrupted.plan.tiles())
    # Every tile marked done is whole; tiles not done are recomputed and nothing else is.
    net = wn.Serial(wn.Conv(4, 3, padding="same"), wn.Relu(), wn.GlobalAvgPool(), wn.Dense(1))
    x = torch.randn(24, 1, 5, 5, generator=torch.Generator().manual_seed(5), dtype=D)
    calls = []
    fn = lambda a, b: calls.append(1) or net.kernel(a, b)  # noqa: E731
    resumed = blocked.compute(fn, x, store=path, key="slow conv net")
    assert len(calls) == len(interrupted.plan.tiles()) - len(finished)
    assert not list(path.rglob("*.partial"))
    _same(resumed.load(), blocked.compute(net, x, tile=3))
    _same(resumed.load(), net.kernel(x), exact=False)
