"""Uniform validation of hyperparameters and inputs.

Messages follow one pattern: ``"<Owner>: <parameter> must be <rule> (got <value>)"``.
"""

from __future__ import annotations

import collections
import functools
import math
import os
from numbers import Integral, Real
from typing import Any, Callable

import numpy as np
import torch

from .errors import NonFiniteInputError, ParameterError, ShapeError


def _fail(owner: str, name: str, rule: str, value: Any) -> ParameterError:
    return ParameterError(f"{owner}: {name} must be {rule} (got {value!r})")


def check_int(owner: str, name: str, value: Any, *, minimum: int | None = None) -> int:
    rule = "an integer" if minimum is None else f"an integer >= {minimum}"
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise _fail(owner, name, rule, value)
    if minimum is not None and value < minimum:
        raise _fail(owner, name, rule, value)
    return int(value)


def check_float(
    owner: str,
    name: str,
    value: Any,
    *,
    minimum: float | None = None,
    exclusive_minimum: bool = False,
    maximum: float | None = None,
    allow_none: bool = False,
    tensor: bool = False,
) -> float | None:
    """A float within bounds. With ``tensor=True`` a 0-d floating tensor is validated on its
    value and returned as it is, so that kernels can be differentiated in this parameter."""
    if value is None and allow_none:
        return None
    if tensor and isinstance(value, torch.Tensor) and value.ndim == 0 and value.is_floating_point():
        check_float(owner, name, float(value.detach()), minimum=minimum,
                    exclusive_minimum=exclusive_minimum, maximum=maximum)
        return value
    if minimum is None:
        rule = "a finite float"
    elif exclusive_minimum:
        rule = f"a finite float > {minimum:g}"
    else:
        rule = f"a finite float >= {minimum:g}"
    if maximum is not None:
        rule += f" and <= {maximum:g}"
    if allow_none:
        rule += " or None"
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(float(value)):
        raise _fail(owner, name, rule, value)
    value = float(value)
    if minimum is not None and (value < minimum or (exclusive_minimum and value == minimum)):
        raise _fail(owner, name, rule, value)
    if maximum is not None and value > maximum:
        raise _fail(owner, name, rule, value)
    return value


def check_choice(owner: str, name: str, value: Any, choices: tuple[str, ...]) -> str:
    if value not in choices:
        listed = ", ".join(repr(c) for c in choices)
        raise _fail(owner, name, f"one of {listed}", value)
    return value


_HALF = (torch.float16, torch.bfloat16)


def as_inputs(owner: str, name: str, x: Any, *, like: torch.Tensor | None = None,
              half: str = "float32") -> torch.Tensor:
    """Network inputs as a floating tensor, by widenet's dtype policy: integer and bool inputs
    are refused (a silent cast would hide a mistake, and lose precision past 2^24 in
    float32); float16 and bfloat16 inputs are computed in float32 (``half="float32"``: a
    kernel's products overflow their range at once) or kept (``half="keep"``, for a model
    that runs in that dtype); NaN and Inf are refused before any work."""
    given = x
    x = _to_tensor(owner, name, x)
    if not x.is_floating_point() and not x.is_complex():
        shown = x.dtype if isinstance(given, torch.Tensor) else str(x.dtype).replace("torch.", "")
        raise ParameterError(
            f"{owner}: {name} must hold floating-point numbers (got dtype {shown}); convert it "
            f"explicitly, e.g. {name}.double() for a tensor or {name}.astype('float64') for an array"
        )
    x = as_tensor(owner, name, x, like=None)
    if half == "float32" and x.dtype in _HALF:
        x = x.float()
    if like is not None:
        _check_like(owner, x, like)
    return x


def _check_like(owner: str, x: torch.Tensor, like: torch.Tensor) -> None:
    if x.dtype != like.dtype:
        raise ShapeError(
            f"{owner}: x1 and x2 must share one dtype (got {like.dtype} and {x.dtype})"
        )
    if x.device != like.device:
        raise ShapeError(
            f"{owner}: x1 and x2 must be on one device (got {like.device} and {x.device})"
        )


def _to_tensor(owner: str, name: str, x: Any) -> torch.Tensor:
    """A tensor of array-like ``x``, its dtype unchanged."""
    if isinstance(x, torch.Tensor):
        return x
    if isinstance(x, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(x))
    try:
        return torch.as_tensor(np.asarray(x))
    except (TypeError, ValueError) as err:
        raise ShapeError(
            f"{owner}: {name} must be a torch.Tensor or numpy array (got {type(x).__name__})"
        ) from err


