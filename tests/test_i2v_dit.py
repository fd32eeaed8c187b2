"""Image-to-video DiT: the condition type in the config, token_replace's first-frame modulation and the 33 / 32
channel inputs, each equal to diffusers' HunyuanVideoTransformer3DModel on the same random weights."""

from __future__ import annotations

import pytest
import torch
from diffusers import HunyuanVideoTransformer3DModel

from hyvideo.checkpoints.dit import load_dit, official_to_diffusers, save_dit_diffusers, save_dit_official
from hyvideo.config import DIT_PRESETS, ConfigError, DiTConfig, with_image_condition
from hyvideo.modules.dit import FirstFrame, StreamModulation
from hyvideo.modules.layers import Modulation
from hyvideo.tiny import random_dit

BASE = DiTConfig(
    in_channels=4,
    out_channels=4,
    hidden_size=48,
    heads=2,
    depth_double=2,
    depth_single=2,
    depth_refiner=1,
    rope_axes=(4, 10, 10),
    text_states_dim=20,
    text_pool_dim=12,
)
CONDITIONS = {
    "token_replace": BASE.replace(image_condition="token_replace"),
    "token_replace-noguid": BASE.replace(image_condition="token_replace", guidance_embed=False),
    "latent_concat": BASE.replace(image_condition="latent_concat", in_channels=9, guidance_embed=False),
    "concat": BASE.replace(image_condition="concat", in_channels=8),
}


def inputs(cfg: DiTConfig, B: int, grid, lens, L: int = 7, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, cfg.in_channels, *grid, generator=g)
    t = torch.tensor([900.0, 300.0][:B])
    txt = torch.randn(B, L, cfg.text_states_dim, generator=g)
    mask = (torch.arange(L)[None] < torch.tensor(lens[:B])[:, None]).long()
    pooled = torch.randn(B, cfg.text_pool_dim, generator=g)
    guidance = torch.tensor([6000.0, 3500.0][:B]) if cfg.guidance_embed else None
    return x, t, txt, mask, pooled, guidance


def diffusers_twin(model) -> HunyuanVideoTransformer3DModel:
    ref = HunyuanVideoTransformer3DModel(**model.cfg.to_diffusers()).eval()
    ref.load_state_dict(official_to_diffusers(model.state_dict(), model.cfg), strict=True)
    return ref


@pytest.mark.parametrize("name", list(CONDITIONS))
def test_parity_with_diffusers(name):
    cfg = CONDITIONS[name]
    model = random_dit(cfg, seed=3)
    ref = diffusers_twin(model)
    want_type = cfg.image_condition if cfg.image_condition in ("token_replace", "latent_concat") else None
    assert ref.config.image_condition_type == want_type
    with torch.no_grad():
        for B, grid, lens in [(2, (3, 6, 10), (5, 3)), (1, (2, 4, 4), (7,)), (1, (1, 2, 6), (4,))]:
            x, t, txt, mask, pooled, g = inputs(cfg, B, grid, lens)
            ours = model(x, t, txt, mask, pooled, g)
            theirs = ref(x, t, txt, mask, pooled, g, return_dict=False)[0]
            assert ours.shape == (B, cfg.out_channels, *grid)
            err = (ours - theirs).abs().max().item()
            # measured: <= 1.6e-6 over these cases (fp32 rounding of the same math in another order)
            assert err <= 1e-5, (name, B, grid, err)


def test_token_replace_changes_only_through_the_first_frame_vector():
    """The same weights as a plain DiT: token_replace differs, and only because frame 0 takes time_in(0)'s
    modulation; with t = 0 and no guidance term the two vectors coincide and so do the outputs (bit for bit)."""
    tr = random_dit(CONDITIONS["token_replace-noguid"], seed=4)
    plain = random_dit(BASE.replace(guidance_embed=False), seed=4)
    x, t, txt, mask, pooled, _ = inputs(tr.cfg, 1, (3, 4, 6), (5,))
    with torch.no_grad():
        assert not torch.equal(tr(x, t, txt, mask, pooled), plain(x, t, txt, mask, pooled))
        zero = torch.zeros(1)
        assert torch.equal(tr(x, zero, txt, mask, pooled), plain(x, zero, txt, mask, pooled))


def test_first_frame_vector_is_time_zero_plus_pooled_without_guidance():
    model = random_dit(CONDITIONS["token_replace"], seed=2)
    x, t, txt, mask, pooled, g = inputs(model.cfg, 2, (2, 4, 6), (5, 3))
    with torch.no_grad():
        _, _, _, ctx = model.embed(x, t, txt, mask, pooled, g)
        want = model.time_in(torch.zeros(2)) + model.vector_in(pooled)
    assert ctx.first is not None and ctx.first.tokens == 2 * 3
    assert torch.equal(ctx.first.vec, want)
    plain = random_dit(BASE, seed=2)
    assert plain.embed(x, t, txt, mask, pooled, g)[3].first is None  # T2V: nothing extra computed
    with pytest.raises(ValueError, match="text_pooled"):
        model.embed_text(txt, mask, t, x)


