"""Elementwise nonlinearities in a row, ``phi_k(...phi_1(z))``, as one nonlinearity.

After the first nonlinearity its outputs are no longer Gaussian, so the second one's rule
(an expectation over a Gaussian pair) cannot take them. The composition is itself one
elementwise function of the Gaussian pre-activation, and its dual is exact: ``Serial``
merges every run of nonlinearities into a ``Chain``, whose kernel is

* a closed form where the composition has one: the ReLU family composes into the ReLU
  family (``a min(z, 0) + b max(z, 0)`` after ``a' min(z, 0) + b' max(z, 0)`` is again of that
  form), so ``Relu`` then ``LeakyRelu`` is one ``ABRelu``;
* a polar rule where the first layer is of the ReLU family and the rest are smooth: the
  composition is then smooth on each side of zero, and in the whitened plane of the pair
  ``(u, v)`` its kinks lie on four rays from the origin. Integrating in polar coordinates,
  Gauss-Legendre in the angle on each of the four arcs between the rays and in the radius on
  ``[0, 9]`` (weight ``r exp(-r^2 / 2)``), every piece is smooth and the rule converges
  spectrally, where Gauss-Hermite rules across a kink stall near 1e-5;
* otherwise Gauss-Hermite quadrature of the composed function (``Elementwise``).

The derivative is the chain rule's, ``phi_k'(...) ... phi_1'(z)``.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from functools import lru_cache, partial
from typing import Callable

import numpy as np
import torch
from torch import nn

from .._engine import Flow, Tile, exact, safe_sqrt
from .._validate import check_int
from ..errors import AccuracyWarning, LayerOrderError, ParameterError
from .base import Build, Spec
from .nonlinearity import ActivationModule, Nonlinearity
from .quadrature import Elementwise
from .rectified_monomial import RectifiedMonomial
from .relu import ABRelu
from .sign import Sign

__all__ = ["Chain"]


def _compose(fns: tuple) -> Callable[[torch.Tensor], torch.Tensor]:
    def composed(x: torch.Tensor) -> torch.Tensor:
        for fn in fns:
            x = fn(x)
        return x

    return composed


def _compose_derivative(layers: tuple) -> Callable[[torch.Tensor], torch.Tensor]:
    def derivative(x: torch.Tensor) -> torch.Tensor:  # the chain rule, innermost first
        out = None
        for layer in layers:
            d = layer.derivative(x)
            out = d if out is None else out * d
            x = layer.fn(x)
        return out

    return derivative


def _abrelu_of(layers: tuple):
    """``(a, b)`` of the composition when every layer is of the ReLU family, else None: for
    ``z > 0`` the first layer gives ``b1 z``, which the second maps to ``b2 b1 z`` where
    ``b1 >= 0`` and ``a2 b1 z`` where not; likewise ``a1 z`` for ``z < 0``."""
    if not all(isinstance(layer, ABRelu) for layer in layers):
        return None
    a, b = layers[0].a, layers[0].b
    for layer in layers[1:]:
        a = a * (layer.a if float(a) >= 0 else layer.b)
        b = b * (layer.b if float(b) >= 0 else layer.a)
    return a, b


_RADIUS = 9.0  # the polar rule's radial cut: the Gaussian mass beyond is exp(-40.5)
_CHUNK = 1 << 21  # evaluations of the function held in memory at once
_KINKED = (ABRelu, Sign, RectifiedMonomial)


@lru_cache(maxsize=8)
def _legendre(m: int) -> tuple:
    """Gauss-Legendre nodes and weights on [0, 1] (float64 numpy arrays)."""
    x, w = np.polynomial.legendre.leggauss(m)
    return (x + 1) / 2, w / 2


@dataclass(frozen=True)
class _PolarRule(Nonlinearity):
    """The dual of ``fn`` smooth on each side of 0 (see the module docstring): ``T`` and
    ``Tdot`` by the polar rule with ``angular`` nodes on each of the four arcs and ``radial``
    nodes on the radius; the variance by Gauss-Legendre on each half-line."""

    fn: Callable = None
    dfn: Callable = None
    label: str = ""
    angular: int = 24
    radial: int = 64

    def __repr__(self) -> str:
        return f"{self.label} (polar rule)"

    def derivative(self, x: torch.Tensor) -> torch.Tensor:
        return self.dfn(x)

    def _nodes(self, like: torch.Tensor, m: int) -> tuple:
        x, w = _legendre(m)
        return (torch.as_tensor(x, dtype=like.dtype, device=like.device),
                torch.as_tensor(w, dtype=like.dtype, device=like.device))

    def _expect(self, f, q1, q2, K) -> torch.Tensor:
        """``E[f(u) f(v)]`` for flat tensors of equal length. In the whitened plane
        ``u = sqrt(q1) r cos(t)``, ``v = sqrt(q2) r cos(t - beta)`` with ``cos(beta) = rho``:
        ``u = 0`` at ``t = +-pi/2`` and ``v = 0`` at ``t = beta +- pi/2``, four arcs of
        lengths ``beta, pi - beta, beta, pi - beta`` from ``-pi/2``."""
        prod = q1 * q2
        rho = torch.where(prod > 0, K / torch.sqrt(torch.where(prod > 0, prod, 1)), 0).clamp(-1, 1)
        beta = exact.call(torch.atan2, safe_sqrt(1 - rho * rho), rho)
        half = math.pi / 2
        starts = torch.stack([torch.full_like(beta, -half), beta - half, torch.full_like(beta, half), beta + half], -1)
        lengths = torch.stack([beta, math.pi - beta, beta, math.pi - beta], -1)
        ta, wa = self._nodes(K, self.angular)
        tr, wr = self._nodes(K, self.radial)
        t = starts[..., None] + lengths[..., None] * ta  # (E, 4, m)
        wt = (lengths[..., None] * wa).reshape(-1, 4 * self.angular)
        r = _RADIUS * tr
        w_r = _RADIUS * wr * r * torch.exp(-r * r / 2) / (2 * math.pi)
        cu = torch.cos(t).reshape(-1, 4 * self.angular, 1) * r
        cv = torch.cos(t - beta[:, None, None]).reshape(-1, 4 * self.angular, 1) * r
        if exact.active():
            f = partial(exact.elementwise, f)
        values = f(torch.sqrt(q1)[:, None, None] * cu) * f(torch.sqrt(q2)[:, None, None] * cv)
        if not exact.active():
            return torch.einsum("eij,ei,j->e", values, wt, w_r)
        return exact.sum(wt * exact.sum(values * w_r, -1), -1)

    def _expect_pair(self, f, q1, q2, K) -> torch.Tensor:
        if not exact.active():
            return self._expect(f, q1, q2, K)
        return self._expect(f, q1, q2, K).add_(self._expect(f, q2, q1, K)).mul_(0.5)

    def _tile(self, w: Tile) -> None:
        r, c = w.outer(w.var1, w.var2)
        q1, q2 = r.expand_as(w.nngp).reshape(-1), c.expand_as(w.nngp).reshape(-1)
        K = w.nngp.reshape(-1)
        chunk = max(1, _CHUNK // (4 * self.angular * self.radial))
        parts_t, parts_d = [], []
        for s in range(0, K.numel(), chunk):
            sl = slice(s, s + chunk)
            if w.ntk is not None:
                parts_d.append(self._expect_pair(self.dfn, q1[sl], q2[sl], K[sl]))
            parts_t.append(self._expect_pair(self.fn, q1[sl], q2[sl], K[sl]))
        if w.ntk is not None:
            w.ntk = w.ntk * torch.cat(parts_d).view_as(w.ntk)
        w.nngp = torch.cat(parts_t).view_as(w.nngp)

    def _half_lines(self, q: torch.Tensor, m: int) -> torch.Tensor:
        x, wts = self._nodes(q, m)
        z = _RADIUS * x
        wz = _RADIUS * wts * torch.exp(-z * z / 2) / math.sqrt(2 * math.pi)
        scale = torch.sqrt(q).reshape(-1, 1)
        plus = exact.elementwise(self.fn, scale * z)
        minus = exact.elementwise(self.fn, -scale * z)
        values = plus * plus + minus * minus
        if exact.active():
            return exact.sum(values * wz, -1).reshape(q.shape)
        return (values @ wz).reshape(q.shape)

    def _diag(self, q: torch.Tensor) -> torch.Tensor:
        out = self._half_lines(q, self.radial)
        if q.numel() and not q.requires_grad and not exact.active():
            with torch.no_grad():
                finer = self._half_lines(q.detach(), 2 * self.radial)
                error = (out.detach() - finer).abs() / finer.abs().clamp_min(1e-300)
            worst = int(error.reshape(-1).argmax())
            if float(error.reshape(-1)[worst]) > 1e-6:
                warnings.warn(
                    f"{self!r}: the polar rule with {self.radial} radial nodes is accurate to only "
                    f"{float(error.reshape(-1)[worst]):.1e} (relative) at pre-activation variance "
                    f"{float(q.reshape(-1)[worst]):.3g} (its variances against {2 * self.radial} nodes)",
                    AccuracyWarning, stacklevel=2)
        return out


@dataclass(frozen=True, init=False)
class Chain(Nonlinearity):
    """Nonlinearities applied one after another, ``phi_k(...phi_1(z))``, as one nonlinearity
    (``Serial`` builds it from consecutive nonlinearities; see the module docstring).

    Kernel: the dual of the composed function, ``T = E[g(u) g(v)]``, ``Tdot = E[g'(u) g'(v)]``
    with ``g = phi_k o ... o phi_1``: a closed form for the ReLU family (its compositions stay
    in it); a polar rule split at the kinks when the first layer is of the ReLU family and
    the rest are smooth (``Relu`` then ``Erf``); Gauss-Hermite quadrature of ``g`` at
    ``degree`` otherwise (``Elementwise``, which warns where it falls short of 1e-6).

    Args:
        *layers: two or more elementwise nonlinearities, innermost first.
        degree: quadrature nodes per dimension (>= 2), for compositions without a closed form.

    Example:

        >>> net = wn.Serial(wn.Dense(512), wn.Relu(), wn.Erf(), wn.Dense(1))   # erf(relu(z))
        >>> net.kernel(torch.randn(4, 3, dtype=torch.float64)).ntk.shape
        torch.Size([4, 4])
        >>> wn.Chain(wn.Relu(), wn.LeakyRelu(0.1)).closed_form
        ABRelu(a=0.0, b=1.0)
    """

    layers: tuple
    degree: int = 96

    def __init__(self, *layers: Nonlinearity, degree: int = 96) -> None:
        flat = []
        for layer in layers:
            if not isinstance(layer, Nonlinearity):
                raise ParameterError(f"Chain: layers must be elementwise nonlinearities "
                                     f"(got {type(layer).__name__} at position {len(flat)})")
            flat.extend(layer.layers if isinstance(layer, Chain) else (layer,))
        if len(flat) < 2:
            raise ParameterError(f"Chain: needs at least two nonlinearities (got {len(flat)})")
        object.__setattr__(self, "layers", tuple(flat))
        object.__setattr__(self, "degree", check_int("Chain", "degree", degree, minimum=2))

    def __repr__(self) -> str:
        return f"Chain({', '.join(repr(layer) for layer in self.layers)})"

    @property
    def closed_form(self):
        """The single nonlinearity equal to the composition when one is known (an ``ABRelu``
        for the ReLU family), else None."""
        ab = _abrelu_of(self.layers)
        return None if ab is None else ABRelu(*ab)

    @property
    def _inner(self) -> Nonlinearity:  # built on each use: a Chain stays picklable (Dask)
        closed = self.closed_form
        if closed is not None:
            return closed
        name = " o ".join(repr(layer) for layer in reversed(self.layers))
        fn = _compose(tuple(layer.fn for layer in self.layers))
        if isinstance(self.layers[0], ABRelu) and not any(isinstance(x, _KINKED) for x in self.layers[1:]):
            return _PolarRule(fn, _compose_derivative(self.layers), name)
        return Elementwise(_compose(tuple(layer.fn for layer in self.layers)),
                           dfn=_compose_derivative(self.layers), degree=self.degree, name=name)

    def fn(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer.fn(x)
        return x

    def derivative(self, x: torch.Tensor) -> torch.Tensor:
        return _compose_derivative(self.layers)(x)

    def _rule(self, flow: Flow) -> Flow:
        w = self._single(flow)
        if not w.is_gaussian:
            raise LayerOrderError(
                f"{self!r}: its input must be Gaussian, i.e. the output of an affine layer such as "
                f"Dense; add a Dense layer before it")
        return self._inner._rule(w)

    def _tile(self, w: Tile) -> None:
        self._inner._tile(w)

    def _diag(self, q: torch.Tensor) -> torch.Tensor:
        return self._inner._diag(q)

    def _twin(self, spec: Spec, build: Build) -> tuple[nn.Module, Spec]:
        return ActivationModule(self.fn, repr(self)), self._single_spec(spec)


def merge_runs(layers: tuple) -> tuple:
    """``layers`` with nested ``Serial``s flattened and every run of two or more consecutive
    nonlinearities replaced by one ``Chain`` (the kernel of a run; the twin keeps the layers)."""
    from .combinators import Serial

    flat: list = []
    todo = list(layers)
    while todo:
        layer = todo.pop(0)
        if isinstance(layer, Serial):
            todo[:0] = list(layer.layers)
        else:
            flat.append(layer)
    out: list = []
    for layer in flat:
        if isinstance(layer, Nonlinearity) and out and isinstance(out[-1], Nonlinearity):
            out[-1] = Chain(out[-1], layer)
        else:
            out.append(layer)
    return tuple(out)