def as_tensor(owner: str, name: str, x: Any, *, like: torch.Tensor | None = None) -> torch.Tensor:
    """Converts array-likes to a floating tensor (integer and bool values to torch's default
    float dtype, or ``like``'s) and rejects NaN/Inf before any work. Network inputs go through
    ``as_inputs``, which refuses integers instead."""
    x = _to_tensor(owner, name, x)
    if not (x.is_floating_point()):
        if x.is_complex():
            raise ParameterError(f"{owner}: {name} must be real-valued (got dtype {x.dtype})")
        dtype = like.dtype if like is not None else torch.get_default_dtype()
        x = x.to(dtype)
    if like is not None:
        _check_like(owner, x, like)
    if not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x)).sum())
        raise NonFiniteInputError(
            f"{owner}: {name} must be finite, but {bad} of its {x.numel()} entries are NaN or Inf"
        )
    return x


_UNITS = {
    "": 1, "b": 1,
    "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9, "t": 10**12, "tb": 10**12,
    "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
}


def check_memory(owner: str, name: str, value: Any) -> int:
    """A memory size in bytes from an int or a string such as ``"512MB"`` or ``"2 GiB"``."""
    rule = 'a positive number of bytes, an int or a string such as "512MB" or "2GiB"'
    if isinstance(value, str):
        text = value.strip().lower().replace(" ", "")
        number = text.rstrip("abcdefghijklmnopqrstuvwxyz")
        unit = text[len(number):]
        try:
            amount = float(number) * _UNITS[unit]
        except (ValueError, KeyError):
            raise _fail(owner, name, rule, value) from None
    elif isinstance(value, Real) and not isinstance(value, bool):
        amount = float(value)
    else:
        raise _fail(owner, name, rule, value)
    if not math.isfinite(amount) or amount < 1:
        raise _fail(owner, name, rule, value)
    return int(amount)


def available_memory(device: torch.device) -> int:
    """Bytes that can be allocated now on ``device`` (free GPU memory, or available RAM)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        import os

        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return 4 * 2**30


def check_mask(owner: str, name: str, mask: Any, x: torch.Tensor) -> torch.Tensor:
    """A padding mask for inputs ``x`` (``(N, C, *S)``) as a boolean ``(N, *S)`` tensor on
    ``x``'s device, True at padded positions; clear errors for any other shape or dtype."""
    if x.ndim < 3:
        raise ShapeError(f"{owner}: {name} needs inputs with positions (N, C, *S); inputs of "
                         f"shape {tuple(x.shape)} have none to pad")
    m = torch.as_tensor(mask, device=x.device)
    if m.dtype != torch.bool:
        raise ParameterError(f"{owner}: {name} must be a boolean tensor, True at padded "
                             f"positions (got dtype {m.dtype})")
    want = (x.shape[0],) + tuple(x.shape[2:])
    if tuple(m.shape) != want:
        raise ShapeError(f"{owner}: {name} must have shape {want} to match its inputs of "
                         f"shape {tuple(x.shape)} (got {tuple(m.shape)})")
    return m


def env_flag(name: str, default: bool) -> bool:
    """The on/off switch in environment variable ``name`` (1/0, true/false, yes/no, on/off;
    unset or empty: ``default``), or a ParameterError naming the variable and its value."""
    value = os.environ.get(name, "").strip().lower()
    if value == "":
        return default
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ParameterError(
        f"widenet: the environment variable {name} must be 0 or 1 (also true/false, yes/no, "
        f"on/off) (got {value!r})"
    )


@functools.lru_cache(maxsize=None)
def _by_get_record(names: tuple) -> type:
    return collections.namedtuple("ByGet", names)


def check_gets(owner: str, get: Any, choices: tuple) -> tuple[tuple[str, ...], bool]:
    """``get`` as a tuple of names from ``choices`` and whether it was given as a tuple (or
    list): one name, or several as Neural Tangents' ``get=("nngp", "ntk")``."""
    if isinstance(get, (tuple, list)):
        if not get:
            raise ParameterError(f"{owner}: get must name at least one of {', '.join(map(repr, choices))} (got {get!r})")
        names = tuple(check_choice(owner, "get", g, choices) for g in get)
        if len(set(names)) != len(names):
            raise ParameterError(f"{owner}: get names a kernel twice (got {get!r})")
        return names, True
    return (check_choice(owner, "get", get, choices),), False


def by_get(names: tuple, many: bool, compute: Callable[[str], Any]) -> Any:
    """``compute(name)`` for one name, or a named tuple of them (fields in ``names``' order)
    for several: what a function returns for ``get="ntk"`` or ``get=("nngp", "ntk")``."""
    if not many:
        return compute(names[0])
    return _by_get_record(names)(*(compute(name) for name in names))
