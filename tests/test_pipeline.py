"""End to end on the tiny model: parity with diffusers' HunyuanVideoPipeline, both layouts, the CLI's MP4."""

from __future__ import annotations

import errno
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from diffusers import HunyuanVideoPipeline

from hyvideo import io, pipeline
from hyvideo.checkpoints.layout import locate
from hyvideo.cli import main, parse_request
from hyvideo.modules.text_encoders import PROMPT_TEMPLATES, TextEncoders

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "A cat walks on the grass, realistic style."


@pytest.fixture(scope="module")
def models(tiny_v1):
    return tiny_v1("official", 3), tiny_v1("diffusers", 3)  # the session's (conftest.py), read only


def request(base: Path, out: Path, *extra: str):
    return parse_request(
        [
            "--model-base", str(base), "--prompt", PROMPT, "--video-size", "64", "96", "--video-length", "9",
            "--infer-steps", "3", "--seed", "7", "--save-path", str(out), "--precision", "fp32",
            "--vae-precision", "fp32", "--text-encoder-precision", "fp32", "--text-encoder-precision-2", "fp32",
            *extra,
        ]
    )  # fmt: skip


def our_latents(req) -> torch.Tensor:
    device = torch.device("cpu")
    paths = locate(req.model_base)
    cond, uncond = pipeline.encode_text(req, paths, device)
    model = pipeline.load_denoiser(req, paths, device)
    return pipeline.denoise(model, cond, uncond, req, req.seed, device)


