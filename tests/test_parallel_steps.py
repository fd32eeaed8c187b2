"""The runner (hyvideo.parallel.steps): which process runs which step, and how a torchrun job ends.

The end of a job must not make any rank wait for another's decode: every rank leaves the process group right after
the last collective (the end of denoising), then rank 0 alone decodes and writes. Checked here as a protocol (a
recording runner around the real pipeline, one process) and for real (2 processes, gloo, a decode slower than
--dist-timeout)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from hyvideo import pipeline
from hyvideo.cli import parse_request
from hyvideo.parallel import steps
from hyvideo.sampling import with_cfg
from hyvideo.tiny import write_tiny_model

ROOT = Path(__file__).resolve().parents[1]
TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("tiny") / "m", "official", seed=2)


def args(base: Path, out: Path, *extra: str) -> list[str]:
    return [
        "--model-base", str(base), "--prompt", "a cat", "--video-size", "32", "48", "--video-length", "5",
        "--infer-steps", "2", "--seed", "3", "--save-path", str(out), "--precision", "fp32", "--vae-precision",
        "fp32", "--text-encoder-precision", "fp32", "--text-encoder-precision-2", "fp32", "--device", "cpu", *extra,
    ]  # fmt: skip


def test_single_process_runner_runs_every_step_here(model: Path, tmp_path: Path) -> None:
    req = parse_request(args(model, tmp_path / "o"))
    runner = steps.start(req)
    assert type(runner) is steps.Local and runner.is_main and runner.device == torch.device("cpu")
    assert runner.encode(lambda: ("c", None)) == ("c", None)
    assert runner.weight_reader(req) is None and runner.wrap("model") == "model"  # type: ignore[arg-type]
    fn = runner.guided(lambda x, t, emb: x * emb, 1.0, 3.0, 2.0)  # type: ignore[arg-type]
    ref = with_cfg(lambda x, t, emb: x * emb, 1.0, 3.0, 2.0)  # type: ignore[arg-type]
    x = torch.ones(2)
    assert torch.equal(fn(x, 0.5), ref(x, 0.5))


class Recording(steps.Local):
    """A runner that records the pipeline's calls, as rank 0 (main) or as another rank."""

    def __init__(self, device: torch.device, is_main: bool, events: list[str]) -> None:
        super().__init__(device)
        self.is_main = is_main
        self.events = events

    def encode(self, encode):
        self.events.append("encode")
        return encode()

    def finish(self) -> None:
        self.events.append("finish")


@pytest.mark.parametrize("is_main", [True, False])
def test_the_job_ends_after_the_last_collective_and_before_the_decode(
    model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, is_main: bool
) -> None:
    """The order of a run: the runner starts (under torchrun: joins the job, sets this rank's device), the memory
    preflight measures that device, then encode, denoise, finish; rank 0 alone decodes after the finish."""
    events: list[str] = []

    def start(req):
        events.append("start")
        return Recording(torch.device("cpu", 0), is_main, events)  # a device the request does not name

    monkeypatch.setattr(pipeline.dist_steps, "start", start)
    real_preflight, real_denoise, real_decode = pipeline.preflight, pipeline.denoise, pipeline.decode
    monkeypatch.setattr(
        pipeline, "preflight", lambda req, *a: events.append(f"preflight {req.device}") or real_preflight(req, *a)
    )
    monkeypatch.setattr(pipeline, "denoise", lambda *a: events.append("denoise") or real_denoise(*a))
    monkeypatch.setattr(pipeline, "decode", lambda *a: events.append("decode") or real_decode(*a))
    out = tmp_path / "o"
    written = pipeline.run(parse_request(args(model, out, "--num-videos", "2")))
    if is_main:
        assert events == ["start", "preflight cpu:0", "encode", "denoise", "denoise", "finish", "decode", "decode"]
        assert len(written) == 2 and all(p.is_file() for p in written)
    else:  # another rank: leaves with the job, decodes and writes nothing
        assert events == ["start", "preflight cpu:0", "encode", "denoise", "denoise", "finish"]
        assert written == [] and not out.exists()


SLOW_DECODE = """
import sys, time
from hyvideo import pipeline
from hyvideo.cli import main

real = pipeline.decode
def slow(vae, latents, *rest):
    time.sleep({sleep})  # longer than --dist-timeout: a wait on rank 0's decode would time out
    return real(vae, latents, *rest)
pipeline.decode = slow
raise SystemExit(main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_a_decode_longer_than_the_dist_timeout_ends_well(model: Path, tmp_path: Path) -> None:
    """2 processes (gloo): rank 0's decode takes longer than --dist-timeout. Rank 1 has left the job at the end of
    denoising, so nothing times out: exit 0 and one MP4. (The earlier design, a barrier after rank 0's writes,
    failed here with rank 1's barrier timing out.) The timeout is generous for the waits that remain (rank 1
    receiving the embeddings while rank 0 loads the text encoders) on a loaded machine."""
    timeout_s, sleep_s = 30, 40
    script = tmp_path / "slow_decode.py"
    script.write_text(textwrap.dedent(SLOW_DECODE.format(sleep=sleep_s)))
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if k not in TORCHRUN_ENV}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script)]
    cmd += args(model, out, "--ulysses-degree", "2", "--dist-timeout", str(timeout_s))
    started = time.monotonic()
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    errors = [line for line in proc.stderr.splitlines() if "error" in line.lower() or "Traceback" in line]
    assert proc.returncode == 0, "\n".join(errors[:20]) or proc.stderr[-3000:]
    assert len(list(out.glob("*.mp4"))) == 1
    assert time.monotonic() - started > sleep_s  # the slow decode really ran
