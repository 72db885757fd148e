"""``wn.from_torch`` (src/widenet/interop/from_torch.py): real torch models against Monte Carlo
of themselves (their own default initialization), round trips of widenet twins, the layer
mapping against hand-written widenet networks, and every refusal."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import widenet as wn
from widenet.errors import ParameterError, ShapeError, UnsupportedModuleError

D = torch.float64


class ResidualMLP(nn.Module):
    """Functional calls in forward and a residual whose branch ends in its own Linear."""

    def __init__(self, width=64):
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(6, width), nn.Linear(width, width), nn.Linear(width, width)
        self.out = nn.Linear(width, 16)  # the NNGP averages over 16 outputs

    def forward(self, x):
        h = torch.relu(self.fc1(x))
        h = h + self.fc3(F.gelu(self.fc2(h)))
        return self.out(h * 0.5)


class SmallCNN(nn.Module):
    def __init__(self, width=32):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.ReLU(),
                                      nn.Conv2d(width, width, 3, padding=1), nn.Tanh())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(width, 16)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


def _monte_carlo(make, width, x, n):
    return wn.empirical.monte_carlo(lambda s: (torch.manual_seed(s), make(width).double())[1], x, n_samples=n)


def _rel(a, b):
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.parametrize("make, shape, width, n", [(ResidualMLP, (5, 6), 256, 200), (SmallCNN, (3, 1, 4, 4), 96, 120)],
                         ids=["residual-mlp", "cnn"])
def test_torch_models_match_monte_carlo_of_their_own_initialization(make, shape, width, n):
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0), dtype=D)
    net = wn.from_torch(make(width).double(), x)
    k = net.kernel(x)
    mc = _monte_carlo(make, width, x, n)
    for name in ("nngp", "ntk"):
        ours, theirs, se = getattr(k, name), getattr(mc, name), getattr(mc, f"{name}_stderr")
        z = ((theirs - ours) / se).abs().max()
        assert z < 4.5, (name, float(z))  # within 4.5 standard errors at every entry
        assert _rel(2 * ours, theirs) > 0.3  # and far from a kernel twice as large


def test_the_finite_width_error_shrinks_with_width():
    x = torch.randn(5, 6, generator=torch.Generator().manual_seed(1), dtype=D)
    errors = []
    for width in (4, 256):
        k = wn.from_torch(ResidualMLP(width).double()).kernel(x)
        mc = _monte_carlo(ResidualMLP, width, x, 400)
        errors.append(_rel(mc.ntk, k.ntk))
    assert errors[1] < errors[0] / 2, errors


def test_layers_map_onto_the_widenet_network_written_by_hand():
    torch.manual_seed(0)
    model = SmallCNN(16).double()
    x = torch.randn(3, 1, 5, 5, dtype=D)
    s3 = 1 / math.sqrt(3)
    by_hand = wn.Serial(wn.Conv(16, 3, W_std=s3, b_std=1 / math.sqrt(27), parameterization="standard"), wn.Relu(),
                        wn.Conv(16, 3, W_std=s3, b_std=1 / math.sqrt(3 * 16 * 9), parameterization="standard"), wn.Tanh(),
                        wn.GlobalAvgPool(), wn.Dense(16, s3, 1 / math.sqrt(48), parameterization="standard"))
    ours, want = wn.from_torch(model, x).kernel(x), by_hand.kernel(x)
    assert torch.allclose(ours.ntk, want.ntk, rtol=1e-13) and torch.allclose(ours.nngp, want.nngp, rtol=1e-13)
    scaled = wn.from_torch(model, x, parameterization="ntk", scales={"features.0": (1.5, 0.1)})
    first = scaled.layers[0]
    assert (first.W_std, first.b_std, first.parameterization) == (1.5, 0.1, "ntk")


@pytest.mark.parametrize("net", [
    wn.Serial(wn.Dense(8), wn.Relu(), wn.Dense(1)),
    wn.Serial(wn.Conv(4, 3), wn.Erf(), wn.AvgPool(2), wn.Flatten(), wn.Dense(2)),
    wn.Serial(wn.Dense(8), wn.FanOut(2), wn.Parallel(wn.Identity(), wn.Serial(wn.Relu(), wn.Dense(8))), wn.FanInSum()),
], ids=["mlp", "cnn", "residual"])
def test_round_trips_of_widenet_twins_are_exact(net):
    shape = (5,) if isinstance(net.layers[0], wn.Dense) else (1, 6)
    x = torch.randn((3,) + shape, dtype=D)
    back = wn.from_torch(wn.to_torch(net, shape, seed=0))
    assert back == net
    assert torch.equal(back.kernel(x).ntk, net.kernel(x).ntk)


@pytest.mark.parametrize("model, x, match", [
    (nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 1)), torch.randn(3, 4),
     r"BatchNorm1d '1' at node '_1'.*batch normalization couples the examples"),
    (nn.Sequential(nn.Conv1d(1, 4, 3), nn.MaxPool1d(2), nn.Flatten(), nn.Linear(4, 1)), torch.randn(3, 1, 4),
     r"MaxPool1d '1'.*max pooling has no closed-form kernel"),
    (nn.Sequential(nn.LSTM(4, 8)), torch.randn(3, 2, 4), r"LSTM '0'.*gated recurrences have no kernel here; wn.Recurrent"),
], ids=["batchnorm", "maxpool", "lstm"])
def test_modules_without_a_kernel_name_what_to_do_instead(model, x, match):
    with pytest.raises(UnsupportedModuleError, match=match):
        wn.from_torch(model, x)


def test_unsupported_modules_and_bad_input_are_refused_before_any_work():
    class Pooled(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.pool, self.fc = nn.Conv1d(1, 4, 3), nn.MaxPool1d(2), nn.Linear(8, 1)

        def forward(self, x):
            return self.fc(self.pool(self.conv(x)).flatten(1))

    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.fc2 = nn.Linear(4, 8), nn.Linear(8, 8)

        def forward(self, x):
            h = torch.relu(self.fc1(x))
            return h + F.gelu(self.fc2(h))

    class DataDependent(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 1)

        def forward(self, x):
            return self.fc(x) if x.sum() > 0 else -self.fc(x)

    class TwoOutputs(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 1)

        def forward(self, x):
            return self.fc(x), x

    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc, self.out = nn.Linear(4, 4), nn.Linear(4, 1)

        def forward(self, x):
            return self.out(self.fc(x) + self.fc(torch.relu(self.fc(x))))

    with pytest.raises(UnsupportedModuleError, match=r"the module 'fc' called on a second, different input"):
        wn.from_torch(Shared())
    with pytest.raises(UnsupportedModuleError, match=r"MaxPool1d 'pool' at node 'pool'.*use nn.AvgPool, or strict=False"):
        wn.from_torch(Pooled(), torch.randn(2, 1, 6))
    with pytest.raises(UnsupportedModuleError, match=r"two branches that are correlated.*test_from_torch.py:\d+ in forward"):
        wn.from_torch(Branchy())
    with pytest.raises(UnsupportedModuleError, match=r"torch.fx cannot trace DataDependent.*Control flow that depends"):
        wn.from_torch(DataDependent())
    with pytest.raises(UnsupportedModuleError, match=r"the model must return one tensor"):
        wn.from_torch(TwoOutputs())
    with pytest.raises(ParameterError, match=r"model has no parameters"):
        wn.from_torch(nn.ReLU())
    with pytest.raises(ParameterError, match=r"model must be a torch.nn.Module"):
        wn.from_torch(lambda x: x)
    with pytest.raises(ShapeError, match=r"the model rejects example_input of shape \(2, 5\)"):
        wn.from_torch(nn.Sequential(nn.Linear(4, 2)), torch.randn(2, 5))
    with pytest.raises(ParameterError, match=r"give example_input"):
        wn.from_torch(nn.Sequential(nn.Conv1d(1, 2, 3), nn.Flatten(), nn.Linear(6, 1)))
    with pytest.raises(ParameterError, match=r"example_input is on meta but the model's parameters are on cpu"):
        wn.from_torch(nn.Sequential(nn.Linear(4, 2)), torch.randn(2, 4, device="meta"))
    with pytest.raises(ParameterError, match=r"scales names 'fc9', which is not a module"):
        wn.from_torch(nn.Sequential(nn.Linear(4, 2)), scales={"fc9": (1.0, 0.0)})


def test_a_module_called_twice_on_one_input_is_one_layer():
    class Twice(nn.Module):
        def __init__(self, width=128):
            super().__init__()
            self.inp, self.hidden, self.out = nn.Linear(4, width), nn.Linear(width, width), nn.Linear(width, 8)

        def forward(self, x):
            return self.out(F.relu(self.inp(x)) + self.hidden(torch.tanh(self.inp(x))))

    class Once(Twice):
        def forward(self, x):
            z = self.inp(x)
            return self.out(F.relu(z) + self.hidden(torch.tanh(z)))

    x = torch.randn(4, 4, dtype=D)
    twice, once = wn.from_torch(Twice().double()), wn.from_torch(Once().double())
    assert torch.equal(twice.kernel(x).ntk, once.kernel(x).ntk)
    mc = _monte_carlo(Twice, 128, x, 150)
    assert ((mc.ntk - twice.kernel(x).ntk) / mc.ntk_stderr).abs().max() < 4.5


def test_strict_false_falls_back_to_monte_carlo_of_the_model_itself():
    model = nn.Sequential(nn.Conv1d(1, 32, 3), nn.ReLU(), nn.MaxPool1d(2), nn.Flatten(), nn.Linear(64, 4)).double()
    x = torch.randn(3, 1, 6, dtype=D)
    with pytest.warns(UserWarning, match=r"(?s)MaxPool1d.*strict=False: falling back to Monte Carlo kernels"):
        mc = wn.from_torch(model, x, strict=False, n_samples=20)
    k = mc.kernel(x)
    # the same estimate as widenet.empirical.monte_carlo over the model's own re-initializations
    again = wn.empirical.monte_carlo(mc.module, x, n_samples=20)
    assert torch.equal(k.ntk, again.ntk) and k.ntk_stderr is not None
    first, second = mc.module(0), mc.module(1)
    assert not torch.equal(first[0].weight, second[0].weight)
    assert torch.equal(first[0].weight, mc.module(0)[0].weight)


@pytest.mark.parametrize("net, shape", [
    (wn.Serial(wn.Dense(8, 1.2, 0.1), wn.Softplus(), wn.Dense(8), wn.Relu(), wn.Erf(), wn.Dense(1)), (5,)),
    (wn.Serial(wn.Conv(4, 3, stride=2), wn.Gelu(), wn.AvgPool(2), wn.Flatten(), wn.Dense(2)), (2, 8, 8)),
    (wn.Serial(wn.ConvTranspose(4, 3, stride=2), wn.Tanh(), wn.ConvLocal(4, 2), wn.Relu(), wn.GlobalAvgPool(),
               wn.Dense(1)), (1, 5)),
    (wn.Serial(wn.Conv(4, 3), wn.Relu(), wn.ImageResize((3, 3)), wn.Index(wn.Slice[:, :, 1:]), wn.Flatten(),
               wn.Dense(1)), (1, 6, 6)),
    (wn.Serial(wn.Dense(8), wn.SelfAttention(8, pos_emb="sum"), wn.LayerNorm(), wn.Dropout(0.2), wn.GlobalAvgPool(),
               wn.Dense(1)), (3, 5)),
    (wn.Serial(wn.Recurrent(8, readout="all"), wn.GlobalAvgPool(), wn.Dense(1)), (2, 4)),
], ids=["mlp", "cnn", "transpose-local", "resize-index", "attention", "recurrent"])
def test_round_trips_for_the_layers_with_twins(net, shape):
    x = torch.randn((3,) + shape, generator=torch.Generator().manual_seed(3), dtype=D)
    back = wn.from_torch(wn.to_torch(net, shape, seed=1, dtype=D))
    assert back == net
    for name in ("nngp", "ntk"):
        assert torch.equal(getattr(back.kernel(x), name), getattr(net.kernel(x), name))


def test_a_widenet_twin_inside_a_users_model_keeps_its_architecture():
    inner = wn.Serial(wn.Conv(8, 3, W_std=1.3, b_std=0.2), wn.Relu(), wn.GlobalAvgPool())
    model = nn.Sequential(inner.module((1, 6), seed=0, dtype=D), nn.Linear(8, 3).double())
    x = torch.randn(4, 1, 6, dtype=D)
    want = wn.Serial(inner, wn.Dense(3, 1 / math.sqrt(3), 1 / math.sqrt(24), parameterization="standard"))
    got = wn.from_torch(model, x)
    assert torch.allclose(got.kernel(x).ntk, want.kernel(x).ntk, rtol=1e-13)


def test_module_lists_iterated_in_forward_unroll():
    class Stack(nn.Module):
        def __init__(self, depth=3, width=16):
            super().__init__()
            self.inp = nn.Linear(5, width)
            self.blocks = nn.ModuleList(nn.Linear(width, width) for _ in range(depth))
            self.out = nn.Linear(width, 1)

        def forward(self, x):
            h = self.inp(x)
            for block in self.blocks:
                h = h + block(torch.erf(h))
            return self.out(h)

    net = wn.from_torch(Stack())
    assert sum(isinstance(layer, wn.FanInSum) for layer in net.layers) == 3
    assert sum(isinstance(layer, wn.Dense) for layer in net.layers) == 5


class Normed(nn.Module):
    def __init__(self, width=256, inputs=64):
        super().__init__()
        self.fc1, self.norm, self.fc2 = nn.Linear(inputs, width), nn.LayerNorm(width), nn.Linear(width, 16)

    def forward(self, x):
        return self.fc2(torch.tanh(self.norm(self.fc1(x))))


def _z(mc, k, name):
    return float(((getattr(mc, name) - getattr(k, name)) / getattr(mc, f"{name}_stderr")).abs().max())


def test_layer_norm_with_its_trainable_scale_and_shift_matches_monte_carlo():
    x = torch.randn(4, 64, generator=torch.Generator().manual_seed(6), dtype=D)
    k = wn.from_torch(Normed().double()).kernel(x)
    mc = _monte_carlo(Normed, 256, x, 150)
    for name in ("nngp", "ntk"):
        assert _z(mc, k, name) < 4.5, name
    plain = wn.from_torch(nn.Sequential(nn.Linear(5, 8), nn.LayerNorm(8, elementwise_affine=False), nn.Tanh(),
                                        nn.Linear(8, 1)).double())
    assert not any(type(layer).__name__ == "ElementwiseAffine" for layer in plain.layers)


def test_the_first_layers_uniform_weights_count_when_the_input_is_small():
    # PyTorch draws weights uniformly. Hidden layers sum many of them (Gaussian in the limit),
    # but a first layer on 5 inputs sums 5: a tanh after it sees a non-Gaussian pre-activation,
    # and the limit is not the Gaussian-weight kernel that from_torch computes (documented);
    # the same model with Gaussian weights of the same variances agrees with it.
    def gaussian(model):
        for m in model.modules():
            if isinstance(m, nn.Linear):
                with torch.no_grad():
                    m.weight.normal_(0, 1 / math.sqrt(3 * m.in_features))
                    m.bias.normal_(0, 1 / math.sqrt(3 * m.in_features))
        return model

    x = torch.randn(4, 5, generator=torch.Generator().manual_seed(6), dtype=D)
    k = wn.from_torch(Normed(256, 5).double()).kernel(x)
    uniform = wn.empirical.monte_carlo(lambda s: (torch.manual_seed(s), Normed(256, 5).double())[1], x, n_samples=150)
    normal = wn.empirical.monte_carlo(lambda s: (torch.manual_seed(s), gaussian(Normed(256, 5).double()))[1], x,
                                      n_samples=150)
    assert _z(normal, k, "ntk") < 4.5 and _z(uniform, k, "ntk") > 8


def test_nonlinearities_in_a_row_inside_a_branched_model_compose():
    class Composed(nn.Module):
        def __init__(self, width=256):
            super().__init__()
            self.fc, self.skip, self.out = nn.Linear(16, width), nn.Linear(16, width), nn.Linear(width, 16)

        def forward(self, x):
            return self.out(torch.tanh(F.relu(self.fc(x))) + self.skip(x))

    x = torch.randn(4, 16, generator=torch.Generator().manual_seed(8), dtype=D)
    net = wn.from_torch(Composed().double())
    assert any(isinstance(layer, wn.Chain) for layer in net.layers)
    k = net.kernel(x)
    mc = _monte_carlo(Composed, 256, x, 150)
    for name in ("nngp", "ntk"):
        assert _z(mc, k, name) < 4.5, name


def test_transposed_convolutions_and_functional_pooling_match_monte_carlo():
    class Up(nn.Module):
        def __init__(self, width=96):
            super().__init__()
            self.up = nn.ConvTranspose1d(2, width, 3, stride=2)
            self.conv = nn.Conv1d(width, width, 3, padding=1)
            self.fc = nn.Linear(width, 8)

        def forward(self, x):
            return self.fc(F.adaptive_avg_pool1d(torch.tanh(self.conv(F.relu(self.up(x)))), 1).flatten(1))

    class UpPooled(Up):
        def __init__(self, width=96):
            super().__init__(width)
            self.pool = nn.AdaptiveAvgPool1d(1)

        def forward(self, x):
            return self.fc(self.pool(torch.tanh(self.conv(F.relu(self.up(x))))).flatten(1))

    x = torch.randn(3, 2, 5, generator=torch.Generator().manual_seed(9), dtype=D)
    net = wn.from_torch(Up().double(), x)
    assert net == wn.from_torch(UpPooled().double(), x)  # functional pooling maps as the module
    k = net.kernel(x)
    mc = _monte_carlo(Up, 96, x, 100)
    for name in ("nngp", "ntk"):
        assert _z(mc, k, name) < 4.5, name


@pytest.mark.parametrize("padding, output_padding", [(1, 1), (2, 0)])
def test_transposed_convolutions_with_padding_crop_as_pytorch_does(padding, output_padding):
    # one linear layer, its kernel per output position: the edges of a transposed convolution
    # get fewer taps, so a crop off by one position shows at once
    def make(width):
        return nn.Sequential(nn.ConvTranspose1d(3, width, 4, stride=2, padding=padding,
                                                output_padding=output_padding)).double()

    x = torch.randn(3, 3, 5, generator=torch.Generator().manual_seed(10), dtype=D)
    net = wn.from_torch(make(64), x)  # PyTorch's variance counts the output channels
    length = make(64)(x).shape[-1]
    assert net.module((3, 5), seed=0, dtype=D)(x).shape == (3, 64, length)
    k = net.kernel(x)
    mc = wn.empirical.monte_carlo(lambda s: (torch.manual_seed(s), make(64))[1], x, n_samples=40, outputs="diagonal")
    for name in ("nngp", "ntk"):  # per output (channel, position): the mean over channels per position
        per_output = getattr(mc, name).reshape(3, 3, 64, length)
        ours = getattr(k, name)
        assert ours.shape == (3, 3, length)
        assert _rel(per_output.mean(2), ours) < 0.05, name
        assert _rel(per_output.mean(2), ours.roll(1, dims=-1)) > 0.2, name  # a crop one off is far


class TokenMLP(nn.Module):
    """Tokens (N, L, features): nn.Linear on the last dim, LayerNorm over channels, a residual,
    then a mean over positions (or the first token)."""

    def __init__(self, width=64, first_token=False):
        super().__init__()
        self.first_token = first_token
        self.embed, self.norm, self.fc = nn.Linear(32, width), nn.LayerNorm(width), nn.Linear(width, width)
        self.head = nn.Linear(width, 8)

    def forward(self, x):
        h = self.embed(x)
        h = h + self.fc(F.gelu(self.norm(h)))
        return self.head(h[:, 0] if self.first_token else h.mean(dim=1))


class ChannelsLast(nn.Module):
    """Images (N, H, W, C): a Linear on the channels, a permute to PyTorch's (N, C, H, W), a Conv."""

    def __init__(self, width=32):
        super().__init__()
        self.fc, self.conv, self.out = nn.Linear(24, width), nn.Conv2d(width, width, 3, padding=1), nn.Linear(width, 8)

    def forward(self, x):
        h = torch.relu(self.fc(x)).permute(0, 3, 1, 2)
        return self.out(F.adaptive_avg_pool2d(torch.tanh(self.conv(h)), 1).flatten(1))


