"""Independent oracles: Monte Carlo over finite networks, with autograd Jacobians.

Nothing here uses widenet's kernel code: the estimates come from the finite-width twins
(``net.module()``), sampled afresh, and ``torch.func`` Jacobians over ALL parameters.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.func import functional_call, jacrev


def monte_carlo(net, x1, x2, *, n_samples: int, seed: int = 0, ntk: bool = True,
                mask1=None, mask2=None, pattern1=None, pattern2=None):
    """Means of the empirical NNGP and NTK over ``n_samples`` fresh finite networks.

    NNGP: ``f(x1) f(x2)^T / n_out`` averaged over output units and networks.
    NTK: ``J_0(x1) J_0(x2)^T`` for output unit 0, J over all parameters (outputs are
    exchangeable, so its mean equals the output-averaged NTK).
    ``mask1``/``mask2``: padding masks (True at padded positions) passed to the network.
    ``pattern1``/``pattern2``: the inputs' graphs (for ``Aggregate``), passed as ``pattern=``:
    dense ones concatenated, sparse arcs padded with -1 to a common count first.
    """
    x = torch.cat([x1, x2])
    mask = None
    if mask1 is not None or mask2 is not None:
        no_pad = lambda xs: torch.zeros((xs.shape[0],) + xs.shape[2:], dtype=torch.bool)  # noqa: E731
        mask = torch.cat([no_pad(x1) if mask1 is None else mask1, no_pad(x2) if mask2 is None else mask2])
    kwargs = {} if mask is None else {"mask": mask}
    if pattern1 is not None:
        kwargs["pattern"] = join_patterns(pattern1, pattern2)
    n1 = x1.shape[0]
    nngp_sum = torch.zeros(n1, x2.shape[0], dtype=x.dtype)
    ntk_sum = torch.zeros_like(nngp_sum)
    for s in range(n_samples):
        model = net.module(tuple(x.shape[1:]), seed=seed + s, dtype=x.dtype)
        with torch.no_grad():
            f = model(x, **kwargs)
        nngp_sum += f[:n1] @ f[n1:].T / f.shape[1]
        if ntk:
            params = {k: v.detach() for k, v in model.named_parameters()}
            jac = jacrev(lambda p: functional_call(model, p, (x,), kwargs)[:, 0])(params)
            flat = torch.cat([j.reshape(x.shape[0], -1) for j in jac.values()], dim=1)
            ntk_sum += flat[:n1] @ flat[n1:].T
    return nngp_sum / n_samples, (ntk_sum / n_samples if ntk else None)


def join_patterns(p1, p2):
    """One pattern for ``cat([x1, x2])``: dense ones concatenated; sparse arcs (or
    ``(arcs, weights)`` pairs) padded with -1 arcs (weight 0) to the larger arc count."""
    if isinstance(p1, tuple):
        e, w = join_patterns(p1[0], p2[0]), None
        pad = lambda a, n: torch.cat([a, a.new_zeros((a.shape[0], n - a.shape[1]))], 1)  # noqa: E731
        m = max(p1[1].shape[1], p2[1].shape[1])
        w = torch.cat([pad(p1[1], m), pad(p2[1], m)])
        return e, w
    if p1.is_floating_point() or p1.dtype == torch.bool:
        return torch.cat([p1, p2])
    m = max(p1.shape[1], p2.shape[1])
    pad = lambda a: torch.cat([a, a.new_full((a.shape[0], m - a.shape[1]) + a.shape[2:], -1)], 1)  # noqa: E731
    return torch.cat([pad(p1), pad(p2)])


def rel_frobenius(estimate: torch.Tensor, exact: torch.Tensor) -> float:
    return float(torch.linalg.norm(estimate - exact) / torch.linalg.norm(exact))


def ulps(a: torch.Tensor, exact: np.ndarray) -> np.ndarray:
    """Distance of ``a`` from ``exact`` (float64 values) in units of the last place."""
    return np.abs(a.numpy() - exact) / np.spacing(np.abs(exact))
