"""`--i2v-mode` under torchrun sequence parallelism (ring), cfg-parallel, and with `--offload model`: every image
condition (token_replace, latent_concat, SkyReels concat) gives the final latents of the plain single-process run.

token_replace is the case with a catch: latent frame 0 (the clean image latent) takes its own modulation vector,
and its tokens lead the image sequence, so after the split they sit on the first chunk(s) only. With 2 processes
frame 0 always fits in chunk 0; with 4 ring positions (`--ring-degree 4`) it spans chunks 0 and 1, held by two
ring positions. Multi-process runs use tests/torchrun_launch.py (free ports, per-rank logs, first error shown); the
cases of one process count share one launch (tests/cli_worker.py: the CLI once per case in the same ranks, the last
case as `sample_video.py`), as a launch's cost is mostly the ranks' start.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from test_i2v_cli import FP32, FRAMES, HEIGHT, PROMPT, SEED, STEPS, WIDTH, run
from torchrun_launch import CaseLaunches

from hyvideo import io

SIZE = ["--video-size", str(HEIGHT), str(WIDTH)]
# fp32 on both sides; the ring only reorders sums (attention over key blocks merged by log-sum-exp), cfg-parallel
# computes the same two forwards and exchanges them whole. Measured (tiny models, 3 steps): ring 1.8e-7
# (token_replace, latent_concat, token_replace over 4 positions), 5.2e-7 (SkyReels: real CFG 6 scales the
# differences; also with --cfg-parallel on top, 4 processes), cfg-parallel 0.0 for all three, ring 4 with TeaCache
# 1.9e-7. The bound is the text-to-video parallel tests'. Frame 0 given its own modulation on chunk 0 only (the
# share of chunk 1 under --ring-degree 4 dropped) measured 2.6e-2.
TOL = 1e-5
TIMEOUT_S = 2400  # one launch: torch import per rank, then up to six cases, on two shared, busy cores


@pytest.fixture(scope="session")
def models(i2v_models: dict[str, Path]) -> dict[str, Path]:
    """The session's tiny i2v models (tests/conftest.py), read only."""
    return i2v_models


@pytest.fixture(scope="session")
def image_path(i2v_image_path: Path) -> Path:
    return i2v_image_path


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


# case -> (model, the layout's flags, the numbers' own flags, processes): ring over two and four positions,
# cfg-parallel with real CFG for each condition (SkyReels-V1 runs real CFG 6 by default; HunyuanVideo-I2V with
# --cfg-scale, its negative prompt on a black image). The single-process run gets the numbers' flags only.
CASES: dict[str, tuple[str, list[str], list[str], int]] = {
    "ring-token_replace": ("token_replace", ["--ring-degree", "2"], [], 2),
    "ring-latent_concat": ("latent_concat", ["--ring-degree", "2"], [], 2),
    "ring-skyreels": ("skyreels", ["--ring-degree", "2"], [], 2),
    "ring4-token_replace": ("token_replace", ["--ring-degree", "4"], [], 4),  # frame 0 spans two ring positions
    "cfg_parallel-token_replace": ("token_replace", ["--cfg-parallel"], ["--cfg-scale", "2"], 2),
    "cfg_parallel-latent_concat": ("latent_concat", ["--cfg-parallel"], ["--cfg-scale", "2"], 2),
    "cfg_parallel-skyreels": ("skyreels", ["--cfg-parallel"], [], 2),
    # the two together: cfg halves of two ring positions each
    "ring_cfg_parallel-skyreels": ("skyreels", ["--ring-degree", "2", "--cfg-parallel"], [], 4),
    # TeaCache runs the blocks through SequenceParallelDiT.run_blocks, which splits frame 0's count too
    "ring4_teacache-token_replace": ("token_replace", ["--ring-degree", "4"], ["--teacache-thresh", "10"], 4),
}


@pytest.fixture(scope="module")
def launches(models, image_path, tmp_path_factory) -> CaseLaunches:
    """`sample_video.py --i2v-mode` at the test size for every case, one launch per process count."""
    cases = {}
    for case, (model, layout, numbers, nproc) in CASES.items():
        argv = ["--prompt", PROMPT, "--model-base", str(models[model]), "--video-length", str(FRAMES)]
        argv += ["--infer-steps", str(STEPS), "--seed", str(SEED), *FP32, "--save-latents", "--device", "cpu"]
        argv += ["--dist-timeout", "900", *SIZE, *layout, *numbers, "--i2v-mode", "--i2v-image-path", str(image_path)]
        cases[case] = (nproc, argv)
    return CaseLaunches(tmp_path_factory.mktemp("i2v_torchrun"), cases, timeout=TIMEOUT_S)


@pytest.fixture(scope="module")
def single_runs(models, image_path, tmp_path_factory) -> Callable[[str, list[str]], torch.Tensor]:
    """The single-process latents by (model, the numbers' flags), each computed once (cases share them)."""
    cache: dict[tuple[str, tuple[str, ...]], torch.Tensor] = {}

    def get(model: str, numbers: list[str]) -> torch.Tensor:
        key = (model, tuple(numbers))
        if key not in cache:
            cache[key] = run(models[model], tmp_path_factory.mktemp("one"), *SIZE, *numbers, image=image_path)[0]
        return cache[key]

    return get


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_torchrun_matches_one_process(launches, single_runs, case):
    model, _, numbers, _ = CASES[case]
    want = single_runs(model, numbers)
    (latents_file,) = launches.save_path(case).glob("*.latents.safetensors")
    got = io.load_latents(latents_file)[0]
    assert got.shape == want.shape
    err = rel(got, want)
    assert err <= TOL, (case, err)


@pytest.mark.parametrize("condition", ["token_replace", "latent_concat", "skyreels"])
def test_offload_model_equals_plain(models, image_path, single_runs, tmp_path, condition):
    """The whole DiT moved to the device per forward (a no-op move on the CPU, but the hooks and the wrapper the
    image condition calls through are those of a GPU run): bit-identical latents."""
    plain = single_runs(condition, [])  # the plain run, shared with the torchrun cases
    got, record, _ = run(models[condition], tmp_path / "offload", *SIZE, "--offload", "model", image=image_path)
    assert torch.equal(got, plain)
    assert record["i2v"]["condition_type"] == ("concat" if condition == "skyreels" else condition)
