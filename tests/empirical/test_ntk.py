"""widenet.empirical.ntk, nngp and kernel (widenet.empirical._ntk): the empirical NTK of torch
models against a plain per-example, per-output torch.autograd.grad reference, for every method
and output form; ops without forward-mode derivatives; parameter filters; errors."""

import pytest
import torch
from torch import nn

from empirical._helpers import _Cube, _models, _NoForwardMode, _reference
from widenet import empirical
from widenet.errors import ParameterError, ShapeError

D = torch.float64


@pytest.mark.filterwarnings("ignore:There is a performance drop:UserWarning")  # torch.func on CPU attention
@pytest.mark.parametrize("name", list(_models()))
def test_every_method_and_output_form_matches_autograd(name):
    model, shape = _models()[name]
    model = model.double()
    if name.startswith("batchnorm"):  # non-trivial running statistics
        model.train()
        with torch.no_grad():
            model(torch.randn(64, *shape, dtype=D) * 2 + 1)
    g = torch.Generator().manual_seed(1)
    x1, x2 = torch.randn(5, *shape, generator=g, dtype=D), torch.randn(3, *shape, generator=g, dtype=D)
    full = _reference(model, x1, x2)
    diag = torch.diagonal(full, dim1=2, dim2=3)
    expected = {"full": full, "diagonal": diag, "mean": diag.mean(-1)}
    scale = float(full.abs().max())
    methods = ("jacobian", "ntvp", "structured", "auto")
    if name == "attention":
        # torch's fused CPU attention has neither forward-mode nor double-backward derivatives.
        with pytest.raises(ParameterError, match="use method='jacobian'"):
            empirical.ntk(model, x1, x2, method="ntvp")
        methods = ("jacobian", "structured", "auto")
    for method in methods:
        for outputs, ref in expected.items():
            for block in (None, 2):  # chunk sizes that divide nothing
                k = empirical.ntk(model, x1, x2, outputs=outputs, method=method, block_size=block)
                assert k.shape == ref.shape
                assert float((k - ref).abs().max()) <= 1e-12 * scale, (method, outputs, block)
    reference = _reference(model, x1, x1)
    model.train()
    for method in methods:
        for block in (None, 2):  # one chunk (symmetric products of half the rows) or several
            same = empirical.ntk(model, x1, outputs="full", method=method, block_size=block)
            assert model.training  # evaluated in eval mode, the caller's mode restored
            assert float((same - reference).abs().max()) <= 1e-12 * scale, (method, block)
            assert torch.equal(same, same.transpose(0, 1).transpose(2, 3))  # exactly symmetric


def test_ntvp_without_forward_mode_uses_double_backward():
    """An op without a jvp: NTK-vector products fall back to double backward, exactly."""
    torch.manual_seed(5)
    model = _NoForwardMode().double()
    with pytest.raises(NotImplementedError, match="jvp"):
        torch.func.jvp(_Cube.apply, (torch.ones(2, dtype=D),), (torch.ones(2, dtype=D),))
    x1, x2 = torch.randn(4, 3, dtype=D), torch.randn(3, 3, dtype=D)
    full = _reference(model, x1, x2)
    k = empirical.ntk(model, x1, x2, outputs="full", method="ntvp", block_size=2)
    assert float((k - full).abs().max()) <= 1e-12 * float(full.abs().max())


def test_parameter_filter_and_nngp():
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)).double()
    x = torch.randn(6, 4, dtype=D)
    last = empirical.ntk(model, x, params=["2"], outputs="full")
    ref = _reference(model, x, x, names=["2."])
    assert float((last - ref).abs().max()) <= 1e-12 * float(ref.abs().max())
    # The last layer's NTK is the Gram matrix of its input features (plus 1 for the bias).
    feats = model[1](model[0](x)).detach()
    gram = feats @ feats.T + 1
    assert float((empirical.ntk(model, x, params=lambda n, p: n.startswith("2.")) - gram).abs().max()) < 1e-12 * float(gram.max())
    f = model(x).detach()
    assert torch.allclose(empirical.nngp(model, x), f @ f.T / 2, rtol=1e-14, atol=0)
    assert torch.allclose(empirical.nngp(model, x, outputs="full"), torch.einsum("ai,bj->abij", f, f), rtol=1e-14, atol=0)
    k = empirical.kernel(model, x, x[:2])
    assert k.nngp.shape == (6, 2) and k.ntk.shape == (6, 2) and k.var1.shape == (6,)


def test_errors():
    model = nn.Linear(3, 2).double()
    x = torch.randn(4, 3, dtype=D)
    with pytest.raises(ShapeError, match="must return one tensor"):
        empirical.ntk(nn.Sequential(nn.LSTM(3, 2, batch_first=True)), x[:, None].float())
    with pytest.raises(ShapeError, match="share a dtype"):
        empirical.ntk(model, x.float())
    with pytest.raises(ParameterError, match="params names no trainable parameter"):
        empirical.ntk(model, x, params=["fc9"])
    with pytest.raises(ParameterError, match="outputs must be one of"):
        empirical.ntk(model, x, outputs="trace")
    with pytest.raises(ShapeError, match="same shape per input"):
        empirical.ntk(model, x, torch.randn(2, 4, dtype=D))

    # A second derivative that fails for a reason other than a missing rule propagates as it is
    # (it is not reported as "needs forward-mode or double-backward derivatives").
    with pytest.raises(RuntimeError, match="the second derivative broke"):
        empirical.ntk(_NoForwardMode(broken=True).double(), x, method="ntvp")
