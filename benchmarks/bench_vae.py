"""VAE decode benchmark: time and peak RSS of ours (chunked / untiled) vs diffusers' AutoencoderKLHunyuanVideo with
enable_tiling(), same random weights, each case in a fresh subprocess so peak RSS is not polluted by other cases.

    .venv/bin/python -m benchmarks.bench_vae [--frames 33 65] [--write-docs]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from hyvideo.utils.host_memory import proc_kb

CHANNELS = (32, 64, 64, 64)  # mid-size: a quarter of the real widths
GROUPS = 32
SIZE = 256  # pixels
DOCS = Path(__file__).resolve().parents[1] / "docs" / "BENCHMARKS.md"
SECTION = "## VAE decode"


def _peak_mb() -> float:
    return proc_kb("VmHWM") / 1024  # not ru_maxrss: that one can start from the parent's peak


def _rss_mb() -> float:
    return proc_kb("VmRSS") / 1024


def run_case(case: str, weights: Path, frames: int, out: Path, threads: int) -> dict:
    """In the child: load the weights, decode seeded latents, save the video, report time and peak RSS."""
    torch.set_num_threads(threads)
    from safetensors.torch import save_file

    lat = (1, 16, (frames - 1) // 4 + 1, SIZE // 8, SIZE // 8)
    z = torch.randn(lat, generator=torch.Generator().manual_seed(0))
    if case == "diffusers-tiled":
        from diffusers import AutoencoderKLHunyuanVideo

        model = AutoencoderKLHunyuanVideo.from_pretrained(weights).eval()
        model.enable_tiling()

        def decode() -> torch.Tensor:
            with torch.no_grad():
                return model.decode(z).sample

    else:
        from hyvideo.checkpoints.vae import load_vae
        from hyvideo.modules.vae import TilingConfig

        model = load_vae(weights)
        if case == "ours-untiled":
            model.tiling = TilingConfig(enabled=False)
        else:  # ours-chunked-N(-tS(sR)): chunks of N latents, spatial tiles of S px (default 256) every R px (3/4 S)
            n, _, size = case.removeprefix("ours-chunked-").partition("-t")
            size, _, stride = size.partition("s")
            tile = int(size) if size else 256
            step = int(stride) if stride else tile * 3 // 4
            model.tiling = TilingConfig(mode="chunked", chunk_latents=int(n), tile_size=tile, tile_stride=step)

        def decode() -> torch.Tensor:
            return model.decode(z)

    before = _rss_mb()
    t0, c0 = time.perf_counter(), time.process_time()
    video = decode()
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    peak = _peak_mb()
    save_file({"video": video.contiguous()}, str(out))
    return {"case": case, "frames": frames, "seconds": seconds, "cpu_s": cpu, "peak_mb": peak, "setup_mb": before}


def _child(args: argparse.Namespace, case: str, weights: Path, frames: int, out: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "benchmarks.bench_vae", "--child", case, "--weights", str(weights)]
    cmd += ["--frames", str(frames), "--out", str(out), "--threads", str(args.threads)]
    root = Path(__file__).resolve().parents[1]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=root)


def _result(proc: subprocess.Popen, what: str) -> dict:
    stdout, stderr = proc.communicate()
    if proc.returncode:
        raise RuntimeError(f"{what} failed:\n{stderr[-2000:]}")
    return json.loads(stdout.strip().splitlines()[-1])


def _table(rows: list[dict]) -> str:
    head = "| frames | case | CPU s | CPU / diffusers | wall s | peak RSS MB | RSS / diffusers | decode RSS MB | max abs diff to untiled |"
    lines = [head, "|" + "---|" * 9]
    for r in rows:
        lines.append(
            f"| {r['frames']} | {r['case']} | {r['cpu_s']:.1f} | {r['time_ratio']:.2f} | {r['seconds']:.1f} | "
            f"{r['peak_mb']:.0f} | {r['rss_ratio']:.2f} | {r['peak_mb'] - r['setup_mb']:.0f} | {r['max_diff']:.3g} |"
        )
    return "\n".join(lines)


def _write_docs(text: str) -> None:
    old = DOCS.read_text() if DOCS.is_file() else "# Benchmarks\n"
    start = old.find(SECTION)
    if start < 0:
        new = old.rstrip("\n") + "\n\n" + text
    else:
        end = old.find("\n## ", start + len(SECTION))
        new = old[:start] + text + ("" if end < 0 else old[end:])
    DOCS.parent.mkdir(parents=True, exist_ok=True)
    DOCS.write_text(new.rstrip("\n") + "\n")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frames", type=int, nargs="+", default=[33, 65])
    p.add_argument(
        "--cases", nargs="+", default=["ours-chunked-1", "diffusers-tiled", "ours-chunked-1-t160s128", "ours-untiled"]
    )
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--write-docs", action="store_true", help=f"replace the '{SECTION}' section of {DOCS.name}")
    p.add_argument("--json-out", type=Path, help="also save the result rows here")
    p.add_argument("--workdir", type=Path, help="keep weights and decoded videos here (default: a temporary dir)")
    p.add_argument("--parallel", action="store_true", help="run all cases at once (compare CPU time, not wall)")
    p.add_argument("--collect", action="store_true", help="only tabulate the finished cases found in --workdir")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--weights", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        result = run_case(args.child, args.weights, args.frames[0], args.out, args.threads)
        args.out.with_suffix(".json").write_text(json.dumps(result))  # kept in the workdir for --collect
        print(json.dumps(result))
        return

    from safetensors.torch import load_file

    from hyvideo.checkpoints.vae import random_vae, save_vae_diffusers
    from hyvideo.modules.vae import VAEConfig

    config = VAEConfig(block_out_channels=CHANNELS, norm_num_groups=GROUPS)
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        work = args.workdir or Path(tmp)
        weights = work / "vae"
        if not (weights / "config.json").is_file():
            save_vae_diffusers(random_vae(config, seed=args.seed), config, weights)
        jobs = [(f, c) for f in args.frames for c in args.cases]
        if args.collect:  # results of children that already finished in --workdir
            results = {}
            for f, c in jobs:
                path = work / f"{c}-{f}.json"
                if path.is_file():
                    results[(f, c)] = json.loads(path.read_text())
        elif args.parallel:  # all at once: on a shared machine compare CPU seconds, not wall time
            procs = {
                job: _child(args, job[1], weights, job[0], work / f"{job[1]}-{job[0]}.safetensors") for job in jobs
            }
            results = {job: _result(proc, f"{job[1]} {job[0]}f") for job, proc in procs.items()}
        else:
            results = {}
            for job in jobs:
                proc = _child(args, job[1], weights, job[0], work / f"{job[1]}-{job[0]}.safetensors")
                results[job] = _result(proc, f"{job[1]} {job[0]}f")
                print(json.dumps(results[job]), flush=True)
        for (frames, case), r in results.items():
            untiled = work / f"ours-untiled-{frames}.safetensors"
            video = load_file(str(work / f"{case}-{frames}.safetensors"))["video"]
            r["max_diff"] = (
                (video - load_file(str(untiled))["video"]).abs().max().item() if untiled.is_file() else float("nan")
            )
            base = results.get((frames, "diffusers-tiled"))
            r["time_ratio"] = r["cpu_s"] / base["cpu_s"] if base else float("nan")
            r["rss_ratio"] = r["peak_mb"] / base["peak_mb"] if base else float("nan")
            rows.append(r)
    if args.json_out:
        args.json_out.write_text(json.dumps(rows, indent=1))
    table = _table(rows)
    print(table)
    if args.write_docs:
        load = os.getloadavg()
        text = (
            f"{SECTION}\n\n"
            f"Command: `.venv/bin/python -m benchmarks.bench_vae {' '.join(argv if argv is not None else sys.argv[1:])}`\n"
            f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, {args.threads} threads, "
            f"load average at the end {load[0]:.1f} (the machine is shared: compare CPU seconds of the decode, "
            "one thread per case; wall times are inflated by other jobs).\n"
            f"Model: random VAE, block_out_channels {CHANNELS}, norm groups {GROUPS}, fp32, {SIZE}x{SIZE}; latents "
            "torch.randn seed 0. diffusers: `enable_tiling()` defaults (256 px tiles, 16-frame temporal tiles, "
            "stride 12). Ours chunked-N(-tS(sR)): `TilingConfig(mode='chunked', chunk_latents=N, tile_size=S, "
            "tile_stride=R)`, S = 256 by default (one spatial tile at this size), R = 3S/4 by default. Peak RSS = "
            "VmHWM of a fresh child per case (includes Python, torch and the weights); decode RSS = peak minus "
            "VmRSS before decoding.\n\n" + table + "\n"
        )
        _write_docs(text)


if __name__ == "__main__":
    main()
