"""CPU time a process group has used (Linux ``/proc``), to tell whether a row was server-bound.

The load generators share the machine with the server, so req/s alone can hide which side ran
out of CPU. The server's CPU seconds per completed request do not depend on the generator, and
its CPU load (seconds used per second of wall time) near 1.0 says it was the bottleneck (one
event loop uses at most one core).
"""

from __future__ import annotations

import os
from pathlib import Path

TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def group_cpu_seconds(pgid: int) -> float:
    """user + system CPU seconds of every live process in group ``pgid`` (0.0 off Linux)."""
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue  # it exited while we looked
        # The command name (field 2) is in parentheses and may hold spaces: split after it.
        fields = text[text.rfind(")") + 2 :].split()
        if len(fields) > 12 and int(fields[2]) == pgid:
            total += int(fields[11]) + int(fields[12])
    return total / TICKS
