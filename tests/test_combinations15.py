"""The flags users combine, on HunyuanVideo 1.5 weights: tiny models, CPU, in process, through the real command line.

Features (the table `FEATURES`): offload model / block, `--use-cpu-offload`, `--compile`, `--use-fp8` (quantized
while loading: the release ships no fp8 file), `--lora` merged and unmerged (diffusers names of
HunyuanVideo15Transformer3DModel), and real CFG (`--cfg-scale 3`; the base run has guidance 1). TeaCache is refused
for 1.5 (tests/test_cli15.py); torchrun layouts are tested apart. Every run saves its final latents
(`--save-latents`), and `--decode-latents` of a combined run gives the video that run wrote.

A run costs seconds (text encoders, DiT, VAE, video), so pairs are not run one by one as for v1: each row of `ROWS`
runs several features at once on one of three tiny 1.5 models (t2v, i2v in the diffusers layout, the meanflow
step-distilled i2v), and every pair of compatible features shares at least one row
(`test_every_pair_is_covered`). A row is checked against the run of its numeric features alone, N:
- plumbing (offload, compile) changes no number: rel. difference <= 1e-5 (compile 1e-4);
- each numeric feature f of N took effect: run(N) differs from run(N - {f}) by more than `EFFECT`.
The runs are cached per (model, set of features). The text encoders and the image encoders are outside every feature
here, so their output is computed for real once per model and prompt, and reused by the model's later runs
(`Encodings`): that keeps the file's time to the DiT and the VAE the features act on.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from hyvideo import hv15, io, pipeline
from hyvideo.cli import main
from hyvideo.tiny import write_tiny15_model

# measured on these runs (tiny models, fp32, CPU): offload <= 0 (the same kernels on the same weights: equal),
# compile <= 2e-6 (inductor's fused kernels sum in another order)
PLUMBING_TOL = 1e-5
COMPILE_TOL = 1e-4
EFFECT = 1e-3  # a numeric feature that took effect moves the latents by more: measured >= 1.2e-2 (fp8 on a LoRA run)

pytestmark = pytest.mark.slow


@dataclass(frozen=True)
class Feature:
    flags: tuple[str, ...]
    numeric: bool  # changes the numbers; plumbing must not
    group: str = ""  # features of one group are values of one flag: never combined


LORA = "{lora}"  # replaced by the LoRA file the fixture writes
FEATURES: dict[str, Feature] = {
    "offload-model": Feature(("--offload", "model"), False, "offload"),
    "offload-block": Feature(("--offload", "block"), False, "offload"),
    "cpu-offload": Feature(("--use-cpu-offload",), False),
    "compile": Feature(("--compile", "--compile-mode", "default"), False),
    "fp8": Feature(("--use-fp8",), True),
    "lora-merge": Feature(("--lora", LORA), True, "lora"),
    "lora-unmerged": Feature(("--lora", LORA, "--lora-mode", "unmerged"), True, "lora"),
    "cfg": Feature(("--cfg-scale", "3", "--neg-prompt", "dog"), True),  # as many tokens as "cat": no recompile
}


@dataclass(frozen=True)
class Task:
    version: str
    layout: str
    image: bool  # image-to-video: the run gets --image-path


TASKS: dict[str, Task] = {
    "t2v": Task("480p_t2v", "official", False),
    "i2v": Task("480p_i2v", "diffusers", True),
    "meanflow": Task("480p_i2v_step_distilled", "official", True),
}

# (task, features). Each task's numeric features are one set N (its first row), so the plumbing rows of a task share
# the reference runs N and N - {f}: 4 + 2 runs for t2v and i2v, 3 + 1 for meanflow, 3 of them compiling.
ROWS: list[tuple[str, tuple[str, ...]]] = [
    ("t2v", ("fp8", "lora-merge", "cfg")),
    ("t2v", ("offload-block", "compile", "fp8", "lora-merge", "cfg")),
    ("t2v", ("offload-model", "cpu-offload", "fp8", "lora-merge", "cfg")),
    ("i2v", ("fp8", "lora-unmerged", "cfg")),
    ("i2v", ("offload-model", "compile", "fp8", "lora-unmerged", "cfg")),
    ("i2v", ("offload-block", "cpu-offload", "fp8", "lora-unmerged", "cfg")),
    ("meanflow", ("fp8", "cfg")),
    ("meanflow", ("cpu-offload", "compile", "fp8", "cfg")),
]


def compatible(features: tuple[str, ...]) -> bool:
    groups = [FEATURES[f].group for f in features if FEATURES[f].group]
    return len(groups) == len(set(groups))


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


# ---------------------------------------------------------------------------------------------------------------
# Running a configuration
# ---------------------------------------------------------------------------------------------------------------
HEIGHT, WIDTH, FRAMES, STEPS, SEED = 32, 32, 5, 2, 7  # latents (32, 2, 2, 2): the smallest grid with two frames


def base_args(model: Path, out: Path) -> list[str]:
    return [
        "--model-base", str(model), "--prompt", "cat", "--video-size", str(HEIGHT), str(WIDTH), "--video-length",
        str(FRAMES), "--infer-steps", str(STEPS), "--seed", str(SEED), "--cfg-scale", "1", "--save-path", str(out),
        "--precision", "fp32", "--vae-precision", "fp32", "--text-encoder-precision", "fp32", "--device", "cpu",
        "--save-latents",
    ]  # fmt: skip


def write_lora(path: Path, hidden: int, mlp: int) -> Path:
    """A PEFT LoRA with diffusers' HunyuanVideo15Transformer3DModel names: a double block's to_q (1.5: its own
    Linear, `img_attn_q`), another's add_k_proj, to_out.0, the image MLP, the modulation and the final norm_out
    (rows swapped to the official (shift, scale) order)."""
    g = torch.Generator().manual_seed(5)
    layers = {"transformer_blocks.0.attn.to_q": (hidden, hidden), "transformer_blocks.1.attn.add_k_proj":
              (hidden, hidden), "transformer_blocks.0.attn.to_out.0": (hidden, hidden),
              "transformer_blocks.1.ff.net.0.proj": (mlp, hidden), "transformer_blocks.1.norm1.linear":
              (6 * hidden, hidden), "norm_out.linear": (2 * hidden, hidden)}  # fmt: skip
    sd = {}
    for name, (out, inp) in layers.items():
        sd[f"transformer.{name}.lora_A.weight"] = torch.randn(4, inp, generator=g) / inp**0.5
        sd[f"transformer.{name}.lora_B.weight"] = torch.randn(out, 4, generator=g) / 2
    save_file(sd, path)
    return path


class Encodings:
    """`pipeline.encode_text` and `hv15.encode_image` computed once per model and input, then reused (see the module
    docstring); the first call of each runs the real encoders."""

    def __init__(self) -> None:
        self.text_calls, self.image_calls = pipeline.encode_text, hv15.encode_image
        self.texts: dict[tuple, object] = {}
        self.images: dict[tuple, object] = {}

    def encode_text(self, req, paths, device):
        key = (str(req.dit.model_base), req.prompt, req.neg_prompt, req.cfg_scale > 1)
        if key not in self.texts:
            self.texts[key] = self.text_calls(req, paths, device)
        return self.texts[key]

    def encode_image(self, req, device, *args):
        key = (str(req.dit.model_base), str(req.image.i2v_image.path), req.height, req.width)
        if key not in self.images:
            self.images[key] = self.image_calls(req, device, *args)
        return self.images[key]


class Runner:
    """Runs (task, features) once each and returns the final latents."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.models = {name: write_tiny15_model(root / name, t.layout, t.version, seed=3) for name, t in TASKS.items()}
        self.image = root / "first.png"
        Image.fromarray((np.random.RandomState(3).rand(HEIGHT, WIDTH, 3) * 255).astype(np.uint8)).save(self.image)
        self.lora = write_lora(root / "lora.safetensors", 64, 256)  # TINY_DIT15: hidden 64, MLP 4 x 64
        self.cache: dict[tuple[str, frozenset[str]], torch.Tensor] = {}
        self.videos: dict[Path, torch.Tensor] = {}  # every video written, by path (see `keep_videos`)

    def argv(self, task: str, features: frozenset[str], out: Path, decode: Path | None = None) -> list[str]:
        """The run's command line; with `decode`, the same flags decoding those latents instead (no image: a decode
        takes none, exit 2 with one)."""
        argv = base_args(self.models[task], out)
        if decode is not None:
            argv[argv.index("--save-latents")] = "--decode-latents"
            argv.insert(argv.index("--decode-latents") + 1, str(decode))
        elif TASKS[task].image:
            argv += ["--image-path", str(self.image)]
        for f in sorted(features):
            argv += [a.replace(LORA, str(self.lora)) for a in FEATURES[f].flags]
        return argv

    def out_dir(self, task: str, features: frozenset[str]) -> Path:
        return self.root / "runs" / task / ("+".join(sorted(features)) or "plain")

    def run(self, task: str, features: frozenset[str]) -> torch.Tensor:
        key = (task, features)
        if key not in self.cache:
            out = self.out_dir(task, features)
            if "compile" in features:
                torch._dynamo.reset()  # a fresh model per run: no recompile-limit fallback to eager
                torch._dynamo.utils.counters.clear()
            code = main(self.argv(task, features, out))
            assert code == 0, f"{task} {sorted(features)}: exit {code}"
            if "compile" in features:  # the blocks did run compiled (an eager fallback would pass any tolerance)
                assert torch._dynamo.utils.counters["frames"]["ok"] > 0, (task, sorted(features))
            [path] = out.glob("*.latents.safetensors")
            latents, _ = io.load_latents(path)
            assert latents.shape == (1, 32, (FRAMES - 1) // 4 + 1, HEIGHT // 16, WIDTH // 16)
            assert torch.isfinite(latents).all(), (task, sorted(features))
            self.cache[key] = latents
        return self.cache[key]

    def check(self, task: str, features: tuple[str, ...]) -> dict[str, float]:
        """Run `features` and compare as the module docstring says; returns the measured figures."""
        wanted = frozenset(features)
        numeric = frozenset(f for f in wanted if FEATURES[f].numeric)
        got, ref = self.run(task, wanted), self.run(task, numeric)
        figures = {}
        if wanted != numeric:
            tol = COMPILE_TOL if "compile" in wanted else PLUMBING_TOL
            figures["vs numeric"] = err = rel(got, ref)
            assert err <= tol, f"{task} {sorted(wanted)} vs {sorted(numeric) or 'plain'}: rel. {err:.2e} > {tol:g}"
        for f in sorted(numeric):
            figures[f] = effect = rel(ref, self.run(task, numeric - {f}))
            assert effect > EFFECT, f"{task} {sorted(numeric)}: {f} changed nothing ({effect:.1e})"
        return figures


@pytest.fixture(scope="module")
def runner(tmp_path_factory) -> Runner:
    encodings = Encodings()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(pipeline, "encode_text", encodings.encode_text)
        mp.setattr(hv15, "encode_image", encodings.encode_image)
        runner = Runner(tmp_path_factory.mktemp("combinations15"))
        write = io.write_mp4

        def keep(video: torch.Tensor, path: Path, **kw: object) -> object:
            runner.videos[Path(path)] = video.clone()
            return write(video, path, **kw)

        mp.setattr(io, "write_mp4", keep)
        yield runner


# ---------------------------------------------------------------------------------------------------------------
# The tests
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("task", "features"), [pytest.param(t, r, id=f"{t}:{'+'.join(r)}") for t, r in ROWS])
def test_combination(runner: Runner, task: str, features: tuple[str, ...]) -> None:
    figures = runner.check(task, features)
    print(task, "+".join(features), " ".join(f"{k}: {v:.2e}" for k, v in figures.items()))  # shown with -s


