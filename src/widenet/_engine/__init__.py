"""widenet's kernel engine (private).

Layers use the engine through the names below and nothing else; the engine never imports a
layer. ``ARCHITECTURE.md`` draws the whole picture.

* ``Tile`` (``.tile``): the kernel state of one tile of input pairs, which rules
  transform; :data:`Flow` is a tile or a tuple of them (branches).
* ``compute`` and ``transform`` (``.driver``): a rule over every tile of
  ``x1 x x2``, or over an existing ``widenet.Kernel``.
* arithmetic for rules: ``.scratch`` (reused tile buffers), ``.exact`` (reproducible
  products, elementwise ops and sums), ``.compiled`` (rules through ``torch.compile``),
  ``safe_sqrt``, window sums (``.windows``) and weighted tile products
  (``.products``).
* ``.tiling``: how pairs are cut into tiles and put back, shared with
  ``widenet.blocked`` and ``widenet.empirical``.
"""

from . import compiled, exact, fused, scratch, tiling
from .autodiff import is_dual, safe_sqrt
from .driver import Rule, compute, transform
from .products import pair_sandwich, sandwich
from .tile import Flow, Tile
from .windows import spatial_axes, window_sum

__all__ = ["Tile", "Flow", "Rule", "compute", "transform", "scratch", "exact", "compiled", "fused", "tiling",
           "safe_sqrt", "is_dual", "window_sum", "spatial_axes", "sandwich", "pair_sandwich"]
