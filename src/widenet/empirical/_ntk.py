"""Empirical kernels of any torch model, by ``torch.func``."""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import nn
from torch.func import jacrev, jvp, vjp, vmap
from torch.utils.flop_counter import FlopCounterMode

from .._engine import tiling
from .._validate import as_inputs, check_choice, check_int, check_memory
from ..errors import ParameterError, ShapeError
from ..kernel import Kernel
from ._cost import Probe, cheapest
from ._model import ModelFunction, ParameterSelector, eval_mode, pushforward, select_parameters
from ._structured import contract, cotangents, factors, layer_shape, outer_gram, record, structured_modules

__all__ = ["ntk", "nngp", "kernel"]


def _contract(a: torch.Tensor, b: torch.Tensor, outputs: str) -> torch.Tensor:
    """``(B1, O, P) x (B2, O, P)`` -> the kernel in the ``outputs`` form."""
    if outputs == "full":
        return outer_gram(a, b, a is b)
    if outputs == "diagonal":
        return torch.einsum("aip,bip->abi", a, b)
    return torch.einsum("aip,bip->ab", a, b) / a.shape[1]


def _jacobian(fn, params, x):
    """Per-example Jacobians ``(B, O, P)``: ``jacrev`` of one example (seen by the model as a
    batch of one) mapped over the batch, so each costs O backward passes of one example,
    not of the whole batch."""
    jac = vmap(jacrev(lambda p, xi: fn(p, xi.unsqueeze(0))[0]), in_dims=(None, 0))(params, x)  # name -> (B, O, *shape)
    return torch.cat([j.reshape(j.shape[0], j.shape[1], -1) for j in jac.values()], dim=2)


class _NoDerivative(ParameterError):
    """NTK-vector products need a derivative rule the model lacks."""


def _ntvp(fn, params, x1, x2, outputs):
    """Theta(x1, x2) without Jacobians in memory: J(x2)^T e by vector-Jacobian products for
    every output basis vector e of x2, then J(x1) (J(x2)^T e) by Jacobian-vector products."""
    out2, pullback = vjp(lambda p: fn(p, x2), params)
    b2, o = out2.shape
    basis = torch.eye(b2 * o, dtype=out2.dtype, device=out2.device).reshape(b2 * o, b2, o)
    cotangents = vmap(pullback)(basis)[0]  # name -> (b2*o, *shape)
    try:
        pushed = vmap(lambda t: jvp(lambda p: fn(p, x1), (params,), (t,))[1])(cotangents)  # (b2*o, b1, o)
    except NotImplementedError:
        # An op without forward-mode AD (e.g. a fused attention kernel): J(x1) t as the
        # vector-Jacobian product of the linear map u -> J(x1)^T u, by double backward.
        try:
            transpose = pushforward(fn, params, x1)
            pushed = vmap(lambda t: transpose(t)[0])(cotangents)
        except (NotImplementedError, RuntimeError) as err:
            if isinstance(err, RuntimeError) and "not implemented" not in str(err):
                raise  # a genuine failure of the model, not a missing derivative
            raise _NoDerivative(
                f"empirical.ntk: method='ntvp' needs forward-mode or double-backward derivatives of every "
                f"op of the model, and one has neither ({str(err).splitlines()[0]}); use method='jacobian'"
            ) from None
    theta = pushed.reshape(b2, o, x1.shape[0], o).permute(2, 0, 3, 1)  # (b1, b2, o1, o2)
    if outputs == "full":
        return theta
    diag = torch.diagonal(theta, dim1=2, dim2=3)  # (b1, b2, o)
    return diag if outputs == "diagonal" else diag.mean(-1)


def ntk(model: nn.Module, x1: Any, x2: Any = None, *, outputs: str = "mean", params: ParameterSelector = None,
        method: str = "auto", block_size: Optional[int] = None, memory: Any = "1GB") -> torch.Tensor:
    """Empirical NTK ``J(x1) J(x2)^T`` of any ``torch.nn.Module``.

    Args:
        model: any module mapping a batch ``(B, ...)`` to outputs ``(B, ...)`` (flattened to
            ``(B, O)``). It is evaluated in eval mode (dropout off, BatchNorm on running
            statistics) with ``torch.func.functional_call``; buffers are used as they are.
        x1, x2: input batches (``x2=None``: ``x2 = x1``).
        outputs: "mean" (``(N1, N2)``, the mean over outputs ``(1/O) sum_c J_c J_c^T``, as
            Neural Tangents' traced kernels), "diagonal" (``(N1, N2, O)``, each output with
            itself) or "full" (``(N1, N2, O, O)``).
        params: which parameters to differentiate: None (all trainable), a predicate
            ``(name, tensor) -> bool``, or names / module prefixes (e.g. ``["fc2"]`` for the
            last layer only).
        method: "jacobian" (contract per-example Jacobians of each chunk), "ntvp"
            (NTK-vector products: forward-mode products of vector-Jacobian products, no
            Jacobian of the row chunk), "structured" (linear and convolutional layers by
            products of activation and cotangent Gram matrices, the rest by Jacobians) or
            "auto": the one with the least predicted time, from the model's flop count and
            layer shapes (a cost model calibrated by ``benchmarks/calibrate_auto.py``),
            Jacobians only where two chunks of them fit ``memory``.
        block_size: inputs per chunk (default: sized from ``memory``).
        memory: bytes (or "1GB") for one pair of chunks' Jacobians.

    Returns:
        The kernel in the model's dtype and on its device.
    """
    return _compute("empirical.ntk", model, x1, x2, outputs, params, method, block_size, memory, want="ntk")


