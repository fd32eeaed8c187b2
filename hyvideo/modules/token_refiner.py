"""txt_in: the token refiner that turns LLM hidden states into DiT text tokens (docs/DESIGN.md §2.4)."""

from __future__ import annotations

import torch
from einops import rearrange
from torch import nn

from hyvideo.modules.attention import KeyMask, attention
from hyvideo.modules.embeddings import TextProjection, TimestepEmbedder
from hyvideo.modules.layers import MLP, affine_layer_norm


class RefinerBlock(nn.Module):
    """Pre-LN self-attention + SiLU MLP, each gated by the conditioning vector (adaLN gives gates only)."""

    def __init__(self, hidden: int, heads: int, mlp_ratio: float, eps: float = 1e-6) -> None:
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(hidden, eps=eps)
        self.self_attn_qkv = nn.Linear(hidden, 3 * hidden)
        self.self_attn_proj = nn.Linear(hidden, hidden)
        self.norm2 = nn.LayerNorm(hidden, eps=eps)
        self.mlp = MLP(hidden, int(hidden * mlp_ratio), act="silu")
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 2 * hidden))

    def forward(self, x: torch.Tensor, c: torch.Tensor, mask: KeyMask | None, backend: str) -> torch.Tensor:
        # x (B, L, C), c (B, C)
        gate_msa, gate_mlp = self.adaLN_modulation(c).chunk(2, dim=-1)
        qkv = self.self_attn_qkv(affine_layer_norm(self.norm1, x))
        q, k, v = rearrange(qkv, "B L (K H D) -> K B L H D", K=3, H=self.heads)
        x = x + gate_msa[:, None] * self.self_attn_proj(attention(q, k, v, mask, backend))
        return x + gate_mlp[:, None] * self.mlp(affine_layer_norm(self.norm2, x))


class TokenRefiner(nn.Module):
    """input_embedder(states) refined by N blocks conditioned on t_embedder(t) + c_embedder(masked mean of states)."""

    def __init__(self, in_dim: int, hidden: int, heads: int, depth: int, mlp_ratio: float) -> None:
        super().__init__()
        self.input_embedder = nn.Linear(in_dim, hidden)
        self.t_embedder = TimestepEmbedder(hidden)
        self.c_embedder = TextProjection(in_dim, hidden)
        self.individual_token_refiner = nn.Module()
        self.individual_token_refiner.blocks = nn.ModuleList(
            [RefinerBlock(hidden, heads, mlp_ratio) for _ in range(depth)]
        )

    def forward(
        self, states: torch.Tensor, t: torch.Tensor, valid: torch.Tensor | None, backend: str = "auto"
    ) -> torch.Tensor:
        # states (B, L, in_dim); valid (B, L) bool or None (all tokens real) -> (B, L, hidden)
        if valid is None:
            pooled = states.float().mean(dim=1)
        else:
            w = valid.float()[..., None]  # (B, L, 1)
            pooled = (states.float() * w).sum(dim=1) / w.sum(dim=1)
        c = self.t_embedder(t) + self.c_embedder(pooled.to(states.dtype))  # (B, hidden)
        x = self.input_embedder(states)
        mask = None if valid is None else KeyMask(valid)
        for block in self.individual_token_refiner.blocks:
            x = block(x, c, mask, backend)
        return x
