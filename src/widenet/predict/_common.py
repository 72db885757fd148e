"""Validation and linear algebra shared by the predict functions.

Every predict function takes kernel matrices (tensors, numpy arrays, or objects with ``nngp``
and ``ntk`` attributes such as ``widenet.Kernel``), checks them before any work, and
solves in ``dtype`` (float64 by default) on the kernels' device. Results are returned in the
dtype of the training kernel, on its device.
"""

from __future__ import annotations

import math
from typing import Any, Optional, Union

import numpy as np
import torch

from .._validate import check_choice, check_float
from ..errors import NonFiniteInputError, NumericalError, ParameterError, ShapeError

Scalar = Union[float, torch.Tensor]


def tensor(owner: str, name: str, value: Any, *, device=None) -> torch.Tensor:
    """A floating tensor from a tensor, array or nested list; NaN/Inf refused."""
    if isinstance(value, np.ndarray):
        value = torch.from_numpy(np.ascontiguousarray(value))
    elif not isinstance(value, torch.Tensor):
        try:
            value = torch.as_tensor(np.asarray(value, dtype=float))
        except (TypeError, ValueError) as err:
            raise ShapeError(
                f"{owner}: {name} must be a tensor or array of numbers (got {type(value).__name__})"
            ) from err
    if value.is_complex():
        raise ParameterError(f"{owner}: {name} must be real-valued (got dtype {value.dtype})")
    if not value.is_floating_point():
        value = value.to(torch.get_default_dtype())
    if device is not None:
        value = value.to(device)
    if not bool(torch.isfinite(value).all()):
        bad = int((~torch.isfinite(value)).sum())
        raise NonFiniteInputError(
            f"{owner}: {name} must be finite, but {bad} of its {value.numel()} entries are NaN or Inf"
        )
    return value


def is_kernel(k: Any) -> bool:
    """Whether ``k`` is Kernel-like (has ``nngp`` and ``ntk`` attributes) rather than a matrix."""
    return hasattr(k, "nngp") and hasattr(k, "ntk") and not isinstance(k, (torch.Tensor, np.ndarray))


def pick(owner: str, name: str, k: Any, get: str) -> Any:
    """The ``get`` matrix ("nngp" or "ntk") of a Kernel-like object, or ``k`` itself."""
    if is_kernel(k):
        matrix = getattr(k, get, None)
        if matrix is None:
            raise ParameterError(f"{owner}: {name} has no {get!r} matrix (its {get} is None)")
        return matrix
    return k


def matrix(owner: str, name: str, k: Any, *, rows: Optional[int] = None, cols: Optional[int] = None,
           device=None, outputs: Optional[int] = None) -> torch.Tensor:
    """A 2-D kernel matrix, shape-checked against the expected numbers of rows and columns
    (of points). With ``outputs`` (the training kernel was a full-output one), ``k`` must be a
    full-output kernel ``(N1, N2, outputs, outputs)`` too, and is returned as its
    ``(N1 outputs, N2 outputs)`` matrix."""
    k = tensor(owner, name, k, device=device)
    if outputs is not None:
        if k.ndim != 4 or k.shape[2:] != (outputs, outputs):
            raise ShapeError(
                f"{owner}: the training kernel is a full-output kernel with {outputs} outputs, so {name} must "
                f"be one too, of shape (N1, N2, {outputs}, {outputs}) (got shape {tuple(k.shape)})"
            )
    elif k.ndim != 2:
        full = " or, where the training kernel is one too, a full-output kernel (N1, N2, O, O)"
        raise ShapeError(
            f"{owner}: {name} must be a 2-D kernel matrix (N1, N2){full if k.ndim == 4 else ''} (got shape "
            f"{tuple(k.shape)}); kernels with spatial axes must be pooled or flattened to outputs first"
        )
    if rows is not None and k.shape[0] != rows:
        raise ShapeError(f"{owner}: {name} must have {rows} rows (got shape {tuple(k.shape)})")
    if cols is not None and k.shape[1] != cols:
        raise ShapeError(
            f"{owner}: {name} must have one column per training point, {cols} (got shape {tuple(k.shape)})"
        )
    return k if outputs is None else flatten(k)


