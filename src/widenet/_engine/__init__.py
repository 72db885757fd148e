"""widenet's kernel engine (private).

Layers use the engine through the names below and nothing else; the engine never imports a
layer. ``ARCHITECTURE.md`` draws the whole picture.

* :class:`Tile` (:mod:`.tile`): the kernel state of one tile of input pairs, which rules
  transform; :data:`Flow` is a tile or a tuple of them (branches).
* :func:`compute` and :func:`transform` (:mod:`.driver`): a rule over every tile of
  ``x1 x x2``, or over an existing :class:`~widenet.Kernel`.
* arithmetic for rules: :mod:`.scratch` (reused tile buffers), :mod:`.exact` (reproducible
  products, elementwise ops and sums), :mod:`.compiled` (rules through ``torch.compile``),
  :func:`safe_sqrt`, window sums (:mod:`.windows`) and weighted tile products
  (:mod:`.products`).
* :mod:`.tiling`: how pairs are cut into tiles and put back, shared with
  :mod:`widenet.blocked` and :mod:`widenet.empirical`.
"""

from . import compiled, exact, fused, scratch, tiling
from .autodiff import is_dual, safe_sqrt
from .driver import Rule, compute, transform
from .products import pair_sandwich, sandwich
from .tile import Flow, Tile
from .windows import spatial_axes, window_sum

__all__ = ["Tile", "Flow", "Rule", "compute", "transform", "scratch", "exact", "compiled", "fused", "tiling",
           "safe_sqrt", "is_dual", "window_sum", "spatial_axes", "sandwich", "pair_sandwich"]
