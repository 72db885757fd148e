"""Exceptions raised by widenet.

Every class also derives from the builtin exception a user would naturally catch, so
``except ValueError`` keeps working while ``except widenet.errors.WidenetError`` catches
everything the library raises on purpose.
"""

from __future__ import annotations

__all__ = [
    "WidenetError",
    "ParameterError",
    "ShapeError",
    "NonFiniteInputError",
    "LayerOrderError",
    "NoClosedFormError",
    "NumericalError",
    "OutOfMemoryError",
    "UnsupportedModuleError",
    "AccuracyWarning",
]


class WidenetError(Exception):
    """Base class of every error widenet raises on purpose."""


class ParameterError(WidenetError, ValueError):
    """A hyperparameter or option is outside its allowed range or set."""


class ShapeError(WidenetError, ValueError):
    """Input shapes are incompatible with each other or with the architecture."""


class NonFiniteInputError(WidenetError, ValueError):
    """An input holds NaN or Inf; raised before any kernel work starts."""


class LayerOrderError(WidenetError, ValueError):
    """Layers are composed in an order whose infinite-width limit is not defined here,
    e.g. a nonlinearity applied to an input that is not Gaussian."""


class NoClosedFormError(WidenetError, TypeError):
    """The layer has a finite-width twin but no exact infinite-width kernel rule."""


class NumericalError(WidenetError, ArithmeticError):
    """A numerical method failed on the given matrices, e.g. a kernel that is not positive
    definite in the working precision; the message says how large it was and what to change."""


class OutOfMemoryError(WidenetError, MemoryError):
    """A result that cannot fit in the memory available, found before any work; the message
    gives its size and the way to compute it in tiles on disk (``widenet.blocked.compute``)."""


class UnsupportedModuleError(WidenetError, TypeError):
    """A module or operation of a torch model has no infinite-width kernel here
    (``widenet.from_torch``); the message names it, its place in the traced graph and its
    source line, and what to do instead."""


class AccuracyWarning(UserWarning):
    """A numerical rule could not reach its accuracy target on the given inputs (for example
    Gauss-Hermite quadrature at very large pre-activation variances); the message gives the
    accuracy reached, where, and what to change."""
