"""Signal propagation in deep, infinitely wide networks: the mean-field maps of Poole et al.
2016 (arXiv 1606.05340) and Schoenholz et al. 2017 (arXiv 1611.01232), for any widenet
nonlinearity (its own kernel rule: closed form or quadrature).

A fully connected layer ``h^{l+1} = W phi(h^l) + b`` with ``W_ij ~ N(0, weight_var / N)`` and
``b_i ~ N(0, bias_var)`` maps the variance ``q`` of a pre-activation and the correlation ``c``
of two inputs' pre-activations as:

    q' = weight_var E[phi(sqrt(q) z)^2] + bias_var                        (length map)
    c' = (weight_var E[phi(u1) phi(u2)] + bias_var) / q*,                 (correlation map)
         (u1, u2) ~ N(0, q* [[1, c], [c, 1]])

Fixed points ``q*`` and ``c*``; the slope of the correlation map at ``c = 1``,
``chi1 = weight_var E[phi'(sqrt(q*) z)^2]``, separates the ordered phase (``chi1 < 1``,
``c* = 1``) from the chaotic one (``chi1 > 1``, ``c* < 1``); the depth scales
``xi_q = -1 / log(chi_q)`` (``chi_q`` the slope of the length map at ``q*``) and
``xi_c = -1 / log(weight_var E[phi'(u1) phi'(u2)])`` at ``(q*, c*)`` say over how many layers
deviations from the fixed points decay; ``xi_c`` diverges on the critical line ``chi1 = 1``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Tuple

import numpy as np
import torch

from ..errors import ParameterError
from ._plot import legend, new_axes

D = torch.float64
_TINY = 1e-100  # stands for a zero variance where a correlation-1 slope is evaluated


def _phi(owner: str, phi: Any):
    from ..layers import Nonlinearity

    if isinstance(phi, type):
        phi = phi()
    if not isinstance(phi, Nonlinearity):
        raise ParameterError(
            f"{owner}: phi must be a widenet nonlinearity such as wn.Relu(), wn.Tanh() or wn.Erf() "
            f"(got {type(phi).__name__})"
        )
    return phi


def _variances(owner: str, weight_var: Any, bias_var: Any) -> Tuple[torch.Tensor, torch.Tensor]:
    w = torch.as_tensor(np.asarray(weight_var, dtype=float), dtype=D)
    b = torch.as_tensor(np.asarray(bias_var, dtype=float), dtype=D)
    for name, value in (("weight_var", w), ("bias_var", b)):
        if not bool(torch.isfinite(value).all()) or bool((value < 0).any()):
            raise ParameterError(f"{owner}: {name} must hold finite variances >= 0 (got {value.tolist()})")
    if bool((w == 0).any()):
        raise ParameterError(f"{owner}: weight_var must be > 0 (got {w.tolist()})")
    return torch.broadcast_tensors(w, b)


def dual(phi: Any, q1: Any, q2: Any, k: Any) -> Tuple[torch.Tensor, torch.Tensor]:
    """``E[phi(u) phi(v)]`` and ``E[phi'(u) phi'(v)]`` for ``(u, v) ~ N(0, [[q1, k], [k, q2]])``,
    elementwise over broadcast tensors, by the layer's own kernel rule
    (``widenet.layers.Nonlinearity.dual``)."""
    phi = _phi("theory.dual", phi)
    return phi.dual(*(torch.as_tensor(v, dtype=D) for v in (q1, q2, k)))


def length_map(phi: Any, weight_var: Any, bias_var: Any, q: Any) -> torch.Tensor:
    """``q' = weight_var E[phi(sqrt(q) z)^2] + bias_var`` (Poole et al. 2016, eq. 3)."""
    phi = _phi("theory.length_map", phi)
    w, b = _variances("theory.length_map", weight_var, bias_var)
    q = torch.as_tensor(q, dtype=D)
    w, b, q = torch.broadcast_tensors(w, b, q)
    return w * phi.variance(q) + b


