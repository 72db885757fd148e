"""Gauss-Hermite quadrature for expectations over a standard normal variable."""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

__all__ = ["gauss_hermite"]


@lru_cache(maxsize=None)
def gauss_hermite(degree: int) -> tuple[np.ndarray, np.ndarray]:
    """Nodes and weights for ``E[f(z)]``, ``z ~ N(0, 1)``: ``sum_i w_i f(x_i)``.

    scipy's rule stays accurate at any degree (numpy's overflows beyond about 150 nodes)."""
    from scipy.special import roots_hermite

    x, w = roots_hermite(degree)
    return x * math.sqrt(2.0), w / math.sqrt(math.pi)
