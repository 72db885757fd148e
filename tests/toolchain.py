"""Whether the fused rules (src/widenet/_engine/fused.py) must be there: where a C++ compiler
and ninja are present, an extension that does not build is a failure, not a skip."""

import os
import shutil

import pytest
import torch

from widenet._engine import fused


def fused_or_skip() -> None:
    if fused.enabled(torch.zeros(1)):
        return
    if os.environ.get("WIDENET_FUSED", "1").strip().lower() in ("0", "false", "no", "off"):
        pytest.skip("fused rules switched off (WIDENET_FUSED=0)")
    from torch.utils.cpp_extension import is_ninja_available

    if shutil.which(os.environ.get("CXX", "c++")) is None or not is_ninja_available():
        pytest.skip(f"no C++ compiler or ninja for the fused rules: {fused._FAILED}")
    pytest.fail(f"the fused extension did not build although a compiler and ninja are present: {fused._FAILED}")
