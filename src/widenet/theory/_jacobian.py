"""Dynamical isometry: the singular values of a network's input-output Jacobian at
initialization (Saxe et al. 2014; Pennington, Schoenholz & Ganguli 2017, arXiv 1711.04735;
Xiao et al. 2018, arXiv 1806.05393 for convolutions).

For a deep network ``h^l = W^l phi(h^{l-1}) + b^l`` whose pre-activations sit at the length
map's fixed point ``q*``, the squared singular values of ``J = dh^L / dh^0 = prod W^l D^l``
(``D^l = diag phi'(h^{l-1})``) have, at large width, the mean ``chi^L`` (``chi = weight_var
mu_1``) and the variance ``chi^{2L} L (mu_2 / mu_1^2 - 1 + v_W)``, where ``mu_k = E[phi'(sqrt(q*)
z)^{2k}]`` and ``v_W`` is the normalized variance of ``W' W``'s spectrum: 1 for square Gaussian
weights, 0 for orthogonal ones. (S-transforms multiply under free products; to first order a
spectrum's S-transform is ``(1 - v w) / mean``, so means multiply and normalized variances add.)
At criticality (``chi = 1``) Gaussian weights spread the spectrum linearly in depth, while
orthogonal weights with a small ``q*`` keep it concentrated near 1: dynamical isometry.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional

import torch

from .._hermite import gauss_hermite
from .._validate import as_inputs, as_tensor, check_choice, check_int
from ..errors import ParameterError, ShapeError
from ._signal import _phi, _variances, fixed_point_q
from ._plot import legend, new_axes

D = torch.float64


@dataclass(frozen=True)
class JacobianSpectrum:
    """Singular values ``(N, min(out, in))`` of each example's input-output Jacobian."""

    singular_values: torch.Tensor

    @property
    def squared(self) -> torch.Tensor:
        return self.singular_values ** 2

    @property
    def mean(self) -> float:
        """Mean squared singular value (``tr J J' / min(out, in)``, averaged over examples)."""
        return float(self.squared.mean())

    @property
    def variance(self) -> float:
        """Variance of the squared singular values, pooled over examples."""
        return float(self.squared.var(unbiased=False))

    @property
    def max(self) -> float:
        return float(self.singular_values.max())

    def plot(self, ax: Optional[Any] = None, label: Optional[str] = None, bins: int = 60):
        """Histogram (density) of the singular values. Returns the matplotlib figure."""
        if ax is None:
            ax = new_axes(figsize=(5, 3.5))
        s = self.singular_values.detach().cpu().numpy().ravel()
        ax.hist(s, bins=bins, density=True, histtype="step", lw=1.5, label=label)
        ax.set_xlabel("singular value of the input-output Jacobian")
        ax.set_ylabel("density")
        if label is not None:
            legend(ax, fontsize=8)
        return ax.figure


def _input_jacobians(owner: str, model: torch.nn.Module, x: Any, transform=None) -> torch.Tensor:
    """Per-example Jacobians ``(N, out, in)`` of ``transform(model(x_i))`` in ``x_i``
    (reverse mode, vectorized over examples), parameters held fixed."""
    if not isinstance(model, torch.nn.Module):
        raise ParameterError(f"{owner}: model must be a torch.nn.Module (got {type(model).__name__})")
    x = as_inputs(owner, "x", x, half="keep")
    if x.ndim < 2 or x.shape[0] < 1:
        raise ShapeError(f"{owner}: x must be a batch (N, ...) of at least one input (got {tuple(x.shape)})")
    from torch.func import functional_call, jacrev, vmap

    params = {k: v.detach() for k, v in model.named_parameters()}
    buffers = dict(model.named_buffers())

    def one(xi):
        out = functional_call(model, (params, buffers), (xi[None],))[0].reshape(-1)
        return out if transform is None else transform(out)

    jac = vmap(jacrev(one))(x)  # (N, out, *in)
    return jac.reshape(x.shape[0], jac.shape[1], -1).detach()


def jacobian_spectrum(model: torch.nn.Module, x: Any) -> JacobianSpectrum:
    """The singular values of ``d model(x_i) / d x_i`` for every example ``x_i`` of ``x``
    (inputs and outputs flattened per example), by ``torch.func`` (reverse mode, vectorized
    over examples). Works for any ``torch.nn.Module`` mapping a batch to a batch, e.g. a finite
    widenet network built with ``net.module(..., init="orthogonal")``."""
    return JacobianSpectrum(torch.linalg.svdvals(_input_jacobians("theory.jacobian_spectrum", model, x)))


def jacobian_norm(model: torch.nn.Module, x: Any, *, softmax: bool = False) -> torch.Tensor:
    """Sensitivity of every example (Novak et al. 2018, arXiv 1802.08760): the Frobenius norm
    ``||d f(x_i) / d x_i||_F`` of the input-output Jacobian, ``(N,)``. ``f`` is the model's
    flattened output, or with ``softmax`` its class probabilities (the paper's choice for
    classifiers). Novak et al. found it larger off the data manifold and, averaged over test
    points, correlated with the generalization gap."""
    transform = (lambda out: torch.softmax(out, dim=0)) if softmax else None
    jac = _input_jacobians("theory.jacobian_norm", model, x, transform)
    return torch.linalg.matrix_norm(jac)


@dataclass(frozen=True)
class JacobianMoments:
    """Large-width prediction for the squared singular values of a depth-``depth`` Jacobian."""

    mean: float
    variance: float
    chi: float
    q_star: float
    mu1: float
    mu2: float


def jacobian_moments(phi: Any, weight_var: float, bias_var: float, depth: int, *,
                     init: str = "gaussian") -> JacobianMoments:
    """Mean and variance of the squared singular values of ``J = dh^L / dh^0`` for ``depth``
    square layers ``h^l = W^l phi(h^{l-1}) + b^l`` at the fixed point ``q*`` (module docstring;
    Pennington et al. 2017, eq. 17 at ``chi = 1``), for ``init`` "gaussian" or "orthogonal"."""
    owner = "theory.jacobian_moments"
    phi = _phi(owner, phi)
    w, b = _variances(owner, weight_var, bias_var)
    if w.ndim or b.ndim:
        raise ParameterError(f"{owner}: weight_var and bias_var must be scalars (got {w.tolist()}, {b.tolist()})")
    depth = check_int(owner, "depth", depth, minimum=1)
    init = check_choice(owner, "init", init, ("gaussian", "orthogonal"))
    q = float(fixed_point_q(phi, w, b))
    if not math.isfinite(q):
        raise ParameterError(f"{owner}: q* is infinite at weight_var={float(w)}, bias_var={float(b)} (no fixed point)")
    nodes, weights = gauss_hermite(200)
    wt = torch.as_tensor(weights, dtype=D)
    # q* = 0 (no bias, ordered side): the limit q -> 0+ (for ReLU, any q: phi' is scale-free).
    h = math.sqrt(max(q, 1e-200)) * torch.as_tensor(nodes, dtype=D)
    d2 = phi.derivative(h) ** 2
    mu1, mu2 = float((wt * d2).sum()), float((wt * d2 ** 2).sum())
    chi = float(w) * mu1
    v_w = 1.0 if init == "gaussian" else 0.0
    mean = chi ** depth
    return JacobianMoments(mean, mean ** 2 * depth * (mu2 / mu1 ** 2 - 1 + v_w), chi, q, mu1, mu2)
