"""``Aggregate``: message passing over a graph, the layer of graph neural networks.

Each input is a graph whose nodes are the positions of ``(N, C, V)`` (or ``(N, C, *S)``: a
grid of nodes, ``K = len(S)`` aggregate axes) and whose arcs come with it as a *pattern*.
Every node receives the weighted sum of its predecessors:

    out[n, :, j] = sum_i A[n, i, j] x[n, :, i]            (A[n, i, j]: the arc i -> j)

The map has no parameters and is linear in the input, so the NNGP and the NTK of the next
layer transform alike, on both sides of every pair (Du et al. 2019, "Graph Neural Tangent
Kernel", eq. 4; Neural Tangents' ``stax.Aggregate``):

    K'[n1, n2] = A[n1]^T K[n1, n2] A[n2]                  (V x V blocks of position pairs)

Patterns come dense or sparse (``widenet.Aggregate`` documents both), and so does the
arithmetic: a dense pattern multiplies (``O(V^3)`` per pair of inputs), a sparse one
never builds its ``V x V`` matrix: each tile's graphs form one block-diagonal sparse matrix
that multiplies the tile from each side (``O(E V)`` per pair, ``E`` edges).
"""

from __future__ import annotations

import contextlib
import math
import warnings
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from .._engine import Flow, is_dual, pair_sandwich, sandwich, exact
from .._validate import as_tensor
from ..errors import NonFiniteInputError, ParameterError, ShapeError
from .base import Build, Layer, Spec

__all__ = ["Aggregate", "AggregateModule", "graph_patterns", "prepare_pattern"]

_PATTERN: ContextVar[Any] = ContextVar("widenet_pattern", default=None)


@dataclass(frozen=True)
class Aggregate(Layer):
    """Graph aggregation: every node becomes the weighted sum of its predecessors (GNNs).

    Inputs are ``(N, C, V)``: ``V`` nodes with ``C`` features each (or ``(N, C, *S)``, nodes
    on a grid of 1 to 3 axes, as ``stax.Aggregate`` over all non-batch, non-channel axes).
    Each input's graph is its *pattern*, passed to the kernel as ``net.kernel(x1, x2,
    pattern1=A1, pattern2=A2)`` and to the twin as ``model(x, pattern=A)``; every
    ``Aggregate`` of a network reads the same graph. Two formats, Neural Tangents' own:

    * **dense**: a float (or bool) tensor ``(N, V, V)`` (``(N, *S, *S)``) of arc weights:
      ``A[n, i, j] = w`` is an arc from node ``i`` to node ``j`` of weight ``w``, and node
      ``j`` receives ``sum_i A[n, i, j] x_i``. Costs ``O(V^3)`` per pair of inputs.
    * **sparse**: an integer tensor ``(N, E, 2)`` of ``(tail, head)`` arcs (``(N, E, K, 2)``
      for ``K`` aggregate axes: each end a node's coordinates), every arc of weight 1;
      repeated arcs add up; an arc with a negative index (``-1``) is padding, so inputs with
      fewer arcs are padded to a common ``E``. Weighted arcs: the pair ``(edges, weights)``
      with ``weights`` of shape ``(N, E)``. The ``V x V`` matrix is never built: each step
      costs ``O(E V)`` per pair of inputs (``O(V^2)`` memory, the kernel's own).

    A self-loop ``(i, i)`` keeps a node's own features (GNTK's ``N(u) + {u}``); weights
    ``1 / (deg + 1)`` give its averaging variant. Kernel: ``K'[n1, n2] = A[n1]^T K[n1, n2]
    A[n2]`` for the NNGP and the NTK (Du et al. 2019, eq. 4). Padding masks
    (``mask1``/``mask2``) pass through: padded nodes send and receive nothing.

    Example:

        >>> net = wn.Serial(wn.Dense(64), wn.Relu(), wn.Aggregate(), wn.Dense(64), wn.Relu(),
        ...                 wn.GlobalAvgPool(), wn.Dense(1))
        >>> x = torch.randn(3, 4, 10, dtype=torch.float64)          # 3 graphs, 10 nodes
        >>> edges = torch.randint(0, 10, (3, 25, 2))                 # 25 arcs each
        >>> net.kernel(x, pattern1=edges).ntk.shape
        torch.Size([3, 3])
    """

    _reads_pattern = True

    def _needs_full(self) -> bool:
        return True

    @staticmethod
    def _prepare_pattern(owner: str, name: str, pattern: Any, x: torch.Tensor) -> dict:
        return prepare_pattern(owner, name, pattern, x)

    def _rule(self, flow: Flow) -> Flow:
        w = self._single(flow)
        if not w.spatial:
            raise ShapeError("Aggregate: needs inputs with nodes, (N, C, V) or (N, C, *S); this layer "
                             "receives features without positions")
        if not w.side1:
            raise ParameterError(
                "Aggregate: no graph given: pass each input's pattern, net.kernel(x1, x2, pattern1=A1, "
                "pattern2=A2) (Layer.apply cannot carry one)")
        g1, g2 = _Graphs(w.side1, w.spatial), _Graphs(w.side2, w.spatial)
        n = w.npos
        if w.self_mode:  # each input against itself: laid out as own covariances
            w.map_tiles(lambda t: _aggregate_own(t, g1))
        else:
            w.map_tiles(lambda t: _aggregate(t.reshape(t.shape[0], t.shape[1], n, n), g1, g2).reshape(t.shape))
        w.set_covs(lambda c: _aggregate_own(c, g1), lambda c: _aggregate_own(c, g2))
        return w

    def _twin(self, spec: Spec, build: Build) -> tuple[nn.Module, Spec]:
        return AggregateModule(), self._single_spec(spec)