def test_stream_modulation_spans():
    """First n tokens from the first-frame vector, the rest from vec; n = 0 (a sequence-parallel chunk without
    frame-0 tokens) is the plain modulation."""
    torch.manual_seed(0)
    mod = Modulation(8, 6)
    vec, tr = torch.randn(2, 8), torch.randn(2, 8)
    x, y = torch.randn(2, 5, 8), torch.randn(2, 5, 8)
    m = StreamModulation(mod, vec, FirstFrame(tr, 2))
    a, b = mod(vec), mod(tr)
    want = torch.cat(
        [x[:, :2] * (1 + b[4][:, None]) + b[3][:, None], x[:, 2:] * (1 + a[4][:, None]) + a[3][:, None]], 1
    )
    torch.testing.assert_close(m.modulate(x, 1), want)
    want = torch.cat([x[:, :2] + b[2][:, None] * y[:, :2], x[:, 2:] + a[2][:, None] * y[:, 2:]], 1)
    torch.testing.assert_close(m.gated_add(x, y, 0), want)
    none = StreamModulation(mod, vec, FirstFrame(tr, 0))
    plain = StreamModulation(mod, vec)
    assert none.tr is None and torch.equal(none.modulate(x, 0), plain.modulate(x, 0))


# --------------------------------------------------------------------------- config
@pytest.mark.parametrize(
    "theirs, ours",
    [
        ({"in_channels": 16, "out_channels": 16}, "none"),
        ({"in_channels": 16, "out_channels": 16, "image_condition_type": "token_replace"}, "token_replace"),
        ({"in_channels": 33, "out_channels": 16, "image_condition_type": "latent_concat"}, "latent_concat"),
        ({"in_channels": 32, "out_channels": 16}, "concat"),  # SkyReels-V1 writes no type
        ({"in_channels": 32, "out_channels": 16, "image_condition_type": None}, "concat"),
    ],
)
def test_condition_read_from_diffusers_and_written_back(theirs, ours):
    cfg = DiTConfig.from_diffusers(theirs)
    assert (cfg.image_condition, cfg.in_channels, cfg.out_channels) == (ours, theirs["in_channels"], 16)
    back = cfg.to_diffusers()
    assert back.get("image_condition_type") == theirs.get("image_condition_type")
    assert DiTConfig.from_diffusers(back) == cfg


@pytest.mark.parametrize(
    "theirs, names",
    [
        ({"in_channels": 33, "out_channels": 16, "image_condition_type": "token_replace"}, ("token_replace", "33")),
        ({"in_channels": 16, "out_channels": 16, "image_condition_type": "latent_concat"}, ("latent_concat", "16")),
        ({"in_channels": 32, "out_channels": 16, "image_condition_type": "latent_concat"}, ("latent_concat", "32")),
        ({"in_channels": 33, "out_channels": 16}, ("33", "null")),
        ({"in_channels": 16, "image_condition_type": "ip_adapter"}, ("ip_adapter",)),
    ],
)
def test_contradicting_config_names_both(theirs, names):
    with pytest.raises(ConfigError) as e:
        DiTConfig.from_diffusers(theirs)
    assert all(n in str(e.value) for n in names), str(e.value)


def test_config_invariants():
    with pytest.raises(ConfigError, match="image_condition must be one of"):
        BASE.replace(image_condition="mask")
    with pytest.raises(ConfigError, match="'concat' needs in_channels = 8"):
        BASE.replace(image_condition="concat")
    with pytest.raises(ConfigError, match=r"in_channels 9 .* latent_concat .* 'none'"):
        BASE.replace(in_channels=9)


@pytest.mark.parametrize("name", ["token_replace", "latent_concat", "concat"])
def test_saved_folders_keep_the_condition(tmp_path, name):
    model = random_dit(CONDITIONS[name], seed=1)
    save_dit_diffusers(model, tmp_path / "diffusers")
    save_dit_official(model, tmp_path / "official")
    for where in (tmp_path / "diffusers", tmp_path / "official"):
        loaded = load_dit(where)
        assert loaded.cfg == model.cfg
        assert all(
            torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values(), strict=True)
        )
    ref = HunyuanVideoTransformer3DModel.from_pretrained(tmp_path / "diffusers")
    assert ref.config.in_channels == model.cfg.in_channels


def test_released_configs_from_the_text_to_video_preset():
    """The released official I2V tree has no config: the preset plus the condition gives the released DiTs."""
    base = DIT_PRESETS["HYVideo-T/2-cfgdistill"]
    got = {c: with_image_condition(base, c) for c in ("token_replace", "latent_concat", "concat")}
    assert {c: (g.in_channels, g.out_channels, g.guidance_embed) for c, g in got.items()} == {
        "token_replace": (16, 16, True),
        "latent_concat": (33, 16, False),
        "concat": (32, 16, True),
    }
    assert with_image_condition(base, "none") == base
    with pytest.raises(ConfigError, match="image_condition must be one of"):
        with_image_condition(base, "mask")
