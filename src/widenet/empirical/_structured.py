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

import math
from typing import Dict, Optional

import torch
from torch import nn
from torch.nn import functional as F

from ._cost import Layer, layer_costs


# Tests set this to "gram" or "jacobian" to exercise one contraction route everywhere.
_FORCE_ROUTE = None


_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def structured_modules(model: nn.Module, chosen: Dict[str, torch.Tensor]) -> Dict[str, nn.Module]:
    """``nn.Linear`` and ``nn.Conv1d/2d/3d`` (any padding mode, stride, dilation and groups)
    whose parameters are all chosen."""
    found = {}
    for name, module in model.named_modules():
        own = [f"{name}.{n}" if name else n for n, _ in module.named_parameters(recurse=False)]
        if own and all(n in chosen for n in own) and isinstance(module, (nn.Linear,) + _CONVS):
            found[name] = module
    return found


def _patches(module: nn.Module, a: torch.Tensor) -> torch.Tensor:
    """(B, P, G, C_in/G * prod(k)): the input patch of each group at each output position,
    padded as the convolution pads (zeros, reflect, replicate or circular; "same" included)."""
    pad = module._reversed_padding_repeated_twice
    if any(pad):
        a = F.pad(a, pad, mode="constant" if module.padding_mode == "zeros" else module.padding_mode)
    nd = a.ndim - 2
    for axis, (k, d, s) in enumerate(zip(module.kernel_size, module.dilation, module.stride)):
        a = a.unfold(2 + axis, d * (k - 1) + 1, s)  # (B, C, ..., windows, ..., [taps])
        if d > 1:
            a = a[..., ::d]
    b, c = a.shape[:2]
    positions = math.prod(a.shape[2:2 + nd])
    a = a.permute(0, *range(2, 2 + nd), 1, *range(2 + nd, 2 + 2 * nd))  # (B, *out, C, *k)
    return a.reshape(b, positions, module.groups, -1)


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
    if not seen:  # nothing to factor: every parameter goes by Jacobians
        return {}
    b, o = out.shape
    basis = torch.zeros((o, b, o), dtype=out.dtype, device=out.device)
    basis[torch.arange(o), :, torch.arange(o)] = 1
    names = list(seen)
    grads = torch.autograd.grad(out, [seen[n][1] for n in names], grad_outputs=basis, is_grads_batched=True,
                                allow_unused=True)
    return {n: (torch.zeros((o,) + tuple(seen[n][1].shape), dtype=out.dtype, device=out.device) if g is None else g)
            for n, g in zip(names, grads)}


class Factors:
    """One layer's per-position, per-group activations ``a`` (B, P, G, I) and cotangents ``g``
    (O, B, P, G, J) for a chunk of inputs (G = 1 but for grouped convolutions), and its
    per-example weight Jacobian once some contraction has needed it."""

    def __init__(self, a: torch.Tensor, g: torch.Tensor):
        self.a, self.g = a, g
        self._jacobian = None

    def jacobian(self, module: nn.Module) -> torch.Tensor:
        """(B, O, G*J*(I [+ 1])): the layer's weight (and bias) gradient for every example and
        output, sum_p g[c, b, p, :] (x) a[b, p, :], the bias as a constant input."""
        if self._jacobian is None:
            a = self.a
            if module.bias is not None:
                a = torch.cat([a, a.new_ones(a.shape[:-1] + (1,))], dim=-1)
            jac = torch.einsum("cbpgj,bpgi->bcgji", self.g, a)
            self._jacobian = jac.reshape(jac.shape[0], jac.shape[1], -1)
        return self._jacobian


def factors(module: nn.Module, a: torch.Tensor, g: torch.Tensor) -> Factors:
    """The layer's ``Factors`` from its input ``a`` and output cotangents ``g``."""
    if isinstance(module, nn.Linear):
        b = a.shape[0]
        return Factors(a.reshape(b, -1, 1, a.shape[-1]), g.reshape(g.shape[0], b, -1, 1, g.shape[-1]))
    patches = _patches(module, a)
    o, b, c = g.shape[:3]
    g = g.reshape(o, b, c, -1).transpose(2, 3)  # (O, B, P, C_out)
    return Factors(patches, g.reshape(o, b, g.shape[2], module.groups, -1))


