"""Monte Carlo over finite MLPs: the samples ``theory.finite_width``'s predictions describe."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import torch

from .._validate import as_inputs, check_int
from ..errors import ShapeError
from ._progress import progress_bar

__all__ = ["FiniteWidthSamples", "finite_width_samples"]

D = torch.float64
OWNER = "theory.finite_width_samples"
# float64 entries of the weight matrices drawn at once
_AT_ONCE = 1 << 24


@dataclass(frozen=True)
class FiniteWidthSamples:
    """Independent finite networks at initialization, from :func:`finite_width_samples`.

    Fields (S networks, N inputs):
        outputs: ``(S, N)``, the output unit f on every input.
        ntk: ``(S, N, N)``, the empirical NTK of f summed over all parameters.
        metric: ``(S, N, N)``, ``G = C_b + C_W / n_L sum_j phi(z_j(x_a)) phi(z_j(x_b))``, the
            readout's covariance given the last hidden layer: f is exactly ``N(0, G)`` given
            it, so ``E[f_a f_b] = E[G_ab]`` and the connected four-point function is
            ``Cov(G_ab, G_cd) + Cov(G_ac, G_bd) + Cov(G_ad, G_bc)``, estimates without the
            readout's sampling noise (the conditional-Gaussian trick).
        widths: the hidden widths.
    """

    outputs: torch.Tensor
    ntk: torch.Tensor
    metric: torch.Tensor
    widths: tuple


def finite_width_samples(net, x: Any, n: int, samples: int, *, widths: Optional[Sequence[float]] = None,
                         seed: Optional[int] = None, progress: bool = False) -> FiniteWidthSamples:
    """Draw ``samples`` finite networks of width scale ``n`` and evaluate them on ``x``.

    ``net`` is an MLP ``Dense -> phi -> ... -> Dense`` in the ntk parameterization (any
    elementwise nonlinearity, kinked ones included); hidden layer l has width
    ``round(rho_l n)`` (``widths``, all 1 by default), weights and biases standard normal,
    scaled by ``W_std / sqrt(fan_in)`` and ``b_std``. The NTK is computed by backpropagation,
    ``Theta_hat_ab = sum_l sum_i delta_l,i(x_a) delta_l,i(x_b) G_(l-1),ab`` (``delta`` the
    output's derivative in layer l's preactivations, ``G`` the layer's input metric): exact,
    vectorized over networks. These are the quantities :func:`finite_width` predicts.

    Args:
        net: the network.
        x: inputs ``(N, d)``.
        n: width scale (>= 1).
        samples: number of networks (>= 2).
        widths: relative hidden widths.
        seed: seed of the weights' generator.
        progress: show a progress bar.

    Returns:
        a :class:`FiniteWidthSamples`.

    Example:

        >>> net = wn.Serial(wn.Dense(1, 1.5), wn.Relu(), wn.Dense(1, 1.5), wn.Relu(), wn.Dense(1))
        >>> mc = wn.theory.finite_width_samples(net, torch.randn(3, 2), n=64, samples=100, seed=0)
        >>> mc.outputs.shape, mc.ntk.shape
        (torch.Size([100, 3]), torch.Size([100, 3, 3]))
    """
    from ._finite_width import _check_widths, _flat_layers

    layers = _flat_layers(net, OWNER, smooth=False)
    x = as_inputs(OWNER, "x", x).to(D)
    if x.ndim != 2 or x.shape[0] < 1 or x.shape[1] < 1:
        raise ShapeError(f"{OWNER}: x must have shape (N, d) with N, d >= 1 (got {tuple(x.shape)})")
    n = check_int(OWNER, "n", n, minimum=1)
    samples = check_int(OWNER, "samples", samples, minimum=2)
    rho = _check_widths(widths, len(layers) // 2, OWNER)
    hidden = tuple(max(1, round(r * n)) for r in rho)
    gen = torch.Generator().manual_seed(seed if seed is not None else torch.seed() % 2**63)
    dims = (x.shape[1],) + hidden + (1,)
    chunk = max(1, _AT_ONCE // max(a * b for a, b in zip(dims, dims[1:])))
    out = [], [], []
    with progress_bar(samples, "finite networks", progress) as bar:
        for s in range(0, samples, chunk):
            for acc, value in zip(out, _networks(layers, x, dims, min(chunk, samples - s), gen)):
                acc.append(value)
            bar.advance(min(chunk, samples - s))
    f, ntk, metric = (torch.cat(v) for v in out)
    return FiniteWidthSamples(f, ntk, metric, hidden)


def _networks(layers: list, x: torch.Tensor, dims: tuple, S: int, gen: torch.Generator):
    """Outputs, NTKs and readout metrics of S networks (see finite_width_samples)."""
    denses, phis = layers[::2], layers[1::2]
    h = x.T.expand(S, -1, -1)  # (S, width, N): the layer's input
    metrics, weights, pre = [], [], []
    for k, dense in enumerate(denses):
        cw = float(dense.W_std) ** 2
        cb = 0.0 if dense.b_std is None else float(dense.b_std) ** 2
        W = torch.randn(S, dims[k + 1], dims[k], generator=gen, dtype=D) * math.sqrt(cw / dims[k])
        metrics.append(cb + cw / dims[k] * torch.einsum("sja,sjb->sab", h, h))
        z = W @ h + math.sqrt(cb) * torch.randn(S, dims[k + 1], 1, generator=gen, dtype=D)
        weights.append(W)
        pre.append(z)
        if k < len(phis):
            h = phis[k].fn(z)
    delta = torch.ones(S, 1, x.shape[0], dtype=D)
    ntk = torch.zeros(S, x.shape[0], x.shape[0], dtype=D)
    for k in range(len(denses) - 1, -1, -1):
        ntk += torch.einsum("sia,sib->sab", delta, delta) * metrics[k]
        if k > 0:
            delta = (weights[k].transpose(1, 2) @ delta) * phis[k - 1].derivative(pre[k - 1])
    return pre[-1][:, 0, :], ntk, metrics[-1]
