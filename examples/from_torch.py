"""The infinite-width kernels of a model written in plain PyTorch, with ``wn.from_torch``.

A small pre-activation ResNet (He et al. 2016's v2 ordering, without batch normalization: a
stem convolution, two residual blocks ``x + conv(relu(conv(relu(x))))``, global average
pooling and a linear head) and a residual MLP with functional calls in ``forward``, as a
PyTorch user writes them, on scikit-learn's 8x8 digits. For each: the widenet network that
``from_torch`` reads from the model, its NNGP and NTK against Monte Carlo over the model's
own default initialization at two widths (the gap shrinks with the width, down to the
Monte Carlo error: 24 networks for the ResNet, 200 for the MLP), and the test
accuracy of kernel regression with the NTK (the infinitely wide model trained to convergence
on the MSE) and the NNGP (the Bayesian posterior mean).

Prints a table; about a minute on two cores.

Usage: python examples/from_torch.py [--train 200] [--test 300]
"""

import argparse
import time

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
            net = wn.from_torch(make(width).double(), probe)
            exact = net.kernel(probe)
            start = time.perf_counter()
            mc = wn.empirical.monte_carlo(lambda s, w=width: (torch.manual_seed(s), make(w).double())[1], probe,
                                          n_samples=samples)
            gap = {k: float((getattr(mc, k) - getattr(exact, k)).norm() / getattr(exact, k).norm()) for k in ("nngp", "ntk")}
            noise = {k: float(getattr(mc, f"{k}_stderr").norm() / getattr(exact, k).norm()) for k in ("nngp", "ntk")}
            print(f"  width {width:5d}: Monte Carlo over {samples} of the model's own initializations "
                  f"({time.perf_counter() - start:.1f} s) is {100 * gap['nngp']:.1f}% (NNGP; its standard error "
                  f"{100 * noise['nngp']:.1f}%) and {100 * gap['ntk']:.1f}% (NTK; {100 * noise['ntk']:.1f}%) from the "
                  f"kernel (relative Frobenius)")
        net = wn.from_torch(make(widths[-1]).double(), probe)
        start = time.perf_counter()
        k_train = net.kernel(xs_train)
        k_test = net.kernel(xs_test, xs_train)
        seconds = time.perf_counter() - start
        print(f"  kernels of {len(xs_train)} training and {len(xs_test)} test digits: {seconds:.1f} s; test accuracy: "
              f"NTK {accuracy(k_train.ntk, k_test.ntk, y_train, y_test):.3f}, "
              f"NNGP {accuracy(k_train.nngp, k_test.nngp, y_train, y_test):.3f}")


if __name__ == "__main__":
    main()
