"""widenet's exceptions (src/widenet/errors.py); each layer's and function's messages are pinned
in their own tests."""

import pytest

import widenet as wn
from widenet.errors import ShapeError, WidenetError


def test_errors_are_also_builtin_errors():
    with pytest.raises(ValueError):
        wn.Dense(0)
    assert issubclass(ShapeError, WidenetError) and issubclass(ShapeError, ValueError)



