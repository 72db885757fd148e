"""Graph aggregation (src/widenet/layers/aggregate.py): the layer contract on dense and sparse
graphs, dense == sparse on the same graph, the GNTK of Du et al. 2019 from an independent
implementation of its equations, padded graphs, Neural Tangents, and bad patterns."""

import math

import numpy as np
import pytest
import torch

import widenet as wn
from layers.contract import KernelContract, rel_error
from oracles import monte_carlo, rel_frobenius
from widenet.errors import NonFiniteInputError, ParameterError, ShapeError

D = torch.float64


def dense_graphs(x: torch.Tensor) -> torch.Tensor:
    """A weighted directed graph per input, a piecewise-constant function of it (so that
    gradient checks, which perturb x, keep the graph): arcs i -> j where x[0, i] > x[0, j],
    weight 2 where x[1, j] > 0, else 1."""
    x = x.detach()
    arc = (x[:, 0, :, None] > x[:, 0, None, :]).to(x.dtype)
    return arc * (1 + (x[:, 1, None, :] > 0).to(x.dtype))


def sparse_graphs(x: torch.Tensor) -> torch.Tensor:
    """Integer arcs per input: every node i sends to the two nodes nearest to it in x[0]
    (a repeated arc where two nodes tie in rank), one self-loop (node 0) and one padding arc."""
    x = x.detach()
    n, _, v = x.shape
    gap = (x[:, 0, :, None] - x[:, 0, None, :]).abs() + torch.eye(v, dtype=x.dtype) * 1e9
    near = gap.argsort(dim=2)[:, :, :2]  # (n, v, 2): heads
    tails = torch.arange(v).view(1, v, 1).expand(n, v, 2)
    arcs = torch.stack([tails, near], -1).reshape(n, 2 * v, 2)
    extra = torch.tensor([[0, 0], [-1, -1]]).expand(n, 2, 2)
    return torch.cat([arcs, extra], 1)


def to_dense(arcs: torch.Tensor, v: int, weights=None, dtype=D) -> torch.Tensor:
    """The dense adjacency of integer arcs, by a loop (an independent reading of the format)."""
    out = torch.zeros(arcs.shape[0], v, v, dtype=dtype)
    for n in range(arcs.shape[0]):
        for e in range(arcs.shape[1]):
            t, h = (int(i) for i in arcs[n, e])
            if t >= 0 and h >= 0:
                out[n, t, h] += 1.0 if weights is None else float(weights[n, e])
    return out


def gnn(width, parameterization="ntk"):
    return wn.Serial(wn.Dense(width, 1.3, 0.2, parameterization), wn.Erf(), wn.Aggregate(),
                     wn.Dense(width, 1.1, 0.1, parameterization), wn.Relu(), wn.Aggregate(),
                     wn.GlobalAvgPool(), wn.Dense(min(width, 256), 0.9, 0.1, parameterization))


class TestAggregateDense(KernelContract):
    input_shape = (2, 7)
    twin = "AggregateModule"
    parameterizations = ("ntk", "standard")

    def network(self, width, parameterization="ntk"):
        return gnn(width, parameterization)

    def side(self, x1, x2=None):
        return {"pattern1": dense_graphs(x1), "pattern2": None if x2 is None else dense_graphs(x2)}

    def test_twin_shows_in_the_networks_repr_and_runs(self):
        model = self.net().module(self.input_shape, seed=0, dtype=D)
        assert self.twin in repr(model)
        x = self.inputs(3)
        with torch.no_grad():
            y = model(x, pattern=self.side(x)["pattern1"])
        assert y.shape == (3, 16) and bool(torch.isfinite(y).all())


class TestAggregateSparse(TestAggregateDense):
    def side(self, x1, x2=None):
        return {"pattern1": sparse_graphs(x1), "pattern2": None if x2 is None else sparse_graphs(x2)}