def nngp(model: nn.Module, x1: Any, x2: Any = None, *, outputs: str = "mean") -> torch.Tensor:
    """Empirical NNGP ``f(x1) f(x2)^T`` of one network (mean over outputs by default, as
    Neural Tangents; "diagonal" and "full" as in ``ntk``)."""
    return _compute("empirical.nngp", model, x1, x2, outputs, None, "auto", None, None, want="nngp")


def kernel(model: nn.Module, x1: Any, x2: Any = None, **options) -> Kernel:
    """Both empirical kernels as a ``widenet.Kernel`` (per-input variances included)."""
    outputs = options.get("outputs", "mean")
    k_ntk = ntk(model, x1, x2, **options)
    k_nngp = nngp(model, x1, x2, outputs=outputs)
    var1 = _self_nngp(model, x1, outputs)
    var2 = None if x2 is None else _self_nngp(model, x2, outputs)
    return Kernel(k_nngp, k_ntk, var1, var2, is_gaussian=False, width=0)


def _self_nngp(model, x, outputs):
    k = nngp(model, x, None, outputs=outputs)
    return torch.diagonal(k, dim1=0, dim2=1).movedim(-1, 0)


def _check_inputs(owner, model, x1, x2):
    """``x1`` and ``x2`` as tensors checked against each other and the model's parameters (dtype, device)."""
    ref = next(iter(model.parameters()), None)
    if ref is None:
        raise ParameterError(f"{owner}: the model has no parameters")
    x1 = as_inputs(owner, "x1", x1, half="keep")
    x2 = None if x2 is None else as_inputs(owner, "x2", x2, like=x1, half="keep")
    if x1.is_floating_point() and x1.dtype != ref.dtype:
        raise ShapeError(f"{owner}: inputs and model parameters must share a dtype (got {x1.dtype} and {ref.dtype})")
    if x1.device != ref.device:
        raise ShapeError(f"{owner}: inputs and model must be on one device (got {x1.device} and {ref.device})")
    if x2 is not None and tuple(x2.shape[1:]) != tuple(x1.shape[1:]):
        raise ShapeError(f"{owner}: x1 and x2 must have the same shape per input (got {tuple(x1.shape)} and {tuple(x2.shape)})")
    return x1, x2


def _output_gram(owner, model, x1, x2, outputs):
    """The empirical NNGP ``f(x1) f(x2)^T`` of the model's outputs, in the ``outputs`` form."""
    with torch.no_grad():
        f1 = ModelFunction(model, {}, owner)({}, x1)
        f2 = f1 if x2 is None else ModelFunction(model, {}, owner)({}, x2)
    if outputs == "full":
        return torch.einsum("ai,bj->abij", f1, f2)
    if outputs == "diagonal":
        return torch.einsum("ai,bi->abi", f1, f2)
    return f1 @ f2.T / f1.shape[1]


