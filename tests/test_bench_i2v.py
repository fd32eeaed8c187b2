"""benchmarks/bench_i2v.py without a run: the folder it writes is a token_replace HunyuanVideoImageToVideoPipeline
folder with the mid VAE, and our side's argv asks for what diffusers' side computes (stretch, stability start,
shift 7, the same embedded guidance, size, frames and steps)."""

from __future__ import annotations

import argparse
import json

from PIL import Image

from benchmarks.bench_i2v import EMBEDDED_GUIDANCE, ours_argv, write_i2v_model, write_test_image
from benchmarks.common import MID_VAE_LAYOUT
from hyvideo.checkpoints.layout import ModelKind, model_kind
from hyvideo.cli import parse_request


def test_folder_and_argv(tmp_path):
    a = argparse.Namespace(hidden=64, heads=2, double=1, single=1, size=[64, 96], frames=9, steps=3)
    root = write_i2v_model(tmp_path / "model", a)
    assert model_kind(root) == ModelKind("diffusers", False, True, "token_replace")
    assert json.loads((root / "model_index.json").read_text())["_class_name"] == "HunyuanVideoImageToVideoPipeline"
    dit = json.loads((root / "transformer" / "config.json").read_text())
    assert dit["num_layers"] == 1 and dit["num_single_layers"] == 1 and dit["num_attention_heads"] == 2
    assert json.loads((root / "vae" / "config.json").read_text())["block_out_channels"] == list(MID_VAE_LAYOUT[0])

    image = write_test_image(tmp_path / "first.png")
    with Image.open(image) as im:
        assert im.mode == "RGB" and im.size != (96, 64)  # diffusers' side stretches it to the video size
    req = parse_request(ours_argv(root, image, tmp_path / "out", a))
    assert req.i2v_mode and req.i2v_condition == "token_replace"
    assert req.i2v_resize == "stretch" and req.i2v_stability and req.i2v_size_given
    assert req.flow_shift == 7.0 and req.embedded_cfg_scale == EMBEDDED_GUIDANCE
    assert (req.height, req.width, req.video_length, req.infer_steps) == (64, 96, 9, 3)
    assert req.precision == "fp32" and req.vae_precision == "fp32" and req.runtime.device == "cpu"
