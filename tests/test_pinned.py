"""hyvideo.pinned: the slab arithmetic (power-of-two slabs, no overlap, the waste bound, the released DiT's numbers)
and offload's pinned host copies (packed into slabs, already in the compute dtype), checked on CPU with unpinned
slabs of the same layout."""

from __future__ import annotations

import functools
import itertools
import random

import pytest
import torch

from hyvideo import offload, pinned
from hyvideo.checkpoints.dit import build_dit
from hyvideo.config import DiTConfig
from hyvideo.pinned import ALIGN, SLAB, aligned, plan_slabs, pow2ceil
from hyvideo.quantization import FP8, quantize_dit
from hyvideo.tiny import TINY_DIT, random_dit

GiB = 2**30


def check_layout(sizes: list[int], plan) -> None:
    assert all(s == pow2ceil(s) for s in plan.slabs)  # what the caching host allocator reserves, exactly
    spans: dict[int, list[tuple[int, int]]] = {}
    for size, (slab, offset) in zip(sizes, plan.places, strict=True):
        assert offset % ALIGN == 0 and offset + size <= plan.slabs[slab]
        spans.setdefault(slab, []).append((offset, offset + aligned(max(size, 1))))
    for intervals in spans.values():
        intervals.sort()
        assert all(a[1] <= b[0] for a, b in itertools.pairwise(intervals))  # no overlap
    assert set(spans) == set(range(len(plan.slabs)))  # no empty slab


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("k", [2, 4, 16])
def test_plan_layout_and_waste_bound(seed, k):
    """Sizes <= S/k: every first-fit-decreasing slab but the last is more than (1 - 1/k) full, so the plan pins
    less than used * k / (k - 1) + S; and never more than one power-of-two allocation per tensor."""
    rng = random.Random(seed)
    S = 2**24
    sizes = [rng.randrange(1, S // k // ALIGN + 1) * ALIGN for _ in range(rng.randrange(1, 300))]
    plan = plan_slabs(sizes, max_slab=S)
    check_layout(sizes, plan)
    assert plan.used == sum(sizes)
    assert plan.total < sum(sizes) * k / (k - 1) + S
    assert plan.total <= sum(pow2ceil(s) for s in sizes)


def test_plan_small_cases_exact():
    MiB = 2**20
    assert plan_slabs([]).total == 0
    # one tensor: its own power of two; a tensor larger than the slab size gets a slab of its own
    assert plan_slabs([3 * MiB], max_slab=SLAB).slabs == (4 * MiB,)
    assert plan_slabs([3 * GiB // 2], max_slab=GiB).slabs == (2 * GiB,)
    # 3 + 1 MiB share a 4 MiB slab (two separate allocations: 4 + 1); 5 x 3 MiB: 15 MiB in 16 (naive: 5 x 4)
    assert plan_slabs([3 * MiB, MiB]).slabs == (4 * MiB,)
    assert plan_slabs([3 * MiB] * 5).total == 16 * MiB
    # unaligned sizes take an aligned span; 3 spans of 512 pin 1024 + 512 rather than one 2048 slab
    plan = plan_slabs([1, 1, 1])
    assert plan.slabs == (1024, 512) and plan.places == ((0, 0), (0, 512), (1, 0))


def test_released_dit_pinned_bytes():
    """bf16 HYVideo-T/2: one pinned tensor per weight pins 32.4 GiB for 23.9 GiB of weights (the allocator's
    rounding); packed into slabs, the whole model pins 24.25 GiB, block by block (block offload) 25.6 GiB."""
    model = build_dit(DiTConfig(), "meta")
    sizes = [p.numel() * 2 for p in model.parameters()]
    assert sum(sizes) / GiB == pytest.approx(23.88, abs=0.01)
    assert sum(pow2ceil(s) for s in sizes) / GiB == pytest.approx(32.37, abs=0.01)
    whole = plan_slabs(sizes).total
    assert whole / sum(sizes) < 1.02  # measured 1.5%
    blocks = [*model.double_blocks, *model.single_blocks]
    per_block = sum(plan_slabs([p.numel() * 2 for p in b.parameters()]).total for b in blocks)
    block_used = sum(p.numel() * 2 for b in blocks for p in b.parameters())
    assert per_block / block_used < 1.11  # measured 10.4% (a block's few large tensors leave slab tails)


def test_pack_pinned_views_share_slabs_and_cast():
    ts = [torch.randn(37, 5), torch.randn(3), torch.randn(()), torch.zeros(0, 4)]
    dts = [torch.float16, torch.bfloat16, torch.float32, torch.float16]
    out = pinned.pack_pinned(ts, dts, pin=False)
    assert [o.dtype for o in out] == dts and [o.shape for o in out] == [t.shape for t in ts]
    assert all(torch.equal(o, t.to(dt)) for o, t, dt in zip(out, ts, dts, strict=True))
    assert len({o.untyped_storage().data_ptr() for o in out}) == 1  # one slab for all four
    assert out[0].untyped_storage().nbytes() == pow2ceil(out[0].untyped_storage().nbytes())


@pytest.mark.parametrize("use_fp8", [False, True])
def test_pinned_host_copies_in_compute_dtype(monkeypatch, use_fp8):
    """A pinned Resident (CUDA) keeps host copies cast once to the compute dtype, packed in slabs, so each load is a
    plain copy; fp8 weights stay fp8. (Unpinned slabs stand in for pinned ones on this CPU-only machine.)"""
    monkeypatch.setattr(offload, "pack_pinned", functools.partial(pinned.pack_pinned, pin=False))
    model = random_dit(TINY_DIT, 0)  # float32 weights, as an fp32 checkpoint
    if use_fp8:
        model = quantize_dit(model)
    block = model.double_blocks[0]
    ref = {k: v.clone() for k, v in block.state_dict().items()}
    r = offload.Resident(block, torch.device("cpu"), pin=True, dtype=torch.float16)
    assert not r.release
    for h, dt in zip(r.host, r.dtypes, strict=True):
        assert h.dtype == dt
        assert dt == (FP8 if h.ndim == 2 and use_fp8 else torch.float16) or dt == torch.float32  # fp8 scales: fp32
    assert any(dt == torch.float16 for dt in r.dtypes)
    plan = plan_slabs([h.numel() * h.element_size() for h in r.host])
    slabs = {h.untyped_storage().data_ptr(): h.untyped_storage().nbytes() for h in r.host}
    assert sorted(slabs.values()) == sorted(plan.slabs) and len(slabs) < len(r.host) / 2  # slabs, not one per tensor
    r.load()
    for name, t in block.state_dict().items():
        want = ref[name] if ref[name].dtype in (FP8, torch.float32) and t.dtype == ref[name].dtype else ref[name].half()
        assert t.dtype == want.dtype and torch.equal(t.view(torch.uint8), want.view(torch.uint8)), name


def test_pool_places_groups_first_fit_and_bounds_waste():
    """Groups placed one after another share slabs: every slab but the last is more than (1 - 1/k) full when no
    tensor exceeds 1/k of a slab, so the pool pins less than used * k / (k - 1) + S."""
    rng = random.Random(3)
    S, k = 2**24, 4
    pool = pinned.SlabPool(S, pin=False)
    groups = [[rng.randrange(1, S // k // ALIGN + 1) * ALIGN for _ in range(rng.randrange(1, 12))] for _ in range(60)]
    spans: dict[int, list[tuple[int, int]]] = {}
    for g in groups:
        for n, (slab, offset) in zip(g, pool.place(g), strict=True):
            assert offset % ALIGN == 0 and offset + n <= pool.sizes[slab]
            spans.setdefault(slab, []).append((offset, offset + n))
    for intervals in spans.values():
        intervals.sort()
        assert all(a[1] <= b[0] for a, b in itertools.pairwise(intervals))
    used = sum(map(sum, groups))
    assert all(s == S for s in pool.sizes) and sum(pool.fill) == used
    assert pool.total < used * k / (k - 1) + S
    assert pinned.pooled_bytes(groups, S) == pool.total


def test_released_dit_blocks_pooled():
    """bf16 HYVideo-T/2 blocks under block offload: one pool of 1 GiB slabs pins 24.0 GiB for 23.2 GiB of block
    weights (one slab set per block: 25.6 GiB; one pinned tensor per weight: 31.3 GiB)."""
    model = build_dit(DiTConfig(), "meta")
    groups = [[p.numel() * 2 for p in b.parameters()] for b in [*model.double_blocks, *model.single_blocks]]
    assert pinned.pooled_bytes(groups) == 24 * GiB


def test_residents_share_a_pool(monkeypatch):
    model = random_dit(TINY_DIT, 0)
    pool = pinned.SlabPool(2**20, pin=False)
    blocks = [*model.double_blocks, *model.single_blocks]
    ref = [{k: v.half() for k, v in b.state_dict().items()} for b in blocks]
    rs = [offload.Resident(b, torch.device("cpu"), pin=True, dtype=torch.float16, pool=pool) for b in blocks]
    assert len(pool.slabs) == 1  # every block's host copies in one 1 MiB slab
    assert {h.untyped_storage().data_ptr() for r in rs for h in r.host} == {pool.slabs[0].data_ptr()}
    for r, b, want in zip(rs, blocks, ref, strict=True):
        r.load()
        assert all(torch.equal(b.state_dict()[k], v) for k, v in want.items())


def test_pool_slab_size_follows_the_largest_tensor():
    assert pinned.SlabPool.for_largest(3 * 2**20, pin=False).slab == 32 * 2**20  # 8 x 3 MiB -> 32 MiB slabs
    largest_bf16 = 21504 * 3072 * 2  # single_blocks.linear1 of the released DiT
    assert pinned.SlabPool.for_largest(largest_bf16, pin=False).slab == SLAB  # capped at 1 GiB
