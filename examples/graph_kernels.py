"""Graph classification with the Graph Neural Tangent Kernel (Du et al. 2019), built from
widenet layers, against the graph network it is the limit of, trained.

The data set is generated here with networkx, and its two classes have the same degrees:
Watts-Strogatz small worlds of 12 to 30 nodes (rings of degree 4, 10% of the links rewired:
many triangles, short cycles along the ring), and each of them randomized by degree-preserving
edge swaps (every node keeps its degree; the triangles are gone). So the degree histogram
knows nothing of the class, and a classifier must see structure beyond the nodes' own
degrees. Node features are the one-hot degree (Du et al.'s choice for graphs without labels).
Graphs of different sizes are padded to 30 nodes: padded nodes are masked (``mask1=``),
padding arcs are -1.

The GNTK is a widenet network: for each of L blocks, an Aggregate over each node's
neighbours and itself (GNTK's sum aggregation) and R = 2 ReLU layers; the readout sums over
nodes (``GlobalSumPool``). Its kernels go into scikit-learn's SVC with a precomputed,
normalized kernel, C chosen by inner cross-validation, as in Du et al. Reported: 5-fold
cross-validated accuracy of the GNTK and the GNN's NNGP for L = 1 to 4 blocks (one block sees
only the neighbours' degrees, which the randomization keeps: it cannot do better than
chance); of the finite graph network of the same architecture (``net.module()``, width 128,
L = 2, trained with Adam on the same folds); and of an SVM on degree histograms. Plus the
kernel times.

Writes graph_kernels.png (the normalized GNTK of the data set sorted by class and size, and
the accuracies) into the output directory. About two minutes on two cores, most of them
training the finite networks.

Usage: python examples/graph_kernels.py [--out figures] [--pairs 150]
"""

import argparse
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import networkx as nx  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from sklearn.model_selection import GridSearchCV, StratifiedKFold  # noqa: E402
from sklearn.svm import SVC  # noqa: E402

import widenet as wn  # noqa: E402

CLASSES = ("small world", "randomized")
MAX_NODES, MAX_DEGREE = 30, 12


def make_graphs(pairs: int, seed: int = 0):
    """``pairs`` small worlds and their degree-preserving randomizations as widenet inputs:
    features ``(N, C, 30)``, padding mask ``(N, 30)`` and arcs ``(N, E, 2)`` (both directions
    of every edge and a self-loop per node, padded with -1), with labels ``(N,)`` (sorted by
    class) and the networkx graphs."""
    rng = np.random.default_rng(seed)
    worlds, randomized = [], []
    for _ in range(pairs):
        n, s = int(rng.integers(12, MAX_NODES + 1)), int(rng.integers(2**31))
        world = nx.watts_strogatz_graph(n, 4, 0.1, seed=s)
        shuffled = world.copy()
        nx.double_edge_swap(shuffled, nswap=4 * shuffled.number_of_edges(), max_tries=10**5, seed=s)
        worlds.append(world)
        randomized.append(shuffled)
    graphs, labels = worlds + randomized, [0] * pairs + [1] * pairs
    x = np.zeros((len(graphs), MAX_DEGREE + 1, MAX_NODES))
    mask = np.ones((len(graphs), MAX_NODES), dtype=bool)
    arcs = []
    for i, g in enumerate(graphs):
        for node, degree in g.degree():
            x[i, min(degree, MAX_DEGREE), node] = 1.0
        mask[i, : g.number_of_nodes()] = False
        edges = np.array(list(g.edges()), dtype=np.int64).reshape(-1, 2)
        loops = np.repeat(np.arange(g.number_of_nodes())[:, None], 2, 1)
        arcs.append(np.concatenate([edges, edges[:, ::-1], loops]))
    e = max(len(a) for a in arcs)
    arcs = np.stack([np.concatenate([a, np.full((e - len(a), 2), -1)]) for a in arcs])
    # one-hot features x . x' / C would shrink with C: scale so that x . x' counts equal degrees
    x *= np.sqrt(x.shape[1])
    return torch.tensor(x), torch.tensor(mask), torch.tensor(arcs), np.array(labels), graphs


def gnn(blocks: int, width: int = 512):
    """GNTK's architecture: L x [Aggregate (neighbours + self), 2 x (Dense + ReLU)], sum readout."""
    layers = [wn.Dense(width, 1.0, 0.0)]
    for _ in range(blocks):
        layers += [wn.Aggregate(), wn.Relu(), wn.Dense(width, 2**0.5, 0.0), wn.Relu(), wn.Dense(width, 2**0.5, 0.0)]
    return wn.Serial(*layers, wn.GlobalSumPool(), wn.Dense(1, 1.0, 0.0))


def normalized(k: torch.Tensor) -> np.ndarray:
    d = k.diagonal().sqrt()
    return (k / d[:, None] / d[None, :]).numpy()


FOLDS = 5


