"""Peak resident memory of the current process, for memory tests and benchmarks.

Only the standard library is imported: the Neural Tangents runners, in an environment
without widenet, load this file by path.
"""

from __future__ import annotations

import resource


def peak_rss() -> int:
    """Bytes: the resident high-water mark of this process image.

    Read from ``VmHWM`` in ``/proc/self/status`` on Linux. ``getrusage``'s ``ru_maxrss`` is
    no substitute there: Linux carries it across ``execve``, so a subprocess started by a
    large parent (a test runner, a benchmark holding results) reports the parent's size until
    it outgrows it, and growth measured from it can read zero. Elsewhere ``ru_maxrss`` is
    the only measure (bytes on macOS, KiB on Linux and the BSDs).
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import sys

    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale
