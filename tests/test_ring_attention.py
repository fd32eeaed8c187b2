"""Ring attention's per-step kernel (hyvideo.parallel.attention): the kernel choice as a pure function (CUDA without
flash-attn or in fp32 takes torch's memory-efficient kernel, never an explicit (B, H, Lq, Lk) score matrix), and
every path's (out, lse) against SDPA + an explicit logsumexp, masked, on CPU (the CUDA kernel through a strict
stand-in of its contract)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from cuda_standins import CudaContractError, strict_efficient_attention

from hyvideo.parallel import attention as par_attn
from hyvideo.parallel.attention import (
    MATH_SCORES,
    attention_lse,
    efficient_attention_lse,
    math_attention_lse,
    math_chunk,
    merge_lse,
    ring_kernel,
)

BF16, FP16, FP32 = torch.bfloat16, torch.float16, torch.float32


@pytest.mark.parametrize(
    "device, dtype, flash, masked, kernel",
    [
        ("cuda", BF16, False, False, "efficient"),  # no flash-attn installed
        ("cuda", FP16, False, True, "efficient"),
        ("cuda", FP32, True, False, "efficient"),  # --precision fp32: flash-attn has no fp32 kernel
        ("cuda", BF16, True, True, "efficient"),  # a key mask: flash_attn_func takes none
        ("cuda", BF16, True, False, "flash_attn"),
        ("cuda", FP16, True, False, "flash_attn"),
        ("cpu", FP32, False, True, "cpu_flash"),
        ("cpu", BF16, True, False, "cpu_flash"),
        ("mps", FP32, False, False, "chunked"),
    ],
)
def test_ring_kernel_choice(device, dtype, flash, masked, kernel):
    assert ring_kernel(device, dtype, flash, masked) == kernel


def reference(q, k, v, valid):
    """SDPA for the output, an explicit float64 logsumexp for the lse (masked keys excluded)."""
    qt, kt, vt = (x.transpose(1, 2).double() for x in (q, k, v))
    mask = None if valid is None else valid[:, None, None, :]
    out = F.scaled_dot_product_attention(qt, kt, vt, attn_mask=mask).transpose(1, 2)
    scores = qt @ kt.transpose(-1, -2) / q.shape[-1] ** 0.5
    if valid is not None:
        scores = scores.masked_fill(~valid[:, None, None, :], float("-inf"))
    return out, scores.logsumexp(-1)


def inputs(dtype=FP32, Lq=37, Lk=45, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(2, n, 3, 16, generator=g).to(dtype) for n in (Lq, Lk, Lk))
    valid = torch.ones(2, Lk, dtype=torch.bool)
    valid[0, 30:] = False  # sample 0: the last 15 keys hidden (padding)
    valid[1, ::7] = False  # sample 1: scattered hidden keys
    return q, k, v, valid


def close(got, want, tol):
    out, lse = got
    torch.testing.assert_close(out.double(), want[0], rtol=tol, atol=tol)
    torch.testing.assert_close(lse.double(), want[1], rtol=tol, atol=tol)


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("chunk", [None, 5])
def test_chunked_math_fallback_matches_sdpa_and_logsumexp(masked, chunk):
    """The explicit float32 path (what runs on devices without a fused kernel): a dropped or wrong softmax
    normalisation, a wrong lse, or a mask applied to the wrong keys fails here."""
    q, k, v, valid = inputs()
    valid = valid if masked else None
    close(math_attention_lse(q, k, v, valid, chunk=chunk), reference(q, k, v, valid), 1e-5)  # fp32 rounding


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("dtype", [FP32, BF16])
def test_cpu_path_matches_sdpa_and_logsumexp(masked, dtype):
    q, k, v, valid = inputs(dtype)
    valid = valid if masked else None
    tol = 1e-5 if dtype == FP32 else 2e-2  # bf16 output rounding (2^-8 relative)
    close(attention_lse(q, k, v, valid), reference(q, k, v, valid), tol)


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("dtype", [FP32, FP16, BF16])
def test_efficient_kernel_call_keeps_its_contract(masked, dtype):
    """The CUDA path's call (bias in q's dtype with aligned strides, lse padded to 32 and cut) under a stand-in
    that enforces the kernel's checks; Lk = 45 is not a multiple of the alignment."""
    q, k, v, valid = inputs(dtype)
    valid = valid if masked else None
    tol = {FP32: 1e-5, FP16: 3e-3, BF16: 2e-2}[dtype]  # output rounding of each dtype
    close(efficient_attention_lse(q, k, v, valid, op=strict_efficient_attention), reference(q, k, v, valid), tol)


