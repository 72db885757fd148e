"""Top eigenpairs of a model's NTK and of its loss Hessian, matrix-free.

Both operators are applied by ``torch.func`` without ever forming the matrix: the NTK on a
batch as ``v -> J (J^T v)`` (a vector-Jacobian product followed by a Jacobian-vector product,
about three forward passes), the Hessian as ``v -> d/ds grad L(theta + s v)`` (forward-over-
reverse). ARPACK's implicitly restarted Lanczos method (``scipy.sparse.linalg.eigsh``) finds
the extreme eigenpairs from a few tens of such products. Small operators are formed densely
from the same products and diagonalized exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, grad, jvp, vjp

from .._validate import as_inputs, as_tensor, check_choice, check_float, check_int
from ..empirical import ModelFunction, ParameterSelector, eval_mode, pushforward, select_parameters
from ..errors import NonFiniteInputError, ParameterError, ShapeError

__all__ = ["Eigenpairs", "ntk_eigenpairs", "hessian_eigenpairs", "subspace_overlap"]


@dataclass(frozen=True)
class Eigenpairs:
    """``k`` eigenvalues (descending for "largest", ascending for "smallest", by decreasing
    magnitude for "magnitude") and the orthonormal eigenvectors as the rows of ``vectors``
    ``(k, n)``, in float64. ``matvecs`` counts the operator products used; ``method`` says
    whether they came from Lanczos or from the dense matrix."""

    values: torch.Tensor
    vectors: torch.Tensor
    matvecs: int
    method: str

    @property
    def top(self) -> float:
        return float(self.values[0])


def subspace_overlap(a: Any, b: Any) -> float:
    """Overlap ``||A B^T||_F^2 / k`` of the spans of the orthonormal rows of ``a`` ``(k, n)``
    and ``b`` ``(k', n)``, with ``k = min(k, k')``: 1 when one span contains the other, about
    ``k' / n`` for random subspaces (Gur-Ari et al. 2018)."""
    owner = "theory.subspace_overlap"
    a, b = (v.vectors if isinstance(v, Eigenpairs) else as_tensor(owner, name, v) for v, name in ((a, "a"), (b, "b")))
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ShapeError(f"{owner}: a and b must be (k, n) with one n (got {tuple(a.shape)} and {tuple(b.shape)})")
    m = a.to(torch.float64) @ b.to(torch.float64).T
    return float((m ** 2).sum()) / min(a.shape[0], b.shape[0])


_WHICH = {"largest": "LA", "smallest": "SA", "magnitude": "LM"}


def _order(values: np.ndarray, which: str) -> np.ndarray:
    if which == "largest":
        return np.argsort(-values, kind="stable")
    if which == "smallest":
        return np.argsort(values, kind="stable")
    return np.argsort(-np.abs(values), kind="stable")


def _eigenpairs(owner: str, matvec: Callable[[torch.Tensor], torch.Tensor], n: int, k: int, which: str,
                method: str, tol: Optional[float], seed: int, maxiter: Optional[int],
                like: torch.Tensor) -> Eigenpairs:
    """Extreme eigenpairs of the symmetric ``n x n`` operator ``matvec`` (torch vectors in the
    dtype and on the device of ``like``)."""
    if k > n:
        raise ParameterError(f"{owner}: k must be <= the operator's size {n} (got {k})")
    count = [0]

    def apply(v: np.ndarray) -> np.ndarray:
        count[0] += 1
        t = torch.as_tensor(np.ascontiguousarray(v, dtype=np.float64).ravel()).to(like.dtype).to(like.device)
        return matvec(t).detach().to(torch.float64).cpu().numpy()

    if method == "auto":
        # ARPACK needs k < n - 1 and gains nothing on operators a few dozen products can form.
        method = "dense" if n <= max(64, 2 * k + 2) else "lanczos"
    if method == "dense":
        eye = np.eye(n)
        a = np.stack([apply(eye[i]) for i in range(n)], axis=1)
        values, vectors = np.linalg.eigh(0.5 * (a + a.T))
    else:
        if k >= n - 1:
            raise ParameterError(f"{owner}: method='lanczos' needs k < n - 1 = {n - 1} (got k={k}); use method='dense'")
        from scipy.sparse.linalg import ArpackNoConvergence, LinearOperator, eigsh

        v0 = torch.randn(n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).numpy()
        if tol is None:
            tol = 1e-10 if like.dtype == torch.float64 else 1e-5
        op = LinearOperator((n, n), matvec=apply, dtype=np.float64)
        try:
            values, vectors = eigsh(op, k=k, which=_WHICH[which], v0=v0, tol=tol,
                                    maxiter=maxiter or max(1000, 20 * n), ncv=min(n, max(2 * k + 1, 20)))
        except ArpackNoConvergence as err:
            raise ParameterError(f"{owner}: Lanczos did not converge to tol={tol} within maxiter "
                                 f"({len(err.eigenvalues)} of {k} eigenpairs converged); raise maxiter or tol") from None
    idx = _order(values, which)[:k]
    return Eigenpairs(torch.as_tensor(values[idx].copy()), torch.as_tensor(vectors[:, idx].T.copy()), count[0],
                      method)


