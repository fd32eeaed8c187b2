"""Side by side, image-to-video: our `--i2v-mode` and diffusers' HunyuanVideoImageToVideoPipeline, same weights.

The mid-size random DiT of bench_pipeline made into the token_replace image-to-video DiT, a mid VAE and the tiny
LLaVA + CLIP, written as a diffusers `HunyuanVideoImageToVideoPipeline` folder, and a generated test image. Each
side runs in a fresh subprocess (peak RSS = that process's VmHWM), the sides alternating `--repeats` times: ours is
the command line (`--i2v-mode --i2v-resize stretch --i2v-stability --flow-shift 7`, as diffusers' pipeline always
starts from the stability mix and takes shift 7 from the scheduler), diffusers is the pipeline's `__call__` with
the same size, steps and embedded guidance (no real CFG). Reports medians of per-step denoise time, decode time,
whole-run wall time and peak RSS with ratios ours / diffusers, and the final latents' relative difference.

    .venv/bin/python -m benchmarks.bench_i2v [--steps 2] [--size 256 256] [--frames 17] [--repeats 3]
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

from benchmarks.bench_pipeline import SEED, SHORT_PROMPT, StepTimer, _fmt_ratio, _timed
from benchmarks.common import MID_VAE_LAYOUT, add_dit_size_args, latents_rel_diff, run_child, write_mid_vae
from hyvideo.utils.host_memory import proc_kb

CONDITION = "token_replace"
EMBEDDED_GUIDANCE = 6.0
FLOW_SHIFT = 7.0  # diffusers' I2V pipeline takes the shift from the folder's scheduler config (written as 7)
# fp32 on both sides: the 1e-5 agreement of the two runs' final latents (the tests measure ~2e-6 on tiny models)
REL_TOLERANCE = 1e-4


# ---------------------------------------------------------------------------------------------------------------
# The model folder, the image and our command line
# ---------------------------------------------------------------------------------------------------------------
def write_i2v_model(root: Path, a: argparse.Namespace) -> Path:
    """diffusers `HunyuanVideoImageToVideoPipeline` folder: the bench_pipeline DiT as token_replace I2V DiT, the mid
    VAE, the tiny LLaVA + CLIP (and their tokenizers / image processor), the scheduler."""
    from hyvideo.tiny import i2v_dit_config, mid_dit_config, write_tiny_i2v_model

    # the text widths are replaced by the tiny encoders' own when the folder is written
    dit = i2v_dit_config(CONDITION, mid_dit_config(a.hidden, a.heads, a.double, a.single, refiner=1))
    write_tiny_i2v_model(root, "diffusers", CONDITION, SEED, dit=dit)
    write_mid_vae(root / "vae", SEED)  # replaces the tiny VAE
    return root


def write_test_image(path: Path, size: tuple[int, int] = (300, 420)) -> Path:
    """A deterministic RGB image (smooth gradients plus noise) of another size and aspect than the video."""
    import numpy as np
    from PIL import Image

    h, w = size
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    rng = np.random.RandomState(SEED)
    rgb = np.stack([x / w, y / h, 0.5 + 0.5 * np.sin((x + y) / 25.0)], axis=-1) * 200 + rng.rand(h, w, 3) * 55
    Image.fromarray(rgb.clip(0, 255).astype(np.uint8)).save(path)
    return path


def ours_argv(root: Path, image: Path, out: Path, a: argparse.Namespace) -> list[str]:
    """`sample_video.py` arguments of our side: fp32 on the CPU, the request diffusers' side runs."""
    return ["--model-base", str(root), "--prompt", SHORT_PROMPT, "--i2v-mode", "--i2v-image-path", str(image),
            "--i2v-resize", "stretch", "--i2v-stability", "--flow-shift", str(FLOW_SHIFT),
            "--video-size", str(a.size[0]), str(a.size[1]), "--video-length", str(a.frames),
            "--infer-steps", str(a.steps), "--embedded-cfg-scale", str(EMBEDDED_GUIDANCE), "--seed", str(SEED),
            "--save-path", str(out), "--precision", "fp32", "--vae-precision", "fp32",
            "--text-encoder-precision", "fp32", "--text-encoder-precision-2", "fp32", "--device", "cpu"]  # fmt: skip