def svm_accuracy(k: np.ndarray, y: np.ndarray, seed: int = 0) -> tuple[float, float]:
    """Cross-validated accuracy of an SVC on a precomputed kernel (C by inner 5-fold CV)."""
    scores = []
    for train, test in StratifiedKFold(FOLDS, shuffle=True, random_state=seed).split(k, y):
        search = GridSearchCV(SVC(kernel="precomputed"), {"C": [0.1, 1, 10, 100, 1000]}, cv=5)
        search.fit(k[np.ix_(train, train)], y[train])
        scores.append(search.score(k[np.ix_(test, train)], y[test]))
    return float(np.mean(scores)), float(np.std(scores))


def trained_gnn_accuracy(x, mask, arcs, y, blocks: int, seed: int = 0, epochs: int = 400) -> tuple[float, float]:
    """The finite network of the same architecture (width 128, Dense(2) readout), trained
    full-batch with Adam on cross-entropy in float32, on the kernels' folds."""
    net = wn.Serial(*gnn(blocks, 128).layers[:-1], wn.Dense(2))
    scores = []
    labels = torch.tensor(y)
    x = x.float()
    for fold, (train, test) in enumerate(StratifiedKFold(FOLDS, shuffle=True, random_state=seed).split(x, y)):
        model = net.module(tuple(x.shape[1:]), seed=fold)
        opt = torch.optim.Adam(model.parameters(), lr=3e-3)
        tr, te = torch.tensor(train), torch.tensor(test)
        for _ in range(epochs):
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(x[tr], mask=mask[tr], pattern=arcs[tr]), labels[tr])
            loss.backward()
            opt.step()
        with torch.no_grad():
            pred = model(x[te], mask=mask[te], pattern=arcs[te]).argmax(1)
        scores.append(float((pred == labels[te]).double().mean()))
    return float(np.mean(scores)), float(np.std(scores))


def degree_histograms(graphs) -> np.ndarray:
    h = np.zeros((len(graphs), MAX_DEGREE + 1))
    for i, g in enumerate(graphs):
        for _, degree in g.degree():
            h[i, min(degree, MAX_DEGREE)] += 1
    return h / h.sum(1, keepdims=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="figures")
    parser.add_argument("--pairs", type=int, default=150)
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    x, mask, arcs, y, graphs = make_graphs(args.pairs)
    print(f"{len(y)} graphs ({args.pairs} small worlds and their degree-preserving randomizations), "
          f"12-{MAX_NODES} nodes, {arcs.shape[1]} arcs at most\n")
    rows, shown = [], None
    for blocks in (1, 2, 3, 4):
        start = time.perf_counter()
        k = gnn(blocks).kernel(x, mask1=mask, pattern1=arcs)
        seconds = time.perf_counter() - start
        for name, matrix in (("GNTK", k.ntk), ("NNGP", k.nngp)):
            mean, std = svm_accuracy(normalized(matrix), y)
            rows.append((f"{name}, L = {blocks}", mean, std, f"{seconds:.1f} s (both kernels)"))
        if blocks == 2:
            order = np.lexsort(([g.number_of_nodes() for g in graphs], y))  # by class, then size
            shown = normalized(k.ntk)[np.ix_(order, order)]
    start = time.perf_counter()
    mean, std = trained_gnn_accuracy(x, mask, arcs, y, blocks=2)
    rows.append(("trained GNN, L = 2, width 128", mean, std, f"{time.perf_counter() - start:.1f} s ({FOLDS} trainings)"))
    h = degree_histograms(graphs)
    rbf = np.exp(-((h[:, None] - h[None]) ** 2).sum(-1) / 0.05)
    mean, std = svm_accuracy(rbf, y)
    rows.append(("degree histogram, RBF SVM", mean, std, ""))

    print(f"{'model':32s} {f'{FOLDS}-fold accuracy':>18s}  time")
    for name, mean, std, when in rows:
        print(f"{name:32s} {mean:9.3f} +- {std:.3f}  {when}")

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.4))
    image = a.imshow(shown, cmap="viridis")
    ticks = [args.pairs * (i + 0.5) for i in range(2)]
    a.set_xticks(ticks, CLASSES, fontsize=8)
    a.set_yticks(ticks, CLASSES, fontsize=8, rotation=90, va="center")
    a.set_title("normalized GNTK (L = 2), by class, then size", fontsize=10)
    fig.colorbar(image, ax=a, fraction=0.046)
    names = [r[0] for r in rows]
    b.barh(range(len(rows)), [r[1] for r in rows], xerr=[r[2] for r in rows], color="tab:blue")
    b.set_yticks(range(len(rows)), names, fontsize=8)
    b.invert_yaxis()
    b.axvline(1 / 2, color="gray", ls=":", label="chance")
    b.set_xlim(0, 1)
    b.set_xlabel(f"{FOLDS}-fold cross-validated accuracy")
    b.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(out / "graph_kernels.png", dpi=120)
    print(f"\nwrote {out / 'graph_kernels.png'}")


if __name__ == "__main__":
    main()
