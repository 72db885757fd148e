"""Finite-width studies (widenet.theory._width): finite networks' gaps to their linearization
and to their infinite-width limit close with width (Lee et al. 2019)."""

import pytest
import torch

import widenet as wn
from theory._helpers import _arch, _gen
from widenet import theory

D = torch.float64


def test_finite_width_gaps_close_with_width():
    x = torch.randn(16, 4, dtype=D, generator=_gen(0))
    y = torch.sin(2 * x[:, :1])
    xt = torch.randn(8, 4, dtype=D, generator=_gen(1))
    study = theory.finite_width_study(_arch, x, y, xt, widths=[64, 128, 256, 512, 1024], steps=150, seeds=3)
    for name in ("linearization_gap", "infinite_gap", "ntk_change", "parameter_change", "ntk_distance",
                 "nngp_distance"):
        slope, err = study.slope(name)
        assert slope + 3 * err < -0.2, (name, slope, err)  # closes with width, with confidence
    # Initialization fluctuations of the kernels are O(width^-1/2).
    for name in ("ntk_distance", "nngp_distance"):
        assert abs(study.slope(name)[0] + 0.5) < 0.2
    # The linearized run is exact: an independent Taylor model trained by torch SGD agrees.
    width, model = 128, _arch(128).module(4, seed=1, dtype=D)
    lin = wn.linearize(model)
    for net in (model, lin):
        opt = torch.optim.SGD(net.parameters(), lr=study.learning_rate)
        for _ in range(study.steps):
            opt.zero_grad()
            (((net(x) - y) ** 2).sum() / (2 * y.numel())).backward()
            opt.step()
    with torch.no_grad():
        gap = float((model(xt) - lin(xt)).pow(2).mean().sqrt())
    assert float(study.values["linearization_gap"][1, 1]) == pytest.approx(gap, rel=1e-7)
    assert "slope" in study.table()