@pytest.mark.parametrize("task", ["t2v", "meanflow"])
def test_decode_latents_of_a_combined_run(runner: Runner, task: str) -> None:
    """The latents a combined run saved (`ROWS`' last row of the task), decoded with --decode-latents and the same
    flags (the DiT's are ignored: only the VAE runs), give exactly the frames that run wrote."""
    features = frozenset(next(r for t, r in reversed(ROWS) if t == task))
    runner.run(task, features)
    out = runner.out_dir(task, features)
    [mp4] = out.glob("*.mp4")
    assert main(runner.argv(task, features, out.parent / (out.name + ".decoded"), io.latents_filename(mp4))) == 0
    [decoded] = (out.parent / (out.name + ".decoded")).glob("*.mp4")
    assert runner.videos[decoded].shape == (3, FRAMES, HEIGHT, WIDTH)
    assert torch.equal(runner.videos[decoded], runner.videos[mp4])


def test_every_pair_is_covered() -> None:
    """Every compatible pair of features runs together in some row, every task has rows, and each task's rows share
    one numeric set (so a task's plumbing rows reuse its reference runs)."""
    rows = [frozenset(r) for _, r in ROWS]
    assert all(compatible(tuple(r)) for r in rows)
    for a, b in itertools.combinations(FEATURES, 2):
        if compatible((a, b)):
            assert any({a, b} <= r for r in rows), (a, b)
    assert {t for t, _ in ROWS} == set(TASKS)
    for task in TASKS:
        numeric = {frozenset(f for f in r if FEATURES[f].numeric) for t, r in ROWS if t == task}
        assert len(numeric) == 1, (task, numeric)
