"""Nonlinearities without closed forms: Gauss-Hermite quadrature over the bivariate Gaussian."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from functools import partial
from typing import Callable, Optional

import torch

from .._engine import Tile, exact, safe_sqrt, scratch
from .._hermite import gauss_hermite
from .._validate import check_int
from ..errors import AccuracyWarning, ParameterError
from .nonlinearity import Nonlinearity, autograd_derivative

__all__ = ["Elementwise"]

# Bound on the (entries x degree^2) evaluations held in memory at once.
_QUADRATURE_CHUNK = 1 << 21
# The relative accuracy below which a rule warns (AccuracyWarning).
ACCURACY = 1e-6


@dataclass(frozen=True)
class Elementwise(Nonlinearity):
    """Any elementwise nonlinearity ``fn`` (a torch callable): by its closed-form dual when
    you give one, by Gauss-Hermite quadrature otherwise.

    **Closed form.** ``nngp_fn(cov12, var1, var2)`` returns ``T = E[fn(u) fn(v)]`` for
    ``(u, v) ~ N(0, [[var1, cov12], [cov12, var2]])``, elementwise over three tensors of equal
    shape, written with torch operations (so that kernels stay differentiable). The NTK's
    ``Tdot = E[fn'(u) fn'(v)]`` is ``d nngp_fn / d cov12`` (Price's theorem): give it as
    ``d_nngp_fn`` (same signature) or let autograd differentiate ``nngp_fn``. The variance
    rule is ``nngp_fn(q, q, q)``. At construction the closed form is checked against
    quadrature of ``fn`` at degree 200 on 24 random covariances (variances 0.3 to 3,
    correlations up to 0.95), and a given ``d_nngp_fn`` against autograd of ``nngp_fn``; a
    disagreement beyond 1e-3 of the kernel's scale plus three times the quadrature's own
    error (estimated at half the degree: kinked functions converge slowly), or 1e-6 for the
    derivative, raises ``ParameterError`` with the covariance and both values. ``fn`` still drives the twin.

    **Quadrature.** With ``u = sqrt(q1) z1`` and ``v = sqrt(q2) (rho z1 + sqrt(1 - rho^2) z2)``,
    ``rho = K / sqrt(q1 q2)``, the rules ``T = E[fn(u) fn(v)]`` and ``Tdot = E[fn'(u) fn'(v)]``
    are evaluated with a ``degree x degree`` tensor-product Gauss-Hermite rule
    (Han et al. 2022, arXiv 2209.04121). Smooth functions of moderate variance reach a
    relative error near 1e-7 at the default degree; at large variances a smooth function looks
    kinked to the nodes and the error grows (percents for tanh at variance 30), and every call
    checks its own variances against a rule of twice the degree and issues an
    ``AccuracyWarning`` with the numbers where they move by more than 1e-6. Kinked functions
    (ReLU, sign) converge slowly: use their closed forms, and ``wn.Tanh`` for tanh. The cost
    is ``degree^2`` evaluations of ``fn`` per kernel entry.

    Args:
        fn: the nonlinearity, applied elementwise to tensors.
        nngp_fn: its dual in closed form, ``(cov12, var1, var2) -> T``, or None (quadrature).
        d_nngp_fn: ``(cov12, var1, var2) -> dT/dcov12``, or None (autograd of ``nngp_fn``).
        dfn: the derivative of ``fn`` for quadrature's ``Tdot``; by default autograd.
        degree: number of quadrature nodes per dimension (>= 2).
        name: a label for reprs.

    Example:

        >>> softplus = wn.Elementwise(torch.nn.functional.softplus, name="softplus")
        >>> net = wn.Serial(wn.Dense(512), softplus, wn.Dense(1))

        A closed form: ``x -> x^2`` has ``E[u^2 v^2] = var1 var2 + 2 cov12^2``:

        >>> square = wn.Elementwise(torch.square, nngp_fn=lambda c, v1, v2: v1 * v2 + 2 * c * c)
        >>> wn.Serial(wn.Dense(1), square, wn.Dense(1)).kernel(torch.ones(1, 1)).nngp
        tensor([[3.]])
    """

    fn: Callable[[torch.Tensor], torch.Tensor] = field(default=torch.tanh)
    nngp_fn: Optional[Callable[..., torch.Tensor]] = None
    d_nngp_fn: Optional[Callable[..., torch.Tensor]] = None
    dfn: Optional[Callable[[torch.Tensor], torch.Tensor]] = None
    degree: int = 96
    name: Optional[str] = None

    def __post_init__(self) -> None:
        for label in ("fn", "nngp_fn", "d_nngp_fn", "dfn"):
            value = getattr(self, label)
            if not callable(value) and not (value is None and label != "fn"):
                rule = "a callable on tensors" + ("" if label == "fn" else " or None")
                raise ParameterError(f"{self._name}: {label} must be {rule} (got {value!r})")
        if self.d_nngp_fn is not None and self.nngp_fn is None:
            raise ParameterError(f"{self._name}: d_nngp_fn needs nngp_fn (the closed form it differentiates); "
                                 "give both, or neither for quadrature")
        object.__setattr__(self, "degree", check_int(self._name, "degree", self.degree, minimum=2))
        if self.nngp_fn is not None:
            _validate_closed_form(self)

    def __repr__(self) -> str:
        label = self.name or getattr(self.fn, "__name__", repr(self.fn))
        if self.nngp_fn is not None:
            return f"{type(self).__name__}({label}, closed form)"
        return f"{type(self).__name__}({label}, degree={self.degree})"

    # ---- the closed form, when given ------------------------------------------------------------
    def _closed_tdot(self, K: torch.Tensor, q1: torch.Tensor, q2: torch.Tensor) -> torch.Tensor:
        if self.d_nngp_fn is not None:
            return self.d_nngp_fn(K, q1, q2)
        return autograd_derivative(lambda k: self.nngp_fn(k, q1, q2))(K)

    def _closed(self, f, K: torch.Tensor, q1: torch.Tensor, q2: torch.Tensor) -> torch.Tensor:
        if not exact.active():
            return f(K, q1, q2)
        # Reproducible mode: the vectorized path, and both orders of the pair averaged, so
        # that (x', x) gives the value of (x, x') bit for bit whatever the user's function.
        return (exact.elementwise(f, K, q1, q2) + exact.elementwise(f, K, q2, q1)) * 0.5

    def _closed_tile(self, w: Tile) -> None:
        r, c = w.outer(w.var1, w.var2)
        q1, q2 = r.expand_as(w.nngp), c.expand_as(w.nngp)
        K = w.nngp
        if w.ntk is not None:
            w.ntk = w.ntk * self._closed(self._closed_tdot, K, q1, q2)
        w.nngp = self._closed(self.nngp_fn, K, q1, q2)

    def _derivative(self) -> Callable[[torch.Tensor], torch.Tensor]:
        return self.dfn if self.dfn is not None else autograd_derivative(self.fn)

    def derivative(self, x: torch.Tensor) -> torch.Tensor:
        return self._derivative()(x)

    def _nodes(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x, w = gauss_hermite(self.degree)
        return (torch.as_tensor(x, dtype=like.dtype, device=like.device),
                torch.as_tensor(w, dtype=like.dtype, device=like.device))

    def _expect(self, f, q1, q2, K, x, w) -> torch.Tensor:
        """``E[f(u) f(v)]`` for flat tensors of equal length."""
        prod = q1 * q2
        rho = torch.where(prod > 0, K / torch.sqrt(torch.where(prod > 0, prod, 1)), 0).clamp_(-1, 1)
        if exact.active():
            # Reproducible mode: every evaluation on the vectorized path, sums in a fixed
            # order per entry, and the mean of both orders of the pair, so that (x', x)
            # gives the value of (x, x') bit for bit.
            f = partial(exact.elementwise, f)
        u = f(torch.sqrt(q1)[:, None] * x[None, :]) * w  # (E, deg)
        mean = (rho[:, None] * x[None, :])[:, :, None]  # (E, deg, 1)
        spread = safe_sqrt(1 - rho * rho)[:, None, None] * x[None, None, :]
        v = f(torch.sqrt(q2)[:, None, None] * (mean + spread))  # (E, deg, deg)
        if not exact.active():
            return torch.einsum("ei,eij,j->e", u, v, w)
        return exact.sum(u * exact.sum(v * w, -1), -1)

    def _expect_pair(self, f, q1, q2, K, x, w) -> torch.Tensor:
        if not exact.active():
            return self._expect(f, q1, q2, K, x, w)
        return self._expect(f, q1, q2, K, x, w).add_(self._expect(f, q2, q1, K, x, w)).mul_(0.5)

    def _tile(self, w: Tile) -> None:
        if self.nngp_fn is not None:
            return self._closed_tile(w)
        x, wts = self._nodes(w.nngp)
        r, c = w.outer(w.var1, w.var2)
        q1, q2 = r.expand_as(w.nngp).reshape(-1), c.expand_as(w.nngp).reshape(-1)
        K = w.nngp.reshape(-1)
        chunk = max(1, _QUADRATURE_CHUNK // self.degree**2)
        T = torch.empty_like(K)
        tdot = None if w.ntk is None else torch.empty_like(K)
        dfn = self._derivative() if tdot is not None else None
        for s in range(0, K.numel(), chunk):
            sl = slice(s, s + chunk)
            if tdot is not None:
                tdot[sl] = self._expect_pair(dfn, q1[sl], q2[sl], K[sl], x, wts)
            T[sl] = self._expect_pair(self.fn, q1[sl], q2[sl], K[sl], x, wts)
        if tdot is not None:
            w.ntk.mul_(tdot.view_as(w.ntk))
        w.nngp.copy_(T.view_as(w.nngp))

    def _diag(self, q: torch.Tensor) -> torch.Tensor:
        if self.nngp_fn is not None:
            return self.nngp_fn(q, q, q)
        x, wts = self._nodes(q)
        values = exact.elementwise(self.fn, torch.sqrt(q).reshape(-1, 1) * x[None, :])
        if exact.active():
            out = exact.sum(values * values * wts, -1).reshape(q.shape)
        else:
            out = ((values * values) @ wts).reshape(q.shape)
        self._check_accuracy(q, out)
        return out

    def _check_accuracy(self, q: torch.Tensor, value: torch.Tensor) -> None:
        """Warns when the rule's own variances ``E[fn(sqrt(q) z)^2]`` move by more than
        ``ACCURACY`` under a rule of twice the degree: the same nodes per axis carry the
        bivariate rule, so its error is at least as large there (large variances make
        smooth functions look kinked to the nodes)."""
        if q.numel() == 0 or not scratch.plain(q):
            return
        with torch.no_grad():
            x, wts = gauss_hermite(2 * self.degree)
            x = torch.as_tensor(x, dtype=torch.float64)
            wts = torch.as_tensor(wts, dtype=torch.float64)
            qd = q.detach().reshape(-1).to(torch.float64)
            finer = (self.fn(torch.sqrt(qd)[:, None] * x[None, :]) ** 2) @ wts
            error = (value.detach().reshape(-1).to(torch.float64) - finer).abs() / finer.abs().clamp_min(1e-300)
        worst = int(error.argmax())
        if float(error[worst]) > ACCURACY:
            warnings.warn(
                f"{self!r}: Gauss-Hermite quadrature at degree {self.degree} is accurate to only "
                f"{float(error[worst]):.1e} (relative) at pre-activation variance {float(qd[worst]):.3g} "
                f"(its variances against degree {2 * self.degree}); raise degree= (the cost grows as "
                f"degree^2) or use a closed form (wn.Tanh, wn.Erf, wn.Gelu, ...)",
                AccuracyWarning, stacklevel=2)


# The closed form's check at construction: covariances, tolerances.
_CHECK_POINTS = 24
_CHECK_RTOL = 1e-3
_CHECK_DERIVATIVE_RTOL = 1e-6


def _validate_closed_form(layer: Elementwise) -> None:
    """Raise ``ParameterError`` where ``layer.nngp_fn`` disagrees with quadrature of
    ``layer.fn`` (degree 200), or ``d_nngp_fn`` with autograd of ``nngp_fn``, on random
    covariances (seeded: the same points every time)."""
    g = torch.Generator().manual_seed(0)
    n = _CHECK_POINTS
    q1 = torch.rand(n, generator=g, dtype=torch.float64) * 2.7 + 0.3
    q2 = torch.rand(n, generator=g, dtype=torch.float64) * 2.7 + 0.3
    rho = (torch.rand(n, generator=g, dtype=torch.float64) * 2 - 1) * 0.95
    rho[0] = 0.0
    K = rho * torch.sqrt(q1 * q2)
    try:
        with torch.no_grad():
            got = torch.as_tensor(layer.nngp_fn(K, q1, q2), dtype=torch.float64)
        tdot = torch.as_tensor(layer._closed_tdot(K, q1, q2), dtype=torch.float64).detach()
    except Exception as err:  # the user's function failed on plain float64 tensors
        raise ParameterError(f"{layer._name}: nngp_fn (or d_nngp_fn) failed on float64 tensors of shape ({n},) "
                             f"(cov12, var1, var2): {type(err).__name__}: {err}") from err
    if got.shape != K.shape or tdot.shape != K.shape:
        raise ParameterError(f"{layer._name}: nngp_fn and d_nngp_fn must return a tensor of the shape of their "
                             f"arguments ({n},) (got {tuple(got.shape)} and {tuple(tdot.shape)})")
    rules = []
    for degree in (100, 200):
        x, wts = gauss_hermite(degree)
        rules.append((torch.as_tensor(x, dtype=torch.float64), torch.as_tensor(wts, dtype=torch.float64)))
    with torch.no_grad():
        coarse, want = (layer._expect(layer.fn, q1, q2, K, x, wts) for x, wts in rules)
        own1 = layer._expect(layer.fn, q1, q1, q1, *rules[1]).abs()
        own2 = layer._expect(layer.fn, q2, q2, q2, *rules[1]).abs()
    scale = torch.sqrt(own1 * own2).clamp_min(1e-12)
    error = (got - want).abs() / scale
    # Kinked functions converge slowly under Gauss-Hermite rules (ReLU's degree-200 rule is
    # off by ~1e-3): allow three times the rule's own error, estimated by halving its degree.
    allowed = _CHECK_RTOL + 3 * (want - coarse).abs() / scale
    worst = int((error / allowed).argmax())
    if not bool(torch.isfinite(got).all()) or float(error[worst]) > float(allowed[worst]):
        raise ParameterError(
            f"{layer._name}: nngp_fn disagrees with quadrature of fn at cov12={float(K[worst]):.4g}, "
            f"var1={float(q1[worst]):.4g}, var2={float(q2[worst]):.4g}: nngp_fn gives {float(got[worst]):.6g}, "
            f"quadrature {float(want[worst]):.6g} (off by {float(error[worst]):.2g} of the kernel's scale, more than "
            f"the {float(allowed[worst]):.2g} allowed: 1e-3 and three times the quadrature's own error); "
            f"nngp_fn(cov12, var1, var2) must be E[fn(u) fn(v)]")
    if layer.d_nngp_fn is not None:
        auto = autograd_derivative(lambda k: layer.nngp_fn(k, q1, q2))(K).detach()
        gap = (tdot - auto).abs() / auto.abs().max().clamp_min(1e-12)
        worst = int(gap.argmax())
        if not bool(torch.isfinite(tdot).all()) or float(gap[worst]) > _CHECK_DERIVATIVE_RTOL:
            raise ParameterError(
                f"{layer._name}: d_nngp_fn disagrees with the derivative of nngp_fn in cov12 at "
                f"cov12={float(K[worst]):.4g}, var1={float(q1[worst]):.4g}, var2={float(q2[worst]):.4g}: "
                f"{float(tdot[worst]):.6g} against autograd's {float(auto[worst]):.6g}")
