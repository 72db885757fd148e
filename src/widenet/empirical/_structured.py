"""Structured empirical NTK: the product form of linear and convolutional layers.

For ``y = W a + b`` (``nn.Linear``), the contribution of ``W`` to ``J(x1) J(x2)^T`` is
``(g(x1) . g(x2)) (a(x1) . a(x2))`` summed over positions, with ``a`` the layer's input and
``g = d f_c / d y`` its output cotangent; for a convolution, the same with ``a`` replaced by
the input patches at each output position (Novak et al. 2022, arXiv 2206.08720, "structured
derivatives"). The O(parameters) Jacobian is never formed: only Gram matrices of activations
and cotangents. Other parameters (normalization, attention, ...) are contracted from their
Jacobians.
"""

from __future__ import annotations

from typing import Dict

import torch
from torch import nn
from torch.nn import functional as F


# Tests set this to "gram" or "jacobian" to exercise one contraction route everywhere.
_FORCE_ROUTE = None


def structured_modules(model: nn.Module, chosen: Dict[str, torch.Tensor]) -> Dict[str, nn.Module]:
    """Linear and 1-D/2-D zero-padded ungrouped convolutions whose parameters are all chosen."""
    found = {}
    for name, module in model.named_modules():
        own = [f"{name}.{n}" if name else n for n, _ in module.named_parameters(recurse=False)]
        if not own or not all(n in chosen for n in own):
            continue
        if isinstance(module, nn.Linear):
            found[name] = module
        elif isinstance(module, (nn.Conv1d, nn.Conv2d)) and module.groups == 1 and module.padding_mode == "zeros" \
                and not isinstance(module.padding, str):
            found[name] = module
    return found


def _patches(module: nn.Module, a: torch.Tensor) -> torch.Tensor:
    """(B, C_in * prod(k), P): the input patch seen at each output position."""
    if isinstance(module, nn.Conv1d):
        a = a.unsqueeze(-2)
        k, d, p, s = (1, module.kernel_size[0]), (1, module.dilation[0]), (0, module.padding[0]), (1, module.stride[0])
    else:
        k, d, p, s = module.kernel_size, module.dilation, module.padding, module.stride
    return F.unfold(a, k, dilation=d, padding=p, stride=s)


def record(model: nn.Module, modules: Dict[str, nn.Module], x: torch.Tensor):
    """Runs the model once, returning outputs (B, O), and per module its input and output."""
    seen = {}
    hooks = []
    for name, module in modules.items():
        def hook(mod, inputs, output, name=name):
            seen[name] = (inputs[0].detach(), output)
        hooks.append(module.register_forward_hook(hook))
    try:
        with torch.enable_grad():
            out = model(x)
    finally:
        for h in hooks:
            h.remove()
    return out.reshape(out.shape[0], -1), seen


def cotangents(out: torch.Tensor, seen: dict) -> Dict[str, torch.Tensor]:
    """d f_c / d y for every output unit c, batched: name -> (O, B, *y.shape[1:])."""
    b, o = out.shape
    basis = torch.zeros((o, b, o), dtype=out.dtype, device=out.device)
    basis[torch.arange(o), :, torch.arange(o)] = 1
    names = list(seen)
    grads = torch.autograd.grad(out, [seen[n][1] for n in names], grad_outputs=basis, is_grads_batched=True,
                                allow_unused=True)
    return {n: (torch.zeros((o,) + tuple(seen[n][1].shape), dtype=out.dtype, device=out.device) if g is None else g)
            for n, g in zip(names, grads)}


def factors(module: nn.Module, a: torch.Tensor, g: torch.Tensor):
    """Per-position activations (B, P, I) and cotangents (O, B, P, J) of one layer."""
    if isinstance(module, nn.Linear):
        b = a.shape[0]
        return a.reshape(b, -1, a.shape[-1]), g.reshape(g.shape[0], b, -1, g.shape[-1])
    patches = _patches(module, a).transpose(1, 2)  # (B, P, C_in k)
    o, b, c = g.shape[:3]
    return patches, g.reshape(o, b, c, -1).transpose(2, 3)  # (O, B, P, C_out)


