"""DiT: parity with diffusers, key maps, full-size structure, loading and its errors, dtypes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from diffusers import HunyuanVideoTransformer3DModel

from hyvideo.checkpoints.common import CheckpointError
from hyvideo.checkpoints.dit import (
    build_dit,
    diffusers_to_official,
    load_dit,
    official_to_diffusers,
    save_dit_diffusers,
    save_dit_official,
)
from hyvideo.config import DIT_PRESETS, ConfigError, DiTConfig, dit_config
from hyvideo.modules.dit import drop_padding
from hyvideo.tiny import random_dit

SHARED = Path(__file__).resolve().parent / "data"  # official key names and shapes (docs/DESIGN.md §1.3)

CONFIGS = {
    "h2x24-guid-ref2": DiTConfig(
        in_channels=4,
        out_channels=4,
        hidden_size=48,
        heads=2,
        depth_double=2,
        depth_single=2,
        depth_refiner=2,
        rope_axes=(4, 10, 10),
        text_states_dim=20,
        text_pool_dim=12,
    ),
    "h3x16-noguid-ref1": DiTConfig(
        in_channels=4,
        out_channels=6,
        hidden_size=48,
        heads=3,
        depth_double=1,
        depth_single=2,
        depth_refiner=1,
        rope_axes=(8, 4, 4),
        text_states_dim=24,
        text_pool_dim=8,
        guidance_embed=False,
    ),
    "h1x32-guid-ref1": DiTConfig(
        in_channels=16,
        out_channels=16,
        hidden_size=32,
        heads=1,
        depth_double=1,
        depth_single=1,
        depth_refiner=1,
        rope_axes=(16, 8, 8),
        text_states_dim=16,
        text_pool_dim=16,
        mlp_ratio=2.0,
        rope_theta=100.0,
    ),
}


def inputs(cfg: DiTConfig, B: int, grid=(3, 6, 10), lens=(5, 3), L: int = 7, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    T, H, W = grid
    x = torch.randn(B, cfg.in_channels, T, H, W, generator=g)
    t = torch.tensor([900.0, 300.0, 512.5][:B])
    txt = torch.randn(B, L, cfg.text_states_dim, generator=g)
    mask = (torch.arange(L)[None] < torch.tensor(lens[:B])[:, None]).long()
    pooled = torch.randn(B, cfg.text_pool_dim, generator=g)
    guidance = torch.tensor([6000.0, 3500.0, 1000.0][:B]) if cfg.guidance_embed else None
    return x, t, txt, mask, pooled, guidance


def diffusers_twin(model) -> HunyuanVideoTransformer3DModel:
    ref = HunyuanVideoTransformer3DModel(**model.cfg.to_diffusers()).eval()
    ref.load_state_dict(official_to_diffusers(model.state_dict(), model.cfg), strict=True)
    return ref


@pytest.mark.parametrize("name", list(CONFIGS))
def test_parity_with_diffusers(name):
    cfg = CONFIGS[name]
    model = random_dit(cfg, seed=1)
    ref = diffusers_twin(model)
    with torch.no_grad():
        for B, grid, lens in [
            (2, (3, 6, 10), (5, 3)),
            (1, (3, 6, 10), (4,)),
            (2, (1, 4, 4), (7, 7)),
            (1, (2, 2, 6), (7,)),
        ]:
            x, t, txt, mask, pooled, g = inputs(cfg, B, grid, lens)
            ours = model(x, t, txt, mask, pooled, g)
            theirs = ref(x, t, txt, mask, pooled, g, return_dict=False)[0]
            assert ours.shape == (B, cfg.out_channels, *grid)
            err = (ours - theirs).abs().max().item()
            assert err <= 1e-5, (name, B, grid, err)


def test_batch_rows_equal_single_runs():
    """Batch 2 with different valid text lengths gives each sample what it gets alone (padding is invisible)."""
    cfg = CONFIGS["h2x24-guid-ref2"]
    model = random_dit(cfg, seed=2)
    x, t, txt, mask, pooled, g = inputs(cfg, 2, lens=(6, 2))
    with torch.no_grad():
        both = model(x, t, txt, mask, pooled, g)
        for i in range(2):
            one = model(x[i : i + 1], t[i : i + 1], txt[i : i + 1], mask[i : i + 1], pooled[i : i + 1], g[i : i + 1])
            assert (one - both[i : i + 1]).abs().max().item() <= 1e-5
        # changing what sits in padded positions changes nothing
        txt2 = txt.clone()
        txt2[0, 6:], txt2[1, 2:] = 1e3, -1e3
        assert torch.allclose(model(x, t, txt2, mask, pooled, g), both, atol=1e-5)


def test_drop_padding():
    states = torch.arange(2 * 5, dtype=torch.float32).view(2, 5, 1)
    s, v = drop_padding(states[:1], torch.tensor([[1, 1, 0, 0, 0]]))
    assert s.shape == (1, 2, 1) and v is None
    s, v = drop_padding(states, torch.tensor([[1, 1, 1, 0, 0], [1, 0, 0, 0, 0]]))
    assert s.shape == (2, 3, 1) and v.tolist() == [[True, True, True], [True, False, False]]
    s, v = drop_padding(states, None)
    assert s is states and v is None


def test_rope_table_cached_per_shape():
    model = random_dit(CONFIGS["h2x24-guid-ref2"])
    a = model.rope((3, 3, 5), torch.device("cpu"))
    assert model.rope((3, 3, 5), torch.device("cpu")) is a
    assert model.rope((1, 3, 5), torch.device("cpu")).shape == (15, 12)


# Relative L2 error of the whole forward against fp32, measured over seeds 0..19 of this config (weights and inputs):
# bf16 0.0070..0.0121 (mean 0.0090), fp16 0.0008..0.0015 (mean 0.0011). That is 4-6 units of rounding (2^-9 for
# bf16's 8-bit mantissa, 2^-12 for fp16's 11-bit one), and the ratio ~8 is the 3 mantissa bits between them. Bounds:
# 1.5x the largest measured value (CPU kernels differ a little between machines). Tried: rounding one stage's output
# (the modulated block input) through bf16 on the fp16 path gives 0.0023-0.0028 on these seeds and fails.
@pytest.mark.parametrize("dtype,tol", [(torch.bfloat16, 0.018), (torch.float16, 0.00225)])
@pytest.mark.parametrize("seed", range(4))
def test_low_precision_close_to_fp32(dtype, tol, seed):
    cfg = CONFIGS["h2x24-guid-ref2"]
    model = random_dit(cfg, seed=seed)
    x, t, txt, mask, pooled, g = inputs(cfg, 2, seed=seed)
    with torch.no_grad():
        ref = model(x, t, txt, mask, pooled, g)
        low = model.to(dtype)(x, t, txt, mask, pooled, g)
    assert low.dtype == dtype
    rel = ((low.float() - ref).norm() / ref.norm()).item()
    assert rel < tol, rel


# --------------------------------------------------------------------------- key maps and full-size structure
def test_key_map_round_trip_is_lossless():
    for cfg in CONFIGS.values():
        sd = random_dit(cfg, seed=4).state_dict()
        back = diffusers_to_official(official_to_diffusers(sd, cfg), cfg)
        assert set(back) == set(sd)
        assert all(torch.equal(back[k], sd[k]) for k in sd)


def test_full_size_preset_matches_official_keys():
    official = json.loads((SHARED / "official_dit_keys.json").read_text())["keys"]
    model = build_dit(DIT_PRESETS["HYVideo-T/2-cfgdistill"])  # meta: no memory
    sd = model.state_dict()
    assert len(sd) == 856 == len(official)
    assert sum(v.numel() for v in sd.values()) == 12_821_012_544
    assert {k: list(v.shape) for k, v in sd.items()} == official
    no_guid = build_dit(DIT_PRESETS["HYVideo-T/2"]).state_dict()
    assert set(sd) - set(no_guid) == {f"guidance_in.mlp.{i}.{p}" for i in (0, 2) for p in ("weight", "bias")}
    # and the full-size diffusers model has exactly the mapped names and shapes
    with torch.device("meta"):
        ref = HunyuanVideoTransformer3DModel()
    mapped = official_to_diffusers(sd, DIT_PRESETS["HYVideo-T/2-cfgdistill"])
    assert {k: v.shape for k, v in mapped.items()} == {k: v.shape for k, v in ref.state_dict().items()}


def test_config_invariants():
    with pytest.raises(ConfigError, match="sum\\(rope_axes\\)"):
        DiTConfig(rope_axes=(16, 56, 48))
    with pytest.raises(ConfigError, match="not divisible by heads"):
        DiTConfig(hidden_size=100, heads=24)
    with pytest.raises(ConfigError, match="unknown DiT"):
        dit_config("HYVideo-T/3")
    cfg = DiTConfig.from_diffusers({"num_attention_heads": 2, "attention_head_dim": 24, "rope_axes_dim": [4, 10, 10]})
    assert (cfg.hidden_size, cfg.head_dim, cfg.depth_double) == (48, 24, 20)


# --------------------------------------------------------------------------- loading
@pytest.fixture(scope="module")
def tiny():
    return random_dit(CONFIGS["h2x24-guid-ref2"], seed=5)


def _same(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return set(sa) == set(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_load_official_and_diffusers_layouts(tmp_path, tiny):
    save_dit_official(tiny, tmp_path / "off")
    loaded = load_dit(tmp_path / "off")  # config.json beside the weights overrides the preset
    assert loaded.cfg == tiny.cfg and _same(loaded, tiny)
    save_dit_official(tiny, tmp_path / "ema", load_key="ema")
    assert _same(load_dit(tmp_path / "ema", load_key="ema"), tiny)
    torch.save(tiny.state_dict(), tmp_path / "bare.pt")
    assert _same(load_dit(tmp_path / "bare.pt", tiny.cfg), tiny)
    save_dit_diffusers(tiny, tmp_path / "diff")
    assert _same(load_dit(tmp_path / "diff"), tiny)
    save_dit_diffusers(tiny, tmp_path / "shards", max_shard_bytes=20_000)
    assert len(list((tmp_path / "shards").glob("*.safetensors"))) > 2
    assert _same(load_dit(tmp_path / "shards"), tiny)
    # diffusers reads our diffusers folder too
    ref = HunyuanVideoTransformer3DModel.from_pretrained(tmp_path / "diff")
    assert _same(diffusers_twin(tiny), ref)
    half = load_dit(tmp_path / "off", dtype=torch.bfloat16)
    assert half.img_in.proj.weight.dtype == torch.bfloat16


def test_load_assigns_without_copy(tmp_path, tiny):
    """Weights are assigned from the memory-mapped file, not copied into fresh parameters."""
    path = save_dit_official(tiny, tmp_path / "off")
    model = load_dit(path)
    assert not model.img_in.proj.weight.is_meta
    assert all(not p.requires_grad for p in model.parameters())


def test_loading_errors_name_keys_and_shapes(tmp_path, tiny):
    sd = dict(tiny.state_dict())
    cfg = tiny.cfg
    del sd["final_layer.linear.bias"]
    torch.save({"module": sd}, tmp_path / "missing.pt")
    with pytest.raises(CheckpointError, match=r"missing keys 1: final_layer\.linear\.bias"):
        load_dit(tmp_path / "missing.pt", cfg)
    sd = dict(tiny.state_dict())
    sd["img_in.proj.weight"] = torch.zeros(48, 4, 1, 2, 3)
    torch.save({"module": sd}, tmp_path / "shape.pt")
    with pytest.raises(CheckpointError, match=r"img_in\.proj\.weight \(checkpoint \(48, 4, 1, 2, 3\) vs model"):
        load_dit(tmp_path / "shape.pt", cfg)
    other = random_dit(CONFIGS["h3x16-noguid-ref1"])
    torch.save({"module": other.state_dict()}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match=r"missing keys \d+: double_blocks\.1\..*; shape mismatches \d+: "):
        load_dit(tmp_path / "other.pt", cfg)
    good = tmp_path / "good.pt"
    torch.save({"module": tiny.state_dict()}, good)
    (tmp_path / "trunc.pt").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=r"trunc\.pt: cannot read"):
        load_dit(tmp_path / "trunc.pt", cfg)
    with pytest.raises(CheckpointError, match="no 'ema' entry"):
        load_dit(good, cfg, load_key="ema")
    with pytest.raises(CheckpointError, match="not found"):
        load_dit(tmp_path / "nope.pt", cfg)


def test_pickle_payload_refused_without_executing(tmp_path, tiny):
    marker = tmp_path / "executed"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    torch.save({"module": tiny.state_dict(), "extra": Payload()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="refused"):
        load_dit(tmp_path / "evil.pt", tiny.cfg)
    assert not marker.exists()
    torch.save({"module": [1, 2, 3]}, tmp_path / "notsd.pt")
    with pytest.raises(CheckpointError, match="state dict"):
        load_dit(tmp_path / "notsd.pt", tiny.cfg)


def test_guidance_required_for_cfgdistill(tiny):
    x, t, txt, mask, pooled, _ = inputs(tiny.cfg, 1)
    with pytest.raises(ValueError, match="guidance"):
        tiny(x, t, txt, mask, pooled, None)


def test_text_layout_with_a_hole_equals_boolean_indexing_and_is_read_once_per_mask():
    """Positions padded in every sample need not be a suffix: indices on the device then, same result as the
    boolean indexing it replaces; the DiT reads a mask once and reuses its layout while it holds the same tensor."""
    states = torch.randn(2, 5, 3)
    mask = torch.tensor([[1, 0, 1, 1, 0], [1, 0, 1, 0, 0]])
    keep = mask.bool().any(0)
    s, v = drop_padding(states, mask)
    assert torch.equal(s, states[:, keep]) and torch.equal(v, mask.bool()[:, keep])
    model = random_dit(seed=0)
    assert model.text_layout(torch.tensor([[1, 1, 0]])).keep == slice(0, 2)  # right padding: a slice, no index
    first = model.text_layout(mask)
    assert model.text_layout(mask) is first and model.text_layout(mask.clone()) is not first
