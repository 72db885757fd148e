"""Monte Carlo over finite MLPs: the samples ``theory.finite_width``'s predictions describe."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import torch

from .._validate import as_inputs, check_int
from ..errors import ParameterError, ShapeError
from ._progress import progress_bar

__all__ = ["FiniteWidthSamples", "FiniteWidthTraining", "finite_width_samples", "finite_width_training"]

D = torch.float64
OWNER = "theory.finite_width_samples"
# float64 entries of the weight matrices drawn at once
_AT_ONCE = 1 << 24
# networks whose ddNTKs are computed at once
_DD_AT_ONCE = 32


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
        ddntk: with ``ddntk=True``, ``(I, II)`` each ``(S, N, N, N, N)``: every network's two
            ddNTKs ``I_abcd = d^3 f_a [g_b, g_c, g_d]`` and ``II_abcd = <Hess f_a g_c,
            Hess f_b g_d>`` (``g_a`` the gradient of f_a), by forward-mode derivatives of
            backpropagated gradients (``torch.func``); else None.
    """

    outputs: torch.Tensor
    ntk: torch.Tensor
    metric: torch.Tensor
    widths: tuple
    dntk: Optional[torch.Tensor] = None
    n: Optional[int] = None
    ddntk: Optional[tuple] = None

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
                         seed: Optional[int] = None, dntk: bool = False, ddntk: bool = False,
                         progress: bool = False) -> FiniteWidthSamples:
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
        ddntk: also both ddNTKs of every network (``N^2`` nested forward-mode products per
            network: for few inputs and moderate widths).
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
    out = [], [], [], [], []
    with progress_bar(samples, "finite networks", progress) as bar:
        for s in range(0, samples, chunk):
            S = min(chunk, samples - s)
            params = []
            for k in range(len(dims) - 1):
                params += [torch.randn(S, dims[k + 1], dims[k], generator=gen, dtype=D),
                           torch.randn(S, dims[k + 1], 1, generator=gen, dtype=D)]
            for acc, value in zip(out, _evaluate(layers, x, dims, params, dntk)):
                acc.append(value)
            if ddntk:  # nested forward modes hold many copies of the parameters: few networks at once
                parts = [_ddntk(layers, x, dims, [p[i:i + _DD_AT_ONCE].detach() for p in params]) for i in range(0, S, _DD_AT_ONCE)]
                out[4].append(tuple(torch.cat([q[k] for q in parts]) for k in range(2)))
            bar.advance(S)
    f, ntk, metric = (torch.cat(v) for v in out[:3])
    dd = tuple(torch.cat([o[i] for o in out[4]]) for i in range(2)) if ddntk else None
    return FiniteWidthSamples(f, ntk, metric, hidden, torch.cat(out[3]) if dntk else None, n, dd)


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


def _ddntk(layers: list, x: torch.Tensor, dims: tuple, params: list) -> tuple:
    """Both ddNTKs ``(S, N, N, N, N)`` of the networks of ``params``, one network at a time
    under ``vmap``: gradients ``g_c`` by reverse mode, ``Hess f . g_c`` by forward mode over
    them, ``d^3 f [g_b, ., g_d]`` by a second forward-mode product."""
    from torch.func import jacrev, jvp, vmap

    N = x.shape[0]

    def f(p):
        return _networks(layers, x, dims, [q[None] for q in p])[0][0]

    def dot(u, v):  # (N, ...) x (N, ...) over the parameters -> (N, N)
        return sum(torch.einsum("a...,b...->ab", s, t) for s, t in zip(u, v))

    def one(*p):
        J = jacrev(f)(p)  # per parameter (N, *shape)
        g = [tuple(j[c] for j in J) for c in range(N)]
        hv = [jvp(lambda *q: jacrev(f)(q), p, g[c])[1] for c in range(N)]  # Hess f_a g_c
        II = torch.stack([torch.stack([dot(hv[c], hv[d]) for d in range(N)], -1) for c in range(N)], -2)
        rows = []
        for b in range(N):
            for d in range(N):
                third = jvp(lambda *q: jvp(lambda *r: jacrev(f)(r), q, g[b])[1], p, g[d])[1]
                rows.append(dot(third, J))  # [a, c] = d^3 f_a [g_b, g_c, g_d]
        I = torch.stack(rows).reshape(N, N, N, N).permute(2, 0, 3, 1)
        return I, II

    return vmap(one)(*params)


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


@dataclass(frozen=True)
class FiniteWidthTraining:
    """Finite networks trained by full-batch gradient descent, from
    :func:`finite_width_training`: ``outputs`` ``(S, T, M)`` on the M test inputs after each
    of the T requested step counts ``steps``, for S networks drawn in antithetic pairs (rows
    ``2i`` and ``2i + 1`` differ in the sign of the readout's weights and bias: the same
    distribution, and their mean cancels the initial outputs' noise). ``mean`` ``(T, M)`` and
    ``stderr`` ``(T, M)`` average the pairs first."""

    outputs: torch.Tensor
    steps: tuple
    widths: tuple
    n: int

    @property
    def mean(self) -> torch.Tensor:
        return self.outputs.mean(0)

    @property
    def stderr(self) -> torch.Tensor:
        pairs = self.outputs.reshape(-1, 2, *self.outputs.shape[1:]).mean(1)
        return pairs.std(0) / math.sqrt(len(pairs))


