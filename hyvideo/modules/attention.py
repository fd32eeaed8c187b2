"""One attention entry point for every block: torch SDPA by default, flash-attn varlen on CUDA when installed.

Inputs are (B, L, H, D) — the layout a fused qkv Linear produces — and the output is (B, L, H*D).
Text padding is handled by the caller's `KeyMask`: for batch 1 the DiT drops padded tokens entirely, so no mask is
passed and SDPA may pick its fused kernels; for batch > 1 the mask hides padded keys (real tokens never see padding).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

try:  # optional CUDA kernels
    from flash_attn import flash_attn_func, flash_attn_varlen_func

    HAS_FLASH = True
except ImportError:  # pragma: no cover - depends on the install
    flash_attn_func = flash_attn_varlen_func = None
    HAS_FLASH = False

Backend = Literal["auto", "sdpa", "flash"]
BACKENDS: tuple[str, ...] = ("auto", "sdpa", "flash")


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
    if backend == "flash" and not HAS_FLASH:
        raise ValueError("--attn-backend flash: flash-attn is not installed (pip install flash-attn)")
    if backend == "flash" and device.type != "cuda":
        raise ValueError(f"--attn-backend flash: needs a CUDA device, got {device.type}")


def _use_flash(q: torch.Tensor, backend: str) -> bool:
    if backend == "sdpa" or not HAS_FLASH or q.device.type != "cuda":
        return False
    return q.dtype in (torch.float16, torch.bfloat16)


def attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: KeyMask | None = None, backend: str = "auto"
) -> torch.Tensor:
    """softmax(q k^T / sqrt(D)) v over keys allowed by `mask`. q, k, v: (B, L, H, D) -> (B, L, H*D)."""
    B, L, H, D = q.shape
    if _use_flash(q, backend):
        if mask is None:
            out = flash_attn_func(q, k, v)  # (B, L, H, D)
        else:
            out = varlen_attention(q, k, v, mask, flash_attn_varlen_func)
        return out.reshape(B, L, H * D)
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
