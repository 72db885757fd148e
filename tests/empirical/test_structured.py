"""method="structured" (widenet.empirical._structured): the factored contractions of linear,
convolutional and attention layers against the per-example torch.autograd.grad reference,
through the cost model's choice of route and through each forced route."""

import pytest
import torch
from torch import nn

from empirical._helpers import _models, _reference
from widenet import empirical

D = torch.float64


def _assert_structured_matches_autograd(model, x1, x2, block_size):
    """method='structured' in every output form equals the per-example autograd reference."""
    full = _reference(model, x1, x2)
    scale = float(full.abs().max())
    for outputs in ("full", "diagonal", "mean"):
        k = empirical.ntk(model, x1, x2, outputs=outputs, method="structured", block_size=block_size)
        ref = full if outputs == "full" else torch.diagonal(full, dim1=2, dim2=3)
        ref = ref.mean(-1) if outputs == "mean" else ref
        assert float((k - ref).abs().max()) <= 1e-12 * scale, outputs


@pytest.mark.filterwarnings("ignore:There is a performance drop:UserWarning")
@pytest.mark.parametrize("route", ["gram", "jacobian"])
@pytest.mark.parametrize("name", ["cnn-pool", "attention", "residual"])
def test_structured_routes(name, route, monkeypatch):
    """Both contractions of a factored layer (position-pair Grams, or the layer's own
    per-example Jacobian) equal the autograd reference, whichever the cost model would pick."""
    from widenet.empirical import _structured

    monkeypatch.setattr(_structured, "_FORCE_ROUTE", route)
    model, shape = _models()[name]
    model = model.double()
    g = torch.Generator().manual_seed(4)
    x1, x2 = torch.randn(4, *shape, generator=g, dtype=D), torch.randn(3, *shape, generator=g, dtype=D)
    _assert_structured_matches_autograd(model, x1, x2, block_size=3)


def _conv_models():
    """Convolutions in every form the structured path factors: 1-D/2-D/3-D, strided, dilated,
    grouped and depthwise, "same" with an even kernel (asymmetric padding), every padding mode."""
    return {
        "conv1d-reflect-dilated": (nn.Sequential(nn.Conv1d(2, 4, 3, padding=2, dilation=2, padding_mode="reflect"),
                                                 nn.Tanh(), nn.Conv1d(4, 4, 2, stride=2, padding="valid"),
                                                 nn.Flatten(), nn.Linear(12, 2)), (2, 7)),
        "conv2d-grouped-circular": (nn.Sequential(nn.Conv2d(2, 4, 3, padding=1, groups=2, padding_mode="circular"),
                                                  nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1, groups=4, bias=False,
                                                                       padding_mode="replicate"),
                                                  nn.Tanh(), nn.Conv2d(4, 2, (2, 3), padding="same"),
                                                  nn.AdaptiveAvgPool2d(1), nn.Flatten()), (2, 5, 4)),
        "conv3d": (nn.Sequential(nn.Conv3d(1, 3, 2, stride=(1, 2, 1), padding=(1, 0, 1)), nn.Tanh(),
                                 nn.Conv3d(3, 2, 3, padding="same", groups=1, padding_mode="reflect"),
                                 nn.Flatten(), nn.LazyLinear(2)), (1, 3, 4, 3)),
    }


@pytest.mark.filterwarnings("ignore:Using padding=.same. with even kernel:UserWarning")  # torch on (2, 3) kernels
@pytest.mark.parametrize("route", [None, "gram", "jacobian"])
@pytest.mark.parametrize("name", list(_conv_models()))
def test_structured_convolutions(name, route, monkeypatch):
    """Every convolution the structured path factors (none falls back to Jacobians) matches
    per-example autograd, through the cost model's choice and through each forced route."""
    from widenet.empirical import _structured

    monkeypatch.setattr(_structured, "_FORCE_ROUTE", route)
    model, shape = _conv_models()[name]
    model = model.double()
    g = torch.Generator().manual_seed(5)
    x1, x2 = torch.randn(4, *shape, generator=g, dtype=D), torch.randn(3, *shape, generator=g, dtype=D)
    model(x1[:1])  # materialize the lazy layer before listing parameters
    convs = [m for m in model.modules() if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d))]
    factored = _structured.structured_modules(model, dict(model.named_parameters()))
    assert all(any(m is f for f in factored.values()) for m in convs)
    _assert_structured_matches_autograd(model, x1, x2, block_size=2)


def test_structured_with_no_layer_to_factor_contracts_jacobians():
    """widenet's own twins have no nn.Linear or nn.Conv to factor: "structured" then takes
    every parameter by Jacobians, as "jacobian" does (it raised autograd's empty-input error)."""
    import widenet as wn

    model = wn.Serial(wn.Dense(16, 1.3, 0.1), wn.Relu(), wn.Dense(2)).module(3, seed=0, dtype=torch.float64)
    x = torch.randn(5, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    structured = wn.empirical.ntk(model, x, method="structured")
    assert torch.allclose(structured, wn.empirical.ntk(model, x, method="jacobian"), rtol=1e-12, atol=0)