@pytest.mark.parametrize("make, shape, width, n", [
    (TokenMLP, (3, 5, 32), 256, 100), (lambda w: TokenMLP(w, first_token=True), (3, 5, 32), 256, 100),
    (ChannelsLast, (3, 4, 4, 24), 128, 60)], ids=["tokens-mean", "tokens-first", "channels-last"])
def test_layouts_with_channels_last_match_monte_carlo(make, shape, width, n):
    x = torch.randn(shape, generator=torch.Generator().manual_seed(11), dtype=D)
    net = wn.from_torch(make(width).double(), x)
    assert net.input_order == (0, len(shape) - 1) + tuple(range(1, len(shape) - 1))
    k = net.kernel(x)  # in the model's own layout
    mc = _monte_carlo(make, width, x, n)
    for name in ("nngp", "ntk"):
        assert _z(mc, k, name) < 4.5, name
    twin = net.module(shape[1:], seed=0, dtype=D)
    assert twin(x).shape == make(8).double()(x).shape
    back = wn.from_torch(twin, x)  # the permuting twin reads back as the same network
    assert back == net


class NormThen(nn.Module):
    def __init__(self, width=256, shape=None, then="tanh"):
        super().__init__()
        self.fc, self.norm = nn.Linear(32, width), nn.LayerNorm(shape or (width,))
        self.fc2, self.out, self.then = nn.Linear(width, width), nn.Linear(width, 4), then

    def forward(self, x):
        h = self.norm(self.fc(x))
        h = torch.tanh(h) if self.then == "tanh" else self.fc2(h)
        return self.out(torch.tanh(self.fc2(h) if self.then == "tanh" else h).mean(1))


