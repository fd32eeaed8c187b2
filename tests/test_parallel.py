"""Multi-process sampling on CPU (gloo) under torchrun: parity with one process, one MP4, failures, bad degrees.

Process start-up dominates the cost (torch import per rank), so each torchrun launch checks many cases:
tests/parallel_worker.py runs every layout given to it and reports the worst relative error over ranks.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import time
from pathlib import Path

import pytest
import torch
from torchrun_launch import ROOT, TORCHRUN_ENV, Launch, first_error, launch, launch_cli_cases, start

from hyvideo import io, pipeline
from hyvideo.checkpoints.layout import locate
from hyvideo.cli import main, parse_request
from hyvideo.modules.attention import attention
from hyvideo.parallel.attention import attention_lse, merge_lse

WORKER = ROOT / "tests" / "parallel_worker.py"
TOL = 1e-5

pytestmark = pytest.mark.slow


def torchrun(tmp_path: Path, nproc: int, *args: str, timeout: float = 900) -> Launch:
    """A torchrun job with per-rank logs under tmp_path; the timeout is per launch (4 ranks on 2 busy cores)."""
    return launch(nproc, list(args), timeout=timeout, log_dir=tmp_path / "torchrun-logs")


def run_worker(tmp_path: Path, nproc: int, *layouts: str) -> dict[str, float]:
    out = tmp_path / "errors.json"
    run = torchrun(tmp_path, nproc, str(WORKER), str(out), str(tmp_path / "weights"), *layouts)
    assert run.ok, run.failure_message()
    return json.loads(out.read_text())


# ---------------------------------------------------------------------------------------------------------------
# The merge rule, in one process
# ---------------------------------------------------------------------------------------------------------------
def test_lse_merge_of_key_chunks_equals_full_attention() -> None:
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, n, 3, 8, generator=g) for n in (5, 11, 11))
    valid = torch.ones(2, 4, dtype=torch.bool)
    valid[0, 2:] = False  # sample 0: the last chunk has two hidden keys
    parts = [attention_lse(q, k[:, :4], v[:, :4]), attention_lse(q, k[:, 4:7], v[:, 4:7])]
    parts.append(attention_lse(q, k[:, 7:], v[:, 7:], valid))
    keep = torch.cat([torch.ones(2, 7, dtype=torch.bool), valid], 1)
    for b in range(2):  # reference: plain attention over the allowed keys of each sample
        want = attention(q[b : b + 1], k[b : b + 1, keep[b]], v[b : b + 1, keep[b]])
        got = merge_lse(parts)[b : b + 1].flatten(2)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    _, lse = attention_lse(q, k, v)
    scores = torch.einsum("blhd,bmhd->bhlm", q, k) / 8**0.5
    torch.testing.assert_close(lse, scores.logsumexp(-1), rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------------------------
# Parity with one process: final latents after Euler steps, every layout, grids that divide and that pad
# ---------------------------------------------------------------------------------------------------------------
def check(errors: dict[str, float], expected_layouts: list[str]) -> None:
    bad = {case: err for case, err in errors.items() if not err <= TOL}
    assert not bad, f"relative error above {TOL}: {bad}"
    for layout in expected_layouts:
        cases = [c for c in errors if c.startswith(layout + " ")]
        assert any("divides" in c for c in cases) and any("pads" in c for c in cases), (layout, sorted(errors))


def test_two_processes_ulysses_ring_cfg_parallel_match_one_process(tmp_path: Path) -> None:
    # U=2 with sharded weights, R=2 with replicated weights, cond/uncond split over the two processes
    errors = run_worker(tmp_path, 2, "2,1,1,1", "1,2,1,0", "1,1,2,1")
    check(errors, ["U2 R1 C1 sharded", "U1 R2 C1", "U1 R1 C2 sharded"])
    assert {c.split(" cfg ")[-1] for c in errors if c.startswith("U2 R1")} >= {"1", "3"}  # with and without CFG


def test_four_processes_ulysses_x_ring_matches_one_process(tmp_path: Path) -> None:
    errors = run_worker(tmp_path, 4, "2,2,1,1", "1,4,1,0")  # U=2 x R=2 sharded; a ring of 4 (one chunk all padding)
    check(errors, ["U2 R2 C1 sharded", "U1 R4 C1"])
    assert {
        "U2 R2 C1 sharded pads cfg 1",
        "U2 R2 C1 sharded pads cfg 3",
        "U2 R2 C1 sharded pads batch 2 masked",
    } <= set(errors)


# ---------------------------------------------------------------------------------------------------------------
# The CLI under torchrun
# ---------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def model_base(tiny_v1) -> Path:
    return tiny_v1("official", 3)  # the session's (conftest.py), read only: a test that breaks a file copies it


def cli_args(base: Path, out: Path, *extra: str) -> list[str]:
    return [
        "--model-base", str(base), "--prompt", "a cat walks on the grass", "--video-size", "64", "96",
        "--video-length", "9", "--infer-steps", "2", "--seed", "7", "--save-path", str(out), "--precision", "fp32",
        "--vae-precision", "fp32", "--text-encoder-precision", "fp32", "--text-encoder-precision-2", "fp32",
        "--device", "cpu", *extra,
    ]  # fmt: skip


def test_cli_under_torchrun_writes_one_mp4_with_single_process_latents(model_base: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = cli_args(model_base, out, "--ring-degree", "2", "--cfg-scale", "2.5", "--save-latents")
    run = torchrun(tmp_path, 2, "sample_video.py", *args)
    assert run.ok, run.failure_message()
    videos = list(out.glob("*.mp4"))
    assert len(videos) == 1 and len(list(out.glob("*.latents.safetensors"))) == 1
    rank0, rank1 = run.rank_stderr(0), run.rank_stderr(1)  # rank 0 alone logs
    assert rank0.count("text encode:") == 1 and rank0.count("wrote ") == 1, rank0[-2000:]
    assert "text encode:" not in rank1 and "wrote " not in rank1, rank1[-2000:]
    got, _ = io.load_latents(next(out.glob("*.latents.safetensors")))

    req = parse_request(cli_args(model_base, tmp_path / "ref", "--cfg-scale", "2.5"))
    paths = locate(req.model_base)
    cond, uncond = pipeline.encode_text(req, paths, torch.device("cpu"))
    model = pipeline.load_denoiser(req, paths, torch.device("cpu"))
    want = pipeline.denoise(model, cond, uncond, req, req.seed, torch.device("cpu"))
    assert float((got - want).norm() / want.norm()) <= TOL


def _children(pid: int) -> list[int]:
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            kids.append(int(stat.parent.name))
    return kids


def _rank_of(pid: int) -> int | None:
    try:
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    ranks = [int(e[5:]) for e in env if e.startswith(b"RANK=")]
    return ranks[0] if ranks else None


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_a_killed_rank_ends_every_process_nonzero_within_60s(model_base: Path, tmp_path: Path) -> None:
    args = cli_args(model_base, tmp_path / "out", "--ulysses-degree", "2")
    args[args.index("--infer-steps") + 1] = "100000"
    job = start(2, ["sample_video.py", *args], log_dir=tmp_path / "torchrun-logs")
    try:
        deadline = time.monotonic() + 600  # start-up of two ranks on a loaded 2-core machine
        while "load DiT:" not in job.rank_stderr(0):  # rank 0 logs this just before denoising starts
            assert job.proc.poll() is None and time.monotonic() < deadline, job.wait(1).failure_message()
            time.sleep(0.2)
        time.sleep(1.0)
        workers = {rank: pid for pid in _children(job.proc.pid) if (rank := _rank_of(pid)) is not None}
        assert set(workers) == {0, 1}, workers
        os.kill(workers[1], signal.SIGKILL)
        killed_at = time.monotonic()
        job.wait(60)
        assert not job.timed_out and time.monotonic() - killed_at < 60, job.failure_message()
        assert job.returncode != 0
        while any(_alive(pid) for pid in workers.values()) and time.monotonic() - killed_at < 60:
            time.sleep(0.2)
        assert not any(_alive(pid) for pid in workers.values())
    finally:
        if job.proc.poll() is None:
            job.kill()
            job.wait()
    text = job.stderr  # torchrun's summary names the failed rank
    assert re.search(r"rank\s*:\s*1 \(local_rank: 1\)", text) or "rank 1" in text, job.failure_message()
    assert not list((tmp_path / "out").glob("*.mp4"))


def test_a_failure_on_rank_0_alone_ends_the_ranks_waiting_for_it(model_base: Path, tmp_path: Path) -> None:
    """Rank 0 alone loads the text encoders; a broken CLIP file fails it while rank 1 waits in the broadcast of the
    embeddings. Rank 0 reports and leaves at once, so rank 1's wait fails too (long before --dist-timeout)."""
    base = tmp_path / "model"
    shutil.copytree(model_base, base)
    (base / "text_encoder_2" / "model.safetensors").write_bytes(b"not a safetensors file")
    started = time.monotonic()
    run = torchrun(tmp_path, 2, "sample_video.py", *cli_args(base, tmp_path / "out", "--ulysses-degree", "2"))
    assert run.returncode != 0 and not run.timed_out, run.failure_message()
    assert time.monotonic() - started < 450, run.failure_message()  # half the 900 s --dist-timeout: it did not wait
    rank0 = run.rank_stderr(0)
    assert "error: rank 0:" in rank0 and "text_encoder_2" in rank0, run.failure_message()
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


