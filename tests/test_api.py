"""The Python APIs on the tiny model: the official HunyuanVideoSampler / parse_args / save_videos_grid interface
(documented dict shapes, a script written for the official package runs unchanged) and our Generator."""

from __future__ import annotations

import runpy
import sys
import textwrap
from pathlib import Path

import imageio.v3 as iio
import pytest
import torch
from PIL import Image

from hyvideo import cli, i2v, io, pipeline, sidecar
from hyvideo.api import Generator
from hyvideo.checkpoints.layout import locate
from hyvideo.cli import parse_request
from hyvideo.config import parse_args
from hyvideo.inference import HunyuanVideoSampler
from hyvideo.utils.file_utils import save_videos_grid, video_grid

ROOT = Path(__file__).resolve().parents[1]
FP32 = ["--precision", "fp32", "--vae-precision", "fp32", "--text-encoder-precision", "fp32",
        "--text-encoder-precision-2", "fp32", "--device", "cpu"]  # fmt: skip


@pytest.fixture(scope="module")
def model(tiny_v1) -> Path:
    return tiny_v1("official", 5)  # the session's (conftest.py), read only


@pytest.fixture(scope="module")
def sampler(model) -> HunyuanVideoSampler:
    args = parse_args(argv=["--model-base", str(model), "--prompt", "unused here", *FP32])
    return HunyuanVideoSampler.from_pretrained(Path(args.model_base), args=args)


def reference_frames(model: Path, prompt: str, seed: int, *extra: str) -> torch.Tensor:
    """The same video through the pipeline's step functions, loaded separately: (3, T, H, W), the decoded [-1, 1]
    video mapped to [0, 1] (no clamp of our own: whatever range it has is the pipeline's)."""
    req = parse_request(["--model-base", str(model), "--prompt", prompt, "--seed", str(seed), *FP32, *extra])
    paths, device = locate(model), torch.device("cpu")
    cond, uncond = pipeline.encode_text(req, paths, device)
    latents = pipeline.denoise(pipeline.load_denoiser(req, paths, device), cond, uncond, req, seed, device)
    return (pipeline.decode(pipeline.load_decoder(req, paths, device), latents) + 1) / 2


def test_predict_returns_the_documented_dict(sampler, model):
    out = sampler.predict(
        prompt="  a red fox / in snow  ", height=30, width=32, video_length=5, seed=7, negative_prompt=None,
        infer_steps=2, guidance_scale=1.0, num_videos_per_prompt=2, flow_shift=7.0, batch_size=1,
        embedded_guidance_scale=6.0,
    )  # fmt: skip
    samples = out["samples"]
    assert samples.shape == (2, 3, 5, 32, 32) and samples.dtype == torch.float32 and samples.device.type == "cpu"
    assert out["seeds"] == [7, 8]
    assert out["prompts"] == ["a red fox / in snow"] * 2
    assert out["size"] == (32, 32, 5)  # height rounded up to a multiple of 16, as the official code does
    ref = reference_frames(model, "a red fox / in snow", 8, "--video-size", "32", "32", "--video-length", "5",
                           "--infer-steps", "2")  # fmt: skip
    assert torch.allclose(samples[1], ref, atol=1e-5)  # exactly the decoded [-1, 1] video mapped to [0, 1]
    assert not torch.allclose(samples[0], samples[1], atol=1e-3)  # different seeds, different videos


def test_predict_seed_rules_and_errors(sampler):
    assert HunyuanVideoSampler._seeds(5, 2, 3) == [5, 6, 7, 5, 6, 7]
    assert HunyuanVideoSampler._seeds([1, 9], 2, 2) == [1, 2, 9, 10]
    assert HunyuanVideoSampler._seeds(torch.tensor([4, 5, 6]), 1, 3) == [4, 5, 6]
    assert len(HunyuanVideoSampler._seeds(None, 1, 3)) == 3
    with pytest.raises(ValueError, match="give 1 or 2 seeds"):
        HunyuanVideoSampler._seeds([1, 2, 3], 1, 2)
    with pytest.raises(ValueError, match="--video-length: must be 4n\\+1"):
        sampler.predict("a cat", height=32, width=32, video_length=6, seed=1, infer_steps=1)
    with pytest.raises(TypeError):
        sampler.predict(["a list"], height=32, width=32, video_length=5)