@pytest.mark.parametrize("shape, then", [(None, "tanh"), ((5, 256), "tanh"), ((5, 256), "linear")],
                         ids=["channels-tanh", "positions-tanh", "positions-linear"])
def test_layer_norms_scale_and_shift_have_their_own_ntk_terms(shape, then):
    # The NTK of the LayerNorm's own parameters alone (params=), Monte Carlo over the model,
    # against the kernel's share of them (with minus without the affine parameters): a sharp
    # oracle for their terms, per channel or per (position, channel), and through a nonlinearity
    # right after them (the scale's gradient there is the pre-activation itself).
    x = torch.randn(3, 5, 32, generator=torch.Generator().manual_seed(12), dtype=D)
    share = (wn.from_torch(NormThen(256, shape, then).double(), x).kernel(x).ntk
             - wn.from_torch(_without_affine(NormThen(256, shape, then)).double(), x).kernel(x).ntk)
    mc = wn.empirical.monte_carlo(lambda s: (torch.manual_seed(s), NormThen(256, shape, then).double())[1], x,
                                  n_samples=20, params=["norm.weight", "norm.bias"])
    assert ((mc.ntk - share) / mc.ntk_stderr).abs().max() < 4.5
    assert _rel(mc.ntk, share) < 0.03


def _without_affine(model):
    model.norm = nn.LayerNorm(model.norm.normalized_shape, elementwise_affine=False)
    return model