class AggregateModule(nn.Module):
    """``Aggregate``'s finite twin: ``forward(x, pattern=None)`` with ``x`` ``(N, C, *S)``
    and the graphs of its inputs (the formats of ``widenet.Aggregate``); without
    ``pattern`` it reads the one its enclosing network was called with
    (``SerialModule.forward(x, pattern=)``)."""

    def forward(self, x: torch.Tensor, pattern: Any = None) -> torch.Tensor:
        pattern = _PATTERN.get() if pattern is None else pattern
        if not isinstance(x, torch.Tensor):
            raise ShapeError(f"AggregateModule: expected one tensor (got {type(x).__name__})")
        graphs = _Graphs(prepare_pattern("AggregateModule", "pattern", pattern, x), tuple(x.shape[2:]))
        n, c, v = x.shape[0], x.shape[1], math.prod(x.shape[2:])
        flat = x.reshape(n, c, v)
        if graphs.dense is not None:
            out = torch.bmm(flat, graphs.dense.to(x.dtype))  # (n, c, j) = sum_i x[n, c, i] A[n, i, j]
        else:
            by_node = flat.transpose(1, 2).reshape(n * v, c)
            out = graphs.edges(v).apply(by_node).reshape(n, v, c).transpose(1, 2)
        return out.reshape(x.shape)


@contextlib.contextmanager
def graph_patterns(pattern: Any):
    """Within the block, ``AggregateModule``s without a ``pattern`` argument read ``pattern``
    (``SerialModule.forward(x, pattern=)`` enters it). ``None`` keeps the enclosing one."""
    if pattern is None:
        yield
        return
    token = _PATTERN.set(pattern)
    try:
        yield
    finally:
        _PATTERN.reset(token)


# ---- patterns ---------------------------------------------------------------------------------

def prepare_pattern(owner: str, name: str, pattern: Any, x: torch.Tensor) -> dict:
    """The validated graphs of inputs ``x`` ``(N, C, *S)``: ``{"adjacency": (N, V, V)}``
    (dense, ``x``'s dtype) or ``{"edges": (N, E, 2) node indices (-1 on padding arcs),
    "weights": (N, E)}`` (sparse), with ``"nodes"``: ``(N, K)``, the node grid ``S`` they
    index. Raises a clear error for anything else, before any work."""
    if x.ndim < 3:
        raise ShapeError(f"{owner}: an Aggregate layer needs inputs with nodes, (N, C, V) or (N, C, *S) "
                         f"(got {name}'s inputs of shape {tuple(x.shape)})")
    if pattern is None:
        raise ParameterError(
            f"{owner}: {name} is missing: the network has an Aggregate layer, which needs each input's "
            f"graph (a dense (N, V, V) tensor of arc weights, or sparse (N, E, 2) integer (tail, head) arcs)")
    spatial = tuple(int(s) for s in x.shape[2:])
    nodes = torch.tensor(spatial, dtype=torch.long, device=x.device).expand(x.shape[0], len(spatial))
    weights = None
    if isinstance(pattern, tuple):
        if len(pattern) != 2:
            raise ParameterError(f"{owner}: {name} as a tuple must be the pair (edges, weights) "
                                 f"(got {len(pattern)} items)")
        pattern, weights = pattern
    p = _as_tensor(owner, name, pattern)
    if p.is_floating_point() or p.dtype == torch.bool:
        if weights is not None:
            raise ParameterError(f"{owner}: {name}: weights go with integer (tail, head) arcs; a dense "
                                 f"pattern holds its weights itself (got dtype {p.dtype})")
        return {"adjacency": _dense(owner, name, p, x, spatial), "nodes": nodes}
    if p.is_complex():
        raise ParameterError(f"{owner}: {name} must be real (got dtype {p.dtype})")
    edges = _sparse(owner, name, p, x, spatial)
    if weights is None:
        w = torch.ones(edges.shape[:2], dtype=x.dtype, device=x.device)
    else:
        w = as_tensor(owner, f"{name} weights", weights).to(dtype=x.dtype, device=x.device)
        if tuple(w.shape) != tuple(edges.shape[:2]):
            raise ShapeError(f"{owner}: {name} weights must have shape {tuple(edges.shape[:2])}, one per "
                             f"arc (got {tuple(w.shape)})")
    return {"edges": edges, "weights": w, "nodes": nodes}