def contract(module, a1, g1, a2, g2, outputs: str) -> torch.Tensor:
    """The module's weight (and bias) contribution in the requested output form."""
    if a1.shape[1] == 1 and a2.shape[1] == 1 and _FORCE_ROUTE is None:  # one position: a product of two Gram matrices
        ga = a1[:, 0] @ a2[:, 0].T
        if module.bias is not None:
            ga = ga + 1
        if outputs == "full":
            return outer_gram(g1[:, :, 0].transpose(0, 1), g2[:, :, 0].transpose(0, 1), g1 is g2) * ga[:, :, None, None]
        diag = torch.einsum("cbj,ckj->bkc", g1[:, :, 0], g2[:, :, 0]) * ga[:, :, None]
        return diag if outputs == "diagonal" else diag.mean(-1)
    b1, p1, i = a1.shape
    b2, p2, _ = a2.shape
    o, j = g1.shape[0], g1.shape[-1]
    pairs = o * o if outputs == "full" else o
    gram_cost = b1 * b2 * (p1 * p2 * i + o * p1 * p2 * j + pairs * p2 * j)
    jacobian_cost = (b1 + b2) * o * max(p1, p2) * j * i + b1 * b2 * pairs * j * i
    use_jacobian = jacobian_cost < gram_cost if _FORCE_ROUTE is None else _FORCE_ROUTE == "jacobian"
    if use_jacobian:
        # Many positions, few weights: the layer's own per-example Jacobian
        # sum_p g[c, b, p, :] (x) a[b, p, :] is the cheaper route.
        jac1 = _layer_jacobian(module, a1, g1)
        jac2 = _layer_jacobian(module, a2, g2)
        if outputs == "full":
            return outer_gram(jac1, jac2, g1 is g2 and a1 is a2)
        diag = torch.einsum("bcw,kcw->bkc", jac1, jac2)
        return diag if outputs == "diagonal" else diag.mean(-1)
    ga = torch.einsum("bpi,kqi->bkpq", a1, a2)  # activation Gram over positions
    if module.bias is not None:
        ga = ga + 1  # the bias acts as a constant input
    # Contract the position pairs in two steps, never forming a (B1, B2, O, O, P, P) tensor:
    # u[b, k, c, q, j] = sum_p g1[c, b, p, j] ga[b, k, p, q], then with g2 over (q, j).
    u = torch.einsum("cbpj,bkpq->bkcqj", g1, ga)
    if outputs == "full":
        return torch.einsum("bkcqj,dkqj->bkcd", u, g2)
    diag = torch.einsum("bkcqj,ckqj->bkc", u, g2)
    return diag if outputs == "diagonal" else diag.mean(-1)


def outer_gram(m1: torch.Tensor, m2: torch.Tensor, same: bool, pieces: int = 4) -> torch.Tensor:
    """``(B1, O, W) x (B2, O, W) -> (B1, B2, O, O)``, the products of all rows. When both sides
    are one tensor the result is symmetric: only row blocks on or below the diagonal are
    multiplied (about 5/8 of the work with four blocks) and the rest is mirrored."""
    b1, o, w = m1.shape
    if not same or b1 < pieces:
        return torch.einsum("bcw,kdw->bkcd", m1, m2)
    rows = m1.reshape(b1 * o, w)
    n = rows.shape[0]
    gram = rows.new_empty((n, n))
    edges = [o * (b1 * i // pieces) for i in range(pieces + 1)]  # whole examples per block
    for lo, hi in zip(edges[:-1], edges[1:]):
        block = rows[lo:hi] @ rows[:hi].T
        gram[lo:hi, :hi] = block
        gram[:lo, lo:hi] = block[:, :lo].T
    return gram.reshape(b1, o, b1, o).transpose(1, 2)


def _layer_jacobian(module, a, g):
    """(B, O, J*I [+ J]): the layer's weight (and bias) gradient for every example and output."""
    weight = torch.einsum("cbpj,bpi->bcji", g, a)
    weight = weight.reshape(weight.shape[0], weight.shape[1], -1)
    if module.bias is None:
        return weight
    return torch.cat([weight, g.sum(2).transpose(0, 1)], dim=2)
