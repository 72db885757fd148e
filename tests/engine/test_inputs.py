"""The input layer's tile (src/widenet/_engine/inputs.py)."""

import pytest
import torch

from widenet._engine import inputs as _inputs

D = torch.float64


@pytest.mark.parametrize("channels", [1, 2, 4, 5])
def test_full_layout_input_tiles_equal_the_channel_sums(channels):
    x = torch.randn(9, channels, 3, 4, generator=torch.Generator().manual_seed(channels), dtype=D)
    w = _inputs.input_tile(x[:4], x[4:], same=False, full=True, tile=True, diagonal=None)
    expected = torch.einsum("icpq,jcrs->ijpqrs", x[:4], x[4:]) / channels
    torch.testing.assert_close(w.nngp, expected, rtol=1e-15, atol=1e-15)
    if channels == 1:  # one product per entry: exact
        assert torch.equal(w.nngp, expected)
