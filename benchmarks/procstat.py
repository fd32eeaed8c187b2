"""This process's memory counters from /proc/self/status, for the benchmarks' fresh-process measurements."""

from __future__ import annotations

from pathlib import Path


def status_kb(field: str) -> int:
    """VmRSS / VmHWM (or any other field) of this process in KiB; 0 where absent.

    VmHWM, unlike ru_maxrss, does not inherit the parent's peak across fork/exec.
    """
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0