def _compute(owner, model, x1, x2, outputs, params, method, block_size, memory, want):
    if not isinstance(model, nn.Module):
        raise ParameterError(f"{owner}: model must be a torch.nn.Module (got {type(model).__name__})")
    outputs = check_choice(owner, "outputs", outputs, ("mean", "diagonal", "full"))
    method = check_choice(owner, "method", method, ("auto", "jacobian", "ntvp", "structured"))
    if block_size is not None:
        block_size = check_int(owner, "block_size", block_size, minimum=1)
    budget = None if memory is None else check_memory(owner, "memory", memory)
    x1, x2 = _check_inputs(owner, model, x1, x2)
    with eval_mode(model):
        if any(isinstance(p, nn.parameter.UninitializedParameter) for p in model.parameters()):
            with torch.no_grad():
                model(x1[:1])  # materialize lazy layers (their shapes come from the first input)
        if want == "nngp":
            return _output_gram(owner, model, x1, x2, outputs)
        chosen = select_parameters(model, params, owner=owner)
        fn = ModelFunction(model, chosen, owner)
        with torch.no_grad():
            probe = fn(chosen, x1[:1])
        n_params = sum(p.numel() for p in chosen.values())
        n_out = probe.shape[1]
        per_input = n_out * n_params * x1.element_size()
        budget = budget or 2**30
        user_block = block_size
        if block_size is None:
            block_size = int(min(256, max(1, budget // (2 * per_input))))
        modules = structured_modules(model, chosen)
        if method in ("auto", "structured"):
            probe, modules, seen = _probe(model, chosen, modules, x1, n_out)
            structured_block = user_block or _structured_block(
                modules, seen, probe.n_rest, x1.element_size(), n_out, budget,
                max(x1.shape[0], (x1 if x2 is None else x2).shape[0]))
        run = {
            "structured": lambda: _structured_ntk(model, fn, chosen, modules, x1, x2, outputs, structured_block),
            "jacobian": lambda: _tiled(x1, x2, block_size, outputs, lambda x: _jacobian(fn, chosen, x),
                                       lambda ja, jb: _contract(ja, jb, outputs)),
            "ntvp": lambda: _tiled(x1, x2, block_size, outputs, lambda x: x,
                                   lambda xa, xb: _ntvp(fn, chosen, xa, xb, outputs)),
        }
        if method != "auto":
            return run[method]()
        # The least predicted time (the cost model of _cost.py); Jacobians only when two chunks
        # of them fit the budget; a method that meets an op without the derivative rules it
        # needs gives way to the next cheapest.
        blocks = {"structured": structured_block, "ntvp": block_size}
        if 2 * block_size * per_input <= budget:
            blocks["jacobian"] = block_size
        n2 = x1.shape[0] if x2 is None else x2.shape[0]
        while True:
            method = cheapest(probe, x1.shape[0], n2, x2 is None, blocks, outputs)
            try:
                return run[method]()
            except _NoDerivative:
                if len(blocks) == 1:
                    raise
                del blocks[method]


def _tiled(x1, x2, block_size, outputs, side, pair):
    """The kernel over chunks of inputs: ``side(chunk)`` computes what one chunk needs (once
    per chunk of rows), ``pair(side_a, side_b)`` one block. With ``x2=None`` only blocks on or
    above the diagonal are computed, by the rule of symmetry of every widenet kernel
    (``widenet._engine.tiling``): the result is exactly symmetric, outputs included."""
    n1 = x1.shape[0]
    n2 = n1 if x2 is None else x2.shape[0]
    plan = tiling.Plan.square(n1, n2, block_size, x2 is None)
    paired = 1 if outputs == "full" else 0
    grid, sides = None, {}
    for i, j in plan.tiles():
        if i not in sides:
            sides = {i: side(x1[plan.row_slice(i)])}  # one row of blocks at a time
        if plan.on_diagonal(i, j):
            block = tiling.symmetric_block(pair(sides[i], sides[i]).detach(), paired)
        else:
            other = side((x1 if x2 is None else x2)[plan.col_slice(j)])
            block = pair(sides[i], other).detach()
        if grid is None:
            grid = tiling.PairGrid(plan, tuple(block.shape[2:]), x1, paired=paired)
        grid.put(i, j, block)
    return grid.result()


def _factored_names(modules) -> set:
    return {f"{m}.{k}" if m else k for m, mod in modules.items() for k, _ in mod.named_parameters(recurse=False)}


def _probe(model, chosen, modules, x, n_out):
    """One example through the model, counting its flops and recording the factored layers.
    Only layers that are called as modules can be factored (attention, for one, uses its
    output projection's weight directly): those whose forward hook does not fire are dropped."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        _, seen = record(model, modules, x[:1])
    modules = {name: m for name, m in modules.items() if name in seen}
    factored = _factored_names(modules)
    probe = Probe(
        forward_flops=float(counter.get_total_flops()),
        n_out=n_out,
        n_params=sum(p.numel() for p in chosen.values()),
        n_rest=sum(p.numel() for n, p in chosen.items() if n not in factored),
        layers=[layer_shape(m, *seen[name]) for name, m in modules.items()],
    )
    return probe, modules, seen


def _structured_ntk(model, fn, chosen, modules, x1, x2, outputs, block_size):
    """Linear/conv layers by the product form, every other chosen parameter by Jacobians."""
    factored = _factored_names(modules)
    rest = {n: p for n, p in chosen.items() if n not in factored}

    def side(x):
        out, seen = record(model, modules, x)
        gs = cotangents(out, seen)
        facts = {name: factors(modules[name], seen[name][0], gs[name]) for name in modules}
        return facts, (_jacobian(fn, rest, x) if rest else None)

    def pair(sa, sb):
        (fa, ja), (fb, jb) = sa, sb
        parts = [contract(m, fa[n], fb[n], outputs) for n, m in modules.items()]
        if ja is not None:
            parts.append(_contract(ja, jb, outputs))
        total = parts[0]  # a fresh tensor: summed in place, in its own memory layout
        for part in parts[1:]:
            total.add_(part)
        return total

    return _tiled(x1, x2, block_size, outputs, side, pair)


def _structured_block(modules, seen, n_rest, item, n_out, budget, n_max):
    """Largest chunk whose pair intermediates fit ``budget``: per pair of inputs, each factored
    layer holds its position-pair Gram (P^2) and the partly contracted cotangents (O P J);
    each input also holds the Jacobian of the parameters that are not factored."""
    per_pair = 0
    for name, module in modules.items():
        y = seen[name][1]
        width = y.shape[-1] if isinstance(module, nn.Linear) else y.shape[1]
        positions = max(1, y[0].numel() // width)
        per_pair = max(per_pair, positions * positions + n_out * positions * width)
    block = n_max
    while block > 1 and (3 * block * block * per_pair + 2 * block * n_out * n_rest) * item > budget:
        block = max(1, block // 2)
    return block