def _check_common(owner, model, k, which, method, tol, seed, maxiter):
    if not isinstance(model, nn.Module):
        raise ParameterError(f"{owner}: model must be a torch.nn.Module (got {type(model).__name__})")
    k = check_int(owner, "k", k, minimum=1)
    which = check_choice(owner, "which", which, tuple(_WHICH))
    method = check_choice(owner, "method", method, ("auto", "lanczos", "dense"))
    if tol is not None:
        tol = check_float(owner, "tol", tol, minimum=0.0)
    seed = check_int(owner, "seed", seed, minimum=0)
    if maxiter is not None:
        maxiter = check_int(owner, "maxiter", maxiter, minimum=1)
    return k, which, method, tol, seed, maxiter


def _check_input(owner, model, x):
    x = as_inputs(owner, "x", x, half="keep")
    ref = next(iter(model.parameters()), None)
    if ref is None:
        raise ParameterError(f"{owner}: the model has no parameters")
    if x.ndim < 1 or x.shape[0] < 1:
        raise ShapeError(f"{owner}: x must be a batch (N, ...) of at least one input (got {tuple(x.shape)})")
    if x.dtype != ref.dtype:
        raise ShapeError(f"{owner}: inputs and model parameters must share a dtype (got {x.dtype} and {ref.dtype})")
    if x.device != ref.device:
        raise ShapeError(f"{owner}: inputs and model must be on one device (got {x.device} and {ref.device})")
    return x


class NTKOperator:
    """``v -> scale * J J^T v`` on the ``(N O)``-vectors of a batch's outputs (``J`` the
    Jacobian of the flattened outputs in the chosen parameters), never forming ``J``. The
    vector-Jacobian product's graph is built once and reused by every product."""

    def __init__(self, owner: str, model: nn.Module, x: torch.Tensor, params: ParameterSelector, scale: float) -> None:
        chosen = select_parameters(model, params, owner=owner)
        self.fn = ModelFunction(model, chosen, owner)
        self.params, self.x, self.scale, self.owner = chosen, x, scale, owner
        with eval_mode(model):
            out, self._pullback = vjp(lambda p: self.fn(p, x), chosen)
        self.shape = tuple(out.shape)
        self.size = out.numel()
        self.model = model
        self._double_backward = None

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        t = self._pullback(v.reshape(self.shape))[0]
        with eval_mode(self.model):
            try:
                pushed = jvp(lambda p: self.fn(p, self.x), (self.params,), (t,))[1]
            except NotImplementedError:  # an op without forward-mode AD: J t by double backward
                if self._double_backward is None:
                    self._double_backward = pushforward(self.fn, self.params, self.x)
                pushed = self._double_backward(t)[0]
        return self.scale * pushed.reshape(-1)


def ntk_eigenpairs(model: nn.Module, x: Any, k: int = 1, *, normalize: bool = True, params: ParameterSelector = None,
                   method: str = "auto", which: str = "largest", tol: Optional[float] = None, seed: int = 0,
                   maxiter: Optional[int] = None) -> Eigenpairs:
    """Top eigenpairs of a model's empirical NTK on the batch ``x``, over all its outputs.

    The operator is ``J J^T`` on ``(N O)``-vectors (``J = d model(x) / d params``, outputs
    flattened; the "full" NTK of ``widenet.empirical.ntk`` as an ``(N O, N O)`` matrix),
    applied by NTK-vector products without forming the kernel. With ``normalize`` it is
    divided by ``N O``: then its top eigenvalue ``lambda_0`` is the curvature of the loss
    ``||f - y||^2 / (2 N O)`` along the function, so that full-batch gradient descent at rate
    ``eta`` is stable in the linearized model exactly when ``eta < 2 / lambda_0`` (Lewkowycz
    et al. 2020, and ``widenet.predict.max_learning_rate``).

    Args:
        model: any ``torch.nn.Module`` mapping a batch to a batch (evaluated in eval mode).
        x: the batch.
        k: number of eigenpairs.
        normalize: divide by the number of outputs ``N O`` (see above).
        params: which parameters (as in ``widenet.empirical.ntk``).
        method: "lanczos" (ARPACK over NTK-vector products), "dense" (the matrix from ``N O``
            products, then ``eigh``) or "auto" (dense up to ``max(64, 2k + 2)`` outputs).
        which: "largest", "smallest" or "magnitude".
        tol: Lanczos relative tolerance (default 1e-10 in float64, 1e-5 in float32).
        seed: of Lanczos' starting vector.
        maxiter: Lanczos restarts' iteration limit.
    """
    owner = "theory.ntk_eigenpairs"
    k, which, method, tol, seed, maxiter = _check_common(owner, model, k, which, method, tol, seed, maxiter)
    x = _check_input(owner, model, x)
    op = NTKOperator(owner, model, x, params, 1.0)
    if normalize:
        op.scale = 1.0 / op.size
    return _eigenpairs(owner, op, op.size, k, which, method, tol, seed, maxiter, x)


