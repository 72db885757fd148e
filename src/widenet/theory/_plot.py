"""Figures of the theory results: constrained layout (no clipped titles or labels) and one
legend entry per label."""

from __future__ import annotations

from typing import Any


def new_axes(ncols: int = 1, *, figsize: tuple, nrows: int = 1) -> Any:
    """``nrows x ncols`` axes of a new figure laid out by matplotlib's constrained layout:
    one ``Axes``, or an array of them."""
    import matplotlib.pyplot as plt

    _, axes = plt.subplots(nrows, ncols, figsize=figsize, layout="constrained")
    return axes


def legend(ax: Any, **kwargs: Any) -> Any:
    """``ax.legend`` with each label once (the first artist drawn with it)."""
    handles, labels = ax.get_legend_handles_labels()
    unique = dict(zip(labels, handles))
    return ax.legend(list(unique.values()), list(unique.keys()), **kwargs)