def _as_tensor(owner: str, name: str, value: Any) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(value))
    raise ParameterError(f"{owner}: {name} must be a torch.Tensor or numpy array, or a tuple (edges, "
                         f"weights) of them (got {type(value).__name__})")


def _dense(owner: str, name: str, p: torch.Tensor, x: torch.Tensor, spatial: tuple) -> torch.Tensor:
    want = (x.shape[0],) + spatial + spatial
    if tuple(p.shape) != want:
        raise ShapeError(f"{owner}: {name} as a dense pattern must have shape {want} (inputs, then the "
                         f"node axes twice) for inputs of shape {tuple(x.shape)} (got {tuple(p.shape)})")
    p = p.to(dtype=x.dtype, device=x.device)
    if not bool(torch.isfinite(p).all()):
        bad = int((~torch.isfinite(p)).sum())
        raise NonFiniteInputError(f"{owner}: {name} must be finite, but {bad} of its {p.numel()} "
                                  f"arc weights are NaN or Inf")
    v = math.prod(spatial)
    return p.reshape(x.shape[0], v, v)


def _sparse(owner: str, name: str, p: torch.Tensor, x: torch.Tensor, spatial: tuple) -> torch.Tensor:
    k = len(spatial)
    if p.ndim == 3 and k == 1:
        p = p.unsqueeze(2)
    if p.ndim != 4 or p.shape[0] != x.shape[0] or p.shape[2] != k or p.shape[3] != 2:
        n = x.shape[0]
        want = f"({n}, E, 2) or ({n}, E, 1, 2)" if k == 1 else f"({n}, E, {k}, 2)"
        raise ShapeError(f"{owner}: {name} as sparse arcs must have shape {want}, (tail, head) per arc, "
                         f"for inputs of shape {tuple(x.shape)} (got {tuple(p.shape)} of dtype {p.dtype}; "
                         f"an integer tensor is read as arcs: give a dense adjacency as float or bool)")
    p = p.to(device=x.device, dtype=torch.long)
    padding = (p < 0).any(dim=3).any(dim=2)  # (N, E): an arc with a negative index
    size = torch.tensor(spatial, device=x.device).view(1, 1, k, 1)
    beyond = (p >= size).any(dim=3).any(dim=2) & ~padding
    if bool(beyond.any()):
        n, e = (int(i) for i in torch.nonzero(beyond)[0])
        arc = p[n, e].T.tolist()
        show = lambda c: c[0] if k == 1 else tuple(c)  # noqa: E731
        raise ParameterError(
            f"{owner}: {name}[{n}, {e}] is the arc {show(arc[0])} -> {show(arc[1])}, outside the "
            f"{'x'.join(map(str, spatial))} nodes of inputs of shape {tuple(x.shape)} (indices run from 0; "
            f"negative ones mark padding arcs)")
    flat = torch.zeros(p.shape[:2] + (2,), dtype=torch.long, device=x.device)
    for axis, s in enumerate(spatial):
        flat = flat * s + p[:, :, axis, :]
    return flat.masked_fill_(padding.unsqueeze(-1), -1)


class _Graphs:
    """The graphs of one side of a tile (its ``side1`` or ``side2``)."""

    def __init__(self, side: dict, spatial: tuple) -> None:
        given = tuple(int(s) for s in side["nodes"][0].tolist()) if side["nodes"].shape[0] else spatial
        if given != tuple(spatial):
            raise ShapeError(
                f"Aggregate: the patterns describe graphs on nodes of shape {given} (the inputs' positions) "
                f"but this layer receives positions of shape {tuple(spatial)}; the layers before an "
                f"Aggregate must keep the positions")
        self.dense = side.get("adjacency")
        self._edges, self._weights = side.get("edges"), side.get("weights")

    def edges(self, v: int) -> "_BlockEdges":
        return _BlockEdges(self._edges, self._weights, v)


