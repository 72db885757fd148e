"""Resizing (src/widenet/layers/image_resize.py)."""

import json
import subprocess

import numpy as np
import pytest
import torch

import widenet as wn
from layers.contract import KernelContract, check_neural_tangents
from oracles import monte_carlo, rel_frobenius
from widenet.errors import ParameterError, ShapeError
from widenet.layers.image_resize import METHODS, resize_matrix

D = torch.float64


class TestImageResize(KernelContract):
    params = {"size": (3, 6)}
    input_shape = (2, 5, 4)
    twin = "ImageResizeModule"
    bad = (
        (lambda: wn.ImageResize(0), ParameterError, r"ImageResize: size must be an int >= 1 \(or -1 to keep a size\)"),
        (lambda: wn.ImageResize((2, 2, 2, 2)), ParameterError, r"ImageResize: size must be .* 1 to 3 of them"),
        (lambda: wn.ImageResize(4, method="bilinear"), ParameterError,
         r"ImageResize: method must be one of 'linear', 'nearest', 'cubic', 'lanczos3', 'lanczos5' \(got 'bilinear'\)"),
        (lambda: wn.ImageResize(4, antialias="yes"), ParameterError, r"ImageResize: antialias must be True or False"),
    )

    def network(self, width, parameterization="ntk", size=(3, 6)):
        return wn.Serial(wn.Conv(width, 3, W_std=1.3, b_std=0.2, parameterization=parameterization), wn.Relu(),
                         wn.ImageResize(size, method="cubic"), wn.Conv(width, 2, parameterization=parameterization),
                         wn.Relu(), wn.Flatten(), wn.Dense(min(width, 256), 1.1, 0.1, parameterization))


@pytest.mark.parametrize("method", METHODS)
def test_every_method_matches_monte_carlo_of_the_twin(method):
    g = torch.Generator().manual_seed(4)
    x1, x2 = torch.randn(3, 2, 6, 5, generator=g, dtype=D), torch.randn(2, 2, 6, 5, generator=g, dtype=D)
    net = wn.Serial(wn.Conv(256, 3, W_std=1.3, b_std=0.6), wn.Erf(), wn.ImageResize((3, 8), method=method),
                    wn.Flatten(), wn.Dense(256, 1.1, 0.1))
    exact = net.kernel(x1, x2)
    nngp, ntk = monte_carlo(net, x1, x2, n_samples=48)
    assert rel_frobenius(nngp, exact.nngp) < 0.05 and rel_frobenius(ntk, exact.ntk) < 0.05


def test_resampling_matrices_are_interpolations():
    # every method reproduces constants where its samples lie inside the input, and linear
    # upsampling by 2 puts the known 1/4-3/4 weights; "nearest" picks one input per output
    for method in METHODS:
        for n, m in ((5, 9), (8, 3), (6, 6), (4, 12)):
            r = resize_matrix(n, m, method, True)
            assert r.shape == (m, n)
            assert np.allclose(r.sum(1), 1.0, atol=1e-12), (method, n, m)
    r = resize_matrix(2, 4, "linear", True)
    assert np.allclose(r, [[1, 0], [0.75, 0.25], [0.25, 0.75], [0, 1]])
    assert np.array_equal(resize_matrix(4, 2, "nearest", True), [[0, 1, 0, 0], [0, 0, 0, 1]])


def test_resizing_a_linear_network_is_the_resized_covariance():
    # without nonlinearities the output covariance of one conv layer is known in closed form:
    # resize then flatten equals R K R^T, computed here by hand from the input
    x = torch.randn(3, 1, 5, dtype=D, generator=torch.Generator().manual_seed(6))
    net = wn.Serial(wn.ImageResize(8, method="lanczos3"), wn.Flatten(), wn.Dense(1))
    r = torch.as_tensor(resize_matrix(5, 8, "lanczos3", True))
    y = torch.einsum("ij,nj->ni", r, x[:, 0])  # the resized inputs (one channel)
    want = y @ y.T / 8  # Flatten averages the position diagonal; Dense(1, W_std=1) of one channel
    assert torch.allclose(net.kernel(x).nngp, want, rtol=1e-12)


def test_sizes_must_fit_the_input():
    with pytest.raises(ShapeError, match=r"ImageResize: size \(3, 3, 3\) names 3 spatial dimension\(s\) but the input has 2"):
        wn.Serial(wn.Conv(4, 3), wn.ImageResize((3, 3, 3)), wn.Flatten(), wn.Dense(1)).kernel(torch.randn(2, 1, 5, 5))
    with pytest.raises(ShapeError, match=r"ImageResize: needs inputs with spatial axes"):
        wn.Serial(wn.Dense(4), wn.ImageResize(3), wn.Dense(1)).kernel(torch.randn(2, 5))


@pytest.mark.nt
def test_matrices_equal_jax_image_resize():
    from nt import nt_python

    python = nt_python()
    if python is None:  # as nt_kernel: the nt marker needs the environment, and says so
        raise RuntimeError("Neural Tangents environment not found (run shared tools/nt-env.sh)")
    cases = [(n, m, method, aa) for n, m in ((5, 9), (8, 3), (7, 4), (4, 12), (6, 5))
             for method in METHODS for aa in (True, False)]
    script = (
        "import json, sys, numpy as np, jax\n"
        "jax.config.update('jax_enable_x64', True)\n"
        "out = []\n"
        "for n, m, method, aa in json.loads(sys.argv[1]):\n"
        "    r = jax.image.resize(np.eye(n), (n, m), method=method, antialias=aa)\n"
        "    out.append(np.asarray(r).T.tolist())\n"
        "print(json.dumps(out))\n")
    done = subprocess.run([python, "-c", script, json.dumps(cases)], capture_output=True, text=True, check=True,
                          env={"TF_CPP_MIN_LOG_LEVEL": "3", "JAX_PLATFORMS": "cpu"})
    for (n, m, method, aa), theirs in zip(cases, json.loads(done.stdout.strip().splitlines()[-1])):
        assert np.allclose(resize_matrix(n, m, method, aa), np.asarray(theirs), rtol=0, atol=1e-12), (n, m, method, aa)


@pytest.mark.nt
@pytest.mark.parametrize("method", ["linear", "nearest"])
@pytest.mark.parametrize("size", [(3, 7), (8, -1), (2, 2)])
def test_matches_neural_tangents(method, size):
    # The resize comes first: after a Conv, Neural Tangents keeps the kernel's spatial axes in
    # reversed order (is_reversed) and its ImageResize kernel ignores that, resizing height
    # by width's size (measured: 13-38% off for (3, 7) and (8, -1); equal sizes agree).
    # widenet's kernel there matches its twin's Monte Carlo (test above).
    net = wn.Serial(wn.ImageResize(size, method=method), wn.Conv(8, 3, W_std=1.3, b_std=0.2), wn.Erf(),
                    wn.Conv(8, 2, W_std=1.1), wn.Flatten(), wn.Dense(1))
    g = torch.Generator().manual_seed(5)
    x1, x2 = torch.randn(3, 2, 5, 4, generator=g, dtype=D), torch.randn(2, 2, 5, 4, generator=g, dtype=D)
    check_neural_tangents(net, x1, x2)