def layer_shape(module: nn.Module, a: torch.Tensor, y: torch.Tensor) -> Layer:
    """Positions, groups and per-group input and output sizes of a factored layer, from one
    example's input ``a`` and output ``y``."""
    if isinstance(module, nn.Linear):
        return Layer(a[0].numel() // module.in_features, 1, module.in_features, module.out_features)
    g = module.groups
    return Layer(y[0, 0].numel(), g, module.in_channels // g * math.prod(module.kernel_size), module.out_channels // g)


def contract(module: nn.Module, f1: Factors, f2: Factors, outputs: str) -> torch.Tensor:
    """The module's weight (and bias) contribution in the requested output form."""
    a1, g1, a2, g2 = f1.a, f1.g, f2.a, f2.g
    b1, p1, groups, i = a1.shape
    b2, p2 = a2.shape[:2]
    o, j = g1.shape[0], g1.shape[-1]
    if p1 == 1 and p2 == 1 and groups == 1 and _FORCE_ROUTE is None:  # a product of two Gram matrices
        ga = a1[:, 0, 0] @ a2[:, 0, 0].T
        if module.bias is not None:
            ga = ga + 1
        c1, c2 = g1[:, :, 0, 0].transpose(0, 1), g2[:, :, 0, 0].transpose(0, 1)  # (B, O, J)
        if outputs == "full":
            return outer_gram(c1, c2, f1 is f2, scale=ga)
        diag = torch.einsum("bcj,kcj->bkc", c1, c2) * ga[:, :, None]
        return diag if outputs == "diagonal" else diag.mean(-1)
    gram_pair, jacobian_input, jacobian_pair = layer_costs(Layer(p1, groups, i, j), o, outputs)
    gram_cost = b1 * b2 * gram_pair
    jacobian_cost = (b1 + b2) * jacobian_input + b1 * b2 * jacobian_pair
    use_jacobian = jacobian_cost < gram_cost if _FORCE_ROUTE is None else _FORCE_ROUTE == "jacobian"
    if use_jacobian:
        # Many positions, few weights: the layer's own per-example Jacobian
        # sum_p g[c, b, p, :] (x) a[b, p, :] is the cheaper route.
        jac1, jac2 = f1.jacobian(module), f2.jacobian(module)
        if outputs == "full":
            return outer_gram(jac1, jac2, f1 is f2)
        diag = torch.einsum("bcw,kcw->bkc", jac1, jac2)
        return diag if outputs == "diagonal" else diag.mean(-1)
    ga = torch.einsum("bpgi,kqgi->bkgpq", a1, a2)  # activation Gram over positions, per group
    if module.bias is not None:
        ga = ga + 1  # the bias acts as a constant input
    # Contract the position pairs in two steps, never forming a (B1, B2, O, O, P, P) tensor:
    # u[b, k, c, g, q, j] = sum_p g1[c, b, p, g, j] ga[b, k, g, p, q], then with g2 over (g, q, j).
    u = torch.einsum("cbpgj,bkgpq->bkcgqj", g1, ga)
    if outputs == "full":
        return torch.einsum("bkcgqj,dkqgj->bkcd", u, g2)
    diag = torch.einsum("bkcgqj,ckqgj->bkc", u, g2)
    return diag if outputs == "diagonal" else diag.mean(-1)


def outer_gram(m1: torch.Tensor, m2: torch.Tensor, same: bool, scale: Optional[torch.Tensor] = None,
               pieces: int = 4) -> torch.Tensor:
    """``(B1, O, W) x (B2, O, W) -> (B1, B2, O, O)``, the products of all rows, times
    ``scale[b, k]`` if given. It is computed as a ``(B1 O, B2 O)`` matrix and returned as a
    transposed view, so that scaling and summing such results stay contiguous. When both
    sides are one tensor the result is symmetric: only row blocks on or below the diagonal
    are multiplied (about 5/8 of the work with four blocks) and the rest is mirrored."""
    b1, o, w = m1.shape
    b2 = m2.shape[0]
    rows = m1.reshape(b1 * o, w)
    if not same or b1 < pieces:
        gram = rows @ m2.reshape(b2 * o, w).T
    else:
        gram = rows.new_empty((b1 * o, b1 * o))
        edges = [o * (b1 * i // pieces) for i in range(pieces + 1)]  # whole examples per block
        with torch.no_grad():  # kernels are returned detached; out= needs no autograd
            for lo, hi in zip(edges[:-1], edges[1:]):
                torch.mm(rows[lo:hi], rows[:hi].T, out=gram[lo:hi, :hi])
                copy_transposed(gram[:lo, lo:hi], gram[lo:hi, :lo])
    gram = gram.view(b1, o, b2, o)
    if scale is not None:
        gram.mul_(scale[:, None, :, None])
    return gram.transpose(1, 2)


def copy_transposed(dst: torch.Tensor, src: torch.Tensor, tile: int = 512) -> None:
    """``dst = src.T`` for matrices, tile by tile so that the transposed reads stay in cache."""
    for i in range(0, src.shape[0], tile):
        for j in range(0, src.shape[1], tile):
            dst[j:j + tile, i:i + tile] = src[i:i + tile, j:j + tile].T