def diffusers_latents(base: Path, req, crop_start: int) -> torch.Tensor:
    pipe = HunyuanVideoPipeline.from_pretrained(base, dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    kwargs = {}
    if req.cfg_scale > 1:
        kwargs = {"negative_prompt": req.neg_prompt, "true_cfg_scale": req.cfg_scale}
    out = pipe(
        prompt=PROMPT,
        height=req.height,
        width=req.width,
        num_frames=req.video_length,
        num_inference_steps=req.infer_steps,
        guidance_scale=req.embedded_cfg_scale,
        generator=[torch.Generator().manual_seed(req.seed)],
        output_type="latent",
        prompt_template={"template": PROMPT_TEMPLATES["dit-llm-encode-video"], "crop_start": crop_start},
        max_sequence_length=req.text_len,
        **kwargs,
    )
    return out.frames


@pytest.mark.parametrize("cfg", [[], ["--cfg-scale", "3.5", "--neg-prompt", "blurry, low quality"]])
def test_final_latents_match_diffusers_pipeline(models, tmp_path, cfg):
    official, diffusers_dir = models
    req = request(official, tmp_path, *cfg)
    ours = our_latents(req)
    enc = TextEncoders(pipeline.text_config(req, locate(official)))
    crop = enc.crop_start(req.video_length)
    theirs = diffusers_latents(diffusers_dir, req, crop)
    assert ours.shape == theirs.shape == (1, 16, 3, 8, 12)
    rel = ((ours - theirs).abs().max() / theirs.abs().max()).item()
    assert rel <= 1e-4, rel
    # the same weights in the diffusers layout give the same latents through our loader
    same = our_latents(request(diffusers_dir, tmp_path, *cfg))
    assert torch.allclose(same, ours, atol=1e-6)


def test_cli_writes_mp4_and_latents_round_trip(models, tmp_path):
    official, _ = models
    out = tmp_path / "out"
    assert main([*_args(official, out), "--save-latents", "--fps", "12"]) == 0
    [mp4] = list(out.glob("*.mp4"))
    assert mp4.name.endswith(f"_seed7_{io.slugify(PROMPT)}.mp4")
    frames = iio.imread(mp4)
    assert frames.shape == (9, 64, 96, 3)
    assert iio.immeta(mp4)["fps"] == 12
    [lat] = list(out.glob("*.latents.safetensors"))
    latents, meta = io.load_latents(lat)
    assert latents.shape == (1, 16, 3, 8, 12) and latents.dtype == torch.float32 and meta["seed"] == "7"
    # decode-only run reproduces the video frames (same VAE, same latents)
    again = tmp_path / "again"
    assert main(["--model-base", str(official), "--decode-latents", str(lat), "--save-path", str(again),
                 "--vae-precision", "fp32", "--fps", "12"]) == 0  # fmt: skip
    [mp4b] = list(again.glob("*.mp4"))
    assert (iio.imread(mp4b).astype(int) - frames.astype(int)).__abs__().max() <= 2
    assert not list(out.glob(".*tmp*")) and not list(again.glob(".*tmp*"))  # no temp files left


def test_sample_video_script_end_to_end(models, tmp_path):
    """The real entry point, as a user runs it; also checks the official layout without any flags for paths."""
    official, _ = models
    out = tmp_path / "script"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "sample_video.py"), *_args(official, out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert len(list(out.glob("*.mp4"))) == 1
    for stage in ("text encode", "load DiT", "denoise seed 7", "decode seed 7", "write seed 7"):
        assert stage in proc.stderr


def test_missing_component_is_one_line_exit_2(tmp_path, capsys):
    broken = tmp_path / "broken"
    broken.mkdir()
    assert main(_args(broken, tmp_path / "o")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "missing" in err[0] and "mp_rank_00_model_states.pt" in err[0]
    assert not (tmp_path / "o").exists()


def _args(base: Path, out: Path) -> list[str]:
    return [
        "--model-base", str(base), "--prompt", PROMPT, "--video-size", "64", "96", "--video-length", "9",
        "--infer-steps", "2", "--seed", "7", "--save-path", str(out), "--precision", "fp32", "--vae-precision", "fp32",
        "--text-encoder-precision", "fp32", "--text-encoder-precision-2", "fp32",
    ]  # fmt: skip


def test_vae_tile_flags_reach_the_decoder_and_the_estimate(models, tmp_path):
    from hyvideo.memory import plan_from_request

    official, _ = models
    default = request(official, tmp_path / "a")
    small = request(official, tmp_path / "b", "--vae-tile-size", "64")
    assert (default.vae_tile_size, default.vae_tile_stride) == (256, 192)
    assert (small.vae_tile_size, small.vae_tile_stride) == (64, 48)  # stride: 3/4 of the tile
    assert (
        request(official, tmp_path / "c", "--vae-tile-size", "128", "--vae-tile-stride", "112").vae_tile_stride == 112
    )
    paths, cpu = locate(official), torch.device("cpu")
    vae = pipeline.load_decoder(small, paths, cpu)
    assert (vae.tiling.tile_size, vae.tiling.tile_stride) == (64, 48)
    latents = torch.randn(1, 16, 3, 8, 12, generator=torch.Generator().manual_seed(0))  # 64x96: two 64 px tiles wide
    whole = pipeline.decode(pipeline.load_decoder(default, paths, cpu), latents)  # one tile: exact
    tiled = pipeline.decode(vae, latents)
    assert tiled.shape == whole.shape == (3, 9, 64, 96)
    # Measured 0.112 with these seeds (fp32, CPU): a 64 px tile sees less context than the whole frame, so every
    # pixel moves a little, most at the blended seam (columns 48-63). Decoding other latents differs by 0.53, so this
    # band tells tiling from garbage, and the lower end from no tiling at all.
    assert 0.05 < (tiled - whole).abs().mean().item() < 0.15
    big = dict(height=720, width=1280, video_length=129)
    est = [plan_from_request(r.replace(**big)).tile_size for r in (default, small)]
    assert est == [256, 64]


def test_noise_official_draws_on_the_run_device_in_the_text_encoder_dtype(models, tmp_path, monkeypatch):
    """--noise official: the start noise comes from `official_noise` on the run's device in the LLM's dtype (bf16
    here), and is what the run then samples from; --noise ours never calls it. Both are recorded."""
    official, _ = models
    drawn = []
    real = pipeline.official_noise

    def spy(shape, seeds, device, dtype):
        drawn.append((tuple(shape), list(seeds), torch.device(device), dtype, real(shape, seeds, device, dtype)))
        return drawn[-1][-1]

    monkeypatch.setattr(pipeline, "official_noise", spy)
    bf16 = ["--text-encoder-precision", "bf16", "--save-latents"]
    assert main([*_args(official, tmp_path / "ours"), *bf16]) == 0
    assert drawn == []
    assert main([*_args(official, tmp_path / "off"), *bf16, "--noise", "official"]) == 0
    [(shape, seeds, device, dtype, noise)] = drawn
    assert (shape, seeds, device, dtype) == ((1, 16, 3, 8, 12), [7], torch.device("cpu"), torch.bfloat16)
    assert torch.equal(noise, noise.bfloat16().float())  # drawn in bf16, then upcast exactly
    assert not torch.equal(noise, pipeline.initial_noise(shape, [7], "cpu"))
    [a], [b] = (list((tmp_path / d).glob("*.latents.safetensors")) for d in ("ours", "off"))
    (lat_a, meta_a), (lat_b, meta_b) = io.load_latents(a), io.load_latents(b)
    assert (meta_a["noise"], meta_b["noise"]) == ("ours", "official")
    # On the CPU both generators are the CPU's, so the two noises differ only by the bf16 rounding of the draw (a CUDA
    # generator gives other numbers altogether); the latents differ accordingly (measured 0.011).
    assert (lat_a - lat_b).abs().max() > 1e-3
    [side] = (tmp_path / "off").glob("*.json")
    assert json.loads(side.read_text())["sampler"]["noise"] == "official"


def test_failed_video_write_keeps_the_latents_for_decode_latents(models, tmp_path, monkeypatch, capsys):
    """A write failure at the end (disk full in the MP4 writer): exit 1, the latents are kept beside the video, the
    log names them with the command that finishes the job, and that command gives the same video as a good run."""
    official, _ = models
    good = tmp_path / "good"
    assert main(_args(official, good)) == 0
    [want] = good.glob("*.mp4")
    real_write = io.write_mp4

    def disk_full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(io, "write_mp4", disk_full)
    out = tmp_path / "full"
    capsys.readouterr()
    assert main(_args(official, out)) == 1
    err = capsys.readouterr().err
    assert not list(out.glob("*.mp4")) and not list(out.glob("*.json"))  # nothing half-written
    [kept] = out.glob("*.latents.safetensors")
    stem = want.name.removesuffix(".mp4")[len("YYYY-mm-dd-HH-MM-SS") :]  # the name after its time stamp
    assert kept.name.endswith(stem + ".latents.safetensors")
    [line] = [m for m in err.splitlines() if "latents are kept in" in m]
    assert str(kept) in line and f"--decode-latents {kept}" in line
    assert err.strip().splitlines()[-1].startswith("error: OSError: [Errno 28]")
    monkeypatch.setattr(io, "write_mp4", real_write)
    assert main(["--model-base", str(official), "--decode-latents", str(kept), "--save-path", str(out),
                 "--vae-precision", "fp32"]) == 0  # fmt: skip
    [got] = out.glob("*.mp4")
    assert got.name == kept.name.removesuffix(".latents.safetensors") + ".mp4"
    assert np.array_equal(iio.imread(got), iio.imread(want))


def test_failed_write_in_a_removed_folder_keeps_the_latents_in_the_temp_folder(models, tmp_path, monkeypatch):
    """The output folder removed while sampling: the latents go to the temp folder (`io.save_latents_fallback`)."""
    official, _ = models
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    out = tmp_path / "gone"
    real_decode = pipeline.decode

    def decode_then_block(vae, latents, *rest):  # rest: the decoded frames to drop (image-to-video)
        video = real_decode(vae, latents, *rest)
        out.write_text("x")  # a file where the output folder should be: creating it and writing there fail
        return video

    monkeypatch.setattr(pipeline, "decode", decode_then_block)
    assert main(_args(official, out)) == 1
    [kept] = (tmp_path / "tmp").glob("*.latents.safetensors")
    latents, meta = io.load_latents(kept)
    assert latents.shape == (1, 16, 3, 8, 12) and meta["seed"] == "7"


def test_vae_decode_progress_bar_reaches_its_total(models, tmp_path, monkeypatch):
    """The decode shows a bar like the denoising loop's: one tick per decoder pass, ending at `decode_steps`."""
    official, _ = models
    bars = []

    class Recording(pipeline.tqdm):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            bars.append(self)

    monkeypatch.setattr(pipeline, "tqdm", Recording)
    vae = pipeline.load_decoder(request(official, tmp_path, "--vae-tile-size", "64"), locate(official), "cpu")
    latents = torch.randn(1, 16, 3, 8, 12, generator=torch.Generator().manual_seed(0))
    pipeline.decode(vae, latents)
    [bar] = bars
    assert "decode" in bar.desc and bar.n == bar.total == vae.decode_steps(latents.shape) > 1
    monkeypatch.setenv("RANK", "1")  # only the main process draws bars, as for denoising
    pipeline.decode(vae, latents)
    assert len(bars) == 2 and bars[1].n == 0  # a disabled bar counts nothing


def test_official_noise_goes_to_the_dit_device_even_with_offload(models, tmp_path, monkeypatch):
    """The device given to `start_noise` is the one the DiT runs on (the runner's: cuda:<local rank> under torchrun),
    never the offloaded weights' home; the dtype is --text-encoder-precision's (fp16 by default)."""
    official, _ = models
    seen = []
    monkeypatch.setattr(pipeline, "official_noise", lambda shape, seeds, device, dtype: seen.append((device, dtype)))
    req = request(official, tmp_path, "--noise", "official", "--offload", "block", "--text-encoder-precision", "fp16")
    pipeline.start_noise(req, 7, torch.device("cuda:1"))
    assert seen == [(torch.device("cuda:1"), torch.float16)]
