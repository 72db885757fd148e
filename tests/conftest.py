import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
# Tests run as two xdist workers on two cores: one thread each avoids oversubscription.
torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    from nt import nt_python

    if any("nt" in item.keywords for item in items) and nt_python() is None:
        skip = pytest.mark.skip(reason="Neural Tangents environment not found (shared tools/nt-env.sh)")
        for item in items:
            if "nt" in item.keywords:
                item.add_marker(skip)