def _graph_set(seed=0, n=4, v=6, e=10):
    """Random arcs with padding arcs, self-loops, repeated arcs and (often) isolated nodes."""
    g = torch.Generator().manual_seed(seed)
    arcs = torch.randint(0, v, (n, e, 2), generator=g)
    arcs[0, -3:] = -1  # padding: whole arcs,
    arcs[1, -1, 1] = -1  # or only the head
    arcs[-1, 0] = torch.tensor([3, 3])  # a self-loop
    arcs[-1, 1] = arcs[-1, 2]  # a repeated arc
    weights = torch.rand(n, e, generator=g, dtype=D) * 2 - 0.5
    return arcs, weights


@pytest.mark.parametrize("weighted", [False, True], ids=["unit", "weighted"])
def test_dense_and_sparse_patterns_give_the_same_kernels(weighted):
    g = torch.Generator().manual_seed(1)
    x1, x2 = torch.randn(4, 3, 6, generator=g, dtype=D), torch.randn(3, 3, 6, generator=g, dtype=D)
    (a1, w1), (a2, w2) = _graph_set(0), _graph_set(1, n=3, e=7)
    s1, s2 = ((a1, w1), (a2, w2)) if weighted else (a1, a2)
    d1, d2 = to_dense(a1, 6, w1 if weighted else None), to_dense(a2, 6, w2 if weighted else None)
    assert bool((d1.sum(1) == 0).any())  # isolated nodes present: some node receives nothing
    # two Aggregates in a row, one right after the input
    net = wn.Serial(wn.Aggregate(), wn.Dense(8, 1.2, 0.3), wn.Gelu(), wn.Aggregate(), wn.Aggregate(),
                    wn.Dense(8), wn.Relu(), wn.GlobalSumPool(), wn.Dense(1))
    for second, p2, q2 in ((x2, s2, d2), (None, None, None)):
        sparse = net.kernel(x1, second, pattern1=s1, pattern2=p2)
        dense = net.kernel(x1, second, pattern1=d1, pattern2=q2)
        for name in ("nngp", "ntk"):
            assert rel_error(getattr(sparse, name), getattr(dense, name)) <= 1e-13, (name, second is None)
        assert rel_error(sparse.var1, dense.var1) <= 1e-13


def test_the_kernel_is_the_adjacency_on_both_sides_of_every_pair():
    # Dense then Aggregate: K' = A1^T (x1 x2^T / C) A2, on 1-D and 2-D node grids.
    g = torch.Generator().manual_seed(2)
    for spatial in ((5,), (3, 4)):
        x1, x2 = torch.randn((3, 2) + spatial, generator=g, dtype=D), torch.randn((2, 2) + spatial, generator=g, dtype=D)
        v = math.prod(spatial)
        a1, a2 = torch.randn(3, v, v, generator=g, dtype=D), torch.randn(2, v, v, generator=g, dtype=D)
        k = wn.Serial(wn.Dense(7), wn.Aggregate()).kernel(
            x1, x2, pattern1=a1.reshape((3,) + spatial * 2), pattern2=a2.reshape((2,) + spatial * 2))
        f1, f2 = x1.reshape(3, 2, v), x2.reshape(2, 2, v)
        base = torch.einsum("acs,bct->abst", f1, f2) / 2
        want = torch.einsum("asi,abst,btj->abij", a1, base, a2).reshape(k.nngp.shape)
        assert torch.allclose(k.nngp, want, rtol=1e-13, atol=1e-14)
        assert torch.allclose(k.ntk, want, rtol=1e-13, atol=1e-14)  # its NTK: the Dense layer's gradient


def test_the_twin_sums_each_nodes_predecessors():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(4, 3, 6, generator=g, dtype=D)
    arcs, weights = _graph_set(4)
    module = wn.Aggregate().module()
    want = torch.zeros_like(x)
    for n in range(4):
        for e in range(arcs.shape[1]):
            t, h = (int(i) for i in arcs[n, e])
            if t >= 0 and h >= 0:
                want[n, :, h] += weights[n, e] * x[n, :, t]
    assert torch.allclose(module(x, pattern=(arcs, weights)), want, rtol=1e-14, atol=1e-15)
    assert torch.allclose(module(x, pattern=to_dense(arcs, 6, weights)), want, rtol=1e-14, atol=1e-15)