def correlation_map(phi: Any, weight_var: Any, bias_var: Any, c: Any, q: Any = None) -> torch.Tensor:
    """``c' = (weight_var E[phi(u1) phi(u2)] + bias_var) / q'`` for pre-activations of variance
    ``q`` (default ``q*``) and correlation ``c`` (Poole et al. 2016, eq. 5)."""
    owner = "theory.correlation_map"
    phi = _phi(owner, phi)
    w, b = _variances(owner, weight_var, bias_var)
    q = fixed_point_q(phi, w, b) if q is None else torch.as_tensor(q, dtype=D)
    c = torch.as_tensor(c, dtype=D)
    w, b, q, c = torch.broadcast_tensors(w, b, q, c)
    t, _ = dual(phi, q, q, c * q)
    return (w * t + b) / (w * phi.variance(q) + b)


def fixed_point_q(phi: Any, weight_var: Any, bias_var: Any, *, tol: float = 1e-14,
                  q_max: float = 1e12) -> torch.Tensor:
    """The fixed point ``q*`` of the length map (broadcast over the variances), by bracketing
    and bisection of ``L(q) - q``; ``inf`` where the variance grows without bound (e.g. ReLU
    with ``weight_var > 2``, or ``= 2`` with a bias)."""
    owner = "theory.fixed_point_q"
    phi = _phi(owner, phi)
    w, b = _variances(owner, weight_var, bias_var)

    def g(q):
        return length_map(phi, w, b, q) - q

    lo = torch.zeros_like(w)
    hi = torch.ones_like(w)
    # The map never falls below bias_var + weight_var phi(0)^2 >= 0 at q = 0; grow hi until
    # L(hi) < hi (a bracket), or give up at q_max: no finite fixed point.
    for _ in range(200):
        up = g(hi) >= 0
        if not bool(up.any()) or bool((hi[up] >= q_max).all()):
            break
        lo = torch.where(up, hi, lo)
        hi = torch.where(up & (hi < q_max), hi * 2, hi)
    unbounded = g(hi) >= 0
    zero = g(torch.zeros_like(w)) <= 0  # L(0) = 0: q* = 0 (no bias, phi(0) = 0, ordered)
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        above = g(mid) >= 0
        lo, hi = torch.where(above, mid, lo), torch.where(above, hi, mid)
        if bool(((hi - lo) <= tol * hi.clamp_min(1e-300)).all()):
            break
    q = 0.5 * (lo + hi)
    q = torch.where(zero, torch.zeros_like(q), q)
    return torch.where(unbounded & ~zero, torch.full_like(q, float("inf")), q)


def _slopes(phi, w, b, q):
    """chi1 and chi_q at q (q > 0 stands in for q = 0 in the slope at c = 1)."""
    qs = q.clamp_min(_TINY)
    _, tdot = dual(phi, qs, qs, qs)
    chi1 = w * tdot
    qd = qs.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        out = length_map(phi, w, b, qd)
        (grad,) = torch.autograd.grad(out.sum(), qd)
    return chi1, grad.detach()


def fixed_point_c(phi: Any, weight_var: Any, bias_var: Any, q: Any = None, *, tol: float = 1e-13) -> torch.Tensor:
    """The stable fixed point ``c*`` of the correlation map: 1 in the ordered phase
    (``chi1 <= 1``), else the root of ``C(c) = c`` below 1, by bisection on ``[-1, 1)``."""
    owner = "theory.fixed_point_c"
    phi = _phi(owner, phi)
    w, b = _variances(owner, weight_var, bias_var)
    q = fixed_point_q(phi, w, b) if q is None else torch.as_tensor(q, dtype=D).expand_as(w)
    chi1, _ = _slopes(phi, w, b, q)
    finite = torch.isfinite(q) & (q > 0)
    qf = torch.where(finite, q, torch.ones_like(q))

    def g(c):
        return correlation_map(phi, w, b, c, qf) - c

    lo, hi = -torch.ones_like(w), torch.full_like(w, 1 - 1e-7)
    for _ in range(80):
        mid = 0.5 * (lo + hi)
        above = g(mid) >= 0
        lo, hi = torch.where(above, mid, lo), torch.where(above, hi, mid)
        if bool(((hi - lo) <= tol).all()):
            break
    c = 0.5 * (lo + hi)
    ordered = chi1 <= 1
    c = torch.where(ordered, torch.ones_like(c), c)
    return torch.where(finite | ordered, c, torch.full_like(c, float("nan")))


