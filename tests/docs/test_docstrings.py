"""Every example in widenet's docstrings (which the API reference renders) runs."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest
import torch

import widenet

MODULES = sorted(m.name for m in pkgutil.walk_packages(widenet.__path__, "widenet.")
                 if not m.name.startswith("widenet.cli"))


def _examples():
    finder = doctest.DocTestFinder(exclude_empty=True)
    for name in MODULES:
        module = importlib.import_module(name)
        for test in finder.find(module, name, globs={}):
            if test.examples and test.name.startswith(name):
                yield pytest.param(test, id=test.name)


@pytest.mark.parametrize("test", list(_examples()))
def test_the_docstring_example_runs(test):
    x = torch.randn(6, 10, dtype=torch.float64)
    test.globs = {"wn": widenet, "torch": torch, "nn": torch.nn, "x": x}
    report = []
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    result = runner.run(test, out=report.append)
    assert result.failed == 0, "".join(report)[-3000:]