@pytest.mark.parametrize("kind", ["dense", "sparse-weighted"])
def test_graph_networks_match_monte_carlo_of_their_twins(kind):
    g = torch.Generator().manual_seed(4)
    x1, x2 = torch.randn(3, 2, 6, generator=g, dtype=D), torch.randn(2, 2, 6, generator=g, dtype=D)
    (a1, w1), (a2, w2) = _graph_set(5, n=3), _graph_set(6, n=2, e=8)
    p1, p2 = ((to_dense(a1, 6, w1), to_dense(a2, 6, w2)) if kind == "dense" else ((a1, w1), (a2, w2)))
    net = gnn(512)
    exact = net.kernel(x1, x2, pattern1=p1, pattern2=p2)
    nngp, ntk = monte_carlo(net, x1, x2, n_samples=48, pattern1=p1, pattern2=p2)
    assert rel_frobenius(nngp, exact.nngp) < 0.05 and rel_frobenius(ntk, exact.ntk) < 0.05


# ---- the GNTK of Du et al. 2019, from its equations --------------------------------------------

def _relu_expectations(s11, s12, s22):
    """E[relu(a) relu(b)] and E[relu'(a) relu'(b)] for (a, b) ~ N(0, [[s11, s12], [s12, s22]])
    (Cho & Saul's arc-cosine kernels, written out here in numpy)."""
    norm = np.sqrt(s11 * s22)
    rho = np.clip(s12 / norm, -1.0, 1.0)
    theta = np.arccos(rho)
    value = norm * (np.sin(theta) + (np.pi - theta) * rho) / (2 * np.pi)
    slope = (np.pi - theta) / (2 * np.pi)
    return value, slope


def gntk(graphs_a, graphs_b, blocks, mlp_layers):
    """Du et al. 2019, Section 4: h-feature graphs ``(features (V, C), adjacency (V, V) 0/1
    undirected)``; BLOCK = aggregation over N(u) + {u} with c_u = 1 / (|N(u)| + 1), then R
    ReLU layers with c_sigma = 2; readout: the sum over all node pairs of the last layer.
    Returns the (len(a), len(b)) GNTK, one pair at a time."""
    def agg(adj):
        s = adj + np.eye(adj.shape[0])
        return s / s.sum(0, keepdims=True)  # column u: c_u on N(u) + {u}

    out = np.zeros((len(graphs_a), len(graphs_b)))
    for i, (ha, adj_a) in enumerate(graphs_a):
        for j, (hb, adj_b) in enumerate(graphs_b):
            ma, mb = agg(adj_a), agg(adj_b)
            sig = {"ab": ha @ hb.T, "aa": ha @ ha.T, "bb": hb @ hb.T}
            theta = sig["ab"].copy()
            for _ in range(blocks):
                sig = {"ab": ma.T @ sig["ab"] @ mb, "aa": ma.T @ sig["aa"] @ ma, "bb": mb.T @ sig["bb"] @ mb}
                theta = ma.T @ theta @ mb
                for _ in range(mlp_layers):
                    da, db = np.diag(sig["aa"]), np.diag(sig["bb"])
                    new = {}
                    value, slope = _relu_expectations(da[:, None], sig["ab"], db[None, :])
                    new["ab"], dot = 2 * value, 2 * slope
                    new["aa"] = 2 * _relu_expectations(da[:, None], sig["aa"], da[None, :])[0]
                    new["bb"] = 2 * _relu_expectations(db[:, None], sig["bb"], db[None, :])[0]
                    theta = theta * dot + new["ab"]
                    sig = new
            out[i, j] = theta.sum()
    return out


def _random_graphs(count, v, c, seed):
    rng = np.random.default_rng(seed)
    graphs = []
    for _ in range(count):
        upper = np.triu(rng.random((v, v)) < 0.35, 1)
        graphs.append((rng.standard_normal((v, c)), (upper | upper.T).astype(float)))
    return graphs


