"""Window sums over the position axes of tiles (src/widenet/_engine/windows.py)."""

import pytest
import torch

from widenet._engine import windows as _spatial


def _naive_window(t, groups, k, dil, lo, hi):
    """Textbook definition: zero-pad each group's axes, then add the slices at every offset."""
    out = t
    for axes in groups:
        pad = [slice(None)] * out.ndim
        shape = list(out.shape)
        for ax in axes:
            shape[ax] += lo + hi
            pad[ax] = slice(lo, lo + out.shape[ax])
        padded = out.new_zeros(shape)
        padded[tuple(pad)] = out
        acc = torch.zeros_like(out)
        for o in range(k):
            index = [slice(None)] * out.ndim
            for ax in axes:
                index[ax] = slice(o * dil, o * dil + out.shape[ax])
            acc += padded[tuple(index)]
        out = acc
    return out


WINDOWS = [  # tile shape, groups of tied axes, window, dilation
    ((5, 6, 7, 6, 7), [[1, 3], [2, 4]], 3, 1),  # 2-D full layout, tied offsets
    ((4, 6, 5, 6, 5), [[1, 3], [2, 4]], 2, 2),  # even dilated window: no unshifted offset
    ((3, 9, 9), [[1, 2]], 4, 1),  # 1-D full layout, padding split unevenly
    ((3, 2, 3, 2, 3), [[1, 3], [2, 4]], 5, 1),  # window wider than the input
    ((6, 7, 8), [[1], [2]], 3, 2),  # diagonal layout, dilated
    ((2, 3, 4, 5, 3, 4, 5), [[1, 4], [2, 5], [3, 6]], 3, 1),  # 3-D full layout
]


@pytest.mark.parametrize("shape, groups, k, dil", WINDOWS)
def test_flat_offset_window_sums_equal_strided_slices_bit_for_bit(shape, groups, k, dil):
    g = torch.Generator().manual_seed(len(shape) * k + dil)
    t = torch.randn(shape, generator=g, dtype=torch.float64)
    span = (k - 1) * dil
    lo, hi = span // 2, span - span // 2
    n = len(groups)
    args = (groups, (k,) * n, (1,) * n, (dil,) * n, [(lo, hi)] * n, False)
    flat, strided = t, t
    for axes in groups:
        flat = _spatial._flat_sum(flat, axes, k, dil, lo)
        strided = _spatial._shifted_sum(strided, axes, k, 1, dil, lo, hi)
    assert torch.equal(flat, strided)
    assert torch.equal(_spatial.window_sum(t, *args), flat)
    torch.testing.assert_close(flat, _naive_window(t, groups, k, dil, lo, hi), rtol=1e-14, atol=1e-14)
    assert torch.equal(t, torch.randn(shape, generator=g.manual_seed(len(shape) * k + dil),
                                      dtype=torch.float64))  # the input is left alone
