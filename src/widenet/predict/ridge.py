"""Ridge regression on explicit features (random-feature sketches of a kernel, or any
features): ``O(N D^2)`` instead of the kernel's ``O(N^3)``."""

from __future__ import annotations

from typing import Any

import torch

from .._validate import as_tensor, check_float
from ..errors import NumericalError, ShapeError

__all__ = ["feature_ridge"]  # ridge_weights, streamed_ridge_weights: the estimators' internals


def feature_ridge(phi_train: Any, y_train: Any, phi_test: Any, diag_reg: Any = 1e-6) -> torch.Tensor:
    """Ridge regression on features: ``phi_test @ w`` with ``w`` solving

        (Phi^T Phi + lambda I) w = Phi^T y,     lambda = diag_reg * mean_i |Phi_i|^2

    (``|Phi_i|^2`` the diagonal of ``Phi Phi^T``, so ``diag_reg`` is relative to the mean
    kernel diagonal, as in ``widenet.predict``). By the push-through identity
    ``(Phi^T Phi + lambda I)^-1 Phi^T = Phi^T (Phi Phi^T + lambda I)^-1`` this is exactly
    kernel ridge regression (the GP posterior mean) with the kernel ``Phi Phi^T``:
    ``K_test,train (K_train + lambda I)^-1 y``. It is solved in feature space, ``O(N D^2)``
    time and ``O(D^2)`` memory beyond the features, when ``D <= N``, and in input space
    (``O(N^2 D)``, the same result) when ``N < D``; by Cholesky, in the features' dtype.
    With features from ``widenet.features`` it approximates the kernel's ridge regression,
    with an error that shrinks as ``1 / sqrt(n_features)``; as for any random-feature
    model, the error is largest when ``D`` is close to ``N`` with a small ``diag_reg``
    (the features interpolate their own noise): take ``D`` well below ``N`` or raise
    ``diag_reg``.

    Args:
        phi_train: ``(N, D)`` training features.
        y_train: ``(N,)`` or ``(N, C)`` targets.
        phi_test: ``(M, D)`` test features.
        diag_reg: ``lambda`` relative to the mean squared feature norm (a float >= 0).

    Returns:
        predictions ``(M,)`` or ``(M, C)``, as ``y_train``.

    Raises:
        ShapeError: features not 2-D, with different ``D``, or ``y_train`` with another
            number of rows; NonFiniteInputError: NaN or Inf; ParameterError: a bad
            ``diag_reg``; NumericalError: the regularized matrix is not positive definite
            (raise ``diag_reg``).

    Example:

        >>> net = wn.Serial(wn.Dense(512), wn.Erf(), wn.Dense(1))
        >>> x_train, x_test = torch.randn(100, 3), torch.randn(7, 3)
        >>> y_train = x_train.sum(1, keepdim=True)
        >>> phi_train = wn.features(net, x_train, 256)
        >>> wn.feature_ridge(phi_train, y_train, wn.features(net, x_test, 256), diag_reg=1e-3).shape
        torch.Size([7, 1])
    """
    owner = "feature_ridge"
    reg = check_float(owner, "diag_reg", diag_reg, minimum=0.0)
    a = as_tensor(owner, "phi_train", phi_train)
    b = as_tensor(owner, "phi_test", phi_test, like=a)
    y = as_tensor(owner, "y_train", y_train, like=a)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ShapeError(f"{owner}: phi_train and phi_test must be 2-D (N, D) and (M, D) with one D "
                         f"(got shapes {tuple(a.shape)} and {tuple(b.shape)})")
    if y.ndim not in (1, 2) or y.shape[0] != a.shape[0]:
        raise ShapeError(f"{owner}: y_train must have shape (N,) or (N, C) with N = {a.shape[0]}, the "
                         f"rows of phi_train (got shape {tuple(y.shape)})")
    vector = y.ndim == 1
    y = y[:, None] if vector else y
    pred = b @ ridge_weights(owner, a, y, reg)
    return pred[:, 0] if vector else pred


def ridge_weights(owner: str, a: torch.Tensor, y: torch.Tensor, reg: float) -> torch.Tensor:
    """``w`` (D, C) of ``feature_ridge`` for validated features ``a`` (N, D) and targets
    ``y`` (N, C): predictions are ``phi_test @ w``."""
    n, dim = a.shape
    lam = reg * float((a * a).sum()) / max(n, 1)
    if dim <= n:  # feature space: (Phi^T Phi + lam I) w = Phi^T y
        gram = a.T @ a
        rhs = a.T @ y
    else:  # input space: alpha = (Phi Phi^T + lam I)^-1 y, w = Phi^T alpha
        gram = a @ a.T
        rhs = y
    gram.diagonal().add_(lam)
    sol = _solve(owner, gram, rhs, "Phi^T Phi" if dim <= n else "Phi Phi^T", reg)
    return sol if dim <= n else a.T @ sol


def _solve(owner: str, gram: torch.Tensor, rhs: torch.Tensor, what: str, reg: float) -> torch.Tensor:
    """``gram^-1 rhs`` by Cholesky, or a NumericalError that says to raise ``diag_reg``."""
    chol, info = torch.linalg.cholesky_ex(gram)
    if int(info) != 0:
        raise NumericalError(
            f"{owner}: the regularized {what} ({gram.shape[0]} x {gram.shape[0]}, {gram.dtype}) is not "
            f"positive definite (Cholesky failed at column {int(info)}); raise diag_reg (now {reg:g}, "
            f"relative to the mean squared feature norm)"
        )
    return torch.cholesky_solve(rhs, chol)


def streamed_ridge_weights(owner: str, chunks: Any, reg: float) -> torch.Tensor:
    """``w`` (D, C) of ``feature_ridge`` in feature space from the training features in row
    chunks, ``chunks`` an iterable of ``(phi_i (n_i, D), y_i (n_i, C))``: ``Phi^T Phi``,
    ``Phi^T y`` and ``sum |Phi_i|^2`` are accumulated chunk by chunk (in float64 for float32
    features), so ``Phi`` is never held whole: ``O(D^2 + n_i D)`` memory for any N. The
    same system as ``ridge_weights`` on the stacked chunks (whose feature-space branch it
    is, for ``D <= N``), summed in another order."""
    gram = rhs = None
    n, sumsq = 0, 0.0
    for phi, y in chunks:
        work = phi.to(torch.float64) if phi.dtype != torch.float64 else phi
        y = y.to(work.dtype)
        if gram is None:
            gram, rhs = work.T @ work, work.T @ y
        else:
            gram.addmm_(work.T, work)
            rhs.addmm_(work.T, y)
        n += phi.shape[0]
        sumsq += float((work * work).sum())
    if gram is None:
        raise ShapeError(f"{owner}: no training features (an empty set of chunks)")
    gram.diagonal().add_(reg * sumsq / n)
    return _solve(owner, gram, rhs, "Phi^T Phi", reg)
