"""Strict CPU stand-ins for CUDA-only kernels: each enforces the argument contract of the CUDA implementation in
torch 2.13 (read from ATen's sources) and computes the documented result in float32, so a call that CUDA would
reject fails on a CPU-only machine too. The CPU builds of these ops are laxer (e.g. the CPU `torch._scaled_mm`
accepts a bias with a float32 output, which CUDA rejects).
"""

from __future__ import annotations

import math

import torch

FP8_TYPES = (torch.float8_e4m3fn, torch.float8_e5m2)
SCALED_MM_OUT_DTYPES = (torch.float32, torch.bfloat16, torch.float16, *FP8_TYPES)


class CudaContractError(RuntimeError):
    """A call the CUDA kernel would reject."""


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise CudaContractError(message)


def _tensorwise(scale: torch.Tensor) -> bool:
    return scale.dtype == torch.float32 and scale.numel() == 1


def strict_scaled_mm(
    a: torch.Tensor,
    b: torch.Tensor,
    *,
    scale_a: torch.Tensor,
    scale_b: torch.Tensor,
    bias: torch.Tensor | None = None,
    scale_result: torch.Tensor | None = None,
    out_dtype: torch.dtype | None = None,
    use_fast_accum: bool = False,
) -> torch.Tensor:
    """`torch._scaled_mm` with the checks of its CUDA implementation (`_scaled_mm_out_cuda`), then
    (a @ b) * scale_a * scale_b + bias in float32, cast to out_dtype.

    Enforced: 2-D fp8 operands (not both e5m2) with matching inner dims; a row-major, b column-major (cuBLASLt's
    only layout on sm90); K and both dims of b multiples of 16; scales per tensor (float32, one element each) or
    per row (scale_a (M, 1), scale_b (1, N), float32, contiguous); out_dtype in fp32/bf16/fp16/fp8; bias of N
    elements, never with a float32 output, bf16 for a bf16 output and fp16 for an fp16 output; scale_result a
    float32 scalar; every tensor on one device.
    """
    out_dtype = out_dtype or a.dtype
    _require(a.dim() == 2 and b.dim() == 2, "mat1 and mat2 must be matrices")
    _require(
        a.shape[1] == b.shape[0], f"mat1 and mat2 shapes cannot be multiplied ({tuple(a.shape)}, {tuple(b.shape)})"
    )
    _require(a.dtype in FP8_TYPES and b.dtype in FP8_TYPES, f"expected float8 operands, got {a.dtype}, {b.dtype}")
    _require(not (a.dtype == b.dtype == torch.float8_e5m2), "two float8_e5m2 matrices are not supported")
    M, K = a.shape
    N = b.shape[1]
    rowwise = (
        scale_a.dtype == scale_b.dtype == torch.float32
        and tuple(scale_a.shape) == (M, 1)
        and tuple(scale_b.shape) == (1, N)
        and scale_a.is_contiguous()
        and scale_b.is_contiguous()
    )
    _require(
        (_tensorwise(scale_a) and _tensorwise(scale_b)) or rowwise,
        f"invalid scaling configuration: scale_a {scale_a.dtype} {tuple(scale_a.shape)}, scale_b {scale_b.dtype} "
        f"{tuple(scale_b.shape)} (per tensor: float32 singletons; per row: ({M}, 1) and (1, {N}))",
    )
    _require(K % 16 == 0, f"trailing dimension of mat1 must be divisible by 16, got {tuple(a.shape)}")
    _require(b.shape[0] % 16 == 0 and N % 16 == 0, f"mat2 shape {tuple(b.shape)} must be divisible by 16")
    _require(a.stride(1) == 1 and b.stride(0) == 1, "only row-major mat1 times column-major mat2 is supported")
    _require(out_dtype in SCALED_MM_OUT_DTYPES, f"out_dtype {out_dtype} is not supported")
    _require(
        scale_result is None or (scale_result.numel() == 1 and scale_result.dtype == torch.float32),
        "scale_result must be a float scalar",
    )
    if bias is not None:
        _require(bias.numel() == N, f"Bias must be size {N} but got {bias.numel()}")
        _require(out_dtype != torch.float32, "Bias is not supported when out_dtype is set to Float32")
        _require(bias.dtype in (torch.bfloat16, torch.float16), f"Bias must be BFloat16 or Half, but got {bias.dtype}")
        _require(out_dtype != torch.bfloat16 or bias.dtype == torch.bfloat16, "Bias must be BFloat16 for bf16 output")
        _require(out_dtype != torch.float16 or bias.dtype == torch.float16, "Bias must be Float16 for fp16 output")
    devices = {t.device for t in (a, b, scale_a, scale_b, bias, scale_result) if t is not None}
    _require(len(devices) == 1, f"all tensors must be on one device, got {devices}")
    y = (a.float() @ b.float()) * scale_a.float() * scale_b.float()
    if bias is not None:
        y = y + bias.float()
    if scale_result is not None and out_dtype in FP8_TYPES:
        y = y / scale_result.float()
    return y.to(out_dtype)


