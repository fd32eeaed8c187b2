"""--prompt-file: parsing and its errors, batch runs on the tiny model, re-runs, interrupt + resume, failing entries,
recorded random seeds, and the data-parallel split over 2 torchrun processes (gloo, CPU)."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from torchrun_launch import launch  # tests/ is on sys.path under pytest

from hyvideo import batch, cli, io, pipeline, sidecar
from hyvideo.io import slugify
from hyvideo.tiny import write_tiny_model

ROOT = Path(__file__).resolve().parents[1]
LONG = " ".join(f"word{i} and a slash / here" for i in range(150))  # far more than 256 LLM and 77 CLIP tokens


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("tiny") / "m", "official", seed=1)


def flags(base: Path, out: Path, prompt_file: Path, *extra: str) -> list[str]:
    return [
        "--prompt-file", str(prompt_file), "--model-base", str(base), "--save-path", str(out), "--device", "cpu",
        "--video-size", "32", "32", "--video-length", "5", "--infer-steps", "1", "--precision", "fp32",
        "--vae-precision", "fp32", "--text-encoder-precision", "fp32", "--text-encoder-precision-2", "fp32", *extra,
    ]  # fmt: skip


def write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def videos(out: Path) -> list[str]:
    return sorted(p.name for p in out.glob("*.mp4"))


# ---------------------------------------------------------------------------------------------------------------
# Runs on the tiny model
# ---------------------------------------------------------------------------------------------------------------
def test_batch_writes_every_entry_with_sidecars_and_rerun_skips_without_loading(model, tmp_path, capsys, monkeypatch):
    pf = write(
        tmp_path / "p.jsonl",
        [
            json.dumps({"prompt": "a cat / a dog", "num_videos": 2}),
            "# a comment",
            json.dumps({"prompt": "猫が歩く ünïcödé", "seed": 123, "video_size": [48, 32]}),
            json.dumps({"prompt": LONG}),
        ],
    )
    out = tmp_path / "out"
    assert cli.main(flags(model, out, pf, "--seed", "7")) == 0
    err = capsys.readouterr().err
    assert "truncated" in err and "LLM text encoder" in err and "CLIP text encoder" in err  # the long prompt
    expected = [
        "0001_seed7_a_cat_a_dog.mp4",
        "0001_seed8_a_cat_a_dog.mp4",
        f"0003_seed123_{slugify('猫が歩く ünïcödé')}.mp4",
        f"0004_seed9_{slugify(LONG)}.mp4",
    ]
    assert videos(out) == sorted(expected)
    for name in expected:
        record = sidecar.read(sidecar.sidecar_path(out / name))
        assert record is not None
        line = int(name[:4])
        assert record["batch"]["line"] == line and record["seed"] == int(name.split("_seed")[1].split("_")[0])
        assert record["prompt"] == {1: "a cat / a dog", 3: "猫が歩く ünïcödé", 4: LONG}[line]
        assert (record["height"], record["width"]) == ((48, 32) if line == 3 else (32, 32))
        assert record["video_length"] == 5 and record["infer_steps"] == 1
    assert "4 entries" not in err and "3 entries: 3 generated" in err  # the summary table
    assert not list(out.glob(".*tmp*"))

    def must_not_load(*a, **k):
        raise AssertionError("a re-run of a finished batch must not load models")

    monkeypatch.setattr(pipeline, "load_denoiser", must_not_load)
    monkeypatch.setattr(pipeline, "load_decoder", must_not_load)
    monkeypatch.setattr(pipeline, "text_config", must_not_load)
    mtimes = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    assert cli.main(flags(model, out, pf, "--seed", "7")) == 0
    assert "3 finished earlier (skipped)" in capsys.readouterr().err
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == mtimes


def test_interrupt_then_resume_gives_every_video_once(model, tmp_path, monkeypatch, capsys):
    pf = write(tmp_path / "p.txt", ["first", "second", "third", "fourth"])
    out = tmp_path / "out"
    real = pipeline.denoise
    calls = []

    def stop_on_third(*a, **k):
        calls.append(a[4])  # seed
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(pipeline, "denoise", stop_on_third)
    assert cli.main(flags(model, out, pf, "--seed", "0")) == 130
    assert videos(out) == ["0001_seed0_first.mp4", "0002_seed1_second.mp4"]
    assert "run the same command again to resume" in capsys.readouterr().err
    assert not list(out.glob(".*tmp*"))  # the interrupted video left nothing behind

    calls.clear()
    monkeypatch.setattr(pipeline, "denoise", lambda *a, **k: calls.append(a[4]) or real(*a, **k))
    assert cli.main(flags(model, out, pf, "--seed", "0")) == 0
    assert calls == [2, 3]  # only the unfinished entries ran
    assert videos(out) == ["0001_seed0_first.mp4", "0002_seed1_second.mp4", "0003_seed2_third.mp4",
                           "0004_seed3_fourth.mp4"]  # fmt: skip
    assert len(list(out.glob("*.json"))) == 4


def test_failing_entry_is_reported_and_the_batch_goes_on(model, tmp_path, monkeypatch, capsys):
    pf = write(tmp_path / "p.txt", ["good one", "bad one", "good two"])
    out = tmp_path / "out"
    real = pipeline.denoise

    def fail_bad(model_, cond, uncond, req, seed, device):
        if req.prompt == "bad one":
            raise FloatingPointError("latents became NaN")
        return real(model_, cond, uncond, req, seed, device)

    monkeypatch.setattr(pipeline, "denoise", fail_bad)
    assert cli.main(flags(model, out, pf, "--seed", "1")) == 1
    err = capsys.readouterr().err
    assert videos(out) == ["0001_seed1_good_one.mp4", "0003_seed3_good_two.mp4"]
    assert "line 2: failed" in err and "FloatingPointError: latents became NaN" in err
    assert "1 failed" in err and "failed lines: 2" in err


def test_entry_that_cannot_fit_fails_before_loading_and_the_rest_run(model, tmp_path, monkeypatch, capsys):
    """The memory preflight runs per entry before any model loads: the impossible entry is reported failed with the
    reason, the others are generated (models loaded once)."""
    pf = write(tmp_path / "p.jsonl", [
        json.dumps({"prompt": "small"}),
        json.dumps({"prompt": "huge", "video_size": [8192, 8192], "video_length": 257}),  # ~0.3 TB: never fits
    ])  # fmt: skip
    out = tmp_path / "out"
    loads = []
    real = pipeline.load_denoiser
    monkeypatch.setattr(pipeline, "load_denoiser", lambda *a, **k: loads.append(1) or real(*a, **k))
    assert cli.main(flags(model, out, pf, "--seed", "1")) == 1
    err = capsys.readouterr().err
    assert videos(out) == ["0001_seed1_small.mp4"] and loads == [1]
    assert "line 2: not enough memory" in err and "--offload block" in err
    assert "1 failed" in err and "failed lines: 2" in err
    assert "largest entry's memory estimate" in err


def test_random_seed_is_recorded_and_reused_on_resume(model, tmp_path, monkeypatch):
    pf = write(tmp_path / "p.jsonl", [json.dumps({"prompt": "a fox", "num_videos": 2})])
    out = tmp_path / "out"
    real = pipeline.denoise
    calls = []

    def stop_on_second(*a, **k):
        calls.append(a[4])
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(pipeline, "denoise", stop_on_second)
    assert cli.main(flags(model, out, pf)) == 130  # no --seed: a random one
    [first] = videos(out)
    base = int(first.split("_seed")[1].split("_")[0])
    record = sidecar.read(sidecar.sidecar_path(out / first))
    assert record["batch"]["base_seed"] == base and record["batch"]["seed_was_random"]
    monkeypatch.setattr(pipeline, "denoise", real)
    assert cli.main(flags(model, out, pf)) == 0  # draws another random seed, but the recorded one wins
    assert videos(out) == [first, f"0001_seed{base + 1}_a_fox.mp4"]


def test_data_parallel_two_processes_resume_and_write_each_entry_once(model, tmp_path, monkeypatch):
    """An interrupted single-process run, resumed by torchrun --nproc_per_node 2 (gloo on CPU): entry i goes to
    rank i % 2, finished entries are skipped, every file exists exactly once."""
    pf = write(tmp_path / "p.txt", [f"prompt number {i}" for i in range(5)])
    out = tmp_path / "out"
    real = pipeline.denoise
    calls = []

    def stop_on_third(*a, **k):
        calls.append(a[4])
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(pipeline, "denoise", stop_on_third)
    assert cli.main(flags(model, out, pf, "--seed", "3")) == 130
    assert len(videos(out)) == 2
    argv = [str(ROOT / "sample_video.py"), *flags(model, out, pf, "--seed", "3")]
    job = launch(2, argv, env={"OMP_NUM_THREADS": "1"}, timeout=900, cwd=tmp_path, log_dir=tmp_path / "logs")
    assert job.ok, job.failure_message()
    names = videos(out)
    assert names == [f"{i + 1:04d}_seed{3 + i}_prompt_number_{i}.mp4" for i in range(5)]
    for i, name in enumerate(names):
        parallel = sidecar.read(sidecar.sidecar_path(out / name))["runtime"]["parallel"]
        expect = {"world_size": 1, "rank": 0} if i < 2 else {"world_size": 2, "rank": i % 2}
        assert parallel == {**expect, "ulysses_degree": 1, "ring_degree": 1}, name
    # one summary for both ranks, printed by rank 0
    rank0 = job.rank_stderr(0)
    assert "5 entries: 3 generated, 2 finished earlier (skipped), 0 failed" in rank0, rank0[-2000:]
    assert "entries:" not in job.rank_stderr(1), job.rank_stderr(1)[-2000:]


def test_disk_full_stops_the_batch(model, tmp_path, monkeypatch, capsys):
    """A full disk would fail every later entry too: the batch stops (exit 1) and leaves no partial files; the
    computed latents of the entry that failed are kept (complete, atomic) for --decode-latents."""
    pf = write(tmp_path / "p.txt", ["one", "two", "three"])
    out = tmp_path / "out"
    calls = []
    real = pipeline.denoise
    monkeypatch.setattr(pipeline, "denoise", lambda *a, **k: calls.append(1) or real(*a, **k))

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(io, "write_mp4", full)
    assert cli.main(flags(model, out, pf, "--seed", "0")) == 1
    assert len(calls) == 1 and [p.name for p in out.iterdir()] == ["0001_seed0_one.latents.safetensors"]
    err = capsys.readouterr().err
    assert "stopping: free disk space" in err and "latents are kept in" in err


def test_static_split_by_entry_index(monkeypatch):
    env = {"RANK": "1", "WORLD_SIZE": "3", "LOCAL_RANK": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    where = batch.ranks()
    assert where == batch.Ranks(1, 3)
    items = [batch.BatchItem(i, i + 1, None, False) for i in range(8)]  # type: ignore[arg-type]
    assert [it.index for it in items if where.owns(it)] == [1, 4, 7]
    assert batch.rank_device("cuda") == "cuda:1" and batch.rank_device("cuda:0") == "cuda:0"
    monkeypatch.delenv("MASTER_ADDR")  # not a torchrun job: one process does everything
    assert batch.ranks() == batch.Ranks(0, 1)


GATHER_RANK = """
import sys, torch.distributed as dist
from datetime import timedelta
from hyvideo import batch
rank, store = int(sys.argv[1]), sys.argv[2]
dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2, timeout=timedelta(minutes=5))
mine = [batch.ItemResult(rank + 1, rank, f"p{rank}", [rank], "done", rank=rank)]
everyone = batch._gather(mine, batch.Ranks(rank, 2))
assert [(r.index, r.rank) for r in everyone] == [(0, 0), (1, 1)], everyone
assert not dist.is_initialized(), "the gather left this rank in the process group"
print("left the group")
"""


def test_data_parallel_ranks_leave_the_group_after_the_gather(tmp_path):
    """Each rank gets every rank's results, then leaves the process group at once: a process that exits with its
    gloo group alive can abort in the group's teardown (SIGABRT, 'terminate called without an active exception';
    seen in about 1 exit in 10 of a 2-rank gather)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-c", GATHER_RANK]
    store = str(tmp_path / "store")
    procs = [subprocess.Popen([*cmd, str(r), store], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for r in range(2)]  # fmt: skip
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0 and out.strip() == "left the group", err[-2000:]
