"""Empirical NTK of torch models against a plain per-example, per-output torch.autograd.grad
reference, for every method and output form."""

import pytest
import torch
from torch import nn

from widenet import empirical
from widenet.errors import ParameterError, ShapeError

D = torch.float64


def _reference(model, x1, x2, names=None):
    """(N1, N2, O, O): one autograd.grad call per input and output unit."""
    model.eval()
    params = [p for n, p in model.named_parameters() if names is None or any(n.startswith(k) for k in names)]

    def jac(x):
        rows = []
        for i in range(len(x)):
            out = model(x[i:i + 1]).reshape(-1)
            rows.append(torch.stack([
                torch.cat([g.reshape(-1) for g in torch.autograd.grad(out[c], params, retain_graph=True)])
                for c in range(out.numel())
            ]))
        return torch.stack(rows)

    return torch.einsum("aip,bjp->abij", jac(x1), jac(x2))


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(6, 12)
        self.block = nn.Sequential(nn.ReLU(), nn.Linear(12, 12), nn.GELU(), nn.Linear(12, 12))
        self.out = nn.Linear(12, 2)

    def forward(self, x):
        h = self.inp(x)
        return self.out(h + self.block(h))


class Attention(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(3, 8)
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.norm = nn.LayerNorm(8)
        self.head = nn.Linear(8, 2)

    def forward(self, x):  # (B, L, 3)
        h = self.embed(x)
        a, _ = self.attn(h, h, h, need_weights=False)
        return self.head(self.norm(h + a).mean(1))


def _models():
    torch.manual_seed(0)
    return {
        "mlp": (nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3)), (6,)),
        "cnn-pool": (nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2), nn.Conv2d(4, 4, 3),
                                   nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2)), (1, 6, 6)),
        "residual": (Residual(), (6,)),
        "batchnorm-layernorm-dropout": (nn.Sequential(nn.Linear(6, 10), nn.BatchNorm1d(10), nn.ReLU(), nn.Dropout(0.5),
                                                      nn.Linear(10, 10), nn.LayerNorm(10), nn.Linear(10, 2)), (6,)),
        "attention": (Attention(), (5, 3)),
    }


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


class _Cube(torch.autograd.Function):
    """x^3 with a backward (so double backward works) but no forward-mode rule (no jvp)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x):
        return x**3

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[0])

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return 3 * x * x * grad


class _BrokenCube(_Cube):
    """Like _Cube, but its backward cannot itself be differentiated."""

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return _Unsupported.apply(3 * x * x * grad)


class _Unsupported(torch.autograd.Function):
    generate_vmap_rule = True

    @staticmethod
    def forward(x):
        return x.clone()

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass

    @staticmethod
    def backward(ctx, grad):
        raise RuntimeError("the second derivative broke")


class _NoForwardMode(nn.Module):
    def __init__(self, broken=False):
        super().__init__()
        self.a, self.b = nn.Linear(3, 6), nn.Linear(6, 2)
        self.cube = _BrokenCube if broken else _Cube

    def forward(self, x):
        return self.b(self.cube.apply(self.a(x)))


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