def test_gntk_of_du_et_al_is_a_widenet_network():
    v, c = 6, 3
    ga, gb = _random_graphs(3, v, c, seed=0), _random_graphs(2, v, c, seed=1)
    blocks, mlp = 2, 2
    layers = [wn.Dense(1, W_std=1.0, b_std=0.0)]  # Sigma^(0) = h h'
    for _ in range(blocks):
        layers.append(wn.Aggregate())
        for _ in range(mlp):
            layers += [wn.Relu(), wn.Dense(1, W_std=math.sqrt(2), b_std=0.0)]
    net = wn.Serial(*layers, wn.GlobalSumPool())

    def inputs(graphs):
        x = torch.tensor(np.stack([h.T for h, _ in graphs]) * math.sqrt(c))  # x . x' / C = h h'
        # the averaging aggregation as weighted arcs v -> u of weight c_u (u's self-loop included)
        arcs, weights = [], []
        for _, adj in graphs:
            s = adj + np.eye(v)
            t, h = np.nonzero(s)
            arcs.append(np.stack([t, h], 1))
            weights.append(1.0 / s.sum(0)[h])
        e = max(len(a) for a in arcs)
        pad = lambda a, fill: np.concatenate([a, np.full((e - len(a),) + a.shape[1:], fill)])  # noqa: E731
        return x, (torch.tensor(np.stack([pad(a, -1) for a in arcs])), torch.tensor(np.stack([pad(w, 0.0) for w in weights])))

    (xa, pa), (xb, pb) = inputs(ga), inputs(gb)
    ours = net.kernel(xa, xb, pattern1=pa, pattern2=pb).ntk
    want = torch.tensor(gntk(ga, gb, blocks, mlp))
    assert torch.allclose(ours, want, rtol=1e-11, atol=0)


# ---- padding, derivatives, reproducibility -------------------------------------------------------

def test_a_graph_padded_with_masked_nodes_has_exactly_the_kernel_of_the_unpadded_one():
    g = torch.Generator().manual_seed(7)
    x = torch.randn(2, 3, 5, generator=g, dtype=D)
    arcs = torch.randint(0, 5, (2, 9, 2), generator=g)
    net = wn.Serial(wn.Dense(8, 1.1, 0.4), wn.Erf(), wn.Aggregate(), wn.Dense(8, 1.0, 0.2), wn.Relu(),
                    wn.Aggregate(), wn.GlobalAvgPool(), wn.Dense(1))
    plain = net.kernel(x, pattern1=arcs)
    big = torch.randn(2, 3, 8, generator=g, dtype=D) * 50  # garbage at the padded nodes 5..7
    big[:, :, :5] = x
    mask = torch.zeros(2, 8, dtype=torch.bool)
    mask[:, 5:] = True
    # arcs into and out of the padded nodes carry nothing
    extra = torch.tensor([[6, 1], [2, 7], [5, 5]]).expand(2, 3, 2)
    padded = net.kernel(big, mask1=mask, pattern1=torch.cat([arcs, extra], 1))
    for name in ("nngp", "ntk"):
        assert torch.allclose(getattr(padded, name), getattr(plain, name), rtol=1e-12, atol=0), name


def test_forward_mode_derivatives_agree_between_dense_and_sparse_patterns():
    g = torch.Generator().manual_seed(8)
    x, t = torch.randn(3, 2, 6, generator=g, dtype=D), torch.randn(3, 2, 6, generator=g, dtype=D)
    arcs, weights = _graph_set(9, n=3)
    net = gnn(8)
    jvps = []
    for pattern in ((arcs, weights), to_dense(arcs, 6, weights)):
        jvps.append(torch.func.jvp(lambda a: net.kernel(a, pattern1=pattern).ntk, (x,), (t,))[1])
    assert rel_error(jvps[0], jvps[1]) <= 1e-12
    eps = 1e-6
    fd = (net.kernel(x + eps * t, pattern1=(arcs, weights)).ntk - net.kernel(x - eps * t, pattern1=(arcs, weights)).ntk) / (2 * eps)
    assert rel_error(jvps[0], fd) <= 1e-7