class Encoder(nn.Module):
    def __init__(self, width=128, norm_first=False, layers=1):
        super().__init__()
        self.embed = nn.Linear(32, width)
        layer = nn.TransformerEncoderLayer(width, 4, 2 * width, dropout=0.0, batch_first=True, norm_first=norm_first)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False) if layers > 1 else layer
        self.head = nn.Linear(width, 8)

    def forward(self, x):
        return self.head(self.encoder(self.embed(x)).mean(dim=1))


def _uniform_attention(model):
    # zero query and key projections: PyTorch's attention is then a uniform average over the
    # positions, exactly the limit of wn.SelfAttention with W_query_std = 0
    for m in model.modules():
        if isinstance(m, nn.MultiheadAttention):
            with torch.no_grad():
                m.in_proj_weight[: 2 * m.embed_dim] = 0
    return model


@pytest.mark.filterwarnings("ignore:There is a performance drop:UserWarning")  # torch.func over PyTorch's attention
@pytest.mark.parametrize("norm_first", [False, True], ids=["post-norm", "pre-norm"])
def test_transformer_encoder_layers_match_monte_carlo_of_pytorchs_own(norm_first):
    x = torch.randn(3, 4, 32, generator=torch.Generator().manual_seed(13), dtype=D)
    with pytest.raises(UnsupportedModuleError, match=r"1/sqrt\(head_dim\).*attention='linear'.*strict=False"):
        wn.from_torch(Encoder(norm_first=norm_first).double(), x)
    net = wn.from_torch(Encoder(norm_first=norm_first).double(), x, attention="linear")
    attention = [layer.attention for layer in net.net.layers if type(layer).__name__ == "StandardAttention"]
    assert len(attention) == 1 and attention[0].heads == 4 and attention[0].key_features == 32
    # the same network with the logits' scale at zero is PyTorch's own at zero query/key weights
    uniform = wn.from_torch(Encoder(norm_first=norm_first).double(), x, attention="linear",
                            scales={"encoder.self_attn": {"W_query_std": 0.0}})
    mc = _monte_carlo(lambda w: _uniform_attention(Encoder(w, norm_first)), 128, x, 60)
    k = uniform.kernel(x)
    for name in ("nngp", "ntk"):
        assert _z(mc, k, name) < 4.5, name


