"""HunyuanVideo 1.5 DiT: the second configuration of HYVideoDiT against diffusers' HunyuanVideo15Transformer3DModel,
its key map and both folder layouts, the release's parameter count, fp8 and LoRA (docs/DESIGN.md §18)."""

from __future__ import annotations

import copy
import dataclasses
import json

import pytest
import torch
from diffusers import HunyuanVideo15Transformer3DModel
from safetensors.torch import save_file

from hyvideo.checkpoints.dit import (
    DIFFUSERS15_RULES,
    build_dit,
    diffusers_to_official,
    load_dit,
    official_to_diffusers,
    save_dit,
)
from hyvideo.config import HYVIDEO15_DIT, TINY_DIT15, ConfigError, DiTConfig, dit_config
from hyvideo.errors import UsageError
from hyvideo.lora import LoraSpec, Target, check_lora_specs, merge_loras, target_of, wrap_loras
from hyvideo.modules import dit as dit_module
from hyvideo.modules.dit import ExtraInputs
from hyvideo.quantization import FP8, fp8_layer_names, load_dit_fp8
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


def test_double_block_compiles_without_graph_breaks(pair):
    """The split-q/k/v double block traces as one graph (what regional --compile needs); eager backend: the
    tracing is tested here, inductor's code by tests/test_compile.py."""
    model, _ = pair
    x, t, qwen, qmask, extra, _, _ = inputs15(TINY_DIT15, 2, [7, 3], [2, 5], vision=True)
    with torch.no_grad():
        img, txt, vec, ctx = model.embed(x, t, qwen, qmask, None, None, extra=extra)
        block = model.double_blocks[0]
        eager = block(img, txt, vec, ctx)
        torch._dynamo.reset()
        traced = torch.compile(block, backend="eager", fullgraph=True)(img, txt, vec, ctx)
    assert all(torch.equal(a, b) for a, b in zip(eager, traced, strict=True))


def test_key_map_round_trip_is_lossless_and_names_diffusers_keys():
    for cfg in (TINY_DIT15, TINY_DIT15.replace(meanflow=True)):
        model = random_dit(cfg, seed=1)
        sd = model.state_dict()
        dsd = official_to_diffusers(sd, cfg)
        ref_keys = set(HunyuanVideo15Transformer3DModel.from_config(cfg.to_diffusers()).state_dict())
        assert set(dsd) == ref_keys
        back = diffusers_to_official(dsd, cfg)
        assert set(back) == set(sd) and all(torch.equal(back[k], sd[k]) for k in sd)


# ---------------------------------------------------------------------------------------------------------------
# Config files, both folder layouts, dtypes
# ---------------------------------------------------------------------------------------------------------------
# The released 480p_t2v transformer/config.json (the official class's arguments, as published with the weights)
RELEASE_CONFIG = {
    "_class_name": "HunyuanVideo_1_5_DiffusionTransformer",
    "attn_mode": "flash",
    "attn_param": None,
    "concat_condition": True,
    "glyph_byT5_v2": True,
    "guidance_embed": False,
    "heads_num": 16,
    "hidden_size": 2048,
    "ideal_resolution": "480p",
    "ideal_task": "t2v",
    "in_channels": 32,
    "is_reshape_temporal_channels": False,
    "mlp_act_type": "gelu_tanh",
    "mlp_width_ratio": 4,
    "mm_double_blocks_depth": 54,
    "mm_single_blocks_depth": 0,
    "out_channels": 32,
    "patch_size": [1, 1, 1],
    "qk_norm": True,
    "qk_norm_type": "rms",
    "qkv_bias": True,
    "rope_dim_list": [16, 56, 56],
    "rope_theta": 256,
    "text_pool_type": None,
    "text_projection": "single_refiner",
    "text_states_dim": 3584,
    "text_states_dim_2": None,
    "use_attention_mask": True,
    "use_cond_type_embedding": True,
    "use_meanflow": False,
    "vision_projection": "linear",
    "vision_states_dim": 1152,
}
RELEASE_PARAMS = 8_326_608_160  # docs/DESIGN.md §18.4: 54 x 151,056,896 + embedders + final layer
TIME_EMBEDDER = (256 * 2048 + 2048) + (2048 * 2048 + 2048)  # sinusoid 256 -> C -> C: 4,722,688
MEANFLOW_PARAMS = RELEASE_PARAMS + TIME_EMBEDDER  # the step-distilled DiT adds time_r_in


