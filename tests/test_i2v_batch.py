"""`--prompt-file` with `--i2v-mode` on tiny random image-to-video models: each line's image (relative to the file)
and i2v options give the latents of the single-prompt command line with the same image and seed; a .txt file
animates --i2v-image-path on every line; a bad image is exit 2 naming the file and the line, before anything loads.
The same with SkyReels-V1 weights, and under torchrun data parallel (each rank its own lines and images)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_i2v_cli import FP32, FRAMES, HEIGHT, PROMPT, STEPS, WIDTH, run
from torchrun_launch import CaseLaunches

from hyvideo import cli, io, pipeline

SIZE = ["--video-size", str(HEIGHT), str(WIDTH)]


@pytest.fixture(scope="session")
def models(i2v_models: dict[str, Path]) -> dict[str, Path]:
    """The session's tiny i2v models (tests/conftest.py), read only."""
    return i2v_models


@pytest.fixture(scope="session")
def image_path(i2v_image_path: Path) -> Path:
    return i2v_image_path


@pytest.fixture(scope="module")
def single_run(models, tmp_path_factory) -> Callable[..., torch.Tensor]:
    """`single_run(model, image, *flags)`: the final latents of the single-prompt command line at the test size,
    computed once per (model, flags, image content) and shared by the tests that compare prompt-file lines with it
    (each folder's second image is written alike)."""
    cache: dict[tuple, torch.Tensor] = {}

    def get(model: str, image: Path, *extra: str) -> torch.Tensor:
        key = (model, extra, hashlib.sha256(image.read_bytes()).hexdigest())
        if key not in cache:
            cache[key] = run(models[model], tmp_path_factory.mktemp("single"), *SIZE, *extra, image=image)[0]
        return cache[key]

    return get


def batch(root: Path, prompt_file: Path, save: Path, *extra: str) -> dict[int, tuple[torch.Tensor, dict]]:
    """The batch run; returns line -> (saved latents, sidecar record)."""
    argv = ["--prompt-file", str(prompt_file), "--model-base", str(root), "--video-length", str(FRAMES)]
    argv += ["--infer-steps", str(STEPS), *FP32, "--save-path", str(save), "--save-latents", "--device", "cpu"]
    assert cli.main([*argv, *extra]) == 0
    out = {}
    for mp4 in sorted(save.glob("*.mp4")):
        latents, _ = io.load_latents(io.latents_filename(mp4))
        record = json.loads(mp4.with_suffix(".json").read_text())
        out[record["batch"]["line"]] = (latents, record)
    return out


def second_image(folder: Path) -> Path:
    """Another image, of another aspect, in a subfolder (named relative to the prompt file)."""
    (folder / "imgs").mkdir(parents=True, exist_ok=True)
    path = folder / "imgs" / "second.jpg"
    Image.fromarray((np.random.RandomState(1).rand(60, 40, 3) * 255).astype(np.uint8)).save(path, quality=95)
    return path


