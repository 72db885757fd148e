"""The tile driver: a kernel rule applied over every tile of input pairs.

``compute`` validates the inputs and options, runs one pair through the rule (the probe:
it checks the architecture against the inputs before any expensive work and tells the
output's shape), sizes tiles to the cache and the memory budget, and drives the rule over
the tiles of ``widenet._engine.tiling``, with the buffer pool (``.scratch``),
covariance replay (``.replay``), reproducible arithmetic (``.exact``) and the
differentiable mode (``.autodiff``) around it. It knows rules only as callables
``Flow -> Flow``: it never imports a layer.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import torch

from .._validate import as_inputs, available_memory, check_choice, check_int, check_mask, check_memory
from ..errors import LayerOrderError, NumericalError, OutOfMemoryError, ParameterError, ShapeError
from ..kernel import Kernel
from . import autodiff, exact, scratch
from .inputs import input_tile
from .replay import CovTape, Tapes
from .tile import Flow, Tile
from .tiling import PairGrid, Plan, RowBlocks, swap_halves, symmetric_block

__all__ = ["compute", "transform", "Rule"]

Rule = Callable[[Flow], Flow]

# Tiles hold about this many kernel entries; each elementwise rule allocates a few
# temporaries of tile size, so the working set stays in cache and peak memory stays close to
# the outputs however large N is. Tiles with many position pairs per input pair (the full
# layout, or large images) hold at least _TILE_PAIRS input pairs, up to _TILE_ENTRIES_MAX
# entries: their rules and window sums cost a few dozen small ops per tile whatever its
# size, and the row and column covariances are carried per pair. (benchmarks/run.py's pooled
# CNNs, swept after the ReLU rule was fused, ran fastest with up to 2^19 entries.)
_TILE_ENTRIES = 1 << 18
_TILE_PAIRS = 512
_TILE_ENTRIES_MAX = 2 << 18

# Bytes of working memory per tile entry, in units of the dtype's size: the NNGP and NTK
# tiles, the temporaries of the heaviest rules (about five tile-sized tensors) and the padded
# copy and accumulator of a window sum.
_LIVE_TENSORS = 12

# Replay own covariances across tiles; off only to test that it changes nothing.
_TAPES = True


@dataclass(frozen=True)
class _Call:
    """One kernel call's validated inputs and options."""

    owner: str
    x1: torch.Tensor
    x2: Optional[torch.Tensor]
    keep1: Optional[torch.Tensor]
    keep2: Optional[torch.Tensor]
    side1: dict
    side2: dict
    want_ntk: bool
    block_size: Optional[int]
    budget: int
    full: bool
    differentiable: bool
    plain: bool  # no derivatives carried (no autograd, no forward-mode tangents)

    @property
    def same(self) -> bool:
        return self.x2 is None

    @property
    def xb(self) -> torch.Tensor:
        return self.x1 if self.x2 is None else self.x2

    @property
    def keepb(self) -> Optional[torch.Tensor]:
        return self.keep1 if self.x2 is None else self.keep2

    @property
    def sideb(self) -> dict:
        return self.side1 if self.x2 is None else self.side2


def compute(rule: Rule, x1: Any, x2: Any = None, *, owner: str, needs_full: bool,
            parameters: Sequence[torch.Tensor] = (), want_ntk: bool = True,
            block_size: Optional[int] = None, memory: Any = None, layout: str = "auto",
            mask1: Any = None, mask2: Any = None, reproducible: bool = False,
            side1: Optional[dict] = None, side2: Optional[dict] = None) -> Kernel:
    """The ``widenet.Kernel`` of ``rule`` between ``x1`` and ``x2`` (see
    ``widenet.layers.Layer.kernel`` for the options). ``needs_full``: the rule mixes
    positions, so its input kernel must hold every pair of positions. ``parameters``: the
    rule's tensor hyperparameters (they decide, with the inputs, whether derivatives are
    carried). ``side1``/``side2``: side inputs of ``x1``'s and ``x2``'s rows, validated by
    the caller (dicts of tensors, or tuples of tensors, with one leading entry per input):
    every tile's rule finds its rows' and columns' slices in ``Tile.side1``/``side2``."""
    if not isinstance(reproducible, bool):
        raise ParameterError(f"{owner}: reproducible must be a bool (got {reproducible!r})")
    device = getattr(x1, "device", None)
    if (reproducible or exact.active()) and device is not None and device.type != "cpu":
        # On accelerators the products would still be exact, but torch's reductions pick
        # their order from the shapes, and that is not handled (nor tested) here.
        raise ParameterError(
            f"{owner}: reproducible=True runs on CPU tensors (got inputs on {device}); "
            f"move the inputs to the CPU or use reproducible=False"
        )
    if block_size is not None:
        block_size = check_int(owner, "block_size", block_size, minimum=1)
    budget = None if memory is None else check_memory(owner, "memory", memory)
    x1, x2 = _check_inputs(owner, x1, x2)
    keep1, keep2 = _check_masks(owner, x1, x2, mask1, mask2)
    full = _choose_layout(owner, needs_full, layout, tuple(x1.shape[2:]))
    # Tiles reuse their temporaries' buffers, except when autograd or forward-mode AD tracks
    # inputs or hyperparameters (``out=`` does not carry derivatives).
    tensors = (x1, x2, *parameters)
    plain = scratch.plain(*tensors)
    if (reproducible or exact.active()) and not plain:
        raise ParameterError(
            f"{owner}: reproducible=True is not differentiable (its exact products split their "
            f"operands with round); compute derivatives with reproducible=False"
        )
    differentiable = torch.is_grad_enabled() and any(
        isinstance(t, torch.Tensor) and t.requires_grad for t in tensors)
    budget = budget if budget is not None else available_memory(x1.device) // 4
    call = _Call(owner, x1, x2, keep1, keep2, side1 or {}, side2 or {}, want_ntk, block_size, budget,
                 full, differentiable, plain)
    recording = autodiff.recording() if differentiable else contextlib.nullcontext()
    with scratch.reusing(plain, limit=budget), exact.enabled(reproducible), recording:
        return _run(rule, call)