# ---------------------------------------------------------------------------------------------------------------
# The launcher itself (tests/torchrun_launch.py): the failing rank's first error, and a hard timeout
# ---------------------------------------------------------------------------------------------------------------
FAILING_RANK = """
import sys, time
from torch.distributed.elastic.multiprocessing.errors import record

@record
def main():
    import os
    if os.environ["RANK"] == "1":
        print("noise " * 2000, file=sys.stderr)
        raise ValueError("boom on rank 1")
    time.sleep(120)  # rank 0 would wait for rank 1; torchrun stops it when rank 1 fails

main()
"""


def test_first_error_starts_at_the_traceback_or_error_line() -> None:
    noise = "rank 1 layout 2,2: config.json existed: True\n" + "progress\n" * 500
    c10d = '[rank1]: Traceback (most recent call last):\n[rank1]:   File "w.py", line 74, in main\n[rank1]: Runtime'
    assert first_error(noise + c10d + "\n" + "later noise\n" * 500).startswith("[rank1]: Traceback")
    assert first_error(noise + "error: rank 0: FileNotFoundError: x\n").startswith("error: rank 0: FileNotFoundError")
    assert first_error("x" * 5000, limit=100) == "x" * 100  # no error line: the end


def test_launcher_reports_the_failing_rank_first_error_despite_noise(tmp_path: Path) -> None:
    script = tmp_path / "fail.py"
    script.write_text(FAILING_RANK)
    run = launch(2, [str(script)], timeout=300, log_dir=tmp_path / "logs")
    assert not run.ok and not run.timed_out
    message = run.failure_message()
    assert "ValueError: boom on rank 1" in message and "first failure by error-file time: rank 1" in message, message
    assert "boom" not in run.rank_stderr(0)  # per-rank files: rank 1's output is not mixed into rank 0's


