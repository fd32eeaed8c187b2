"""Peak host RAM of a full CPU run (text -> video), ours vs diffusers' HunyuanVideoPipeline, and the estimator.

Writes one mid-size random model (DiT hidden 1024, 16 heads, 6 double + 12 single blocks; tiny text encoders and
VAE) in both layouts from the same seed, so both sides run the same weights on the same request. Every run is a fresh
subprocess; its peak is VmHWM from /proc/self/status (ru_maxrss would inherit the parent's peak). Our runs also
report the preflight estimate, and the paper table gives the estimator's peak GPU memory for the released model.

    .venv/bin/python -m benchmarks.bench_memory [--size 256 256 --frames 17 --steps 2] [--paper-only]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from hyvideo.utils.host_memory import proc_kb

PROMPT = "A cat walks on the grass, realistic style."
MiB = 2**20


def _ours(spec: dict) -> dict:
    from hyvideo import pipeline
    from hyvideo.cli import main

    seen = {}
    real = pipeline.preflight
    pipeline.preflight = lambda *a: seen.setdefault("e", real(*a))
    t0 = time.perf_counter()
    assert main(spec["argv"]) == 0
    return {"peak": proc_kb("VmHWM") * 1024, "seconds": time.perf_counter() - t0, "estimate": seen["e"].host_peak}


def _diffusers(spec: dict) -> dict:
    import torch
    from diffusers import HunyuanVideoPipeline

    from hyvideo.modules.text_encoders import PROMPT_TEMPLATES

    t0 = time.perf_counter()
    pipe = HunyuanVideoPipeline.from_pretrained(spec["base"], torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    pipe.vae.enable_tiling()  # our default decodes in tiles too
    h, w = spec["size"]
    pipe(
        prompt=PROMPT,
        height=h,
        width=w,
        num_frames=spec["frames"],
        num_inference_steps=spec["steps"],
        guidance_scale=6.0,
        generator=torch.Generator().manual_seed(7),
        output_type="np",
        prompt_template={"template": PROMPT_TEMPLATES["dit-llm-encode-video"], "crop_start": spec["crop_start"]},
        max_sequence_length=256,
    )
    return {"peak": proc_kb("VmHWM") * 1024, "seconds": time.perf_counter() - t0}


def _run(kind: str, spec: dict) -> dict:
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_memory", "--child", kind, json.dumps(spec)],
        capture_output=True,
        text=True,
    )
    if out.returncode != 0:
        raise RuntimeError(f"{kind} run failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def paper_table() -> list[str]:
    """The estimator's peak GPU memory for the released model, per mode, beside the official figures."""
    from hyvideo.memory import GiB, MemoryPlan, estimate, full_size_sizes

    sizes = full_size_sizes()
    modes = [
        ("none (bf16)", {}),
        ("--use-fp8", {"use_fp8": True}),
        ("--offload model", {"offload": "model"}),
        ("--offload block", {"offload": "block"}),
        ("--use-fp8 --offload block", {"use_fp8": True, "offload": "block"}),
        ("--offload block --no-vae-tiling", {"offload": "block", "vae_tiling": False}),
    ]
    rows = ["| mode | 720x1280x129 GiB | 544x960x129 GiB | stage at the peak (720p) |", "|---|---|---|---|"]
    for name, kw in modes:
        big = estimate(MemoryPlan(720, 1280, 129, **kw), sizes)
        small = estimate(MemoryPlan(544, 960, 129, **kw), sizes)
        top = max(big.stages, key=lambda s: s.device)
        rows.append(f"| {name} | {big.device_peak / GiB:.1f} | {small.device_peak / GiB:.1f} | {top.name} |")
    # the official tool keeps every component on the GPU at once: all weights + the DiT's activations
    resident = []
    for h, w in ((720, 1280), (544, 960)):
        est = estimate(MemoryPlan(h, w, 129), sizes)
        resident.append((sum(s.weights for s in est.stages) + est.stages[1].activations) / GiB)
    rows.append(
        f"| all components resident (official layout) | {resident[0]:.1f} | {resident[1]:.1f} | official: 60 / 45 GB |"
    )
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, nargs=2, default=[256, 256], metavar=("H", "W"))
    ap.add_argument("--frames", type=int, default=17)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--paper-only", action="store_true", help="print only the estimator's full-size table")
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        kind, spec = args.child[0], json.loads(args.child[1])
        print(json.dumps(_ours(spec) if kind == "ours" else _diffusers(spec)))
        return
    print("estimated peak GPU memory, released model (hyvideo.memory; official: 60 GB at 720p, 45 GB at 544p)")
    print("\n".join(paper_table()))
    if args.paper_only:
        return

    import shutil

    import torch

    from hyvideo.checkpoints.layout import locate
    from hyvideo.cli import parse_request
    from hyvideo.config import DiTConfig
    from hyvideo.modules.text_encoders import TextEncoders
    from hyvideo.pipeline import text_config
    from hyvideo.tiny import write_tiny_model

    dit = DiTConfig(hidden_size=1024, heads=16, depth_double=6, depth_single=12, rope_axes=(16, 24, 24))
    h, w = args.size
    with tempfile.TemporaryDirectory() as tmp:
        official = write_tiny_model(Path(tmp) / "official", "official", seed=0, dit=dit)
        diffusers_dir = write_tiny_model(Path(tmp) / "diffusers", "diffusers", seed=0, dit=dit)
        base_argv = [
            "--model-base", str(official), "--prompt", PROMPT, "--video-size", str(h), str(w),
            "--video-length", str(args.frames), "--infer-steps", str(args.steps), "--seed", "7",
            "--save-path", str(Path(tmp) / "out"), "--precision", "fp32", "--vae-precision", "fp32",
            "--text-encoder-precision", "fp32", "--text-encoder-precision-2", "fp32", "--device", "cpu",
        ]  # fmt: skip
        enc = TextEncoders(text_config(parse_request(base_argv), locate(official)))
        crop_start = enc.crop_start(args.frames)
        enc.free()
        dit_file = official / "hunyuan-video-t2v-720p" / "transformers" / "mp_rank_00_model_states.pt"
        dit_mib = dit_file.stat().st_size
        # the same weights in a bf16 file, run in fp32 (ours only): the dtype cast at load / per streamed block
        bf16 = Path(tmp) / "official-bf16"
        shutil.copytree(official, bf16)
        sd = torch.load(dit_file, weights_only=True)
        torch.save({k: {n: t.to(torch.bfloat16) for n, t in v.items()} for k, v in sd.items()},
                   bf16 / dit_file.relative_to(official))  # fmt: skip
        del sd
        bf16_argv = [str(bf16) if a == str(official) else a for a in base_argv]
        spec = {"base": str(diffusers_dir), "size": [h, w], "frames": args.frames, "steps": args.steps}
        theirs = _run("diffusers", {**spec, "crop_start": crop_start})
        rows = []
        for name, extra in (
            ("hyvideo", []),
            ("hyvideo --use-fp8", ["--use-fp8"]),
            ("hyvideo --offload block", ["--offload", "block"]),
            ("hyvideo --use-fp8 --offload block", ["--use-fp8", "--offload", "block"]),
        ):
            rows.append((name, _run("ours", {"argv": [*base_argv, *extra]})))
        for name, extra in (
            ("hyvideo, bf16 DiT file", []),
            ("hyvideo, bf16 DiT file, --offload block", ["--offload", "block"]),
        ):
            rows.append((name, _run("ours", {"argv": [*bf16_argv, *extra]})))
    print(
        f"\nfull CPU run: mid DiT (hidden 1024, 16 heads, 6+12 blocks; fp32 file {dit_mib / MiB:.0f} MiB), tiny text "
        f"encoders and VAE, all fp32 (bf16 rows: the DiT file in bf16, run in fp32), {w}x{h}x{args.frames}, "
        f"{args.steps} steps; peak = VmHWM of a fresh process"
    )
    print(f"{'run':<44}{'peak MiB':>10}{'vs diffusers':>14}{'estimate MiB':>14}{'est/peak':>10}{'s':>7}")
    print(f"{'diffusers HunyuanVideoPipeline':<44}{theirs['peak'] / MiB:>10.0f}{1:>14.2f}{'':>14}{'':>10}"
          f"{theirs['seconds']:>7.0f}")  # fmt: skip
    for name, r in rows:
        print(
            f"{name:<44}{r['peak'] / MiB:>10.0f}{r['peak'] / theirs['peak']:>14.2f}{r['estimate'] / MiB:>14.0f}"
            f"{r['estimate'] / r['peak']:>10.2f}{r['seconds']:>7.0f}"
        )


if __name__ == "__main__":
    main()
