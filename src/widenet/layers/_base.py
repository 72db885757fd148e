"""The layer abstraction: one object, two faces.

A :class:`Layer` has an exact infinite-width kernel rule (``_apply`` on a private
:class:`~widenet.kernel.Work` tile) and a finite-width twin (``_build`` returning a
``torch.nn.Module``). Public entry points live here: ``kernel``/``nngp``/``ntk`` on inputs,
``apply`` on an existing :class:`~widenet.kernel.Kernel`, and ``module`` for the finite net.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from typing import Any, Iterator, Optional, Sequence, Union

import torch
from torch import nn

from .. import _exact, _scratch
from .._validate import as_tensor, check_int
from ..errors import LayerOrderError, ParameterError, ShapeError
from ..kernel import CovTape, Kernel, Tapes, Work
from ._modules import check_mask, derive_seed

Flow = Union[Work, tuple]  # one branch, or a tuple of branches after FanOut
Spec = Union[Optional[int], tuple]  # feature count of each branch (None: not known yet)

# Tiles hold about this many kernel entries; each elementwise rule allocates a few
# temporaries of tile size, so the working set stays in cache and peak memory stays close to
# the outputs however large N is. Tiles with many position pairs per input pair (the full
# layout, or large images) hold at least _TILE_PAIRS input pairs, up to _TILE_ENTRIES_MAX
# entries: their rules and window sums cost a few dozen small ops per tile whatever its
# size, and the row and column covariances are carried per pair. (Measured on 2 cores with
# the benchmark workloads: fully connected nets are fastest at 2^18 entries, pooled CNNs at
# 150-600 pairs and attention at about 500, 10-20% faster than at 2^18 entries.)
_TILE_ENTRIES = 1 << 18
_TILE_PAIRS = 512
_TILE_ENTRIES_MAX = 3 << 18


class Layer:
    """Base class of every widenet layer (see the module docstring)."""

    # ---- hooks for subclasses -------------------------------------------------------------
    def _apply(self, flow: Flow) -> Flow:
        raise NotImplementedError  # pragma: no cover - every concrete layer overrides it

    def _build(self, spec: Spec, seeds: Iterator[int], factory: dict) -> tuple[nn.Module, Spec]:
        raise NotImplementedError  # pragma: no cover

    # ---- helpers for subclasses -----------------------------------------------------------
    @property
    def _name(self) -> str:
        return type(self).__name__

    def _single(self, flow: Flow) -> Work:
        if isinstance(flow, tuple):
            raise LayerOrderError(
                f"{self._name}: expected one branch but received {len(flow)}; merge branches "
                f"with FanInSum, FanInProd or FanInConcat first"
            )
        return flow

    def _single_spec(self, spec: Spec) -> Optional[int]:
        if isinstance(spec, tuple):
            raise LayerOrderError(
                f"{self._name}: expected one branch but received {len(spec)}; merge branches "
                f"with FanInSum, FanInProd or FanInConcat first"
            )
        return spec

    def _needs_full(self) -> bool:
        """True when the layer mixes positions (pooling, attention): its input kernel must
        hold every pair of positions, not only the spatial diagonal."""
        return False

    # ---- public API -----------------------------------------------------------------------
    def kernel(
        self,
        x1: Any,
        x2: Any = None,
        *,
        block_size: Optional[int] = None,
        memory: Union[int, str, None] = None,
        layout: str = "auto",
        mask1: Any = None,
        mask2: Any = None,
        reproducible: bool = False,
    ) -> Kernel:
        """NNGP and NTK between ``x1`` and ``x2``.

        Inputs are ``(N, features)`` for fully connected networks and ``(N, C, *S)`` (PyTorch's
        layout: channels, then 1 to 3 spatial axes) for convolutional ones; sequences are
        ``(N, C, L)``. ``x2=None`` means ``x2 = x1``; then only pairs (i, j >= i) are computed
        and mirrored, so the result is exactly symmetric. dtype and device follow the inputs
        (numpy arrays are converted; float64 is recommended for accuracy).

        Args:
            block_size: inputs per side of a tile of pairs (default: chosen from the cache
                size and ``memory``). Any value >= 1; nothing needs to divide anything.
            memory: bound on the working memory beyond inputs and outputs, in bytes or as a
                string like ``"2GB"`` (default: a quarter of the memory available now). Tiles
                are sized so that their temporaries stay within it, whatever N.
            layout: "auto" (default), "diagonal" or "full". For spatial inputs, "diagonal"
                computes only position s of x1 against the same position of x2 (O(|S|) per
                pair), "full" every pair of positions (O(|S|^2)). "auto" takes "full" only when
                a pooling or attention layer needs it.
            mask1, mask2: padding masks for variable-length sequences (or images with padded
                regions): boolean ``(N, *S)`` tensors, **True at padded positions** (as torch's
                ``key_padding_mask`` and Neural Tangents' masks). Padded positions are left
                out of every sum, mean and softmax over positions, so a padded input gets
                exactly the kernel of the unpadded one; entries involving a padded position
                are zero in the result. ``mask2`` must be None when ``x2`` is None; a missing
                mask means no padding. Masks pass through layers that keep positions in place
                (Dense, nonlinearities, stride-1 "same" Conv, LayerNorm, Dropout,
                SelfAttention) and end at global pooling; strided, windowed or flattening
                layers raise.
            reproducible: compute every entry so that its bits depend only on the two
                inputs it pairs, never on which other inputs share its tile, on
                ``block_size``, ``memory`` or the number of threads: matrix products are
                computed exactly and then rounded, elementwise functions never take their
                scalar paths, sums are never split across threads (see
                :mod:`widenet._exact`). So a kernel computed in pieces
                (:func:`widenet.blocked.compute` with any tile size, a Dask cluster) equals
                the kernel computed in one call bit for bit. Measured cost: 1.6-2.0x the
                time on CNN kernels, 3.4x on fully connected ones with 784 input features
                and 11.5x on attention (an exact product costs 6 products);
                results agree with the default mode to a few units in the last place.
                Compiled rules (:func:`widenet.set_compile`) are not used. CPU inputs only,
                and not differentiable (the exact products split their operands with
                ``round``).

        Returns:
            a :class:`Kernel`; ``nngp`` and ``ntk`` have shape ``(N1, N2)`` for outputs
            without spatial axes (see :class:`Kernel` for spatial outputs).

        Float hyperparameters (``W_std``, ``b_std``, activation parameters, attention
        scales) may be 0-d tensors: kernels are then differentiable in them by forward-mode
        AD (``torch.func.jvp``, ``torch.autograd.forward_ad``), which
        :func:`widenet.predict.fit_hyperparameters` uses.
        """
        return _compute(self, x1, x2, want_ntk=True, block_size=block_size, memory=memory,
                        layout=layout, mask1=mask1, mask2=mask2, reproducible=reproducible)

    def nngp(self, x1: Any, x2: Any = None, *, block_size: Optional[int] = None,
             memory: Union[int, str, None] = None, layout: str = "auto",
             mask1: Any = None, mask2: Any = None, reproducible: bool = False) -> torch.Tensor:
        """Only the NNGP kernel (see :meth:`kernel`); no NTK work is done."""
        return _compute(self, x1, x2, want_ntk=False, block_size=block_size, memory=memory,
                        layout=layout, mask1=mask1, mask2=mask2, reproducible=reproducible).nngp

    def ntk(self, x1: Any, x2: Any = None, *, block_size: Optional[int] = None,
            memory: Union[int, str, None] = None, layout: str = "auto",
            mask1: Any = None, mask2: Any = None, reproducible: bool = False) -> torch.Tensor:
        """Only the NTK (see :meth:`kernel`; its recursion needs the NNGP, not returned)."""
        return _compute(self, x1, x2, want_ntk=True, block_size=block_size, memory=memory,
                        layout=layout, mask1=mask1, mask2=mask2, reproducible=reproducible).ntk

    def apply(self, kernel: Kernel) -> Kernel:
        """Transforms an existing :class:`Kernel` by this layer (the input is not modified)."""
        if not isinstance(kernel, Kernel):
            raise TypeError(f"{self._name}.apply: expected a widenet Kernel (got {type(kernel).__name__})")
        same = kernel.same_inputs
        full = kernel.layout == "full"
        spatial = kernel.spatial
        work = Work(
            kernel.nngp.clone(),
            None if kernel.ntk is None else kernel.ntk.clone(),
            kernel.var1,
            kernel.var1 if same else kernel.var2,
            is_gaussian=kernel.is_gaussian,
            width=kernel.width,
            diagonal=0 if same else None,
            spatial=spatial,
            full=full,
        )
        out = self._single(self._apply(work))
        return Kernel(out.nngp, out.ntk, out.cov1, None if same else out.cov2,
                      out.is_gaussian, out.width, "full" if out.is_full else "diagonal")

    def module(
        self,
        input_shape: Union[int, Sequence[int], None] = None,
        *,
        seed: Optional[int] = None,
        generator: Optional[torch.Generator] = None,
        dtype: Optional[torch.dtype] = None,
        device: Union[str, torch.device, None] = None,
        init: str = "gaussian",
    ) -> nn.Module:
        """The finite-width ``torch.nn.Module`` whose random initialization has this limit.

        Args:
            input_shape: shape of one input: ``d`` or ``(d,)`` for features, ``(C, *S)`` for
                images and sequences. ``None`` builds the first affine layers lazily: their
                weights materialize on the first forward call.
            seed: network seed; the same seed gives the same network. Without ``seed`` or
                ``generator`` the seed is drawn from torch's global generator, so
                ``torch.manual_seed`` makes it reproducible too.
            generator: a ``torch.Generator`` from which the network seed is drawn.
            dtype, device: of the parameters (default: torch's default dtype, CPU).
            init: how Dense and Conv weights are drawn: ``"gaussian"`` (i.i.d., whose
                infinite-width limit is this layer's kernel), ``"orthogonal"`` (scaled Haar
                orthogonal matrices with the same entry variance, Saxe et al. 2014; a Conv's
                ``(out, in * taps)`` matrix) or ``"delta_orthogonal"`` (as "orthogonal" for
                Dense; a Conv is zero except for an orthogonal centre tap, Xiao et al. 2018).
                Biases and attention projections stay Gaussian. Orthogonal weights keep the
                Gaussian's entry variance, so pre-activation variances follow the same length
                map; a delta-orthogonal Conv acts like a 1x1 convolution at initialization, so
                its network is not the one ``Conv``'s kernel describes. Used for dynamical
                isometry (``theory.jacobian_spectrum``).
        """
        if seed is not None and generator is not None:
            from ..errors import ParameterError

            raise ParameterError(f"{self._name}.module: give seed or generator, not both")
        if seed is None:
            seed = int(torch.randint(0, 2**62, (1,), generator=generator).item())
        else:
            seed = check_int(f"{self._name}.module", "seed", seed, minimum=0)
        if input_shape is not None:
            shape = (input_shape,) if isinstance(input_shape, int) else tuple(input_shape)
            if not 1 <= len(shape) <= 4:
                raise ShapeError(
                    f"{self._name}.module: input_shape must be (features,) or (channels, *spatial) "
                    f"with 1 to 3 spatial axes (got {shape})"
                )
            for i, n in enumerate(shape):
                check_int(f"{self._name}.module", f"input_shape[{i}]", n, minimum=1)
            spec: Spec = int(shape[0])
            ndim: Optional[int] = len(shape) - 1
        else:
            spec, ndim = None, None
        counter = itertools.count()
        seeds = (derive_seed(seed, i) for i in counter)
        # ``ndim``: spatial dimensions of the current layer's input, when known (layers that
        # remove spatial axes set it to 0 for the layers built after them).
        from .._validate import check_choice
        from ._modules import INITS

        factory = {"dtype": dtype, "device": device, "ndim": ndim,
                   "init": check_choice(f"{self._name}.module", "init", init, INITS)}
        module, _ = self._build(spec, seeds, factory)
        return module

    def __rshift__(self, other: "Layer") -> "Layer":
        """``a >> b`` is ``Serial(a, b)``."""
        from .combinators import Serial

        return Serial(self, other)


def _check_inputs(owner: str, x1: Any, x2: Any) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    x1 = as_tensor(owner, "x1", x1)
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
    x2 = as_tensor(owner, "x2", x2, like=x1)
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


def _run_single(layer: Layer, work: Work) -> Work:
    out = layer._apply(work)
    if isinstance(out, tuple):
        raise LayerOrderError(
            f"{layer._name}: the network ends with {len(out)} branches; merge them with "
            f"FanInSum, FanInProd or FanInConcat so that it has one output"
        )
    out.remask()
    return out


def _swap(t: torch.Tensor, lead: int, nspatial: int, full: bool) -> torch.Tensor:
    """The tile seen from the other side: rows and columns exchanged, and in the full layout
    the two position halves too. ``lead`` is the number of leading (input) axes, 1 or 2."""
    order = [1, 0] if lead == 2 else [0]
    if full and nspatial:
        first = list(range(lead, lead + nspatial))
        order += [a + nspatial for a in first] + first
    else:
        order += list(range(lead, t.ndim))
    return t.permute(order)


def _symmetric_block(t: torch.Tensor, nspatial: int, full: bool) -> torch.Tensor:
    """A square block of pairs (i, j) made exactly symmetric: entries with i < j are kept
    (the values a cross-kernel call with these rows and columns gives), those with i > j are
    their mirror images, and each input against itself is averaged with its mirror."""
    b = t.shape[0]
    swapped = _swap(t, 2, nspatial, full)
    index = torch.arange(b, device=t.device)
    upper = (index[:, None] < index[None, :]).reshape((b, b) + (1,) * (t.ndim - 2))
    out = _scratch.call(torch.where, upper, t, swapped, like=t)
    out.diagonal(0, 0, 1).copy_(((t + swapped) / 2).diagonal(0, 0, 1))
    return out


def _symmetrize_cov(cov: torch.Tensor, nspatial: int, full: bool) -> torch.Tensor:
    if not (full and nspatial):
        return cov
    return (cov + _swap(cov, 1, nspatial, True)) / 2


def _input_work(xr: torch.Tensor, xc: torch.Tensor, *, same: bool, full: bool, tile: bool,
                diagonal: Optional[int], keep_r: Optional[torch.Tensor] = None,
                keep_c: Optional[torch.Tensor] = None, tapes: Optional[Tapes] = None) -> Work:
    """The input layer's kernel ``x . x' / C`` on a tile of row and column inputs (the own
    covariances replayed from ``tapes`` when an earlier tile recorded them)."""
    b, c = xr.shape[:2]
    spatial = tuple(xr.shape[2:])
    n = math.prod(spatial)

    def self_cov(x: torch.Tensor, tape: Optional[CovTape]) -> torch.Tensor:
        if tape is not None and tape.input is not None:
            return tape.input
        if not (spatial and full):
            g = _exact.sum(x.pow(2), 1).div_(c)
        else:
            f = x.reshape(x.shape[0], c, n)
            g = _scratch.call(_exact.matmul, f.transpose(1, 2), f, shape=(x.shape[0], n, n)).div_(c)
            g = _scratch.call(torch.add, g, g.transpose(1, 2)).div_(2)
            g = g.reshape((x.shape[0],) + spatial + spatial)
        if tape is not None:
            _scratch.release(g)
            tape.input = g
        return g

    cov1 = self_cov(xr, None if tapes is None else tapes.side1)
    cov2 = cov1 if same else self_cov(xc, None if tapes is None else tapes.side2)
    nngp = None
    if tile:
        m = xc.shape[0]
        if not spatial:
            nngp = _exact.matmul(xr, xc.T).div_(c)
        elif not full:
            fr = xr.reshape(b, c, n).permute(2, 0, 1)
            fc = xc.reshape(m, c, n).permute(2, 1, 0)
            nngp = _exact.matmul(fr, fc).permute(1, 2, 0).div_(c).contiguous().reshape((b, m) + spatial)
        elif c <= _OUTER_CHANNELS and not _exact.active():
            # Few channels: a sum of broadcast products written straight into the tile's
            # layout. The GEMM below, its division and its transposing copy cost about five
            # times as much for one channel (0.075 ms against 0.013 on a 12x12x40x40 tile).
            fr = xr.reshape(b, 1, c, n, 1)
            fc = xc.reshape(1, m, c, 1, n)
            nngp = _scratch.call(torch.mul, fr[:, :, 0], fc[:, :, 0])
            for i in range(1, c):
                nngp.addcmul_(fr[:, :, i], fc[:, :, i])
            if c > 1:
                nngp.div_(c)
            nngp = nngp.reshape((b, m) + spatial + spatial)
        else:
            fr = xr.reshape(b, c, n).transpose(1, 2).reshape(b * n, c)
            fc = xc.reshape(m, c, n).transpose(1, 2).reshape(m * n, c)
            g = _scratch.call(_exact.matmul, fr, fc.T, shape=(b * n, m * n)).div_(c)
            g = g.reshape(b, n, m, n).permute(0, 2, 1, 3)
            nngp = _scratch.clone(g).reshape((b, m) + spatial + spatial)
        if same:
            nngp = _symmetric_block(nngp, len(spatial), full)
            nngp.diagonal(0, 0, 1).copy_(cov1.movedim(0, -1))
    work = Work(nngp, None, cov1, cov2, width=c, diagonal=diagonal, spatial=spatial, full=full,
                keep1=keep_r, keep2=keep_r if same else keep_c, tapes=tapes)
    work.remask()
    return work


# Input channels up to which the full-layout input tile is summed from broadcast products.
_OUTER_CHANNELS = 4

# Bytes of working memory per tile entry, in units of the dtype's size: the NNGP and NTK
# tiles, the temporaries of the heaviest rules (about five tile-sized tensors) and the padded
# copy and accumulator of a window sum.
_LIVE_TENSORS = 12

# Replay own covariances across tiles (CovTape); off only to test that it changes nothing.
_TAPES = True


def _choose_layout(owner: str, layer: Layer, layout: str, spatial: tuple) -> bool:
    from .._validate import check_choice

    check_choice(owner, "layout", layout, ("auto", "diagonal", "full"))
    needs = layer._needs_full()
    if layout == "diagonal" and needs and spatial:
        raise ParameterError(
            f"{owner}: layout must be 'auto' or 'full' for this network (got 'diagonal'): it "
            f"pools or attends over positions, which needs every pair of positions"
        )
    return bool(spatial) and (layout == "full" or (layout == "auto" and needs))


def _hyperparameters(layer: Any, prefix: str = "") -> Iterator[tuple[str, torch.Tensor]]:
    """Tensor-valued hyperparameters of an architecture, with dotted paths (for messages)."""
    if isinstance(layer, torch.Tensor):
        yield prefix, layer
    elif isinstance(layer, (tuple, list)):
        for i, item in enumerate(layer):
            yield from _hyperparameters(item, f"{prefix}[{i}]")
    elif dataclasses.is_dataclass(layer) and isinstance(layer, Layer):
        for f in dataclasses.fields(layer):
            yield from _hyperparameters(getattr(layer, f.name), f"{prefix}.{f.name}" if prefix else f.name)


def _check_reverse_mode(owner: str, layer: Layer) -> None:
    if not torch.is_grad_enabled():
        return
    for path, value in _hyperparameters(layer):
        if value.requires_grad:
            raise ParameterError(
                f"{owner}: hyperparameter {path} requires grad, but kernels are differentiated in "
                f"their hyperparameters by forward mode (rules work in place on tiles): use "
                f"torch.func.jvp or torch.autograd.forward_ad with 0-d tensor hyperparameters, or "
                f"wn.predict.fit_hyperparameters (which does this for you)"
            )


def _compute(layer: Layer, x1: Any, x2: Any, *, want_ntk: bool, block_size: Optional[int],
             memory: Any = None, layout: str = "auto", mask1: Any = None,
             mask2: Any = None, reproducible: bool = False) -> Kernel:
    from .._validate import available_memory, check_memory

    owner = f"{layer._name}.kernel"
    if not isinstance(reproducible, bool):
        raise ParameterError(f"{owner}: reproducible must be a bool (got {reproducible!r})")
    device = getattr(x1, "device", None)
    if (reproducible or _exact.active()) and device is not None and device.type != "cpu":
        # On accelerators the products would still be exact, but torch's reductions pick
        # their order from the shapes, and that is not handled (nor tested) here.
        raise ParameterError(
            f"{owner}: reproducible=True runs on CPU tensors (got inputs on {device}); "
            f"move the inputs to the CPU or use reproducible=False"
        )
    _check_reverse_mode(owner, layer)
    if block_size is not None:
        block_size = check_int(owner, "block_size", block_size, minimum=1)
    budget = None if memory is None else check_memory(owner, "memory", memory)
    x1, x2 = _check_inputs(owner, x1, x2)
    keep1, keep2 = _check_masks(owner, x1, x2, mask1, mask2)
    spatial = tuple(x1.shape[2:])
    full = _choose_layout(owner, layer, layout, spatial)
    # Tiles reuse their temporaries' buffers, except when forward-mode AD tracks hyperparameter
    # or input tangents (dual tensors cannot be written through ``out=``).
    plain = _scratch.plain(x1, x2, *(t for _, t in _hyperparameters(layer)))
    if reproducible or _exact.active():
        if not plain:
            raise ParameterError(
                f"{owner}: reproducible=True is not differentiable (its exact products split their "
                f"operands with round); compute derivatives with reproducible=False"
            )
    budget = budget if budget is not None else available_memory(x1.device) // 4
    with _scratch.reusing(plain, limit=budget), _exact.enabled(reproducible):
        return _compute_tiles(layer, owner, x1, x2, keep1, keep2, want_ntk=want_ntk,
                              block_size=block_size, budget=budget, full=full)


def _compute_tiles(layer: Layer, owner: str, x1: torch.Tensor, x2: Optional[torch.Tensor],
                   keep1: Optional[torch.Tensor], keep2: Optional[torch.Tensor], *, want_ntk: bool,
                   block_size: Optional[int], budget: int, full: bool) -> Kernel:
    same = x2 is None
    keepb = keep1 if same else keep2
    rows = lambda k, a, b: None if k is None else k[a:b]  # noqa: E731
    xb = x1 if same else x2
    n1, n2 = x1.shape[0], xb.shape[0]
    spatial = tuple(x1.shape[2:])

    # Probe: one pair through the network validates the architecture against the inputs
    # (orders, shapes, closed forms) before any expensive work, and gives the output layout.
    probe_tape = CovTape()
    probe_in = _input_work(x1[:1], x1[:1], same=True, full=full, tile=True, diagonal=0,
                           keep_r=rows(keep1, 0, 1), tapes=Tapes(probe_tape, probe_tape))
    if want_ntk:
        probe_in.start_ntk()
    probe = _run_single(layer, probe_in)
    out_pair = tuple(probe.nngp.shape[2:])
    out_cov = tuple(probe.cov1.shape[1:])
    out_full = probe.is_full

    # Tiles: as many pairs as fit the cache-sized target, never more than the budget allows.
    in_pair = math.prod(spatial) ** (2 if full else 1)
    item = x1.element_size()
    per_pair = _LIVE_TENSORS * in_pair * item
    max_pairs = budget // per_pair - 2  # the carried covariances cost about two more pairs
    if max_pairs < 1:
        raise ParameterError(
            f"{owner}: memory must be at least {3 * per_pair} bytes to hold one pair of inputs "
            f"with {in_pair} position pairs (got {budget})"
        )
    if block_size is not None:
        side = min(block_size, max(1, math.isqrt(max_pairs)))
        pairs = side * side
    else:
        pairs = max(_TILE_ENTRIES // in_pair, min(_TILE_PAIRS, _TILE_ENTRIES_MAX // in_pair))
        pairs = min(max_pairs, max(1, pairs))
        side = max(1, math.isqrt(pairs))
    # Square tiles keep the covariances carried along (rows + columns) small next to the
    # pairs; a short side (few rows) lets the other one grow within the same tile size.
    br = max(1, min(side, n1))
    bc = br if same else max(1, min(n2, max(side, pairs // br)))

    # Own covariances are computed once per input and replayed by later tiles (CovTape) when
    # all of them fit in what the tiles leave of the budget; a block's tape is dropped after
    # its last row.
    tape_bytes = probe_tape.nbytes() * (n1 if same else n2 + n1)
    use_tapes = _TAPES and tape_bytes <= budget - (br * bc + 2) * per_pair
    row_tapes: dict[int, CovTape] = {}
    col_tapes = row_tapes if same else {}

    nngp = x1.new_empty((n1, n2) + out_pair)
    ntk = x1.new_empty((n1, n2) + out_pair) if want_ntk else None
    var1 = x1.new_empty((n1,) + out_cov)
    var2 = None if same else x1.new_empty((n2,) + out_cov)
    nsp_out = len(out_cov) // 2 if out_full else len(out_cov)
    last = probe
    for r0 in range(0, n1, br):
        r1 = min(r0 + br, n1)
        for c0 in range(r0 if same else 0, n2, bc):
            c1 = min(c0 + bc, n2)
            diag_block = same and c0 == r0
            tapes = None
            if use_tapes:
                side1 = row_tapes.setdefault(r0, CovTape())
                tapes = Tapes(side1, side1 if diag_block else col_tapes.setdefault(c0, CovTape()))
            work = _input_work(x1[r0:r1], xb[c0:c1], same=diag_block, full=full, tile=True,
                               diagonal=0 if diag_block else None, keep_r=rows(keep1, r0, r1),
                               keep_c=rows(keepb, c0, c1), tapes=tapes)
            if want_ntk:
                work.start_ntk()
            last = work = _run_single(layer, work)
            if tapes is not None and not (tapes.pos == len(tapes.side1.steps) == len(tapes.side2.steps)):
                raise RuntimeError(  # pragma: no cover - an engine invariant
                    f"{owner}: a tile took {tapes.pos} covariance steps where its blocks recorded "
                    f"{len(tapes.side1.steps)} and {len(tapes.side2.steps)}"
                )
            tiles = [(nngp, work.nngp)] + ([(ntk, work.ntk)] if want_ntk else [])
            if diag_block:
                cov = _symmetrize_cov(work.cov1, nsp_out, out_full)
                var1[r0:r1] = cov
                for out, t in tiles:
                    t = _symmetric_block(t, nsp_out, out_full)
                    if out is nngp:
                        t.diagonal(0, 0, 1).copy_(cov.movedim(0, -1))
                    out[r0:r1, c0:c1] = t
            else:
                for out, t in tiles:
                    out[r0:r1, c0:c1] = t
                    if same:
                        out[c0:c1, r0:r1] = _swap(t, 2, nsp_out, out_full)
                if not same:
                    if c0 == 0:
                        var1[r0:r1] = work.cov1
                    if r0 == 0:
                        var2[c0:c1] = work.cov2
        row_tapes.pop(r0, None)  # later rows meet only later column blocks
    return Kernel(nngp, ntk, var1, var2, is_gaussian=last.is_gaussian, width=last.width,
                  layout="full" if out_full else "diagonal")
