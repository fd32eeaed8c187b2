"""Offloading, applied to built models from outside (`--offload {none,model,block}`).

- none:  every component is loaded onto the device for its stage and freed after it (the pipeline's lifecycle).
- model: a component's weights live in host memory (pinned on CUDA) and are moved onto the device when it first
         runs; the previous component is sent back at that moment (`ModelOffload`, the chain diffusers builds with
         accelerate's `cpu_offload_with_hook`). `--use-cpu-offload` means this level, as in the official tool.
- block: the DiT's non-block layers stay on the device; its double/single blocks stream through it, at most
         `window` resident at once: block i+1 is copied from pinned memory on a side CUDA stream while block i runs,
         and block i's device copy is dropped as soon as it has run (`BlockStreamer`). The LLM text encoders
         stream their decoder layers the same way (`stream_layers`).

Both levels are forward hooks around one primitive, `Resident` (a module's host copy + its device copy on demand).
Code that computes with part of an offloaded module outside the forward its level hooks (TeaCache reads block 0's
modulation before the blocks run) calls `acquire(module)` first: whatever offloads the module loads it and, on CUDA,
waits for the copy, so no reader sees a placeholder or a half-copied weight.
While a module is off the device its tensors are meta placeholders, so running it by mistake fails loudly instead
of silently computing on the host; this is also what makes the ordering checkable on a CPU-only machine, where a
"device copy" of a host tensor is the tensor itself. We use our own hooks rather than accelerate's because
accelerate moves whole modules with `.to()`, which cannot keep a pinned host copy for re-streaming every step and
is invisible on a CPU-only machine.

Pinned host copies (CUDA) are made once in the compute dtype `dtype` and packed into power-of-two slabs
(`host_copies`), so every load is a plain asynchronous DMA copy; unpinned host copies (CPU) keep the checkpoint's
dtype and `dtype` is applied to each device copy as it is made (fp8 weights and their scales are never cast, as
`FP8Linear` defines). On the CPU the host copy of a block loaded from a memory-mapped checkpoint is the file
mapping itself, so streaming returns host RAM: when a block is evicted its file-backed pages are dropped
(`drop_pages`, madvise DONTNEED) and the freed heap is trimmed (`malloc_trim`), so RSS holds a window of blocks;
the page cache keeps the file, so the next step's reads are page faults, not disk reads. Only pages that still equal the file are dropped (`/proc/self/pagemap`): memory a caller wrote to (a merged
LoRA, a fresh tensor) is never touched.
"""

from __future__ import annotations

import ctypes
import mmap
import sys
import weakref
from collections.abc import Callable, Iterable, Iterator
from contextlib import nullcontext
from functools import partial

import torch
from torch import nn

from hyvideo.choices import OFFLOAD_LEVELS
from hyvideo.pinned import SlabPool, pack_pinned
from hyvideo.utils.host_memory import trim

DEFAULT_WINDOW = 2  # blocks resident at once under block offload: the running one + one prefetched

# every module an offload manages (each submodule of a streamed block or of a model-offload component) -> its manager
# (held weakly: the manager holds the modules) and the key the manager knows it by
_managed: weakref.WeakKeyDictionary[nn.Module, tuple[weakref.ref, object]] = weakref.WeakKeyDictionary()


def acquire(module: nn.Module) -> None:
    """Make `module`'s weights usable now by code that computes with it outside the forward an offload level hooks:
    the offload that manages it (as part of a streamed block or an offloaded component) loads it and, on CUDA, makes
    the current stream wait for the copy. A no-op for a module no offload manages."""
    entry = _managed.get(module)
    manager = None if entry is None else entry[0]()
    if manager is not None:
        manager.acquire(entry[1])


def _register(manager: object, key: object, module: nn.Module) -> None:
    for m in module.modules():
        _managed[m] = (weakref.ref(manager), key)


def _unregister(module: nn.Module) -> None:
    for m in module.modules():
        _managed.pop(m, None)


# ---------------------------------------------------------------------------------------------------------------
# Returning host pages (Linux; no-ops elsewhere)
# ---------------------------------------------------------------------------------------------------------------
PAGE = mmap.PAGESIZE
_LINUX = sys.platform.startswith("linux")
_libc = ctypes.CDLL(None, use_errno=True) if _LINUX else None


