"""The attention entry point (hyvideo/modules/attention.py): SDPA math, key masks, kernel choice and the packing that
the optional CUDA kernels (flash-attn varlen, SageAttention) need, checked on CPU with strict stand-ins that enforce
those kernels' calling contracts."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F

from hyvideo import hardware, request
from hyvideo.errors import UsageError
from hyvideo.modules import attention as attn_mod
from hyvideo.modules.attention import (
    KeyMask,
    attention,
    check_backend,
    kernel_for,
    reference_varlen_kernel,
    runnable_backend,
    varlen_attention,
)


def qkv(B: int = 3, L: int = 9, H: int = 2, D: int = 8, seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(B, L, H, D, generator=g) for _ in range(3))


def ragged_valid() -> torch.Tensor:
    """(3, 9) bool: lengths 9, 5, 7, and a hole in the last sample (valid tokens need not be contiguous)."""
    valid = torch.arange(9)[None] < torch.tensor([9, 5, 7])[:, None]
    valid[2, 3] = False
    return valid


def nhd_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(D)) v for (B, L, H, D) tensors, in the same layout."""
    return F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)


# --------------------------------------------------------------------------- SDPA path and masks
def test_sdpa_path_is_softmax_attention_with_heads_flattened():
    q, k, v = qkv()
    scores = torch.einsum("blhd,bmhd->bhlm", q, k) / q.shape[-1] ** 0.5  # (B, H, L, L)
    want = torch.einsum("bhlm,bmhd->blhd", scores.softmax(-1), v).reshape(3, 9, 16)  # (B, L, H*D), heads outer
    assert torch.allclose(attention(q, k, v), want, atol=1e-5)


def test_masked_keys_do_not_change_valid_rows():
    q, k, v = qkv()
    valid = ragged_valid()
    out = attention(q, k, v, KeyMask(valid), "sdpa")
    k2, v2 = k.clone(), v.clone()
    k2[~valid], v2[~valid] = 1e3, -1e3  # whatever sits at padded positions must not leak
    assert torch.allclose(attention(q, k2, v2, KeyMask(valid), "sdpa"), out, atol=1e-6)
    for b in range(3):  # and each sample equals attention over its valid keys alone
        keep = valid[b]
        alone = nhd_sdpa(q[b : b + 1], k[b : b + 1, keep], v[b : b + 1, keep]).reshape(1, 9, 16)
        assert torch.allclose(out[b : b + 1], alone, atol=1e-6)


def test_key_mask_views():
    valid = ragged_valid()
    assert KeyMask(valid).sdpa_mask().shape == (3, 1, 1, 9)  # broadcast over heads and queries
    idx, cu, max_len = KeyMask(valid).varlen()
    assert cu.dtype == torch.int32 and cu.tolist() == [0, 9, 14, 20]
    assert max_len == 9 and isinstance(max_len, int)
    assert idx.tolist() == [*range(9), *range(9, 14), 18, 19, 20, 22, 23, 24]  # sample 2 skips position 3


def test_varlen_packing_matches_masked_sdpa():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(3, 9, 2, 8, generator=g) for _ in range(3))
    valid = torch.arange(9)[None] < torch.tensor([9, 5, 7])[:, None]
    mask = KeyMask(valid)
    masked = attention(q, k, v, mask, "sdpa").view(3, 9, 2, 8)
    packed = varlen_attention(q, k, v, mask, reference_varlen_kernel)
    assert torch.allclose(packed[valid], masked[valid], atol=1e-6)
    assert packed[~valid].abs().max() == 0