@dataclass(frozen=True)
class SignalPropagation:
    """Mean-field quantities at each (weight_var, bias_var) (arrays broadcast from them)."""

    weight_var: torch.Tensor
    bias_var: torch.Tensor
    q_star: torch.Tensor
    c_star: torch.Tensor
    chi1: torch.Tensor  # slope of the correlation map at c = 1 (order < 1 < chaos)
    chi_c: torch.Tensor  # slope of the correlation map at c*
    chi_q: torch.Tensor  # slope of the length map at q*
    xi_q: torch.Tensor  # depth scale of the length map
    xi_c: torch.Tensor  # depth scale of correlations (diverges at chi1 = 1)

    @property
    def phase(self) -> np.ndarray:
        """"ordered", "critical" or "chaotic" at each point (critical within 1e-9 of chi1 = 1)."""
        chi = self.chi1.numpy()
        return np.where(np.abs(chi - 1) <= 1e-9, "critical", np.where(chi < 1, "ordered", "chaotic"))


def signal_propagation(phi: Any, weight_var: Any, bias_var: Any) -> SignalPropagation:
    """``q*``, ``c*``, ``chi1``, the slopes and the depth scales ``xi_q``, ``xi_c`` of a deep
    fully connected network with nonlinearity ``phi`` (Poole et al. 2016; Schoenholz et al.
    2017, eqs. 4 and 9), broadcast over ``weight_var`` and ``bias_var`` (sigma_w^2, sigma_b^2)."""
    owner = "theory.signal_propagation"
    phi = _phi(owner, phi)
    w, b = _variances(owner, weight_var, bias_var)
    q = fixed_point_q(phi, w, b)
    c = fixed_point_c(phi, w, b, q)
    finite = torch.isfinite(q)
    qf = torch.where(finite, q, torch.ones_like(q))
    chi1, chi_q = _slopes(phi, w, b, qf)
    qs = qf.clamp_min(_TINY)
    cf = torch.where(torch.isnan(c), torch.ones_like(c), c)
    _, tdot = dual(phi, qs, qs, cf * qs)
    chi_c = w * tdot
    nan = torch.full_like(q, float("nan"))
    chi1, chi_q, chi_c = (torch.where(finite, v, nan) for v in (chi1, chi_q, chi_c))
    xi_q = -1 / torch.log(chi_q)  # inf where a slope is exactly 1 (critical)
    xi_c = -1 / torch.log(chi_c)
    return SignalPropagation(w, b, q, c, chi1, chi_c, chi_q, xi_q, xi_c)


def critical_line(phi: Any, bias_var: Any, *, bracket: Tuple[float, float] = (1e-3, 20.0),
                  tol: float = 1e-13) -> torch.Tensor:
    """``weight_var`` at which ``chi1 = 1`` for each ``bias_var`` (the order-to-chaos
    transition, Poole et al. 2016 fig. 2; Schoenholz et al. 2017 fig. 1), by bisection within
    ``bracket``; NaN where ``chi1 - 1`` does not change sign in it or ``q*`` is infinite there."""
    owner = "theory.critical_line"
    phi = _phi(owner, phi)
    b = torch.as_tensor(np.asarray(bias_var, dtype=float), dtype=D)
    lo = torch.full_like(b, float(bracket[0]))
    hi = torch.full_like(b, float(bracket[1]))

    def excess(w):
        q = fixed_point_q(phi, w, b)
        chi1, _ = _slopes(phi, w, b, torch.where(torch.isfinite(q), q, torch.ones_like(q)))
        # Beyond q* = inf the network is past the transition: count it as chaotic.
        return torch.where(torch.isfinite(q), chi1 - 1, torch.ones_like(chi1))

    f_lo, f_hi = excess(lo), excess(hi)
    valid = (f_lo < 0) & (f_hi >= 0)
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        above = excess(mid) >= 0
        lo, hi = torch.where(above, lo, mid), torch.where(above, mid, hi)
        if bool(((hi - lo) <= tol * hi).all()):
            break
    w = 0.5 * (lo + hi)
    return torch.where(valid, w, torch.full_like(w, float("nan")))


