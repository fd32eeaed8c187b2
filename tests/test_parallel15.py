"""HunyuanVideo 1.5 under torchrun (gloo, CPU): Ulysses, ring, cfg-parallel and FSDP2-sharded weights give the
single-process latents for text-to-video, image-to-video and the step-distilled (meanflow) image-to-video weights,
in both folder layouts; a degree that cannot work is refused in one line before anything loads.

Launches are the cost here (torch imported by every rank, the tiny models loaded: ~30-60 s each on a busy 2-core
machine), so there are two. The 2-process launch runs this file as its worker (`tests/test_parallel15.py CASES.json`
under torchrun): the CLI once per case in the same processes, the job kept up between cases (the runner's
end-of-job teardown, `group.shutdown`, is held back until the last case; every case builds its rank groups anew).
The 4-process launch is plain `sample_video.py`, teardown included: ring x cfg-parallel with sharded weights.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
from torch.distributed.elastic.multiprocessing.errors import record
from torchrun_launch import ROOT, launch  # tests/ is on sys.path: under pytest, and as the worker (this file's folder)

from hyvideo import cli, io, pipeline
from hyvideo.modules.qwen_encoder import Text15Embeddings
from hyvideo.modules.text_encoders import TextEmbeddings
from hyvideo.parallel import group
from hyvideo.parallel.steps import Torchrun

# fp32 everywhere, the reference on one thread as the ranks. Ulysses splits the heads (each head's attention is the
# same call over the same keys) and cfg-parallel runs the same two forwards on two processes, exchanging them whole:
# both measured 0.0 for every model, so exact is required. The ring merges attention over key blocks by log-sum-exp,
# which regroups sums: measured (tiny models, 48x80x5, 3 steps; real CFG 6 scales the differences for t2v/i2v)
# 9.5e-7 t2v, 8.2e-7 i2v (also on 4 processes with cfg-parallel), 1.2e-7 step-distilled (no CFG); the bound is the
# v1 parallel tests'. FSDP2-sharded weights change nothing (0.0 with Ulysses and cfg-parallel).
TOL_RING = 1e-5
TIMEOUT_S = 1800  # one launch: every case of it, on two shared, busy cores
HEIGHT, WIDTH, FRAMES, STEPS, SEED = 48, 80, 5, 3, 11
PROMPT = 'A shop sign that reads "OPEN" and a banner saying \u201cSALE\u201d'  # quoted text: byT5 states
NEGATIVE = "blurry, low quality"
FP32 = ["--precision", "fp32", "--text-encoder-precision", "fp32", "--vae-precision", "fp32"]

# model -> (layout, version): the sharded loads read both layouts' transformer folders
MODELS = {
    "t2v": ("diffusers", "480p_t2v"),
    "i2v": ("official", "480p_i2v"),
    "distilled": ("official", "480p_i2v_step_distilled"),
}
# case -> (model, parallel flags); all on 2 processes, in one launch
CASES: dict[str, tuple[str, list[str]]] = {
    "t2v ulysses": ("t2v", ["--ulysses-degree", "2"]),
    "t2v ring, sharded": ("t2v", ["--ring-degree", "2", "--shard-weights"]),
    "t2v cfg-parallel": ("t2v", ["--cfg-parallel"]),
    "i2v ulysses, sharded": ("i2v", ["--ulysses-degree", "2", "--shard-weights"]),
    "i2v ring": ("i2v", ["--ring-degree", "2"]),
    "i2v cfg-parallel, sharded": ("i2v", ["--cfg-parallel", "--shard-weights"]),
    "distilled ring, sharded": ("distilled", ["--ring-degree", "2", "--shard-weights"]),
    "distilled ulysses": ("distilled", ["--ulysses-degree", "2"]),
}
FOUR = ("i2v", ["--ring-degree", "2", "--cfg-parallel", "--shard-weights"])  # sample_video.py on 4 processes


def argv(root: Path, save: Path, image: Path | None, *extra: str) -> list[str]:
    """The CLI at the test size: real CFG as the version has it (6, or 1 for the step-distilled weights)."""
    out = ["--prompt", PROMPT, "--neg-prompt", NEGATIVE, "--model-base", str(root), "--video-length", str(FRAMES)]
    out += ["--seed", str(SEED), "--video-size", str(HEIGHT), str(WIDTH), "--infer-steps", str(STEPS), *FP32]
    out += ["--device", "cpu", "--save-path", str(save), "--save-latents", *extra]
    return out + ([] if image is None else ["--image_path", str(image)])


# ---------------------------------------------------------------------------------------------------------------
# The worker: every case of a launch in the same processes
# ---------------------------------------------------------------------------------------------------------------
@record  # an exception writes this rank's traceback and time to torchrun's error file (the test reports it)
def worker(cases_file: Path) -> None:
    shutdown = group.shutdown
    group.shutdown = lambda: None  # the job stays up for the next case; it ends after the last one
    try:
        for i, args in enumerate(json.loads(cases_file.read_text())):
            code = cli.main(args)
            if code != 0:
                raise RuntimeError(f"case {i}: the CLI exited {code}")
    finally:
        shutdown()  # every path leaves the process group: exiting with a live gloo group can abort


# ---------------------------------------------------------------------------------------------------------------
# The tests
# ---------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def folders(tiny15) -> dict[str, Path]:
    """The session's tiny 1.5 models (conftest.py, seed 2), read only."""
    return {name: tiny15[f"{layout}_{version}"] for name, (layout, version) in MODELS.items()}


