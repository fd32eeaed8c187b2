"""Analytic DiT FLOPs (hyvideo/flops.py) against what torch's FlopCounterMode counts for our own forward."""

from __future__ import annotations

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from hyvideo.checkpoints.dit import build_dit
from hyvideo.config import DIT_PRESETS, TINY_DIT15
from hyvideo.flops import dit_flops
from hyvideo.modules.dit import ExtraInputs
from hyvideo.tiny import TINY_DIT, random_dit


def counted(model, x, states, mask, guidance) -> tuple[int, int]:
    """(total FLOPs, attention bmm FLOPs) of one forward, attention through the math SDPA kernel (visible bmms)."""
    pooled = torch.zeros(x.shape[0], model.cfg.text_pool_dim, device=x.device)
    t = torch.full((x.shape[0],), 500.0, device=x.device)
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model(x, t, states, mask, pooled, guidance)
    return counter.get_total_flops(), counter.get_flop_counts()["Global"].get(torch.ops.aten.bmm, 0)


def test_no_single_blocks():
    """depth_single = 0: no single block, so no last-block saving on the text tokens either."""
    cfg = TINY_DIT.replace(depth_single=0)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 16, 2, 4, 6, generator=g)
    states = torch.randn(1, 7, cfg.text_states_dim, generator=g)
    total, attn = counted(random_dit(cfg, seed=1), x, states, None, torch.tensor([6000.0]))
    want = dit_flops(cfg, 2 * 2 * 3, 7)
    assert (total, attn) == (want.total, want.attention)


def test_batch_with_padding_counts_the_kept_text_length():
    """Batch 2 with 5 and 3 real text tokens of 9: the columns padded in every sample are dropped (5 remain) and the
    kernels attend over those 5 for both samples, so the count is dit_flops(..., 5, batch=2)."""
    cfg = TINY_DIT
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 16, 1, 4, 4, generator=g)
    states = torch.randn(2, 9, cfg.text_states_dim, generator=g)
    mask = (torch.arange(9)[None] < torch.tensor([5, 3])[:, None]).long()
    total, _ = counted(random_dit(cfg, seed=2), x, states, mask, torch.tensor([6000.0, 6000.0]))
    # the total only: with batch > 1 some Linears on strided (B, L, C) inputs run as bmm too, so bmm != attention
    assert total == dit_flops(cfg, 4, 5, batch=2).total
    assert total < dit_flops(cfg, 4, 9, batch=2).total  # the dropped columns are not computed


def test_full_size_720p_forward():
    """The released DiT at 720x1280x129 (33 x 45 x 80 = 118,800 image tokens) with 256 text tokens, counted on the
    meta device (shapes only, no memory): 1.21e16 FLOPs per forward, 87% of it attention (see docs/DESIGN.md)."""
    cfg = DIT_PRESETS["HYVideo-T/2-cfgdistill"]
    model = build_dit(cfg)  # meta
    with torch.device("meta"):
        x = torch.empty(1, 16, 33, 90, 160)
        states = torch.empty(1, 256, cfg.text_states_dim)
        guidance = torch.empty(1)
    total, attn = counted(model, x, states, None, guidance)
    want = dit_flops(cfg, 33 * 45 * 80, 256)
    assert (total, attn) == (want.total, want.attention)
    assert round(want.total / 1e14) == 121 and round(want.linear / 1e13) == 162
    assert 0.86 < want.attention / want.total < 0.87


def test_hunyuanvideo15_forward_with_all_three_context_streams():
    """The 1.5 DiT (split q/k/v, no single blocks, no vector_in) with Qwen, byT5 and vision tokens and meanflow's
    t_r: the analytic count equals FlopCounterMode's."""
    cfg = TINY_DIT15.replace(meanflow=True)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, cfg.in_channels, 2, 3, 4, generator=g)
    states = torch.randn(1, 7, cfg.text_states_dim, generator=g)
    extra = ExtraInputs(torch.randn(1, 5, cfg.byt5_dim, generator=g), torch.ones(1, 5, dtype=torch.long),
                        torch.randn(1, cfg.vision_tokens, cfg.vision_dim, generator=g), torch.tensor([250.0]))  # fmt: skip
    model = random_dit(cfg, seed=3)
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model(x, torch.tensor([500.0]), states, None, None, None, extra=extra)
    want = dit_flops(cfg, 2 * 3 * 4, 7, byt5_tokens=5, vision_tokens=cfg.vision_tokens, t_r=True)
    assert counter.get_total_flops() == want.total
    assert counter.get_flop_counts()["Global"].get(torch.ops.aten.bmm, 0) == want.attention