def test_reproducible_sparse_kernels_are_bit_for_bit_the_same_in_any_tiling():
    g = torch.Generator().manual_seed(10)
    x1, x2 = torch.randn(5, 2, 6, generator=g, dtype=D), torch.randn(4, 2, 6, generator=g, dtype=D)
    (a1, w1), (a2, w2) = _graph_set(11, n=5), _graph_set(12, n=4)
    net = gnn(8)
    one = net.kernel(x1, x2, pattern1=(a1, w1), pattern2=(a2, w2), reproducible=True)
    mirrored = net.kernel(x2, x1, pattern1=(a2, w2), pattern2=(a1, w1), reproducible=True)
    assert torch.equal(one.ntk, mirrored.ntk.T) and torch.equal(one.nngp, mirrored.nngp.T)
    for block_size in (1, 2):
        tiled = net.kernel(x1, x2, pattern1=(a1, w1), pattern2=(a2, w2), reproducible=True, block_size=block_size)
        assert torch.equal(tiled.ntk, one.ntk) and torch.equal(tiled.nngp, one.nngp)


# ---- bad input ---------------------------------------------------------------------------------------

def test_bad_patterns_are_refused_before_any_work():
    x = torch.randn(3, 2, 5, dtype=D)
    net = wn.Serial(wn.Dense(4), wn.Relu(), wn.Aggregate(), wn.GlobalAvgPool(), wn.Dense(1))
    arcs = torch.randint(0, 5, (3, 4, 2))
    cases = [
        (dict(), ParameterError, r"pattern1 is missing: the network has an Aggregate layer"),
        (dict(pattern1=torch.ones(2, 5, 5)), ShapeError, r"pattern1 as a dense pattern must have shape \(3, 5, 5\)"),
        (dict(pattern1=torch.ones(3, 5, 4)), ShapeError, r"must have shape \(3, 5, 5\).*got \(3, 5, 4\)"),
        (dict(pattern1=arcs[:2]), ShapeError, r"pattern1 as sparse arcs must have shape \(3, E, 2\)"),
        (dict(pattern1=torch.ones(3, 5, 5, dtype=torch.long)), ShapeError,
         r"an integer tensor is read as arcs: give a dense adjacency as float or bool"),
        (dict(pattern1=torch.cat([arcs, torch.tensor([[1, 5]] * 3)[:, None]], 1)), ParameterError,
         r"pattern1\[0, 4\] is the arc 1 -> 5, outside the 5 nodes of inputs of shape \(3, 2, 5\)"),
        (dict(pattern1=(arcs, torch.ones(3, 5))), ShapeError, r"pattern1 weights must have shape \(3, 4\)"),
        (dict(pattern1=(arcs, torch.ones(3, 4), 1)), ParameterError, r"must be the pair \(edges, weights\)"),
        (dict(pattern1=torch.full((3, 5, 5), float("nan"))), NonFiniteInputError, r"pattern1 must be finite"),
        (dict(pattern1=[[0, 1]]), ParameterError, r"pattern1 must be a torch.Tensor or numpy array"),
        (dict(pattern1=arcs, pattern2=arcs), ParameterError, r"pattern2 must be None when x2 is None"),
    ]
    for kwargs, error, match in cases:
        with pytest.raises(error, match=match):
            net.kernel(x, **kwargs)
    with pytest.raises(ParameterError, match=r"pattern2 is missing"):
        net.kernel(x, x[:2], pattern1=arcs)
    with pytest.raises(ParameterError, match=r"got pattern1, but the network has no Aggregate layer"):
        wn.Serial(wn.Dense(1)).kernel(torch.randn(3, 4), pattern1=arcs)
    with pytest.raises(ShapeError, match=r"Aggregate layer needs inputs with nodes, \(N, C, V\)"):
        wn.Serial(wn.Dense(2), wn.Aggregate()).kernel(torch.randn(3, 4), pattern1=arcs)
    with pytest.raises(ShapeError, match=r"layers before an Aggregate must keep the positions"):
        wn.Serial(wn.Conv(2, 2, padding="valid"), wn.Aggregate(), wn.GlobalAvgPool()).kernel(
            x, pattern1=torch.ones(3, 5, 5))
    with pytest.raises(ParameterError, match=r"Aggregate: no graph given"):
        wn.Aggregate().apply(wn.Dense(2).kernel(x))
    with pytest.raises(ParameterError, match=r"AggregateModule: pattern is missing"):
        net.module((2, 5), seed=0)(x.float())


