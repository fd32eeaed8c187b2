"""Offloading, applied to built models from outside (`--offload {none,model,block}`).

- none:  every component is loaded onto the device for its stage and freed after it (the pipeline's lifecycle).
- model: a component's weights live in host memory (pinned on CUDA) and are moved onto the device when it first
         runs; the previous component is sent back at that moment (`ModelOffload`, the chain diffusers builds with
         accelerate's `cpu_offload_with_hook`). `--use-cpu-offload` means this level, as in the official tool.
- block: the DiT's non-block layers stay on the device; its double/single blocks stream through it, at most
         `window` resident at once: block i+1 is copied from pinned memory on a side CUDA stream while block i runs,
         and block i's device copy is dropped as soon as it has run (`BlockStreamer`).

Both levels are forward hooks around one primitive, `Resident` (a module's host copy + its device copy on demand).
While a module is off the device its tensors are meta placeholders, so running it by mistake fails loudly instead
of silently computing on the host; this is also what makes the ordering checkable on a CPU-only machine, where a
"device copy" of a host tensor is the tensor itself. We use our own hooks rather than accelerate's because
accelerate moves whole modules with `.to()`, which cannot keep a pinned host copy for re-streaming every step and
is invisible on a CPU-only machine.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import nullcontext
from functools import partial

import torch
from torch import nn

from hyvideo.request import OFFLOAD_LEVELS

DEFAULT_WINDOW = 2  # blocks resident at once under block offload: the running one + one prefetched


class Resident:
    """A module whose tensors live in host memory and are placed on `device` on demand."""

    def __init__(self, module: nn.Module, device: torch.device, pin: bool | None = None) -> None:
        self.module, self.device = module, device
        pin = device.type == "cuda" if pin is None else pin
        self.slots: list[tuple[nn.Module, bool, str]] = []  # (owner, is parameter, name)
        self.host: list[torch.Tensor] = []
        for m in module.modules():
            for is_param, table in ((True, m._parameters), (False, m._buffers)):
                for name, t in table.items():
                    if t is None:
                        continue
                    h = t.detach().to("cpu")
                    self.slots.append((m, is_param, name))
                    self.host.append(h.pin_memory() if pin else h)
        self.on_device = False
        self.ready: torch.cuda.Event | None = None
        self._place([torch.empty_like(h, device="meta") for h in self.host])

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
            self._place([h.to(self.device, non_blocking=True) for h in self.host])
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
        """Drop the device copy (the host copy stays); the module holds meta placeholders until the next load."""
        self._place([torch.empty_like(h, device="meta") for h in self.host])
        self.on_device = False
        self.ready = None

    def restore(self) -> None:
        """Put the host tensors back: the module is a normal host module again."""
        self._place(self.host)
        self.on_device = self.device.type == "cpu"


class BlockStreamer:
    """Streams a sequence of blocks through the device, at most `window` resident (see the module docstring).

    `trace` records ("load", i), ("run", i), ("evict", i) in order; `max_resident` the most blocks on the device at
    any moment. Blocks are prefetched cyclically, so block 0 is loaded while the last block of a step runs.
    """

    def __init__(
        self, blocks: list[nn.Module], device: torch.device, window: int = DEFAULT_WINDOW, pin: bool | None = None
    ) -> None:
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        self.device, self.window = device, window
        self.blocks = [Resident(b, device, pin) for b in blocks]
        self.stream = torch.cuda.Stream(device) if device.type == "cuda" else None
        self.trace: list[tuple[str, int]] = []
        self.max_resident = 0
        self.handles = []
        for i, b in enumerate(blocks):
            self.handles.append(b.register_forward_pre_hook(partial(self._before, i)))
            self.handles.append(b.register_forward_hook(partial(self._after, i)))

    def resident(self) -> int:
        return sum(r.on_device for r in self.blocks)

    def _load(self, i: int) -> None:
        if not self.blocks[i].on_device:
            self.blocks[i].load(self.stream)
            self.trace.append(("load", i))
            self.max_resident = max(self.max_resident, self.resident())

    def _before(self, i: int, module: nn.Module, args: tuple) -> None:
        self._load(i)
        self.blocks[i].wait()
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


def stream_dit_blocks(
    model: nn.Module, device: torch.device, window: int = DEFAULT_WINDOW, pin: bool | None = None
) -> BlockStreamer:
    """Block offload for a DiT (`double_blocks`, `single_blocks`): blocks stream, everything else moves to `device`."""
    blocks = [*model.double_blocks, *model.single_blocks]
    streamer = BlockStreamer(blocks, device, window, pin)  # blocks now hold meta placeholders
    for name, child in model.named_children():
        if name not in ("double_blocks", "single_blocks"):
            child.to(device)
    model._offload = streamer  # keeps the hooks' state reachable from the model
    return streamer


class ModelOffload:
    """Components on the device only while they run: the first forward of a component loads it and sends every
    other component back to host memory. `trace` records ("load"/"evict", name)."""

    def __init__(self, device: torch.device, pin: bool | None = None) -> None:
        self.device, self.pin = device, pin
        self.parts: dict[str, Resident] = {}
        self.trace: list[tuple[str, str]] = []
        self.handles = []

    def add(self, name: str, module: nn.Module) -> nn.Module:
        self.parts[name] = Resident(module, self.device, self.pin)
        self.handles.append(module.register_forward_pre_hook(partial(self._before, name)))
        module._offload = self
        return module

    def _before(self, name: str, module: nn.Module, args: tuple) -> None:
        part = self.parts[name]
        if part.on_device:
            return
        for other, r in self.parts.items():
            if r.on_device:
                r.evict()
                self.trace.append(("evict", other))
        part.load()
        self.trace.append(("load", name))

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


def apply_offload(model: nn.Module, level: str, device: torch.device, window: int = DEFAULT_WINDOW) -> nn.Module:
    """Apply an offload level to a DiT held in host memory (for "none" it is simply moved to `device`)."""
    if level not in OFFLOAD_LEVELS:
        raise ValueError(f"offload level must be one of {OFFLOAD_LEVELS}, got {level!r}")
    if level == "none":
        return model.to(device)
    if level == "model":
        return ModelOffload(device).add("dit", model)
    stream_dit_blocks(model, device, window)
    return model