def _flat(tensors: Dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in tensors.values()])


def _unflat(v: torch.Tensor, like: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    out, i = {}, 0
    for name, t in like.items():
        out[name] = v[i:i + t.numel()].view_as(t)
        i += t.numel()
    return out


class HessianOperator:
    """``v -> H v`` for the loss ``loss(model(x), y)`` in the chosen parameters (flattened in
    ``named_parameters`` order), by forward-over-reverse differentiation, with a
    double-backward fallback for ops that lack forward-mode rules."""

    def __init__(self, owner: str, model: nn.Module, loss: Callable, x: torch.Tensor, y: Any,
                 params: ParameterSelector) -> None:
        self.params = select_parameters(model, params, owner=owner)
        fixed = {n: p.detach() for n, p in model.named_parameters() if n not in self.params}
        fixed.update(dict(model.named_buffers()))
        self.model, self.owner = model, owner

        def objective(p):
            value = loss(functional_call(model, {**fixed, **p}, (x,)), y)
            if not isinstance(value, torch.Tensor) or value.numel() != 1:
                raise ShapeError(f"{owner}: loss(outputs, y) must return a scalar tensor (got "
                                 f"{type(value).__name__}{'' if not isinstance(value, torch.Tensor) else tuple(value.shape)})")
            return value.reshape(())

        self.objective = objective
        self.size = sum(p.numel() for p in self.params.values())
        self._forward = True

    def gradient(self) -> torch.Tensor:
        return _flat(grad(self.objective)(self.params)).detach()

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        tangent = _unflat(v, self.params)
        if self._forward:
            try:
                return _flat(jvp(grad(self.objective), (self.params,), (tangent,))[1])
            except (NotImplementedError, RuntimeError):
                # An op without a forward-mode rule, or one whose rule fails under
                # forward-over-reverse (torch 2.13's mse_loss backward writes into a
                # ZeroTensor): double backward computes the same product. A real error
                # in the loss raises again there.
                self._forward = False
        p = {n: t.detach().requires_grad_(True) for n, t in self.params.items()}
        g = torch.autograd.grad(self.objective(p), list(p.values()), create_graph=True)
        hv = torch.autograd.grad(g, list(p.values()), grad_outputs=list(tangent.values()))
        return torch.cat([h.reshape(-1) for h in hv])


def hessian_eigenpairs(model: nn.Module, loss: Callable, x: Any, y: Any, k: int = 1, *, params: ParameterSelector = None,
                       method: str = "auto", which: str = "largest", tol: Optional[float] = None, seed: int = 0,
                       maxiter: Optional[int] = None) -> Eigenpairs:
    """Extreme eigenpairs of the Hessian of ``loss(model(x), y)`` in the model's parameters,
    by Lanczos over Hessian-vector products (never forming the Hessian).

    Args:
        model: any ``torch.nn.Module`` (evaluated in its current mode, so set ``eval()`` for
            a deterministic loss).
        loss: ``(outputs, y) -> scalar``, e.g. ``torch.nn.functional.cross_entropy``.
        x, y: the batch the loss is evaluated on (``y`` is passed through untouched).
        k, params, method, which, tol, seed, maxiter: as in ``ntk_eigenpairs`` ("auto"
            forms the Hessian densely only up to ``max(64, 2k + 2)`` parameters).

    Returns:
        ``Eigenpairs`` whose ``vectors`` are flattened over the selected parameters in
        ``model.named_parameters()`` order.
    """
    owner = "theory.hessian_eigenpairs"
    k, which, method, tol, seed, maxiter = _check_common(owner, model, k, which, method, tol, seed, maxiter)
    if not callable(loss):
        raise ParameterError(f"{owner}: loss must be a callable (outputs, y) -> scalar (got {type(loss).__name__})")
    x = _check_input(owner, model, x)
    if isinstance(y, torch.Tensor) and y.is_floating_point() and not bool(torch.isfinite(y).all()):
        raise NonFiniteInputError(f"{owner}: y must be finite ({int((~torch.isfinite(y)).sum())} NaN or Inf entries)")
    op = HessianOperator(owner, model, loss, x, y, params)
    return _eigenpairs(owner, op, op.size, k, which, method, tol, seed, maxiter, x)