def test_launcher_kills_every_rank_after_its_timeout(tmp_path: Path) -> None:
    script = tmp_path / "hang.py"
    script.write_text("import os, time\nprint(os.getpid(), flush=True)\ntime.sleep(600)\n")
    job = start(2, [str(script)], log_dir=tmp_path / "logs")
    deadline = time.monotonic() + 300  # the agent and both ranks start (slow on a loaded machine)
    while not all(job.rank_stdout(r).strip() for r in range(2)):
        assert job.proc.poll() is None and time.monotonic() < deadline, job.wait(1).failure_message()
        time.sleep(0.2)
    pids = [int(job.rank_stdout(r).split()[0]) for r in range(2)]
    job.wait(timeout=2)  # both ranks sleep for 600 s: this times out
    assert job.timed_out and not job.ok and "timed out" in job.failure_message()
    time.sleep(1.0)
    assert not any(_alive(pid) for pid in pids), pids
    assert not _alive(job.proc.pid)


def test_cli_cases_report_the_failing_case_and_stop(model_base: Path, tmp_path: Path) -> None:
    """tests/cli_worker.py (one process: the worker's logic): a case the CLI refuses stops the job with the case's
    number in the rank's error file; its log is its own (Launch.case_stderr) and the next case never starts. The
    cases that pass are every parallel test's."""
    good = cli_args(model_base, tmp_path / "out")
    bad = cli_args(model_base, tmp_path / "bad", "--infer-steps", "0")  # refused before loading: exit 2
    job = launch_cli_cases(1, [bad, good], tmp_path / "logs", timeout=900)
    assert not job.ok and not job.timed_out, job.failure_message()
    message = job.failure_message()
    assert "first failure by error-file time: rank 0" in message and "case 0: the CLI exited 2" in message, message
    assert "--infer-steps" in job.case_stderr(0, 0) and job.case_stderr(0, 1) == "", job.rank_stderr(0)[-3000:]
    assert not (tmp_path / "out").exists() and not (tmp_path / "bad").exists()


