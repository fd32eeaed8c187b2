"""Model FLOPs of one DiT forward, counted analytically from the config and token counts (for MFU figures).

A Linear with fan-in n and fan-out m costs 2nm per row; attention over Lq queries and Lk keys of width C = H*D costs
4 Lq Lk C (q k^T and the weighted sum of v). Norms, activations, RoPE and other elementwise work are not counted.
The counts equal what torch.utils.flop_counter.FlopCounterMode reports for our forward (tested).
"""

from __future__ import annotations

from dataclasses import dataclass

from hyvideo.config import DiTConfig
from hyvideo.modules.dit import REFINER_MLP_RATIO
from hyvideo.modules.embeddings import FREQ_DIM


@dataclass(frozen=True)
class Flops:
    linear: int  # all Linear / patch-embedding matmuls
    attention: int  # q k^T and attention-weighted v in every block and the token refiner

    @property
    def total(self) -> int:
        return self.linear + self.attention


def _mlp_embedder(n_in: int, C: int) -> int:
    return 2 * (n_in * C + C * C)  # Linear(n_in -> C), SiLU, Linear(C -> C), one row


def dit_flops(
    cfg: DiTConfig,
    image_tokens: int,
    text_tokens: int,
    batch: int = 1,
    *,
    byt5_tokens: int = 0,
    vision_tokens: int = 0,
    t_r: bool = False,
) -> Flops:
    """FLOPs of one forward of `batch` samples with `image_tokens` (Li) and `text_tokens` (Lt, the LLM's, after
    padding is dropped) each. For batch > 1 with padding the real kernels still attend over the padded length: pass
    that. HunyuanVideo 1.5 adds `byt5_tokens` (through byt5_in) and `vision_tokens` (through vision_in) to the
    context the blocks see, and with `t_r` (meanflow) the time_r_in embedder."""
    C, M, Li, Lt = cfg.hidden_size, cfg.mlp_hidden, image_tokens, text_tokens
    Lb, Lv = byt5_tokens, vision_tokens
    L = Li + Lt + Lb + Lv  # the blocks' joint sequence
    pt, ph, pw = cfg.patch_size
    patch = pt * ph * pw
    lin = 2 * Li * cfg.in_channels * patch * C  # img_in (Conv3d, kernel = stride = patch)
    lin += _mlp_embedder(FREQ_DIM, C) * (1 + int(cfg.guidance_embed) + int(t_r))  # time_in, guidance_in, time_r_in
    lin += _mlp_embedder(cfg.text_pool_dim, C) if cfg.text_pool_dim else 0  # vector_in
    H, V = cfg.byt5_hidden, cfg.vision_dim
    lin += 2 * Lb * (cfg.byt5_dim * H + H * H + H * C)  # byt5_in: fc1, fc2, fc3
    lin += 2 * Lv * (V * V + V * C)  # vision_in: two Linears
    # token refiner: input_embedder, t_embedder, c_embedder, blocks (adaLN, qkv, proj, SiLU MLP)
    R = int(C * REFINER_MLP_RATIO)
    lin += 2 * Lt * cfg.text_states_dim * C + _mlp_embedder(FREQ_DIM, C) + 2 * (cfg.text_states_dim * C + C * C)
    lin += cfg.depth_refiner * (2 * C * 2 * C + 2 * Lt * (3 * C * C + C * C + 2 * C * R))
    attn = cfg.depth_refiner * 4 * Lt * Lt * C
    # double blocks: per stream modulation (6C), qkv (fused or split: the same), proj, MLP; joint attention over L
    lin += cfg.depth_double * (2 * (2 * C * 6 * C) + 2 * L * (3 * C * C + C * C + 2 * C * M))
    attn += cfg.depth_double * 4 * L * L * C
    # single blocks: modulation (3C), linear1 (C -> 3C + M), linear2 (C + M -> C); the last block's linear2 runs
    # on the image tokens only (its text outputs are never used)
    lin += cfg.depth_single * (2 * C * 3 * C + 2 * L * (C * (3 * C + M) + (C + M) * C))
    lin -= (2 * (L - Li) * (C + M) * C) if cfg.depth_single else 0
    attn += cfg.depth_single * 4 * L * L * C
    lin += 2 * C * 2 * C + 2 * Li * C * patch * cfg.out_channels  # final layer: adaLN, linear
    return Flops(linear=batch * lin, attention=batch * attn)