def transform(rule: Rule, kernel: Kernel, owner: str) -> Kernel:
    """``rule`` applied to an existing ``widenet.Kernel`` (not modified) as one tile."""
    if not isinstance(kernel, Kernel):
        raise TypeError(f"{owner}: expected a widenet Kernel (got {type(kernel).__name__})")
    same = kernel.same_inputs
    work = Tile(
        kernel.nngp.clone(), None if kernel.ntk is None else kernel.ntk.clone(),
        kernel.var1, kernel.var1 if same else kernel.var2,
        is_gaussian=kernel.is_gaussian, width=kernel.width, diagonal=0 if same else None,
        spatial=kernel.spatial, full=kernel.layout == "full",
    )
    differentiable = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (kernel.nngp, kernel.ntk, kernel.var1, kernel.var2))
    with autodiff.recording() if differentiable else contextlib.nullcontext():
        out = _single(owner, rule(work))
    return Kernel(out.nngp, out.ntk, out.cov1, None if same else out.cov2,
                  out.is_gaussian, out.width, "full" if out.is_full else "diagonal")


def _single(owner: str, out: Flow) -> Tile:
    if isinstance(out, tuple):
        raise LayerOrderError(
            f"{owner}: the network ends with {len(out)} branches; merge them with "
            f"FanInSum, FanInProd or FanInConcat so that it has one output"
        )
    return out


def _check_inputs(owner: str, x1: Any, x2: Any) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    x1 = as_inputs(owner, "x1", x1)
    if not 2 <= x1.ndim <= 5:
        raise ShapeError(
            f"{owner}: x1 must have shape (N, features) or (N, C, *spatial) with 1 to 3 spatial "
            f"axes (got shape {tuple(x1.shape)})"
        )
    if 0 in x1.shape:
        raise ShapeError(f"{owner}: x1 must hold at least one input with at least one feature "
                         f"(got shape {tuple(x1.shape)})")
    if x2 is None:
        return x1, None
    x2 = as_inputs(owner, "x2", x2, like=x1)
    if x2.ndim != x1.ndim or x2.shape[1:] != x1.shape[1:] or x2.shape[0] < 1:
        tail = ", ".join(str(n) for n in x1.shape[1:])
        raise ShapeError(
            f"{owner}: x2 must have shape (N2, {tail}) to match x1 "
            f"(got x1 {tuple(x1.shape)} and x2 {tuple(x2.shape)})"
        )
    return x1, x2


def _check_masks(owner: str, x1: torch.Tensor, x2: Optional[torch.Tensor], mask1: Any,
                 mask2: Any) -> tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
    """Validated padding masks turned into ``keep`` tensors (ones at real positions) in the
    inputs' dtype, or ``(None, None)`` without masks."""
    if mask1 is None and mask2 is None:
        return None, None
    if x2 is None and mask2 is not None:
        raise ParameterError(f"{owner}: mask2 must be None when x2 is None (mask1 covers x1)")
    keeps = []
    for name, x, mask in (("mask1", x1, mask1), ("mask2", x2, mask2)):
        if x is None:
            keeps.append(None)
            continue
        if mask is None:
            if x.ndim < 3:
                check_mask(owner, name, None, x)  # raises: inputs without positions
            keeps.append(torch.ones((x.shape[0],) + tuple(x.shape[2:]), dtype=x.dtype, device=x.device))
            continue
        m = check_mask(owner, name, mask, x)
        empty = (~m).reshape(m.shape[0], -1).sum(1) == 0
        if bool(empty.any()):
            i = int(torch.nonzero(empty)[0])
            raise ParameterError(f"{owner}: {name} pads every position of input {i}; each input "
                                 f"needs at least one real position")
        keeps.append((~m).to(x.dtype))
    return keeps[0], keeps[1]