# ---------------------------------------------------------------------------------------------------------------
# Bad degrees: exit 2 with one line, before anything loads
# ---------------------------------------------------------------------------------------------------------------
@pytest.fixture
def nothing_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    def forbidden(*_a, **_k):
        raise AssertionError("loaded something before checking the degrees")

    monkeypatch.setattr(pipeline, "encode_text", forbidden)
    monkeypatch.setattr(pipeline, "load_denoiser", forbidden)
    monkeypatch.setattr(pipeline.dist_steps, "start", forbidden)


def fake_torchrun(monkeypatch: pytest.MonkeyPatch, world: int) -> None:
    for key, value in {"RANK": "0", "WORLD_SIZE": str(world), "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("MASTER_PORT", "1")


@pytest.mark.parametrize(
    ("world", "extra", "flag", "says"),
    [
        (None, ["--ulysses-degree", "2"], "--ulysses-degree", "torchrun --nproc_per_node 2"),
        (None, ["--ring-degree", "3"], "--ring-degree", "torchrun --nproc_per_node 3"),
        (None, ["--cfg-parallel", "--cfg-scale", "2"], "--cfg-parallel", "torchrun --nproc_per_node 2"),
        (4, ["--ulysses-degree", "2"], "--ulysses-degree", "torchrun started 4"),
        (2, ["--ring-degree", "2", "--cfg-parallel", "--cfg-scale", "2"], "--ulysses-degree", "= 4 process"),
        (2, [], "--ulysses-degree", "torchrun started 2"),
        (2, ["--cfg-parallel"], "--cfg-parallel", "--cfg-scale > 1"),
        (4, ["--ulysses-degree", "4"], "--ulysses-degree", "does not divide the DiT's 2 attention heads"),
        (2, ["--ulysses-degree", "2", "--dist-timeout", "0"], "--dist-timeout", "> 0"),
    ],
)
def test_bad_degrees_exit_2_before_loading(
    world, extra, flag, says, model_base, tmp_path, monkeypatch, capsys, nothing_loads
) -> None:
    for key in TORCHRUN_ENV:
        monkeypatch.delenv(key, raising=False)
    if world is not None:
        fake_torchrun(monkeypatch, world)
    out = tmp_path / "out"
    assert main(cli_args(model_base, out, *extra)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and flag in err and says in err, err
    assert not out.exists()