def strict_efficient_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attn_bias: torch.Tensor | None,
    compute_log_sumexp: bool,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    *,
    scale: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """`torch.ops.aten._scaled_dot_product_efficient_attention` with the checks of its CUDA kernel
    (`_efficient_attention_forward`): q/k/v (B, H, L, D) of one float dtype with a contiguous last dim; a bias in
    q's dtype, 4-D, broadcastable to (B, H, Lq, Lk), last dim contiguous and its other strides multiples of the
    16-byte alignment; the log-sum-exp comes back float32 (B, H, Lq rounded up to 32), as the kernel pads it.
    Returns (out (B, H, Lq, D), lse, seed, offset).
    """
    _require(query.dim() == key.dim() == value.dim() == 4, "query, key and value must be 4-D (B, H, L, D)")
    _require(query.dtype == key.dtype == value.dtype, "query, key and value must share a dtype")
    _require(query.dtype in (torch.float32, torch.float16, torch.bfloat16), f"unsupported dtype {query.dtype}")
    _require(all(t.stride(-1) == 1 for t in (query, key, value)), "last dimension must be contiguous")
    _require(dropout_p == 0.0 and not is_causal, "stand-in covers dropout 0, non-causal")
    B, H, Lq, D = query.shape
    Lk = key.shape[2]
    scores = query.float() @ key.float().transpose(-1, -2) * (scale if scale is not None else D**-0.5)
    if attn_bias is not None:
        _require(attn_bias.dtype == query.dtype, "invalid dtype for bias - should match query's dtype")
        _require(attn_bias.dim() == 4 and attn_bias.stride(-1) == 1, "bias must be 4-D with a contiguous last dim")
        _require(
            all(s in (1, full) for s, full in zip(attn_bias.shape, (B, H, Lq, Lk), strict=True))
            and attn_bias.shape[-1] == Lk,
            f"bias shape {tuple(attn_bias.shape)} does not broadcast to {(B, H, Lq, Lk)}",
        )
        align = 16 // attn_bias.element_size()
        strides = [0 if n == 1 else s for n, s in zip(attn_bias.shape[:3], attn_bias.stride()[:3], strict=True)]
        _require(all(s % align == 0 for s in strides), f"bias strides {attn_bias.stride()} not {align}-aligned")
        scores = scores + attn_bias.float()
    lse = scores.logsumexp(-1)  # (B, H, Lq)
    out = ((scores - lse[..., None]).exp() @ value.float()).to(query.dtype)
    padded = torch.full((B, H, math.ceil(Lq / 32) * 32 if compute_log_sumexp else 0), float("inf"))
    if compute_log_sumexp:
        padded[..., :Lq] = lse  # the padding holds garbage on CUDA: +inf here, so reading it shows
    return out, padded, torch.empty((), dtype=torch.long), torch.empty((), dtype=torch.long)
