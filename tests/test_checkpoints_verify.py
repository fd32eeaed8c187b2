"""Cheap weight-file checks before the expensive work (hyvideo/checkpoints/verify.py): names and shapes are read from
headers only, compared with the meta-built model, and every problem is one CheckpointError naming the file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from hyvideo.checkpoints.common import CheckpointError
from hyvideo.checkpoints.vae import random_vae, save_vae_diffusers, save_vae_official
from hyvideo.checkpoints.verify import safetensors_dir_shapes, safetensors_shapes, verify_vae
from hyvideo.tiny import tiny_vae_config

SD = {"a.weight": torch.randn(3, 4), "b.bias": torch.zeros(5), "c": torch.ones(2, 1, 3)}


def shapes(sd: dict[str, torch.Tensor]) -> dict[str, torch.Size]:
    return {k: v.shape for k, v in sd.items()}


# --------------------------------------------------------------------------- safetensors headers
def test_shapes_come_from_the_header_only(tmp_path):
    path = tmp_path / "w.safetensors"
    save_file(SD, str(path))
    assert safetensors_shapes(path) == shapes(SD)
    raw = bytearray(path.read_bytes())
    header_end = 8 + int.from_bytes(raw[:8], "little")
    raw[header_end:] = bytes(len(raw) - header_end)  # every tensor byte zeroed, the header intact
    path.write_bytes(bytes(raw))
    assert safetensors_shapes(path) == shapes(SD)  # the documented limit: corrupt data passes, the real load sees it
    assert load_file(str(path))["c"].abs().max() == 0


def test_unreadable_safetensors_name_the_file(tmp_path):
    with pytest.raises(CheckpointError, match=r"missing\.safetensors: file not found"):
        safetensors_shapes(tmp_path / "missing.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{")  # claims a 16-byte header, holds one byte
    with pytest.raises(CheckpointError, match=r"bad\.safetensors: cannot read safetensors file, truncated or corrupt"):
        safetensors_shapes(bad)


def test_dir_shapes_single_file_or_index_and_shards(tmp_path):
    one = tmp_path / "one"
    one.mkdir()
    save_file(SD, str(one / "m.safetensors"))
    assert safetensors_dir_shapes(one, "m") == shapes(SD)

    sharded = tmp_path / "sharded"
    sharded.mkdir()
    parts = {"m-00001-of-00002.safetensors": ["a.weight"], "m-00002-of-00002.safetensors": ["b.bias", "c"]}
    for name, keys in parts.items():
        save_file({k: SD[k] for k in keys}, str(sharded / name))
    weight_map = {k: name for name, keys in parts.items() for k in keys}
    (sharded / "m.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    assert safetensors_dir_shapes(sharded, "m") == shapes(SD)

    (sharded / "m-00002-of-00002.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"m-00002-of-00002\.safetensors: file not found"):
        safetensors_dir_shapes(sharded, "m")
    (sharded / "m.safetensors.index.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=r"m\.safetensors\.index\.json: not a usable safetensors index"):
        safetensors_dir_shapes(sharded, "m")
    with pytest.raises(CheckpointError, match=r"m\.safetensors\.index\.json: not a usable safetensors index"):
        safetensors_dir_shapes(tmp_path, "m")  # neither a single file nor an index


# --------------------------------------------------------------------------- verify_vae
@pytest.fixture(scope="module")
def tiny_vae():
    cfg = tiny_vae_config()
    return cfg, random_vae(cfg, seed=0)


@pytest.mark.parametrize("layout", ["official", "diffusers"])
def test_verify_vae_accepts_both_layouts(tmp_path, tiny_vae, layout):
    cfg, vae = tiny_vae
    (save_vae_official if layout == "official" else save_vae_diffusers)(vae, cfg, tmp_path)
    verify_vae(tmp_path)


def test_verify_vae_unwraps_official_state_dict_and_prefix(tmp_path, tiny_vae):
    """The official pytorch_model.pt may hold {"state_dict": {"vae.<key>": tensor}}."""
    cfg, vae = tiny_vae
    save_vae_official(vae, cfg, tmp_path)
    sd = {f"vae.{k}": v for k, v in vae.state_dict().items()}
    torch.save({"state_dict": sd}, tmp_path / "pytorch_model.pt")
    verify_vae(tmp_path)


def _rewrite(folder: Path, change) -> None:
    path = folder / "diffusion_pytorch_model.safetensors"
    sd = load_file(str(path))
    change(sd)
    save_file(sd, str(path))


def test_verify_vae_names_missing_unexpected_and_misshaped_keys(tmp_path, tiny_vae):
    cfg, vae = tiny_vae
    save_vae_diffusers(vae, cfg, tmp_path)
    what = r"diffusion_pytorch_model\.safetensors: "

    _rewrite(tmp_path, lambda sd: sd.pop("decoder.conv_out.conv.bias"))
    with pytest.raises(CheckpointError, match=what + r"missing keys 1: decoder\.conv_out\.conv\.bias"):
        verify_vae(tmp_path)

    save_vae_diffusers(vae, cfg, tmp_path)
    _rewrite(tmp_path, lambda sd: sd.update({"decoder.extra": torch.zeros(1)}))
    with pytest.raises(CheckpointError, match=what + r"unexpected keys 1: decoder\.extra"):
        verify_vae(tmp_path)

    save_vae_diffusers(vae, cfg, tmp_path)
    _rewrite(tmp_path, lambda sd: sd.update({"quant_conv.bias": torch.zeros(7)}))
    with pytest.raises(CheckpointError, match=what + r"shape mismatches 1: quant_conv\.bias \(checkpoint \(7,\)"):
        verify_vae(tmp_path)


def test_verify_vae_checks_the_config_it_would_load_with(tmp_path, tiny_vae):
    cfg, vae = tiny_vae
    save_vae_diffusers(vae, cfg, tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["block_out_channels"] = [16, 32, 32, 64]  # weights no longer fit the config
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="shape mismatches"):
        verify_vae(tmp_path)
    (tmp_path / "config.json").unlink()
    with pytest.raises(CheckpointError, match=r"config\.json: file not found"):
        verify_vae(tmp_path)