def test_strict_efficient_stand_in_rejects_unaligned_or_mistyped_bias():
    q, k, v, valid = inputs()
    qt, kt, vt = (x.transpose(1, 2) for x in (q, k, v))
    bias = torch.zeros(2, 1, 1, 45).masked_fill(~valid[:, None, None], float("-inf"))  # row stride 45: unaligned
    with pytest.raises(CudaContractError, match="aligned"):
        strict_efficient_attention(qt, kt, vt, bias, True)
    with pytest.raises(CudaContractError, match="dtype for bias"):
        strict_efficient_attention(qt, kt, vt, torch.zeros(2, 1, 1, 48, dtype=BF16)[..., :45], True)


def test_chunked_path_memory_is_bounded():
    """At 720p x 129 frames with R = 2 (59,528 queries, ~59,528 keys, 24 heads) the explicit (B, H, Lq, Lk) fp32
    scores would be 340 GB; the chunked path holds at most MATH_SCORES of them at once."""
    B, H, Lq, Lk = 1, 24, 59_528, 59_528
    assert B * H * Lq * Lk * 4 > 340e9
    c = math_chunk(B, H, Lk)
    assert B * H * c * Lk <= MATH_SCORES and c >= 1


def test_ring_merge_of_chunked_parts_equals_full_attention():
    """The merge rule on parts computed by the chunked path (as on a device without a fused kernel)."""
    q, k, v, valid = inputs()
    parts = [
        math_attention_lse(q, k[:, :20], v[:, :20], chunk=4),
        math_attention_lse(q, k[:, 20:], v[:, 20:], valid[:, 20:]),
    ]
    keep = torch.cat([torch.ones(2, 20, dtype=torch.bool), valid[:, 20:]], 1)
    torch.testing.assert_close(merge_lse(parts).double(), reference(q, k, v, keep)[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend, flash", [("auto", True), ("flash", True), ("sdpa", False), ("sage", False)])
def test_the_ring_asks_for_flash_only_where_the_model_backend_allows_it(monkeypatch, backend, flash):
    """Every ring step (image blocks and the text keys) chooses its kernel with the model's backend: "sdpa" (what a
    card without flash-attn kernels runs, or the user's choice) never reaches flash-attn."""
    asked = []
    real = par_attn.ring_kernel
    monkeypatch.setattr(par_attn, "HAS_FLASH", True)
    monkeypatch.setattr(par_attn, "ring_kernel", lambda d, t, f, m: asked.append(f) or real(d, t, f, m))
    mesh = SimpleNamespace(ulysses=1, ring=1, r_rank=0, ring_ranks=(0,), ring_group=None)
    sp = par_attn.SequenceParallelAttention(mesh, num_image_tokens=6, chunk=6)  # type: ignore[arg-type]
    g = torch.Generator().manual_seed(0)
    q, ik, iv, tk, tv = (torch.randn(1, n, 2, 8, generator=g) for n in (10, 6, 6, 4, 4))
    valid = torch.tensor([[True, True, True, False]])
    out = sp._ring(q, ik, iv, tk, tv, valid, backend)  # (1, 10, 2, 8)
    assert asked == [flash, flash]  # one image block, then the text keys
    ref = F.scaled_dot_product_attention(
        *(x.transpose(1, 2) for x in (q, torch.cat([ik, tk], 1), torch.cat([iv, tv], 1))),
        attn_mask=F.pad(valid, (6, 0), value=True)[:, None, None],
    ).transpose(1, 2)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
