"""The exact GELU (src/widenet/layers/gelu.py)."""

import widenet as wn
from layers.contract import NonlinearityContract


class TestGelu(NonlinearityContract):
    layer_type = wn.Gelu
