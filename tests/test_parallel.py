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
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from hyvideo import io, pipeline
from hyvideo.checkpoints.layout import locate
from hyvideo.cli import main, parse_request
from hyvideo.modules.attention import attention
from hyvideo.parallel.attention import attention_lse, merge_lse
from hyvideo.tiny import write_tiny_model

ROOT = Path(__file__).resolve().parents[1]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
WORKER = ROOT / "tests" / "parallel_worker.py"
TOL = 1e-5
TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")

pytestmark = pytest.mark.slow


def torchrun(nproc: int, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in TORCHRUN_ENV}
    cmd = [*TORCHRUN, "--nproc_per_node", str(nproc), *args]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def run_worker(tmp_path: Path, nproc: int, *layouts: str) -> dict[str, float]:
    out = tmp_path / "errors.json"
    proc = torchrun(nproc, str(WORKER), str(out), str(tmp_path / "weights"), *layouts)
    assert proc.returncode == 0, proc.stderr[-3000:]
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
def model_base(tmp_path_factory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("tiny") / "official", "official", seed=3)


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
    proc = torchrun(2, "sample_video.py", *args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    videos = list(out.glob("*.mp4"))
    assert len(videos) == 1 and len(list(out.glob("*.latents.safetensors"))) == 1
    assert proc.stderr.count("text encode:") == 1 and proc.stderr.count("wrote ") == 1  # rank 0 alone logs
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
    env = {k: v for k, v in os.environ.items() if k not in TORCHRUN_ENV}
    cmd = [*TORCHRUN, "--nproc_per_node", "2", "sample_video.py", *args]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stderr), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 180
        while not any("load DiT:" in line for line in lines):  # rank 0 logs this just before denoising starts
            assert proc.poll() is None and time.monotonic() < deadline, "".join(lines)[-3000:]
            time.sleep(0.2)
        time.sleep(1.0)
        workers = {rank: pid for pid in _children(proc.pid) if (rank := _rank_of(pid)) is not None}
        assert set(workers) == {0, 1}, workers
        os.kill(workers[1], signal.SIGKILL)
        killed_at = time.monotonic()
        code = proc.wait(timeout=60)
        assert time.monotonic() - killed_at < 60
        assert code != 0
        while any(_alive(pid) for pid in workers.values()) and time.monotonic() - killed_at < 60:
            time.sleep(0.2)
        assert not any(_alive(pid) for pid in workers.values())
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    reader.join(timeout=5)
    text = "".join(lines)
    assert re.search(r"rank\s*:\s*1 \(local_rank: 1\)", text) or "rank 1" in text, text[-3000:]
    assert not list((tmp_path / "out").glob("*.mp4"))


def test_a_failure_on_rank_0_alone_ends_the_ranks_waiting_for_it(model_base: Path, tmp_path: Path) -> None:
    """Rank 0 alone loads the text encoders; a broken CLIP file fails it while rank 1 waits in the broadcast of the
    embeddings. Rank 0 reports and leaves at once, so rank 1's wait fails too (long before --dist-timeout)."""
    base = tmp_path / "model"
    shutil.copytree(model_base, base)
    (base / "text_encoder_2" / "model.safetensors").write_bytes(b"not a safetensors file")
    started = time.monotonic()
    proc = torchrun(2, "sample_video.py", *cli_args(base, tmp_path / "out", "--ulysses-degree", "2"), timeout=240)
    assert proc.returncode != 0 and time.monotonic() - started < 200
    assert "error: rank 0:" in proc.stderr and "text_encoder_2" in proc.stderr, proc.stderr[-3000:]
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


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