def grid_to_dense(arcs: torch.Tensor, spatial: tuple) -> torch.Tensor:
    """The dense ``(N, *S, *S)`` adjacency of ``(N, E, K, 2)`` arcs on a node grid, by a loop."""
    v = math.prod(spatial)
    flat = torch.zeros(arcs.shape[0], v, v, dtype=D)
    for n in range(arcs.shape[0]):
        for e in range(arcs.shape[1]):
            tail, head = arcs[n, e, :, 0], arcs[n, e, :, 1]
            if bool((tail < 0).any() or (head < 0).any()):
                continue
            index = lambda c: int(np.ravel_multi_index(tuple(int(i) for i in c), spatial))  # noqa: E731
            flat[n, index(tail), index(head)] += 1
    return flat.reshape((arcs.shape[0],) + spatial * 2)


def _nt_case(case):
    kind, grid = case.split("-")
    spatial = (6,) if grid == "1d" else (3, 4)
    g = torch.Generator().manual_seed(13)
    x1, x2 = torch.randn((4, 2) + spatial, generator=g, dtype=D), torch.randn((3, 2) + spatial, generator=g, dtype=D)
    v = math.prod(spatial)
    if kind == "dense":
        make = lambda n: (torch.rand((n,) + spatial * 2, generator=g, dtype=D) < 0.4) * torch.rand((n,) + spatial * 2, generator=g, dtype=D)  # noqa: E731
    else:
        def make(n):
            coords = torch.stack([torch.randint(0, s, (n, 2 * v, 2), generator=g) for s in spatial], 2)
            coords[0, -2:] = -1
            return coords if grid == "2d" else coords[:, :, 0]
    net = wn.Serial(wn.Dense(64, 1.2, 0.1), wn.Erf(), wn.Aggregate(), wn.Conv(8, 3), wn.Erf(), wn.Aggregate(),
                    wn.GlobalAvgPool(), wn.Dense(1))
    return net, x1, x2, make(4), make(3), spatial


@pytest.mark.nt
@pytest.mark.parametrize("case", ["dense-1d", "sparse-1d", "dense-2d"])
def test_matches_neural_tangents(case):
    from layers.contract import check_neural_tangents

    net, x1, x2, p1, p2, _ = _nt_case(case)
    check_neural_tangents(net, x1, x2, pattern1=p1, pattern2=p2)


@pytest.mark.nt
def test_sparse_arcs_on_a_grid_match_neural_tangents_dense_form():
    # Neural Tangents' SPARSE Aggregate on a 2-D node grid with a Conv between two Aggregates
    # gives kernels several percent off its own DENSE result on the same graph; widenet's
    # sparse and dense kernels agree with each other and with Neural Tangents' DENSE one.
    from nt import nt_kernel

    net, x1, x2, p1, p2, spatial = _nt_case("sparse-2d")
    d1, d2 = grid_to_dense(p1, spatial), grid_to_dense(p2, spatial)
    for second, q2, e2 in ((x2, p2, d2), (None, None, None)):
        ours = net.kernel(x1, second, pattern1=p1, pattern2=q2)
        dense = nt_kernel(net, x1, second, pattern1=d1, pattern2=e2)
        for name in ("nngp", "ntk"):
            assert rel_error(getattr(ours, name), torch.as_tensor(dense[name])) <= 1e-10, (name, second is None)
    theirs = nt_kernel(net, x1, pattern1=p1)  # the x2=None call, as `dense` last
    assert rel_error(torch.as_tensor(theirs["ntk"]), torch.as_tensor(dense["ntk"])) > 1e-2  # NT's discrepancy
