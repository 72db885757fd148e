"""method="auto" (widenet.empirical._cost): the cost model picks what the calibration measured
fastest."""

import torch
from torch import nn


def test_auto_follows_the_measured_cost_model():
    """method='auto' picks what the calibration measured fastest at these sizes (see
    benchmarks/calibrate_auto.py): products of Grams for a wide MLP, where Jacobians are
    100x slower, and Jacobians for a small normalization model, where the hooks cost more
    than they save."""
    from widenet.empirical import _cost, _ntk
    from widenet.empirical._structured import structured_modules

    cases = [
        (nn.Sequential(nn.Linear(64, 1024), nn.ReLU(), nn.Linear(1024, 1024), nn.ReLU(), nn.Linear(1024, 10)),
         torch.randn(48, 64), "structured"),
        (nn.Sequential(nn.Linear(16, 64), nn.LayerNorm(64), nn.GELU(), nn.Linear(64, 64), nn.LayerNorm(64),
                       nn.Linear(64, 2)), torch.randn(8, 16), "jacobian"),
    ]
    for model, x, expected in cases:
        chosen = {k: p.detach() for k, p in model.named_parameters()}
        n_out = model(x[:1]).shape[1]
        probe, _, _ = _ntk._probe(model, chosen, structured_modules(model, chosen), x, n_out)
        for outputs in ("mean", "full"):
            blocks = dict.fromkeys(("jacobian", "ntvp", "structured"), len(x))
            assert _cost.cheapest(probe, len(x), len(x), True, blocks, outputs) == expected, (expected, outputs)