@dataclass(frozen=True)
class PhaseDiagram:
    """``signal_propagation`` on a ``(bias_var, weight_var)`` grid (rows: bias_var), and
    the critical line; ``plot()`` draws it."""

    weight_vars: np.ndarray
    bias_vars: np.ndarray
    result: SignalPropagation
    critical_weight_var: np.ndarray
    name: str

    def plot(self, ax: Optional[Any] = None, levels=(1, 2, 5, 10, 20, 50)):
        """``xi_c`` as colour with contours at ``levels`` layers, and the critical line
        ``chi1 = 1`` between the ordered and chaotic phases. Returns the matplotlib figure."""
        from matplotlib.colors import LogNorm

        if ax is None:
            ax = new_axes(figsize=(5.5, 4.2))
        xi = np.clip(self.result.xi_c.numpy(), 1e-2, 1e3)
        mesh = ax.pcolormesh(self.weight_vars, self.bias_vars, xi, norm=LogNorm(vmin=0.5, vmax=1e3), shading="auto",
                             cmap="viridis")
        ax.figure.colorbar(mesh, ax=ax, label=r"depth scale $\xi_c$ (layers)")
        contours = ax.contour(self.weight_vars, self.bias_vars, xi, levels=list(levels), colors="white",
                              linewidths=0.7)
        ax.clabel(contours, fmt="%g", fontsize=7)
        ok = np.isfinite(self.critical_weight_var)
        ax.plot(self.critical_weight_var[ok], self.bias_vars[ok], color="red", lw=2, label=r"$\chi_1 = 1$")
        ax.set_xlabel(r"$\sigma_w^2$")
        ax.set_ylabel(r"$\sigma_b^2$")
        ax.set_title(f"{self.name}: ordered (left) and chaotic (right) phases")
        legend(ax, loc="upper left", fontsize=8)
        return ax.figure


def phase_diagram(phi: Any, weight_vars: Any, bias_vars: Any) -> PhaseDiagram:
    """The order-to-chaos phase diagram of a deep network with nonlinearity ``phi`` over a
    grid of ``weight_vars`` x ``bias_vars`` (Poole et al. 2016 fig. 2; Schoenholz et al. 2017
    fig. 1): every ``SignalPropagation`` quantity as arrays ``(len(bias_vars),
    len(weight_vars))`` and the critical line."""
    phi = _phi("theory.phase_diagram", phi)
    wv = np.asarray(weight_vars, dtype=float)
    bv = np.asarray(bias_vars, dtype=float)
    if wv.ndim != 1 or bv.ndim != 1 or wv.size < 2 or bv.size < 2:
        raise ParameterError("theory.phase_diagram: weight_vars and bias_vars must be 1-D grids of at least 2 values")
    result = signal_propagation(phi, wv[None, :], bv[:, None])
    critical = critical_line(phi, bv, bracket=(float(wv.min()) / 2, float(wv.max()) * 2)).numpy()
    return PhaseDiagram(wv, bv, result, critical, repr(phi))


