"""Sequence parallelism applied to a built `HYVideoDiT` from outside, and real CFG split over two rank groups.

`SequenceParallelDiT(dit, mesh)` has the DiT's forward signature and result. Per forward:
    img, txt, vec, ctx = dit.embed(...)              every rank, full (cheap)
    pad Li image tokens to N*c (N = U*R, c = ceil(Li/N)); keep chunk sp_rank: (B, c, C); RoPE rows likewise
    out = dit.transformer(chunk, txt, vec, ctx with attn = SequenceParallelAttention)     (B, c, P)
    all-gather the chunks over the sequence-parallel group, drop the padding, unpatchify  (B, out, T, H, W)
Text tokens are computed redundantly (identically) on every rank; padded image tokens are never used as keys.
`run_blocks` does the same for the blocks alone and gathers the image tokens after them, so `TeaCache` can wrap a
`SequenceParallelDiT`: the embedding (hence its skip decision) is identical on every rank.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from hyvideo.modules.attention import KeyMask
from hyvideo.modules.dit import Context, ExtraInputs, HYVideoDiT
from hyvideo.parallel.attention import SequenceParallelAttention
from hyvideo.parallel.group import Mesh
from hyvideo.sampling import CondModelFn, ModelFn


class SequenceParallelDiT(nn.Module):
    """Wraps a DiT; attributes it does not define (img_in, guidance_in, cfg, ...) are the DiT's own."""

    def __init__(self, dit: HYVideoDiT, mesh: Mesh) -> None:
        super().__init__()
        self.dit = dit
        self.mesh = mesh

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "dit":  # not set yet (e.g. while copying): no delegation loop
                raise
            return getattr(self.dit, name)

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        text_states: torch.Tensor,
        text_mask: torch.Tensor | None,
        text_pooled: torch.Tensor | None,
        guidance: torch.Tensor | None = None,
        *,
        extra: ExtraInputs | None = None,
    ) -> torch.Tensor:
        """`HYVideoDiT.forward` (HunyuanVideo 1.5: its byT5 / vision / t_r inputs in `extra`), the blocks split."""
        dit = self.dit
        img, txt, vec, ctx = dit.embed(x, t, text_states, text_mask, text_pooled, guidance, extra=extra)
        Li = img.shape[1]
        mine, local = self._split(img, ctx)
        out = self._gather(dit.transformer(mine, txt, vec, local), Li)  # (B, Li, P)
        return dit.unpatchify(out, dit.token_grid(x))

    def run_blocks(self, img: torch.Tensor, txt: torch.Tensor, vec: torch.Tensor, ctx: Context) -> torch.Tensor:
        """`HYVideoDiT.run_blocks` with the image tokens split over the ranks: full img (B, Li, C) in, the full
        image tokens after the blocks (B, Li, C) out, identical on every rank (what step caching needs)."""
        mine, local = self._split(img, ctx)
        return self._gather(self.dit.run_blocks(mine, txt, vec, local), img.shape[1])

    def _split(self, img: torch.Tensor, ctx: Context) -> tuple[torch.Tensor, Context]:
        """This rank's chunk of the image tokens, padded to N*c: (B, c, C), and the Context that goes with it."""
        m = self.mesh
        B, Li, _ = img.shape
        N = m.sp_size
        c = -(-Li // N)  # tokens per rank
        mine = slice(m.sp_rank * c, (m.sp_rank + 1) * c)
        chunk = F.pad(img, (0, 0, 0, N * c - Li))[:, mine]  # (B, c, C)
        rope = F.pad(ctx.rope, (0, 0, 0, N * c - Li), value=1.0)[mine]  # (c, D/2); padding rows rotate by 1
        mask = None
        if ctx.mask is not None:  # (B, Li + Lt) -> (B, c + Lt): this chunk's image validity, then the text's
            img_valid = (torch.arange(N * c, device=img.device) < Li)[mine].expand(B, c)
            mask = KeyMask(torch.cat([img_valid, ctx.mask.valid[:, Li:]], 1))
        attn = SequenceParallelAttention(m, Li, c)
        first = ctx.first  # token_replace: frame 0 leads the full sequence, so this chunk holds its share of it
        if first is not None:
            first = dataclasses.replace(first, tokens=max(0, min(c, first.tokens - m.sp_rank * c)))
        return chunk, dataclasses.replace(ctx, rope=rope, mask=mask, attn=attn, first=first)

    def _gather(self, out: torch.Tensor, Li: int) -> torch.Tensor:
        """Every rank's (B, c, D) chunk -> (B, Li, D), the padding dropped."""
        chunks = [torch.empty_like(out) for _ in range(self.mesh.sp_size)]
        dist.all_gather(chunks, out.contiguous(), group=self.mesh.sp_group)
        return torch.cat(chunks, 1)[:, :Li]


def with_cfg_parallel(model_fn: CondModelFn, cond: Any, uncond: Any, scale: float, mesh: Mesh) -> ModelFn:
    """Real CFG with cond on cfg half 0 and uncond on half 1, each one forward per step, then exchanged:
    v = v_uncond + scale * (v_cond - v_uncond) (the formula of `sampling.with_cfg`), identical on every rank.
    cond / uncond are whatever `model_fn` takes (TextEmbeddings, Text15Embeddings), passed through untouched."""
    mine = cond if mesh.c_rank == 0 else uncond

    def fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        v = model_fn(x, t, mine).contiguous()
        both = [torch.empty_like(v) for _ in range(2)]
        dist.all_gather(both, v, group=mesh.cfg_group)
        v_cond, v_uncond = both
        return v_uncond + scale * (v_cond - v_uncond)

    return fn
