"""Side by side, HunyuanVideo 1.5: our pipeline and diffusers' HunyuanVideo15Pipeline (and, with `--task i2v`,
HunyuanVideo15ImageToVideoPipeline) on the same mid-size random weights and request.

A random 1.5 model in the diffusers layout: the DiT at `--hidden` / `--heads` (head_dim 128 by default, as released)
with `--double` double-stream blocks, the mid 1.5 VAE (common.MID_VAE15_LAYOUT), the tiny Qwen2.5-VL text model,
byT5 and (for I2V) SigLIP: the encoders are not what is compared. The release's 480p_t2v / 480p_i2v configuration:
real CFG 6 from the folder's guider with a negative prompt, shift from its scheduler, a prompt with quoted text (the
byT5 glyph branch). Each side runs in a fresh subprocess (peak RSS = its VmHWM), the sides alternating `--repeats`
times: ours is `sample_video.py`'s request run by the pipeline; diffusers is the pipeline's `__call__` with the same
size, frames, steps and seed, its Qwen crop index set to the tiny tokenizer's (it hard-codes the real one's), the
video decoded to numpy and written as MP4 as ours is. fp32 on the CPU. Reports medians of per-step denoise time
(all DiT forwards of a step: both CFG branches), decode time, whole-run wall time and peak RSS with ratios
ours / diffusers, and the relative difference of the latents each side handed to its VAE.

    .venv/bin/python -m benchmarks.bench_hv15 [--task t2v i2v] [--steps 2] [--size 256 256] [--frames 9]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.bench_i2v import write_test_image
from benchmarks.common import MID_VAE15_LAYOUT, latents_rel_diff, run_child, write_mid_vae15
from hyvideo.utils.host_memory import proc_kb

SEED = 42
PROMPT = 'A cat walks past a shop sign that reads "OPEN", realistic style.'  # quoted: the byT5 branch runs
NEGATIVE = "blurry, low quality"  # no quotes: the official negative gets no byT5 states, diffusers' none to encode
VERSIONS = {"t2v": "480p_t2v", "i2v": "480p_i2v"}  # real CFG 6 from the guider, shift 5 / 7 from the scheduler
# fp32 on both sides: tests/test_hv15_pipeline.py measures the two pipelines' final latents within 1e-4 (the bound of
# the issue) on tiny models; a larger difference here means the two sides computed different videos
REL_TOLERANCE = 1e-4


# ---------------------------------------------------------------------------------------------------------------
# The model folder and our command line
# ---------------------------------------------------------------------------------------------------------------
def mid_dit15(hidden: int, heads: int, double: int):
    """The release's DiT (double-stream blocks only, 65 input channels) at a benchmark width; the RoPE split follows
    the release's (16, 56, 56) of 128 head dims."""
    from hyvideo.config import HYVIDEO15_DIT

    hd = hidden // heads
    hw = hd * 7 // 16 // 2 * 2
    return HYVIDEO15_DIT.replace(hidden_size=hidden, heads=heads, depth_double=double, rope_axes=(hd - 2 * hw, hw, hw))


def write_hv15_model(root: Path, task: str, a: argparse.Namespace) -> Path:
    """diffusers `HunyuanVideo15Pipeline` / `HunyuanVideo15ImageToVideoPipeline` folder of release version
    VERSIONS[task]: the mid DiT, the mid 1.5 VAE, the tiny text (and vision) encoders, scheduler and guider."""
    from hyvideo.tiny import write_tiny15_model

    # the text and vision widths are replaced by the tiny encoders' own when the folder is written
    write_tiny15_model(root, "diffusers", VERSIONS[task], SEED, dit=mid_dit15(a.hidden, a.heads, a.double))
    write_mid_vae15(root / "vae", SEED)  # replaces the tiny VAE
    return root


