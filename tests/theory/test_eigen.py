"""Matrix-free eigenpairs (widenet.theory._eigen): NTK and Hessian eigenpairs by Lanczos against
dense ones, subspace overlaps, and ops without forward-mode derivatives falling back to double
backward."""

import pytest
import torch
import torch.nn.functional as F

import widenet as wn
from theory._helpers import _flat_eigh, _gen, _hessian_setup
from widenet import empirical, theory
from widenet.errors import ShapeError

D = torch.float64


def test_ntk_lanczos_equals_the_dense_eigenvalues_of_the_full_kernel():
    net = wn.Serial(wn.Dense(48, W_std=1.4, b_std=0.1), wn.Relu(), wn.Dense(3, W_std=1.2, b_std=0.1))
    model = net.module(5, seed=0, dtype=D)
    x = torch.randn(40, 5, dtype=D, generator=_gen(0))
    full = empirical.ntk(model, x, outputs="full", method="jacobian")  # (N, N, O, O), by Jacobians
    matrix = full.permute(0, 2, 1, 3).reshape(120, 120) / 120
    w, v = _flat_eigh(matrix)
    pairs = theory.ntk_eigenpairs(model, x, 4, method="lanczos")
    assert pairs.method == "lanczos" and pairs.matvecs < 120  # fewer products than the matrix has columns
    torch.testing.assert_close(pairs.values, w[:4], rtol=1e-9, atol=0)
    assert theory.subspace_overlap(pairs, v[:, :4].T) == pytest.approx(1.0, abs=1e-8)
    dense = theory.ntk_eigenpairs(model, x, 4, method="dense")
    torch.testing.assert_close(dense.values, w[:4], rtol=1e-10, atol=0)
    unnormalized = theory.ntk_eigenpairs(model, x, 1, normalize=False, method="lanczos")
    assert unnormalized.top == pytest.approx(120 * float(w[0]), rel=1e-9)
    # The last layer only: its kernel is the readout NNGP times the identity over outputs, so
    # every eigenvalue is threefold.
    last = empirical.ntk(model, x, outputs="full", params=["2."], method="jacobian")
    w_last = torch.linalg.eigvalsh(last.permute(0, 2, 1, 3).reshape(120, 120) / 120).flip(0)
    top_last = theory.ntk_eigenpairs(model, x, 6, params=["2."], method="lanczos")
    torch.testing.assert_close(top_last.values, w_last[:6], rtol=1e-9, atol=0)
    assert float(top_last.values[0] - top_last.values[2]) < 1e-10 * top_last.top
    # A convolutional model in float32 agrees to float32 accuracy.
    cnn = wn.Serial(wn.Conv(8, 3), wn.Relu(), wn.GlobalAvgPool(), wn.Dense(2)).module((2, 10), seed=1)
    xc = torch.randn(12, 2, 10, generator=_gen(1))
    k32 = empirical.ntk(cnn, xc, outputs="full", method="jacobian")
    w32 = torch.linalg.eigvalsh(k32.permute(0, 2, 1, 3).reshape(24, 24).double() / 24).flip(0)
    top32 = theory.ntk_eigenpairs(cnn, xc, 2, method="lanczos")
    torch.testing.assert_close(top32.values, w32[:2], rtol=1e-4, atol=0)


def test_hessian_lanczos_equals_dense_eigenpairs():
    model, x, y, hessian = _hessian_setup()
    n = hessian.shape[0]
    assert n == 6 * 12 + 12 + 12 * 4 + 4
    w, v = _flat_eigh(hessian)
    top = theory.hessian_eigenpairs(model, F.cross_entropy, x, y, 5, method="lanczos")
    torch.testing.assert_close(top.values, w[:5], rtol=1e-8, atol=1e-12)
    # Eigenvectors up to sign: |<v_lanczos, v_dense>| = 1 each.
    torch.testing.assert_close((top.vectors @ v[:, :5]).diagonal().abs(), torch.ones(5, dtype=D), rtol=0, atol=1e-6)
    bottom = theory.hessian_eigenpairs(model, F.cross_entropy, x, y, 3, which="smallest", method="lanczos")
    torch.testing.assert_close(bottom.values, w.flip(0)[:3], rtol=1e-6, atol=1e-10)
    assert bottom.values[0] < 0  # a tanh network's cross-entropy Hessian is indefinite at initialization
    dense = theory.hessian_eigenpairs(model, F.cross_entropy, x, y, 5, method="dense")
    torch.testing.assert_close(dense.values, w[:5], rtol=1e-10, atol=1e-12)


