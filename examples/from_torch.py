"""The infinite-width kernels of a model written in plain PyTorch, with ``wn.from_torch``.

A small pre-activation ResNet (He et al. 2016's v2 ordering, without batch normalization: a
stem convolution, two residual blocks ``x + conv(relu(conv(relu(x))))``, global average
pooling and a linear head), a residual MLP with functional calls in ``forward``, and a
transformer encoder (``nn.TransformerEncoderLayer`` over the digit's 8 rows as tokens), as a
PyTorch user writes them, on scikit-learn's 8x8 digits. For each: the widenet network that
``from_torch`` reads from the model, its NNGP and NTK against Monte Carlo over the model's
own initialization at two widths (the gap shrinks with the width, down to the Monte Carlo
error: 24 networks for the ResNet, 64 for the transformer, 200 for the MLP), and the test
accuracy of kernel regression with the NTK (the infinitely wide model trained to convergence
on the MSE) and the NNGP (the Bayesian posterior mean).

PyTorch's attention scales its logits by 1/sqrt(head_dim), whose infinite-width limit has no
closed-form kernel: ``from_torch`` says so, and ``attention="linear"`` takes widenet's
closed-form attention instead. At zero query and key weights both are the same uniform
attention, so there the kernel is the limit of the model itself, which Monte Carlo checks; at
PyTorch's default initialization the example measures how far the model's own kernel is from
the linear-attention one.

Prints a table; about a minute on two cores.

Usage: python examples/from_torch.py [--train 200] [--test 300]
"""

import argparse
import time
import warnings

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import nn

import widenet as wn


class Block(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x):
        return x + self.conv2(F.relu(self.conv1(F.relu(x))))


class PreActResNet(nn.Module):
    def __init__(self, channels=64, classes=10):
        super().__init__()
        self.stem = nn.Conv2d(1, channels, 3, padding=1)
        self.blocks = nn.Sequential(Block(channels), Block(channels))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(channels, classes)

    def forward(self, x):
        x = self.blocks(self.stem(x))
        return self.head(torch.flatten(self.pool(F.relu(x)), 1))


class ResidualMLP(nn.Module):
    def __init__(self, width=512, classes=10):
        super().__init__()
        self.inp, self.hidden, self.out = nn.Linear(64, width), nn.Linear(width, width), nn.Linear(width, classes)

    def forward(self, x):
        z = self.inp(x)
        return self.out(F.gelu(z + self.hidden(torch.tanh(z))))


class Encoder(nn.Module):
    """Each digit a sequence of 8 tokens: a row's 8 pixels and a one-hot of the row's index."""

    def __init__(self, width=64, classes=10):
        super().__init__()
        self.embed = nn.Linear(16, width)
        self.encoder = nn.TransformerEncoderLayer(width, 4, 2 * width, dropout=0.0, batch_first=True, norm_first=True)
        self.head = nn.Linear(width, classes)

    def forward(self, x):
        return self.head(self.encoder(self.embed(x)).mean(dim=1))


def uniform_attention(model):
    """Zero query and key weights: PyTorch's attention is then a uniform average over tokens."""
    with torch.no_grad():
        model.encoder.self_attn.in_proj_weight[: 2 * model.encoder.self_attn.embed_dim] = 0
    return model


def tokens(x):
    rows = torch.eye(8, dtype=x.dtype).expand(len(x), 8, 8)
    return torch.cat([x, rows], dim=2)


def digits(train: int, test: int):
    data = load_digits()
    x = torch.tensor(data.images, dtype=torch.float64) / 16.0
    x = (x - x.mean()) / x.std()
    y = torch.tensor(data.target)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    x, y = x[perm], y[perm]
    return x[:train], y[:train], x[train:train + test], y[train:train + test]