def ours_argv(root: Path, image: Path | None, out: Path, a: argparse.Namespace) -> list[str]:
    """`sample_video.py` arguments of our side: fp32 on the CPU, the request diffusers' side runs (the folder's
    defaults for guidance and shift, as diffusers reads them; an explicit size: the image is used at that size)."""
    argv = ["--model-base", str(root), "--prompt", PROMPT, "--neg-prompt", NEGATIVE,
            "--video-size", str(a.size[0]), str(a.size[1]), "--video-length", str(a.frames),
            "--infer-steps", str(a.steps), "--seed", str(SEED), "--save-path", str(out),
            "--precision", "fp32", "--text-encoder-precision", "fp32", "--vae-precision", "fp32", "--device", "cpu"]  # fmt: skip
    return argv + (["--image_path", str(image)] if image is not None else [])


# ---------------------------------------------------------------------------------------------------------------
# Children: one whole run each, in a fresh process; both save the latents they decode (DiT scale)
# ---------------------------------------------------------------------------------------------------------------
class ForwardTimer:
    """Forward pre/post hooks on a module: wall time, process CPU time (all threads) and batch size of each call."""

    def __init__(self) -> None:
        self.seconds: list[float] = []
        self.cpu: list[float] = []
        self.batch: list[int] = []
        self._t0 = self._c0 = 0.0

    def pre(self, module, args, kwargs) -> None:
        x = args[0] if args else kwargs.get("hidden_states", kwargs.get("x"))
        self.batch.append(int(x.shape[0]))
        self._t0, self._c0 = time.perf_counter(), time.process_time()

    def post(self, module, args, kwargs, out) -> None:
        self.seconds.append(time.perf_counter() - self._t0)
        self.cpu.append(time.process_time() - self._c0)

    def attach(self, module) -> None:
        module.register_forward_pre_hook(self.pre, with_kwargs=True)
        module.register_forward_hook(self.post, with_kwargs=True)

    def result(self) -> dict:
        return {"forward_s": self.seconds, "forward_cpu": self.cpu, "forward_batch": self.batch}


def _timed(fn, into: list[tuple[float, float]]):
    """`fn` appending (wall s, process CPU s) of each call to `into`."""

    def wrapper(*a, **k):
        t0, c0 = time.perf_counter(), time.process_time()
        out = fn(*a, **k)
        into.append((time.perf_counter() - t0, time.process_time() - c0))
        return out

    return wrapper


def _result(forwards: ForwardTimer, decode: list[tuple[float, float]], wall: float) -> dict:
    """A child's measurements; "cpu": the whole process's CPU seconds (start-up and imports included)."""
    return {**forwards.result(), "decode": sum(w for w, _ in decode), "decode_cpu": sum(c for _, c in decode),
            "wall": wall, "cpu": time.process_time(), "peak_kb": proc_kb("VmHWM")}  # fmt: skip


def _save_latents(latents, path: Path) -> None:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({"latents": latents.detach().float().contiguous().cpu()}, str(path))


def child_ours(root: Path, image: Path | None, out: Path, a: argparse.Namespace) -> dict:
    import torch

    from hyvideo import pipeline
    from hyvideo.cli import parse_request
    from hyvideo.modules.dit import HYVideoDiT

    req = parse_request(ours_argv(root, image, out, a))
    forwards, decode = ForwardTimer(), []
    original = HYVideoDiT.__init__

    def init_and_hook(self, *args, **kwargs):
        original(self, *args, **kwargs)
        forwards.attach(self)

    HYVideoDiT.__init__ = init_and_hook  # hook whatever DiT the pipeline builds
    timed_decode = _timed(pipeline.decode, decode)

    def decode_and_keep(vae, latents, *rest, **kw):
        _save_latents(latents, out / "latents.safetensors")  # (1, 32, T, h, w)
        return timed_decode(vae, latents, *rest, **kw)

    pipeline.decode = decode_and_keep
    t0 = time.perf_counter()
    with torch.inference_mode():
        pipeline.run(req)
    wall = time.perf_counter() - t0
    return _result(forwards, decode, wall)


