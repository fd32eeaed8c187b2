"""Batch mode vs one process per prompt: `python -m benchmarks.bench_batch [--prompts N] [--nproc P]`.

On the tiny random model (CPU), the same N prompts are generated
- as N separate `sample_video.py --prompt` runs (each loads the text encoders, the DiT and the VAE),
- as one `sample_video.py --prompt-file` run (everything loads once),
- as the same prompt file under `torchrun --nproc_per_node P` (data parallel, each process takes every P-th prompt),
and the finished batch is run again (everything skipped, no model loaded). Wall-clock seconds per case, measured
from the outside (process start-up included, as a user sees it).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FLAGS = ["--video-size", "64", "64", "--video-length", "9", "--infer-steps", "4", "--seed", "1", "--device", "cpu",
         "--precision", "fp32", "--vae-precision", "fp32", "--text-encoder-precision", "fp32",
         "--text-encoder-precision-2", "fp32"]  # fmt: skip


def timed(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])} ... failed: {proc.stderr[-1500:]}")
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.bench_batch")
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--nproc", type=int, default=2)
    args = ap.parse_args(argv)
    from hyvideo.tiny import write_tiny_model

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = write_tiny_model(tmp / "model", "official", seed=0)
        prompts = [f"prompt number {i}, a walk in the park" for i in range(args.prompts)]
        (tmp / "prompts.txt").write_text("\n".join(prompts) + "\n")
        script = [sys.executable, str(ROOT / "sample_video.py"), "--model-base", str(model), *FLAGS]
        rows = []
        separate = sum(timed([*script, "--prompt", p, "--save-path", str(tmp / "one")]) for p in prompts)
        rows.append((f"{args.prompts} separate runs (--prompt)", separate))
        batch = [*script, "--prompt-file", str(tmp / "prompts.txt"), "--save-path", str(tmp / "batch")]
        rows.append(("one --prompt-file run", timed(batch)))
        rows.append(("re-run of the finished batch (all skipped)", timed(batch)))
        torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={args.nproc}"]
        dp = [*torchrun, *batch[1:-1], str(tmp / "dp")]
        rows.append((f"--prompt-file under torchrun, {args.nproc} processes", timed(dp)))
    print(f"{args.prompts} prompts, tiny model, 64x64, 9 frames, 4 steps, CPU; load average {os.getloadavg()[0]:.1f}")
    print("| case | wall s |\n|---|---|")
    for name, seconds in rows:
        print(f"| {name} | {seconds:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