def test_subspace_overlap_identities():
    q, _ = torch.linalg.qr(torch.randn(200, 200, dtype=D, generator=_gen(5)))
    a, b = q[:, :10].T, q[:, 10:20].T
    assert theory.subspace_overlap(a, a) == pytest.approx(1.0, abs=1e-12)
    assert theory.subspace_overlap(a, b) == pytest.approx(0.0, abs=1e-12)
    mixed = torch.cat([q[:, :5], q[:, 10:15]], 1).T  # half of a's span
    assert theory.subspace_overlap(a, mixed) == pytest.approx(0.5, abs=1e-12)
    r, _ = torch.linalg.qr(torch.randn(200, 10, dtype=D, generator=_gen(6)))
    assert theory.subspace_overlap(a, r.T) == pytest.approx(10 / 200, rel=0.6)  # random: k / n on average
    with pytest.raises(ShapeError, match="a and b must be"):
        theory.subspace_overlap(a, q[:150, :3].T)


def test_ops_without_forward_mode_fall_back_to_double_backward():
    from empirical._helpers import _NoForwardMode

    torch.manual_seed(5)
    model = _NoForwardMode().double()
    x = torch.randn(5, 3, dtype=D)
    # NTK: J (J^T v) with J t by double backward, against the kernel of explicit Jacobians.
    full = empirical.ntk(model, x, outputs="full", method="jacobian")
    w = torch.linalg.eigvalsh(full.permute(0, 2, 1, 3).reshape(10, 10) / 10).flip(0)
    torch.testing.assert_close(theory.ntk_eigenpairs(model, x, 3, method="dense").values, w[:3], rtol=1e-10, atol=0)
    # Hessian: reverse-over-reverse products, against torch.autograd's reverse-mode Hessian.
    y = torch.randn(5, 2, dtype=D)
    params = [p.detach() for p in model.parameters()]
    names = [n for n, _ in model.named_parameters()]

    def loss_of(*ps):
        out = torch.func.functional_call(model, dict(zip(names, ps)), (x,))
        return F.mse_loss(out, y)

    blocks = torch.autograd.functional.hessian(loss_of, tuple(params))
    sizes = [p.numel() for p in params]
    hessian = torch.cat([torch.cat([blocks[i][j].reshape(sizes[i], sizes[j]) for j in range(len(params))], 1)
                         for i in range(len(params))])
    top = torch.linalg.eigvalsh(hessian).flip(0)[:3]
    torch.testing.assert_close(theory.hessian_eigenpairs(model, F.mse_loss, x, y, 3, method="lanczos").values, top,
                               rtol=1e-8, atol=1e-12)


def test_a_loss_whose_forward_over_reverse_fails_in_torch_falls_back_to_double_backward():
    # torch's mse_loss backward writes into a ZeroTensor under forward-over-reverse (a
    # RuntimeError, not NotImplementedError) behind a ReLU network: the Hessian-vector products
    # then come from double backward, checked against the dense reverse-mode Hessian.
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1)).double()
    x = torch.randn(12, 6, dtype=D)
    y = torch.sign(x[:, :1])
    names = [n for n, _ in model.named_parameters()]

    def loss_of(*ps):
        return F.mse_loss(torch.func.functional_call(model, dict(zip(names, ps)), (x,)), y)

    blocks = torch.autograd.functional.hessian(loss_of, tuple(p.detach() for p in model.parameters()))
    sizes = [p.numel() for p in model.parameters()]
    dense = torch.cat([torch.cat([blocks[i][j].reshape(sizes[i], sizes[j]) for j in range(len(sizes))], 1)
                       for i in range(len(sizes))], 0)
    top = theory.hessian_eigenpairs(model, F.mse_loss, x, y, 3, method="lanczos")
    torch.testing.assert_close(top.values, torch.linalg.eigvalsh(dense).flip(0)[:3], rtol=1e-8, atol=1e-12)
