"""Pinned host memory in power-of-two slabs.

torch's CUDA caching host allocator rounds every pinned allocation up to the next power of two before asking the
driver for it (ATen's CachingHostAllocator: `roundSize = PowerOf2Ceil(size)` under the default
`pinned_max_round_threshold`), and keeps the rounded block. One pinned tensor per weight therefore pins up to twice
the weights (the bf16 HunyuanVideo DiT: 23.9 GiB of tensors, 32.4 GiB pinned). Here a group of tensors is packed
into a few slabs whose sizes already are powers of two, and each tensor becomes a view into its slab: nothing is
rounded, and the only waste is the slabs' unused tails.

`plan_slabs` is the pure arithmetic for one group (first-fit-decreasing, then each slab re-planned on smaller slabs
when that costs less); `pack_pinned` allocates the slabs and copies the tensors in (casting each to its target dtype
on the way, one tensor at a time). A group with few large tensors (one DiT block) leaves slab tails: `SlabPool`
shares fixed slabs between groups made one after another (every block of a model), placing each group first-fit.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

SLAB = 2**30  # largest slab (bytes); a tensor bigger than this gets a slab of its own power-of-two size
ALIGN = 512  # byte alignment of every tensor inside a slab (any dtype, DMA-friendly)


def pow2ceil(n: int) -> int:
    """The smallest power of two >= n (n >= 1): what the caching host allocator reserves for n bytes."""
    return 1 << max(0, (n - 1).bit_length())


def aligned(n: int, align: int = ALIGN) -> int:
    return -(-n // align) * align


@dataclass(frozen=True)
class SlabPlan:
    """Slab sizes (powers of two, bytes) and, per input tensor in input order, (slab index, byte offset)."""

    slabs: tuple[int, ...]
    places: tuple[tuple[int, int], ...]
    used: int  # bytes of the tensors (unaligned)

    @property
    def total(self) -> int:
        """Bytes pinned."""
        return sum(self.slabs)


def _first_fit_decreasing(items: list[tuple[int, int]], cap: int) -> list[list[tuple[int, int]]]:
    """Bins of capacity `cap` for (index, aligned size) items, largest first, each into the first bin it fits."""
    bins: list[list[tuple[int, int]]] = []
    fill: list[int] = []
    for item in sorted(items, key=lambda it: (-it[1], it[0])):
        for b, used in enumerate(fill):
            if used + item[1] <= cap:
                bins[b].append(item)
                fill[b] += item[1]
                break
        else:
            bins.append([item])
            fill.append(item[1])
    return bins


def _pack(items: list[tuple[int, int]], cap: int) -> list[tuple[int, list[tuple[int, int]]]]:
    """(slab size, items) for `items` on slabs of at most `cap` bytes: first-fit-decreasing on `cap`, then every
    bin whose items also fit smaller slabs is re-planned on half the capacity when the result pins fewer bytes."""
    out = []
    for b in _first_fit_decreasing(items, cap):
        best: list[tuple[int, list[tuple[int, int]]]] = [(cap, b)]
        if cap // 2 >= max(size for _, size in b):
            smaller = _pack(b, cap // 2)
            if sum(s for s, _ in smaller) < cap:
                best = smaller
        out.extend(best)
    return out


def plan_slabs(sizes: Sequence[int], max_slab: int = SLAB, align: int = ALIGN) -> SlabPlan:
    """Where each of `sizes` (bytes) lives in power-of-two slabs.

    Bound: with every aligned size <= S/k (S = the slab size used, `max_slab` or the largest size's power of two),
    every first-fit-decreasing slab but the last is more than (1 - 1/k) full (an item that opened a new slab fitted
    none), so the total stays below used * k / (k - 1) + S; re-planning only lowers it. It is also never more than
    one power-of-two allocation per tensor would pin (that plan is taken when it is cheaper).
    """
    if not sizes:
        return SlabPlan((), (), 0)
    items = [(i, aligned(max(int(s), 1), align)) for i, s in enumerate(sizes)]
    cap = max(pow2ceil(max_slab), pow2ceil(max(size for _, size in items)))
    bins = _pack(items, cap)
    if sum(s for s, _ in bins) > sum(pow2ceil(size) for _, size in items):
        bins = [(pow2ceil(size), [(i, size)]) for i, size in items]
    places: list[tuple[int, int]] = [(0, 0)] * len(items)
    for slab, (_, members) in enumerate(bins):
        offset = 0
        for i, size in members:
            places[i] = (slab, offset)
            offset += size
    return SlabPlan(tuple(s for s, _ in bins), tuple(places), sum(int(s) for s in sizes))


def pinned_bytes(sizes: Sequence[int], max_slab: int = SLAB) -> int:
    """Bytes pinned for tensors of `sizes` packed together (the memory estimate's host term)."""
    return plan_slabs(sizes, max_slab).total


def pack_pinned(
    tensors: Sequence[torch.Tensor],
    dtypes: Sequence[torch.dtype],
    max_slab: int = SLAB,
    after_copy: Callable[[torch.Tensor], object] | None = None,
    pin: bool = True,
) -> list[torch.Tensor]:
    """Copies of `tensors` cast to `dtypes`, as views into freshly allocated power-of-two pinned slabs.

    Each tensor is copied (and cast) straight into its view, then `after_copy(source)` runs (e.g. to return a
    memory-mapped source's pages), so at most one source tensor is held twice. `pin=False` allocates ordinary
    memory with the same layout (for tests on machines without CUDA, where pinning is unavailable).
    """
    sizes = [t.numel() * dt.itemsize for t, dt in zip(tensors, dtypes, strict=True)]
    plan = plan_slabs(sizes, max_slab)
    slabs = [torch.empty(s, dtype=torch.uint8, pin_memory=pin) for s in plan.slabs]
    out = []
    for t, dt, n, (slab, offset) in zip(tensors, dtypes, sizes, plan.places, strict=True):
        view = slabs[slab][offset : offset + n].view(dt).view(t.shape)
        view.copy_(t.detach())
        if after_copy is not None:
            after_copy(t)
        out.append(view)
    return out


class SlabPool:
    """Power-of-two slabs shared by groups of host copies made one after another (e.g. every block of a DiT under
    block offload): each group's tensors go, largest first, into the first slab with room; a slab of `slab` bytes
    (or the largest tensor's power of two) opens when none has. Slabs live as long as the pool or a view into them.

    The arithmetic (`place`) is separate from the allocation (`copies`): `pooled_bytes` uses it for the estimate.
    """

    def __init__(self, slab: int = SLAB, pin: bool = True, align: int = ALIGN) -> None:
        self.slab, self.pin, self.align = pow2ceil(slab), pin, align
        self.sizes: list[int] = []  # bytes of each slab
        self.fill: list[int] = []  # bytes used in each slab
        self.slabs: list[torch.Tensor] = []  # the allocated slabs (only `copies` allocates)

    @classmethod
    def for_largest(cls, largest: int, pin: bool = True, k: int = 8) -> SlabPool:
        """A pool whose slabs hold at least `k` of the largest tensor (bytes), capped at `SLAB`: every slab but the
        last ends more than (1 - 1/k) full, and a small model does not pin a 1 GiB slab."""
        return cls(min(SLAB, pow2ceil(k * max(largest, 1))), pin)

    @property
    def total(self) -> int:
        return sum(self.sizes)

    def place(self, sizes: Sequence[int]) -> list[tuple[int, int]]:
        """(slab index, byte offset) for each of `sizes` (bytes), in input order; opens slabs as needed."""
        places: list[tuple[int, int]] = [(0, 0)] * len(sizes)
        for i in sorted(range(len(sizes)), key=lambda i: -sizes[i]):
            n = aligned(max(int(sizes[i]), 1), self.align)
            slab = next(
                (j for j, (cap, used) in enumerate(zip(self.sizes, self.fill, strict=True)) if used + n <= cap), None
            )
            if slab is None:
                self.sizes.append(max(self.slab, pow2ceil(n)))
                self.fill.append(0)
                slab = len(self.sizes) - 1
            places[i] = (slab, self.fill[slab])
            self.fill[slab] += n
        return places

    def copies(
        self,
        tensors: Sequence[torch.Tensor],
        dtypes: Sequence[torch.dtype],
        after_copy: Callable[[torch.Tensor], object] | None = None,
    ) -> list[torch.Tensor]:
        """Like `pack_pinned`, into this pool's slabs."""
        sizes = [t.numel() * dt.itemsize for t, dt in zip(tensors, dtypes, strict=True)]
        places = self.place(sizes)
        while len(self.slabs) < len(self.sizes):
            self.slabs.append(torch.empty(self.sizes[len(self.slabs)], dtype=torch.uint8, pin_memory=self.pin))
        out = []
        for t, dt, n, (slab, offset) in zip(tensors, dtypes, sizes, places, strict=True):
            view = self.slabs[slab][offset : offset + n].view(dt).view(t.shape)
            view.copy_(t.detach())
            if after_copy is not None:
                after_copy(t)
            out.append(view)
        return out


def pooled_bytes(groups: Sequence[Sequence[int]], slab: int = SLAB) -> int:
    """Bytes pinned when the groups of tensor sizes are placed one after another in one `SlabPool`."""
    pool = SlabPool(slab, pin=False)
    for sizes in groups:
        pool.place(sizes)
    return pool.total
