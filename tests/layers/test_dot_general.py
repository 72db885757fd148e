"""Fixed linear maps of positions (src/widenet/layers/dot_general.py)."""

import pytest
import torch

import widenet as wn
from layers.contract import KernelContract
from oracles import monte_carlo, rel_frobenius
from widenet.errors import ParameterError, ShapeError
from widenet.layers.image_resize import resize_matrix

D = torch.float64
R = torch.randn(4, 3, 2, dtype=D, generator=torch.Generator().manual_seed(11)) / 2


class TestDotGeneral(KernelContract):
    params = {"rhs": R, "axes": (1,), "rhs_axes": (0,)}
    input_shape = (2, 5, 4)
    twin = "DotGeneralModule"
    bad = (
        (lambda: wn.DotGeneral("abc"), ParameterError, r"DotGeneral: rhs must be a tensor of floats"),
        (lambda: wn.DotGeneral(torch.ones(3, dtype=torch.long)), ParameterError,
         r"DotGeneral: rhs must be a finite float tensor"),
        (lambda: wn.DotGeneral(torch.full((3,), float("nan"))), ParameterError,
         r"DotGeneral: rhs must be a finite float tensor"),
        (lambda: wn.DotGeneral(R, axes=(0, 1), rhs_axes=(0,)), ParameterError,
         r"DotGeneral: axes and rhs_axes must be equally many distinct non-negative ints"),
        (lambda: wn.DotGeneral(R, axes=(0,), rhs_axes=(3,)), ParameterError, r"rhs_axes below rhs's 3 axes"),
    )

    def network(self, width, parameterization="ntk", rhs=R, axes=(1,), rhs_axes=(0,)):
        return wn.Serial(wn.Conv(width, 3, W_std=1.3, b_std=0.2, parameterization=parameterization), wn.Relu(),
                         wn.DotGeneral(rhs, axes, rhs_axes), wn.Conv(width, 2, parameterization=parameterization),
                         wn.Relu(), wn.GlobalAvgPool(), wn.Dense(min(width, 256), 1.1, 0.1, parameterization))


def test_a_resize_matrix_as_dot_general_is_image_resize():
    x = torch.randn(3, 2, 6, 5, dtype=D, generator=torch.Generator().manual_seed(2))
    r0 = torch.as_tensor(resize_matrix(6, 4, "cubic", True)).T  # (in, out): contract axis 0 of it
    r1 = torch.as_tensor(resize_matrix(5, 7, "cubic", True)).T
    head = [wn.Conv(8, 2, W_std=1.1), wn.Erf(), wn.GlobalAvgPool(), wn.Dense(1)]
    a = wn.Serial(wn.Conv(8, 3, W_std=1.3, b_std=0.2), wn.Relu(), wn.DotGeneral(r0, (0,), (0,)),
                  wn.DotGeneral(r1, (0,), (0,)), *head).kernel(x)
    # contracting spatial axis 0 moves the new axis last: two contractions restore the order
    b = wn.Serial(wn.Conv(8, 3, W_std=1.3, b_std=0.2), wn.Relu(), wn.ImageResize((4, 7), method="cubic"), *head).kernel(x)
    assert torch.allclose(a.nngp, b.nngp, rtol=1e-12) and torch.allclose(a.ntk, b.ntk, rtol=1e-12)


def test_two_axes_into_a_new_shape_match_monte_carlo():
    g = torch.Generator().manual_seed(3)
    x1, x2 = torch.randn(3, 2, 4, 3, generator=g, dtype=D), torch.randn(2, 2, 4, 3, generator=g, dtype=D)
    rhs = torch.randn(4, 3, 5, dtype=D, generator=g) / 3  # both spatial axes -> one of 5 positions
    net = wn.Serial(wn.Conv(256, 2, W_std=1.3, b_std=0.4), wn.Erf(), wn.DotGeneral(rhs, (0, 1), (0, 1)),
                    wn.Conv(256, 3, W_std=1.2), wn.Erf(), wn.Flatten(), wn.Dense(256, 1.1, 0.1))
    exact = net.kernel(x1, x2)
    nngp, ntk = monte_carlo(net, x1, x2, n_samples=96)
    assert rel_frobenius(nngp, exact.nngp) < 0.05 and rel_frobenius(ntk, exact.ntk) < 0.05


def test_shapes_must_agree():
    x = torch.randn(2, 1, 5, 4, dtype=D)
    with pytest.raises(ShapeError, match=r"DotGeneral: spatial axis 1 of size 4 cannot contract with rhs axis 0 of size 3"):
        wn.Serial(wn.Conv(4, 3), wn.DotGeneral(torch.ones(3, 2, dtype=D), (1,), (0,)), wn.Flatten(), wn.Dense(1)).kernel(x)
    with pytest.raises(ShapeError, match=r"DotGeneral: axes \(2,\) name spatial axes the input has not"):
        wn.Serial(wn.Conv(4, 3), wn.DotGeneral(torch.ones(3, 2, dtype=D), (2,), (0,)), wn.Flatten(), wn.Dense(1)).kernel(x)
    with pytest.raises(ShapeError, match=r"DotGeneral: the output would have 4 spatial axes"):
        wn.Serial(wn.Conv(4, 3), wn.DotGeneral(torch.ones(5, 2, 2, 2, dtype=D), (0,), (0,)), wn.Flatten(),
                  wn.Dense(1)).kernel(x)
