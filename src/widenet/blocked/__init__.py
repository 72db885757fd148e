"""Kernels at scale: memory-budgeted tiles, an on-disk store that survives interruption, a Dask
backend, and solvers for kernels that do not fit in memory.

* ``compute``: any kernel function ``(x1_block, x2_block) -> Kernel or tensor`` (a widenet
  architecture, an empirical NTK, a user function) over ``x1 x x2``, tile by tile, in memory or
  into a zarr store (resumable, fingerprinted), locally or on a Dask cluster.
* ``open_store``: read a store back (``store.load()``, ``store["ntk"]``).
* ``cg``: conjugate gradients over a kernel streamed row block by row block from a store,
  optionally Nystrom-preconditioned.
* ``falkon``: Nystrom-preconditioned CG (FALKON) with M centers, for a million points.

Both take ``client=``: the kernel's row blocks then live on the Dask workers, which do every
product of the solver (``_cluster.py``).

This package knows nothing about layers: it only calls the kernel function it is given.
"""

from ._compute import compute
from ._solvers import CGResult, FalkonPredictor, cg, falkon
from ._store import Store, StoreMismatchError, open_store

__all__ = ["compute", "open_store", "Store", "StoreMismatchError", "cg", "CGResult", "falkon", "FalkonPredictor"]