def flatten(k: torch.Tensor) -> torch.Tensor:
    """A full-output kernel ``(N1, N2, O, O)`` as the ``(N1 O, N2 O)`` matrix of all
    (point, output) pairs, each point's outputs adjacent."""
    n1, n2, o, _ = k.shape
    return k.permute(0, 2, 1, 3).reshape(n1 * o, n2 * o)


def unflatten(c: torch.Tensor, outputs: int) -> torch.Tensor:
    """The inverse of ``flatten``: ``(M1 O, M2 O)`` -> ``(M1, M2, O, O)``."""
    m1, m2 = c.shape[0] // outputs, c.shape[1] // outputs
    return c.reshape(m1, outputs, m2, outputs).permute(0, 2, 1, 3)


def train_kernel(owner: str, name: str, k: Any, *, full: bool = False) -> torch.Tensor:
    """The square training kernel. With ``full``, a full-output kernel ``(N, N, O, O)`` is
    accepted too and returned as its ``(N O, N O)`` matrix (see ``train_outputs``)."""
    outputs = train_outputs(owner, name, k) if full else None
    k = matrix(owner, name, k, outputs=outputs)
    if k.shape[0] != k.shape[1]:
        raise ShapeError(f"{owner}: {name} must be square (got shape {tuple(k.shape)})")
    if k.shape[0] == 0:
        raise ShapeError(f"{owner}: {name} must hold at least one training point (got shape {tuple(k.shape)})")
    return k


def train_outputs(owner: str, name: str, k: Any) -> Optional[int]:
    """The number of outputs O of a full-output training kernel ``(N, N, O, O)``; None for a
    kernel matrix ``(N, N)`` that every output column shares."""
    shape = tuple(getattr(k, "shape", ()))
    if len(shape) != 4:
        return None
    if shape[2] != shape[3]:
        raise ShapeError(f"{owner}: a full-output {name} must have shape (N, N, O, O) (got {shape})")
    return int(shape[2])


def targets(owner: str, y: Any, n: int, device, outputs: Optional[int] = None) -> tuple[torch.Tensor, bool]:
    """``y_train`` as an ``(n, k)`` tensor, and whether it was 1-D (results keep its form).
    With a full-output kernel of ``outputs`` outputs (``n`` counting (point, output) pairs),
    ``y_train`` is ``(n / outputs, outputs)`` and is returned as one ``(n, 1)`` column."""
    y = tensor(owner, "y_train", y, device=device)
    if outputs is not None:
        points = n // outputs
        if y.ndim == 1 and outputs == 1:
            y = y[:, None]
        if y.shape != (points, outputs):
            raise ShapeError(
                f"{owner}: with a full-output training kernel ({points} points, {outputs} outputs), y_train "
                f"must have shape ({points}, {outputs}) (got {tuple(y.shape)})"
            )
        return y.reshape(n, 1), False
    if y.ndim not in (1, 2):
        raise ShapeError(f"{owner}: y_train must have shape (N,) or (N, outputs) (got {tuple(y.shape)})")
    if y.shape[0] != n:
        raise ShapeError(
            f"{owner}: y_train must have one row per training point: kernel is {n}x{n}, "
            f"y_train has shape {tuple(y.shape)}"
        )
    return (y[:, None] if y.ndim == 1 else y), y.ndim == 1


def initial(owner: str, name: str, value: Any, shape: tuple, like: torch.Tensor) -> torch.Tensor:
    """Initial outputs broadcast to ``shape`` (a scalar such as 0.0 is allowed)."""
    value = tensor(owner, name, value, device=like.device).to(like.dtype)
    try:
        return torch.broadcast_to(value, shape)
    except RuntimeError:
        raise ShapeError(
            f"{owner}: {name} must broadcast to the outputs' shape {shape} (got {tuple(value.shape)})"
        ) from None


def solve_dtype(owner: str, dtype: Any) -> torch.dtype:
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ParameterError(f"{owner}: dtype must be a floating torch.dtype (got {dtype!r})")
    return dtype


