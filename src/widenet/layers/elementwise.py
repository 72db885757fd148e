"""Elementwise nonlinearities with closed-form dual activations.

For a nonlinearity ``phi`` acting on a centred Gaussian pre-activation with covariance
``[[q1, K], [K, q2]]`` the kernel rules are (Neal 1996; Lee et al. 2018; Jacot et al. 2018)::

    K'     = T(K)  = E[phi(u) phi(v)]
    Theta' = Theta * Tdot(K),     Tdot(K) = E[phi'(u) phi'(v)]

Formulas are written without divisions by the variances wherever possible, so zero-variance
inputs give finite kernels, and with ``atan2`` rather than ``arccos`` so that correlations
near +-1 keep their precision (see REFERENCE: numerics).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np
import torch
from torch import nn

from .. import _compiled, _exact, _scratch
from .._validate import check_float, check_int
from ..errors import LayerOrderError, ParameterError
from ..kernel import Work
from ._autodiff import safe_sqrt
from ._base import Flow, Layer, Spec
from ._modules import ActivationModule
from ._polynomial import arccos_terms, double_factorial, hermite_projection

__all__ = [
    "Identity", "Relu", "LeakyRelu", "ABRelu", "Abs", "Erf", "SigmoidLike", "Gelu", "Sin", "Cos",
    "Rbf", "Sign", "Exp", "Gaussian", "Monomial", "RectifiedMonomial", "Hermite", "Polynomial",
]

_PI = math.pi


def _cos(x):
    """cos of a float or of a 0-d tensor hyperparameter (kept differentiable)."""
    return torch.cos(x) if isinstance(x, torch.Tensor) else math.cos(x)


class Nonlinearity(Layer):
    """Base of elementwise layers: subclasses give ``fn`` (finite width), ``_tile``
    (the pairwise rule on a tile, in place) and ``_diag`` (the variance rule)."""

    def fn(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - overridden
        raise NotImplementedError

    def _tile(self, w: Work) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def _diag(self, q: torch.Tensor) -> torch.Tensor:  # pragma: no cover - overridden
        raise NotImplementedError

    def _check_floats(self, *names: str) -> None:
        for name in names:
            object.__setattr__(self, name, check_float(self._name, name, getattr(self, name), tensor=True))

    def _apply(self, flow: Flow) -> Flow:
        w = self._single(flow)
        if not w.is_gaussian:
            raise LayerOrderError(
                f"{self._name}: its input must be Gaussian, i.e. the output of an affine layer "
                f"such as Dense; add a Dense layer before it (a nonlinearity cannot follow the "
                f"network input or another nonlinearity directly)"
            )
        if w.nngp is not None:
            # Each input against itself takes its own covariance's exact bits first: the rules
            # need q1 q2 - K^2 to be exactly zero there (an angle of 0, not ~1e-8), and the
            # affine layers may round a tile and a covariance differently (fused or not).
            w.sync_diagonal()
            self._tile(w)

        def own(cov: torch.Tensor) -> torch.Tensor:
            new_var = self._diag(w._variances(cov))
            # Each input's own covariance over position pairs is itself a kernel: apply the
            # same rule to it, with exact variances on its diagonal.
            return self._self_rule(w, cov, new_var) if w.is_full else new_var

        w.set_covs(own)
        w.is_gaussian = False
        w.sync_diagonal()
        return w

    def _self_rule(self, w: Work, cov: torch.Tensor, new_var: torch.Tensor) -> torch.Tensor:
        own = Work(_scratch.clone(cov), None, cov, cov, self_mode=True, spatial=w.spatial, full=True)
        self._tile(own)
        n, b = w.npos, cov.shape[0]
        own.nngp.view(b, n, n).diagonal(dim1=1, dim2=2).copy_(new_var.reshape(b, n))
        return own.nngp

    def _build(self, spec: Spec, seeds: Iterator[int], factory: dict) -> tuple[nn.Module, Spec]:
        return ActivationModule(self.fn, repr(self)), self._single_spec(spec)


def _angles(w: Work, root: torch.Tensor) -> torch.Tensor:
    """``theta = atan2(sqrt(q1 q2 - K^2), K)``, with pi/2 where an input has zero variance."""
    theta = _exact.call(torch.atan2, root, w.nngp)
    zero = w.zero_variance_mask()
    if zero is not None:
        theta.masked_fill_(zero, _PI / 2)
    return theta


def _sin_root(w: Work) -> torch.Tensor:
    """``sqrt(max(q1 q2 - K^2, 0))``: (q1 q2)^{1/2} sin(theta) without dividing."""
    return _root_of(w.nngp, *w.outer(w.var1, w.var2))


def _root_of(nngp: torch.Tensor, q1: torch.Tensor, q2: torch.Tensor) -> torch.Tensor:
    # Two separately rounded products, not a fused multiply-add: for an input against itself
    # (K == q1 == q2 bitwise) the difference is then exactly zero, and so is the angle.
    root = _scratch.call(torch.mul, q1, q2)
    return safe_sqrt(root.sub_(_scratch.call(torch.mul, nngp, nngp)).clamp_(min=0))


def _atan2(y, x):
    return _scratch.call(torch.atan2, y, x)


def _atan2_(y, x):
    return y.atan2_(x)


def _exact_atan2(y, x):
    return _exact.elementwise(torch.atan2, y, x)


def _exact_atan2_(y, x):
    return _exact.apply_(torch.atan2, y, x)


def _run_rule(rule, *args, **exact_ops):
    """A rule written as a tensor function: compiled when asked (:mod:`widenet._compiled`);
    in reproducible mode (:mod:`widenet._exact`) eagerly, with ``exact_ops`` (its vector-path
    ops) in place of its defaults."""
    if _exact.active():
        return rule(*args, **exact_ops)
    return _compiled.run(rule, *args)


def _abrelu_rule(nngp, ntk, q1, q2, zero, factor, half, atan2=_atan2):
    """ABRelu's rule on a tile, in place: ``tdot = half - factor * theta``, ``Theta *= tdot``,
    ``K = K tdot + factor sqrt(q1 q2 - K^2)``; ``q1``/``q2`` broadcast against the tile and
    ``zero`` marks pairs with a zero variance (or is None). Compiled by :mod:`widenet._compiled`
    when asked; reproducible mode passes its own ``atan2``."""
    root = _root_of(nngp, q1, q2)
    tdot = atan2(root, nngp)
    if zero is not None:
        tdot.masked_fill_(zero, _PI / 2)
    tdot = _exact.scale_add_(tdot, -factor, half)
    if ntk is not None:
        ntk.mul_(tdot)
    if isinstance(factor, torch.Tensor):
        nngp.mul_(tdot).add_(root.mul_(factor))
    else:
        nngp.mul_(tdot).add_(root, alpha=factor)
    return nngp, ntk


@dataclass(frozen=True)
class Identity(Layer):
    """``phi(x) = x``; leaves the kernel unchanged (and does not need a Gaussian input)."""

    def _apply(self, flow: Flow) -> Flow:
        return flow

    def _build(self, spec: Spec, seeds: Iterator[int], factory: dict) -> tuple[nn.Module, Spec]:
        return nn.Identity(), spec


@dataclass(frozen=True)
class ABRelu(Nonlinearity):
    """``phi(x) = a min(x, 0) + b max(x, 0)``.

    With ``theta`` the angle between the inputs (Cho & Saul 2009; Pedamonti 2018)::

        T    = (a - b)^2 / (2 pi) sqrt(q1 q2 - K^2) + [(a^2 + b^2)/2 - (a - b)^2 theta / (2 pi)] K
        Tdot = (a^2 + b^2)/2 - (a - b)^2 theta / (2 pi)
    """

    a: float = 0.0
    b: float = 1.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "a", check_float(self._name, "a", self.a, tensor=True))
        object.__setattr__(self, "b", check_float(self._name, "b", self.b, tensor=True))

    def fn(self, x: torch.Tensor) -> torch.Tensor:
        return self.a * torch.clamp(x, max=0) + self.b * torch.clamp(x, min=0)

    def _tile(self, w: Work) -> None:
        factor = (self.a - self.b) ** 2 / (2 * _PI)
        half = (self.a**2 + self.b**2) / 2
        var1, var2 = w.var1, w.var2
        w.nngp, w.ntk = _run_rule(_abrelu_rule, w.nngp, w.ntk, *w.outer(var1, var2),
                                  w.zero_variance_mask(var1, var2), factor, half, atan2=_exact_atan2)

    def _diag(self, q: torch.Tensor) -> torch.Tensor:
        return q * ((self.a**2 + self.b**2) / 2)


@dataclass(frozen=True)
class Relu(ABRelu):
    """``phi(x) = max(x, 0)``: ``T = sqrt(q1 q2)/(2 pi) (sin theta + (pi - theta) cos theta)``,
    ``Tdot = (pi - theta) / (2 pi)`` (arc-cosine kernels J1, J0; Cho & Saul 2009)."""

    a: float = field(default=0.0, init=False, repr=False)
    b: float = field(default=1.0, init=False, repr=False)

    def fn(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x)


@dataclass(frozen=True)
class LeakyRelu(ABRelu):
    """``phi(x) = max(x, 0) + alpha min(x, 0)`` (= ``ABRelu(alpha, 1)``)."""

    alpha: float = 0.01
    a: float = field(default=0.0, init=False, repr=False)
    b: float = field(default=1.0, init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "alpha", check_float("LeakyRelu", "alpha", self.alpha, tensor=True))
        object.__setattr__(self, "a", self.alpha)


@dataclass(frozen=True)
class Abs(ABRelu):
    """``phi(x) = |x|`` (= ``ABRelu(-1, 1)``)."""

    a: float = field(default=-1.0, init=False, repr=False)
    b: float = field(default=1.0, init=False, repr=False)

    def fn(self, x: torch.Tensor) -> torch.Tensor:
        return torch.abs(x)


@dataclass(frozen=True)
class Erf(Nonlinearity):
    """``phi(x) = a erf(b x) + c`` (Williams 1997). With ``K, q`` first scaled by ``b^2``::

        T    = (2/pi) arcsin(2K / sqrt((1 + 2 q1)(1 + 2 q2)))
        Tdot = (4/pi) / sqrt((1 + 2 q1)(1 + 2 q2) - 4 K^2)

    then ``K' = a^2 T + c^2`` and ``Theta' = a^2 b^2 Tdot Theta``.
    """

    a: float = 1.0
    b: float = 1.0
    c: float = 0.0

    def __post_init__(self) -> None:
        self._check_floats("a", "b", "c")

    def fn(self, x: torch.Tensor) -> torch.Tensor:
        return self.a * torch.erf(self.b * x) + self.c

    def _tile(self, w: Work) -> None:
        b2 = self.b**2
        w.nngp, w.ntk = _run_rule(_erf_rule, w.nngp, w.ntk,
                                  *w.outer(1 + 2 * b2 * w.var1, 1 + 2 * b2 * w.var2),
                                  2 * b2, 4 / _PI * b2 * self.a**2, 2 / _PI * self.a**2,
                                  self.c**2, atan2_=_exact_atan2_)

    def _diag(self, q: torch.Tensor) -> torch.Tensor:
        q = q * self.b**2
        return _exact.elementwise(torch.atan2, q, torch.sqrt(q + 0.25)) * (2 / _PI * self.a**2) + self.c**2


def _erf_rule(nngp, ntk, p1, p2, scale, ntk_scale, nngp_scale, shift, atan2_=_atan2_):
    """Erf's rule on a tile, in place: with ``K`` scaled by ``scale`` and ``p1 p2`` the
    broadcast products ``(1 + 2 b^2 q1)(1 + 2 b^2 q2)``, ``r = sqrt(p1 p2 - K^2)``,
    ``Theta *= ntk_scale / r`` and ``K = nngp_scale atan2(K, r) + shift``."""
    root = _scratch.call(torch.mul, p1, p2)
    nngp.mul_(scale)
    root.addcmul_(nngp, nngp, value=-1.0).sqrt_()
    if ntk is not None:
        ntk.div_(root).mul_(ntk_scale)
    atan2_(nngp, root).mul_(nngp_scale).add_(shift)
    return nngp, ntk


@dataclass(frozen=True)
class SigmoidLike(Erf):
    """A sigmoid-shaped erf, ``0.5 erf(x / 2.4020563531719796) + 0.5`` (the constant minimizes
    the squared distance to the logistic sigmoid on [-5, 5])."""

    a: float = field(default=0.5, init=False, repr=False)
    b: float = field(default=1 / 2.4020563531719796, init=False, repr=False)
    c: float = field(default=0.5, init=False, repr=False)


@dataclass(frozen=True)
class Gelu(Nonlinearity):
    """``phi(x) = x Phi(x)`` (exact GELU). With ``P = (q1 + 1)(q2 + 1)``, ``delta = sqrt(P - K^2)``
    and ``A = atan2(K, delta)`` (Tsuchida et al. 2020, arXiv 2002.08517)::

        T    = K/4 + [(K^2 + q1 q2 delta^2) / (P delta) + K A] / (2 pi)
        Tdot = 1/4 + A/(2 pi) + K / (2 pi delta) [1/delta^2 + (1 - q1 q2)/P + 1]
    """

    def fn(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.gelu(x)

    def _tile(self, w: Work) -> None:
        K = w.nngp
        prod = w.prod(w.var1, w.var2)
        prod1 = w.prod(w.var1 + 1, w.var2 + 1)
        delta2 = prod1 - K * K
        delta = delta2.sqrt()
        angle = _exact.elementwise(torch.atan2, K, delta)
        if w.ntk is not None:
            tdot = (1 - prod).div_(prod1).add_(1).add_(delta2.reciprocal())
            tdot.mul_(K).div_(delta).add_(angle).div_(2 * _PI).add_(0.25)
            w.ntk.mul_(tdot)
        new = torch.addcmul(K * K, prod, delta2).div_(prod1.mul_(delta))
        new.addcmul_(K, angle).div_(2 * _PI).add_(K, alpha=0.25)
        K.copy_(new)

    def _diag(self, q: torch.Tensor) -> torch.Tensor:
        root = torch.sqrt(1 + 2 * q)
        out = q / ((q + 1) * root) + _exact.elementwise(torch.atan2, q, root) / 2
        return (out / _PI + 0.25) * q


@dataclass(frozen=True)
class Sin(Nonlinearity):
    """``phi(x) = a sin(b x + c)``. With ``s = q1 + q2``::

        T    = a^2/2 [exp(b^2 (K - s/2)) - exp(b^2 (-K - s/2)) cos 2c]
        Tdot = a^2 b^2/2 [exp(b^2 (K - s/2)) + exp(b^2 (-K - s/2)) cos 2c]
    """

    a: float = 1.0
    b: float = 1.0
    c: float = 0.0

    def __post_init__(self) -> None:
        self._check_floats("a", "b", "c")

    def fn(self, x: torch.Tensor) -> torch.Tensor:
        return self.a * torch.sin(self.b * x + self.c)

    def _tile(self, w: Work) -> None:
        b2 = self.b**2
        half_sum = w.sum(w.var1, w.var2).mul_(-0.5 * b2)
        scaled = w.nngp * b2
        s1 = _exact.apply_(torch.exp, torch.add(half_sum, scaled))
        s2 = _exact.apply_(torch.exp, half_sum.sub_(scaled)).mul_(_cos(2 * self.c))
        half_a2 = self.a**2 / 2
        if w.ntk is not None:
            w.ntk.mul_(s1 + s2).mul_(half_a2 * b2)
        w.nngp = s1.sub_(s2).mul_(half_a2)

    def _diag(self, q: torch.Tensor) -> torch.Tensor:
        return (1 - _exact.elementwise(torch.exp, -2 * self.b**2 * q) * _cos(2 * self.c)) * (self.a**2 / 2)


@dataclass(frozen=True)
class Cos(Sin):
    """``phi(x) = a cos(b x + c)`` (= ``Sin(a, b, c + pi/2)``)."""

    def fn(self, x: torch.Tensor) -> torch.Tensor:
        return self.a * torch.cos(self.b * x + self.c)

    def _shifted(self) -> Sin:
        return Sin(self.a, self.b, self.c + _PI / 2)

    def _tile(self, w: Work) -> None:
        self._shifted()._tile(w)

    def _diag(self, q: torch.Tensor) -> torch.Tensor:
        return self._shifted()._diag(q)


@dataclass(frozen=True)
class Rbf(Nonlinearity):
    """Dual of the RBF kernel: ``phi(x) = sqrt(2) sin(sqrt(2 gamma) x + pi/4)`` gives
    ``T = exp(-gamma (q1 + q2 - 2K))`` and ``Tdot = 2 gamma T`` (Rahimi & Recht 2007)."""

    gamma: float = 1.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "gamma", check_float("Rbf", "gamma", self.gamma, minimum=0.0, tensor=True))

    def fn(self, x: torch.Tensor) -> torch.Tensor:
        return math.sqrt(2) * torch.sin(math.sqrt(2 * self.gamma) * x + _PI / 4)

    def _tile(self, w: Work) -> None:
        t = _exact.apply_(torch.exp, w.sum(w.var1, w.var2).mul_(-self.gamma).add_(w.nngp * (2 * self.gamma)))
        if w.ntk is not None:
            w.ntk.mul_(t).mul_(2 * self.gamma)
        w.nngp.copy_(t)

    def _diag(self, q: torch.Tensor) -> torch.Tensor:
        return torch.ones_like(q)


@dataclass(frozen=True)
class Sign(Nonlinearity):
    """``phi(x) = sign(x)``: ``T = 1 - 2 theta / pi = (2/pi) arcsin(rho)``; its derivative is
    zero almost everywhere, so it contributes nothing to the NTK (``Theta' = 0``)."""

    def fn(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sign(x)

    def _tile(self, w: Work) -> None:
        theta = _angles(w, _sin_root(w))
        torch.mul(theta, -2 / _PI, out=w.nngp).add_(1.0)
        zero = w.zero_variance_mask()
        if zero is not None:
            w.nngp.masked_fill_(zero, 0.0)  # sign(0) = 0
        if w.ntk is not None:
            w.ntk.zero_()

    def _diag(self, q: torch.Tensor) -> torch.Tensor:
        return (q > 0).to(q.dtype)


@dataclass(frozen=True)
class Exp(Nonlinearity):
    """``phi(x) = a exp(b x)``: ``T = a^2 exp(b^2 (s/2 + K))``, ``Tdot = b^2 T`` with ``s = q1 + q2``."""

    a: float = 1.0
    b: float = 1.0

    def __post_init__(self) -> None:
        self._check_floats("a", "b")

    def fn(self, x: torch.Tensor) -> torch.Tensor:
        return self.a * torch.exp(self.b * x)

    def _tile(self, w: Work) -> None:
        b2 = self.b**2
        t = _exact.apply_(torch.exp, w.sum(w.var1, w.var2).mul_(0.5).add_(w.nngp).mul_(b2)).mul_(self.a**2)
        if w.ntk is not None:
            w.ntk.mul_(t).mul_(b2)
        w.nngp.copy_(t)

    def _diag(self, q: torch.Tensor) -> torch.Tensor:
        return _exact.elementwise(torch.exp, 2 * self.b**2 * q) * self.a**2


@dataclass(frozen=True)
class Gaussian(Nonlinearity):
    """``phi(x) = a exp(b x^2)``. With ``det = sqrt((1 - 2b q1)(1 - 2b q2) - 4 b^2 K^2)``::

        T = a^2 / det,      Tdot = 4 a^2 b^2 K / det^3

    Finite only while ``4 b q < 1`` for every variance ``q``; ``b <= 0`` is always safe.
    """

    a: float = 1.0
    b: float = -1.0

    def __post_init__(self) -> None:
        self._check_floats("a", "b")

    def fn(self, x: torch.Tensor) -> torch.Tensor:
        return self.a * torch.exp(self.b * x * x)

    def _tile(self, w: Work) -> None:
        det = w.prod(1 - 2 * self.b * w.var1, 1 - 2 * self.b * w.var2)
        det.sub_(w.nngp * w.nngp * (4 * self.b**2)).sqrt_()
        if w.ntk is not None:
            w.ntk.mul_(w.nngp).div_(det.pow(3)).mul_(4 * self.a**2 * self.b**2)
        w.nngp = torch.reciprocal(det).mul_(self.a**2)

    def _diag(self, q: torch.Tensor) -> torch.Tensor:
        return self.a**2 / torch.sqrt(1 - 4 * self.b * q)


class _PolynomialBase(Nonlinearity):
    """Exact kernels of polynomials for any input variances (Mehler's formula):
    ``T = sum_l p_l(q1) p_l(q2) K^l``, ``Tdot = sum_l l p_l(q1) p_l(q2) K^(l-1)``
    (see :func:`widenet.layers._polynomial.hermite_projection`)."""

    def _coefficients(self) -> tuple[float, ...]:  # pragma: no cover - overridden
        raise NotImplementedError

    def fn(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.zeros_like(x)
        for c in reversed(self._coefficients()):
            out = out * x + c
        return out

    def _projections(self, q: torch.Tensor) -> list[torch.Tensor]:
        P = hermite_projection(tuple(float(c) for c in self._coefficients()))
        out = []
        for row in P:
            value = torch.zeros_like(q)
            for c in reversed(row.tolist()):
                value = value * q + c
            out.append(value)
        return out

    def _tile(self, w: Work) -> None:
        p1, p2 = self._projections(w.var1), self._projections(w.var2)
        degree = len(p1) - 1
        K = w.nngp
        if w.ntk is not None:
            if degree == 0:
                w.ntk.zero_()
            else:
                r, c = w.outer(p1[degree], p2[degree])
                tdot = (r * c).mul_(degree)
                for l in range(degree - 1, 0, -1):
                    r, c = w.outer(p1[l], p2[l])
                    tdot.mul_(K).addcmul_(r, c, value=l)
                w.ntk.mul_(tdot)
        r, c = w.outer(p1[degree], p2[degree])
        t = (r * c).expand_as(K).clone()
        for l in range(degree - 1, -1, -1):
            r, c = w.outer(p1[l], p2[l])
            t.mul_(K).addcmul_(r, c)
        K.copy_(t)

    def _diag(self, q: torch.Tensor) -> torch.Tensor:
        ps = self._projections(q)
        out = torch.zeros_like(q)
        for p in reversed(ps):
            out = out * q + p * p
        return out


@dataclass(frozen=True)
class Polynomial(_PolynomialBase):
    """``phi(x) = coef[0] + coef[1] x + ... + coef[n] x^n`` (numpy.polynomial order)."""

    coef: tuple = (0.0, 1.0)

    def __post_init__(self) -> None:
        coef = tuple(self.coef) if isinstance(self.coef, (list, tuple, np.ndarray)) else None
        if not coef:
            raise ParameterError(f"Polynomial: coef must be a non-empty sequence of floats (got {self.coef!r})")
        object.__setattr__(
            self, "coef", tuple(check_float("Polynomial", f"coef[{i}]", c) for i, c in enumerate(coef))
        )

    def _coefficients(self) -> tuple[float, ...]:
        return self.coef


@dataclass(frozen=True)
class Monomial(_PolynomialBase):
    """``phi(x) = x^degree``; its kernel follows from Isserlis' theorem (exact, any degree)."""

    degree: int = 1

    def __post_init__(self) -> None:
        object.__setattr__(self, "degree", check_int("Monomial", "degree", self.degree, minimum=0))

    def _coefficients(self) -> tuple[float, ...]:
        return (0.0,) * self.degree + (1.0,)

    def fn(self, x: torch.Tensor) -> torch.Tensor:
        return x**self.degree


@dataclass(frozen=True)
class Hermite(_PolynomialBase):
    """Normalized probabilists' Hermite polynomial ``He_n(x) / sqrt(n!)``.

    For unit-variance pre-activations ``T = K^n`` and ``Tdot = n K^(n-1)``; widenet computes the
    exact kernel for any variance (the general polynomial rule), which reduces to these.
    """

    degree: int = 1

    def __post_init__(self) -> None:
        object.__setattr__(self, "degree", check_int("Hermite", "degree", self.degree, minimum=0))

    def _coefficients(self) -> tuple[float, ...]:
        coef = np.polynomial.hermite_e.herme2poly([0] * self.degree + [1])
        return tuple(float(c) / math.sqrt(math.factorial(self.degree)) for c in coef)


@dataclass(frozen=True)
class RectifiedMonomial(Nonlinearity):
    """``phi(x) = max(x, 0)^degree`` (``degree=0`` is the Heaviside step).

    ``T = (q1 q2)^{n/2} J_n(theta) / (2 pi)`` with Cho & Saul's arc-cosine ``J_n`` and
    ``Tdot = n^2 T_{n-1}`` (Cho & Saul 2009). ``J_n`` is expanded exactly into powers of
    ``K`` and ``sqrt(q1 q2 - K^2)``, so no division by the variances occurs.
    """

    degree: int = 1

    def __post_init__(self) -> None:
        object.__setattr__(self, "degree", check_int("RectifiedMonomial", "degree", self.degree, minimum=0))

    def fn(self, x: torch.Tensor) -> torch.Tensor:
        return torch.where(x >= 0, torch.clamp(x, min=0) ** self.degree, torch.zeros_like(x))

    @staticmethod
    def _t(n: int, K: torch.Tensor, root: torch.Tensor, rest: torch.Tensor) -> torch.Tensor:
        out = torch.zeros_like(K)
        for a, i, j, k in arccos_terms(n):
            term = K**i * root**j if i or j else torch.ones_like(K)
            out += (a * term * rest) if k else (a * term)
        return out / (2 * _PI)

    def _tile(self, w: Work) -> None:
        root = _sin_root(w)
        rest = _angles(w, root).neg_().add_(_PI)  # pi - theta
        n = self.degree
        if w.ntk is not None:
            if n == 0:
                w.ntk.zero_()
            else:
                w.ntk.mul_(self._t(n - 1, w.nngp, root, rest)).mul_(n * n)
        w.nngp.copy_(self._t(n, w.nngp, root, rest))
        if n == 0 and w.zero_variance_mask() is not None:
            # The step function has phi(0) = 1: against a zero-variance input the kernel is
            # P(v >= 0) = 1/2, and 1 when both inputs are identically zero.
            r, c = w.outer((w.var1 == 0).to(K_dtype := w.nngp.dtype), (w.var2 == 0).to(K_dtype))
            w.nngp.copy_(torch.where((r + c) > 0, 0.5 * (1 + r * c), w.nngp))

    def _diag(self, q: torch.Tensor) -> torch.Tensor:
        if self.degree == 0:
            return torch.where(q == 0, 1.0, 0.5).to(q.dtype)
        return q**self.degree * (double_factorial(2 * self.degree - 1) / 2)