def test_save_videos_grid(tmp_path):
    colors = torch.rand(3, 3, 5, 1, 1, generator=torch.Generator().manual_seed(0))
    videos = colors.expand(3, 3, 5, 16, 24).clone()  # flat colours per frame: the codec keeps them closely
    grid = video_grid(videos, n_rows=2)  # 2 per row, 2 rows, 2 px black padding
    assert grid.shape == (3, 5, 2 * 18 + 2, 2 * 26 + 2)
    assert torch.equal(grid[:, :, 2:18, 28:52], videos[1]) and torch.equal(grid[:, :, 20:36, 2:26], videos[2])
    assert grid[:, :, 20:36, 28:52].abs().sum() == 0  # the empty cell stays black
    path = save_videos_grid(videos[:1], tmp_path / "new" / "one.mp4", fps=12)
    frames = iio.imread(path)
    assert frames.shape == (5, 16, 24, 3) and iio.immeta(path)["fps"] == 12
    assert abs(frames.astype(float) / 255 - videos[0].permute(1, 2, 3, 0).numpy()).mean() < 0.03  # lossy codec
    assert iio.imread(save_videos_grid(videos * 2 - 1, tmp_path / "g.mp4", rescale=True, n_rows=3)).shape == (
        5, 20, 80, 3)  # fmt: skip


def test_official_style_script_runs_unchanged(model, tmp_path, monkeypatch):
    """A script written against the official package (its sample_video.py call sequence) runs on ours."""
    script = tmp_path / "official_script.py"
    script.write_text(
        textwrap.dedent(
            """
            import os, time
            from datetime import datetime
            from pathlib import Path
            from hyvideo.utils.file_utils import save_videos_grid
            from hyvideo.config import parse_args
            from hyvideo.inference import HunyuanVideoSampler

            args = parse_args()
            save_path = args.save_path if args.save_path_suffix == "" else f"{args.save_path}_{args.save_path_suffix}"
            os.makedirs(save_path, exist_ok=True)
            sampler = HunyuanVideoSampler.from_pretrained(Path(args.model_base), args=args)
            args = sampler.args
            outputs = sampler.predict(prompt=args.prompt, height=args.video_size[0], width=args.video_size[1],
                video_length=args.video_length, seed=args.seed, negative_prompt=args.neg_prompt,
                infer_steps=args.infer_steps, guidance_scale=args.cfg_scale, num_videos_per_prompt=args.num_videos,
                flow_shift=args.flow_shift, batch_size=args.batch_size,
                embedded_guidance_scale=args.embedded_cfg_scale)
            for i, sample in enumerate(outputs["samples"]):
                stamp = datetime.fromtimestamp(time.time()).strftime("%Y-%m-%d-%H:%M:%S")
                name = f"{stamp}_seed{outputs['seeds'][i]}_{outputs['prompts'][i][:100].replace('/', '')}.mp4"
                save_videos_grid(sample.unsqueeze(0), f"{save_path}/{name}", fps=24)
            """
        )
    )
    out = tmp_path / "results"
    argv = ["--model-base", str(model), "--prompt", "A cat walks on the grass", "--video-size", "32", "48",
            "--video-length", "5", "--infer-steps", "1", "--seed", "3", "--num-videos", "2", "--flow-reverse",
            "--save-path", str(out), *FP32]  # fmt: skip
    monkeypatch.setattr(sys, "argv", [str(script), *argv])
    runpy.run_path(str(script), run_name="__main__")  # in this process: no second torch start-up
    names = sorted(p.name for p in out.glob("*.mp4"))
    assert [n.split("_", 1)[1] for n in names] == [
        "seed3_A cat walks on the grass.mp4",
        "seed4_A cat walks on the grass.mp4",
    ]
    assert iio.imread(out / names[0]).shape == (5, 32, 48, 3)


def test_parse_args_bad_flag_exits_2(capsys):
    with pytest.raises(SystemExit) as e:
        parse_args(argv=["--video-size", "x"])
    assert e.value.code == 2 and capsys.readouterr().err.strip().startswith("error: --video-size")


def test_generator_loads_once_and_saves_with_sidecar(model, tmp_path, monkeypatch):
    loads = []
    real = pipeline.load_denoiser
    monkeypatch.setattr(pipeline, "load_denoiser", lambda *a: loads.append(1) or real(*a))
    gen = Generator(model, device="cpu", precision="fp32", vae_precision="fp32", text_encoder_precision="fp32")
    a = gen.generate("a boat", height=32, width=32, video_length=5, seed=[11, 4], infer_steps=1)
    b = gen.generate("a boat", height=32, width=32, video_length=1, seed=4, infer_steps=1, cfg_scale=2.0)
    assert len(loads) == 1
    assert [v.seed for v in a] == [11, 4] and a[0].frames.shape == (3, 5, 32, 32)
    assert b[0].frames.shape == (3, 1, 32, 32) and b[0].request.neg_prompt  # real CFG: default negative prompt
    assert a[1].latents.shape == (1, 16, 2, 4, 4)
    path = a[1].save(tmp_path / "v" / "boat.mp4", fps=8)
    record = sidecar.read(sidecar.sidecar_path(path))
    assert (record["prompt"], record["seed"], record["fps"], record["infer_steps"]) == ("a boat", 4, 8, 1)
    assert iio.imread(path).shape == (5, 32, 32, 3)
    with pytest.raises(ValueError, match="--infer-steps"):
        gen.generate("x", infer_steps=0)
    with pytest.raises(ValueError, match="--precision"):
        Generator(model, precision="fp64")
    with pytest.raises(ValueError, match="--video-length"):  # flags win over the keywords, as later flags would
        Generator(model, device="cpu", flags=["--video-length", "6"])
    with pytest.raises(ValueError, match="--precision: invalid choice: 'fp64'"):
        Generator(model, device="cpu", precision="fp32", flags=["--precision", "fp64"])


