"""Joint attention over image tokens split across ranks: Ulysses (all-to-all over heads) x ring (k/v passed around).

Each rank of a sequence-parallel group holds one chunk of `c` image tokens (the global sequence is padded to
U * R * c; padding sits at the end) and the full, identical text tokens. Per attention call:
1. Ulysses: all-to-all inside the U-group turns image q/k/v (B, c, H, D) into (B, U*c, H/U, D): the group's
   U chunks (one contiguous ring block) for this rank's H/U heads. Text q/k/v are replicated; take the same heads.
2. Ring: each of the R ring blocks' valid image keys, and the text keys once, are attended to by this rank's
   queries; partial results merge exactly by log-sum-exp:
       o = sum_j exp(lse_j - lse) o_j,   lse = log sum_j exp(lse_j),   lse_j = log sum_{k in j} exp(q.k / sqrt(D)).
   With R == 1 one ordinary `attention` call over [valid image keys; text keys] suffices (any backend).
3. Inverse all-to-all for the image output; text output heads are all-gathered inside the U-group.
Partial results merge in a fixed block order, so every rank computes bit-identical text outputs.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.distributed as dist
import torch.nn.functional as F

from hyvideo.modules.attention import HAS_FLASH, KeyMask, attention, flash_attn_func
from hyvideo.parallel.group import Mesh

MATH_SCORES = 2**26  # float32 score elements per query chunk on the explicit path (256 MiB)


def ring_kernel(device_type: str, dtype: torch.dtype, has_flash: bool, masked: bool) -> str:
    """Which kernel computes one ring step's (out, lse); every choice is linear in memory in the sequence length.

    "cpu_flash": torch's fused CPU flash kernel (any float dtype, additive mask, returns lse).
    "flash_attn": flash-attn on CUDA for fp16/bf16 without a key mask (returns lse).
    "efficient": otherwise on CUDA (fp32, a key mask, or no flash-attn): torch's memory-efficient kernel
        `aten._scaled_dot_product_efficient_attention(compute_log_sumexp=True)` (fp32/fp16/bf16, additive bias).
    "chunked": any other device: the explicit softmax in float32, over query chunks of at most `MATH_SCORES`
        scores (`math_attention_lse`).
    """
    if device_type == "cpu":
        return "cpu_flash"
    if device_type == "cuda":
        if has_flash and not masked and dtype in (torch.float16, torch.bfloat16):
            return "flash_attn"
        return "efficient"
    return "chunked"


def attention_lse(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_valid: torch.Tensor | None = None, backend: str = "auto"
) -> tuple[torch.Tensor, torch.Tensor]:
    """(softmax(q k^T / sqrt(D)) v, lse) with lse = logsumexp_k(q k^T / sqrt(D)) over allowed keys.

    q (B, Lq, H, D), k/v (B, Lk, H, D), key_valid (B, Lk) bool or None -> out (B, Lq, H, D), lse (B, H, Lq) float32.
    The kernel is `ring_kernel(...)`'s choice; flash-attn only for the backends that allow it ("auto", "flash": the
    model's backend is already "sdpa" on a card flash-attn has no kernel for, see `runnable_backend`).
    """
    kernel = ring_kernel(q.device.type, q.dtype, HAS_FLASH and backend in ("auto", "flash"), key_valid is not None)
    if kernel == "cpu_flash":
        qt, kt, vt = (x.transpose(1, 2) for x in (q, k, v))  # (B, H, L, D)
        bias = None if key_valid is None else key_bias(key_valid, q.dtype)[:, None, None]  # (B, 1, 1, Lk)
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(qt, kt, vt, attn_mask=bias)
        return out.transpose(1, 2), lse.float()
    if kernel == "flash_attn":
        out, lse, _ = flash_attn_func(q, k, v, return_attn_probs=True)  # out (B, Lq, H, D), lse (B, H, Lq)
        return out, lse.float()
    if kernel == "efficient":
        return efficient_attention_lse(q, k, v, key_valid)
    return math_attention_lse(q, k, v, key_valid)


def key_bias(key_valid: torch.Tensor, dtype: torch.dtype, align: int = 16) -> torch.Tensor:
    """Additive key mask (B, Lk) in `dtype`: 0 for allowed keys, -inf for the others. Its rows are allocated padded
    to a multiple of `align` elements and sliced (the memory-efficient CUDA kernel needs aligned bias strides; the
    same padding torch's SDPA applies before calling it)."""
    B, Lk = key_valid.shape
    padded = torch.zeros(B, -(-Lk // align) * align, dtype=dtype, device=key_valid.device)
    padded[:, :Lk].masked_fill_(~key_valid, float("-inf"))
    return padded[:, :Lk]


def efficient_attention_lse(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_valid: torch.Tensor | None = None,
    op: Callable[..., tuple[torch.Tensor, ...]] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`attention_lse` through torch's memory-efficient CUDA kernel (`op`, default
    `aten._scaled_dot_product_efficient_attention`; tests pass a strict CPU stand-in).

    The kernel takes (B, H, L, D) views with a contiguous last dim, a bias in q's dtype broadcastable to
    (B, H, Lq, Lk), and returns the lse float32 (B, H, Lq rounded up to 32): the padding is cut off here.
    """
    op = op or torch.ops.aten._scaled_dot_product_efficient_attention
    B, Lq, H, _ = q.shape
    qt, kt, vt = (x.transpose(1, 2) for x in (q, k, v))  # (B, H, L, D)
    bias = None
    if key_valid is not None:
        bias = key_bias(key_valid, q.dtype)[:, None, None].expand(B, H, Lq, key_valid.shape[1])  # (B, H, Lq, Lk)
    out, lse = op(qt, kt, vt, bias, True)[:2]
    return out.transpose(1, 2), lse[..., :Lq].float()


def math_chunk(B: int, H: int, Lk: int) -> int:
    """Queries per chunk on the explicit path: at most `MATH_SCORES` float32 scores (B, H, chunk, Lk) at a time."""
    return max(1, MATH_SCORES // (B * H * max(Lk, 1)))


def math_attention_lse(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_valid: torch.Tensor | None = None, chunk: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """`attention_lse` as explicit float32 math over query chunks (default `math_chunk`), so the score matrix is
    never (B, H, Lq, Lk) at once: out = exp(s - lse) v, lse = logsumexp_k s, s = q k^T / sqrt(D) (masked: -inf)."""
    B, Lq, H, D = q.shape
    chunk = chunk or math_chunk(B, H, k.shape[1])
    kt, vt = k.float().transpose(1, 2), v.float().transpose(1, 2)  # (B, H, Lk, D)
    outs, lses = [], []
    for start in range(0, Lq, chunk):
        qc = q[:, start : start + chunk].float().transpose(1, 2)  # (B, H, c, D)
        scores = qc @ kt.transpose(-1, -2) * D**-0.5  # (B, H, c, Lk)
        if key_valid is not None:
            scores = scores.masked_fill(~key_valid[:, None, None, :], float("-inf"))
        lse = scores.logsumexp(-1)  # (B, H, c)
        outs.append(((scores - lse[..., None]).exp() @ vt).transpose(1, 2).to(q.dtype))  # (B, c, H, D)
        lses.append(lse)
    return torch.cat(outs, 1), torch.cat(lses, -1)


def merge_lse(parts: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """Exact softmax over the union of key sets from per-set (out (B, L, H, D), lse (B, H, L)), in list order."""
    lse = torch.logsumexp(torch.stack([p[1] for p in parts]), 0)  # (B, H, L)
    total = torch.zeros(parts[0][0].shape, dtype=torch.float32, device=parts[0][0].device)
    for out, part_lse in parts:
        w = (part_lse - lse).exp().transpose(1, 2)[..., None]  # (B, L, H, 1); 0 for a set with no allowed key
        total += torch.where(w > 0, w * out.float(), 0.0)
    return total.to(parts[0][0].dtype)


def _all_to_all(x: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:
    """x (U, ...) -> (U, ...): slot j goes to group rank j; slot j of the result came from group rank j."""
    if x.shape[0] == 1:
        return x
    x = x.contiguous()
    out = torch.empty_like(x)
    dist.all_to_all_single(out, x, group=group)
    return out


class SequenceParallelAttention:
    """The `Context.attn` of a sequence-parallel forward: (q, k, v, mask, backend) -> (B, c + Lt, H*D).

    q/k/v (B, c + Lt, H, D) = this rank's image chunk (c tokens, possibly padding) followed by all text tokens.
    `mask`, when not None, is a `KeyMask` over those c + Lt positions; only its text part is read (image
    padding is known from `num_image_tokens`).
    """

    def __init__(self, mesh: Mesh, num_image_tokens: int, chunk: int) -> None:
        self.mesh, self.chunk = mesh, chunk
        block = mesh.ulysses * chunk  # image tokens per ring block
        # valid (non-padding) image tokens in each ring block; padding is at the end of the global sequence
        self.block_valid = [max(0, min(block, num_image_tokens - r * block)) for r in range(mesh.ring)]

    def __call__(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: KeyMask | None, backend: str
    ) -> torch.Tensor:
        m, c = self.mesh, self.chunk
        H, D = q.shape[2:]
        U, Hu = m.ulysses, H // m.ulysses
        heads = slice(m.u_rank * Hu, (m.u_rank + 1) * Hu)
        txt_valid = None if mask is None else mask.valid[:, c:]  # (B, Lt)
        # 1. Ulysses: (3, B, c, H, D) -> per destination u: (U, 3, B, c, Hu, D) -> (3, B, U*c, Hu, D)
        qkv = torch.stack([q[:, :c], k[:, :c], v[:, :c]]).unflatten(3, (U, Hu)).permute(3, 0, 1, 2, 4, 5)
        iq, ik, iv = _all_to_all(qkv, m.ulysses_group).permute(1, 2, 0, 3, 4, 5).flatten(2, 3)
        tq, tk, tv = q[:, c:, heads], k[:, c:, heads], v[:, c:, heads]  # (B, Lt, Hu, D)
        # 2. attention of [valid image queries; text queries] over every block's valid image keys and text keys
        n = self.block_valid[m.r_rank]
        queries = torch.cat([iq[:, :n], tq], 1)  # (B, n+Lt, Hu, D)
        if m.ring == 1:
            keys_valid = None if txt_valid is None else KeyMask(F.pad(txt_valid, (n, 0), value=True))
            out = attention(queries, torch.cat([ik[:, :n], tk], 1), torch.cat([iv[:, :n], tv], 1), keys_valid, backend)
            out = out.unflatten(-1, (Hu, D))  # (B, n+Lt, Hu, D)
        else:
            out = self._ring(queries, ik, iv, tk, tv, txt_valid, backend)
        i_out, t_out = out.split([n, out.shape[1] - n], 1)
        i_out = F.pad(i_out, (0, 0, 0, 0, 0, U * c - n))  # padded query rows -> 0 (dropped at the end anyway)
        # 3. inverse Ulysses: (B, U*c, Hu, D) -> (U, B, c, Hu, D) -> all-to-all -> (B, c, U*Hu, D)
        i_out = _all_to_all(i_out.unflatten(1, (U, c)).transpose(0, 1), m.ulysses_group)
        i_out = i_out.permute(1, 2, 0, 3, 4).flatten(2, 3)  # (B, c, H, D)
        if U > 1:
            parts = [torch.empty_like(t_out) for _ in range(U)]
            dist.all_gather(parts, t_out.contiguous(), group=m.ulysses_group)
            t_out = torch.cat(parts, 2)  # (B, Lt, H, D)
        return torch.cat([i_out, t_out], 1).flatten(2)  # (B, c + Lt, H*D)

    def _ring(
        self,
        queries: torch.Tensor,
        ik: torch.Tensor,
        iv: torch.Tensor,
        tk: torch.Tensor,
        tv: torch.Tensor,
        txt_valid: torch.Tensor | None,
        backend: str,
    ) -> torch.Tensor:
        """Pass image k/v blocks around the ring (send to r+1, receive from r-1), attend to each, merge by lse."""
        m = self.mesh
        R, r = m.ring, m.r_rank
        kv = torch.stack([ik, iv]).contiguous()  # (2, B, U*c, Hu, D)
        parts: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        for step in range(R):
            j = (r - step) % R  # ring position whose block we hold now
            pending, incoming = [], None
            if step < R - 1:
                incoming = torch.empty_like(kv)
                ops = [
                    dist.P2POp(dist.isend, kv, m.ring_ranks[(r + 1) % R], m.ring_group),
                    dist.P2POp(dist.irecv, incoming, m.ring_ranks[(r - 1) % R], m.ring_group),
                ]
                pending = dist.batch_isend_irecv(ops)
            n = self.block_valid[j]
            if n > 0:
                parts[j] = attention_lse(queries, kv[0][:, :n], kv[1][:, :n], None, backend)
            for req in pending:
                req.wait()
            if incoming is not None:
                kv = incoming
        parts[R] = attention_lse(queries, tk, tv, txt_valid, backend)
        return merge_lse([parts[j] for j in sorted(parts)])
