"""What the training benchmarks share: markdown tables, and the load of this (shared) machine.

Other processes slow torch's 2 OpenMP threads down several-fold (measured: a hand-written P=1 MLP loop
5-8x slower with 2 threads than with 1 while another 2-thread job ran), so timings start at a quiet moment
and report the cores other processes used meanwhile.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [[str(h) for h in headers], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["| " + " | ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) + " |" for row in cells]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def busy_cores_s() -> float:
    """CPU seconds spent by all processes on all cores (user, nice, system, irq, softirq) since boot."""
    with open("/proc/stat") as handle:
        user, nice, system, _idle, _iowait, irq, softirq = map(int, handle.readline().split()[1:8])
    return (user + nice + system + irq + softirq) / CLOCK_TICKS


def wait_for_quiet(limit_s: float = 60, threshold: float = 0.3) -> None:
    """Wait (at most limit_s) for a 1-s window in which all processes together use < threshold cores."""
    deadline = time.perf_counter() + limit_s
    while time.perf_counter() < deadline:
        busy, start = busy_cores_s(), time.perf_counter()
        time.sleep(1.0)
        if (busy_cores_s() - busy) / (time.perf_counter() - start) < threshold:
            return