def test_a_transformer_encoder_stack_unrolls_its_layers():
    x = torch.randn(2, 3, 32, generator=torch.Generator().manual_seed(14), dtype=D)
    net = wn.from_torch(Encoder(32, norm_first=True, layers=2).double(), x, attention="linear")
    assert sum(type(layer).__name__ == "StandardAttention" for layer in net.net.layers) == 2
    assert net.kernel(x).ntk.shape == (2, 2)


def test_layout_and_attention_refusals_say_what_to_do():
    class Moves(nn.Module):
        def __init__(self, perm):
            super().__init__()
            self.fc, self.perm = nn.Linear(4, 8), perm

        def forward(self, x):
            return self.fc(x.permute(*self.perm)).mean(dim=1)

    class LinearOnPositions(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.fc = nn.Conv1d(2, 8, 3), nn.Linear(4, 8)

        def forward(self, x):
            return self.fc(self.conv(x)).flatten(1)

    class Attends(nn.Module):
        def __init__(self, how):
            super().__init__()
            self.how = how
            self.att = nn.MultiheadAttention(8, 2, batch_first=how != "batch-second")

        def forward(self, x):
            if self.how == "cross":
                return self.att(x, x.relu(), x)[0]
            if self.how == "weights":
                return self.att(x, x, x)[1]
            if self.how == "causal":
                return self.att(x, x, x, is_causal=True)[0]
            return self.att(x, x, x)[0]

    x4 = torch.randn(2, 3, 5, 4)
    with pytest.raises(UnsupportedModuleError, match=r"permutation \(1, 0, 2\) that moves the batch axis"):
        wn.from_torch(Moves((1, 0, 2)), torch.randn(3, 2, 4))
    with pytest.raises(UnsupportedModuleError, match=r"reorders its position axes"):
        wn.from_torch(Moves((0, 2, 1, 3)), x4)
    with pytest.raises(UnsupportedModuleError, match=r"nn.Linear 'fc' reading channels at dim 2 .* channels are at dim 1"):
        wn.from_torch(LinearOnPositions(), torch.randn(2, 2, 6))
    with pytest.raises(UnsupportedModuleError, match=r"nn.LayerNorm '1' over \(4,\) .* without its channels"):
        wn.from_torch(nn.Sequential(nn.Conv1d(2, 8, 3), nn.LayerNorm(4)), torch.randn(2, 2, 6))
    with pytest.raises(UnsupportedModuleError, match=r"a mean over dims \[2\] .*global pooling"):
        wn.from_torch(_MeanOver(2), torch.randn(2, 4, 3, 3))
    for how, match in (("cross", r"cross-attention"), ("weights", r"attention weights"),
                       ("causal", r"is_causal=True.*causal attention has no kernel"), ("batch-second", r"batch_first=True")):
        with pytest.raises(UnsupportedModuleError, match=match):
            wn.from_torch(Attends(how).eval(), torch.randn(2, 3, 8), attention="linear")
    with pytest.raises(UnsupportedModuleError, match=r"in train mode with dropout.*model.eval\(\)"):
        wn.from_torch(nn.TransformerEncoderLayer(8, 2, batch_first=True), torch.randn(2, 3, 8), attention="linear")
    with pytest.raises(ParameterError, match=r"scales\['encoder.self_attn'\] names \['W_std'\]; an attention's"):
        wn.from_torch(Encoder(8).eval(), torch.randn(2, 3, 32), attention="linear",
                      scales={"encoder.self_attn": {"W_std": 1.0}})
    with pytest.raises(ParameterError, match=r"attention must be one of"):
        wn.from_torch(nn.Linear(2, 2), attention="sqrt")


class _MeanOver(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.dim, self.conv = dim, nn.Conv2d(4, 8, 1)

    def forward(self, x):
        return self.conv(x).mean(dim=self.dim)


def test_init_ntk_is_the_theory_convention():
    model = nn.Sequential(nn.Linear(5, 32), nn.ReLU(), nn.Linear(32, 1))
    net = wn.from_torch(model, init="ntk", parameterization="ntk")
    assert net == wn.Serial(wn.Dense(32, 1.0, 0.0), wn.Relu(), wn.Dense(1, 1.0, 0.0))
    with pytest.raises(ParameterError, match=r"from_torch: init must be one of"):
        wn.from_torch(model, init="xavier")