def test_jsonl_lines_with_images_equal_single_runs(models, image_path, single_run, tmp_path):
    """Line 1: an absolute image path; line 2: a relative one with --i2v-stability and the stretch resize. Each
    video's latents equal the single-prompt run's bit for bit, and its sidecar records that line's image and sha256."""
    root = models["token_replace"]
    other = second_image(tmp_path)
    lines = [
        {"prompt": PROMPT, "image": str(image_path), "seed": 7, "video_size": [HEIGHT, WIDTH]},
        {"prompt": "A dog runs", "image": "imgs/second.jpg", "seed": 8, "video_size": [HEIGHT, WIDTH],
         "i2v_stability": True, "i2v_resize": "stretch"},
    ]  # fmt: skip
    (tmp_path / "p.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    got = batch(root, tmp_path / "p.jsonl", tmp_path / "batch", "--i2v-mode")
    one = single_run("token_replace", image_path, "--seed", "7")
    two, _, _ = run(
        root, tmp_path / "two", *SIZE, "--prompt", "A dog runs", "--seed", "8", "--i2v-stability",
        "--i2v-resize", "stretch", image=other,
    )  # fmt: skip
    assert sorted(got) == [1, 2]
    assert torch.equal(got[1][0], one) and torch.equal(got[2][0], two)
    assert not torch.equal(one[:, :, 1:], two[:, :, 1:])
    for line, path in ((1, image_path), (2, other)):
        record = got[line][1]["i2v"]
        assert record["image"] == str(path.resolve())
        assert record["image_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert got[2][1]["i2v"]["stability"] is True and got[2][1]["i2v"]["resize"] == "stretch"
    assert got[2][1]["flow_shift"] == 7.0 and got[1][1]["flow_shift"] == 17.0  # the defaults follow each line


def test_txt_prompt_file_uses_the_one_image(models, image_path, tmp_path):
    """A .txt prompt file with --i2v-mode animates --i2v-image-path on every line (seed --seed + index)."""
    root = models["latent_concat"]
    (tmp_path / "p.txt").write_text(f"{PROMPT}\nA dog runs\n")
    got = batch(root, tmp_path / "p.txt", tmp_path / "batch", *SIZE, "--seed", "7", "--i2v-mode",
                "--i2v-image-path", str(image_path))  # fmt: skip
    want, _, _ = run(root, tmp_path / "one", *SIZE, "--seed", "8", "--prompt", "A dog runs", image=image_path)
    assert sorted(got) == [1, 2] and torch.equal(got[2][0], want)
    assert {r["i2v"]["image"] for _, r in got.values()} == {str(image_path.resolve())}


def test_bad_image_line_exit_2_names_file_and_line(models, image_path, tmp_path, capsys, monkeypatch):
    loaded = []
    monkeypatch.setattr(pipeline, "load_denoiser", lambda *a, **k: loaded.append(a))
    monkeypatch.setattr(pipeline, "encode_text", lambda *a, **k: loaded.append(a))
    truncated = tmp_path / "cut.png"
    truncated.write_bytes(image_path.read_bytes()[:200])
    good = {"prompt": PROMPT, "image": str(image_path)}
    cases = [
        ([good, {"prompt": PROMPT, "image": "cut.png"}], True, f"line 2: image: {truncated}"),
        ([good, {"prompt": PROMPT, "image": "missing.png"}], True, "line 2: image: "),
        ([good, {"prompt": PROMPT}], True, 'line 2: no image: give "image"'),
        ([{"prompt": PROMPT, "image": 3}], True, "line 1: image must be a file path"),
        ([{**good, "i2v_stability": 1}], True, "line 1: i2v_stability must be true or false"),
        ([{**good, "i2v_resize": "squash"}], True, "line 1: --i2v-resize: 'squash'"),
        ([good], False, "line 1: image need(s) --i2v-mode"),  # text-to-video weights, no --i2v-mode
    ]
    for number, (entries, i2v_mode, message) in enumerate(cases):
        path = tmp_path / f"p{number}.jsonl"
        path.write_text("\n".join(json.dumps(x) for x in entries) + "\n")
        base = models["token_replace" if i2v_mode else "t2v"]
        mode = ["--i2v-mode"] if i2v_mode else []
        argv = ["--prompt-file", str(path), "--model-base", str(base), *mode, "--seed", "1"]
        argv += ["--save-path", str(tmp_path / "out"), "--device", "cpu"]
        assert cli.main(argv) == 2, entries
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and str(path) in err and message in err, (entries, err)
    assert not loaded and not (tmp_path / "out").exists()


def skyreels_lines(folder: Path, image: Path) -> Path:
    """Two lines: the first frame given absolute, then relative (another image, another seed and prompt)."""
    second_image(folder)
    lines = [
        {"prompt": PROMPT, "image": str(image), "seed": 7, "video_size": [HEIGHT, WIDTH]},
        {"prompt": "A dog runs", "image": "imgs/second.jpg", "seed": 8, "video_size": [HEIGHT, WIDTH]},
    ]
    path = folder / "p.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    return path


def test_skyreels_jsonl_lines_equal_single_runs(models, image_path, single_run, tmp_path):
    """SkyReels-V1 weights: the text-to-video encoders (prompt and negative prompt cached across lines), real CFG 6,
    and each seed's own posterior sample of its line's image drawn before the noise: each video equals the
    single-prompt run bit for bit."""
    root = models["skyreels"]
    got = batch(root, skyreels_lines(tmp_path, image_path), tmp_path / "batch", "--i2v-mode")
    one = single_run("skyreels", image_path, "--seed", "7")
    two = single_run("skyreels", tmp_path / "imgs" / "second.jpg", "--seed", "8", "--prompt", "A dog runs")
    assert sorted(got) == [1, 2]
    assert torch.equal(got[1][0], one) and torch.equal(got[2][0], two)
    for line in (1, 2):
        record = got[line][1]
        assert record["i2v"]["condition_type"] == "concat" and record["cfg_scale"] == 6.0
        assert record["embedded_cfg_scale"] == 1.0


DATA_PARALLEL = ["token_replace", "skyreels"]


@pytest.fixture(scope="module")
def data_parallel_runs(models, image_path, tmp_path_factory) -> tuple[CaseLaunches, dict[str, Path]]:
    """Each condition's two-line prompt file under torchrun --nproc_per_node 2, both in one launch (the ranks' start
    is most of a launch's cost); with the folder of each condition's prompt file and images."""
    base = tmp_path_factory.mktemp("data_parallel")
    cases, folders = {}, {}
    for condition in DATA_PARALLEL:
        folders[condition] = base / condition
        folders[condition].mkdir()
        path = skyreels_lines(folders[condition], image_path)
        argv = ["--prompt-file", str(path), "--model-base", str(models[condition]), "--video-length", str(FRAMES)]
        argv += ["--infer-steps", str(STEPS), *FP32, "--save-latents", "--device", "cpu", "--i2v-mode"]
        cases[condition] = (2, argv)
    return CaseLaunches(base / "runs", cases, timeout=1800), folders


@pytest.mark.slow
@pytest.mark.parametrize("condition", DATA_PARALLEL)
def test_jsonl_lines_with_images_under_torchrun_data_parallel(image_path, single_run, data_parallel_runs, condition):
    """torchrun --nproc_per_node 2 with a prompt file: line 1 on rank 0, line 2 on rank 1, each with its own image;
    every video equals the single-process run of its line."""
    runs, folders = data_parallel_runs
    tmp_path = folders[condition]
    got = {}
    for mp4 in sorted(runs.save_path(condition).glob("*.mp4")):
        record = json.loads(mp4.with_suffix(".json").read_text())
        got[record["batch"]["line"]] = (io.load_latents(io.latents_filename(mp4))[0], record)
    one = single_run(condition, image_path, "--seed", "7")
    two = single_run(condition, tmp_path / "imgs" / "second.jpg", "--seed", "8", "--prompt", "A dog runs")
    assert sorted(got) == [1, 2]
    for line, want in ((1, one), (2, two)):
        latents, record = got[line]
        err = float((latents - want).norm() / want.norm())
        # measured 0.0 for both conditions; the ranks run with torchrun's OMP_NUM_THREADS=1 and this process with
        # its own thread count, which may order fp32 sums differently elsewhere: the parallel tests' bound
        assert err <= 1e-5, (line, err)
        assert record["runtime"]["parallel"]["rank"] == line - 1 and record["runtime"]["parallel"]["world_size"] == 2
        sha = hashlib.sha256((image_path if line == 1 else tmp_path / "imgs" / "second.jpg").read_bytes()).hexdigest()
        assert record["i2v"]["image_sha256"] == sha
