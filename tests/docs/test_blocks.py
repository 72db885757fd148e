"""Every Python block of the README and of the documentation site runs as written: a page's
blocks, in order, pasted into one script, run by a fresh interpreter in an empty folder."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
FENCE = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def python_blocks(page: Path) -> list[str]:
    return FENCE.findall(page.read_text())


RUNNABLE = [p for p in PAGES if python_blocks(p)]


def test_the_pages_with_code_are_found():
    names = {p.relative_to(ROOT).as_posix() for p in RUNNABLE}
    assert {"README.md", "docs/getting-started.md", "docs/guide/kernels.md", "docs/guide/scale.md",
            "docs/guide/theory.md"} <= names


@pytest.mark.parametrize("page", RUNNABLE, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_block_of_the_page_runs_as_one_script(page, tmp_path):
    script = tmp_path / "page.py"
    script.write_text("\n\n".join(python_blocks(page)))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    env["MPLBACKEND"] = "Agg"
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, f"{page.name} failed:\n{done.stderr[-4000:]}"
