"""Peak host RAM of loading a DiT checkpoint, relative to the file size.

Writes a mid-size random DiT in the official layout (bf16 `{"module": sd}`) and the diffusers layout, then loads
each in a fresh subprocess and reports (peak RSS during load - RSS before load) / file size.

    .venv/bin/python -m benchmarks.bench_load [--hidden 1024 --heads 16 --double 6 --single 12]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import add_dit_size_args
from hyvideo.utils.host_memory import proc_kb


def _child(path: str, dtype: str) -> None:
    import torch

    from hyvideo.checkpoints.dit import load_dit

    before = proc_kb("VmRSS")
    t0 = time.perf_counter()
    model = load_dit(path, dtype=getattr(torch, dtype))
    seconds = time.perf_counter() - t0
    peak = proc_kb("VmHWM")
    with torch.no_grad():  # page every weight in, as the first forward does
        for p in model.parameters():
            p.float().sum()
    touched = proc_kb("VmHWM")
    nbytes = sum(p.numel() * p.element_size() for p in model.parameters())
    out = {"before_kb": before, "peak_kb": peak, "touched_kb": touched, "seconds": seconds, "model_bytes": nbytes}
    print(json.dumps(out))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_dit_size_args(ap)
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        return _child(*args.child)

    import torch

    from hyvideo.checkpoints.dit import save_dit_diffusers, save_dit_official
    from hyvideo.tiny import mid_dit_config, random_dit

    cfg = mid_dit_config(args.hidden, args.heads, args.double, args.single)
    with tempfile.TemporaryDirectory() as tmp:
        model = random_dit(cfg).to(torch.bfloat16)
        off = save_dit_official(model, Path(tmp) / "official")
        diff = save_dit_diffusers(model, Path(tmp) / "diffusers")
        n_params = sum(p.numel() for p in model.parameters())
        del model
        rows = []
        for name, path, size in [
            ("official .pt (mmap)", off, off.stat().st_size),
            ("diffusers safetensors", diff, sum(f.stat().st_size for f in diff.glob("*.safetensors"))),
        ]:
            out = subprocess.run(
                [sys.executable, "-m", "benchmarks.bench_load", "--child", str(path), "bfloat16"],
                capture_output=True, text=True, check=True,
            )  # fmt: skip
            r = json.loads(out.stdout.strip().splitlines()[-1])
            grow = (r["peak_kb"] - r["before_kb"]) * 1024
            touched = (r["touched_kb"] - r["before_kb"]) * 1024
            rows.append((name, size, grow, touched, r["seconds"]))
    print(f"DiT {n_params / 1e6:.0f}M params, bf16; load into bf16 on CPU")
    print(
        "peak RSS growth over the pre-load RSS, as a multiple of the file size; 'touched' = after reading every weight"
    )
    print(f"{'layout':<24}{'file MB':>9}{'load MB':>9}{'ratio':>7}{'touched MB':>12}{'ratio':>7}{'load s':>8}")
    for name, size, grow, touched, secs in rows:
        print(
            f"{name:<24}{size / 2**20:>9.0f}{grow / 2**20:>9.0f}{grow / size:>7.2f}"
            f"{touched / 2**20:>12.0f}{touched / size:>7.2f}{secs:>8.2f}"
        )


if __name__ == "__main__":
    main()