def accuracy(k_train, k_test, y_train, y_test, ridge=1e-4):
    targets = F.one_hot(y_train, 10).double() - 0.1
    scale = k_train.diagonal().mean()
    alpha = torch.linalg.solve(k_train + ridge * scale * torch.eye(len(k_train), dtype=k_train.dtype), targets)
    return float(((k_test @ alpha).argmax(1) == y_test).double().mean())


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", type=int, default=200)
    parser.add_argument("--test", type=int, default=300)
    args = parser.parse_args()
    x_train, y_train, x_test, y_test = digits(args.train, args.test)
    cases = [
        ("pre-activation ResNet", PreActResNet, lambda x: x[:, None], (16, 96), 24),
        ("residual MLP", ResidualMLP, lambda x: x.reshape(len(x), 64), (64, 1024), 200),
    ]
    for name, make, shape, widths, samples in cases:
        xs_train, xs_test = shape(x_train), shape(x_test)
        print(f"\n{name}")
        print(wn.from_torch(make(8).double(), xs_train[:2]))
        probe = xs_test[:8]
        for width in widths:
            compare(wn.from_torch(make(width).double(), probe), lambda w=width: make(w).double(), probe, samples,
                    f"width {width:5d}")
        net = wn.from_torch(make(widths[-1]).double(), probe)
        fit(net, xs_train, xs_test, y_train, y_test)

    print("\ntransformer encoder (pre-norm, 4 heads, 8 tokens)")
    xs_train, xs_test = tokens(x_train), tokens(x_test)
    probe = xs_test[:8]
    try:
        wn.from_torch(Encoder().double(), probe)
    except wn.errors.UnsupportedModuleError as err:
        print("  from_torch(model):", str(err).split("; ", 1)[1][:150], "...")
    print(wn.from_torch(Encoder(8).double(), probe, attention="linear"))
    for width in (64, 256):
        uniform = wn.from_torch(Encoder(width).double(), probe, attention="linear",
                                scales={"encoder.self_attn": {"W_query_std": 0.0}})
        compare(uniform, lambda w=width: uniform_attention(Encoder(w).double()), probe, 64,
                f"width {width:5d}, zero query/key weights")
    net = wn.from_torch(Encoder(256).double(), probe, attention="linear")
    compare(net, lambda: Encoder(256).double(), probe, 64, "width   256, PyTorch's default init (approximation)")
    fit(net, xs_train, xs_test, y_train, y_test)


def compare(net, make, probe, samples, label):
    exact = net.kernel(probe)
    start = time.perf_counter()
    with warnings.catch_warnings():  # torch.func has no batching rule for PyTorch's fused attention
        warnings.filterwarnings("ignore", "There is a performance drop")
        mc = wn.empirical.monte_carlo(lambda s: (torch.manual_seed(s), make())[1], probe, n_samples=samples)
    gap = {k: float((getattr(mc, k) - getattr(exact, k)).norm() / getattr(exact, k).norm()) for k in ("nngp", "ntk")}
    noise = {k: float(getattr(mc, f"{k}_stderr").norm() / getattr(exact, k).norm()) for k in ("nngp", "ntk")}
    print(f"  {label}: Monte Carlo over {samples} of the model's own initializations "
          f"({time.perf_counter() - start:.1f} s) is {100 * gap['nngp']:.1f}% (NNGP; its standard error "
          f"{100 * noise['nngp']:.1f}%) and {100 * gap['ntk']:.1f}% (NTK; {100 * noise['ntk']:.1f}%) from the "
          f"kernel (relative Frobenius)")


def fit(net, xs_train, xs_test, y_train, y_test):
    start = time.perf_counter()
    k_train = net.kernel(xs_train)
    k_test = net.kernel(xs_test, xs_train)
    seconds = time.perf_counter() - start
    print(f"  kernels of {len(xs_train)} training and {len(xs_test)} test digits: {seconds:.1f} s; test accuracy: "
          f"NTK {accuracy(k_train.ntk, k_test.ntk, y_train, y_test):.3f}, "
          f"NNGP {accuracy(k_train.nngp, k_test.nngp, y_train, y_test):.3f}")


if __name__ == "__main__":
    main()
