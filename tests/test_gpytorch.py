"""widenet.gpytorch: InfiniteWidthKernel, a network's NNGP/NTK as a GPyTorch kernel with trainable
W_std and b_std, in GPyTorch's exact GPs and BoTorch's models."""

from __future__ import annotations

import pytest
import torch

gpytorch = pytest.importorskip("gpytorch")
botorch = pytest.importorskip("botorch")

import widenet as wn  # noqa: E402
from widenet.errors import NonFiniteInputError, ParameterError, ShapeError  # noqa: E402
from widenet.gpytorch import InfiniteWidthKernel  # noqa: E402

F64 = torch.float64


def relu_net(W_std=1.5, b_std=0.1, depth=1, width=1):
    layers = []
    for _ in range(depth):
        layers += [wn.Dense(width, W_std=W_std, b_std=b_std), wn.Relu()]
    return wn.Serial(*layers, wn.Dense(1, W_std=W_std, b_std=b_std))


def kernel_net(kernel, depth=1):
    """The network a kernel represents now, written by hand with its 0-d tensor hyperparameters."""
    return relu_net(kernel.W_std.detach(), kernel.b_std.detach(), depth)


def inputs(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


class ExactGP(gpytorch.models.ExactGP):
    def __init__(self, x, y, likelihood, kernel):
        super().__init__(x, y, likelihood)
        self.mean_module = gpytorch.means.ZeroMean()
        self.covar_module = kernel

    def forward(self, x):
        return gpytorch.distributions.MultivariateNormal(self.mean_module(x), self.covar_module(x))


# ---- the kernel is the network's kernel ---------------------------------------------------------------
@pytest.mark.parametrize("get", ["nngp", "ntk"])
def test_the_kernel_matrix_is_the_networks_kernel(get):
    net = wn.Serial(wn.Dense(1, W_std=1.5, b_std=0.1), wn.Erf(), wn.Dense(1, W_std=1.5, b_std=0.1), wn.Relu(),
                    wn.Dense(1, W_std=1.5, b_std=0.1))
    kernel = InfiniteWidthKernel(net, get=get)
    W, b = kernel.W_std.detach(), kernel.b_std.detach()
    same = wn.Serial(wn.Dense(1, W_std=W, b_std=b), wn.Erf(), wn.Dense(1, W_std=W, b_std=b), wn.Relu(),
                     wn.Dense(1, W_std=W, b_std=b))
    of = same.nngp if get == "nngp" else same.ntk
    x1, x2 = inputs(150, 3), inputs(9, 3, seed=1)
    full = of(x1)
    # exactly the network's kernel with the kernel's hyperparameters, whichever way GPyTorch asks
    assert torch.equal(kernel(x1, x2).to_dense(), of(x1, x2))
    assert torch.equal(kernel.forward(x1, x2), of(x1, x2))
    assert torch.equal(kernel(x1).to_dense(), full)
    assert torch.equal(kernel(x1, diag=True), full.diagonal())  # crosses the NTK's 64-input diagonal blocks
    assert torch.equal(kernel(x1, x1.clone(), diag=True), full.diagonal())
    # and the given network's kernel up to the softplus round trip of W_std and b_std
    original = net.nngp(x1, x2) if get == "nngp" else net.ntk(x1, x2)
    torch.testing.assert_close(kernel(x1, x2).to_dense(), original, rtol=1e-13, atol=0)
    assert kernel(x1, x2).to_dense().dtype == F64
    assert kernel(x1.float(), x2.float()).to_dense().dtype == torch.float32


def test_per_layer_hyperparameters_reach_their_own_layers():
    net = wn.Serial(wn.Dense(1, W_std=1.2, b_std=0.1), wn.Relu(), wn.Dense(1, W_std=1.6, b_std=None), wn.Relu(),
                    wn.Dense(1, W_std=0.9, b_std=0.3))
    kernel = InfiniteWidthKernel(net, per_layer=True)
    assert kernel.W_std.shape == (3,) and kernel.b_std.shape == (2,)  # b_std only where there is a bias
    torch.testing.assert_close(kernel.W_std.detach(), torch.tensor([1.2, 1.6, 0.9], dtype=F64), rtol=1e-15, atol=0)
    kernel.W_std = [1.0, 2.0, 0.5]
    kernel.b_std = [0.2, 0.7]
    x = inputs(8, 4)
    want = wn.Serial(wn.Dense(1, W_std=1.0, b_std=0.2), wn.Relu(), wn.Dense(1, W_std=2.0, b_std=None), wn.Relu(),
                     wn.Dense(1, W_std=0.5, b_std=0.7)).nngp(x)
    torch.testing.assert_close(kernel(x).to_dense(), want, rtol=1e-13, atol=0)
    assert kernel.network() == wn.Serial(wn.Dense(1, W_std=1.0, b_std=0.2), wn.Relu(), wn.Dense(1, W_std=2.0, b_std=None),
                                         wn.Relu(), wn.Dense(1, W_std=0.5, b_std=0.7))


def test_the_rebuild_goes_through_every_container():
    def build(W, b):
        block = wn.Serial(wn.Dense(1, W_std=W, b_std=b), wn.Relu())
        residual = wn.Serial(wn.FanOut(2), wn.Parallel(wn.Identity(), wn.Serial(wn.Dense(1, W_std=W, b_std=b), wn.Erf())),
                             wn.FanInSum())
        return wn.Serial(wn.Repeat(block, 2), residual, wn.Dense(1, W_std=W, b_std=b))

    kernel = InfiniteWidthKernel(build(1.0, 0.1))
    kernel.initialize(W_std=1.7, b_std=0.45)
    x = inputs(6, 3)
    torch.testing.assert_close(kernel(x).to_dense(), build(1.7, 0.45).nngp(x), rtol=1e-13, atol=0)
    assert kernel.network() == build(float(kernel.W_std.detach()), float(kernel.b_std.detach()))


def test_it_composes_with_gpytorch_kernels():
    kernel = InfiniteWidthKernel(relu_net())
    net = kernel_net(kernel)
    x = inputs(7, 3)
    scaled = gpytorch.kernels.ScaleKernel(kernel).double()
    scaled.outputscale = 2.5
    torch.testing.assert_close(scaled(x).to_dense(), 2.5 * net.nngp(x), rtol=1e-13, atol=0)
    total = (kernel + gpytorch.kernels.RBFKernel().double())(x).to_dense()
    rbf = gpytorch.kernels.RBFKernel().double()(x).to_dense()
    torch.testing.assert_close(total, net.nngp(x) + rbf, rtol=1e-13, atol=0)
    on_two = InfiniteWidthKernel(relu_net(), active_dims=(0, 2))
    assert torch.equal(on_two(x).to_dense(), net.nngp(x[:, [0, 2]]))


def test_a_fixed_kernel_has_no_parameters():
    net = relu_net()
    kernel = InfiniteWidthKernel(net, train=())
    assert list(kernel.parameters()) == []
    x = inputs(5, 2)
    assert torch.equal(kernel(x).to_dense(), net.nngp(x))
    assert kernel.network() is net


# ---- batches: the shapes GPyTorch and BoTorch pass ---------------------------------------------------
def test_batch_dimensions_broadcast_and_match_each_entry():
    kernel = InfiniteWidthKernel(relu_net(depth=2), get="ntk")
    net = kernel_net(kernel, depth=2)
    train = inputs(12, 3)
    q_batch = inputs(5, 2, 3, seed=1)  # (raw samples, q, d) against the training inputs
    k = kernel(q_batch, train).to_dense()  # all 10 rows against the training inputs in one call
    assert k.shape == (5, 2, 12)
    for i in range(5):
        torch.testing.assert_close(k[i], net.ntk(q_batch[i], train), rtol=1e-14, atol=0)
    # the training inputs repeated by value (a posterior's torch.cat), computed once
    again = kernel(q_batch, train.expand(5, 12, 3).clone()).to_dense()
    assert torch.equal(again, k)
    # two batch axes that broadcast, and a batch against itself
    a, b = inputs(2, 1, 4, 3, seed=2), inputs(3, 6, 3, seed=3)
    k = kernel(a, b).to_dense()
    assert k.shape == (2, 3, 4, 6)
    for i in range(2):
        for j in range(3):
            torch.testing.assert_close(k[i, j], net.ntk(a[i, 0], b[j]), rtol=1e-14, atol=0)
    k = kernel(q_batch).to_dense()
    assert all(torch.equal(k[i], net.ntk(q_batch[i])) for i in range(5))
    assert torch.equal(kernel(q_batch, diag=True), torch.stack([net.ntk(q_batch[i]).diagonal() for i in range(5)]))


def test_input_gradients_are_the_networks():
    """Equal inputs on both sides are computed as one symmetric kernel only when no gradient has
    to reach them separately: here x2 equals x1 but only x1 carries a gradient."""
    kernel = InfiniteWidthKernel(relu_net())
    net = kernel_net(kernel)
    x1 = inputs(6, 3).requires_grad_(True)
    x2 = x1.detach().clone()
    (g,) = torch.autograd.grad(kernel(x1, x2).to_dense().sum(), x1)
    (want,) = torch.autograd.grad(net.nngp(x1, x2).sum(), x1)
    torch.testing.assert_close(g, want, rtol=1e-12, atol=1e-14)
    (g,) = torch.autograd.grad(kernel(x1).to_dense().sum(), x1)  # x1 against itself: both sides move
    (want,) = torch.autograd.grad(net.nngp(x1).sum(), x1)
    torch.testing.assert_close(g, want, rtol=1e-12, atol=1e-14)


# ---- hyperparameter gradients through GPyTorch's marginal likelihood ---------------------------------
@pytest.mark.parametrize("per_layer", [False, True])
def test_marginal_likelihood_gradients_match_finite_differences(per_layer):
    x = inputs(30, 2)
    y = torch.sin(3 * x[:, 0]) + x[:, 1] ** 2
    likelihood = gpytorch.likelihoods.GaussianLikelihood()
    kernel = InfiniteWidthKernel(relu_net(1.3, 0.2, depth=2), per_layer=per_layer)
    model = ExactGP(x, y, likelihood, kernel).double()
    model.train()
    likelihood.noise = 0.05
    mll = gpytorch.mlls.ExactMarginalLogLikelihood(likelihood, model)

    def value():
        return mll(model(x), y)

    value().backward()
    h = 1e-5
    for name in ("raw_W_std", "raw_b_std"):
        raw = getattr(kernel, name)
        for i in range(raw.numel()):
            with torch.no_grad():
                flat = raw.view(-1)
                flat[i] += h
                up = float(value())
                flat[i] -= 2 * h
                down = float(value())
                flat[i] += h
            fd = (up - down) / (2 * h)
            assert float(raw.grad.view(-1)[i]) == pytest.approx(fd, rel=1e-5), (name, i)


def test_training_recovers_the_hyperparameters_of_the_gp_that_drew_the_data():
    """Targets drawn from the NNGP of a 2-hidden-layer ReLU network with W_std=1.8, b_std=0.4 and
    noise variance 0.01, at n=160 inputs in d=3, 8 independent draws (one batched exact GP that
    shares the hyperparameters). The Fisher information of that model (0.5 tr(C^-1 dC C^-1 dC),
    noise learned too) gives standard deviations of about 0.05 for W_std and 0.08 for b_std from
    one draw, 0.019 and 0.029 from 8; the tolerances are 4 of those."""
    g = torch.Generator().manual_seed(0)
    n, d, draws = 160, 3, 8
    x = torch.randn(n, d, generator=g, dtype=F64)
    cov = relu_net(1.8, 0.4, depth=2).nngp(x) + 0.01 * torch.eye(n, dtype=F64)
    y = (torch.linalg.cholesky(cov) @ torch.randn(n, draws, generator=g, dtype=F64)).T
    X = x.expand(draws, n, d)
    likelihood = gpytorch.likelihoods.GaussianLikelihood()
    kernel = InfiniteWidthKernel(relu_net(1.0, 0.1, depth=2))
    model = ExactGP(X, y, likelihood, kernel).double()
    model.train()
    mll = gpytorch.mlls.ExactMarginalLogLikelihood(likelihood, model)

    def loss():
        return -mll(model(X), y).sum()

    with torch.no_grad():
        before = float(loss())
    optimizer = torch.optim.LBFGS(model.parameters(), lr=1, max_iter=100, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        value = loss()
        value.backward()
        return value

    optimizer.step(closure)
    with torch.no_grad():
        after = float(loss())
    assert after < before - 5  # the loss is a sum over the 8 draws of per-input values
    assert float(kernel.W_std.detach()) == pytest.approx(1.8, abs=4 * 0.019)
    assert float(kernel.b_std.detach()) == pytest.approx(0.4, abs=4 * 0.029)
    assert float(likelihood.noise.detach()) == pytest.approx(0.01, rel=0.5)
    # the fitted network is the truth's architecture with the fitted values
    fitted = kernel.network()
    assert fitted.layers[0].W_std == pytest.approx(float(kernel.W_std.detach()))


# ---- BoTorch ---------------------------------------------------------------------------------------
def test_botorch_fits_and_proposes_a_candidate_within_the_bounds():
    from botorch.acquisition import LogExpectedImprovement, qLogExpectedImprovement
    from botorch.fit import fit_gpytorch_mll
    from botorch.models import SingleTaskGP
    from botorch.optim import optimize_acqf
    from botorch.test_functions import Branin
    from botorch.utils.transforms import unnormalize

    g = torch.Generator().manual_seed(0)
    branin = Branin(negate=True)
    x = torch.rand(15, 2, generator=g, dtype=F64)  # in the unit square: BoTorch's default transforms apply
    y = branin(unnormalize(x, branin.bounds)).unsqueeze(-1)
    kernel = InfiniteWidthKernel(relu_net(1.0, 0.1))
    gp = SingleTaskGP(x, y, covar_module=kernel)  # Standardize on the outcomes, by default
    mll = gpytorch.mlls.ExactMarginalLogLikelihood(gp.likelihood, gp)
    with torch.no_grad():
        before = float(mll(gp(x), gp.train_targets))
    fit_gpytorch_mll(mll)
    gp.train()
    with torch.no_grad():
        assert float(mll(gp(x), gp.train_targets)) > before
    gp.eval()
    assert gp.covar_module is kernel and kernel.raw_W_std.dtype == F64

    bounds = torch.tensor([[0.0, 0.0], [1.0, 1.0]], dtype=F64)
    candidate, value = optimize_acqf(LogExpectedImprovement(gp, best_f=y.max()), bounds=bounds, q=1,
                                     num_restarts=2, raw_samples=32)
    assert candidate.shape == (1, 2) and bool(torch.isfinite(value))
    assert bool(((candidate >= 0) & (candidate <= 1)).all())
    candidates, _ = optimize_acqf(qLogExpectedImprovement(gp, best_f=y.max()), bounds=bounds, q=2,
                                  num_restarts=2, raw_samples=32)
    assert candidates.shape == (2, 2) and bool(((candidates >= 0) & (candidates <= 1)).all())

    # a batch of q-batches (optimize_acqf's raw samples) has the posterior of each q-batch alone
    X = torch.rand(4, 2, 2, generator=g, dtype=F64)
    with torch.no_grad():
        together = gp.posterior(X)
        for i in range(4):
            alone = gp.posterior(X[i])
            torch.testing.assert_close(together.mean[i], alone.mean, rtol=1e-9, atol=1e-9)
            torch.testing.assert_close(together.variance[i], alone.variance, rtol=1e-9, atol=1e-9)


# ---- bad input ---------------------------------------------------------------------------------------
def test_bad_arguments_are_refused_with_the_rule_and_the_value():
    net = relu_net()
    with pytest.raises(ParameterError, match=r"net must be a widenet Layer.*\(got Linear\)"):
        InfiniteWidthKernel(torch.nn.Linear(2, 2))
    with pytest.raises(ParameterError, match=r"get must be one of 'nngp', 'ntk' \(got 'gp'\)"):
        InfiniteWidthKernel(net, get="gp")
    with pytest.raises(ParameterError, match=r"train must be a tuple of names from 'W_std', 'b_std', each once "
                                             r"\(got \('W_std', 'a'\)\)"):
        InfiniteWidthKernel(net, train=("W_std", "a"))
    with pytest.raises(ParameterError, match=r"memory must be a positive number of bytes.*\(got 'lots'\)"):
        InfiniteWidthKernel(net, memory="lots")
    with pytest.raises(ParameterError, match=r"per_layer must be True or False \(got 1\)"):
        InfiniteWidthKernel(net, per_layer=1)
    with pytest.raises(ParameterError, match=r"net has no Dense layer whose W_std or b_std could be trained"):
        InfiniteWidthKernel(wn.Serial(wn.Relu(), wn.Erf()))
    with pytest.raises(ParameterError, match=r"train names 'b_std', but no Dense layer of net has a bias"):
        InfiniteWidthKernel(relu_net(b_std=None))
    with pytest.raises(ParameterError, match=r"a trained b_std must start > 0 .* layers\[2\] has b_std=0.0"):
        InfiniteWidthKernel(wn.Serial(wn.Dense(1, b_std=0.1), wn.Relu(), wn.Dense(1)), train="b_std", per_layer=True)
    with pytest.raises(ParameterError, match=r"per_layer=False every Dense layer must start from one shared W_std, "
                                             r"but they differ \(layers\[0\]: 1.5, layers\[2\]: 1.0\)"):
        InfiniteWidthKernel(wn.Serial(wn.Dense(1, W_std=1.5), wn.Relu(), wn.Dense(1)), train="W_std")


def test_bad_inputs_and_values_are_refused():
    kernel = InfiniteWidthKernel(relu_net())
    x = inputs(5, 3)
    bad = x.clone()
    bad[2, 1] = float("nan")
    with pytest.raises(NonFiniteInputError, match=r"InfiniteWidthKernel: x1 must be finite, but 1 of its 15 entries"):
        kernel(bad)
    with pytest.raises(NonFiniteInputError, match=r"InfiniteWidthKernel: x2 must be finite"):
        kernel(x, bad)
    with pytest.raises(ShapeError, match=r"x1 and x2 must share one dtype"):
        kernel.forward(x, x.float())
    with pytest.raises(ShapeError, match=r"the batch shapes of x1 and x2 must broadcast"):
        kernel.forward(inputs(2, 5, 3), inputs(3, 5, 3))
    with pytest.raises(ParameterError, match=r"last_dim_is_batch must be False \(got True\)"):
        kernel(x, last_dim_is_batch=True)
    with pytest.raises(ParameterError, match=r"W_std must be finite and > 0 \(got -1.0\)"):
        kernel.W_std = -1.0
    with pytest.raises(AttributeError, match=r"W_std is not trained \(train=\('b_std',\)\)"):
        InfiniteWidthKernel(relu_net(), train="b_std").W_std
