"""Helpers shared by the tests of widenet.blocked: a small network and the comparison of
blocked results with direct ones."""

import torch

import widenet as wn


def _net():
    return wn.Serial(wn.Dense(64, W_std=1.4, b_std=0.1), wn.Relu(), wn.Dense(8, W_std=1.2, b_std=0.2), wn.Erf(),
                     wn.Dense(1))


def _same(a, b, exact=True):
    """Bit for bit equal in reproducible mode, and in the default mode where both were computed
    on the same tiles (stores, resumes, Dask against local); in the default mode against a
    call on other blocks, equal to a few units in the last place: a matrix product's rounding
    depends on its shape (BLAS picks other kernels for other sizes), and torch computes the
    last elements of a run with scalar functions, which is also why the in-memory path
    differs by as much across its own block sizes."""
    if isinstance(a, wn.Kernel):
        for name in ("nngp", "ntk", "var1", "var2"):
            u, v = getattr(a, name), getattr(b, name)
            assert (u is None) == (v is None), name
            if u is not None:
                _same(u, v, exact)
        assert a.layout == b.layout and a.is_gaussian == b.is_gaussian and a.width == b.width
    else:
        assert a.shape == b.shape and a.dtype == b.dtype
        if exact:
            assert torch.equal(a, b), f"max difference {(a - b).abs().max().item()}"
        else:
            ulp = torch.finfo(a.dtype).eps * b.abs().max()
            assert (a - b).abs().max() <= 8 * ulp, f"max difference {(a - b).abs().max().item()} > 8 ulp"
