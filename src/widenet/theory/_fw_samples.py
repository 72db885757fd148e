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
        dntk: ``(S, N, N, N)`` with ``dntk=True``: ``sum_nu d Theta_hat_ab / d theta_nu
            d f_c / d theta_nu``, the NTK's derivative along each output's gradient (its
            change in a gradient step is ``-lr sum_c (f_c - y_c) dntk_abc``); else None.
        n: the width scale.
    """

    outputs: torch.Tensor
    ntk: torch.Tensor
    metric: torch.Tensor
    widths: tuple
    dntk: Optional[torch.Tensor] = None
    n: Optional[int] = None

    def estimates(self, fw) -> dict:
        """Monte Carlo estimates of :func:`finite_width`'s 1/n fields from these networks, all
        times the width scale n (each is the field plus ``O(1/n)``; extrapolate in 1/n over
        several widths): ``nngp_correction = n (mean G - K)``, ``ntk_correction =
        n (mean Theta_hat - Theta)``, ``four_point = n (Cov(G_ab, G_cd) + Cov(G_ac, G_bd) +
        Cov(G_ad, G_bc))``, ``ntk_variance = n Cov(Theta_hat_ab, Theta_hat_cd)``,
        ``ntk_output_correlation = n Cov(Theta_hat_ab, f_c f_d)``; ``fw`` gives the limits.

        Example:

            >>> net = wn.Serial(wn.Dense(1, 1.5), wn.Erf(), wn.Dense(1, 1.5), wn.Erf(), wn.Dense(1))
            >>> x = torch.randn(2, 3)
            >>> mc = wn.theory.finite_width_samples(net, x, n=32, samples=500, seed=0)
            >>> sorted(mc.estimates(wn.theory.finite_width(net, x)))[:2]
            ['four_point', 'nngp_correction']
        """
        N, n = self.outputs.shape[1], self.n
        V = _cov(self.metric, self.metric).reshape(N, N, N, N)
        ff = torch.einsum("sc,sd->scd", self.outputs, self.outputs)
        return {"nngp_correction": n * (self.metric.mean(0) - fw.nngp),
                "ntk_correction": n * (self.ntk.mean(0) - fw.ntk),
                "four_point": n * (V + V.permute(0, 2, 1, 3) + V.permute(0, 2, 3, 1)),
                "ntk_variance": n * _cov(self.ntk, self.ntk).reshape(N, N, N, N),
                "ntk_output_correlation": n * _cov(self.ntk, ff).reshape(N, N, N, N)}


def _cov(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The covariance matrix of the flattened samples of ``a`` and ``b`` (first axis)."""
    a, b = a.reshape(len(a), -1), b.reshape(len(b), -1)
    return (a - a.mean(0)).T @ (b - b.mean(0)) / (len(a) - 1)


