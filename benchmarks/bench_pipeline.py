"""Side by side: our pipeline and diffusers' HunyuanVideoPipeline on the same mid-size random weights and request.

Builds a random model in the diffusers layout (DiT hidden 1024 with a few blocks, a mid VAE, the tiny text
encoders), then runs each side in a fresh subprocess (so peak RSS = that process's VmHWM) with a short prompt and
with a prompt that fills all 256 LLM tokens. Reports per-step denoise time (one DiT forward per step: embedded
guidance, no real CFG), decode time, whole-run wall time (loading + text encoding + denoising + decoding + MP4) and
peak RSS, with ratios ours / diffusers. `--flops` adds model FLOPs per step and achieved FLOP/s (MFU against
`--peak-tflops` when given). A scaling table times one DiT forward of each side at 1x, 2x and 4x image tokens.

    .venv/bin/python -m benchmarks.bench_pipeline [--steps 2] [--size 256 256] [--frames 33] [--flops]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import add_dit_size_args, write_mid_vae
from hyvideo.utils.host_memory import proc_kb

SEED = 42
SHORT_PROMPT = "A cat walks on the grass, realistic style."
LONG_PROMPT = " ".join(
    ["A cat walks slowly on the green grass of a garden in the morning sun, its tail raised, realistic style."] * 30
)  # far more than 256 LLM tokens: the text stream is full


# ---------------------------------------------------------------------------------------------------------------
# The mid-size model
# ---------------------------------------------------------------------------------------------------------------
def write_mid_model(root: Path, args: argparse.Namespace) -> Path:
    """Diffusers layout: random DiT (from args), the mid VAE (MID_VAE_LAYOUT), tiny text encoders, scheduler."""
    from hyvideo.checkpoints.dit import save_dit_diffusers
    from hyvideo.tiny import MODEL_INDEX, mid_dit_config, random_dit
    from hyvideo.tiny_text import write_text_encoders_diffusers

    root.mkdir(parents=True, exist_ok=True)
    dims = write_text_encoders_diffusers(root, SEED)
    cfg = mid_dit_config(args.hidden, args.heads, args.double, args.single, refiner=1, text_dim=dims.llm_hidden,
                         pool_dim=dims.clip_hidden)  # fmt: skip
    save_dit_diffusers(random_dit(cfg, SEED), root / "transformer")
    write_mid_vae(root / "vae", SEED)
    (root / "scheduler").mkdir(exist_ok=True)
    sched = {"_class_name": "FlowMatchEulerDiscreteScheduler", "shift": 7.0, "num_train_timesteps": 1000}
    (root / "scheduler" / "scheduler_config.json").write_text(json.dumps(sched))
    (root / "model_index.json").write_text(json.dumps(MODEL_INDEX))
    return root


def crop_start(root: Path) -> int:
    """Tokens of the video template before '{}' with this tokenizer (diffusers needs it spelled out)."""
    from transformers import AutoTokenizer

    from hyvideo.modules.text_encoders import PROMPT_TEMPLATES

    tok = AutoTokenizer.from_pretrained(root / "tokenizer", local_files_only=True)
    return len(tok(PROMPT_TEMPLATES["dit-llm-encode-video"].split("{}")[0])["input_ids"])


# ---------------------------------------------------------------------------------------------------------------
# Children: one whole run each, in a fresh process
# ---------------------------------------------------------------------------------------------------------------
class StepTimer:
    """Forward pre/post hooks on a module: wall time of each call, and the text tokens it saw."""

    def __init__(self) -> None:
        self.seconds: list[float] = []
        self.text_tokens: list[int] = []
        self._t0 = 0.0

    def pre(self, module, args, kwargs) -> None:
        mask = kwargs.get("encoder_attention_mask", args[3] if len(args) > 3 else None)
        if mask is not None:
            self.text_tokens.append(int(mask[0].sum()))
        self._t0 = time.perf_counter()

    def post(self, module, args, kwargs, out) -> None:
        self.seconds.append(time.perf_counter() - self._t0)

    def attach(self, module) -> None:
        module.register_forward_pre_hook(self.pre, with_kwargs=True)
        module.register_forward_hook(self.post, with_kwargs=True)


def _timed(fn, into: list[float]):
    def wrapper(*a, **k):
        t0 = time.perf_counter()
        out = fn(*a, **k)
        into.append(time.perf_counter() - t0)
        return out

    return wrapper


def child_ours(root: Path, prompt: str, out: Path, a: argparse.Namespace) -> dict:
    import torch

    from hyvideo import pipeline
    from hyvideo.cli import parse_request
    from hyvideo.modules.dit import HYVideoDiT

    req = parse_request(
        ["--model-base", str(root), "--prompt", prompt, "--video-size", str(a.size[0]), str(a.size[1]),
         "--video-length", str(a.frames), "--infer-steps", str(a.steps), "--seed", str(SEED), "--save-path", str(out),
         "--precision", "fp32", "--vae-precision", "fp32", "--text-encoder-precision", "fp32",
         "--text-encoder-precision-2", "fp32", "--device", "cpu", *a.ours_flags]
    )  # fmt: skip
    steps, decode = StepTimer(), []
    original = HYVideoDiT.__init__

    def init_and_hook(self, *args, **kwargs):
        original(self, *args, **kwargs)
        steps.attach(self)

    HYVideoDiT.__init__ = init_and_hook  # hook whatever DiT the pipeline builds
    pipeline.decode = _timed(pipeline.decode, decode)
    t0 = time.perf_counter()
    with torch.inference_mode():
        pipeline.run(req)
    wall = time.perf_counter() - t0
    return {"steps": steps.seconds, "text_tokens": steps.text_tokens, "decode": sum(decode), "wall": wall,
            "peak_kb": proc_kb("VmHWM")}  # fmt: skip


def child_diffusers(root: Path, prompt: str, out: Path, a: argparse.Namespace) -> dict:
    import torch
    from diffusers import HunyuanVideoPipeline
    from diffusers.utils import export_to_video

    from hyvideo.modules.text_encoders import PROMPT_TEMPLATES

    t0 = time.perf_counter()
    pipe = HunyuanVideoPipeline.from_pretrained(root, torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    steps, decode = StepTimer(), []
    steps.attach(pipe.transformer)
    pipe.vae.decode = _timed(pipe.vae.decode, decode)
    with torch.inference_mode():
        frames = pipe(
            prompt=prompt,
            height=a.size[0],
            width=a.size[1],
            num_frames=a.frames,
            num_inference_steps=a.steps,
            guidance_scale=6.0,
            generator=[torch.Generator().manual_seed(SEED)],
            output_type="np",
            prompt_template={"template": PROMPT_TEMPLATES["dit-llm-encode-video"], "crop_start": a.crop_start},
            max_sequence_length=256,
        ).frames[0]
    out.mkdir(parents=True, exist_ok=True)
    export_to_video(list(frames), str(out / "diffusers.mp4"), fps=24)
    wall = time.perf_counter() - t0
    return {"steps": steps.seconds, "text_tokens": steps.text_tokens, "decode": sum(decode), "wall": wall,
            "peak_kb": proc_kb("VmHWM")}  # fmt: skip


def child_scaling(root: Path, a: argparse.Namespace) -> dict:
    """One DiT forward per side at 1x/2x/4x image tokens (full 256-token text), best of `repeats`; with
    `--compiled` also ours after `compile_blocks`, timed after one untimed warm-up call per size (compilation)."""
    import torch
    from diffusers import HunyuanVideoTransformer3DModel

    from hyvideo.checkpoints.dit import load_dit

    ours = load_dit(root / "transformer", dtype=torch.float32)
    theirs = HunyuanVideoTransformer3DModel.from_pretrained(root / "transformer", torch_dtype=torch.float32).eval()
    cfg = ours.cfg
    g = torch.Generator().manual_seed(0)
    text = torch.randn(1, 256, cfg.text_states_dim, generator=g)
    mask = torch.ones(1, 256, dtype=torch.long)
    pooled = torch.randn(1, cfg.text_pool_dim, generator=g)
    t, guid = torch.tensor([900.0]), torch.tensor([6000.0])
    compiled = None
    if a.compiled:
        from hyvideo.compile import compile_blocks

        compiled = compile_blocks(load_dit(root / "transformer", dtype=torch.float32))
    rows = []
    for mult in (1, 2, 4):
        T, H, W = a.scale_grid[0] * mult, a.scale_grid[1], a.scale_grid[2]
        x = torch.randn(1, cfg.in_channels, T, H, W, generator=g)
        times = {}
        with torch.inference_mode():
            sides = {
                "ours": lambda x=x: ours(x, t, text, mask, pooled, guid),
                "diffusers": lambda x=x: theirs(x, t, text, mask, pooled, guid, return_dict=False),
            }
            if compiled is not None:
                sides["compiled"] = lambda x=x: compiled(x, t, text, mask, pooled, guid)
                t0 = time.perf_counter()
                sides["compiled"]()  # compiles for this token count
                times["compile"] = time.perf_counter() - t0
            for name, fn in sides.items():
                best = float("inf")
                for _ in range(a.repeats):
                    t0 = time.perf_counter()
                    fn()
                    best = min(best, time.perf_counter() - t0)
                times[name] = best
        rows.append({"mult": mult, "image_tokens": T * H * W // 4, **times})
    return {"rows": rows}


def child_ab(root: Path, a: argparse.Namespace) -> dict:
    """Per-step DiT forwards at the request size, ours and diffusers alternating `--ab` times per prompt kind, so
    load that drifts during the run hits both sides alike; returns every time."""
    import torch
    from diffusers import HunyuanVideoTransformer3DModel

    from hyvideo.checkpoints.dit import load_dit

    ours = load_dit(root / "transformer", dtype=torch.float32)
    theirs = HunyuanVideoTransformer3DModel.from_pretrained(root / "transformer", torch_dtype=torch.float32).eval()
    cfg, g = ours.cfg, torch.Generator().manual_seed(0)
    x = torch.randn(1, cfg.in_channels, (a.frames - 1) // 4 + 1, a.size[0] // 8, a.size[1] // 8, generator=g)
    text, pooled = torch.randn(1, 256, cfg.text_states_dim, generator=g), torch.randn(1, cfg.text_pool_dim, generator=g)
    t, guid = torch.tensor([900.0]), torch.tensor([6000.0])
    out: dict[str, list[float]] = {}
    for kind, valid in (("short", 11), ("full", 256)):
        mask = (torch.arange(256) < valid).long()[None]
        for _ in range(a.ab):
            for name, fn in (("ours", ours), ("diffusers", lambda *i: theirs(*i, return_dict=False))):
                t0 = time.perf_counter()
                with torch.inference_mode():
                    fn(x, t, text, mask, pooled, guid)
                out.setdefault(f"{name} {kind}", []).append(time.perf_counter() - t0)
    return out


# ---------------------------------------------------------------------------------------------------------------
# Parent
# ---------------------------------------------------------------------------------------------------------------
def _run_child(kind: str, root: Path, prompt_kind: str, out: Path, a: argparse.Namespace, extra: list[str]) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.bench_pipeline", "--child", kind, str(root), prompt_kind, str(out),
           "--crop-start", str(a.crop_start), *extra]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{kind} child failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _fmt_ratio(ours: float, theirs: float) -> str:
    return f"{ours / theirs:.2f}x" if theirs else "-"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_dit_size_args(ap, double=1, single=2)
    ap.add_argument("--size", type=int, nargs=2, default=[256, 256], metavar=("H", "W"))
    ap.add_argument("--frames", type=int, default=33)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2, help="runs per side and prompt; the best is reported")
    ap.add_argument("--flops", action="store_true", help="also print model FLOPs per step and achieved FLOP/s")
    ap.add_argument("--peak-tflops", type=float, default=0.0, help="device peak for MFU (with --flops)")
    ap.add_argument("--no-scaling", action="store_true", help="skip the 1x/2x/4x tokens table")
    ap.add_argument("--compiled", action="store_true", help="add ours with --compile to the scaling table")
    ap.add_argument("--ab", type=int, default=0, help="also N alternating per-step DiT forwards per side and prompt")
    ap.add_argument("--scale-grid", type=int, nargs=3, default=[3, 32, 32], metavar=("T", "H", "W"),
                    help="latent grid of the 1x row (the 2x/4x rows multiply T)")  # fmt: skip
    ap.add_argument("--root", type=Path, default=None, help="keep the model here (default: a temp dir)")
    ap.add_argument("--ours-flags", nargs=argparse.REMAINDER, default=[], help="extra flags for our side (last)")
    ap.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    ap.add_argument("--crop-start", type=int, default=0, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:
        kind, root, prompt_kind, out = a.child
        prompt = SHORT_PROMPT if prompt_kind == "short" else LONG_PROMPT
        fn = {"ours": child_ours, "diffusers": child_diffusers}.get(kind)
        if kind in ("scaling", "ab"):
            result = (child_scaling if kind == "scaling" else child_ab)(Path(root), a)
        else:
            result = fn(Path(root), prompt, Path(out), a)
        print(json.dumps(result))
        return

    with tempfile.TemporaryDirectory() as tmp:
        root = a.root or Path(tmp) / "model"
        if not (root / "model_index.json").exists():
            write_mid_model(root, a)
        a.crop_start = crop_start(root)
        passthrough = ["--size", *map(str, a.size), "--frames", str(a.frames), "--steps", str(a.steps),
                       "--scale-grid", *map(str, a.scale_grid), "--repeats", str(a.repeats)]  # fmt: skip
        passthrough += ["--compiled"] if a.compiled else []
        ours_extra = ["--ours-flags", *a.ours_flags] if a.ours_flags else []
        results: dict[tuple[str, str], dict] = {}
        for prompt_kind in ("short", "full"):
            for _ in range(a.repeats):  # alternate the sides so background load hits both alike
                for kind in ("ours", "diffusers"):
                    extra = passthrough + (ours_extra if kind == "ours" else [])
                    r = _run_child(kind, root, prompt_kind, Path(tmp) / f"out-{kind}", a, extra)
                    print(f"{kind}, {prompt_kind} prompt: {json.dumps(r)}", file=sys.stderr, flush=True)
                    best = results.get((kind, prompt_kind))
                    results[(kind, prompt_kind)] = r if best is None else _best(best, r)
        scaling = None if a.no_scaling else _run_child("scaling", root, "full", Path(tmp), a, passthrough)
        print(f"scaling: {json.dumps(scaling)}", file=sys.stderr, flush=True)
        ab = _run_child("ab", root, "full", Path(tmp), a, [*passthrough, "--ab", str(a.ab)]) if a.ab else None
        cfg = _config(root)
    _report(a, cfg, results, scaling)
    if ab:
        print(f"\nalternating per-step DiT forwards ({a.ab} per side and prompt), median s (all runs):")
        for kind in ("short", "full"):
            o, d = ab[f"ours {kind}"], ab[f"diffusers {kind}"]
            mo, md = statistics.median(o), statistics.median(d)
            runs = " / ".join(f"{x:.2f}" for x in o), " / ".join(f"{x:.2f}" for x in d)
            print(f"{kind:<6} ours {mo:.3f} ({runs[0]})  diffusers {md:.3f} ({runs[1]})  ratio {mo / md:.2f}x")


def _best(a: dict, b: dict) -> dict:
    """Field-wise best of two runs of one side (min time, min peak; steps compared by their median)."""
    steps = a["steps"] if statistics.median(a["steps"]) <= statistics.median(b["steps"]) else b["steps"]
    return {"steps": steps, "text_tokens": a["text_tokens"], "decode": min(a["decode"], b["decode"]),
            "wall": min(a["wall"], b["wall"]), "peak_kb": min(a["peak_kb"], b["peak_kb"])}  # fmt: skip


def _config(root: Path):
    from hyvideo.config import dit_config

    return dit_config("HYVideo-T/2-cfgdistill", root / "transformer" / "config.json")


def _report(a: argparse.Namespace, cfg, results: dict, scaling: dict | None) -> None:
    from hyvideo.flops import dit_flops

    H, W, F = a.size[0], a.size[1], a.frames
    Li = ((F - 1) // 4 + 1) * (H // 16) * (W // 16)
    n_params = _param_count(cfg)
    print(f"DiT hidden {cfg.hidden_size}, {cfg.heads} heads, {cfg.depth_double} double + {cfg.depth_single} single "
          f"blocks ({n_params / 1e6:.0f}M params), VAE (32, 64, 64, 64), tiny text encoders; fp32 on the CPU")  # fmt: skip
    print(f"request {H}x{W}x{F}, {a.steps} steps, {Li} image tokens; best of {a.repeats} runs per side")
    print()
    head = f"{'':<28}{'ours':>10}{'diffusers':>11}{'ratio':>8}"
    for prompt_kind in ("short", "full"):
        o, d = results[("ours", prompt_kind)], results[("diffusers", prompt_kind)]
        so, sd = statistics.mean(o["steps"]), statistics.mean(d["steps"])
        print(f"{prompt_kind} prompt: text tokens ours {o['text_tokens'][0]}, diffusers {d['text_tokens'][0]} "
              "(valid of 256; diffusers attends over all 256 with a mask)")  # fmt: skip
        print(head)
        print(f"{'denoise per step (s)':<28}{so:>10.3f}{sd:>11.3f}{_fmt_ratio(so, sd):>8}")
        print(f"{'decode (s)':<28}{o['decode']:>10.2f}{d['decode']:>11.2f}{_fmt_ratio(o['decode'], d['decode']):>8}")
        print(f"{'whole run (s)':<28}{o['wall']:>10.2f}{d['wall']:>11.2f}{_fmt_ratio(o['wall'], d['wall']):>8}")
        po, pd = o["peak_kb"] / 1024, d["peak_kb"] / 1024
        print(f"{'peak RSS (MiB)':<28}{po:>10.0f}{pd:>11.0f}{_fmt_ratio(po, pd):>8}")
        if a.flops:
            fo = dit_flops(cfg, Li, o["text_tokens"][0]).total
            fd = dit_flops(cfg, Li, 256).total  # diffusers computes the padded text tokens too
            print(f"{'model GFLOP per step':<28}{fo / 1e9:>10.1f}{fd / 1e9:>11.1f}{_fmt_ratio(fo, fd):>8}")
            print(f"{'achieved GFLOP/s':<28}{fo / so / 1e9:>10.1f}{fd / sd / 1e9:>11.1f}")
            if a.peak_tflops:
                print(f"{'MFU':<28}{fo / so / (a.peak_tflops * 1e12):>10.1%}{fd / sd / (a.peak_tflops * 1e12):>11.1%}")
        print()
    if scaling:
        print("scaling: one DiT forward, full 256-token text, best of runs")
        print(f"{'tokens':<8}{'image':>8}{'ours (s)':>10}{'diffusers (s)':>15}{'ratio':>8}"
              + (f"{'ours GFLOP/s':>14}" if a.flops else "")
              + (f"{'compiled (s)':>14}{'ratio':>8}{'compile (s)':>13}" if a.compiled else ""))  # fmt: skip
        for r in scaling["rows"]:
            line = (f"{str(r['mult']) + 'x':<8}{r['image_tokens']:>8}{r['ours']:>10.3f}{r['diffusers']:>15.3f}"
                    f"{_fmt_ratio(r['ours'], r['diffusers']):>8}")  # fmt: skip
            if a.flops:
                line += f"{dit_flops(cfg, r['image_tokens'], 256).total / r['ours'] / 1e9:>14.1f}"
            if "compiled" in r:
                line += f"{r['compiled']:>14.3f}{_fmt_ratio(r['compiled'], r['diffusers']):>8}{r['compile']:>13.1f}"
            print(line)


def _param_count(cfg) -> int:
    from hyvideo.checkpoints.dit import build_dit

    return sum(p.numel() for p in build_dit(cfg).parameters())


if __name__ == "__main__":
    main()