@pytest.fixture(scope="module")
def image_path(image15_path: Path) -> Path:
    return image15_path  # HEIGHT x WIDTH


def latents_in(folder: Path) -> torch.Tensor:
    (path,) = folder.glob("*.latents.safetensors")  # exactly one video per run
    return io.load_latents(path)[0]


def image_of(model: str, image: Path) -> Path | None:
    return None if model == "t2v" else image


@pytest.fixture(scope="module")
def single(folders, image_path, tmp_path_factory) -> dict[str, torch.Tensor]:
    """Each model's latents from one process (this one), on one thread as every rank runs (torchrun sets
    OMP_NUM_THREADS=1), so the comparison measures the split alone: with this process's threads every mode
    differed by the same 1.0e-6 (t2v) / 8.1e-7 (i2v), cfg-parallel included."""
    out = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for model in MODELS:
            save = tmp_path_factory.mktemp(f"single-{model}")
            assert cli.main(argv(folders[model], save, image_of(model, image_path))) == 0
            out[model] = latents_in(save)
    finally:
        torch.set_num_threads(threads)
    return out


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return float((a - b).norm() / b.norm())


@pytest.mark.slow
def test_two_processes_every_mode_gives_the_single_process_latents(folders, image_path, single, tmp_path):
    runs = []
    for n, (model, flags) in enumerate(CASES.values()):
        runs.append(argv(folders[model], tmp_path / f"case{n}", image_of(model, image_path), *flags))
        runs[-1] += ["--dist-timeout", "900"]
    cases_file = tmp_path / "cases.json"
    cases_file.write_text(json.dumps(runs))
    # this file runs as the ranks' script: its folder is their sys.path[0], the repository root (for the launcher's
    # `benchmarks` import) is not, whatever the installed package gives
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    job = launch(2, [__file__, str(cases_file)], env={"PYTHONPATH": path}, timeout=TIMEOUT_S, log_dir=tmp_path / "logs")
    assert job.ok, job.failure_message()
    errors = {case: rel(latents_in(tmp_path / f"case{n}"), single[CASES[case][0]]) for n, case in enumerate(CASES)}
    print("\n".join(f"{case}: rel {err:.2e}" for case, err in errors.items()))
    bounds = {case: TOL_RING if "--ring-degree" in flags else 0.0 for case, (_, flags) in CASES.items()}
    assert all(errors[case] <= bounds[case] for case in CASES), errors


