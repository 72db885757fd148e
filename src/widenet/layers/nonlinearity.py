"""The base of elementwise nonlinearities, and their shared finite twin.

For a nonlinearity ``phi`` acting on a centred Gaussian pre-activation with covariance
``[[q1, K], [K, q2]]`` the kernel rules are (Neal 1996; Lee et al. 2018; Jacot et al. 2018):

    K'     = T(K)  = E[phi(u) phi(v)]
    Theta' = Theta * Tdot(K),     Tdot(K) = E[phi'(u) phi'(v)]

A subclass gives ``fn`` (the function itself, for its twin), ``_tile`` (the pairwise rule on
a tile, in place) and ``_diag`` (the variance rule ``q -> T(q, q, q)``). Formulas are written
without divisions by the variances wherever possible, so zero-variance inputs give finite
kernels, and with ``atan2`` rather than ``arccos`` so that correlations near +-1 keep their
precision.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from .._engine import Flow, Tile, is_dual, scratch
from .._validate import check_float
from ..errors import LayerOrderError
from .base import Build, Layer, Spec

__all__ = ["Nonlinearity", "ActivationModule", "autograd_derivative"]


def autograd_derivative(fn: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor]:
    """``x -> fn'(x)`` elementwise, by autograd; itself differentiable (in reverse and forward
    mode) when ``x`` carries derivatives, as kernels differentiated in their inputs or
    hyperparameters need."""
    def derivative(x: torch.Tensor) -> torch.Tensor:
        if x.requires_grad:  # reverse mode: keep the derivative's own graph
            with torch.enable_grad():
                (grad,) = torch.autograd.grad(fn(x).sum(), x, create_graph=True)
            return grad
        if is_dual(x):  # forward mode: the derivative's tangent too
            return torch.func.grad(lambda t: fn(t).sum())(x)
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(fn(x).sum(), x)
        return grad

    return derivative


class Nonlinearity(Layer):
    """Base of elementwise layers (see the module docstring)."""

    def fn(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - overridden
        raise NotImplementedError

    def derivative(self, x: torch.Tensor) -> torch.Tensor:
        """``phi'(x)`` elementwise (by autograd unless the layer knows it in closed form).

        Example:

            >>> wn.Erf().derivative(torch.zeros(3))   # 2 / sqrt(pi)
            tensor([1.1284, 1.1284, 1.1284])
        """
        return autograd_derivative(self.fn)(x)

    def _tile(self, w: Tile) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def _diag(self, q: torch.Tensor) -> torch.Tensor:  # pragma: no cover - overridden
        raise NotImplementedError

    def _check_floats(self, *names: str) -> None:
        for name in names:
            object.__setattr__(self, name, check_float(self._name, name, getattr(self, name), tensor=True))

    # ---- public evaluations of the rule ------------------------------------------------------
    def dual(self, q1: Any, q2: Any, k: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """The dual activation and its derivative, elementwise over broadcast tensors:
        ``T = E[phi(u) phi(v)]`` and ``Tdot = E[phi'(u) phi'(v)]`` for
        ``(u, v) ~ N(0, [[q1, k], [k, q2]])``, by this layer's own kernel rule.

        Example:

            >>> t, tdot = wn.Relu().dual(1.0, 1.0, 0.0)   # 1/(2 pi), 1/4
        """
        q1, q2, k = torch.broadcast_tensors(*(torch.as_tensor(v, dtype=torch.float64)
                                               if not isinstance(v, torch.Tensor) else v
                                               for v in (q1, q2, k)))
        shape = k.shape
        tile = Tile(k.reshape(-1).clone(), torch.ones_like(k.reshape(-1)), q1.reshape(-1).clone(),
                    q2.reshape(-1).clone(), self_mode=True, is_gaussian=True)
        self._tile(tile)
        return tile.nngp.reshape(shape), tile.ntk.reshape(shape)

    def variance(self, q: Any) -> torch.Tensor:
        """``E[phi(sqrt(q) z)^2]`` for ``z ~ N(0, 1)``, elementwise (the rule on the diagonal).

        Example:

            >>> wn.Relu().variance(torch.tensor([2.0]))   # q / 2
            tensor([1.])
        """
        q = q if isinstance(q, torch.Tensor) else torch.as_tensor(q, dtype=torch.float64)
        return self._diag(q.reshape(-1)).reshape(q.shape)

    # ---- the contract -------------------------------------------------------------------------
    def _rule(self, flow: Flow) -> Flow:
        w = self._single(flow)
        if not w.is_gaussian:
            raise LayerOrderError(
                f"{self._name}: its input must be Gaussian, i.e. the output of an affine layer "
                f"such as Dense; add a Dense layer before it (a nonlinearity cannot follow the "
                f"network input, and follows another nonlinearity only next to it in a Serial, "
                f"where the two compose)"
            )
        if w.nngp is not None:
            # Each input against itself takes its own covariance's exact bits first: the rules
            # need q1 q2 - K^2 to be exactly zero there (an angle of 0, not ~1e-8), and the
            # affine layers may round a tile and a covariance differently (fused or not).
            w.sync_diagonal()
            self._tile(w)

        def own(cov: torch.Tensor) -> torch.Tensor:
            new_var = self._diag(w.variances(cov))
            # Each input's own covariance over position pairs is itself a kernel: apply the
            # same rule to it, with exact variances on its diagonal.
            return self._self_rule(w, cov, new_var) if w.is_full else new_var

        w.set_covs(own)
        w.is_gaussian = False
        w.sync_diagonal()
        return w

    def _self_rule(self, w: Tile, cov: torch.Tensor, new_var: torch.Tensor) -> torch.Tensor:
        own = Tile(scratch.clone(cov), None, cov, cov, self_mode=True, spatial=w.spatial, full=True)
        self._tile(own)
        n, b = w.npos, cov.shape[0]
        own.nngp.view(b, n, n).diagonal(dim1=1, dim2=2).copy_(new_var.reshape(b, n))
        return own.nngp

    def _twin(self, spec: Spec, build: Build) -> tuple[nn.Module, Spec]:
        return ActivationModule(self.fn, repr(self)), self._single_spec(spec)


class ActivationModule(nn.Module):
    """Applies an elementwise function ``fn`` (a torch callable); the twin of every
    ``Nonlinearity``."""

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], name: str) -> None:
        super().__init__()
        self.fn = fn
        self.name = name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)

    def extra_repr(self) -> str:
        return self.name