def diffusers_template(root: Path) -> dict:
    """diffusers' prompt_template with the tiny tokenizer's positions (its default holds the real Llama-3's)."""
    from hyvideo.modules.llava_encoder import I2V_TEMPLATE, I2VTextEncoders, LlavaEncoderConfig

    config = LlavaEncoderConfig.from_model_base(root, condition_type=CONDITION, precision="fp32", precision_2="fp32")
    encoders = I2VTextEncoders(config)
    pos, n = encoders.llava.positions, encoders.llava.image_features
    encoders.free()
    return {"template": I2V_TEMPLATE, "crop_start": pos.crop_start, "image_emb_start": pos.image_slot,
            "image_emb_end": pos.image_slot + n, "image_emb_len": n}  # fmt: skip


# ---------------------------------------------------------------------------------------------------------------
# Children: one whole run each, in a fresh process; both save the latents they decode (DiT scale)
# ---------------------------------------------------------------------------------------------------------------
def _save_latents(latents, path: Path) -> None:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({"latents": latents.detach().float().contiguous().cpu()}, str(path))


def child_ours(root: Path, image: Path, out: Path, a: argparse.Namespace) -> dict:
    import torch

    from hyvideo import pipeline
    from hyvideo.cli import parse_request
    from hyvideo.modules.dit import HYVideoDiT

    req = parse_request(ours_argv(root, image, out, a))
    steps, decode = StepTimer(), []
    original = HYVideoDiT.__init__

    def init_and_hook(self, *args, **kwargs):
        original(self, *args, **kwargs)
        steps.attach(self)

    HYVideoDiT.__init__ = init_and_hook  # hook whatever DiT the pipeline builds
    timed_decode = _timed(pipeline.decode, decode)

    def decode_and_keep(vae, latents, *rest, **kw):
        _save_latents(latents, out / "latents.safetensors")  # (1, 16, T, h, w), frame 0 = the image latent
        return timed_decode(vae, latents, *rest, **kw)

    pipeline.decode = decode_and_keep
    t0 = time.perf_counter()
    with torch.inference_mode():
        pipeline.run(req)
    wall = time.perf_counter() - t0
    return {"steps": steps.seconds, "decode": sum(decode), "wall": wall, "peak_kb": proc_kb("VmHWM")}