@pytest.mark.slow
def test_sample_video_on_four_processes_ring_x_cfg_parallel_sharded(folders, image_path, single, tmp_path):
    model, flags = FOUR
    args = argv(folders[model], tmp_path / "out", image_of(model, image_path), *flags, "--dist-timeout", "900")
    job = launch(4, ["sample_video.py", *args], timeout=TIMEOUT_S, log_dir=tmp_path / "logs")
    assert job.ok, job.failure_message()
    assert len(list((tmp_path / "out").glob("*.mp4"))) == 1
    err = rel(latents_in(tmp_path / "out"), single[model])
    print(f"4 processes, {' '.join(flags)}: rel {err:.2e}")
    assert err <= TOL_RING, err


@pytest.fixture
def one_rank_job():
    """A process group of this process alone (gloo, in memory), for the rank-0 side of the broadcasts."""
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


def text15(seed: int) -> Text15Embeddings:
    g = torch.Generator().manual_seed(seed)
    mask = torch.tensor([[1, 1, 1, 0]])
    return Text15Embeddings(torch.randn(1, 4, 8, generator=g), mask, torch.randn(1, 3, 5, generator=g), mask[:, :3])


@pytest.mark.parametrize("cfg_scale", [1.0, 6.0])
def test_the_runner_sends_every_field_of_its_embeddings_class(one_rank_job, cfg_scale):
    """Rank 0's side of `Torchrun.encode`: what it sends is rebuilt field by field (4 tensors per prompt for 1.5,
    the negative prompt's after the prompt's with real CFG); embeddings of another class than the runner's are
    refused before anything is sent, instead of leaving the other ranks waiting for tensors that never come."""
    req = SimpleNamespace(sampling=SimpleNamespace(cfg_scale=cfg_scale))
    mesh = SimpleNamespace(is_main=True, device=torch.device("cpu"))
    runner = Torchrun(req, mesh, Text15Embeddings)  # type: ignore[arg-type]  # the fields encode reads
    pair = (text15(1), text15(2) if cfg_scale > 1 else None)
    cond, uncond = runner.encode(lambda: pair)
    for got, want in zip((cond, uncond), pair, strict=True):
        assert (got is None) == (want is None)
        if want is not None:
            assert type(got) is Text15Embeddings
            assert all(torch.equal(getattr(got, f), getattr(want, f)) for f in vars(want))
    v1 = TextEmbeddings(torch.zeros(1, 4, 8), torch.ones(1, 4, dtype=torch.int64), torch.zeros(1, 3))
    with pytest.raises(TypeError, match=r"broadcasts \d Text15Embeddings; the text encoding gave TextEmbeddings"):
        runner.encode(lambda: (v1, v1 if cfg_scale > 1 else None))
    with pytest.raises(TypeError, match="gave Text15Embeddings"):  # a negative prompt missing (or one too many)
        runner.encode(lambda: (text15(1), None if cfg_scale > 1 else text15(2)))


@pytest.fixture
def nothing_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    def forbidden(*_a, **_k):
        raise AssertionError("loaded something before checking the degrees")

    monkeypatch.setattr(pipeline, "encode_text", forbidden)
    monkeypatch.setattr(pipeline, "load_denoiser", forbidden)
    monkeypatch.setattr(pipeline.dist_steps, "start", forbidden)


@pytest.mark.parametrize(
    ("model", "world", "flags", "says"),
    [
        # Ulysses splits the heads (the release has 16, the tiny DiT 4)
        ("t2v", 8, ["--ulysses-degree", "8"], "--ulysses-degree: 8 does not divide the DiT's 4 attention heads"),
        # the step-distilled weights run without real CFG (guidance 1): no second pass to split
        ("distilled", 2, ["--cfg-parallel"], "--cfg-parallel: needs --cfg-scale > 1"),
    ],
)
def test_what_cannot_work_exits_2_in_one_line_before_loading(
    folders, image_path, tmp_path, monkeypatch, capsys, nothing_loads, model, world, flags, says
):
    env = {"RANK": "0", "WORLD_SIZE": str(world), "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1"}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    out = tmp_path / "out"
    assert cli.main(argv(folders[model], out, image_of(model, image_path), *flags)) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "| INFO " not in line]  # the version's notes come first
    assert len(lines) == 1 and says in lines[0], err
    assert not out.exists()


if __name__ == "__main__":
    worker(Path(sys.argv[1]))
