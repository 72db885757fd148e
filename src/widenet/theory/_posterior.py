"""Exact posteriors of finite Bayesian networks against the NNGP posterior (Hron et al. 2020,
"Exact posterior distributions of wide Bayesian neural networks", arXiv 2006.10541).

Under a Gaussian likelihood ``y | f ~ N(f(X), noise_var I)``, drawing parameters from the
prior and accepting each draw with probability ``exp(-||f(X) - y||^2 / (2 noise_var))`` (the
likelihood over its maximum) gives exact, independent samples of the posterior. As the width
grows the posterior of the outputs converges to the Gaussian-process posterior of the
architecture's NNGP kernel; ``exact_posterior`` measures how fast, on a few points.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch
from torch.func import functional_call, vmap

from .._validate import as_tensor, check_float, check_int
from ..errors import ParameterError, ShapeError
from ._progress import progress_bar
from ._spectra import fit_power_law
from ._width import study_inputs
from ._plot import legend, new_axes

__all__ = ["PosteriorStudy", "exact_posterior", "wasserstein_to_gaussian"]

D = torch.float64
GAPS = ("mean_gap", "variance_gap", "wasserstein")


def wasserstein_to_gaussian(samples: Any, mean: float, std: float) -> float:
    """The 1-Wasserstein distance between the empirical distribution of ``samples`` (1-D) and
    ``N(mean, std^2)``, exactly: ``sum_i int_{(i-1)/n}^{i/n} |x_(i) - q(u)| du`` with ``q`` the
    Gaussian quantile function, integrated in closed form."""
    from scipy.special import ndtr, ndtri

    owner = "theory.wasserstein_to_gaussian"
    x = np.sort(np.asarray(as_tensor(owner, "samples", samples).to(D).cpu()).ravel())
    if x.size < 1:
        raise ParameterError(f"{owner}: samples must hold at least one value")
    std = check_float(owner, "std", std, minimum=0.0, exclusive_minimum=True)
    mean = check_float(owner, "mean", mean)
    n = x.size
    a = np.arange(n) / n
    b = np.arange(1, n + 1) / n

    def big_q(u):  # int_0^u q(v) dv = mean u - std phi(ndtri(u)), with phi(ndtri(0 or 1)) = 0
        z = ndtri(np.clip(u, 0.0, 1.0))
        dens = np.where((u <= 0) | (u >= 1), 0.0, np.exp(-0.5 * np.nan_to_num(z, posinf=0, neginf=0) ** 2)
                        / math.sqrt(2 * math.pi))
        return mean * u - std * dens

    star = np.clip(ndtr((x - mean) / std), a, b)
    qa, qb, qs = big_q(a), big_q(b), big_q(star)
    below = x * (star - a) - (qs - qa)  # x >= q on [a, star]
    above = (qb - qs) - x * (b - star)  # q >= x on [star, b]
    return float(np.sum(below + above))


@dataclass(frozen=True)
class PosteriorStudy:
    """Per width: the acceptance rate and number of exact posterior samples, the posterior
    ``mean`` and ``variance`` of every test output ``(W, T)`` and its 1-Wasserstein distance
    to the NNGP posterior marginal ``N(gp_mean, gp_variance)``, all three in units of the GP's
    standard deviation (``gaps``: ``mean_gap`` = RMS of ``|mean - gp_mean| / gp_std``,
    ``variance_gap`` = RMS of ``|variance / gp_variance - 1|``, ``wasserstein`` = mean of
    ``W1 / gp_std``). ``floor`` holds the same gaps for as many exact samples of the GP
    posterior itself: the Monte Carlo noise level no width can go below."""

    widths: torch.Tensor
    acceptance: torch.Tensor
    accepted: torch.Tensor
    mean: torch.Tensor
    variance: torch.Tensor
    gp_mean: torch.Tensor
    gp_variance: torch.Tensor
    gaps: dict
    floor: dict
    samples: tuple

    def slope(self, name: str, widths: Optional[Sequence[int]] = None) -> tuple[float, float]:
        """``(slope, stderr)`` of ``log gap = log C + slope log width`` over ``widths``
        (default all)."""
        if name not in self.gaps:
            raise ParameterError(f"PosteriorStudy: name must be one of {GAPS} (got {name!r})")
        w = self.widths.tolist()
        keep = [i for i, v in enumerate(w) if widths is None or v in widths]
        fit = fit_power_law(self.gaps[name][keep], index=[w[i] for i in keep])
        return -fit.exponent, fit.stderr

    def plot(self, axes: Optional[Sequence[Any]] = None, point: int = 0):
        """Left: the posterior density of test output ``point`` at each width against the
        NNGP posterior. Right: the three gaps against width, with their Monte Carlo floors.
        Returns the figure."""
        if axes is None:
            axes = new_axes(2, figsize=(10, 3.8))
        mu, sd = float(self.gp_mean[point]), math.sqrt(float(self.gp_variance[point]))
        grid = np.linspace(mu - 4 * sd, mu + 4 * sd, 200)
        for w, s in zip(self.widths.tolist(), self.samples):
            axes[0].hist(s[:, point].cpu().numpy(), bins=60, range=(grid[0], grid[-1]), density=True,
                         histtype="step", label=f"width {w}")
        axes[0].plot(grid, np.exp(-0.5 * ((grid - mu) / sd) ** 2) / (sd * math.sqrt(2 * math.pi)), "k--",
                     label="NNGP posterior")
        axes[0].set_xlabel(f"f(x*) at test point {point}")
        axes[0].set_ylabel("posterior density")
        legend(axes[0], fontsize=7)
        w = self.widths.cpu().numpy()
        for name in GAPS:
            line, = axes[1].loglog(w, self.gaps[name].cpu().numpy(), "o-", ms=4, label=name.replace("_", " "))
            axes[1].axhline(float(self.floor[name]), color=line.get_color(), ls=":", lw=0.8)
        axes[1].set_xscale("log", base=2)
        axes[1].set_xlabel("width")
        axes[1].set_ylabel("gap to the NNGP posterior (GP std units)")
        legend(axes[1], fontsize=7, title="dotted: Monte Carlo floor", title_fontsize=7)
        return axes[0].figure


def _prior_laws(owner: str, model: torch.nn.Module) -> dict:
    """Standard deviation of every parameter's i.i.d. Gaussian prior, read from widenet's
    Dense/Conv twins (any other parametrized module has no known prior here)."""
    laws = {}
    for mod_name, mod in model.named_modules():
        own = list(mod.named_parameters(recurse=False))
        if not own:
            continue
        if not hasattr(mod, "W_std") or not hasattr(mod, "parameterization"):
            raise ParameterError(f"{owner}: only architectures whose parameters belong to Dense and Conv layers "
                                 f"have a known prior here (module {mod_name!r} is {type(mod).__name__})")
        if getattr(mod, "init", "gaussian") != "gaussian":
            raise ParameterError(f"{owner}: the prior must be Gaussian (module {mod_name!r} has init={mod.init!r})")
        fan_in = mod.weight[0].numel()
        for pname, p in own:
            full = f"{mod_name}.{pname}" if mod_name else pname
            if mod.parameterization == "ntk":
                laws[full] = 1.0
            else:
                laws[full] = mod.W_std / math.sqrt(fan_in) if pname == "weight" else mod.b_std
    return laws


def _gp_posterior(net, x_train, y, x_test, noise_var):
    k = net.nngp(torch.cat([x_train, x_test])).to(D)
    n = x_train.shape[0]
    ktt, kst, kss = k[:n, :n], k[n:, :n], k[n:, n:]
    chol = torch.linalg.cholesky(ktt + noise_var * torch.eye(n, dtype=D))
    mean = kst @ torch.cholesky_solve(y.to(D), chol)  # (T, O)
    var = torch.diagonal(kss) - (kst * torch.cholesky_solve(kst.T, chol).T).sum(1)
    return mean, var


def _gaps(samples: torch.Tensor, mu: torch.Tensor, var: torch.Tensor) -> dict:
    sd = var.sqrt()
    m, v = samples.mean(0), samples.var(0)
    w1 = torch.as_tensor([wasserstein_to_gaussian(samples[:, j], float(mu[j]), float(sd[j]))
                          for j in range(samples.shape[1])], dtype=D)
    return {"mean_gap": float((((m - mu) / sd) ** 2).mean().sqrt()),
            "variance_gap": float(((v / var - 1) ** 2).mean().sqrt()),
            "wasserstein": float((w1 / sd).mean())}, m, v


def _accepted_draws(owner, net, width, x_train, x_all, yf, size, noise_var, samples, chunk_memory, gen, bar):
    """Test outputs ``(accepted, size)`` of the prior draws of ``net`` (at ``width``) that rejection accepts."""
    n, o = x_train.shape[0], yf.shape[1]
    model = net.module(tuple(x_train.shape[1:]), seed=0, dtype=x_train.dtype, device=x_train.device)
    laws = _prior_laws(owner, model)
    shapes = {name: p.shape for name, p in model.named_parameters()}
    per_draw = sum(math.prod(s) for s in shapes.values()) * x_train.element_size()
    chunk = max(1, min(samples, chunk_memory // max(1, per_draw)))

    def outputs(params):
        return functional_call(model, params, (x_all,)).reshape(x_all.shape[0], -1)

    batched = vmap(outputs)
    accepted, done = [], 0
    while done < samples:
        s = min(chunk, samples - done)
        params = {name: torch.randn((s,) + tuple(shape), generator=gen, dtype=x_train.dtype,
                                    device=x_train.device) * laws[name] for name, shape in shapes.items()}
        with torch.no_grad():
            f = batched(params).to(D)  # (s, N + T, O)
        if f.shape[-1] != o:
            raise ShapeError(f"{owner}: the network has {f.shape[-1]} outputs but y_train has {o}")
        log_like = -((f[:, :n] - yf) ** 2).sum((1, 2)) / (2 * noise_var)
        coins = torch.rand(s, generator=gen, dtype=D, device=x_train.device)
        accepted.append(f[torch.log(coins) < log_like, n:].reshape(-1, size).cpu())
        done += s
        bar.advance(s)
    acc = torch.cat(accepted)
    if acc.shape[0] < 2:
        raise ParameterError(f"{owner}: {acc.shape[0]} of {samples} prior draws were accepted at width "
                             f"{width}; raise samples or noise_var, or use fewer training points")
    return acc


def exact_posterior(architecture: Callable[[int], Any], x_train: Any, y_train: Any, x_test: Any, *,
                    widths: Sequence[int] = (1, 2, 4, 8, 16, 32), noise_var: float = 0.1,
                    samples: int = 1_000_000, seed: int = 0, chunk_memory: int = 2**28,
                    progress: bool = False) -> PosteriorStudy:
    """Exact posterior samples of finite Bayesian networks ``architecture(width)`` by
    rejection sampling from the prior, compared with the NNGP posterior at ``x_test``.

    Args:
        architecture: ``width -> widenet layer`` whose parameters all belong to Dense or Conv
            layers (their Gaussian prior is the finite twin's initialization, in either
            parameterization); the NNGP must not depend on ``width``.
        x_train, y_train: a few training points (``y_train`` ``(N, O)`` or ``(N,)``);
            acceptance falls exponentially with their number.
        x_test: where the posteriors are compared.
        widths: at least three.
        noise_var: the likelihood's variance.
        samples: prior draws per width.
        seed: of the prior draws and the acceptance coins.
        chunk_memory: bytes of parameters drawn at once.
        progress: show a progress bar.
    """
    owner = "theory.exact_posterior"
    if x_test is None:
        raise ParameterError(f"{owner}: x_test is required (the points where the posteriors are compared)")
    x_train, y, x_test = study_inputs(owner, architecture, x_train, y_train, x_test)
    widths = sorted(set(check_int(owner, "widths", w, minimum=1) for w in widths))
    if len(widths) < 3:
        raise ParameterError(f"{owner}: widths must hold at least three distinct widths (got {widths})")
    noise_var = check_float(owner, "noise_var", noise_var, minimum=0.0, exclusive_minimum=True)
    samples = check_int(owner, "samples", samples, minimum=1)
    seed = check_int(owner, "seed", seed, minimum=0)
    chunk_memory = check_int(owner, "chunk_memory", chunk_memory, minimum=1)
    net = architecture(widths[0])
    if not hasattr(net, "nngp") or not hasattr(net, "module"):
        raise ParameterError(f"{owner}: architecture(width) must return a widenet layer (got {type(net).__name__})")
    gp_mean, gp_var = _gp_posterior(net, x_train, y, x_test, noise_var)
    o = y.shape[1]
    mu = gp_mean.reshape(-1)  # (T O), test point major
    var = gp_var.repeat_interleave(o)
    x_all = torch.cat([x_train, x_test])
    yf = y.to(D)
    gen = torch.Generator(device=x_train.device).manual_seed(seed)
    rows = {"acceptance": [], "accepted": [], "mean": [], "variance": [], **{g: [] for g in GAPS}}
    kept = []
    with progress_bar(len(widths) * samples, "rejection sampling", enabled=progress) as bar:
        for width in widths:
            acc = _accepted_draws(owner, architecture(width), width, x_train, x_all, yf, mu.numel(), noise_var,
                                  samples, chunk_memory, gen, bar)
            gaps, m, v = _gaps(acc, mu.cpu(), var.cpu())
            kept.append(acc)
            rows["acceptance"].append(acc.shape[0] / samples)
            rows["accepted"].append(acc.shape[0])
            rows["mean"].append(m)
            rows["variance"].append(v)
            for g in GAPS:
                rows[g].append(gaps[g])
    # The Monte Carlo floor: the same statistics for exact GP posterior samples, as many as the
    # smallest accepted count.
    size = min(rows["accepted"])
    exact = mu.cpu() + var.cpu().sqrt() * torch.randn(size, mu.numel(), generator=torch.Generator().manual_seed(seed),
                                                      dtype=D)
    floor, _, _ = _gaps(exact, mu.cpu(), var.cpu())
    return PosteriorStudy(torch.as_tensor(widths), torch.as_tensor(rows["acceptance"], dtype=D),
                          torch.as_tensor(rows["accepted"]), torch.stack(rows["mean"]), torch.stack(rows["variance"]),
                          mu.cpu(), var.cpu(), {g: torch.as_tensor(rows[g], dtype=D) for g in GAPS}, floor,
                          tuple(kept))