# --------------------------------------------------------------------------- image-to-video
def test_image_to_video_api_equals_the_command_line(i2v_models, i2v_image_path, tmp_path):
    """Generator(i2v_mode=True).generate(i2v_image_path=...) and (i2v_image=PIL) give the CLI's latents bit for bit
    (same LLaVA encoding, image latent, start and model wrapper); HunyuanVideoSampler.predict with the official
    i2v arguments gives the CLI's video at the image's bucket; a text-to-video model is the CLI's one-line error."""
    base, root, image_path = tmp_path, i2v_models["token_replace"], i2v_image_path  # the session's (conftest.py)
    argv = ["--prompt", "A cat walks", "--model-base", str(root), "--video-length", "9", "--infer-steps", "3"]
    argv += ["--seed", "7", *FP32, "--save-path", str(base / "cli"), "--save-latents", "--video-size", "32", "48"]
    assert cli.main([*argv, "--i2v-mode", "--i2v-image-path", str(image_path)]) == 0
    (mp4,) = (base / "cli").glob("*.mp4")
    want, _ = io.load_latents(io.latents_filename(mp4))

    gen = Generator(root, device="cpu", precision="fp32", vae_precision="fp32", text_encoder_precision="fp32",
                    i2v_mode=True)  # fmt: skip
    common = dict(height=32, width=48, video_length=9, seed=7, infer_steps=3)
    [by_path] = gen.generate("A cat walks", i2v_image_path=image_path, **common)
    [by_pil] = gen.generate("A cat walks", i2v_image=Image.open(image_path), **common)
    assert torch.equal(by_path.latents, want) and torch.equal(by_pil.latents, want)
    assert by_path.record["i2v"]["image"] == str(image_path.resolve())
    assert by_path.record["flow_shift"] == 17.0  # the image-to-video default, as on the command line
    with pytest.raises(ValueError, match="exactly one of i2v_image_path and i2v_image"):
        gen.generate("A cat walks", **common)
    gen.close()

    # the official sampler: the size is the image's bucket (360p here: small enough for a CPU test)
    bucket = ["--video-length", "5", "--infer-steps", "2", "--seed", "3", "--i2v-resolution", "360p"]
    argv = ["--prompt", "A cat walks", "--model-base", str(root), *bucket, *FP32, "--save-path", str(base / "b")]
    argv += ["--save-latents", "--i2v-mode", "--i2v-image-path", str(image_path)]
    assert cli.main(argv) == 0
    (mp4,) = (base / "b").glob("*.mp4")
    latents, _ = io.load_latents(io.latents_filename(mp4))
    req = parse_request(argv)
    vae = pipeline.load_decoder(req, i2v.model_paths(req), torch.device("cpu"))
    want = ((pipeline.decode(vae, latents) + 1) / 2).clamp(0, 1)  # (3, T, H, W): the CLI's video before the MP4
    args = parse_args(argv=["--model-base", str(root), "--prompt", "unused", "--i2v-mode", *FP32])
    sampler = HunyuanVideoSampler.from_pretrained(Path(args.model_base), args=args)
    out = sampler.predict("A cat walks", video_length=5, seed=3, infer_steps=2, flow_shift=17.0, guidance_scale=1.0,
                          i2v_mode=True, i2v_image_path=image_path, i2v_resolution="360p", i2v_stability=False)  # fmt: skip
    assert out["size"][:2] == tuple(want.shape[2:]) and out["size"][:2] != (32, 48)
    assert torch.equal(out["samples"][0], want)

    t2v = i2v_models["t2v"]
    with pytest.raises(ValueError, match=r"^--i2v-mode: --model-base .* holds text-to-video weights"):
        Generator(t2v, device="cpu", precision="fp32", i2v_mode=True)