@dataclass(frozen=True)
class DepthProfile:
    """How the NNGP and NTK of a network on a set of inputs evolve with depth (Xiao et al.
    2020, arXiv 1912.13053): per depth, the kernels' condition numbers (trainability: the NTK's
    sets how fast gradient descent converges), the mean off-diagonal NNGP correlation, and the
    largest change of the NNGP correlation matrix from the previous depth, whose exponential
    decay rate is the network's correlation depth scale (``depth_scale``)."""

    depths: np.ndarray
    nngp_condition: np.ndarray
    ntk_condition: np.ndarray
    mean_correlation: np.ndarray
    correlation_change: np.ndarray

    @property
    def depth_scale(self) -> float:
        """``xi`` from a log-linear fit ``correlation_change ~ exp(-depth / xi)`` over the
        second half of the depths (where the decay is asymptotic); inf if it does not decay."""
        d, change = self.depths[1:], self.correlation_change[1:]
        keep = (d >= d[len(d) // 2]) & (change > 0) & np.isfinite(change)
        if keep.sum() < 2:
            return float("nan")
        slope = np.polyfit(d[keep], np.log(change[keep]), 1)[0]
        return float("inf") if slope >= 0 else float(-1 / slope)

    def plot(self, axes: Optional[Any] = None):
        """Condition numbers and correlation changes against depth (log scales)."""
        if axes is None:
            axes = new_axes(2, figsize=(9, 3.5))
        axes[0].semilogy(self.depths, self.nngp_condition, label="NNGP")
        axes[0].semilogy(self.depths, self.ntk_condition, label="NTK")
        axes[0].set_xlabel("depth")
        axes[0].set_ylabel("condition number")
        legend(axes[0])
        axes[1].semilogy(self.depths[1:], self.correlation_change[1:])
        axes[1].set_xlabel("depth")
        axes[1].set_ylabel("max change of NNGP correlations")
        axes[1].set_title(f"depth scale {self.depth_scale:.3g} layers")
        return axes[0].figure


def depth_profile(block: Any, x: Any, depth: int, *, stem: Any = None) -> DepthProfile:
    """``DepthProfile`` of ``stem`` followed by ``d`` copies of ``block`` for
    ``d = 0 .. depth``, on the inputs ``x`` (all pairs at once, so keep ``x`` to a few hundred
    points). The kernels are carried from one depth to the next (each block applied once), so
    the whole profile costs one depth-``depth`` kernel. For example, a deep tanh network:
    ``depth_profile(wn.Serial(wn.Tanh(), wn.Dense(1, 1.2, 0.2)), x, 50, stem=wn.Dense(1, 1.2, 0.2))``.
    The network's outputs must have no spatial axes (pool or flatten them in ``stem``/``block``
    otherwise)."""
    from .._validate import as_inputs, as_tensor, check_int
    from ..layers import Identity, Layer

    owner = "theory.depth_profile"
    for name, layer in (("block", block), ("stem", stem)):
        if layer is not None and not isinstance(layer, Layer):
            raise ParameterError(f"{owner}: {name} must be a widenet layer (got {type(layer).__name__})")
    if block is None:
        raise ParameterError(f"{owner}: block must be a widenet layer (got None)")
    depth = check_int(owner, "depth", depth, minimum=1)
    x = as_inputs(owner, "x", x)
    kernel = (Identity() if stem is None else stem).kernel(x, layout="diagonal")
    cond_k, cond_t, mean_c, change = [], [], [], []
    previous = None
    off = ~torch.eye(x.shape[0], dtype=torch.bool, device=x.device)
    for d in range(depth + 1):
        if d:
            kernel = block.apply(kernel)
        nngp, ntk = kernel.nngp.to(D), kernel.ntk.to(D)
        if nngp.ndim != 2:
            raise ParameterError(
                f"{owner}: the network's kernel must be (N, N) at every depth (got {tuple(nngp.shape)}): pool or "
                f"flatten spatial axes inside stem and block"
            )
        nngp, ntk = 0.5 * (nngp + nngp.T), 0.5 * (ntk + ntk.T)
        for matrix, out in ((nngp, cond_k), (ntk, cond_t)):
            ev = torch.linalg.eigvalsh(matrix)
            out.append(float(ev[-1] / ev[0]) if float(ev[0]) > 0 else float("inf"))
        s = nngp.diagonal().clamp_min(1e-300).sqrt()
        corr = nngp / (s[:, None] * s[None, :])
        mean_c.append(float(corr[off].mean()))
        change.append(float("nan") if previous is None else float((corr - previous).abs().max()))
        previous = corr
    return DepthProfile(np.arange(depth + 1), np.array(cond_k), np.array(cond_t), np.array(mean_c), np.array(change))