def test_release_config_reads_as_the_preset_and_has_the_release_parameter_count(tmp_path):
    """The official config.json and diffusers' defaults both give HYVIDEO15_DIT; built on the meta device it has
    8,326,608,160 parameters (8.3B), the meanflow DiT adds time_r_in's 4,722,688."""
    cfg = DiTConfig.from_official(RELEASE_CONFIG)
    assert cfg == HYVIDEO15_DIT.replace(resolution="480p", task="t2v")
    (tmp_path / "config.json").write_text(json.dumps(RELEASE_CONFIG))
    assert dit_config("HYVideo-T/2-cfgdistill", tmp_path / "config.json") == cfg  # a 1.5 file overrides the preset
    assert DiTConfig.from_diffusers({"_class_name": "HunyuanVideo15Transformer3DModel"}) == HYVIDEO15_DIT
    for c, n in ((cfg, RELEASE_PARAMS), (cfg.replace(meanflow=True), MEANFLOW_PARAMS)):
        assert sum(p.numel() for p in build_dit(c).parameters()) == n
    meta = build_dit(cfg)
    assert not hasattr(meta.double_blocks[0], "img_attn_qkv") and len(meta.single_blocks) == 0
    assert meta.vector_in is None and meta.guidance_in is None and meta.time_r_in is None


@pytest.mark.parametrize(
    "change,match",
    [
        ({"qkv_bias": False}, "qkv_bias"),
        ({"mm_single_blocks_depth": 2}, "mm_single_blocks_depth"),
        ({"text_projection": "linear"}, "text_projection"),
        ({"guidance_embed": True}, "guidance_embed"),
    ],
)
def test_official_options_we_do_not_build_are_refused(tmp_path, change, match):
    (tmp_path / "config.json").write_text(json.dumps({**RELEASE_CONFIG, **change}))
    with pytest.raises(ConfigError, match=match):
        dit_config("HYVideo-T/2-cfgdistill", tmp_path / "config.json")


@pytest.mark.parametrize(
    "change,match",
    [
        ({"depth_single": 2}, "no single-stream blocks"),
        ({"guidance_embed": True}, "guidance"),
        ({"text_pool_dim": 8}, "pooled"),
        ({"split_qkv": False}, "belong to the 1.5 layout"),
        ({"vision_dim": 0}, "cond_type_embed needs"),
        ({"task": "x2v"}, "task"),
    ],
)
def test_config_invariants(change, match):
    with pytest.raises(ConfigError, match=match):
        TINY_DIT15.replace(**change)


def test_both_config_layouts_round_trip():
    for cfg in (HYVIDEO15_DIT.replace(resolution="720p", task="i2v"), TINY_DIT15.replace(meanflow=True)):
        assert DiTConfig.from_official(cfg.to_official()) == cfg
        assert DiTConfig.from_diffusers(cfg.to_diffusers()) == cfg
    assert DiTConfig().to_diffusers()["num_single_layers"] == 40  # v1 keeps its own names


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """The same tiny meanflow weights in an official transformer/<version>/ folder and a diffusers folder."""
    root = tmp_path_factory.mktemp("dit15")
    model = random_dit(TINY_DIT15.replace(meanflow=True, resolution="480p", task="i2v"), seed=7)
    save_dit(model, root / "transformer" / "480p_i2v_step_distilled", "official")
    save_dit(model, root / "diffusers" / "transformer", "diffusers")
    return model, root / "transformer" / "480p_i2v_step_distilled", root / "diffusers" / "transformer"


def test_official_and_diffusers_folders_load_the_same_model(folders):
    model, official, diffusers = folders
    assert json.loads((official / "config.json").read_text())["_class_name"] == "HunyuanVideo_1_5_DiffusionTransformer"
    a, b = load_dit(official), load_dit(diffusers)  # config from the folder, keys told apart by name
    assert a.cfg == b.cfg == model.cfg
    for k, v in model.state_dict().items():
        assert torch.equal(a.state_dict()[k], v) and torch.equal(b.state_dict()[k], v), k
    x, t, qwen, qmask, extra, _, _ = inputs15(model.cfg, 1, [5], [2], vision=True)
    extra = dataclasses.replace(extra, t_r=torch.tensor([400.0]))
    with torch.no_grad():
        assert torch.equal(a(x, t, qwen, qmask, None, None, extra=extra), b(x, t, qwen, qmask, None, None, extra=extra))
    # diffusers itself reads our diffusers folder
    ref = HunyuanVideo15Transformer3DModel.from_pretrained(diffusers).eval()
    with torch.no_grad():
        theirs = ref(x, t, qwen, qmask, timestep_r=extra.t_r, encoder_hidden_states_2=extra.byt5_states,
                     encoder_attention_mask_2=extra.byt5_mask, image_embeds=extra.vision_states, return_dict=False)[0]  # fmt: skip
        assert (a(x, t, qwen, qmask, None, None, extra=extra) - theirs).abs().max().item() <= 1e-5