def finite_width_training(net, x: Any, y: Any, x_test: Any, n: int, samples: int, lr: float, t: Any, *,
                          widths: Optional[Sequence[float]] = None, seed: Optional[int] = None,
                          progress: bool = False) -> FiniteWidthTraining:
    """Train ``samples`` finite networks of width scale ``n`` from initialization by full-batch
    gradient descent on ``1/2 sum_a (f(x_a) - y_a)^2`` with learning rate ``lr`` (on the
    standard-normal parameters of the ntk parameterization, as :func:`finite_width_samples`
    draws them) and record their outputs on ``x_test`` after each step count in ``t``: the
    Monte Carlo counterpart of :meth:`FiniteWidth.trained_mean`. Networks come in
    antithetic pairs (see :class:`FiniteWidthTraining`); vectorized over networks, CPU,
    float64.

    Args:
        net: an MLP ``Dense -> phi -> ... -> Dense`` (ntk parameterization, one output).
        x: training inputs ``(N, d)``; y: targets ``(N,)``.
        x_test: ``(M, d)``.
        n: width scale (>= 1); samples: an even number of networks (>= 2).
        lr: learning rate (> 0).
        t: a step count or a sequence of them.
        widths: relative hidden widths; seed: the generator's seed; progress: a progress bar.

    Example:

        >>> net = wn.Serial(wn.Dense(1, 1.5), wn.Tanh(), wn.Dense(1, 1.5), wn.Tanh(), wn.Dense(1))
        >>> x, y = torch.randn(4, 2), torch.randn(4)
        >>> mc = wn.theory.finite_width_training(net, x, y, torch.randn(3, 2), n=32, samples=64, lr=0.2, t=[0, 10], seed=0)
        >>> mc.outputs.shape, mc.mean.shape
        (torch.Size([64, 2, 3]), torch.Size([2, 3]))
    """
    from ._finite_width import _check_widths, _flat_layers
    from ._fw_training import _steps

    owner = "theory.finite_width_training"
    layers = _flat_layers(net, owner, smooth=False)
    x = as_inputs(owner, "x", x).to(device="cpu", dtype=D)
    xt = as_inputs(owner, "x_test", x_test).to(device="cpu", dtype=D)
    y = as_inputs(owner, "y", y).to(device="cpu", dtype=D).reshape(-1)
    if x.ndim != 2 or xt.ndim != 2 or xt.shape[1] != x.shape[1] or y.shape != (x.shape[0],):
        raise ShapeError(f"{owner}: need x (N, d), y (N,) and x_test (M, d) (got {tuple(x.shape)}, "
                         f"{tuple(y.shape)}, {tuple(xt.shape)})")
    n = check_int(owner, "n", n, minimum=1)
    samples = check_int(owner, "samples", samples, minimum=2)
    if samples % 2:
        raise ParameterError(f"{owner}: samples must be even (antithetic pairs; got {samples})")
    lr = float(lr)
    if not math.isfinite(lr) or lr <= 0:
        raise ParameterError(f"{owner}: lr must be a positive number (got {lr!r})")
    steps, _ = _steps(t)
    rho = _check_widths(widths, len(layers) // 2, owner)
    hidden = tuple(max(1, round(r * n)) for r in rho)
    gen = torch.Generator().manual_seed(seed if seed is not None else torch.seed() % 2**63)
    dims = (x.shape[1],) + hidden + (1,)
    xs, N, last = torch.cat([x, xt]), x.shape[0], max(steps)
    chunk = max(2, (_AT_ONCE // 8 // max(a * b for a, b in zip(dims, dims[1:]))) // 2 * 2)
    out = []
    with progress_bar(samples, "trained networks", progress) as bar:
        for s in range(0, samples, chunk):
            S = min(chunk, samples - s)
            params = []
            for k in range(len(dims) - 1):
                W = torch.randn(S // 2, dims[k + 1], dims[k], generator=gen, dtype=D)
                b = torch.randn(S // 2, dims[k + 1], 1, generator=gen, dtype=D)
                sign = -1.0 if k == len(dims) - 2 else 1.0
                params += [torch.stack([W, sign * W], 1).reshape(S, *W.shape[1:]),
                           torch.stack([b, sign * b], 1).reshape(S, *b.shape[1:])]
            record = []
            for step in range(last + 1):
                with torch.enable_grad():
                    params = [p.detach().requires_grad_(True) for p in params]
                    f = _networks(layers, xs, dims, params)[0]
                    if step in steps:
                        record.append(f[:, N:].detach())
                    if step == last:
                        break
                    loss = 0.5 * ((f[:, :N] - y) ** 2).sum()
                    grads = torch.autograd.grad(loss, params)
                params = [p.detach() - lr * g for p, g in zip(params, grads)]
            out.append(torch.stack(record, 1)[:, [sorted(set(steps)).index(v) for v in steps]])
            bar.advance(S)
    return FiniteWidthTraining(torch.cat(out), steps, hidden, n)
