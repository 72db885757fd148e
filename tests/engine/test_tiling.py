"""Tiles of input pairs (src/widenet/_engine/tiling.py): one cut and one rule of symmetry for
the in-memory kernels, widenet.blocked and the empirical kernels."""

import itertools

import pytest
import torch

import widenet as wn
from widenet import blocked
from widenet._engine import tiling

D = torch.float64


@pytest.mark.parametrize("n1,n2,rows,cols,same", [(7, 7, 3, 3, True), (7, 5, 3, 2, False), (1, 1, 4, 4, True),
                                                   (10, 3, 4, 7, False)])
def test_a_plan_covers_every_pair_once(n1, n2, rows, cols, same):
    plan = tiling.Plan(n1, n2, rows, cols, same)
    count = torch.zeros(n1, n2, dtype=torch.int64)
    for i, j in plan.tiles():
        count[plan.row_slice(i), plan.col_slice(j)] += 1
        if same and i != j:
            count[plan.col_slice(j), plan.row_slice(i)] += 1
    assert torch.equal(count, torch.ones(n1, n2, dtype=torch.int64))
    assert sum(plan.pairs(i, j) for i, j in plan.tiles()) == n1 * n2


def test_a_symmetric_plan_needs_square_tiles():
    with pytest.raises(ValueError, match="square tiles"):
        tiling.Plan(5, 5, 2, 3, True)


def test_the_mirror_exchanges_inputs_and_paired_axes():
    t = torch.randn(2, 3, 4, 5, 4, 5, dtype=D)
    m = tiling.mirror(t, paired=2)
    for i, j, a, b, c, d in itertools.product(range(2), range(3), range(4), range(5), range(4), range(5)):
        assert m[j, i, c, d, a, b] == t[i, j, a, b, c, d]
    assert torch.equal(tiling.mirror(t, 0), t.transpose(0, 1))


def test_the_symmetry_rule_keeps_the_upper_entries_mirrors_them_and_averages_the_diagonal():
    t = torch.randn(4, 4, 3, 3, dtype=D)
    s = tiling.symmetric_block(t, paired=1)
    for i, j in itertools.product(range(4), range(4)):
        if i < j:
            assert torch.equal(s[i, j], t[i, j])
        elif i > j:
            assert torch.equal(s[i, j], t[j, i].T)
        else:
            assert torch.equal(s[i, i], (t[i, i] + t[i, i].T) / 2)
    assert torch.equal(s, tiling.mirror(s, 1))


def test_every_kernel_over_pairs_follows_the_rule():
    """In memory, blocked and empirical: a kernel with x2=None is exactly symmetric, and its
    entries above the diagonal are those of the cross kernel of the same tiles (bit for bit
    where the block against itself is computed as a cross block)."""
    x = torch.randn(6, 3, dtype=D, generator=torch.Generator().manual_seed(0))
    net = wn.Serial(wn.Dense(8, 1.3, 0.1), wn.Relu(), wn.Dense(1))
    same = net.kernel(x, block_size=6)
    cross = net.kernel(x, x, block_size=6)
    upper = torch.triu(torch.ones(6, 6, dtype=torch.bool), 1)
    assert torch.equal(same.ntk[upper], cross.ntk[upper]) and torch.equal(same.ntk, same.ntk.T)
    stored = blocked.compute(net, x, tile=3)
    assert torch.equal(stored.ntk, stored.ntk.T)
    model = net.module(3, seed=0, dtype=D)
    emp, emp_cross = (wn.empirical.ntk(model, x, x2, method="jacobian", block_size=6, outputs="full")
                      for x2 in (None, x))
    assert torch.allclose(emp[upper], emp_cross[upper], rtol=1e-13, atol=0)
    assert torch.equal(emp, tiling.mirror(emp, 1))
