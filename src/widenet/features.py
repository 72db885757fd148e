"""Random-feature sketches of the NNGP and NTK: ``Phi(x1) @ Phi(x2).T`` approximates the kernel.

``features(net, x, n_features)`` maps each input to ``D`` numbers, so that inner products of
feature vectors approximate ``net.kernel(x1, x2).nngp`` or ``.ntk``; ``feature_ridge`` then
fits kernel ridge regression in ``O(N D^2)`` time and ``O(N D)`` memory instead of the
``O(N^2)`` kernel and ``O(N^3)`` solve.

The construction is the classic random-feature recursion (Rahimi & Recht 2007; Cho & Saul
2009; Daniely et al. 2016, arXiv 1602.05897) with the NTK features of Zandieh et al. 2021,
"Scaling Neural Tangent Kernels via Sketching and Random Features" (arXiv 2106.07880), and
their CNTK sketch for convolutional networks. It keeps NNGP features ``Z``
(``Z(x) . Z(x') ~ K``) and NTK features ``Psi`` (``Psi(x) . Psi(x') ~ Theta``) layer by layer,
with ``m = n_features``; on ``(N, C, *S)`` inputs one feature vector per position ``s``, so
that ``Z(x, s) . Z(x', s') ~ K(s, s')`` for every pair of positions (``(N, d)`` inputs have
one position):

* input: ``Z(s) = x(s) / sqrt(C)`` (``K0 = x(s) . x'(s') / C``, ``C`` the channels or the
  features ``d``), ``Psi`` empty (``Theta0 = 0``);
* ``Dense`` (at each position), parameterization "ntk": ``Z' = [W_std Z, b_std]``,
  ``Psi' = [Z', W_std Psi]``; "standard": ``Z' = [W_std Z, b_std]``,
  ``Psi' = [sqrt(n_in) Z, W_std Psi, 1]`` (the bias entries only with a bias, ``b_std`` not
  None);
* ``Conv`` with ``q = prod(kernel_size)`` filter offsets ``o``: a ``Dense`` on the patch, the
  concatenation ``[Z(s + o) for each o] / sqrt(q)`` (zeros for padded positions, wrapped
  around for "circular"; ``Zpatch(s) . Zpatch(s') = A[K](s, s')``, the mean over offsets of
  ``K(s + o, s' + o)``, the ``Conv`` rule), with ``n_in = C_in q`` in the standard
  parameterization: ``Psi' = [Vpatch, c]`` with ``V = [W_std Z, W_std Psi]`` and
  ``c = b_std`` ("ntk"), ``V = [sqrt(n_in) Z, W_std Psi]`` and ``c = 1`` ("standard"). Where
  ``q > 1`` and the concatenation would exceed ``m`` columns it is replaced by its ``m``-column
  sketch ``R`` below (not when a nonlinearity follows: that one reads the patch directly);
* nonlinearity ``phi``: ``u = Z G`` at every position with one ``G``, a ``(dim Z, m)`` matrix
  of i.i.d. N(0, 1) entries (each column of ``u`` a centred Gaussian process over inputs and
  positions with covariance ``K``); ``Z' = phi(u) / sqrt(m)``, ``Dv = phi'(u) / sqrt(m)``
  (``Dv . Dv' ~ Tdot``), and ``Psi'`` the TensorSRHT sketch of the tensor product
  ``Dv (x) Psi`` (Ahle et al. 2020, arXiv 1909.01410; Zandieh et al. 2021):
  ``Psi'_k = (H s1 Dv)_{i_k} (H s2 Psi)_{j_k} / sqrt(m)`` with ``H`` the (unnormalized, +-1)
  Hadamard transform of the zero-padded vector, ``s1, s2`` random signs and ``i_k, j_k``
  uniform indices, so that ``E[Psi' . Psi''] = (Dv . Dv')(Psi . Psi')`` exactly; no
  ``m x dim Psi`` tensor product is ever formed. Right after a ``Conv`` the nonlinearity
  reads the patch without forming it: ``u = sum_o Z(s + o) G_o W_std / sqrt(q) + b_std g``
  (``G`` cut in blocks ``G_o`` of rows and a bias row ``g``), and ``(H s2 Psi)_{j_k}`` is
  computed part by part as below;
* ``AvgPool`` / ``SumPool``: the mean / sum of ``Z`` and ``Psi`` over each window (padded
  zeros counted), ``GlobalAvgPool`` / ``GlobalSumPool``: over every position (exact, no
  randomness);
* ``Flatten`` over ``P`` positions: the concatenation ``[Z(s) for each s] / sqrt(P)``
  (``Zflat . Zflat' = mean_s K(s, s)``, the ``Flatten`` rule), and the same of ``Psi``, each
  replaced by ``R`` where it would exceed ``m`` columns.

The SRHT of a concatenation ``x = [V(s + o) for o] / sqrt(q)`` (then a constant ``c``)
without forming it: with each part zero-padded to ``p`` entries (a power of two) and the
parts to ``Q`` blocks, the Hadamard matrix of the whole is ``H_Q (x) H_p``, so the entry
``(a, b)`` of ``H s x`` is ``sum_o H_Q[a, o] (H_p s_o V(s + o))_b / sqrt(q)`` (plus
``H_Q[a, q] s_c c``), ``s_o`` the signs of block ``o``: one transform of length ``p`` per
part, at ``m`` uniform entries ``(a_k, b_k)``. ``R = (H s x)_{(a_k, b_k)} / sqrt(m)``, so that
``E[R . R'] = x . x'`` exactly (an unbiased subsampled randomized Hadamard transform), and
as for any SRHT the products of two different coordinates cancel over the columns (for
independent transforms per part they would not, and an error would remain that no number of
features removes).

``method="nystrom"`` is the data-dependent alternative for any architecture (Williams &
Seeger 2001): ``n_features`` landmarks ``C`` drawn by ``seed`` from given ``landmarks``, and
``Phi(x) = K(x, C) U diag(s)^(-1/2)`` with ``K(C, C) = U diag(s) U^T``, so that
``Phi(x) . Phi(x') = K(x, C) K(C, C)^+ K(C, x')`` (exact when ``x`` or ``x'`` is a landmark).

Every random draw comes from ``torch.Generator().manual_seed(seed)`` with sizes that depend
only on the input shape (``d``, or ``(C, *S)``), the architecture and ``n_features``, never on
the number of inputs; inputs go through in chunks of a fixed number of rows (zero-padded;
for inputs with positions, as many as fit a fixed number of elements, from those sizes
alone), elementwise functions through ``widenet._engine.exact.elementwise``. So the same seed
is the same feature map for every batch: on CPU the features of a concatenated batch are the
concatenation of the features of its parts, bit for bit.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Optional

import torch

from ._engine import exact
from ._validate import as_inputs, by_get, check_choice, check_gets, check_int
from .errors import LayerOrderError, ParameterError, ShapeError
from .layers import (AvgPool, Conv, Dense, Flatten, GlobalAvgPool, GlobalSumPool, Identity, Layer, Nonlinearity,
                     Repeat, Serial, SumPool)
from .predict.ridge import feature_ridge  # re-exported: wn.feature_ridge

__all__ = ["features", "feature_ridge"]

_OWNER = "features"
# Inputs per chunk: every matrix product has the same shape whatever N (BLAS picks its
# kernels and summation order from the shapes), so each row's bits depend on that row only.
_ROWS = 64
# Inputs with positions: as many rows (up to _ROWS) as keep a chunk's widest tensor (rows x
# positions x columns) within this many elements, so that the rows of a chunk are fixed by the
# input shape, the architecture and n_features.
_ELEMS = 1 << 21

_POSITION_LAYERS = (Conv, AvgPool, SumPool, GlobalAvgPool, GlobalSumPool)  # need positions
_SUPPORTED = (Dense, Conv, AvgPool, SumPool, GlobalAvgPool, GlobalSumPool, Flatten)


class _Dense:
    def __init__(self, layer: Dense, n_in: int) -> None:
        self.layer, self.n_in = layer, n_in
        self.bias = layer.b_std is not None


class _Patch:
    """Parts gathered by position: ``table[o, s]`` is the input position of part ``o`` at output
    position ``s``, or ``p_in`` for a padded zero (a Conv's offsets, a pooling window's, or
    Flatten's positions)."""

    def __init__(self, table: torch.Tensor, p_in: int) -> None:
        self.table, self.p_in = table, p_in
        self.q, self.p_out = table.shape

    def to(self, device: torch.device) -> torch.Tensor:
        return self.table.to(device)


class _Conv:
    def __init__(self, layer: Conv, n_in: int, patch: _Patch) -> None:
        self.layer, self.patch = layer, patch
        self.q = patch.q
        self.n_in = n_in * self.q  # the standard parameterization's fan-in, C_in prod(kernel_size)
        self.bias = layer.b_std is not None


class _Pool:
    def __init__(self, patch: _Patch, scale: float) -> None:
        self.patch, self.scale = patch, scale


class _GlobalPool:
    def __init__(self, mean: bool, p: int) -> None:
        self.mean, self.p = mean, p


class _Flatten:
    def __init__(self, p: int) -> None:
        self.p = p
        self.patch = _Patch(torch.arange(p).reshape(p, 1), p)


class _Phi:
    """A run of elementwise nonlinearities as one function of the Gaussian pre-activation,
    its derivative by the chain rule (as ``Serial`` merges them into a ``Chain``); ``conv``:
    the ``_Conv`` right before it, whose patch it reads without forming it."""

    def __init__(self, layers: tuple, conv: Optional[_Conv] = None) -> None:
        self.layers, self.conv = layers, conv

    def fn(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer.fn(x)
        return x

    def derivative(self, x: torch.Tensor) -> torch.Tensor:
        out = None
        for layer in self.layers:
            d = layer.derivative(x)
            out = d if out is None else out * d
            x = layer.fn(x)
        return out


def _shown(layer: Any) -> str:
    return repr(layer) if isinstance(layer, Layer) else type(layer).__name__


def _flatten(net: Layer) -> list:
    """The layers of a Serial network in order (nested Serials and Repeats unrolled, Identity
    left out), or a ParameterError naming the first layer a sketch does not support."""
    out = []

    def walk(layer: Any) -> None:
        if isinstance(layer, Serial):
            for inner in layer.layers:
                walk(inner)
        elif isinstance(layer, Repeat):
            for _ in range(layer.n):
                walk(layer.layer)
        elif isinstance(layer, Identity):
            pass
        elif type(layer) in _SUPPORTED or isinstance(layer, Nonlinearity):  # not ConvLocal, MaxPool
            out.append(layer)
        else:
            raise ParameterError(
                f"{_OWNER}: net must be a Serial network of Dense, Conv, AvgPool, SumPool, "
                f"GlobalAvgPool, GlobalSumPool and Flatten layers and elementwise nonlinearities "
                f"(got {_shown(layer)}); random-feature sketches support only those. For this "
                f"network use method='nystrom' (features from the exact kernel at landmarks), "
                f"or compute the exact kernel, net.kernel(x1, x2), or in tiles with "
                f"widenet.blocked.compute"
            )

    _check_layer(net)
    walk(net)
    return out


def _check_layer(net: Any) -> None:
    if not isinstance(net, Layer):
        raise ParameterError(f"{_OWNER}: net must be a widenet layer (got {type(net).__name__})")


def _table(spatial: tuple, window: tuple, stride: tuple, dilation: tuple, pads: list, out: tuple,
           circular: bool) -> _Patch:
    """The ``_Patch`` of a window geometry (widenet's paddings: ``pads`` per axis, from
    ``_geometry.pads_for``)."""
    d = len(spatial)
    p_in = math.prod(spatial)
    flat = torch.zeros((1,) * (2 * d), dtype=torch.long)
    valid = torch.ones((1,) * (2 * d), dtype=torch.bool)
    step = 1
    for a in reversed(range(d)):
        n, k, st, r, (lo, _), o = spatial[a], window[a], stride[a], dilation[a], pads[a], out[a]
        pos = torch.arange(o)[None, :] * st + torch.arange(k)[:, None] * r - lo  # (k, o)
        ok = (pos >= 0) & (pos < n)
        if circular:
            pos, ok = pos % n, torch.ones_like(ok)
        shape = [1] * (2 * d)
        shape[a], shape[d + a] = k, o
        flat = flat + pos.reshape(shape) * step
        valid = valid & ok.reshape(shape)
        step *= n
    table = torch.where(valid, flat, torch.full_like(flat, p_in))
    return _Patch(table.reshape(math.prod(window), math.prod(out)), p_in)


def _checked_shape(net_layers: list, shape: tuple) -> None:
    """The input shape against the network: ShapeErrors before any work."""
    needs = next((layer for layer in net_layers if isinstance(layer, _POSITION_LAYERS)), None)
    removes = any(isinstance(layer, (Flatten, GlobalAvgPool, GlobalSumPool)) for layer in net_layers)
    if len(shape) == 2 and needs is not None:
        raise ShapeError(
            f"{_OWNER}: x must be a tensor (N, C, *S) with 1 to 3 spatial axes for a network "
            f"with {needs!r} (got shape {shape})"
        )
    if len(shape) > 2 and not removes:
        why = (f"but random features are one vector per input: remove the positions with Flatten, "
               f"GlobalAvgPool or GlobalSumPool before the output layers (a Dense layer acts on the "
               f"channels at each position, like a 1x1 Conv)")
        if needs is None:
            raise ShapeError(f"{_OWNER}: x must be a 2-D tensor (N, d) of inputs with d >= 1 features "
                             f"(got shape {shape}): with (N, C, *S) inputs this network's output would "
                             f"keep their positions, {why}")
        raise ShapeError(f"{_OWNER}: the network's output would keep the positions of its (N, C, *S) "
                         f"inputs (got shape {shape}), {why}")
    if not 2 <= len(shape) <= 5 or any(n == 0 for n in shape[1:]):
        raise ShapeError(
            f"{_OWNER}: x must be (N, d) with d >= 1 features or (N, C, *S) with 1 to 3 spatial "
            f"axes, none of size 0 (got shape {shape})"
        )


def _plan(net: Layer, shape: tuple) -> list:
    """The steps of the recursion for inputs of shape ``(N,) + shape``, checked as
    ``net.kernel`` checks the order of layers and the positions each layer needs."""
    steps, gaussian, after_phi = [], False, False
    width, spatial = shape[0], tuple(shape[1:])
    for layer in _flatten(net):
        run, after_phi = after_phi, isinstance(layer, Nonlinearity)
        if isinstance(layer, _POSITION_LAYERS) and not spatial:
            raise ShapeError(
                f"{_OWNER}: {layer!r} needs positions, but its input has none (after Flatten or "
                f"global pooling)"
            )
        if isinstance(layer, Dense):
            steps.append(_Dense(layer, width))
            width, gaussian = layer.out_features, True
        elif isinstance(layer, Conv):
            window, stride, dilation, pads, out = layer._geometry(spatial)
            patch = _table(spatial, window, stride, dilation, pads, out, layer.padding == "circular")
            steps.append(_Conv(layer, width, patch))
            width, spatial, gaussian = layer.out_channels, out, True
        elif isinstance(layer, (AvgPool, SumPool)):
            window, stride, pads, out = layer._geometry(spatial)
            patch = _table(spatial, window, stride, (1,) * len(window), pads, out, layer.padding == "circular")
            steps.append(_Pool(patch, 1.0 / patch.q if isinstance(layer, AvgPool) else 1.0))
            spatial = out
        elif isinstance(layer, (GlobalAvgPool, GlobalSumPool)):
            steps.append(_GlobalPool(isinstance(layer, GlobalAvgPool), math.prod(spatial)))
            spatial = ()
        elif isinstance(layer, Flatten):
            if spatial:
                p = math.prod(spatial)
                if p > 1:
                    steps.append(_Flatten(p))
                width, spatial, gaussian = width * p, (), gaussian and p == 1
        elif run:  # right after a nonlinearity: their composition
            steps[-1] = _Phi(steps[-1].layers + (layer,), steps[-1].conv)
        elif not gaussian:
            raise LayerOrderError(
                f"{_OWNER}: {layer!r} needs a Gaussian input, the output of a Dense or Conv layer "
                f"(pooling may come between); add one before it (a nonlinearity cannot follow the "
                f"network input, Flatten, or a nonlinearity with other layers between them)"
            )
        else:
            conv = steps.pop() if steps and isinstance(steps[-1], _Conv) else None
            steps.append(_Phi((layer,), conv))
            gaussian = False
    if spatial:  # _checked_shape catches this first; kept as a guard
        raise ShapeError(f"{_OWNER}: the network's output keeps positions {spatial}; end it with Flatten "
                         f"or global pooling")
    return steps


def _pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def _indices(n: int, m: int, gen: torch.Generator) -> torch.Tensor:
    """``m`` indices in ``[0, n)``, each uniform: whole random permutations, one after the
    other (without replacement within each, which lowers the sketch's variance)."""
    parts = [torch.randperm(n, generator=gen) for _ in range(-(-m // n))]
    return torch.cat(parts)[:m]


def _signs(n: int, gen: torch.Generator) -> torch.Tensor:
    return torch.randint(0, 2, (n,), generator=gen).mul_(2).sub_(1)


class _Draws:
    """The random matrices of one nonlinearity: ``G`` ``(dim Z, m)``, and the TensorSRHT's
    signs and indices (the second factor's only when ``dpsi`` is not None: after a Conv a
    ``_Sketch`` takes its place). Drawn in float32 on the CPU (the same map for float32 and
    float64 inputs), then converted."""

    def __init__(self, dz: int, dpsi: Optional[int], m: int, gen: torch.Generator, dtype: torch.dtype,
                 device: torch.device) -> None:
        self.g = torch.randn(dz, m, generator=gen, dtype=torch.float32).to(dtype=dtype, device=device)
        self.p1 = _pow2(m)
        if dpsi is None:
            self.s1 = _signs(self.p1, gen).to(dtype=dtype, device=device)
            self.i1 = _indices(self.p1, m, gen).to(device)
            return
        self.p2 = _pow2(max(dpsi, 1))
        self.s1 = _signs(self.p1, gen).to(dtype=dtype, device=device)
        self.s2 = _signs(self.p2, gen).to(dtype=dtype, device=device)
        self.i1 = _indices(self.p1, m, gen).to(device)
        self.i2 = _indices(self.p2, m, gen).to(device)


def _hadamard_entries(rows: torch.Tensor, cols: int) -> torch.Tensor:
    """``H[rows, :cols]`` of the Sylvester-Hadamard matrix, ``(-1)^popcount(row & col)``."""
    x = rows[:, None] & torch.arange(cols)[None, :]
    parity = torch.zeros_like(x)
    while bool(x.any()):
        parity ^= x & 1
        x = x >> 1
    return 1 - 2 * parity


class _Sketch:
    """The SRHT of a concatenation of parts, ``[V(s + o) for o] / sqrt(q)`` over the parts
    ``o`` of a ``_Patch`` (then a constant entry ``c``), to ``m`` columns, without forming the
    concatenation: each part zero-padded to ``p`` (a power of two) and the parts to ``Q``
    blocks, the Hadamard matrix of the whole is ``H_Q (x) H_p``, so the entry ``(a, b)`` of
    the transform is ``sum_o H_Q[a, o] (H_p s_o V(s + o))_b``, with signs ``s_o`` for each
    part and ``m`` uniform entries ``(a_k, b_k)``. For every column ``k``, ``E[out_k out'_k]``
    is the inner product of the two concatenations (so a reduction is this divided by
    ``sqrt(m)``), and as for one vector, the terms of two different coordinates cancel over the
    columns by the orthogonality of ``H``."""

    def __init__(self, q: int, dv: int, m: int, bias: bool, gen: torch.Generator, dtype: torch.dtype,
                 device: torch.device) -> None:
        self.width = p = _pow2(max(dv, 1))
        blocks = q + bias
        self.s = torch.stack([_signs(p, gen) for _ in range(blocks)]).to(dtype=dtype, device=device)
        idx = _indices(_pow2(blocks) * p, m, gen)
        self.b = (idx % p).to(device)
        self.h = _hadamard_entries(idx // p, blocks).T.contiguous().to(dtype=dtype, device=device)  # (blocks, m)
        self.q, self.bias = q, bias

    def __call__(self, v: torch.Tensor, table: Optional[torch.Tensor], c: Optional[float]) -> torch.Tensor:
        """``table`` None: the parts are the positions of ``v`` (Flatten), all transformed at once."""
        rows, p, dv = v.shape
        if table is None:
            padded = v.new_zeros(rows, p, self.width)
            padded[:, :, :dv] = v
            y = _hadamard(padded.mul_(self.s[:p]).reshape(-1, self.width)).index_select(1, self.b)
            return y.reshape(rows, p, -1).mul_(self.h[:p]).sum(1, keepdim=True).mul_(1.0 / math.sqrt(p))
        v = _pad_position(v)
        out = None
        for o in range(self.q):
            part = v.index_select(1, table[o]).reshape(-1, dv)
            y = _srht(part, self.s[o], self.b).reshape(rows, table.shape[1], -1).mul_(self.h[o])
            out = y if out is None else out.add_(y)
        out.mul_(1.0 / math.sqrt(self.q))
        if self.bias and c is not None:  # the last block: c at its first entry
            out.add_(self.h[self.q] * (self.s[self.q, 0] * c))
        return out


def _pad_position(t: torch.Tensor) -> torch.Tensor:
    """``t`` ``(rows, P, dim)`` with a position of zeros appended (index ``P``: padding)."""
    return torch.cat([t, t.new_zeros(t.shape[0], 1, t.shape[2])], dim=1)


def _concat(t: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """The exact patch concatenation ``[t(s + o) for o] / sqrt(q)``."""
    t = _pad_position(t)
    return torch.cat([t.index_select(1, row) for row in table], dim=2).mul_(1.0 / math.sqrt(table.shape[0]))


def _hadamard_matrix(n: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    h = torch.ones(1, 1, dtype=dtype, device=device)
    while h.shape[0] < n:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h


def _hadamard(x: torch.Tensor) -> torch.Tensor:
    """The unnormalized Walsh-Hadamard transform of each row (length ``n``, a power of two):
    ``H_n`` is the Kronecker product of Hadamard matrices of at most 64 rows over groups of the
    index bits, so the transform is a few matrix products, one per group, on the row viewed
    as a tensor with one axis per group (fixed shapes for a chunk: the same bits whatever the
    row's place, as for ``G``)."""
    rows, n = x.shape
    bits = n.bit_length() - 1
    groups = -(-bits // 6)
    if groups == 0:
        return x.clone()
    sizes = [1 << (bits // groups + (i < bits % groups)) for i in range(groups)]
    y = x.reshape(-1, sizes[-1]) @ _hadamard_matrix(sizes[-1], x.dtype, x.device)
    after = sizes[-1]
    for size in reversed(sizes[:-1]):  # H (size x size) on the axis before ``after`` entries
        y = _hadamard_matrix(size, x.dtype, x.device) @ y.reshape(-1, size, after)
        after *= size
    return y.reshape(rows, n)


def _srht(a: torch.Tensor, signs: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    padded = a.new_zeros(a.shape[0], signs.shape[0])
    padded[:, :a.shape[1]] = a
    return _hadamard(padded.mul_(signs)).index_select(1, idx)


def _elementwise(fn: Callable, u: torch.Tensor) -> torch.Tensor:
    if u.device.type != "cpu":
        return fn(u)
    with exact.enabled():  # every element through the vectorized loop, wherever it falls
        return exact.elementwise(fn, u)


class _Map:
    """The random draws and the dimensions of every step, drawn in the order of the layers
    from sizes that depend on the input shape, the architecture and ``m`` only."""

    def __init__(self, steps: list, shape: tuple, m: int, gen: torch.Generator, dtype: torch.dtype,
                 device: torch.device) -> None:
        p = math.prod(shape[1:])
        dz, dpsi = shape[0], 0
        self.steps, self.m, self.draws, self.tables, self.reduce = steps, m, [], [], []
        peak = p * dz
        for step in steps:
            draw, table, reduce = None, None, (False, False)
            patch = getattr(step, "patch", None) or getattr(getattr(step, "conv", None), "patch", None)
            if patch is not None:
                table = patch.to(device)
            widths = [dz, dpsi]
            p_in = p
            if isinstance(step, _Dense):
                dz, dpsi = dz + step.bias, dz + step.bias + dpsi
            elif isinstance(step, _Conv):
                q, b = step.q, step.bias
                nz, npsi = q * dz + b, q * (dz + dpsi) + b
                reduce = (q > 1 and nz > m, q > 1 and npsi > m)
                draw = (_Sketch(q, dz, m, b, gen, dtype, device) if reduce[0] else None,
                        _Sketch(q, dz + dpsi, m, b, gen, dtype, device) if reduce[1] else None)
                widths += [s.width for s in draw if s is not None]
                dz, dpsi = (m if reduce[0] else nz), (m if reduce[1] else npsi)
                p = patch.p_out
            elif isinstance(step, _Flatten):
                nz, npsi = step.p * dz, step.p * dpsi
                reduce = (nz > m, npsi > m)
                draw = (_Sketch(step.p, dz, m, False, gen, dtype, device) if reduce[0] else None,
                        _Sketch(step.p, dpsi, m, False, gen, dtype, device) if reduce[1] else None)
                widths += [s.width for s in draw if s is not None]
                dz, dpsi, p = (m if reduce[0] else nz), (m if reduce[1] else npsi), 1
            elif isinstance(step, _Pool):
                p = patch.p_out
            elif isinstance(step, _GlobalPool):
                p = 1
            elif step.conv is None:  # _Phi
                draw = _Draws(dz, dpsi, m, gen, dtype, device)
                widths += [draw.p1, draw.p2]
                dz, dpsi = m, m
            else:  # _Phi after a Conv
                conv = step.conv
                draw = (_Draws(conv.q * dz + conv.bias, None, m, gen, dtype, device),
                        _Sketch(conv.q, dz + dpsi, m, conv.bias, gen, dtype, device))
                widths += [draw[0].p1, draw[1].width]
                dz, dpsi, p = m, m, patch.p_out
            self.draws.append(draw)
            self.tables.append(table)
            self.reduce.append(reduce)
            peak = max(peak, max(p_in, p) * max(widths + [dz, dpsi]))
        self.dz, self.dpsi = dz, dpsi
        self.rows = max(1, min(_ROWS, _ELEMS // peak))


def _dense(z: torch.Tensor, psi: Optional[torch.Tensor], layer: Any, n_in: int, bias: bool) -> tuple:
    """The ``Dense`` rule at every position (a Conv's on its patch), ``n_in`` the fan-in."""
    rows, p = z.shape[:2]
    parts = [z * layer.W_std]
    if bias:
        parts.append(z.new_ones(rows, p, 1) * layer.b_std)
    z_new = torch.cat(parts, dim=2)
    if psi is not None:
        if layer.parameterization == "ntk":
            psi = torch.cat([z_new, psi * layer.W_std], dim=2)
        else:
            tail = [z.new_ones(rows, p, 1)] if bias else []
            psi = torch.cat([z * math.sqrt(n_in), psi * layer.W_std, *tail], dim=2)
    return z_new, psi


def _v(z: torch.Tensor, psi: torch.Tensor, conv: _Conv) -> tuple:
    """``V`` and ``c`` of a Conv's NTK features (``Psi' = [V patch, c]``)."""
    layer = conv.layer
    w = float(layer.W_std)
    if layer.parameterization == "ntk":
        return torch.cat([z * w, psi * w], dim=2), (float(layer.b_std) if conv.bias else None)
    return torch.cat([z * math.sqrt(conv.n_in), psi * w], dim=2), (1.0 if conv.bias else None)


def _chunk(x: torch.Tensor, plan: _Map, want_ntk: bool) -> tuple:
    """``(Z, Psi)`` ``(rows, D)`` of one chunk of inputs (``Psi`` None unless ``want_ntk``)."""
    rows, c = x.shape[:2]
    m = plan.m
    z = x.reshape(rows, c, -1).transpose(1, 2).contiguous() / math.sqrt(c)  # (rows, P, C)
    psi = x.new_zeros(rows, z.shape[1], 0) if want_ntk else None
    scale = 1.0 / math.sqrt(m)
    for step, draw, table, reduce in zip(plan.steps, plan.draws, plan.tables, plan.reduce):
        if isinstance(step, _Dense):
            z, psi = _dense(z, psi, step.layer, step.n_in, step.bias)
        elif isinstance(step, _Conv):
            layer = step.layer
            w = float(layer.W_std)
            b = float(layer.b_std) if step.bias else None
            if want_ntk:
                if reduce[1]:
                    v, cst = _v(z, psi, step)
                    psi_new = draw[1](v, table, cst).mul_(scale)
                else:
                    psi_new = _concat(psi, table)
            if reduce[0]:
                z = draw[0](z * w, table, b).mul_(scale)
            elif want_ntk and not reduce[1]:
                z, psi_new = _dense(_concat(z, table), psi_new, layer, step.n_in, step.bias)
            else:
                z = _dense(_concat(z, table), None, layer, step.n_in, step.bias)[0]
            psi = psi_new if want_ntk else None
        elif isinstance(step, _Pool):
            padded = _pad_position(z)
            z = sum(padded.index_select(1, row) for row in table) * step.scale
            if want_ntk:
                padded = _pad_position(psi)
                psi = sum(padded.index_select(1, row) for row in table) * step.scale
        elif isinstance(step, _GlobalPool):
            pool = (lambda t: t.mean(1, keepdim=True)) if step.mean else (lambda t: t.sum(1, keepdim=True))
            z = pool(z)
            psi = pool(psi) if want_ntk else None
        elif isinstance(step, _Flatten):
            z = draw[0](z, None, None).mul_(scale) if reduce[0] else _concat(z, table)
            if want_ntk:
                psi = draw[1](psi, None, None).mul_(scale) if reduce[1] else _concat(psi, table)
        else:  # _Phi
            if step.conv is None:
                g = draw
                u = z.reshape(-1, z.shape[2]) @ g.g
            else:
                g, sketch = draw
                conv = step.conv
                dz = z.shape[2]
                padded = _pad_position(z)
                u = None
                for o, row in enumerate(table):
                    uo = padded.index_select(1, row).reshape(-1, dz) @ g.g[o * dz:(o + 1) * dz]
                    u = uo if u is None else u.add_(uo)
                u.mul_(float(conv.layer.W_std) / math.sqrt(conv.q))
                if conv.bias:
                    u.add_(g.g[conv.q * dz] * float(conv.layer.b_std))
            p = u.shape[0] // rows
            z_new = _elementwise(step.fn, u).mul_(scale)
            if want_ntk:
                dv = _elementwise(step.derivative, u).mul_(scale)
                if step.conv is not None:
                    v, cst = _v(z, psi, step.conv)
                    second = sketch(v, table, cst).reshape(-1, m)
                elif psi.shape[2] == 0:
                    second = None
                else:
                    second = _srht(psi.reshape(-1, psi.shape[2]), g.s2, g.i2)
                if second is None:
                    psi = x.new_zeros(rows, p, m)
                else:
                    psi = _srht(dv, g.s1, g.i1).mul_(second).mul_(scale).reshape(rows, p, m)
            z = z_new.reshape(rows, p, m)
    return z[:, 0], (psi[:, 0] if want_ntk else None)


def features(net: Layer, x: Any, n_features: int, get: Any = "ntk", seed: int = 0, *,
             method: str = "random", landmarks: Any = None, dtype: Optional[torch.dtype] = None) -> Any:
    """Random features ``Phi`` of shape ``(N, D)`` whose inner products approximate the
    infinite-width kernel: ``Phi(x1) @ Phi(x2).T ~ net.kernel(x1, x2).ntk`` (``get="ntk"``)
    or ``.nngp`` (``get="nngp"``).

    Supported networks are ``Serial``s (nested ones, ``Repeat`` and ``Identity`` included) of
    ``Dense`` layers, both parameterizations, and elementwise nonlinearities (any
    ``widenet.layers.Nonlinearity``: ``Relu``, ``Erf``, ``Tanh``, ``Gelu``, ...; a run of
    them acts as their composition), on inputs ``(N, d)``; and convolutional networks on
    inputs ``(N, C, *S)`` with 1 to 3 spatial axes: ``Conv`` (any kernel size, stride,
    dilation, padding "same", "valid" or "circular", both parameterizations), ``AvgPool``,
    ``SumPool``, nonlinearities, ``Dense`` (on the channels at each position, as in
    ``net.kernel``), then ``GlobalAvgPool``, ``GlobalSumPool`` or ``Flatten`` to remove the
    positions, then ``Dense`` layers and nonlinearities as above. Like the kernel, the
    features are per output: the last layer's width does not enter them.

    The construction (the module docstring gives it in full) is the random-feature recursion
    of the NNGP (Rahimi & Recht 2007; Cho & Saul 2009; Daniely et al. 2016) with the NTK
    random features and the CNTK sketch of Zandieh et al. 2021 (arXiv 2106.07880): at each
    nonlinearity, ``Z' = phi(Z G) / sqrt(m)`` with a Gaussian ``G`` and ``Psi'`` a TensorSRHT
    sketch of ``phi'(Z G) / sqrt(m)`` tensor ``Psi``, where ``m = n_features``; ``Dense``
    layers concatenate and scale. On inputs with positions the features are kept at each
    position, with one ``G`` and one sketch for all of them; a ``Conv`` is a ``Dense`` on the
    concatenation of its patch's features over the ``q = prod(kernel_size)`` filter offsets
    divided by ``sqrt(q)``, pooling averages (sums) features over windows, and ``Flatten``
    concatenates them over the ``P`` positions divided by ``sqrt(P)``. A concatenation that
    would exceed ``m`` columns, and that no nonlinearity reads next, is replaced by an
    ``m``-column subsampled randomized Hadamard sketch (unbiased). Given the previous layer's
    features each layer's estimate is unbiased; across layers the bias is of order
    ``1 / n_features``, below the random error, whose standard deviation in each kernel entry
    shrinks as ``1 / sqrt(n_features)`` (Zandieh et al. 2021 bound it for ReLU networks).
    Cost: ``O(N P m (dim Z + m log m))`` per nonlinearity on ``P`` positions (``dim Z`` is
    ``q m`` after a ``Conv`` of ``m`` features), ``O(N D)`` memory for the result and
    ``O(m dim Z)`` for the random matrices (drawn anew in each call).

    ``D``, exactly: ``Z`` (the NNGP features) starts with ``d`` (or ``C``) columns, a ``Dense``
    adds one when it has a bias (``b_std`` not None; the default ``b_std=0.0`` counts), and a
    nonlinearity (or a run of them) makes it ``m``; ``Psi`` (the NTK features) starts with 0,
    a ``Dense`` makes it ``dim Z + dim Psi`` plus one when it has a bias (``Z`` taken before
    the layer), and a nonlinearity makes it ``m``. So a network ending
    ``..., nonlinearity, Dense`` has ``D = m + 1`` for the NNGP and ``D = 2 m + 1`` for the
    NTK when that ``Dense`` has a bias, ``m`` and ``2 m`` with ``b_std=None``; a network
    ending with a nonlinearity has ``D = m`` for both. With positions (the counts are per
    position): a ``Conv`` with ``q`` offsets and a bias ``b`` (1 or 0) makes ``Z``
    ``q dim Z + b`` and ``Psi`` ``q (dim Z + dim Psi) + b``, each of them ``m`` instead where it
    would exceed ``m`` and ``q > 1`` (a ``Conv`` followed by a nonlinearity: ``m`` and ``m``);
    pooling and global pooling keep both; ``Flatten`` over ``P > 1`` positions makes them
    ``P dim Z`` and ``P dim Psi``, each ``m`` where it would exceed ``m``. So
    ``Conv, nonlinearity, ..., GlobalAvgPool (or Flatten), Dense`` has ``D = m + 1`` and
    ``2 m + 1`` as above, whatever the spatial shape.

    ``method="nystrom"`` (any architecture with a kernel, ``landmarks`` required): the
    Nystrom features of Williams & Seeger 2001. ``m = n_features`` landmarks ``C`` are drawn
    without replacement from ``landmarks`` by ``seed``, and with the eigendecomposition
    ``K(C, C) = U diag(s) U^T`` (eigenvalues below ``m * eps * max(s)`` dropped),
    ``Phi(x) = K(x, C) U diag(s)^(-1/2)``, so ``Phi(x) . Phi(x') = K(x, C) K(C, C)^+ K(C, x')``:
    exact for pairs with a landmark, the best approximation in the span of the landmarks'
    kernel functions otherwise; no random error, but an error that depends on how well the
    landmarks cover the data (draw them from the training inputs). ``D = m`` (fewer where
    ``K(C, C)`` is numerically singular, e.g. repeated landmarks). Cost: the exact kernel
    between ``x`` and the ``m`` landmarks plus ``O(N m^2)``. Ridge regression on these
    features is the Nystrom model that ``widenet.blocked.falkon`` solves iteratively with
    the same centers; the features themselves serve any linear method.

    Args:
        net: the architecture.
        x: inputs ``(N, d)`` or ``(N, C, *S)`` (a tensor or numpy array of floats; float16 and
            bfloat16 are computed in float32).
        n_features: ``m``, the number of random features of every nonlinearity (>= 1).
        get: "ntk", "nngp", or a tuple of both for a named tuple of the two feature maps
            (computed together).
        seed: the feature map: every random matrix is drawn from
            ``torch.Generator().manual_seed(seed)`` with sizes that depend on the input shape
            (``d`` or ``(C, *S)``), the architecture and ``n_features`` only, so separate calls
            with the same seed give consistent features (on CPU, the features of a
            concatenated batch equal the concatenation of the features of its parts, bit for
            bit).
        method: "random" (the random-feature sketches above) or "nystrom".
        landmarks: for ``method="nystrom"``, inputs shaped like ``x`` (at least
            ``n_features`` of them) from which the landmarks are drawn: the map depends on
            them, ``n_features`` and ``seed`` only, so every batch of ``x`` gets the same
            map (rows agree to rounding).
        dtype: float32 or float64 (default: ``x``'s). The random matrices are the same for
            both, so the two agree to rounding. Nystrom features are computed from a float64
            eigendecomposition and returned in this dtype.

    Returns:
        ``Phi`` ``(N, D)`` on ``x``'s device (not recorded by autograd), or a named tuple
        ``(nngp, ntk)`` of them for a tuple ``get``.

    Raises:
        ParameterError: ``n_features`` not an integer >= 1, ``get`` not "nngp" or "ntk",
            ``seed`` not an integer >= 0, ``method`` not "random" or "nystrom", ``landmarks``
            missing for "nystrom" (or given for "random"), fewer landmarks than
            ``n_features``, ``dtype`` not float32 or float64, a network with a layer other
            than those above for "random" (the message names it: ``MaxPool``,
            ``LayerNorm``, attention, ...; use ``method="nystrom"``, ``net.kernel`` or
            ``widenet.blocked.compute`` instead), or ``x`` not floating point.
        LayerOrderError: a nonlinearity that does not follow a ``Dense`` or ``Conv`` layer
            (pooling between them allowed).
        ShapeError: ``landmarks`` not shaped like ``x`` (both shapes named); ``x`` with no
            features; ``x`` not ``(N, C, *S)`` for a network with
            ``Conv`` or pooling layers; ``x`` not ``(N, d)`` for a network with no ``Flatten``
            or global pooling (its output would keep positions); a ``Conv`` or pooling layer
            after ``Flatten`` or global pooling; a "valid" window larger than its input.
        NonFiniteInputError: ``x`` holds NaN or Inf (each of these before any work).

    Example:

        >>> net = wn.Serial(wn.Dense(512), wn.Relu(), wn.Dense(1))
        >>> phi = wn.features(net, torch.randn(20, 10), 4096)
        >>> phi.shape
        torch.Size([20, 8193])
        >>> wn.features(net, torch.randn(20, 10), 4096, get="nngp").shape
        torch.Size([20, 4097])
        >>> cnn = wn.Serial(wn.Conv(64, 3), wn.Relu(), wn.Conv(64, 3, stride=2), wn.Relu(),
        ...                 wn.GlobalAvgPool(), wn.Dense(1))
        >>> wn.features(cnn, torch.randn(20, 1, 8, 8), 1024).shape
        torch.Size([20, 2049])
        >>> normed = wn.Serial(wn.Dense(64), wn.LayerNorm(), wn.Relu(), wn.Dense(1))  # any layers
        >>> x_train = torch.randn(500, 10, dtype=torch.float64)
        >>> wn.features(normed, x_train[:20], 200, method="nystrom", landmarks=x_train).shape
        torch.Size([20, 200])
    """
    m = check_int(_OWNER, "n_features", n_features, minimum=1)
    names, many = check_gets(_OWNER, get, ("nngp", "ntk"))
    seed = check_int(_OWNER, "seed", seed, minimum=0)
    method = check_choice(_OWNER, "method", method, ("random", "nystrom"))
    if dtype is not None and dtype not in (torch.float32, torch.float64):
        raise ParameterError(f"{_OWNER}: dtype must be torch.float32, torch.float64 or None (got {dtype!r})")
    if method == "nystrom":
        return _nystrom(net, x, m, names, many, seed, landmarks, dtype)
    if landmarks is not None:
        raise ParameterError(f"{_OWNER}: landmarks are read by method='nystrom' only (got method={method!r})")
    layers = _flatten(net)  # the architecture, before looking at the inputs
    x = as_inputs(_OWNER, "x", x)
    if x.ndim < 2 or x.shape[1] == 0:
        raise ShapeError(
            f"{_OWNER}: x must be a 2-D tensor (N, d) of inputs with d >= 1 features, or "
            f"(N, C, *S) for a convolutional network (got shape {tuple(x.shape)})"
        )
    _checked_shape(layers, tuple(x.shape))
    if dtype is not None:
        x = x.to(dtype)
    if x.dtype not in (torch.float32, torch.float64):
        raise ParameterError(f"{_OWNER}: x must be float32 or float64 (got dtype {x.dtype})")
    n, shape = x.shape[0], tuple(x.shape[1:])
    steps = _plan(net, shape)
    want_ntk = "ntk" in names
    gen = torch.Generator().manual_seed(seed)
    plan = _Map(steps, shape, m, gen, x.dtype, x.device)  # the random matrices, in the order of the layers
    rows_per = _ROWS if x.ndim == 2 else plan.rows
    out_z = x.new_empty(n, plan.dz) if "nngp" in names else None
    out_psi = x.new_empty(n, plan.dpsi) if want_ntk else None
    with torch.no_grad():
        for start in range(0, n, rows_per):
            rows = min(rows_per, n - start)
            chunk = x[start:start + rows]
            if rows < rows_per:
                chunk = torch.cat([chunk, chunk.new_zeros((rows_per - rows,) + shape)])
            z, psi = _chunk(chunk, plan, want_ntk)
            if out_z is not None:
                out_z[start:start + rows] = z[:rows]
            if out_psi is not None:
                out_psi[start:start + rows] = psi[:rows]
    return by_get(names, many, lambda name: out_z if name == "nngp" else out_psi)


def _nystrom(net: Layer, x: Any, m: int, names: tuple, many: bool, seed: int, landmarks: Any,
             dtype: Optional[torch.dtype]) -> Any:
    """``method="nystrom"``: ``Phi(x) = K(x, C) U diag(s)^(-1/2)`` (see ``features``)."""
    _check_layer(net)
    if landmarks is None:
        raise ParameterError(f"{_OWNER}: method='nystrom' needs landmarks, inputs shaped like x from which "
                             f"the {m} landmarks are drawn (e.g. the training inputs)")
    x = as_inputs(_OWNER, "x", x)
    landmarks = as_inputs(_OWNER, "landmarks", landmarks)
    if x.ndim < 2 or landmarks.shape[1:] != x.shape[1:]:
        raise ShapeError(f"{_OWNER}: landmarks must be shaped like x, (L, *x.shape[1:]) (got landmarks "
                         f"{tuple(landmarks.shape)} and x {tuple(x.shape)})")
    if landmarks.shape[0] < m:
        raise ParameterError(f"{_OWNER}: n_features must be <= the number of landmarks for method='nystrom' "
                             f"(got n_features={m} with {landmarks.shape[0]} landmarks)")
    dtype = dtype or x.dtype
    if dtype not in (torch.float32, torch.float64):
        raise ParameterError(f"{_OWNER}: x must be float32 or float64 (got dtype {dtype})")
    gen = torch.Generator().manual_seed(seed)
    chosen = torch.randperm(landmarks.shape[0], generator=gen)[:m].sort().values
    centers = landmarks[chosen.to(landmarks.device)].to(device=x.device, dtype=torch.float64)
    x = x.to(dtype)

    def kernels(a: torch.Tensor, b: Optional[torch.Tensor]) -> dict:
        if names == ("nngp",):
            return {"nngp": net.nngp(a, b)}
        k = net.kernel(a, b)
        return {name: getattr(k, name) for name in names}

    maps = {}
    for name, kc in kernels(centers, None).items():
        s, u = torch.linalg.eigh(kc.double())
        keep = s > m * torch.finfo(torch.float64).eps * s.max().clamp_min(0)
        maps[name] = u[:, keep] / s[keep].sqrt()
    cross = kernels(x, centers.to(dtype))
    return by_get(names, many, lambda name: (cross[name].double() @ maps[name]).to(dtype))