def _choose_layout(owner: str, needs_full: bool, layout: str, spatial: tuple) -> bool:
    check_choice(owner, "layout", layout, ("auto", "diagonal", "full"))
    if layout == "diagonal" and needs_full and spatial:
        raise ParameterError(
            f"{owner}: layout must be 'auto' or 'full' for this network (got 'diagonal'): it "
            f"pools or attends over positions, which needs every pair of positions"
        )
    return bool(spatial) and (layout == "full" or (layout == "auto" and needs_full))


def _apply(rule: Rule, owner: str, work: Tile) -> Tile:
    out = _single(owner, rule(work))
    out.remask()
    return out


def _plan(call: _Call, in_pair: int, n1: int, n2: int) -> Plan:
    """Tiles as large as the cache-sized target, never more than the budget allows; square
    ones keep the covariances carried along (rows + columns) small next to the pairs, and a
    short side (few rows) lets the other one grow within the same tile size."""
    per_pair = _LIVE_TENSORS * in_pair * call.x1.element_size()
    max_pairs = call.budget // per_pair - 2  # the carried covariances cost about two more pairs
    if max_pairs < 1:
        raise ParameterError(
            f"{call.owner}: memory must be at least {3 * per_pair} bytes to hold one pair of "
            f"inputs with {in_pair} position pairs (got {call.budget})"
        )
    if call.block_size is not None:
        side = min(call.block_size, max(1, math.isqrt(max_pairs)))
        pairs = side * side
    else:
        pairs = max(_TILE_ENTRIES // in_pair, min(_TILE_PAIRS, _TILE_ENTRIES_MAX // in_pair))
        pairs = min(max_pairs, max(1, pairs))
        side = max(1, math.isqrt(pairs))
    rows = max(1, min(side, n1))
    cols = rows if call.same else max(1, min(n2, max(side, pairs // rows)))
    return Plan(n1, n2, rows, cols, call.same)


def _run(rule: Rule, call: _Call) -> Kernel:
    x1, xb = call.x1, call.xb
    n1, n2 = x1.shape[0], xb.shape[0]
    rows = lambda k, s: None if k is None else k[s]  # noqa: E731
    side_rows = lambda d, s: {k: _slice(v, s) for k, v in d.items()}  # noqa: E731

    # The probe: one pair through the network validates the architecture against the inputs
    # (orders, shapes, closed forms) before any expensive work, and gives the output layout.
    probe_tape = CovTape()
    with torch.no_grad():
        probe_in = input_tile(x1[:1], x1[:1], same=True, full=call.full, tile=True, diagonal=0,
                              keep_r=rows(call.keep1, slice(0, 1)), side_r=side_rows(call.side1, slice(0, 1)),
                              tapes=Tapes(probe_tape, probe_tape))
        if call.want_ntk:
            probe_in.start_ntk()
        probe = _apply(rule, call.owner, probe_in)
    out_pair, out_cov = tuple(probe.nngp.shape[2:]), tuple(probe.cov1.shape[1:])
    paired = len(out_cov) // 2 if probe.is_full else 0

    _check_result_fits(call, n1, n2, math.prod(out_pair))
    in_pair = math.prod(x1.shape[2:]) ** (2 if call.full else 1)
    plan = _plan(call, in_pair, n1, n2)
    # Own covariances are computed once per input and replayed by later tiles when all of
    # them fit in what the tiles leave of the budget; a block's tape goes after its last row.
    tape_bytes = probe_tape.nbytes() * (n1 if call.same else n2 + n1)
    tile_bytes = (plan.rows * plan.cols + 2) * _LIVE_TENSORS * in_pair * x1.element_size()
    use_tapes = _TAPES and tape_bytes <= call.budget - tile_bytes
    row_tapes: dict[int, CovTape] = {}
    col_tapes = row_tapes if call.same else {}

    diff = call.differentiable
    grids = {"nngp": PairGrid(plan, out_pair, x1, paired=paired, differentiable=diff)}
    if call.want_ntk:
        grids["ntk"] = PairGrid(plan, out_pair, x1, paired=paired, differentiable=diff)
    var1 = RowBlocks(n1, plan.rows, out_cov, x1, differentiable=diff)
    var2 = None if call.same else RowBlocks(n2, plan.cols, out_cov, x1, differentiable=diff)
    last = probe
    # One input against itself (a single large graph or image): the probe was the whole call.
    probe_is_call = n1 == 1 and call.same and call.plain
    for i, j in plan.tiles():
        if probe_is_call:
            _store(plan, i, j, probe, grids, var1, var2, paired)
            continue
        r, c = plan.row_slice(i), plan.col_slice(j)
        on_diagonal = plan.on_diagonal(i, j)
        tapes = None
        if use_tapes:
            side1 = row_tapes.setdefault(i, CovTape())
            tapes = Tapes(side1, side1 if on_diagonal else col_tapes.setdefault(j, CovTape()))
        work = input_tile(x1[r], xb[c], same=on_diagonal, full=call.full, tile=True,
                          diagonal=0 if on_diagonal else None, keep_r=rows(call.keep1, r),
                          keep_c=rows(call.keepb, c), side_r=side_rows(call.side1, r),
                          side_c=side_rows(call.sideb, c), tapes=tapes)
        if call.want_ntk:
            work.start_ntk()
        last = work = _apply(rule, call.owner, work)
        if tapes is not None and not tapes.complete():
            raise RuntimeError(  # pragma: no cover - an engine invariant
                f"{call.owner}: a tile took {tapes.pos} covariance steps where its blocks "
                f"recorded {len(tapes.side1.steps)} and {len(tapes.side2.steps)}"
            )
        _store(plan, i, j, work, grids, var1, var2, paired)
        if j == plan.grid[1] - 1:
            row_tapes.pop(i, None)  # later rows meet only later column blocks
    return _check_finite(call, Kernel(
        grids["nngp"].result(), grids["ntk"].result() if call.want_ntk else None,
        var1.result(), None if var2 is None else var2.result(),
        is_gaussian=last.is_gaussian, width=last.width, layout="full" if probe.is_full else "diagonal"))


def _slice(value, s: slice):
    """Rows ``s`` of a side input: a tensor, or a tuple of tensors."""
    return tuple(v[s] for v in value) if isinstance(value, tuple) else value[s]


def _size(nbytes: float) -> str:
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6)):
        if nbytes >= scale:
            return f"{nbytes / scale:.3g} {unit}"
    return f"{nbytes / 1e3:.3g} kB"


def _check_result_fits(call: _Call, n1: int, n2: int, per_pair: int) -> None:
    """Refuses, before the tiles run, a result larger than the memory available now."""
    kernels = 2 if call.want_ntk else 1
    nbytes = n1 * n2 * per_pair * kernels * call.x1.element_size()
    available = available_memory(call.x1.device)
    if nbytes > available:
        what = "NNGP and NTK" if call.want_ntk else "NNGP"
        positions = f"{per_pair} position pairs each, " if per_pair > 1 else ""
        less = ["fewer inputs"] + (["net.nngp only"] if call.want_ntk else []) + (
            ["float32"] if call.x1.dtype == torch.float64 else [])
        raise OutOfMemoryError(
            f"{call.owner}: the {what} of {n1} x {n2} inputs ({positions}{call.x1.dtype}) take "
            f"{_size(nbytes)}, more than the {_size(available)} of memory available; compute it "
            f"in tiles into a store on disk with widenet.blocked.compute(net, x1, x2, "
            f"store='kernel.zarr'), or ask for less ({', '.join(less)})"
        )


def _check_finite(call: _Call, kernel: Kernel) -> Kernel:
    """Refuses a kernel with NaN or Inf entries from finite inputs (values past the dtype's
    range, e.g. large inputs in float32): never a silently non-finite result."""
    for name in ("nngp", "ntk"):
        value = getattr(kernel, name)
        if value is not None and not bool(torch.isfinite(value).all()):
            bad = int((~torch.isfinite(value)).sum())
            scale = float(call.x1.abs().max())
            raise NumericalError(
                f"{call.owner}: {bad} of the {value.numel()} entries of the {name.upper()} are NaN "
                f"or Inf although the inputs are finite (largest |x1| = {scale:.3g}, dtype "
                f"{call.x1.dtype}): the values left the dtype's range; scale the inputs or use float64"
            )
    return kernel


def _store(plan: Plan, i: int, j: int, work: Tile, grids: dict, var1: RowBlocks,
           var2: Optional[RowBlocks], paired: int) -> None:
    """A computed tile into the outputs: a diagonal tile made symmetric (with each input's
    kernel against itself its own covariance, exactly), and each per-input variance once."""
    if plan.on_diagonal(i, j):
        cov = work.cov1 if not paired else (work.cov1 + swap_halves(work.cov1, paired)) / 2
        var1.put(i, cov)
        for name, grid in grids.items():
            block = symmetric_block(getattr(work, name), paired)
            if name == "nngp":
                block.diagonal(0, 0, 1).copy_(cov.movedim(0, -1))
            grid.put(i, j, block)
        return
    for name, grid in grids.items():
        grid.put(i, j, getattr(work, name))
    if var2 is not None:
        if j == 0:
            var1.put(i, work.cov1)
        if i == 0:
            var2.put(j, work.cov2)