def child_diffusers(root: Path, image: Path | None, out: Path, a: argparse.Namespace) -> dict:
    import torch
    from diffusers import HunyuanVideo15ImageToVideoPipeline, HunyuanVideo15Pipeline
    from diffusers.utils import export_to_video
    from PIL import Image

    from hyvideo.modules.qwen_encoder import crop_start

    t0 = time.perf_counter()
    cls = HunyuanVideo15Pipeline if image is None else HunyuanVideo15ImageToVideoPipeline
    pipe = cls.from_pretrained(root, torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    pipe.prompt_template_encode_start_idx = crop_start(pipe.tokenizer)  # it hard-codes the real tokenizer's 108
    forwards, decode = ForwardTimer(), []
    forwards.attach(pipe.transformer)
    timed_decode = _timed(pipe.vae.decode, decode)

    def decode_and_keep(latents, *rest, **kw):
        # the pipeline divides by the scaling factor just before decoding: undo it to compare with ours
        _save_latents(latents * pipe.vae.config.scaling_factor, out / "latents.safetensors")
        return timed_decode(latents, *rest, **kw)

    pipe.vae.decode = decode_and_keep
    kwargs = {"prompt": PROMPT, "negative_prompt": NEGATIVE, "num_frames": a.frames, "num_inference_steps": a.steps}
    if image is None:
        kwargs.update(height=a.size[0], width=a.size[1])
    else:
        # the image is the video's size and square: the bucket of that base is the image's own size, as ours uses it
        pipe.target_size = a.size[0]
        kwargs.update(image=Image.open(image).convert("RGB"))
    with torch.inference_mode():
        frames = pipe(**kwargs, generator=torch.Generator().manual_seed(SEED), output_type="np").frames[0]
    out.mkdir(parents=True, exist_ok=True)
    export_to_video(list(frames), str(out / "diffusers.mp4"), fps=24)
    wall = time.perf_counter() - t0
    return _result(forwards, decode, wall)


# ---------------------------------------------------------------------------------------------------------------
# Parent
# ---------------------------------------------------------------------------------------------------------------
def check_args(ap: argparse.ArgumentParser, a: argparse.Namespace) -> None:
    H, W = a.size
    if H % 16 or W % 16 or H <= 0 or W <= 0:
        ap.error(f"--size: height and width must be positive multiples of 16 (the VAE's 16x), got {H} {W}")
    if "i2v" in a.task and H != W:
        ap.error("--size: image-to-video needs a square size here (diffusers picks the bucket from the image)")
    if a.frames < 1 or (a.frames - 1) % 4:
        ap.error(f"--frames must be 4k + 1, got {a.frames}")
    if "i2v" in a.task and a.frames < 5:
        ap.error("--frames: image-to-video needs 5 or more (one frame would be the image itself)")
    if a.hidden % a.heads or (a.hidden // a.heads) % 8:
        ap.error(f"--hidden / --heads must be a head width divisible by 8, got {a.hidden} / {a.heads}")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", nargs="+", choices=tuple(VERSIONS), default=["t2v", "i2v"])
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--heads", type=int, default=8, help="default 8: head_dim 128 at --hidden 1024, as released")
    ap.add_argument("--double", type=int, default=2, help="double-stream blocks (1.5 has no single-stream ones)")
    ap.add_argument("--size", type=int, nargs=2, default=[256, 256], metavar=("H", "W"))
    ap.add_argument("--frames", type=int, default=9)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2, help="runs per side, alternating; medians are reported")
    ap.add_argument("--root", type=Path, default=None, help="keep the models under this folder (default: a temp dir)")
    ap.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:
        kind, root, image, out = a.child
        fn = {"ours": child_ours, "diffusers": child_diffusers}[kind]
        print(json.dumps(fn(Path(root), None if image == "-" else Path(image), Path(out), a)))
        return
    check_args(ap, a)

    with tempfile.TemporaryDirectory() as tmp:
        base = a.root or Path(tmp)
        for task in a.task:
            root = base / f"hv15-{VERSIONS[task]}"
            if not (root / "model_index.json").exists():
                write_hv15_model(root, task, a)
            image = write_test_image(Path(tmp) / "first_frame.png", tuple(a.size)) if task == "i2v" else None
            runs: dict[str, list[dict]] = {"ours": [], "diffusers": []}
            rels = []
            for i in range(a.repeats):  # alternate the sides so background load hits both alike
                for kind in ("ours", "diffusers"):
                    r = run_child(
                        "benchmarks.bench_hv15",
                        [kind, str(root), str(image or "-"), str(Path(tmp) / f"out-{task}-{kind}-{i}")],
                        a,
                    )
                    r["load"] = os.getloadavg()[0]
                    print(f"{task} {kind} run {i + 1}: {json.dumps(r)}", file=sys.stderr, flush=True)
                    runs[kind].append(r)
                outs = (Path(tmp) / f"out-{task}-{k}-{i}" / "latents.safetensors" for k in runs)
                rels.append(latents_rel_diff(*outs))
            _report(a, task, _config(root), runs, rels)


def _config(root: Path):
    from hyvideo.config import dit_config

    return dit_config("HYVideo-T/2-cfgdistill", root / "transformer" / "config.json")


def _fmt_ratio(ours: float, theirs: float) -> str:
    return f"{ours / theirs:.2f}x" if theirs else "-"


def _report(a: argparse.Namespace, task: str, cfg, runs: dict[str, list[dict]], rels: list[float]) -> None:
    from hyvideo.checkpoints.dit import build_dit

    H, W, F = a.size[0], a.size[1], a.frames
    T = (F - 1) // 4 + 1
    params = sum(p.numel() for p in build_dit(cfg).parameters())
    loads = [r["load"] for side in runs.values() for r in side]
    print(f"\n{VERSIONS[task]}: DiT hidden {cfg.hidden_size}, {cfg.heads} heads of {cfg.head_dim}, "
          f"{cfg.depth_double} double blocks ({params / 1e6:.0f}M params), VAE {MID_VAE15_LAYOUT[0]} "
          f"({MID_VAE15_LAYOUT[1]} resnets per block), tiny Qwen2.5-VL + byT5 + SigLIP; fp32 on the CPU")  # fmt: skip
    print(f"request {H}x{W}x{F}, {a.steps} steps, real CFG (negative prompt), {T * (H // 16) * (W // 16)} image "
          f"tokens; median of {a.repeats} alternating runs per side; load average (1 min) "
          f"{min(loads):.1f}-{max(loads):.1f}")  # fmt: skip
    for side in runs:
        r = runs[side][0]
        print(f"  {side}: {len(r['forward_s']) / a.steps:g} DiT forward(s) per step of batch {r['forward_batch'][0]}")
    print()

    def med(side: str, key: str) -> float:
        if key in ("step", "step_cpu"):
            field = "forward_s" if key == "step" else "forward_cpu"
            return statistics.median(sum(r[field]) / a.steps for r in runs[side])
        return statistics.median(r[key] for r in runs[side])

    print(f"{'':<28}{'ours':>10}{'diffusers':>11}{'ratio':>8}")
    rows = (
        ("denoise per step (s)", "step", ".3f", 1.0),
        ("  CPU s", "step_cpu", ".3f", 1.0),
        ("decode (s)", "decode", ".2f", 1.0),
        ("  CPU s", "decode_cpu", ".2f", 1.0),
        ("whole run (s)", "wall", ".2f", 1.0),
        ("  CPU s (whole process)", "cpu", ".2f", 1.0),
        ("peak RSS (MiB)", "peak_kb", ".0f", 1024),
    )
    for label, key, fmt, scale in rows:
        o, d = med("ours", key) / scale, med("diffusers", key) / scale
        print(f"{label:<28}{o:>10{fmt}}{d:>11{fmt}}{_fmt_ratio(o, d):>8}")
    print()
    worst = max(rels)
    print("final latents, ||ours - diffusers|| / ||diffusers|| per run: " + ", ".join(f"{r:.2e}" for r in rels))
    if worst > REL_TOLERANCE:
        print(f"!!! THE TWO SIDES DISAGREE: relative difference {worst:.2e} > {REL_TOLERANCE:g} !!!")
        print("!!! the timings above compare different computations; find out why before trusting them !!!")


if __name__ == "__main__":
    main()
