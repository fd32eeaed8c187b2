"""glibc allocator controls (hyvideo/utils/host_memory.py): what heap_buffers restores, and no-ops without glibc."""

from __future__ import annotations

import pytest

from hyvideo.utils import host_memory as hm


class FakeLibc:
    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def mallopt(self, param: int, value: int) -> int:
        self.calls.append(("mallopt", param, value))
        return 1

    def malloc_trim(self, pad: int) -> int:
        self.calls.append(("trim", pad))
        return 1


@pytest.fixture
def fake(monkeypatch) -> FakeLibc:
    lib = FakeLibc()
    monkeypatch.setattr(hm, "libc", lambda: lib)
    monkeypatch.setattr(hm, "_fixed", {})
    return lib


def test_heap_buffers_raises_then_restores_glibc_ceiling_and_trims(fake):
    with hm.heap_buffers():
        assert fake.calls == [
            ("mallopt", hm.M_MMAP_THRESHOLD, hm.HEAP_LIMIT),
            ("mallopt", hm.M_TRIM_THRESHOLD, hm.HEAP_LIMIT),
        ]
    assert fake.calls[2:] == [
        ("mallopt", hm.M_MMAP_THRESHOLD, hm.GLIBC_MMAP_MAX),
        ("mallopt", hm.M_TRIM_THRESHOLD, 2 * hm.GLIBC_MMAP_MAX),
        ("trim", 0),
    ]


def test_heap_buffers_restores_a_threshold_fixed_before(fake):
    """A sharded CPU run fixes 1 MiB (parallel.shard.return_large_frees); a decode in between must not undo it."""
    from hyvideo.parallel.shard import HOST_MMAP_THRESHOLD, return_large_frees

    assert return_large_frees()
    with hm.heap_buffers():
        pass
    assert fake.calls[-3] == ("mallopt", hm.M_MMAP_THRESHOLD, HOST_MMAP_THRESHOLD)


def test_disabled_or_without_glibc_nothing_is_called(fake, monkeypatch):
    with hm.heap_buffers(enabled=False):
        pass
    assert fake.calls == []
    monkeypatch.setattr(hm, "libc", lambda: None)
    assert hm.set_mmap_threshold(1 << 20) is False and hm.trim() is False
    with hm.heap_buffers():
        pass


def test_real_glibc_keeps_freed_buffers_in_heap_buffers_until_trim():
    """With the real allocator: inside heap_buffers a freed 64 MiB buffer stays resident (it came from the heap, and
    the raised trim threshold keeps it there for reuse); trim() reports that it released memory and RSS drops by
    about the buffer. Measured here: +64 MiB after the free, -64 MiB after the trim; bounds at 3/4 of that."""
    if hm.libc.__wrapped__() is None:
        pytest.skip("not glibc")
    size_kb = 64 * 2**10
    with hm.heap_buffers():
        before = hm.proc_kb("VmRSS")
        buf = bytearray(size_kb * 2**10)  # zero-filled: every page touched
        del buf
        freed = hm.proc_kb("VmRSS")
        assert freed - before > 0.75 * size_kb, (before, freed)
        assert hm.trim() is True  # malloc_trim(0) returns 1 when it gave memory back
        assert freed - hm.proc_kb("VmRSS") > 0.75 * size_kb


def test_proc_kb_reads_status_and_meminfo_fields(tmp_path):
    assert hm.proc_kb("VmHWM") >= hm.proc_kb("VmRSS") > 0
    assert hm.proc_kb("MemAvailable", "/proc/meminfo") > 0
    assert hm.proc_kb("NoSuchField") == 0 and hm.proc_kb("VmRSS", str(tmp_path / "missing")) == 0