def test_bf16_load_and_fp8_on_the_fly(folders):
    """The v1 load paths apply: cast while loading, and fp8 block weights quantized while loading (the split
    q/k/v Linears are block Linears, so they are stored in fp8; byt5_in / vision_in stay in the compute dtype)."""
    model, official, _ = folders
    x, t, qwen, qmask, extra, _, _ = inputs15(model.cfg, 1, [5], [2], vision=True)
    with torch.no_grad():
        ref = model(x, t, qwen, qmask, None, None, extra=extra)
        bf16 = load_dit(official, dtype=torch.bfloat16)
        assert bf16.byt5_in.fc1.weight.dtype == torch.bfloat16
        out16 = bf16(x, t, qwen, qmask, None, None, extra=extra)
        fp8 = load_dit_fp8(official, model.cfg, dtype=torch.bfloat16)
        names = fp8_layer_names(fp8)
        assert "double_blocks.0.img_attn_q" in names and "double_blocks.1.txt_attn_v" in names
        assert all(fp8.get_submodule(n).weight.dtype == FP8 for n in names)
        assert fp8.vision_in.proj[1].weight.dtype == torch.bfloat16
        out8 = fp8(x, t, qwen, qmask, None, None, extra=extra)
    rel16 = ((out16.float() - ref).norm() / ref.norm()).item()
    rel8 = ((out8.float() - ref).norm() / ref.norm()).item()
    # bf16 rounding (8 bits of mantissa), then fp8 e4m3 block weights (4 bits): measured 0.006 and 0.012
    assert 0 < rel16 < 0.02 and rel16 < rel8 < 0.05, (rel16, rel8)


# ---------------------------------------------------------------------------------------------------------------
# LoRA with diffusers' 1.5 names
# ---------------------------------------------------------------------------------------------------------------
def test_lora_names_resolve_with_the_15_table():
    """Diffusers, official dotted and kohya names of 1.5 layers; the v1 table reads to_q as a part of a fused qkv."""
    r = DIFFUSERS15_RULES
    assert target_of("transformer.transformer_blocks.0.attn.to_q", r) == Target("double_blocks.0.img_attn_q")
    assert target_of("transformer_blocks.3.attn.add_k_proj", r) == Target("double_blocks.3.txt_attn_k")
    assert target_of("lora_unet_double_blocks_1_txt_attn_v", r) == Target("double_blocks.1.txt_attn_v")
    assert target_of("lora_unet_vision_in_proj_3", r) == Target("vision_in.proj.3")
    assert target_of("diffusion_model.byt5_in.fc2", r) == Target("byt5_in.fc2")
    assert target_of("context_embedder_2.linear_3", r) == Target("byt5_in.fc3")
    assert target_of("time_embed.timestep_embedder_r.linear_2", r) == Target("time_r_in.mlp.2")
    assert target_of("single_transformer_blocks.0.proj_mlp", r) is None  # no single blocks in 1.5
    assert target_of("transformer_blocks.0.attn.to_q").module == "double_blocks.0.img_attn_qkv"  # v1


def test_diffusers_named_lora_merges_into_the_15_layers(tmp_path):
    """A LoRA with HunyuanVideo15Transformer3DModel names (as PEFT saves it for diffusers' model) lands on our
    layers: merged == applied to diffusers-named weights directly, and unmerged == merged."""
    model = random_dit(TINY_DIT15, seed=2)
    theirs = {k: v.clone() for k, v in official_to_diffusers(model.state_dict(), TINY_DIT15).items()}
    targets = ["transformer_blocks.0.attn.to_q", "transformer_blocks.1.attn.add_v_proj", "context_embedder_2.linear_1",
               "image_embedder.linear_2", "transformer_blocks.0.ff_context.net.2", "norm_out.linear",
               "time_embed.timestep_embedder.linear_1"]  # fmt: skip
    sd, r, s = {}, 3, 0.8
    g = torch.Generator().manual_seed(0)
    for t in targets:
        out, inp = theirs[t + ".weight"].shape
        down, up = 0.1 * torch.randn(r, inp, generator=g), 0.1 * torch.randn(out, r, generator=g)
        sd[f"transformer.{t}.lora_A.weight"], sd[f"transformer.{t}.lora_B.weight"] = down, up
        theirs[t + ".weight"] = theirs[t + ".weight"] + s * up @ down  # alpha absent: alpha = r
    save_file(sd, tmp_path / "l.safetensors")
    spec = LoraSpec(tmp_path / "l.safetensors", s)
    check_lora_specs([spec], DIFFUSERS15_RULES)
    with pytest.raises(UsageError, match="match no DiT layer"):
        check_lora_specs([spec])  # the v1 table has no context_embedder_2 / image_embedder
    wrapped = wrap_loras(copy.deepcopy(model), [spec])
    merge_loras(model, [spec])
    ours = official_to_diffusers(model.state_dict(), TINY_DIT15)
    for k in theirs:
        assert torch.allclose(ours[k], theirs[k], atol=1e-5), k
    x, t, qwen, qmask, extra, _, _ = inputs15(TINY_DIT15, 1, [5], [2], vision=True)
    with torch.no_grad():
        merged, unmerged = (m(x, t, qwen, qmask, None, None, extra=extra) for m in (model, wrapped))
    err = (unmerged - merged).abs().max().item() / merged.abs().max().item()
    assert err <= 1e-6, err  # the same sums in another order (fp32): measured 3.4e-7
