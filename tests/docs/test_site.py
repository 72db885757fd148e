"""The documentation site builds strictly (every warning an error: broken links, missing
figures, docstrings the API reference cannot parse), as `make docs` does."""

import os
import subprocess
import sys
from pathlib import Path

import widenet as wn

ROOT = Path(__file__).resolve().parents[2]


def test_the_site_builds_strictly(tmp_path):
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    pages = {p.relative_to(tmp_path / "site").as_posix() for p in (tmp_path / "site").rglob("index.html")}
    assert {"index.html", "getting-started/index.html", "guide/kernels/index.html", "examples/index.html",
            "reference/layers/index.html", "performance/index.html", "neural-tangents/index.html"} <= pages
    # every exported layer has its entry in the API reference, with no docs edit (docs/hooks.py)
    layers = (tmp_path / "site" / "reference" / "layers" / "index.html").read_text()
    missing = [name for name in wn.layers.__all__ if f"{name}</code>" not in layers and f">{name}<" not in layers]
    assert not missing
