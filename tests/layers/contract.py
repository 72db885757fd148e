"""The layer contract (``widenet/layers/base.py``) as tests: every layer's tests inherit it.

A layer's test class subclasses :class:`KernelContract` (layers with a kernel rule),
:class:`NonlinearityContract` (elementwise layers) or :class:`LayerContract` (layers with a
finite twin but no kernel, such as MaxPool) and states, as class attributes and one method:

* ``network(width, parameterization="ntk", **params)``: a small network around the layer under
  test, built with ``params`` (its hyperparameters), whose outputs have no spatial axes;
* ``params``: the hyperparameters of the layer in the tested network (keyword arguments);
* ``float_params``: the names among them that are floats, which ``gradcheck`` differentiates
  (passed as 0-d tensors);
* ``input_shape``: one input's shape, ``(features,)`` or ``(C, *S)``;
* ``twin``: the class name of the layer's finite twin, which the network's ``repr`` shows;
* ``bad``: ``(make, exception, regex)`` triples: constructions with bad hyperparameters and
  the error each must raise before any work;
* for the Monte Carlo check: ``mc_width``, ``mc_samples``, ``mc_ntk`` (whether the finite
  NTK is estimated too), ``parameterizations`` (each one is checked).

Every check compares with something independent of the code under test: Monte Carlo over the
layer's own twin (``oracles.monte_carlo``: fresh networks, autograd Jacobians), the transposed
kernel, sub-batches, another dtype, other tilings, ``torch.autograd.gradcheck``'s finite
differences, and Neural Tangents (marker ``nt``).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import widenet as wn
from oracles import monte_carlo, rel_frobenius

D = torch.float64
TOL = 0.05  # Neural Tangents' own Monte Carlo tests: width 1024, 100-800 networks, 4-6%


def rel_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """``max |a - b| / max |b|``."""
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-300))


class LayerContract:
    """The contract of every layer: its twin and its hyperparameters."""

    params: dict = {}
    float_params: tuple = ()
    input_shape: tuple = (6,)
    twin: str = ""
    bad: tuple = ()

    def network(self, width: int, parameterization: str = "ntk", **params) -> wn.Layer:
        raise NotImplementedError

    def net(self, width: int = 16, parameterization: str = "ntk") -> wn.Layer:
        return self.network(width, parameterization, **self.params)

    def inputs(self, n: int, seed: int = 0, dtype=D) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        return torch.randn((n,) + tuple(self.input_shape), generator=g, dtype=dtype)

    def pair(self, n1: int, n2: int, seed: int = 0, dtype=D) -> tuple[torch.Tensor, torch.Tensor]:
        """Two sets of inputs drawn one after the other from one generator."""
        g = torch.Generator().manual_seed(seed)
        shape = tuple(self.input_shape)
        return (torch.randn((n1,) + shape, generator=g, dtype=dtype),
                torch.randn((n2,) + shape, generator=g, dtype=dtype))

    def test_twin_shows_in_the_networks_repr_and_runs(self):
        net = self.net()
        model = net.module(self.input_shape, seed=0, dtype=D)
        assert self.twin in repr(model)
        x = self.inputs(3)
        with torch.no_grad():
            y = model(x)
            again = net.module(self.input_shape, seed=0, dtype=D)(x)
        assert y.shape[0] == 3 and bool(torch.isfinite(y).all())
        assert torch.equal(y, again)  # one seed, one network

    def test_bad_hyperparameters_fail_at_construction(self):
        if not self.bad:
            pytest.skip(f"{type(self).__name__}: the layer has no hyperparameters to get wrong")
        for make, error, match in self.bad:
            with pytest.raises(error, match=match):
                make()


class KernelContract(LayerContract):
    """The contract of layers with a kernel rule."""

    mc_width = 256
    mc_samples = 64
    mc_ntk = True
    mc_tol = TOL
    parameterizations: tuple = ("ntk",)
    float32_tol = 1e-4
    reproducible_tol = 1e-12  # reproducible mode against the default: rounding only

    def side(self, x1: torch.Tensor, x2=None) -> dict:
        """Keyword arguments that go with inputs ``x1`` (and ``x2``) into every kernel call
        and Monte Carlo run: layers that read side inputs (``Aggregate``'s graphs,
        ``pattern1``/``pattern2``) derive them from the inputs, one per input, so that every
        sub-batch carries its own."""
        return {}

    def kernel(self, net: wn.Layer, x1: torch.Tensor, x2=None, **options) -> wn.Kernel:
        return net.kernel(x1, x2, **self.side(x1, x2), **options)

    def mc_cases(self):
        """``(params, n_samples)`` of the networks checked against Monte Carlo."""
        return [(self.params, self.mc_samples)]

    def test_kernel_matches_monte_carlo_of_its_twin(self):
        x1, x2 = self.pair(4, 3)
        torch.manual_seed(0)  # twins that draw in their forward pass (dropout masks)
        for params, samples in self.mc_cases():
            for parameterization in self.parameterizations:
                net = self.network(self.mc_width, parameterization, **params)
                exact = self.kernel(net, x1, x2)
                nngp, ntk = monte_carlo(net, x1, x2, n_samples=samples, ntk=self.mc_ntk,
                                         **self.side(x1, x2))
                assert rel_frobenius(nngp, exact.nngp) < self.mc_tol, (params, parameterization)
                if ntk is not None:
                    assert rel_frobenius(ntk, exact.ntk) < self.mc_tol, (params, parameterization)

    def test_same_inputs_kernel_is_exactly_symmetric_and_psd(self):
        k = self.kernel(self.net(), self.inputs(9, seed=2))
        for m in (k.nngp, k.ntk):
            assert torch.equal(m, m.T)
            assert torch.linalg.eigvalsh(m).min() >= -1e-10 * m.diagonal().abs().max()
        assert torch.equal(k.nngp.diagonal(), k.var1)
        assert k.same_inputs

    def test_batch_invariance(self):
        net, x = self.net(), self.inputs(10, seed=3)
        full, sub = self.kernel(net, x), self.kernel(net, x[1:4], x[6:10])
        for name in ("nngp", "ntk"):
            assert rel_error(getattr(sub, name), getattr(full, name)[1:4, 6:10]) <= 1e-12, name
        assert rel_error(sub.var1, full.var1[1:4]) <= 1e-12
        assert rel_error(sub.var2, full.var1[6:10]) <= 1e-12

    def test_float32_agrees_with_float64(self):
        net, x = self.net(), self.inputs(6, seed=4)
        k64, k32 = self.kernel(net, x), self.kernel(net, x.float())
        assert k32.nngp.dtype == torch.float32 and k32.ntk.dtype == torch.float32
        for name in ("nngp", "ntk"):
            assert rel_error(getattr(k32, name).double(), getattr(k64, name)) <= self.float32_tol, name

    def test_tiles_equal_one_call(self):
        net, (x1, x2) = self.net(), self.pair(7, 5, seed=5)
        cross, same = self.kernel(net, x1, x2), self.kernel(net, x1)
        for block_size in (1, 3):
            tiled_cross = self.kernel(net, x1, x2, block_size=block_size)
            tiled_same = self.kernel(net, x1, block_size=block_size)
            for name in ("nngp", "ntk"):
                assert rel_error(getattr(tiled_cross, name), getattr(cross, name)) <= 1e-13, (name, block_size)
                assert rel_error(getattr(tiled_same, name), getattr(same, name)) <= 1e-13, (name, block_size)

    def test_reproducible_tiles_equal_one_call_bit_for_bit(self):
        net, (x1, x2) = self.net(), self.pair(6, 5, seed=6)
        one, one_same = self.kernel(net, x1, x2, reproducible=True), self.kernel(net, x1, reproducible=True)
        default = self.kernel(net, x1, x2)
        for block_size in (1, 4):
            tiled = self.kernel(net, x1, x2, reproducible=True, block_size=block_size)
            tiled_same = self.kernel(net, x1, reproducible=True, block_size=block_size)
            for name in ("nngp", "ntk"):
                assert torch.equal(getattr(tiled, name), getattr(one, name)), (name, block_size)
                assert torch.equal(getattr(tiled_same, name), getattr(one_same, name)), (name, block_size)
        for name in ("nngp", "ntk"):
            assert rel_error(getattr(one, name), getattr(default, name)) <= self.reproducible_tol, name

    def test_gradients_in_the_inputs_pass_gradcheck(self):
        net = self.net(8)
        x1, x2 = (x.requires_grad_() for x in self.pair(2, 2, seed=7))

        def cross(a, b):
            k = self.kernel(net, a, b)
            return k.nngp, k.ntk

        def same(a):
            k = self.kernel(net, a)
            return k.nngp, k.ntk

        assert torch.autograd.gradcheck(cross, (x1, x2), fast_mode=True)
        assert torch.autograd.gradcheck(same, (x1,), fast_mode=True)

    def test_gradients_in_the_hyperparameters_pass_gradcheck(self):
        if not self.float_params:
            pytest.skip(f"{type(self).__name__}: the layer has no float hyperparameters")
        names = list(self.float_params)
        values = [torch.tensor(float(self.params[n]), dtype=D, requires_grad=True) for n in names]
        x1, x2 = self.pair(3, 2, seed=8)

        def kernel(*tensors):
            params = {**self.params, **dict(zip(names, tensors))}
            k = self.kernel(self.network(8, "ntk", **params), x1, x2)
            return k.nngp, k.ntk

        assert torch.autograd.gradcheck(kernel, values, fast_mode=True)

    def nt_network(self) -> wn.Layer:
        """The network compared with Neural Tangents (by default the tested one)."""
        return self.net(64)

    @pytest.mark.nt
    def test_matches_neural_tangents(self):
        from nt import NoCounterpart, nt_kernel

        net, (x1, x2) = self.nt_network(), self.pair(5, 4, seed=9)
        try:
            theirs = nt_kernel(net, x1, x2, **self.side(x1, x2))
        except NoCounterpart as err:
            pytest.skip(str(err))
        ours = self.kernel(net, x1, x2)
        for name in ("nngp", "ntk"):
            assert rel_error(getattr(ours, name), torch.from_numpy(np.asarray(theirs[name]))) <= 1e-10, name


def check_neural_tangents(net: wn.Layer, x1: torch.Tensor, x2: torch.Tensor, tol: float = 1e-10,
                          pattern1=None, pattern2=None) -> None:
    """``net``'s NNGP and NTK equal Neural Tangents' on the same inputs within ``tol``
    (relative to the largest entry), with ``x2`` given and with ``x2=None`` (``pattern1``,
    ``pattern2``: the inputs' graphs, for networks with an ``Aggregate``)."""
    from nt import nt_kernel

    for second in (x2, None):
        graphs = {} if pattern1 is None else {"pattern1": pattern1, "pattern2": None if second is None else pattern2}
        theirs = nt_kernel(net, x1, second, **graphs)
        ours = net.kernel(x1, second, **graphs)
        for name in ("nngp", "ntk"):
            assert rel_error(getattr(ours, name), torch.as_tensor(theirs[name])) <= tol, (name, second is None)


class NonlinearityContract(KernelContract):
    """The contract of elementwise layers: ``layer_type`` with ``params`` inside
    ``Dense - phi - Dense``, in both parameterizations, and its dual activation against an
    independent integral: high-degree quadrature (``dual_oracle = "quadrature"``, smooth
    functions) or bivariate Monte Carlo (``"monte_carlo"``, kinked ones)."""

    layer_type: type = None
    twin = "ActivationModule"
    mc_width = 1024
    mc_samples = 200
    parameterizations = ("ntk", "standard")
    dual_oracle = "quadrature"
    dual_rtol = 1e-9  # closed forms against the quadrature oracle

    def layer(self, **params) -> wn.Layer:
        return self.layer_type(**params)

    def network(self, width, parameterization="ntk", **params):
        return wn.Serial(wn.Dense(width, 1.3, 0.2, parameterization), self.layer(**params),
                         wn.Dense(min(width, 256), 0.9, 0.1, parameterization))

    def dual_cases(self):
        """The hyperparameters whose dual activations are checked."""
        return [self.params]

    def test_dual_activation_matches_an_independent_integral(self):
        for params in self.dual_cases():
            layer = self.layer(**params)
            if self.dual_oracle == "quadrature":
                check_against_quadrature(layer, self.dual_rtol)
            else:
                check_against_monte_carlo(layer)


# ---- the dual activation's oracles ---------------------------------------------------------------

def covariances(n: int = 40, seed: int = 0):
    """Random (q1, q2, K) triples, including correlations near +-1 and zero variances."""
    g = torch.Generator().manual_seed(seed)
    q1 = torch.rand(n, generator=g, dtype=D) * 2.5 + 0.05
    q2 = torch.rand(n, generator=g, dtype=D) * 2.5 + 0.05
    rho = torch.rand(n, generator=g, dtype=D) * 2 - 1
    rho[:4] = torch.tensor([1.0, -1.0, 1 - 1e-9, -1 + 1e-9], dtype=D)
    q1[4], q2[5] = 0.0, 0.0
    return q1, q2, rho * torch.sqrt(q1 * q2)


def dual(layer: wn.Layer, q1, q2, K):
    """(T, Tdot, T(q1, q1)) on paired covariances through the public Kernel API."""
    n = K.shape[0]
    kernel = wn.Kernel(nngp=torch.diag(K), ntk=torch.ones(n, n, dtype=K.dtype), var1=q1, var2=q2,
                       is_gaussian=True)
    out = layer.apply(kernel)
    return torch.diagonal(out.nngp), torch.diagonal(out.ntk), out.var1


def autograd_derivative(fn):
    def d(x):
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            return torch.autograd.grad(fn(x).sum(), x)[0]
    return d


def check_against_quadrature(layer: wn.Layer, rtol: float = 1e-9) -> None:
    """Closed form against a degree-200 Gauss-Hermite rule over the same function."""
    q1, q2, K = covariances()
    T, Tdot, var = dual(layer, q1, q2, K)
    reference = wn.Elementwise(layer.fn, dfn=autograd_derivative(layer.fn), degree=200)
    T_ref, Tdot_ref, var_ref = dual(reference, q1, q2, K)
    scale = T_ref.abs().max()
    assert torch.allclose(T, T_ref, rtol=rtol, atol=rtol * scale), layer
    assert torch.allclose(Tdot, Tdot_ref, rtol=rtol, atol=rtol * Tdot_ref.abs().max() + 1e-12), layer
    assert torch.allclose(var, var_ref, rtol=rtol, atol=1e-12), layer


SQRT_EPS = 1e-7


def _mc_dual(fn, dfn, q1, q2, K, n_samples, seed):
    g = torch.Generator().manual_seed(seed)
    n = K.shape[0]
    z = torch.randn(2, n_samples, n, generator=g, dtype=D)
    prod = q1 * q2
    rho = torch.where(prod > 0, K / torch.sqrt(torch.where(prod > 0, prod, 1)), 0).clamp(-1, 1)
    u = torch.sqrt(q1) * z[0]
    v = torch.sqrt(q2) * (rho * z[0] + torch.sqrt(1 - rho**2) * z[1])
    out = []
    for f in (fn, dfn):
        s = f(u) * f(v)
        out.append((s.mean(0), s.std(0) / math.sqrt(n_samples)))
    return out


def check_against_monte_carlo(layer: wn.Layer) -> None:
    """Closed form against bivariate Monte Carlo, within 5 standard errors (kinked functions,
    where quadrature converges slowly)."""
    q1, q2, K = covariances(n=24, seed=1)
    nonzero = (q1 > 0) & (q2 > 0)  # at zero variance phi'(0) is a convention
    T, Tdot, var = dual(layer, q1, q2, K)
    dfn = (lambda x: torch.zeros_like(x)) if isinstance(layer, wn.Sign) else autograd_derivative(layer.fn)
    (T_mc, T_se), (D_mc, D_se) = _mc_dual(layer.fn, dfn, q1, q2, K, 400_000, seed=2)
    # At |rho| = 1 the angle is only determined to sqrt(machine epsilon) by a rounded K:
    # SQRT_EPS absorbs that, and is far below every Monte Carlo standard error elsewhere.
    assert torch.all((T - T_mc).abs() <= 5 * T_se + SQRT_EPS), (layer, T, T_mc, T_se)
    if not isinstance(layer, wn.RectifiedMonomial) or layer.degree > 0:
        ok = (Tdot - D_mc).abs() <= 5 * D_se + SQRT_EPS
        assert torch.all(ok[nonzero]), (layer, Tdot, D_mc, D_se)
    z = torch.randn(400_000, 1, dtype=D, generator=torch.Generator().manual_seed(3))
    diag_mc = layer.fn(torch.sqrt(q1) * z) ** 2
    assert torch.all((var - diag_mc.mean(0)).abs() <= 5 * diag_mc.std(0) / math.sqrt(400_000) + 1e-12)