def check_reg(owner: str, diag_reg: Any) -> Scalar:
    """``diag_reg`` as a float >= 0, or a 0-d tensor (kept, so that it can be differentiated)."""
    if isinstance(diag_reg, torch.Tensor):
        if diag_reg.ndim != 0 or not bool(torch.isfinite(diag_reg.detach())) or float(diag_reg.detach()) < 0:
            raise ParameterError(f"{owner}: diag_reg must be a finite float >= 0 (got {diag_reg!r})")
        return diag_reg
    return check_float(owner, "diag_reg", diag_reg, minimum=0.0)


def regularize(k: torch.Tensor, diag_reg: Scalar, absolute: bool) -> torch.Tensor:
    """``K + diag_reg * s * I`` with ``s = 1`` (absolute) or ``s = Tr K / n`` (relative)."""
    if not isinstance(diag_reg, torch.Tensor) and diag_reg == 0:
        return k
    scale = diag_reg if absolute else diag_reg * k.diagonal().mean()
    return k + scale * torch.eye(k.shape[0], dtype=k.dtype, device=k.device)


def _advice(owner: str, n: int, dtype: torch.dtype, diag_reg: Scalar, what: str) -> NumericalError:
    reg = float(diag_reg.detach() if isinstance(diag_reg, torch.Tensor) else diag_reg)
    hint = "raise diag_reg (now %g, relative to the mean diagonal)" % reg
    if dtype != torch.float64:
        hint += f", or solve in float64 (now {dtype})"
    return NumericalError(
        f"{owner}: the {n}x{n} training kernel is not numerically positive definite ({what}); {hint}. "
        f"Duplicate training inputs and kernels computed in float32 are the usual causes."
    )


def cholesky(owner: str, k: torch.Tensor, diag_reg: Scalar) -> torch.Tensor:
    chol, info = torch.linalg.cholesky_ex(k)
    if int(info) != 0:
        raise _advice(owner, k.shape[0], k.dtype, diag_reg, f"Cholesky failed at column {int(info)}")
    return chol


def eigh(owner: str, k: torch.Tensor, diag_reg: Scalar) -> tuple[torch.Tensor, torch.Tensor]:
    try:
        evals, evecs = torch.linalg.eigh(k)
    except RuntimeError as err:  # torch.linalg.LinAlgError derives from RuntimeError
        raise _advice(owner, k.shape[0], k.dtype, diag_reg, f"eigendecomposition failed: {err}") from err
    return evals.clamp_min(0.0), evecs


def times(owner: str, t: Any, dtype: torch.dtype, device) -> tuple[Optional[torch.Tensor], tuple]:
    """Training times as a flat tensor and their shape; ``None`` stands for t = infinity."""
    if t is None:
        return None, ()
    value = t
    if isinstance(t, (int, float)) and not isinstance(t, bool):
        value = torch.tensor(float(t), dtype=dtype, device=device)
    elif isinstance(t, np.ndarray):
        value = torch.from_numpy(np.asarray(t, dtype=float))
    elif not isinstance(t, torch.Tensor):
        try:
            value = torch.as_tensor(np.asarray(t, dtype=float))
        except (TypeError, ValueError):
            raise ParameterError(f"{owner}: t must be a number, an array of numbers or None (got {t!r})") from None
    value = value.to(dtype=dtype, device=device)
    if bool(torch.isnan(value).any()) or bool((value < 0).any()):
        raise ParameterError(f"{owner}: t must hold times >= 0 (or inf); got {t!r}")
    return value.reshape(-1), tuple(value.shape)


def expm1_ratio(a: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """``expm1(-a t) / a`` for rates ``a >= 0`` (columns) and times ``t`` (rows), with its limits:
    ``-t`` at ``a = 0``, ``-1/a`` at ``t = inf`` (and 0 for ``a = 0`` there: the minimum-norm
    solution along the kernel's null space)."""
    a = a[None, :]
    t = t[:, None]
    tiny = a <= torch.finfo(a.dtype).tiny
    safe = torch.where(tiny, torch.ones_like(a), a)
    finite_t = torch.where(torch.isinf(t), torch.zeros_like(t), t)
    value = torch.expm1(-safe * finite_t) / safe
    value = torch.where(torch.isinf(t), -1.0 / safe, value)
    limit = torch.where(torch.isinf(t), torch.zeros_like(t), -finite_t).expand_as(value)
    return torch.where(tiny, limit, value)


def log2pi() -> float:
    return math.log(2 * math.pi)