class _BlockEdges:
    """The arcs of ``B`` graphs of ``v`` nodes as one block-diagonal operator on
    ``(B * v, m)`` tensors: row ``(b, j)`` of the result sums the rows ``(b, i)`` of every
    arc ``i -> j`` of graph ``b``, times its weight."""

    def __init__(self, edges: torch.Tensor, weights: torch.Tensor, v: int) -> None:
        count = edges.shape[0]
        offset = (torch.arange(count, device=edges.device) * v).view(count, 1)
        keep = edges[..., 0] >= 0
        self.heads = (edges[..., 1] + offset)[keep]
        self.tails = (edges[..., 0] + offset)[keep]
        self.weights = weights[keep]
        self.size = count * v
        self._csr = None

    def apply(self, t: torch.Tensor) -> torch.Tensor:
        """The aggregated ``(B * v, m)`` tensor (``t`` the same shape)."""
        if exact.active() or is_dual(t):
            return self._index_add(t)
        return self._matrix(t.dtype) @ t

    def _matrix(self, dtype: torch.dtype) -> torch.Tensor:
        """CSR matrix (head rows, tail columns), duplicate arcs summed."""
        if self._csr is None:
            n = self.size
            key = self.heads * n + self.tails
            unique, inverse = torch.unique(key, sorted=True, return_inverse=True)
            values = torch.zeros(unique.shape[0], dtype=dtype, device=key.device)
            values.index_add_(0, inverse, self.weights.to(dtype))
            rows = unique // n
            crow = torch.zeros(n + 1, dtype=torch.long, device=key.device)
            crow[1:] = torch.cumsum(torch.bincount(rows, minlength=n), 0)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # CSR support is "beta" in torch
                self._csr = torch.sparse_csr_tensor(crow, unique % n, values, (n, n),
                                                    check_invariants=False)
        return self._csr

    def _index_add(self, t: torch.Tensor) -> torch.Tensor:
        """The same sum arc by arc in the arcs' order (deterministic: a node's sum never
        depends on the other graphs of the tile), in chunks of at most ``t``'s size; carries
        forward-mode tangents, which sparse matrices do not."""
        out = torch.zeros_like(t)
        chunk = max(1, t.shape[0])
        w = self.weights.to(t.dtype).unsqueeze(1)
        for start in range(0, self.tails.shape[0], chunk):
            s = slice(start, start + chunk)
            out.index_add_(0, self.heads[s], t[self.tails[s]] * w[s])
        return out


def _aggregate(t: torch.Tensor, g1: _Graphs, g2: _Graphs) -> torch.Tensor:
    """``A1[b]^T t[b, c] A2[c]`` for a ``(B, C, V, V)`` tile (a new tensor)."""
    if g1.dense is not None:
        return pair_sandwich(g1.dense.transpose(1, 2), t, g2.dense.transpose(1, 2))
    b, c, v, _ = t.shape
    e1, e2 = g1.edges(v), g2.edges(v)
    # Rows first: (b, i | c, i') -> (b, j | c, i'); then columns: (c, i' | b, j) -> (c, j' | b, j).
    left = e1.apply(t.transpose(1, 2).reshape(b * v, c * v))
    both = e2.apply(left.view(b, v, c, v).permute(2, 3, 0, 1).reshape(c * v, b * v))
    out = both.view(c, v, b, v).permute(2, 0, 3, 1)
    if exact.active():
        # The other association too: the mean of both is the same bits for (x, x') and (x', x).
        right = e2.apply(t.permute(1, 3, 0, 2).reshape(c * v, b * v))
        other = e1.apply(right.view(c, v, b, v).permute(2, 3, 0, 1).reshape(b * v, c * v))
        out = out.add(other.view(b, v, c, v).permute(0, 2, 1, 3)).mul_(0.5)
    return out.contiguous()


def _aggregate_own(cov: torch.Tensor, g: _Graphs) -> torch.Tensor:
    """``A[b]^T cov[b] A[b]`` for own covariances ``(B, *S, *S)`` (a new tensor)."""
    b = cov.shape[0]
    v = math.isqrt(cov[0].numel())
    flat = cov.reshape(b, v, v)
    if g.dense is not None:
        g1 = g.dense.transpose(1, 2)
        out = sandwich(g1, flat, g1)
    else:
        e = g.edges(v)
        rows = e.apply(flat.reshape(b * v, v)).view(b, v, v)  # A^T cov
        out = _columns(rows, e, b, v)  # (A^T cov) A
        if exact.active():  # and A^T (cov A): the mean is exactly symmetric
            other = e.apply(_columns(flat, e, b, v).reshape(b * v, v)).view(b, v, v)
            out = out.add(other).mul_(0.5)
    return out.reshape(cov.shape)


def _columns(t: torch.Tensor, e: _BlockEdges, b: int, v: int) -> torch.Tensor:
    """``t[b] A[b]`` for ``(B, V, V)``: the rows of ``t[b]^T`` aggregated, transposed back."""
    return e.apply(t.transpose(1, 2).reshape(b * v, v)).view(b, v, v).transpose(1, 2)
