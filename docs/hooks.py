"""mkdocs hooks: the layers reference lists every name ``widenet.layers`` exports, so that a
new layer appears in the API reference without touching the docs."""

from __future__ import annotations

MARKER = "<!-- every layer -->"
BASES = ("Layer", "Nonlinearity")  # documented with their methods; the layers by their docstrings


def on_page_markdown(markdown, page, config, files):
    if MARKER not in markdown:
        return markdown
    import widenet.layers as layers

    entries = []
    for name in layers.__all__:
        obj = getattr(layers, name)
        path = f"{obj.__module__}.{obj.__qualname__}"
        members = "" if name in BASES or not isinstance(obj, type) else "\n    options:\n      members: false"
        entries.append(f"::: {path}{members}\n")
    return markdown.replace(MARKER, "\n".join(entries))
