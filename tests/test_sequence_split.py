"""SequenceParallelDiT's split of the image tokens: each rank's chunk carries its share of a token_replace DiT's
first frame (the leading th * tw tokens of the whole sequence), so the ranks together modulate exactly those."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from hyvideo.config import with_image_condition
from hyvideo.parallel.sequence import SequenceParallelDiT
from hyvideo.tiny import TINY_DIT, random_dit


@pytest.mark.parametrize("ranks", [2, 3, 4])
@pytest.mark.parametrize("grid", [(2, 4, 4), (3, 6, 6), (1, 2, 2)])  # latent (T, H, W): 8, 27, 1 image tokens
def test_first_frame_tokens_are_shared_out_by_position(ranks, grid):
    dit = random_dit(with_image_condition(TINY_DIT, "token_replace"), seed=3)
    T, H, W = grid
    x = torch.randn(1, dit.cfg.in_channels, T, 2 * H, 2 * W)
    t = torch.tensor([500.0])
    states, mask, pooled = torch.randn(1, 5, TINY_DIT.text_states_dim), torch.ones(1, 5), torch.randn(1, 32)
    img, _, _ = dit.embed_image(x, t, pooled, torch.tensor([6000.0]))
    _, ctx = dit.embed_text(states, mask, t, x, pooled)
    Li = img.shape[1]
    first = ctx.first.tokens  # th * tw
    is_first = []
    for r in range(ranks):
        mesh = SimpleNamespace(sp_size=ranks, sp_rank=r, ulysses=ranks, ring=1)
        chunk, local = SequenceParallelDiT(dit, mesh)._split(img, ctx)
        c = chunk.shape[1]
        is_first += [i < local.first.tokens for i in range(c)]
    assert is_first[:Li] == [i < first for i in range(Li)]  # the positions of the whole sequence, no more, no less
    assert not any(is_first[Li:])  # padding is never the first frame