# --------------------------------------------------------------------------- backend checks and kernel choice
def test_check_backend_names_the_flag_and_the_fix(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    for backend in ("auto", "sdpa"):  # always available, on any device
        check_backend(backend, cpu)
        check_backend(backend, cuda)
    with pytest.raises(ValueError, match=r"--attn-backend: unknown 'xformers'; choose from auto, sdpa, flash, sage"):
        check_backend("xformers", cpu)
    monkeypatch.setattr(attn_mod, "PACKAGES", {"flash": (True, "flash-attn"), "sage": (False, "sageattention")})
    with pytest.raises(ValueError, match="--attn-backend flash: needs a CUDA device, got cpu"):
        check_backend("flash", cpu)
    check_backend("flash", cuda)
    with pytest.raises(ValueError, match=r"--attn-backend sage: sageattention is not installed \(pip install"):
        check_backend("sage", cuda)


@dataclass
class FakeQ:
    """What `kernel_for` reads of q: its device and dtype (a CUDA tensor cannot be made on this machine)."""

    device: torch.device
    dtype: torch.dtype


@pytest.mark.parametrize(
    "device,dtype,flash,sage,backend,want",
    [
        ("cuda", torch.bfloat16, True, True, "auto", "flash"),
        ("cuda", torch.float16, True, True, "flash", "flash"),
        ("cuda", torch.bfloat16, True, True, "sage", "sage"),
        ("cuda", torch.bfloat16, True, True, "sdpa", "sdpa"),
        ("cuda", torch.bfloat16, False, True, "auto", "sdpa"),  # auto never picks the approximate SageAttention
        ("cuda", torch.bfloat16, True, False, "sage", "sdpa"),  # requested but not installed: SDPA
        ("cuda", torch.float32, True, True, "flash", "sdpa"),  # the optional kernels take half precision only
        ("cpu", torch.bfloat16, True, True, "flash", "sdpa"),
    ],
)
def test_kernel_choice(monkeypatch, device, dtype, flash, sage, backend, want):
    monkeypatch.setattr(attn_mod, "HAS_FLASH", flash)
    monkeypatch.setattr(attn_mod, "HAS_SAGE", sage)
    assert kernel_for(FakeQ(torch.device(device), dtype), backend) == want


# --------------------------------------------------------------------------- dispatch to the optional kernels
def strict_flash(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """flash_attn_func's contract: (B, L, H, D) q, k, v of one dtype in, (B, L, H, D) out."""
    assert q.dim() == 4 and q.shape == k.shape == v.shape and q.dtype == k.dtype == v.dtype
    return nhd_sdpa(q, k, v)


def strict_flash_varlen(q, k, v, cu_q, cu_k, max_q, max_k) -> torch.Tensor:
    """flash_attn_varlen_func's contract: packed (total, H, D), int32 cumulative lengths from 0 to total, int maxima."""
    for t, cu, mx in ((q, cu_q, max_q), (k, cu_k, max_k)):
        assert t.dim() == 3 and cu.dtype == torch.int32 and int(cu[0]) == 0 and int(cu[-1]) == t.shape[0]
        assert isinstance(mx, int) and mx == int((cu[1:] - cu[:-1]).max())
    return reference_varlen_kernel(q, k, v, cu_q, cu_k, max_q, max_k)


def strict_sage(q, k, v, tensor_layout="HND", is_causal=False):
    """sageattn's contract with tensor_layout="NHD": (B, L, H, D) in and out; the default layout is HND."""
    assert tensor_layout == "NHD" and not is_causal and q.dim() == 4
    return nhd_sdpa(q, k, v)


@pytest.mark.parametrize("kernel", ["flash", "sage"])
@pytest.mark.parametrize("masked", [False, True])
def test_optional_kernels_give_the_sdpa_result(monkeypatch, kernel, masked):
    monkeypatch.setattr(attn_mod, "flash_attn_func", strict_flash)
    monkeypatch.setattr(attn_mod, "flash_attn_varlen_func", strict_flash_varlen)
    monkeypatch.setattr(attn_mod, "sageattn", strict_sage)
    q, k, v = qkv()
    valid = ragged_valid()
    mask = KeyMask(valid) if masked else None
    want = attention(q, k, v, mask, "sdpa")
    monkeypatch.setattr(attn_mod, "kernel_for", lambda q, backend: kernel)
    got = attention(q, k, v, mask, kernel)
    assert got.shape == (3, 9, 16)
    rows = valid if masked else torch.ones_like(valid)
    assert torch.allclose(got[rows], want[rows], atol=1e-6)
    if masked:  # padded query rows come out as zeros (their outputs are never used)
        assert got[~valid].abs().max() == 0


# --------------------------------------------------------------------------- cards flash-attn has no kernel for
@pytest.mark.parametrize(
    "cap, ok",
    [((7, 0), False), ((7, 5), False), ((8, 0), True), ((8, 6), True), ((8, 9), True), ((9, 0), True),
     ((10, 0), False), ((12, 0), False), (None, False)],
)  # fmt: skip
def test_flash_supported_cards(cap, ok):
    """flash-attn 2's entry points accept sm8x and sm90 only (V100 and T4 raise at the first call)."""
    assert hardware.flash_supported(cap) is ok


@pytest.mark.parametrize(
    "device, cap, flash, backend, want",
    [
        ("cuda", (7, 5), True, "auto", "sdpa"),  # a T4 with flash-attn installed: auto must not reach it
        ("cuda", (8, 6), True, "auto", "auto"),
        ("cuda", (9, 0), True, "auto", "auto"),
        ("cuda", (7, 5), False, "auto", "auto"),  # nothing to avoid: kernel_for picks SDPA anyway
        ("cuda", (7, 5), True, "sdpa", "sdpa"),
        ("cuda", (10, 0), True, "sage", "sage"),  # sage's own card check is the request's
        ("cpu", None, True, "auto", "auto"),
    ],
)
def test_runnable_backend_avoids_flash_where_it_has_no_kernel(monkeypatch, device, cap, flash, backend, want):
    monkeypatch.setattr(attn_mod, "HAS_FLASH", flash)
    monkeypatch.setattr(hardware, "capability", lambda d: cap)
    assert runnable_backend(backend, torch.device(device)) == want
    q = FakeQ(torch.device(device), torch.bfloat16)
    assert (kernel_for(q, want) == "flash") is (device == "cuda" and flash and hardware.flash_supported(cap))


def test_explicit_flash_refused_up_front_on_a_card_without_a_kernel(monkeypatch):
    """--attn-backend flash on a Turing card: one line naming the flag and the card, before anything loads."""
    monkeypatch.setattr(hardware, "installed", lambda module: True)
    monkeypatch.setattr(hardware, "device_name", lambda device: "Tesla T4")
    monkeypatch.setattr(hardware, "capability", lambda device: (7, 5))
    with pytest.raises(UsageError, match=r"flash-attn has no kernel for Tesla T4 \(cuda, sm75\).*use sdpa") as e:
        request._check_attn_backend("flash", "cuda")
    assert e.value.flag == "--attn-backend"
    monkeypatch.setattr(hardware, "capability", lambda device: (8, 9))
    request._check_attn_backend("flash", "cuda")  # an RTX 4090: accepted
