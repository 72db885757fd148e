"""widenet.blocked.compute (widenet.blocked._compute): tiled kernels equal direct ones exactly,
for any tile, any layout and full-output empirical NTKs; progress; arguments refused before
any work."""

import pytest
import torch

import widenet as wn
from blocked._helpers import _net, _same
from widenet import blocked, empirical
from widenet.errors import ParameterError

D = torch.float64


def _cnn():
    return wn.Serial(wn.Conv(8, 3, padding="same"), wn.Relu(), wn.AvgPool(2), wn.Conv(8, 3, padding="valid"),
                     wn.Relu(), wn.GlobalAvgPool(), wn.Dense(1))


@pytest.mark.parametrize("tile", [1, 4, 7, 23])
def test_tiles_equal_the_direct_kernel(tile):
    g = torch.Generator().manual_seed(0)
    x1 = torch.randn(23, 5, generator=g, dtype=D)
    x2 = torch.randn(10, 5, generator=g, dtype=D)
    net = _net()
    # Reproducible mode: bit for bit, whatever the tile (odd sizes, rectangular, dividing nothing).
    _same(blocked.compute(net, x1, tile=tile, reproducible=True), net.kernel(x1, reproducible=True))
    _same(blocked.compute(net, x1, x2, tile=tile, reproducible=True), net.kernel(x1, x2, reproducible=True))
    assert torch.equal(blocked.compute(net, x1, tile=tile, get="ntk", reproducible=True),
                       net.ntk(x1, reproducible=True))
    # Default mode: bit for bit on the same tiles, a few ulp otherwise.
    _same(blocked.compute(net, x1, tile=tile), net.kernel(x1), exact=tile == 23)
    _same(blocked.compute(net, x1, x2, tile=tile), net.kernel(x1, x2), exact=tile == 23)
    _same(blocked.compute(net, x1, tile=tile, get="ntk"), net.ntk(x1), exact=tile == 23)
    _same(blocked.compute(lambda a, b: net.kernel(a, b), x1, x2, tile=tile, get="nngp"), net.nngp(x1, x2),
          exact=tile == 23)


def test_tiles_of_spatial_layouts_and_of_full_output_empirical_ntks():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(9, 2, 6, 6, generator=g, dtype=D)
    cnn = _cnn()
    _same(blocked.compute(cnn, x, tile=4), cnn.kernel(x), exact=False)
    _same(blocked.compute(cnn, x, tile=4, reproducible=True), cnn.kernel(x, reproducible=True))
    # A kernel that keeps its spatial axes, "full" layout: mirrored tiles swap the two halves.
    conv = wn.Serial(wn.Conv(4, 3, padding="same"), wn.Relu(), wn.Conv(4, 3, padding="same"))
    direct = conv.kernel(x[:, :, :4, :4], layout="full")
    assert direct.layout == "full" and direct.nngp.ndim == 6
    full = lambda a, b: conv.kernel(a, b, layout="full")  # noqa: E731
    _same(blocked.compute(full, x[:, :, :4, :4], tile=4), direct, exact=False)
    _same(blocked.compute(full, x[:, :, :4, :4], tile=4, reproducible=True),
          conv.kernel(x[:, :, :4, :4], layout="full", reproducible=True))
    # An empirical full-output NTK (N, N, O, O): mirrored tiles swap the output axes too.
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3)).to(D)
    xs = torch.randn(11, 5, dtype=D)
    fn = lambda a, b: empirical.ntk(model, a, b, outputs="full", method="jacobian")  # noqa: E731
    tiled = blocked.compute(fn, xs, tile=4)
    reference = empirical.ntk(model, xs, outputs="full", method="jacobian")
    torch.testing.assert_close(tiled, reference, rtol=1e-12, atol=1e-12)
    assert torch.equal(tiled, tiled.transpose(0, 1).transpose(2, 3))


def test_progress_bar_reports_pairs_per_second(capsys):
    x = torch.randn(9, 3, dtype=D)
    blocked.compute(_net(), x, tile=2, progress=True)
    err = capsys.readouterr().err
    assert "kernel tiles" in err and "pairs/s" in err and "100%" in err


def test_bad_arguments_are_refused_before_work(tmp_path):
    x = torch.randn(4, 3, dtype=D)
    with pytest.raises(ParameterError, match="fn must be a widenet architecture or a callable"):
        blocked.compute(3, x)
    with pytest.raises(ParameterError, match="tile"):
        blocked.compute(_net(), x, tile=0)
    with pytest.raises(ParameterError, match="memory"):
        blocked.compute(_net(), x, memory="lots")
    with pytest.raises(wn.errors.NonFiniteInputError, match="x1"):
        blocked.compute(_net(), x.clone().fill_(float("nan")))
    with pytest.raises(ParameterError, match="same shape per input"):
        blocked.compute(_net(), x, torch.randn(4, 2, dtype=D))
    with pytest.raises(ParameterError, match="must return a widenet.Kernel or a tensor"):
        blocked.compute(lambda a, b: 1.0, x)
    with pytest.raises(ParameterError, match="no store"):
        blocked.open_store(tmp_path / "nothing")
    blocked.compute(_net(), x, tile=2, store=tmp_path / "s")




def test_an_in_memory_result_larger_than_the_available_memory_points_to_a_store(monkeypatch, tmp_path):
    import widenet.blocked._compute as compute_module

    x = torch.randn(30, 5, dtype=D, generator=torch.Generator().manual_seed(1))
    net = _net()
    monkeypatch.setattr(compute_module, "available_memory", lambda device: 5_000)
    with pytest.raises(wn.errors.OutOfMemoryError, match=r"the kernels of 30 x 30 inputs take .* GB, more than "
                                                         r"the 5e-06 GB of memory available; pass store="):
        blocked.compute(net, x, tile=8)
    # the same computation into a store on disk goes through
    store = blocked.compute(net, x, tile=8, store=tmp_path / "k.zarr", reproducible=True, progress=False)
    assert torch.equal(torch.as_tensor(store["ntk"][:]), net.kernel(x, reproducible=True).ntk)