def child_diffusers(root: Path, image: Path, out: Path, a: argparse.Namespace) -> dict:
    import torch
    from diffusers import HunyuanVideoImageToVideoPipeline
    from diffusers.utils import export_to_video
    from PIL import Image

    t0 = time.perf_counter()
    pipe = HunyuanVideoImageToVideoPipeline.from_pretrained(root, torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    steps, decode = StepTimer(), []
    steps.attach(pipe.transformer)
    timed_decode = _timed(pipe.vae.decode, decode)

    def decode_and_keep(latents, *rest, **kw):
        # the pipeline divides by the scaling factor just before decoding: undo it to compare with ours
        _save_latents(latents * pipe.vae_scaling_factor, out / "latents.safetensors")
        return timed_decode(latents, *rest, **kw)

    pipe.vae.decode = decode_and_keep
    with torch.inference_mode():
        frames = pipe(
            image=Image.open(image).convert("RGB"),
            prompt=SHORT_PROMPT,
            height=a.size[0],
            width=a.size[1],
            num_frames=a.frames,
            num_inference_steps=a.steps,
            guidance_scale=EMBEDDED_GUIDANCE,
            generator=torch.Generator().manual_seed(SEED),
            prompt_template=json.loads(a.template),
            output_type="np",
        ).frames[0]
    out.mkdir(parents=True, exist_ok=True)
    export_to_video(list(frames), str(out / "diffusers.mp4"), fps=24)
    wall = time.perf_counter() - t0
    return {"steps": steps.seconds, "decode": sum(decode), "wall": wall, "peak_kb": proc_kb("VmHWM")}


# ---------------------------------------------------------------------------------------------------------------
# Parent
# ---------------------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_dit_size_args(ap, double=1, single=2)
    ap.add_argument("--size", type=int, nargs=2, default=[256, 256], metavar=("H", "W"))
    ap.add_argument("--frames", type=int, default=17)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3, help="runs per side, alternating; medians are reported")
    ap.add_argument("--root", type=Path, default=None, help="keep the model here (default: a temp dir)")
    ap.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:
        kind, root, image, out = a.child
        a.template = os.environ["BENCH_I2V_TEMPLATE"]
        fn = {"ours": child_ours, "diffusers": child_diffusers}[kind]
        print(json.dumps(fn(Path(root), Path(image), Path(out), a)))
        return

    with tempfile.TemporaryDirectory() as tmp:
        root = a.root or Path(tmp) / "model"
        if not (root / "model_index.json").exists():
            write_i2v_model(root, a)
        image = write_test_image(Path(tmp) / "first_frame.png")
        a.template = json.dumps(diffusers_template(root))
        runs: dict[str, list[dict]] = {"ours": [], "diffusers": []}
        rels = []
        for i in range(a.repeats):  # alternate the sides so background load hits both alike
            for kind in ("ours", "diffusers"):
                r = run_child(
                    "benchmarks.bench_i2v",
                    [kind, str(root), str(image), str(Path(tmp) / f"out-{kind}-{i}")],
                    a,
                    {"BENCH_I2V_TEMPLATE": a.template},
                )
                r["load"] = os.getloadavg()[0]
                print(f"{kind} run {i + 1}: {json.dumps(r)}", file=sys.stderr, flush=True)
                runs[kind].append(r)
            rels.append(latents_rel_diff(*(Path(tmp) / f"out-{k}-{i}" / "latents.safetensors" for k in runs)))
        cfg = _config(root)
    _report(a, cfg, runs, rels)


def _config(root: Path):
    from hyvideo.config import dit_config

    return dit_config("HYVideo-T/2-cfgdistill", root / "transformer" / "config.json")


def _report(a: argparse.Namespace, cfg, runs: dict[str, list[dict]], rels: list[float]) -> None:
    from benchmarks.bench_pipeline import _param_count

    H, W, F = a.size[0], a.size[1], a.frames
    T = (F - 1) // 4 + 1
    loads = [r["load"] for side in runs.values() for r in side]
    print(f"DiT ({CONDITION}) hidden {cfg.hidden_size}, {cfg.heads} heads, {cfg.depth_double} double + "
          f"{cfg.depth_single} single blocks ({_param_count(cfg) / 1e6:.0f}M params), VAE {MID_VAE_LAYOUT[0]} ({MID_VAE_LAYOUT[1]} resnets per block), "
          "tiny LLaVA + CLIP; fp32 on the CPU")  # fmt: skip
    print(f"request {H}x{W}x{F}, {a.steps} steps, {T - 1} of {T} latent frames stepped "
          f"({T * (H // 16) * (W // 16)} image tokens), embedded guidance {EMBEDDED_GUIDANCE:g}; "
          f"median of {a.repeats} alternating runs per side; load average (1 min) "
          f"{min(loads):.1f}-{max(loads):.1f}")  # fmt: skip
    print()

    def med(side: str, key: str) -> float:
        if key == "steps":
            return statistics.median(statistics.mean(r["steps"]) for r in runs[side])
        return statistics.median(r[key] for r in runs[side])

    print(f"{'':<28}{'ours':>10}{'diffusers':>11}{'ratio':>8}")
    for label, key, fmt, scale in (("denoise per step (s)", "steps", ".3f", 1.0), ("decode (s)", "decode", ".2f", 1.0),
                                   ("whole run (s)", "wall", ".2f", 1.0), ("peak RSS (MiB)", "peak_kb", ".0f", 1024)):  # fmt: skip
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
