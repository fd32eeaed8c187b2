"""One attention entry point for every block: torch SDPA by default, flash-attn (varlen) on CUDA when installed,
SageAttention (int8 q/k, CUDA) on request.

Inputs are (B, L, H, D) — the layout a fused qkv Linear produces — and the output is (B, L, H*D).
Text padding is handled by the caller's `KeyMask`: for batch 1 the DiT drops padded tokens entirely, so no mask is
passed and SDPA may pick its fused kernels; for batch > 1 the mask hides padded keys (real tokens never see padding).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from hyvideo import hardware

try:  # optional CUDA kernels
    from flash_attn import flash_attn_func, flash_attn_varlen_func

    HAS_FLASH = True
except ImportError:  # pragma: no cover - depends on the install
    flash_attn_func = flash_attn_varlen_func = None
    HAS_FLASH = False

try:  # optional CUDA kernels (SageAttention: int8 q k^T, approximate)
    from sageattention import sageattn

    HAS_SAGE = True
except ImportError:  # pragma: no cover - depends on the install
    sageattn = None
    HAS_SAGE = False

Backend = Literal["auto", "sdpa", "flash", "sage"]
BACKENDS: tuple[str, ...] = ("auto", "sdpa", "flash", "sage")
PACKAGES = {"flash": (HAS_FLASH, "flash-attn"), "sage": (HAS_SAGE, "sageattention")}


@dataclass(frozen=True)
class KeyMask:
    """Which keys are real, per sample: valid (B, L) bool. Built once per forward and shared by all blocks."""

    valid: torch.Tensor  # (B, L) bool

    def sdpa_mask(self) -> torch.Tensor:
        return self.valid[:, None, None, :]  # (B, 1, 1, L): broadcast over heads and queries

    def varlen(self) -> tuple[torch.Tensor, torch.Tensor, int]:
        """(indices of valid tokens in the flattened (B*L) sequence, cu_seqlens (B+1,) int32, max_seqlen)."""
        lens = self.valid.sum(1, dtype=torch.int32)  # (B,)
        cu = F.pad(lens.cumsum(0, dtype=torch.int32), (1, 0))
        idx = self.valid.flatten().nonzero().squeeze(1)
        return idx, cu, int(lens.max())


def check_backend(backend: str, device: torch.device) -> None:
    """Raise a clear error if `backend` cannot run on `device` (called before any weights load)."""
    if backend not in BACKENDS:
        raise ValueError(f"--attn-backend: unknown {backend!r}; choose from {', '.join(BACKENDS)}")
    if backend in PACKAGES:
        installed, pip = PACKAGES[backend]
        if not installed:
            raise ValueError(f"--attn-backend {backend}: {pip} is not installed (pip install {pip})")
        if device.type != "cuda":
            raise ValueError(f"--attn-backend {backend}: needs a CUDA device, got {device.type}")


def runnable_backend(backend: str, device: torch.device) -> str:
    """The backend a model on `device` runs with: "auto" becomes "sdpa" on a GPU flash-attn has no kernel for, so
    that neither the blocks nor the ring (which calls flash-attn for "auto" and "flash") reach its runtime error.
    Decided once when the model is set up, not per call (an explicit "flash" there is refused up front)."""
    if backend == "auto" and HAS_FLASH and device.type == "cuda":
        return "auto" if hardware.flash_supported(hardware.capability(device)) else "sdpa"
    return backend


def kernel_for(q: torch.Tensor, backend: str) -> str:
    """Which kernel `attention` runs for q: "flash", "sage" or "sdpa" (CUDA half-precision inputs only use the
    optional kernels; everything else, and a requested kernel that is not installed, falls back to SDPA)."""
    if q.device.type != "cuda" or q.dtype not in (torch.float16, torch.bfloat16):
        return "sdpa"
    if backend == "sage" and HAS_SAGE:
        return "sage"
    if backend in ("auto", "flash") and HAS_FLASH:
        return "flash"
    return "sdpa"


def attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: KeyMask | None = None, backend: str = "auto"
) -> torch.Tensor:
    """softmax(q k^T / sqrt(D)) v over keys allowed by `mask`. q, k, v: (B, L, H, D) -> (B, L, H*D)."""
    B, L, H, D = q.shape
    kernel = kernel_for(q, backend)
    if kernel == "flash":
        if mask is None:
            out = flash_attn_func(q, k, v)  # (B, L, H, D)
        else:
            out = varlen_attention(q, k, v, mask, flash_attn_varlen_func)
        return out.reshape(B, L, H * D)
    if kernel == "sage":
        return sage_attention(q, k, v, mask, sageattn).reshape(B, L, H * D)
    attn_mask = None if mask is None else mask.sdpa_mask()
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=attn_mask)
    return out.transpose(1, 2).reshape(B, L, H * D)  # (B, H, L, D) -> (B, L, H*D)


def varlen_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: KeyMask, kernel) -> torch.Tensor:
    """Pack valid tokens, run a varlen kernel, scatter back; padded query rows come out as zeros.

    `kernel(q, k, v, cu_q, cu_k, max_q, max_k)` takes packed (total, H, D) tensors (flash-attn's signature).
    Valid tokens must form, per sample, the set the mask marks; they need not be contiguous.
    """
    B, L, H, D = q.shape
    idx, cu, max_len = mask.varlen()
    packed = [t.reshape(B * L, H, D).index_select(0, idx) for t in (q, k, v)]  # (total, H, D) each
    out = kernel(*packed, cu, cu, max_len, max_len)  # (total, H, D)
    full = out.new_zeros(B * L, H, D)
    full.index_copy_(0, idx, out)
    return full.view(B, L, H, D)


def sage_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: KeyMask | None, kernel) -> torch.Tensor:
    """SageAttention on (B, L, H, D) inputs -> (B, L, H, D). `kernel(q, k, v, tensor_layout="NHD")` is sageattn.

    Without a mask one call covers the batch. With a mask (batch > 1 with padded text) each sample's valid tokens
    are gathered and attended alone (the kernel has no key mask); padded query rows come out as zeros.
    """
    if mask is None:
        return kernel(q, k, v, tensor_layout="NHD", is_causal=False)
    out = torch.zeros_like(q)
    for b in range(q.shape[0]):
        idx = mask.valid[b].nonzero().squeeze(1)  # (Lb,) positions of this sample's real tokens
        qb, kb, vb = (t[b : b + 1].index_select(1, idx) for t in (q, k, v))  # (1, Lb, H, D)
        out[b].index_copy_(0, idx, kernel(qb, kb, vb, tensor_layout="NHD", is_causal=False)[0])
    return out


def reference_varlen_kernel(q, k, v, cu_q, cu_k, max_q, max_k) -> torch.Tensor:
    """flash_attn_varlen_func's contract in plain torch (per segment SDPA); used to test the packing on CPU."""
    outs = []
    for i in range(len(cu_q) - 1):
        sq, sk = slice(int(cu_q[i]), int(cu_q[i + 1])), slice(int(cu_k[i]), int(cu_k[i + 1]))
        o = F.scaled_dot_product_attention(
            q[sq].transpose(0, 1)[None], k[sk].transpose(0, 1)[None], v[sk].transpose(0, 1)[None]
        )  # (1, H, Lq, D)
        outs.append(o[0].transpose(0, 1))
    return torch.cat(outs, 0)
