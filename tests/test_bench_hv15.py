"""benchmarks/bench_hv15.py: the folder it writes is a diffusers 1.5 folder of the release version with the mid DiT
and VAE, our side's argv asks for what diffusers' side computes, and the smallest whole run (both sides in their
child processes, one step of a one-frame text-to-video) prints the table with latents that agree."""

from __future__ import annotations

import argparse
import json

import pytest

from benchmarks import bench_hv15
from benchmarks.bench_hv15 import NEGATIVE, PROMPT, ours_argv, write_hv15_model
from benchmarks.common import MID_VAE15_LAYOUT
from hyvideo.cli import parse_request

SMALL = argparse.Namespace(hidden=64, heads=2, double=1, size=[32, 32], frames=5, steps=1)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """The text-to-video folder at the smallest DiT, where the script's --root finds it (written once)."""
    base = tmp_path_factory.mktemp("bench15")
    write_hv15_model(base / f"hv15-{bench_hv15.VERSIONS['t2v']}", "t2v", SMALL)
    return base


@pytest.mark.parametrize("task", ["t2v", "i2v"])
def test_folder_and_argv(base, tmp_path, task):
    root = base / f"hv15-{bench_hv15.VERSIONS[task]}"
    if task == "i2v":
        root = write_hv15_model(tmp_path / "model", task, SMALL)
    index = json.loads((root / "model_index.json").read_text())
    assert index["_class_name"] == {"t2v": "HunyuanVideo15Pipeline", "i2v": "HunyuanVideo15ImageToVideoPipeline"}[task]
    dit = json.loads((root / "transformer" / "config.json").read_text())
    assert dit["_class_name"] == "HunyuanVideo15Transformer3DModel"
    assert dit["num_layers"] == 1 and dit["num_attention_heads"] == 2 and dit["attention_head_dim"] == 32
    assert sum(dit["rope_axes_dim"]) == 32
    vae = json.loads((root / "vae" / "config.json").read_text())
    assert vae["block_out_channels"] == list(MID_VAE15_LAYOUT[0]) and vae["layers_per_block"] == MID_VAE15_LAYOUT[1]
    assert json.loads((root / "guider" / "guider_config.json").read_text())["guidance_scale"] == 6.0

    image = tmp_path / "first.png" if task == "i2v" else None
    if image is not None:
        bench_hv15.write_test_image(image, tuple(SMALL.size))
    req = parse_request(ours_argv(root, image, tmp_path / "out", SMALL))
    assert req.hv15 is not None and req.hv15.version == bench_hv15.VERSIONS[task]
    assert req.prompt == PROMPT and req.neg_prompt == NEGATIVE
    assert (req.height, req.width, req.video_length, req.infer_steps) == (32, 32, 5, 1)
    assert req.precision == "fp32" and req.vae_precision == "fp32" and req.runtime.device == "cpu"


def test_smallest_run_prints_the_row_and_agrees(base, capsys):
    """One step of one frame at 32x32 with the DiT of SMALL, already written under `base` (this file: 35 CPU s with
    the children, measured; 3.5 min of wall time at load average 9 on the 2-core machine)."""
    bench_hv15.main(["--task", "t2v", "--hidden", "64", "--heads", "2", "--double", "1", "--size", "32", "32",
                     "--frames", "1", "--steps", "1", "--repeats", "1", "--root", str(base)])  # fmt: skip
    out = capsys.readouterr().out
    for row in ("denoise per step (s)", "decode (s)", "whole run (s)", "peak RSS (MiB)"):
        assert row in out, out
    assert "2 DiT forward(s) per step" in out, out  # real CFG on both sides
    assert "DISAGREE" not in out, out
    (line,) = [x for x in out.splitlines() if x.startswith("final latents")]
    assert float(line.rsplit(" ", 1)[1]) <= bench_hv15.REL_TOLERANCE, line