def _whole_pages(t: torch.Tensor) -> tuple[int, int]:
    """[start, end) of the whole pages inside a CPU tensor's bytes (empty when it spans less than a page)."""
    start = -(-t.data_ptr() // PAGE) * PAGE
    end = (t.data_ptr() + t.numel() * t.element_size()) // PAGE * PAGE
    return start, max(start, end)


def file_clean(start: int, end: int) -> bool:
    """True when no page of [start, end) holds private data: every present page is a file page (or shared), none
    swapped. Dropping such pages loses nothing (they are read back from the file, or are untouched zeros)."""
    if end <= start:
        return True
    with open("/proc/self/pagemap", "rb") as f:  # one little-endian u64 per page
        f.seek(start // PAGE * 8)
        raw = f.read((end - start) // PAGE * 8)
    e = torch.frombuffer(bytearray(raw), dtype=torch.int64)
    present, swapped, file = e < 0, (e >> 62) & 1 == 1, (e >> 61) & 1 == 1  # bits 63, 62, 61
    return not bool(((present & ~file) | swapped).any())


def drop_pages(t: torch.Tensor, check: bool = True) -> int:
    """madvise(MADV_DONTNEED) on the whole pages inside a CPU tensor's bytes; returns the bytes dropped.

    With `check` (default) only when every page still equals its file (`file_clean`), so it is safe on any tensor:
    private memory is left alone (0 is returned). `check=False` is for data no one will read again (anonymous
    pages read back as zeros)."""
    if not _LINUX or t.device.type != "cpu" or t.numel() == 0:
        return 0
    start, end = _whole_pages(t)
    if end <= start or (check and not file_clean(start, end)):
        return 0
    _libc.madvise(ctypes.c_void_p(start), ctypes.c_size_t(end - start), 4)  # 4 = MADV_DONTNEED
    return end - start


# ---------------------------------------------------------------------------------------------------------------
# Placing modules
# ---------------------------------------------------------------------------------------------------------------
class Resident:
    """A module whose tensors live in host memory and are placed on `device` (cast to `dtype`) on demand.

    `release` (default: on the CPU, unpinned) drops the host tensors' file-backed pages at every eviction. Pinned
    host copies go into `pool`'s slabs when given (shared with other Residents), else into slabs of their own."""

    def __init__(
        self,
        module: nn.Module,
        device: torch.device,
        pin: bool | None = None,
        dtype: torch.dtype | None = None,
        release: bool | None = None,
        pool: SlabPool | None = None,
    ) -> None:
        self.module, self.device = module, device
        pin = device.type == "cuda" if pin is None else pin
        self.release = device.type == "cpu" and not pin if release is None else release
        self.slots: list[tuple[nn.Module, bool, str]] = []  # (owner, is parameter, name)
        sources: list[torch.Tensor] = []
        for m in module.modules():
            for is_param, table in ((True, m._parameters), (False, m._buffers)):
                for name, t in table.items():
                    if t is not None:
                        self.slots.append((m, is_param, name))
                        sources.append(t.detach())
        self.on_device = False
        self.ready: torch.cuda.Event | None = None
        self._place([torch.empty_like(t, device="meta") for t in sources])
        if dtype is not None:  # the dtypes `module.to(dtype)` gives (fp8 weights and scales keep theirs)
            module.to(dtype=dtype)
        self.dtypes = [t.dtype for t in self._current()]
        self.host = host_copies(sources, self.dtypes, pin, pool)

    def _pairs(self) -> Iterator[tuple[torch.Tensor, torch.dtype]]:
        return zip(self.host, self.dtypes, strict=True)

    def nbytes(self) -> int:
        return sum(h.numel() * h.element_size() for h in self.host)

    def _place(self, tensors: Iterable[torch.Tensor]) -> None:
        for (m, is_param, name), t in zip(self.slots, tensors, strict=True):
            if is_param:
                m._parameters[name] = nn.Parameter(t, requires_grad=False)
            else:
                m._buffers[name] = t

    def _current(self) -> Iterator[torch.Tensor]:
        for m, is_param, name in self.slots:
            yield (m._parameters if is_param else m._buffers)[name]

    def load(self, stream: torch.cuda.Stream | None = None) -> None:
        """Copy onto the device (asynchronously on `stream` when given; `wait` before use)."""
        if self.on_device:
            return
        with torch.cuda.stream(stream) if stream is not None else nullcontext():
            placed = []
            for h, dt in self._pairs():
                placed.append(h.to(self.device, dt, non_blocking=True))
                if self.release and placed[-1].data_ptr() != h.data_ptr():
                    drop_pages(h)  # cast on the CPU: the copy is what runs, the mapped source is not needed now
            self._place(placed)
            if stream is not None:
                self.ready = torch.cuda.Event()
                self.ready.record(stream)
        self.on_device = True

    def wait(self) -> None:
        """Make the current stream wait for an asynchronous load, and keep the memory alive for its kernels."""
        if self.ready is None:
            return
        current = torch.cuda.current_stream(self.device)
        current.wait_event(self.ready)
        for t in self._current():
            t.record_stream(current)  # allocated on the side stream, used on this one
        self.ready = None

    def evict(self) -> None:
        """Drop the device copy (the host copy stays); the module holds meta placeholders until the next load.
        With `release`, the host copy's file-backed pages go back to the system too (re-read on the next load)."""
        self._place([torch.empty_like(h, device="meta", dtype=dt) for h, dt in self._pairs()])
        self.on_device = False
        self.ready = None
        if self.release:
            for h in self.host:
                drop_pages(h)
            trim()  # freed activations would stay resident as fragmented heap (+0.3-0.4 GiB per run)

    def restore(self) -> None:
        """Put the host tensors back (cast to `dtype`): the module is a normal host module again."""
        self._place([h.to(dtype=dt) for h, dt in self._pairs()])
        self.on_device = self.device.type == "cpu"


def move_releasing(module: nn.Module, device: torch.device | str, dtype: torch.dtype | None = None) -> nn.Module:
    """`module.to(device, dtype)` one tensor at a time, each source's file-backed pages returned as soon as its copy
    exists: converting a memory-mapped checkpoint never holds the mapped file and the full copy at once."""
    device = torch.device(device)
    r = Resident(module, device, pin=False, dtype=dtype, release=False)  # the module now holds meta placeholders
    placed = []
    for h, dt in zip(r.host, r.dtypes, strict=True):
        t = h.to(device, dt)
        if t.data_ptr() != h.data_ptr():
            drop_pages(h)
        placed.append(t)
    r._place(placed)
    return module


class BlockStreamer:
    """Streams a sequence of blocks through the device, at most `window` resident (see the module docstring).

    `trace` records ("load", i), ("run", i), ("evict", i) in order; `max_resident` the most blocks on the device at
    any moment. Blocks are prefetched cyclically, so block 0 is loaded while the last block of a step runs.
    """

    def __init__(
        self,
        blocks: list[nn.Module],
        device: torch.device,
        window: int = DEFAULT_WINDOW,
        pin: bool | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        self.device, self.window = device, window
        pinned = device.type == "cuda" if pin is None else pin
        # one slab pool for every block: slabs fill across blocks (23.9 GiB of bf16 blocks pin 24.0, not 25.6)
        pool = SlabPool.for_largest(largest_host_bytes(blocks, dtype)) if pinned else None
        self.blocks = [Resident(b, device, pin, dtype, pool=pool) for b in blocks]
        self.stream = torch.cuda.Stream(device) if device.type == "cuda" else None
        self.trace: list[tuple[str, int]] = []
        self.max_resident = 0
        self.modules = blocks
        self.handles = []
        self._hook(self._before, self._after)
        for i, b in enumerate(blocks):
            _register(self, i, b)

    def _hook(self, before: Callable[..., None], after: Callable[..., None]) -> None:
        """(Re-)register the pre/post forward hooks of every block."""
        for h in self.handles:
            h.remove()
        self.handles = []
        for i, b in enumerate(self.modules):
            self.handles.append(b.register_forward_pre_hook(partial(before, i)))
            self.handles.append(b.register_forward_hook(partial(after, i)))

    def resident(self) -> int:
        return sum(r.on_device for r in self.blocks)

    def _load(self, i: int) -> None:
        if not self.blocks[i].on_device:
            self.blocks[i].load(self.stream)
            self.trace.append(("load", i))
            self.max_resident = max(self.max_resident, self.resident())

    def keep_eager(self) -> None:
        """Exclude the hooks from torch.compile (they are host-side memory management; traced, they would compile
        once per block index). Called by `compile_blocks`; importing the compiler costs ~80 MiB, so only then."""
        self._hook(torch.compiler.disable(self._before), torch.compiler.disable(self._after))

    def acquire(self, i: int) -> None:
        """Block i usable now, outside its forward (see `acquire`): loaded if it is not, and waited for. It stays
        resident until it has run, as a prefetched block does: acquiring the block that runs next (TeaCache: block 0
        before a step) keeps the window; any other block is one more resident until its turn."""
        self._load(i)
        self.blocks[i].wait()

    def _before(self, i: int, module: nn.Module, args: tuple) -> None:
        self.acquire(i)
        self.trace.append(("run", i))
        for j in range(i + 1, i + self.window):  # prefetch the next blocks while this one computes
            self._load(j % len(self.blocks))

    def _after(self, i: int, module: nn.Module, args: tuple, output: object) -> None:
        self.blocks[i].evict()
        self.trace.append(("evict", i))

    def remove(self) -> None:
        """Detach the hooks and put every block back in host memory."""
        for h in self.handles:
            h.remove()
        for r in self.blocks:
            r.restore()
            _unregister(r.module)


def stream_blocks(
    model: nn.Module,
    blocks: list[nn.Module],
    device: torch.device,
    window: int = DEFAULT_WINDOW,
    pin: bool | None = None,
    dtype: torch.dtype | None = None,
) -> BlockStreamer:
    """Block offload of `model`: `blocks` (its submodules, in the order they run) stream through `device`, every
    other tensor of the model moves there (cast to `dtype`) and stays. The streamer is kept on the model
    (`model._offload`), where `compile` and the owners that free the model find it."""
    streamer = BlockStreamer(blocks, device, window, pin, dtype)  # blocks now hold meta placeholders
    _move_outside(model, set(blocks), device, dtype)
    model._offload = streamer  # keeps the hooks' state reachable from the model
    return streamer


def _move_outside(module: nn.Module, blocks: set[nn.Module], device: torch.device, dtype: torch.dtype | None) -> None:
    """Move every tensor of `module` that is not inside one of `blocks` to `device` (floating point ones cast to
    `dtype`, as `module.to` casts): subtrees without a block whole (`move_releasing`), the others tensor by tensor
    down to the blocks."""
    if module in blocks:
        return
    if not any(m in blocks for m in module.modules()):
        move_releasing(module, device, dtype)
        return
    for table in (module._parameters, module._buffers):
        for name, t in table.items():
            if t is not None:
                moved = t.detach().to(device, dtype if dtype is not None and t.is_floating_point() else None)
                table[name] = nn.Parameter(moved, requires_grad=False) if table is module._parameters else moved
    for child in module.children():
        _move_outside(child, blocks, device, dtype)


def stream_dit_blocks(
    model: nn.Module,
    device: torch.device,
    window: int = DEFAULT_WINDOW,
    pin: bool | None = None,
    dtype: torch.dtype | None = None,
) -> BlockStreamer:
    """Block offload for a DiT (`double_blocks`, `single_blocks`): blocks stream (host copies in the checkpoint's
    dtype, cast to `dtype` per block as they load), everything else moves to `device` in `dtype`."""
    return stream_blocks(model, [*model.double_blocks, *model.single_blocks], device, window, pin, dtype)


def stream_layers(
    model: nn.Module, layers: nn.ModuleList, device: torch.device, window: int = DEFAULT_WINDOW
) -> BlockStreamer:
    """Block offload for a decoder-only language model in host memory, already in its compute dtype (the LLM text
    encoders): its decoder `layers` stream (pinned host copies on CUDA), the rest (embeddings, final norm, rotary
    table, and for a multimodal model its vision tower and projector) moves to `device`. Each forward of the model
    runs every layer through the hooks, so every prompt's forward finds its layers loaded."""
    return stream_blocks(model, list(layers), device, window)


def unstream(model: nn.Module) -> None:
    """Undo `stream_blocks` on `model` if it streams: hooks removed, every block's host copy put back (then the
    model can be freed as a host model; the pinned slabs go when the last reference does)."""
    streamer = getattr(model, "_offload", None)
    if isinstance(streamer, BlockStreamer):
        streamer.remove()
        del model._offload


class ModelOffload:
    """Components on the device only while they run: the first forward of a component loads it and sends every
    other component back to host memory. `trace` records ("load"/"evict", name).

    The load is hooked on the component's forward and on the forward of each of its direct children, so code that
    drives a component through its parts loads it too: TeaCache and sequence parallelism call the DiT's embedders
    and blocks without its forward, and every such path starts with an embedder. (Blocks inside a ModuleList are
    not hooked: a hook there would break a compiled block loop into pieces.)"""

    def __init__(self, device: torch.device, pin: bool | None = None) -> None:
        self.device, self.pin = device, pin
        self.parts: dict[str, Resident] = {}
        self.trace: list[tuple[str, str]] = []
        self.handles = []
        self.eager = False  # hooks excluded from torch.compile (`keep_eager`)

    def add(self, name: str, module: nn.Module) -> nn.Module:
        self.parts[name] = Resident(module, self.device, self.pin)
        self._hook(name, module)
        _register(self, name, module)
        module._offload = self
        return module

    def _hook(self, name: str, module: nn.Module) -> None:
        before = partial(self._before, name)
        before = torch.compiler.disable(before) if self.eager else before
        for m in (module, *module.children()):
            self.handles.append(m.register_forward_pre_hook(before))

    def keep_eager(self) -> None:
        """Exclude the hooks from torch.compile (host-side memory management), as `BlockStreamer.keep_eager`."""
        for h in self.handles:
            h.remove()
        self.handles, self.eager = [], True
        for name, r in self.parts.items():
            self._hook(name, r.module)

    def acquire(self, name: str) -> None:
        """Component `name` on the device now (see `acquire`); the others go back to host memory."""
        part = self.parts[name]
        if part.on_device:
            return
        for other, r in self.parts.items():
            if r.on_device:
                r.evict()
                self.trace.append(("evict", other))
        part.load()
        self.trace.append(("load", name))

    def _before(self, name: str, module: nn.Module, args: tuple) -> None:
        self.acquire(name)

    def offload(self) -> None:
        """Send every component back to host memory (e.g. at the end of a stage)."""
        for name, r in self.parts.items():
            if r.on_device:
                r.evict()
                self.trace.append(("evict", name))

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        for r in self.parts.values():
            r.restore()
            _unregister(r.module)


def apply_offload(
    model: nn.Module,
    level: str,
    device: torch.device,
    window: int = DEFAULT_WINDOW,
    dtype: torch.dtype | None = None,
) -> nn.Module:
    """Apply an offload level to a DiT held in host memory, in compute dtype `dtype` (default: as it is). For "none"
    it is simply moved to `device`; under "block" the blocks keep the checkpoint's dtype on the host."""
    if level not in OFFLOAD_LEVELS:
        raise ValueError(f"offload level must be one of {OFFLOAD_LEVELS}, got {level!r}")
    if level == "none":
        return model.to(device=device, dtype=dtype)
    if level == "model":
        return ModelOffload(device).add("dit", model.to(dtype=dtype))
    stream_dit_blocks(model, device, window, dtype=dtype)
    return model


# ---------------------------------------------------------------------------------------------------------------
# Host copies
# ---------------------------------------------------------------------------------------------------------------
def host_copies(
    tensors: list[torch.Tensor], dtypes: list[torch.dtype], pin: bool, pool: SlabPool | None = None
) -> list[torch.Tensor]:
    """The host copies a `Resident` keeps of `tensors`.

    Pinned (CUDA): cast once to the compute `dtypes` and packed into power-of-two pinned slabs (`pinned.pack_pinned`:
    the caching host allocator would round each tensor up to a power of two). A copy that converts dtype from host to
    device goes through a pageable temporary on the CPU every time; a host copy already in the compute dtype loads
    as one asynchronous DMA copy. Each source's memory-mapped pages are returned as soon as it is copied.
    With `pool`, the slabs are the pool's, shared with the other Residents placed in it (see `pinned.SlabPool`).
    Unpinned (CPU): the tensors themselves on the CPU (for a memory-mapped checkpoint, the file mapping).
    """
    if not pin:
        return [t.to("cpu") for t in tensors]
    if pool is not None:
        return pool.copies(tensors, dtypes, after_copy=drop_pages)
    return pack_pinned(tensors, dtypes, after_copy=drop_pages)


def largest_host_bytes(modules: Iterable[nn.Module], dtype: torch.dtype | None) -> int:
    """Bytes of the largest tensor of `modules` once cast to `dtype` as `Resident` casts it (floating-point tensors
    wider than one byte take `dtype`; fp8 weights keep theirs): what sizes a shared `SlabPool`'s slabs."""
    largest = 0
    for m in modules:
        for t in [*m.parameters(), *m.buffers()]:
            wide_float = dtype is not None and t.is_floating_point() and t.element_size() > 1
            largest = max(largest, t.numel() * (dtype.itemsize if wide_float else t.element_size()))
    return largest
