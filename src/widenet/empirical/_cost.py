"""The cost model behind ``empirical.ntk(method="auto")``.

Each method's time is predicted from flop counts of one probe example: ``F``, the forward
flops of the model (``torch.utils.flop_counter``), and the shapes of its linear and
convolutional layers. Work is split into autograd passes (forward, backward, forward-mode
products: ``F`` per pass per example) and contractions (products of Jacobians or of Gram
matrices), which run at different rates, plus a fixed cost per call (a Jacobian, a backward
pass, a contraction) for Python and dispatch, and a cost per Jacobian entry for memory
traffic. The four constants were fitted by ``benchmarks/calibrate_auto.py`` on a 2-core x86
machine; only their ratios matter for the choice.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Tuple

SECONDS_PER_PASS_FLOP = 5.5e-12
SECONDS_PER_CONTRACT_FLOP = 4.8e-12
SECONDS_PER_CALL = 3.9e-4
SECONDS_PER_JACOBIAN_ENTRY = 1.2e-9


@dataclass
class Layer:
    """A factored layer: positions, groups, inputs and outputs per group (weights ``i * j``)."""
    positions: int
    groups: int
    inputs: int
    outputs: int


@dataclass
class Probe:
    forward_flops: float  # per example
    n_out: int
    n_params: int  # chosen parameters
    n_rest: int  # chosen parameters outside factored layers
    layers: List[Layer] = field(default_factory=list)


def layer_costs(layer: Layer, n_out: int, outputs: str) -> Tuple[float, float, float]:
    """Multiply-adds of one factored layer: per input pair by position-pair Gram products, and
    by the layer's own per-example Jacobian (per input to form it, per pair to contract it)."""
    p, g, i, j = layer.positions, layer.groups, layer.inputs, layer.outputs
    pairs = n_out * n_out if outputs == "full" else n_out
    gram_pair = g * (p * p * i + n_out * p * p * j + pairs * p * j)
    jacobian_input = n_out * p * g * j * i
    jacobian_pair = pairs * g * j * i
    return gram_pair, jacobian_input, jacobian_pair


def work(probe: Probe, n1: int, n2: int, same: bool, blocks: Dict[str, int], outputs: str):
    """``{method: (autograd-pass flops, contraction flops, calls, Jacobian entries)}`` for a
    kernel over ``n1 x n2`` inputs (``same``: ``x2`` is ``x1``, only chunks on or above the diagonal) with
    each method's chunk size ``blocks[method]``. Calls count the Python-level steps that cost
    time whatever their size: a Jacobian, a backward pass, a contraction. Jacobian entries
    (written once, read by the contraction) count the memory traffic that dominates when
    Jacobians are large."""
    o, f = probe.n_out, probe.forward_flops
    pairs = o * o if outputs == "full" else o
    out = {}
    for method, block in blocks.items():
        rows = [min(block, n1 - s) for s in range(0, n1, block)]
        cols = rows if same else [min(block, n2 - s) for s in range(0, n2, block)]
        n_blocks = len(rows) * (len(rows) + 1) // 2 if same else len(rows) * len(cols)
        entries = (n1 * n1 + sum(r * r for r in rows)) / 2 if same else n1 * n2  # input pairs computed
        side_inputs = n1 if same else n1 + len(rows) * n2  # per-input work is redone per row chunk
        side_calls = len(rows) if same else len(rows) * (1 + len(cols))
        jacobians = side_inputs * f * (1 + 2 * o)  # one forward, one backward per output
        if method == "jacobian":
            out[method] = (jacobians, 2 * entries * pairs * probe.n_params, n_blocks + side_calls,
                           side_inputs * o * probe.n_params)
        elif method == "ntvp":
            # Per chunk pair: a backward over the column chunk for each of its b2 * O basis
            # vectors, then a forward-mode product over the row chunk for each of them. Each
            # column chunk is visited once per row chunk (above the diagonal when same), and
            # its cotangents hold as many entries as its Jacobian.
            visits = (len(rows) + 1) / 2 if same else len(rows)
            col_sq = sum(c * c for c in cols) * visits
            cotangent_entries = sum(cols) * visits * o * probe.n_params
            out[method] = (o * f * (2 * col_sq + 3 * entries), 0.0, 3 * n_blocks, cotangent_entries)
        else:
            contraction = 2 * entries * pairs * probe.n_rest
            jacobian_entries = side_inputs * o * probe.n_rest
            for layer in probe.layers:
                gram_pair, jacobian_input, jacobian_pair = layer_costs(layer, o, outputs)
                by_jacobian = side_inputs * jacobian_input + entries * jacobian_pair
                contraction += 2 * min(entries * gram_pair, by_jacobian)
                if by_jacobian < entries * gram_pair:
                    jacobian_entries += side_inputs * o * layer.groups * layer.outputs * (layer.inputs + 1)
            passes = side_inputs * f * (1 + o) + (jacobians if probe.n_rest else 0.0)
            rest = 1 if probe.n_rest else 0
            calls = side_calls * (2 + rest) + n_blocks * (len(probe.layers) + rest)
            out[method] = (passes, contraction, calls, jacobian_entries)
    return out


def seconds(pass_flops: float, contract_flops: float, calls: float, jacobian_entries: float) -> float:
    return (SECONDS_PER_PASS_FLOP * pass_flops + SECONDS_PER_CONTRACT_FLOP * contract_flops
            + SECONDS_PER_CALL * calls + SECONDS_PER_JACOBIAN_ENTRY * jacobian_entries)


def cheapest(probe: Probe, n1: int, n2: int, same: bool, blocks: Dict[str, int], outputs: str) -> str:
    """The method with the least predicted time among ``blocks``' keys."""
    costs = work(probe, n1, n2, same, blocks, outputs)
    return min(costs, key=lambda m: seconds(*costs[m]))
