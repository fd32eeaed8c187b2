"""Host (CPU) memory in one place: this process's counters from /proc (`proc_kb`), and glibc allocator controls:
the mmap threshold, heap trimming, and a context that keeps large buffers in the heap while a CPU decode reuses them.
The allocator functions are no-ops (return False) where glibc's malloc is not the allocator.

glibc serves buffers above its mmap threshold with fresh mmaps (returned to the OS on free, but every new one
page-faults on first touch) and raises that threshold adaptively after large frees, up to 32 MiB, until the first
explicit `mallopt` fixes it. Freed heap memory stays resident until `malloc_trim`.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc mallopt() parameters
GLIBC_MMAP_MAX = 32 * 2**20  # glibc's ceiling for its adaptive mmap threshold
HEAP_LIMIT = 2**30  # inside `heap_buffers`: buffers below this come from the heap and freed ones stay there

_fixed: dict[str, int] = {}  # the threshold fixed outside `heap_buffers` (restored when it ends)


def proc_kb(field: str, path: str = "/proc/self/status") -> int:
    """A "Field: N kB" line of a /proc file in KiB (VmRSS, VmHWM of /proc/self/status; MemAvailable of
    /proc/meminfo); 0 where the file or the field is absent. VmHWM, unlike ru_maxrss, does not inherit the parent's
    peak across fork/exec."""
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


@cache
def libc() -> ctypes.CDLL | None:
    """The C library when it has glibc's mallopt and malloc_trim, else None."""
    name = ctypes.util.find_library("c")
    try:
        lib = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    return lib if lib is not None and hasattr(lib, "mallopt") and hasattr(lib, "malloc_trim") else None


def set_mmap_threshold(nbytes: int) -> bool:
    """Fix glibc's mmap threshold (no longer adaptive): buffers of at least `nbytes` get their own mapping and go
    back to the OS when freed. Remembered, so `heap_buffers` restores it."""
    lib = libc()
    if lib is None or not lib.mallopt(M_MMAP_THRESHOLD, nbytes):
        return False
    _fixed["mmap"] = nbytes
    return True


def trim() -> bool:
    """Give the free heap pages back to the OS (glibc `malloc_trim(0)`)."""
    lib = libc()
    return bool(lib is not None and lib.malloc_trim(0))


@contextmanager
def heap_buffers(enabled: bool = True) -> Iterator[None]:
    """Serve buffers below 1 GiB from the heap while inside, so freed ones are reused without page faults (a 64 MiB
    copy into a fresh mapping measured 53 ms instead of ~10); on exit the mmap threshold goes back to what
    `set_mmap_threshold` fixed last (else glibc's 32 MiB ceiling) and the free heap is trimmed."""
    lib = libc() if enabled else None
    if lib is None:
        yield
        return
    lib.mallopt(M_MMAP_THRESHOLD, HEAP_LIMIT)
    lib.mallopt(M_TRIM_THRESHOLD, HEAP_LIMIT)
    try:
        yield
    finally:
        after = _fixed.get("mmap", GLIBC_MMAP_MAX)
        lib.mallopt(M_MMAP_THRESHOLD, after)
        lib.mallopt(M_TRIM_THRESHOLD, 2 * after)
        lib.malloc_trim(0)
