"""Independent oracles: Monte Carlo over finite networks, with autograd Jacobians.

Nothing here uses widenet's kernel code: the estimates come from the finite-width twins
(``net.module()``), sampled afresh, and ``torch.func`` Jacobians over ALL parameters. Work
that cannot change the estimate is skipped (each shortcut says why it is exact): a Dense
readout's rows that output 0 does not read, a repeated ``x2``'s Jacobian, and for plain MLPs
(Dense twins and elementwise activations) the Jacobians themselves, whose Gram matrix has a
closed form in backpropagated gradients (checked against ``jacrev`` on every call's first
network).
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
    exchangeable, so its mean equals the output-averaged NTK; a Dense readout's other rows,
    where J_0 is zero, are left out of the Jacobian, see ``_readout_row_zero``).
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
    # x2 repeating x1 (same masks, no graphs): J_0(x2) is J_0(x1), taken once where the
    # Jacobians are taken one input at a time
    same = (pattern1 is None and x1.shape == x2.shape and torch.equal(x1, x2)
            and (mask is None or torch.equal(mask[:n1], mask[n1:])))
    nngp_sum = torch.zeros(n1, x2.shape[0], dtype=x.dtype)
    ntk_sum = torch.zeros_like(nngp_sum)
    for s in range(n_samples):
        model = net.module(tuple(x.shape[1:]), seed=seed + s, dtype=x.dtype)
        if ntk and not kwargs and _is_mlp(model):
            f, theta = _mlp_ntk(model, x)
            if s == 0:  # the formula against jacrev's Jacobians, once
                _check_mlp_ntk(model, x, theta)
            nngp_sum += f[:n1] @ f[n1:].T / f.shape[1]
            ntk_sum += theta[:n1, n1:]
            continue
        rng = torch.get_rng_state()
        with torch.no_grad():
            f = model(x, **kwargs)
        nngp_sum += f[:n1] @ f[n1:].T / f.shape[1]
        if ntk:
            params = {k: v.detach() for k, v in model.named_parameters()}
            params.update(_readout_row_zero(model, params))
            # a forward pass that draws (dropout) is left to jacrev's second pass, as it was
            if "pattern" not in kwargs and torch.equal(rng, torch.get_rng_state()):
                rows = n1 if same else x.shape[0]
                jac = _per_input_jacobians(model, params, x[:rows], None if mask is None else mask[:rows], f[:rows, 0])
                if jac is not None:
                    for j in jac.values():
                        j = _rows(j)
                        ntk_sum += j @ j.T if same else j[:n1] @ j[n1:].T
                    continue
            jac = jacrev(lambda p: functional_call(model, p, (x,), kwargs)[:, 0])(params)
            for j in jac.values():
                j = _rows(j)
                ntk_sum += j[:n1] @ j[n1:].T
    return nngp_sum / n_samples, (ntk_sum / n_samples if ntk else None)


def _per_input_jacobians(model, params: dict, x: torch.Tensor, mask, f0: torch.Tensor):
    """Output 0's Jacobians ``{name: (N, *shape)}``, one input at a time: N backward passes
    of one input each, where ``jacrev`` of the batch runs N (vmapped) backward passes of the
    whole batch. The same Jacobians where the inputs do not interact, which each input's
    output must show: it is the batch's ``f0`` (to rounding), else None (e.g. batch
    statistics), as for a network that fails on a single input."""
    ps = {k: v.detach().requires_grad_(True) for k, v in params.items()}
    outs, grads = [], []
    try:
        with torch.enable_grad():
            for i in range(x.shape[0]):
                kw = {} if mask is None else {"mask": mask[i:i + 1]}
                out = functional_call(model, ps, (x[i:i + 1],), kw)[0, 0]
                g = torch.autograd.grad(out, list(ps.values()), allow_unused=True)
                outs.append(out.detach())
                grads.append([torch.zeros_like(p) if d is None else d for p, d in zip(ps.values(), g)])
    except Exception:
        return None
    if not torch.allclose(torch.stack(outs), f0, rtol=1e-9, atol=1e-12 * float(f0.abs().max())):
        return None
    return {k: torch.stack([g[i] for g in grads]) for i, k in enumerate(ps)}


def _is_mlp(model) -> bool:
    """A chain of Dense twins (on 2-d inputs) and elementwise activations, nothing else."""
    from widenet.layers.combinators import SerialModule
    from widenet.layers.dense import DenseModule
    from widenet.layers.nonlinearity import ActivationModule

    leaves = [m for m in model.modules() if not isinstance(m, SerialModule)]
    return (isinstance(model, SerialModule) and all(type(m) in (DenseModule, ActivationModule) for m in leaves)
            and all(isinstance(m, SerialModule) or not m._forward_hooks for m in model.modules()))


def _mlp_ntk(model, x: torch.Tensor) -> tuple:
    """``(f, Theta)`` of an ``_is_mlp`` network on the inputs ``x``: its outputs and the NTK of
    output 0 over all parameters, ``J_0 J_0^T``, by the Dense layers' gradients' outer-product
    form, exactly: with ``h`` a Dense layer's input and ``delta = d f_0 / d z`` at its output
    (one backward pass of ``sum_a f_0(x_a)``: the inputs do not interact), its weight's
    gradient is ``s delta_a h_a^T`` and its bias's ``c delta_a``, so it adds
    ``(delta_a . delta_b) (s^2 h_a . h_b + c^2)`` (``s = W_std / sqrt(in)``, ``c = b_std`` in
    the "ntk" parameterization, ``s = c = 1`` in the "standard" one, whose parameters carry
    the scales). The Jacobians themselves, ``(N, P)``, are never formed."""
    from widenet.layers.dense import DenseModule

    denses = [m for m in model.modules() if type(m) is DenseModule]
    seen = {}
    hooks = [m.register_forward_hook(lambda m, args, out: seen.__setitem__(m, (args[0], out))) for m in denses]
    try:
        with torch.enable_grad():
            f = model(x)
            deltas = torch.autograd.grad(f[:, 0].sum(), [seen[m][1] for m in denses])
    finally:
        for h in hooks:
            h.remove()
    theta = torch.zeros(x.shape[0], x.shape[0], dtype=x.dtype)
    for m, delta in zip(denses, deltas):
        h = seen[m][0].detach()
        if h.ndim != 2:
            raise ValueError("_mlp_ntk: Dense twins on 2-d inputs only")
        s2, c2 = ((m.W_std**2 / m.in_features), (m.b_std or 0.0)**2) if m.parameterization == "ntk" else (1.0, 1.0)
        inner = s2 * (h @ h.T) + (c2 if m.bias is not None else 0.0)
        theta += (delta @ delta.T) * inner
    return f.detach(), theta


def _check_mlp_ntk(model, x: torch.Tensor, theta: torch.Tensor) -> None:
    """``_mlp_ntk``'s NTK is ``jacrev``'s, to rounding."""
    params = {k: v.detach() for k, v in model.named_parameters()}
    jac = jacrev(lambda p: functional_call(model, p, (x,))[:, 0])(params)
    reference = sum(_rows(j) @ _rows(j).T for j in jac.values())
    # (float32 sums over 10^6 products round at ~1e-4; a wrong formula is off by O(1))
    tol = 1e-10 if x.dtype == torch.float64 else 1e-3
    err = float((theta - reference).abs().max() / reference.abs().max())
    assert err <= tol, f"the MLP NTK formula disagrees with jacrev: {err:.3g}"


def _rows(j: torch.Tensor) -> torch.Tensor:
    """A Jacobian ``(N, *shape)`` as ``(N, P)``, each row's entries in the order they lie in
    memory (``jacrev`` returns them permuted): a view where ``reshape`` would copy, and the
    same dot products between rows (one order for every row)."""
    order = sorted(range(1, j.ndim), key=lambda d: -j.stride(d))
    return j.permute(0, *order).reshape(j.shape[0], -1)


def _readout_row_zero(model, params: dict) -> dict:
    """Where the network ends in a Dense twin (a ``DenseModule``, ``y = x W^T (+ b)`` up to
    scale factors, the last child of nested ``SerialModule``s), its weight and bias cut to
    output 0's row: ``{name: row}``, else ``{}``. Output 0 reads no other row of the readout,
    so its Jacobian there is exactly zero and the cut network's output and Jacobian are
    output 0's of the full one: the same NTK, without a ``(N, out, in)`` Jacobian that is zero
    but for one row. (The NNGP still uses every output of the full network.)"""
    from widenet.layers.combinators import SerialModule
    from widenet.layers.dense import DenseModule

    name, last = "", model
    while isinstance(last, SerialModule) and len(last):
        index = str(len(last) - 1)
        name, last = f"{name}{index}.", last[int(index)]
    if type(last) is not DenseModule or last.out_features == 1:
        return {}
    cut = {f"{name}weight": params[f"{name}weight"][:1]}
    if last.bias is not None:
        cut[f"{name}bias"] = params[f"{name}bias"][:1]
    return cut


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
