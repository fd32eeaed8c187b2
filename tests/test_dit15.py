"""HunyuanVideo 1.5 DiT: the second configuration of HYVideoDiT against diffusers' HunyuanVideo15Transformer3DModel,
its key map and both folder layouts, the release's parameter count, fp8 and LoRA (docs/DESIGN.md §18)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from diffusers import HunyuanVideo15Transformer3DModel

from hyvideo.checkpoints.dit import diffusers_to_official, official_to_diffusers
from hyvideo.config import TINY_DIT15, DiTConfig
from hyvideo.modules import dit as dit_module
from hyvideo.modules.dit import ExtraInputs
from hyvideo.tiny import random_dit

GRID = (2, 4, 6)  # latent (T, H, W): 48 image tokens with patch (1, 1, 1)


def diffusers15_twin(model) -> HunyuanVideo15Transformer3DModel:
    """diffusers' 1.5 transformer holding the same weights as `model`."""
    ref = HunyuanVideo15Transformer3DModel.from_config(model.cfg.to_diffusers()).eval()
    ref.load_state_dict(official_to_diffusers(model.state_dict(), model.cfg), strict=True)
    return ref


def inputs15(cfg: DiTConfig, B: int, qwen_lens, byt5_lens, *, vision: bool, Lq: int = 7, Lb: int = 5, seed: int = 0):
    """Latents, t, Qwen states/mask and ExtraInputs for a batch of B; byt5_lens None = no byT5 states at all."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, cfg.in_channels, *GRID, generator=g)
    t = torch.tensor([900.0, 300.0][:B])
    qwen = torch.randn(B, Lq, cfg.text_states_dim, generator=g)
    qmask = (torch.arange(Lq)[None] < torch.tensor(qwen_lens)[:, None]).long()
    byt5 = torch.randn(B, Lb, cfg.byt5_dim, generator=g)
    bmask = (torch.arange(Lb)[None] < torch.tensor(byt5_lens or [0] * B)[:, None]).long()
    states = torch.randn(B, cfg.vision_tokens, cfg.vision_dim, generator=g) if vision else None
    extra = ExtraInputs(byt5 if byt5_lens else None, bmask if byt5_lens else None, states)
    return x, t, qwen, qmask, extra, byt5, bmask


def diffusers_out(ref, cfg, x, t, qwen, qmask, extra, byt5, bmask, t_r=None) -> torch.Tensor:
    """diffusers' forward on the same inputs: its text-to-video input is all-zero image states, its "no byT5" an
    all-zero mask."""
    B = x.shape[0]
    image = (
        extra.vision_states if extra.vision_states is not None else torch.zeros(B, cfg.vision_tokens, cfg.vision_dim)
    )
    return ref(
        x,
        t,
        qwen,
        qmask,
        timestep_r=t_r,
        encoder_hidden_states_2=byt5,
        encoder_attention_mask_2=bmask if extra.byt5_states is not None else torch.zeros_like(bmask),
        image_embeds=image,
        return_dict=False,
    )[0]


CASES = {  # name: (batch, Qwen lengths, byT5 lengths or None, vision states)
    "t2v-b1-byt5": (1, [5], [3], False),
    "t2v-b1-no-byt5": (1, [7], None, False),
    "t2v-b2-byt5": (2, [7, 4], [3, 1], False),
    "i2v-b1-byt5": (1, [6], [5], True),
    "i2v-b2-no-byt5": (2, [3, 7], None, True),
    "i2v-b2-byt5-one-empty": (2, [5, 6], [0, 4], True),
}


@pytest.fixture(scope="module")
def pair():
    model = random_dit(TINY_DIT15, seed=3)
    return model, diffusers15_twin(model)


@pytest.mark.parametrize("case", list(CASES))
def test_parity_with_diffusers(pair, case):
    """Ours == diffusers (fp32, same weights) for text-to-video and image-to-video, with and without byT5 tokens,
    batch 1 and batch 2 with different text lengths. Measured max |diff| ~7e-6 on outputs of magnitude ~15."""
    model, ref = pair
    B, qlens, blens, vision = CASES[case]
    x, t, qwen, qmask, extra, byt5, bmask = inputs15(TINY_DIT15, B, qlens, blens, vision=vision)
    with torch.no_grad():
        ours = model(x, t, qwen, qmask, None, None, extra=extra)
        theirs = diffusers_out(ref, TINY_DIT15, x, t, qwen, qmask, extra, byt5, bmask)
    assert ours.shape == (B, TINY_DIT15.out_channels, *GRID)
    err = (ours - theirs).abs().max().item()
    assert err <= 1e-5, (case, err)


def test_meanflow_parity_and_t_r_changes_the_output():
    """The step-distilled config: vec = time_in(t) + time_r_in(t_r), as diffusers (and the official code) add it."""
    cfg = TINY_DIT15.replace(meanflow=True)
    model = random_dit(cfg, seed=5)
    ref = diffusers15_twin(model)
    x, t, qwen, qmask, extra, byt5, bmask = inputs15(cfg, 2, [6, 3], [2, 4], vision=True)
    t_r = torch.tensor([650.0, 100.0])
    with torch.no_grad():
        ours = model(x, t, qwen, qmask, None, None, extra=dataclasses.replace(extra, t_r=t_r))
        theirs = diffusers_out(ref, cfg, x, t, qwen, qmask, extra, byt5, bmask, t_r=t_r)
        other = model(x, t, qwen, qmask, None, None, extra=ExtraInputs(byt5, bmask, extra.vision_states, t))
    err = (ours - theirs).abs().max().item()
    assert err <= 1e-5, err
    assert (ours - other).abs().max().item() > 1e-3  # t_r reaches the output


def test_batch_rows_equal_single_runs(pair):
    """Batch 2 with different Qwen and byT5 lengths gives each sample what it gets alone."""
    model, _ = pair
    x, t, qwen, qmask, extra, byt5, bmask = inputs15(TINY_DIT15, 2, [7, 3], [2, 5], vision=True)
    with torch.no_grad():
        both = model(x, t, qwen, qmask, None, None, extra=extra)
        for i in range(2):
            one = ExtraInputs(byt5[i : i + 1], bmask[i : i + 1], extra.vision_states[i : i + 1])
            alone = model(x[i : i + 1], t[i : i + 1], qwen[i : i + 1], qmask[i : i + 1], None, None, extra=one)
            assert (both[i : i + 1] - alone).abs().max().item() <= 1e-5


def test_context_order_and_layouts_read_once_per_mask(pair, monkeypatch):
    """The context is [vision | byT5 | Qwen] with padding positions of every sample gone; each mask is read on the
    host once (its TextLayout is cached), so a second step costs no host read."""
    model, _ = pair
    x, t, qwen, qmask, extra, _, _ = inputs15(TINY_DIT15, 1, [4], [2], vision=True)
    reads = []
    real = dit_module.text_layout
    monkeypatch.setattr(dit_module, "text_layout", lambda m: reads.append(m) or real(m))
    model._layouts.clear()
    with torch.no_grad():
        txt, ctx = model.embed_text(qwen, qmask, t, x, extra=extra)
        model.embed_text(qwen, qmask, t, x, extra=extra)
    assert len(reads) == 2  # the Qwen mask and the byT5 mask, once each
    assert txt.shape[1] == TINY_DIT15.vision_tokens + 2 + 4 and ctx.mask is None  # batch 1: nothing to mask
    emb = model.cond_type_embedding.weight
    with torch.no_grad():
        vision = model.vision_in(extra.vision_states) + emb[2]
        byt5 = model.byt5_in(extra.byt5_states[:, :2]) + emb[1]
    assert torch.equal(txt[:, :9], vision) and torch.equal(txt[:, 9:11], byt5)


def test_text_to_video_has_no_vision_tokens_and_byt5_none_none(pair):
    """vision_states None = text-to-video: no vision tokens (the references mask all 729 out); byT5 None or an
    all-padding byT5 mask give the same context (no byT5 tokens)."""
    model, _ = pair
    x, t, qwen, qmask, _, byt5, _ = inputs15(TINY_DIT15, 1, [5], None, vision=False)
    with torch.no_grad():
        a, _ = model.embed_text(qwen, qmask, t, x, extra=ExtraInputs(None, None, None))
        b, _ = model.embed_text(qwen, qmask, t, x, extra=ExtraInputs(byt5, torch.zeros(1, 5, dtype=torch.long), None))
    assert a.shape[1] == 5 and torch.equal(a, b)


def test_a_15_dit_requires_its_extra_inputs(pair):
    model, _ = pair
    x, t, qwen, qmask, _, _, _ = inputs15(TINY_DIT15, 1, [5], None, vision=False)
    with pytest.raises(ValueError, match="ExtraInputs"):
        model(x, t, qwen, qmask, None, None)
    with pytest.raises(ValueError, match="time_r_in"):
        model(x, t, qwen, qmask, None, None, extra=ExtraInputs(None, None, None, t))


def test_key_map_round_trip_is_lossless_and_names_diffusers_keys():
    for cfg in (TINY_DIT15, TINY_DIT15.replace(meanflow=True)):
        model = random_dit(cfg, seed=1)
        sd = model.state_dict()
        dsd = official_to_diffusers(sd, cfg)
        ref_keys = set(HunyuanVideo15Transformer3DModel.from_config(cfg.to_diffusers()).state_dict())
        assert set(dsd) == ref_keys
        back = diffusers_to_official(dsd, cfg)
        assert set(back) == set(sd) and all(torch.equal(back[k], sd[k]) for k in sd)
