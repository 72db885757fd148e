"""The tile state (src/widenet/_engine/tile.py)."""

import pytest
import torch

from widenet._engine import Tile as Work

D = torch.float64


def _work(n=3):
    nngp = torch.rand(n, n, dtype=D)
    return Work(nngp, None, torch.rand(n, dtype=D), torch.rand(n, dtype=D))


@pytest.mark.parametrize("touch", ["in_place", "view_write", "out_write", "replaced", "copied"])
def test_a_zero_ntk_is_known_zero_only_until_something_touches_it(touch):
    w = _work()
    w.start_ntk()
    assert w.ntk_is_zero and not w.ntk.any()
    if touch == "in_place":
        w.ntk.add_(1.0)
    elif touch == "view_write":
        w.ntk[1:].fill_(2.0)
    elif touch == "out_write":
        torch.mul(w.nngp, 2.0, out=w.ntk)
    elif touch == "replaced":
        w.ntk = torch.zeros_like(w.nngp)  # zero, but not the tensor start_ntk made
    else:
        w = w.copy()
    assert not w.ntk_is_zero
