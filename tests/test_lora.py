"""LoRA: merge formula, fused-qkv placement through the diffusers key map, diffusers == kohya, merged == unmerged,
unknown keys as a clear error, and the loader path used by the pipeline."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from hyvideo import cli, pipeline
from hyvideo.checkpoints.dit import load_dit, official_to_diffusers
from hyvideo.checkpoints.layout import locate
from hyvideo.lora import LoraSpec, merge_loras, parse_lora_flag, read_lora, target_of, wrap_loras
from hyvideo.request import UsageError
from hyvideo.tiny import TINY_DIT, random_dit, write_tiny_model

H = TINY_DIT.hidden_size  # 48
MLP = TINY_DIT.mlp_hidden  # 192


def rand(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def inputs(cfg=TINY_DIT):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, cfg.in_channels, 2, 4, 6, generator=g)
    txt = torch.randn(1, 5, cfg.text_states_dim, generator=g)
    mask = torch.ones(1, 5, dtype=torch.long)
    pooled = torch.randn(1, cfg.text_pool_dim, generator=g)
    return x, torch.tensor([700.0]), txt, mask, pooled, torch.tensor([6000.0])


def test_parse_flag_scale_and_paths_with_colons():
    assert parse_lora_flag("a.safetensors") == LoraSpec(Path("a.safetensors"), 1.0)
    assert parse_lora_flag("dir:x/a.safetensors:0.5") == LoraSpec(Path("dir:x/a.safetensors"), 0.5)
    assert parse_lora_flag("dir:x/a.safetensors") == LoraSpec(Path("dir:x/a.safetensors"), 1.0)
    assert parse_lora_flag("a.safetensors:-1e-1").scale == -0.1
    with pytest.raises(UsageError, match="finite"):
        parse_lora_flag("a.safetensors:nan")


def test_key_names_map_to_official_modules():
    t = target_of("lora_unet_double_blocks_0_img_attn_qkv")
    assert t.module == "double_blocks.0.img_attn_qkv" and t.rule is None
    t = target_of("transformer.transformer_blocks.1.attn.to_k")
    assert (t.module, t.part) == ("double_blocks.1.img_attn_qkv", 1)
    t = target_of("transformer.single_transformer_blocks.0.proj_mlp")
    assert (t.module, t.part) == ("single_blocks.0.linear1", 3)
    assert target_of("transformer.single_transformer_blocks.0.proj_out").module == "single_blocks.0.linear2"
    assert target_of("transformer.proj_out").module == "final_layer.linear"
    assert target_of("diffusion_model.double_blocks.3.txt_mlp.fc2").module == "double_blocks.3.txt_mlp.fc2"
    assert target_of("lora_unet_single_blocks_12_linear1").module == "single_blocks.12.linear1"
    assert target_of("transformer.not_a_layer") is None


def test_merged_weight_equals_formula(tmp_path):
    """W' = W + s * (alpha / r) * B @ A, for a fused qkv, a single-block linear1 and the final linear."""
    model = random_dit(TINY_DIT, seed=0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    r, alpha, s = 4, 2.0, 0.7
    layers = {"double_blocks_0_img_attn_qkv": (3 * H, H), "single_blocks_1_linear1": (3 * H + MLP, H),
              "final_layer_linear": (64, H)}  # fmt: skip
    sd = {}
    for i, (name, (out, inp)) in enumerate(layers.items()):
        sd[f"lora_unet_{name}.lora_down.weight"] = rand(r, inp, seed=i)
        sd[f"lora_unet_{name}.lora_up.weight"] = rand(out, r, seed=10 + i)
        sd[f"lora_unet_{name}.alpha"] = torch.tensor(alpha)
    save_file(sd, tmp_path / "k.safetensors")
    merge_loras(model, [LoraSpec(tmp_path / "k.safetensors", s)])
    after = model.state_dict()
    for name in layers:
        key = name.replace("double_blocks_0_", "double_blocks.0.").replace("single_blocks_1_", "single_blocks.1.")
        key = key.replace("final_layer_", "final_layer.") + ".weight"
        up, down = sd[f"lora_unet_{name}.lora_up.weight"], sd[f"lora_unet_{name}.lora_down.weight"]
        expected = before[key] + s * (alpha / r) * up @ down
        assert torch.allclose(after[key], expected, atol=1e-6), key
    changed = {k for k in after if not torch.equal(after[k], before[k])}
    assert changed == {
        "double_blocks.0.img_attn_qkv.weight",
        "single_blocks.1.linear1.weight",
        "final_layer.linear.weight",
    }


def test_diffusers_lora_lands_in_the_right_rows_through_the_key_map(tmp_path):
    """Applying a diffusers LoRA to our official weights, then converting to diffusers names, equals applying it to
    the diffusers-named weights directly (covers q/k/v parts, add_*_proj, proj_mlp and the swapped final adaLN)."""
    model = random_dit(TINY_DIT, seed=1)
    theirs = {k: v.clone() for k, v in official_to_diffusers(model.state_dict(), TINY_DIT).items()}
    targets = ["transformer_blocks.0.attn.to_q", "transformer_blocks.0.attn.to_v", "transformer_blocks.1.attn.add_k_proj",
               "single_transformer_blocks.0.proj_mlp", "single_transformer_blocks.1.attn.to_k", "norm_out.linear",
               "context_embedder.token_refiner.refiner_blocks.0.attn.to_v", "transformer_blocks.1.ff.net.2"]  # fmt: skip
    sd, r, s = {}, 3, 1.3
    for i, t in enumerate(targets):
        out, inp = theirs[t + ".weight"].shape
        sd[f"transformer.{t}.lora_A.weight"] = rand(r, inp, seed=i)
        sd[f"transformer.{t}.lora_B.weight"] = rand(out, r, seed=50 + i)
        theirs[t + ".weight"] = (
            theirs[t + ".weight"] + s * sd[f"transformer.{t}.lora_B.weight"] @ sd[f"transformer.{t}.lora_A.weight"]
        )  # fmt: skip  (no alpha: alpha = r)
    save_file(sd, tmp_path / "d.safetensors")
    merge_loras(model, [LoraSpec(tmp_path / "d.safetensors", s)])
    ours = official_to_diffusers(model.state_dict(), TINY_DIT)
    assert ours.keys() == theirs.keys()
    for k in theirs:
        assert torch.allclose(ours[k], theirs[k], atol=1e-5), k


def _kohya_and_diffusers_pair(tmp_path: Path) -> tuple[Path, Path]:
    """The same update written both ways: a fused kohya LoRA on img_attn_qkv / linear1 = diffusers LoRAs on their
    parts sharing the down matrix, with the up matrix split by rows."""
    r, alpha = 4, 8.0
    kohya, diff = {}, {}
    specs = [("double_blocks_1_img_attn_qkv", "transformer_blocks.1.attn", ["to_q", "to_k", "to_v"], [H] * 3),
             ("single_blocks_0_linear1", "single_transformer_blocks.0", ["attn.to_q", "attn.to_k", "attn.to_v",
              "proj_mlp"], [H, H, H, MLP])]  # fmt: skip
    for i, (kname, dprefix, parts, sizes) in enumerate(specs):
        down, up = rand(r, H, seed=i), rand(sum(sizes), r, seed=20 + i)
        kohya[f"lora_unet_{kname}.lora_down.weight"] = down
        kohya[f"lora_unet_{kname}.lora_up.weight"] = up
        kohya[f"lora_unet_{kname}.alpha"] = torch.tensor(alpha)
        for part, up_rows in zip(parts, up.split(sizes), strict=True):
            diff[f"transformer.{dprefix}.{part}.lora_A.weight"] = down.clone()
            diff[f"transformer.{dprefix}.{part}.lora_B.weight"] = up_rows.contiguous()
            diff[f"transformer.{dprefix}.{part}.alpha"] = torch.tensor(alpha)
    save_file(kohya, tmp_path / "kohya.safetensors")
    save_file(diff, tmp_path / "diffusers.safetensors")
    return tmp_path / "kohya.safetensors", tmp_path / "diffusers.safetensors"


def test_diffusers_and_kohya_equivalents_give_the_same_output(tmp_path):
    kohya, diff = _kohya_and_diffusers_pair(tmp_path)
    base = random_dit(TINY_DIT, seed=2)
    a = merge_loras(copy.deepcopy(base), [LoraSpec(kohya, 0.8)])
    b = merge_loras(copy.deepcopy(base), [LoraSpec(diff, 0.8)])
    for k, v in a.state_dict().items():
        assert torch.allclose(v, b.state_dict()[k], atol=1e-6), k
    with torch.no_grad():
        out_a, out_b, out_base = a(*inputs()), b(*inputs()), base(*inputs())
    assert torch.allclose(out_a, out_b, atol=1e-5)
    assert (out_a - out_base).abs().max() > 1e-3  # the LoRA does change the output


def test_unmerged_wrapper_equals_merged(tmp_path):
    kohya, diff = _kohya_and_diffusers_pair(tmp_path)
    base = random_dit(TINY_DIT, seed=3)
    specs = [LoraSpec(kohya, 0.5), LoraSpec(diff, -0.25)]  # two LoRAs on the same layers stack
    merged = merge_loras(copy.deepcopy(base), specs)
    wrapped = wrap_loras(copy.deepcopy(base), specs)
    assert type(wrapped.double_blocks[1].img_attn_qkv).__name__ == "LoraLinear"
    assert torch.equal(wrapped.double_blocks[1].img_attn_qkv.weight, base.double_blocks[1].img_attn_qkv.weight)
    with torch.no_grad():
        assert torch.allclose(wrapped(*inputs()), merged(*inputs()), atol=1e-5)


def test_unknown_keys_are_listed(tmp_path, capsys):
    path = tmp_path / "odd.safetensors"
    save_file(
        {
            "transformer.transformer_blocks.0.attn.to_q.lora_A.weight": rand(2, H, seed=0),
            "transformer.transformer_blocks.0.attn.to_q.lora_B.weight": rand(H, 2, seed=1),
            "transformer.vae_thing.lora_A.weight": rand(2, H, seed=2),
            "lora_te_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": rand(2, H, seed=3),
        },
        path,
    )
    with pytest.raises(UsageError) as e:
        read_lora(LoraSpec(path))
    msg = str(e.value)
    assert msg.startswith(f"--lora: {path}: 2 key(s) match no DiT layer")
    assert "transformer.vae_thing.lora_A.weight" in msg and "lora_te_text_model_encoder_layers_0" in msg
    # through the command line: exit 2, one line naming the file, before anything loads
    base = tmp_path / "ckpts"
    base.mkdir()
    argv = ["--prompt", "a", "--model-base", str(base), "--device", "cpu", "--save-path", str(tmp_path / "o")]
    assert cli.main([*argv, "--lora", f"{path}:0.5"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(path) in err and "match no DiT layer" in err
    for bad, expect in [(tmp_path / "nope.safetensors", "no such file"), (base, "no such file")]:
        assert cli.main([*argv, "--lora", str(bad)]) == 2
        assert expect in capsys.readouterr().err
    notst = tmp_path / "x.pt"
    notst.write_bytes(b"junk")
    assert cli.main([*argv, "--lora", str(notst)]) == 2
    assert "only .safetensors" in capsys.readouterr().err
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"junk")
    assert cli.main([*argv, "--lora", str(junk)]) == 2
    assert "not a readable .safetensors file" in capsys.readouterr().err


def test_lora_for_more_blocks_than_the_model_is_a_usage_error(tmp_path):
    path = tmp_path / "deep.safetensors"
    save_file({"lora_unet_double_blocks_19_img_mlp_fc1.lora_down.weight": rand(2, H, seed=0),
               "lora_unet_double_blocks_19_img_mlp_fc1.lora_up.weight": rand(4 * H, 2, seed=1)}, path)  # fmt: skip
    with pytest.raises(UsageError, match="not in this DiT"):
        merge_loras(random_dit(TINY_DIT), [LoraSpec(path)])
    bad_shape = tmp_path / "shape.safetensors"
    save_file({"lora_unet_double_blocks_0_img_mlp_fc1.lora_down.weight": rand(2, H + 1, seed=0),
               "lora_unet_double_blocks_0_img_mlp_fc1.lora_up.weight": rand(4 * H, 2, seed=1)}, bad_shape)  # fmt: skip
    with pytest.raises(UsageError, match="input size 49, the layer takes 48"):
        merge_loras(random_dit(TINY_DIT), [LoraSpec(bad_shape)])


def test_pipeline_loads_the_dit_with_loras_merged_or_wrapped(tmp_path):
    base = write_tiny_model(tmp_path / "m", "official", seed=4)
    kohya, _ = _kohya_and_diffusers_pair(tmp_path)
    argv = ["--prompt", "a", "--model-base", str(base), "--device", "cpu", "--save-path", str(tmp_path / "o"),
            "--precision", "fp32", "--lora", f"{kohya}:0.6"]  # fmt: skip
    req = cli.parse_request(argv)
    paths = locate(base)
    plain = load_dit(paths.dit)
    expected = merge_loras(copy.deepcopy(plain), [LoraSpec(kohya, 0.6)])
    got = pipeline.load_denoiser(req, paths, torch.device("cpu"))
    for k, v in expected.state_dict().items():
        assert torch.allclose(got.state_dict()[k], v, atol=1e-6), k
    wrapped = pipeline.load_denoiser(cli.parse_request([*argv, "--lora-mode", "unmerged"]), paths, torch.device("cpu"))
    with torch.no_grad():
        x, t, txt, mask, pooled, g = inputs(plain.cfg)
        assert torch.allclose(wrapped(x, t, txt, mask, pooled, g), got(x, t, txt, mask, pooled, g), atol=1e-5)


def test_lora_is_merged_before_fp8_quantization(tmp_path):
    """--use-fp8 --lora: the fp8 block weights hold the merged values (merge, then quantize)."""
    from hyvideo.quantization import quantize_dit

    base = write_tiny_model(tmp_path / "m", "official", seed=7)
    kohya, _ = _kohya_and_diffusers_pair(tmp_path)
    argv = ["--prompt", "a", "--model-base", str(base), "--device", "cpu", "--save-path", str(tmp_path / "o"),
            "--precision", "fp32", "--use-fp8", "--lora", f"{kohya}:0.6"]  # fmt: skip
    paths = locate(base)
    got = pipeline.load_denoiser(cli.parse_request(argv), paths, torch.device("cpu")).state_dict()
    expected = quantize_dit(merge_loras(load_dit(paths.dit), [LoraSpec(kohya, 0.6)])).state_dict()
    unmerged = quantize_dit(load_dit(paths.dit)).state_dict()
    key = "double_blocks.1.img_attn_qkv.weight"
    assert got[key].dtype == torch.float8_e4m3fn
    assert got.keys() == expected.keys()
    for k in expected:
        assert torch.equal(got[k].float(), expected[k].float()), k
    assert not torch.equal(got[key].float(), unmerged[key].float())


def test_official_i2v_prefix_merges_without_alpha(tmp_path):
    """The official image-to-video kohya prefix `Hunyuan_video_I2V_lora_`: W' = W + s * B @ A into the named fused
    layer (its .alpha skipped, as the official loader does); the same tensors under lora_unet_ keep s * alpha / r."""
    t = target_of("Hunyuan_video_I2V_lora_double_blocks_0_img_attn_qkv")
    assert t.module == "double_blocks.0.img_attn_qkv" and t.rule is None
    assert target_of("Hunyuan_video_I2V_lora_single_blocks_1_linear1").module == "single_blocks.1.linear1"
    r, alpha, s = 4, 2.0, 0.7
    layers = {"double_blocks_0_img_attn_qkv": (3 * H, H), "single_blocks_1_linear1": (3 * H + MLP, H)}
    for prefix, factor in (("Hunyuan_video_I2V_lora_", s), ("lora_unet_", s * alpha / r)):
        model = random_dit(TINY_DIT, seed=0)
        before = {k: v.clone() for k, v in model.state_dict().items()}
        sd = {}
        for i, (name, (out, inp)) in enumerate(layers.items()):
            sd[f"{prefix}{name}.lora_down.weight"] = rand(r, inp, seed=i)
            sd[f"{prefix}{name}.lora_up.weight"] = rand(out, r, seed=10 + i)
            sd[f"{prefix}{name}.alpha"] = torch.tensor(alpha)
        save_file(sd, tmp_path / "k.safetensors")
        merge_loras(model, [LoraSpec(tmp_path / "k.safetensors", s)])
        after = model.state_dict()
        keys = ["double_blocks.0.img_attn_qkv.weight", "single_blocks.1.linear1.weight"]
        for name, key in zip(layers, keys, strict=True):
            up, down = sd[f"{prefix}{name}.lora_up.weight"], sd[f"{prefix}{name}.lora_down.weight"]
            assert torch.equal(after[key], before[key] + factor * (up @ down)), (prefix, key)  # same fp32 ops
        assert all(torch.equal(after[k], before[k]) for k in before if k not in keys)