def finite_width_samples(net, x: Any, n: int, samples: int, *, widths: Optional[Sequence[float]] = None,
                         seed: Optional[int] = None, dntk: bool = False, progress: bool = False) -> FiniteWidthSamples:
    """Draw ``samples`` finite networks of width scale ``n`` and evaluate them on ``x``.

    ``net`` is an MLP ``Dense -> phi -> ... -> Dense`` in the ntk parameterization (any
    elementwise nonlinearity, kinked ones included); hidden layer l has width
    ``round(rho_l n)`` (``widths``, all 1 by default), weights and biases standard normal,
    scaled by ``W_std / sqrt(fan_in)`` and ``b_std``. The NTK is computed by backpropagation,
    ``Theta_hat_ab = sum_l sum_i delta_l,i(x_a) delta_l,i(x_b) G_(l-1),ab`` (``delta`` the
    output's derivative in layer l's preactivations, ``G`` the layer's input metric): exact,
    vectorized over networks, on the CPU in float64. These are the quantities
    :func:`finite_width` predicts.

    Args:
        net: the network.
        x: inputs ``(N, d)``.
        n: width scale (>= 1).
        samples: number of networks (>= 2).
        widths: relative hidden widths.
        seed: seed of the weights' generator.
        dntk: also the NTK's derivatives along the outputs' gradients (one forward-mode
            product per input, through the backpropagated NTK).
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
    x = as_inputs(OWNER, "x", x).to(device="cpu", dtype=D)
    if x.ndim != 2 or x.shape[0] < 1 or x.shape[1] < 1:
        raise ShapeError(f"{OWNER}: x must have shape (N, d) with N, d >= 1 (got {tuple(x.shape)})")
    n = check_int(OWNER, "n", n, minimum=1)
    samples = check_int(OWNER, "samples", samples, minimum=2)
    rho = _check_widths(widths, len(layers) // 2, OWNER)
    hidden = tuple(max(1, round(r * n)) for r in rho)
    gen = torch.Generator().manual_seed(seed if seed is not None else torch.seed() % 2**63)
    dims = (x.shape[1],) + hidden + (1,)
    chunk = max(1, _AT_ONCE // max(a * b for a, b in zip(dims, dims[1:])))
    out = [], [], [], []
    with progress_bar(samples, "finite networks", progress) as bar:
        for s in range(0, samples, chunk):
            S = min(chunk, samples - s)
            params = []
            for k in range(len(dims) - 1):
                params += [torch.randn(S, dims[k + 1], dims[k], generator=gen, dtype=D),
                           torch.randn(S, dims[k + 1], 1, generator=gen, dtype=D)]
            for acc, value in zip(out, _evaluate(layers, x, dims, params, dntk)):
                acc.append(value)
            bar.advance(S)
    f, ntk, metric = (torch.cat(v) for v in out[:3])
    return FiniteWidthSamples(f, ntk, metric, hidden, torch.cat(out[3]) if dntk else None, n)


def _evaluate(layers: list, x: torch.Tensor, dims: tuple, params: list, dntk: bool):
    """Outputs, NTKs, readout metrics and (``dntk``) NTK derivatives of the networks whose
    standard-normal parameters are ``params`` (weights and biases of each layer, batched)."""
    if not dntk:
        f, ntk, metric = _networks(layers, x, dims, params)
        return f, ntk, metric, None
    with torch.enable_grad():
        params = [p.requires_grad_(True) for p in params]
        f, ntk, metric = _networks(layers, x, dims, params)
        steps = []
        for c in range(x.shape[0]):
            # each network's output depends on its own parameters only: the gradient of the
            # sum over networks is every network's gradient
            grads = torch.autograd.grad(f[:, c].sum(), params, retain_graph=True)
            _, step = torch.func.jvp(lambda *p: _networks(layers, x, dims, list(p))[1],
                                     tuple(p.detach() for p in params), grads)
            steps.append(step)
    return f.detach(), ntk.detach(), metric.detach(), torch.stack(steps, -1).detach()


def _networks(layers: list, x: torch.Tensor, dims: tuple, params: list):
    """Outputs, NTKs and readout metrics of the networks of ``params`` (see _evaluate)."""
    denses, phis = layers[::2], layers[1::2]
    S = params[0].shape[0]
    h = x.T.expand(S, -1, -1)  # (S, width, N): the layer's input
    metrics, weights, pre = [], [], []
    for k, dense in enumerate(denses):
        cw = float(dense.W_std) ** 2
        cb = 0.0 if dense.b_std is None else float(dense.b_std) ** 2
        W = params[2 * k] * math.sqrt(cw / dims[k])
        metrics.append(cb + cw / dims[k] * torch.einsum("sja,sjb->sab", h, h))
        z = W @ h + math.sqrt(cb) * params[2 * k + 1]
        weights.append(W)
        pre.append(z)
        if k < len(phis):
            h = phis[k].fn(z)
    delta = torch.ones(S, 1, x.shape[0], dtype=D)
    ntk = 0
    for k in range(len(denses) - 1, -1, -1):
        ntk = ntk + torch.einsum("sia,sib->sab", delta, delta) * metrics[k]
        if k > 0:
            delta = (weights[k].transpose(1, 2) @ delta) * phis[k - 1].derivative(pre[k - 1])
    return pre[-1][:, 0, :], ntk, metrics[-1]
