"""Hardening matrix (issue 9): bad weights, output faults, interrupts, numerics, environment.

Every row runs the real command line (`hyvideo.cli.main`, or `sample_video.py` in a subprocess where a process-wide
limit is needed) on the tiny model and checks the contract: exit 2 for bad input, 1 for a fault, 130 for Ctrl-C;
exactly one `error:` line on stderr naming the file or flag; no traceback; no partial output (no MP4, latents or
temporary file that a later run or a user could mistake for a result). Argument rows live in tests/test_cli.py.
"""

from __future__ import annotations

import re
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from loguru import logger

from hyvideo import cli
from hyvideo.checkpoints.layout import OFFICIAL_DIT_DIR, OFFICIAL_DIT_FILE
from hyvideo.tiny import TINY_DIT, random_dit, write_tiny_model

ROOT = Path(__file__).resolve().parents[1]
DIT_DIR = f"{OFFICIAL_DIT_DIR}/transformers"  # official layout, relative to --model-base
DIT = f"{DIT_DIR}/{OFFICIAL_DIT_FILE}"
VAE = f"{OFFICIAL_DIT_DIR}/vae"
LOG_LINE = re.compile(r"^\d\d:\d\d:\d\d \| ")  # cli's loguru format


@pytest.fixture(autouse=True)
def _restore_logging() -> None:
    """main() points loguru at the captured stderr; put a plain handler back afterwards."""
    yield
    logger.remove()
    logger.add(sys.__stderr__, level="INFO")


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny")
    return {layout: write_tiny_model(root / layout, layout, seed=5) for layout in ("official", "diffusers")}


def argv(base: Path, out: Path, *extra: str) -> list[str]:
    """A request that runs in well under a second on the tiny model."""
    return [
        "--model-base", str(base), "--prompt", "a cat", "--video-size", "32", "32", "--video-length", "5",
        "--infer-steps", "2", "--seed", "1", "--save-path", str(out), "--device", "cpu", "--precision", "fp32",
        "--vae-precision", "fp32", "--text-encoder-precision", "fp32", "--text-encoder-precision-2", "fp32", *extra,
    ]  # fmt: skip


def error_line(stderr: str) -> str:
    """The one `error:` line of a failed run; log lines and progress-bar residue aside, nothing else on stderr."""
    assert "Traceback" not in stderr, stderr
    shown = [line.rsplit("\r", 1)[-1] for line in stderr.split("\n")]  # what a terminal shows after \r redraws
    other = [line for line in shown if line.strip() and not LOG_LINE.match(line)]
    assert len(other) == 1 and other[0].startswith("error: "), stderr
    assert other[0] == [line for line in shown if line.strip()][-1], stderr  # and it is the last thing printed
    return other[0]


def outputs(out: Path) -> list[str]:
    """Every file under the output folder, hidden temporaries included."""
    return sorted(str(p.relative_to(out)) for p in out.rglob("*")) if out.exists() else []


@pytest.fixture(scope="module")
def text_cache(models: dict[str, Path]) -> dict[tuple, object]:
    return {}


@pytest.fixture
def fast_text(monkeypatch: pytest.MonkeyPatch, text_cache: dict[tuple, object]) -> None:
    """Reuse the text embeddings of the first run for rows whose fault lies elsewhere (saves ~2 s of loading each);
    the first run of each prompt/model goes through the real encoders."""
    from hyvideo import pipeline

    real = pipeline.encode_text

    def cached(req, paths, device):
        key = (req.prompt, req.neg_prompt, req.video_length, paths.layout, paths.text_encoder.parent.name)
        if key not in text_cache:
            text_cache[key] = real(req, paths, device)
        return text_cache[key]

    monkeypatch.setattr(pipeline, "encode_text", cached)


def run_main(args: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str]:
    code = cli.main(args)
    return code, capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------------------
# Weights: missing, truncated, corrupt, wrong architecture, pickle payloads -> exit 2, one line naming the file
# ---------------------------------------------------------------------------------------------------------------
def _rm(rel: str) -> Callable[[Path], None]:
    def f(base: Path) -> None:
        path = base / rel
        shutil.rmtree(path) if path.is_dir() else path.unlink()

    return f


def _truncate(rel: str, keep: float = 0.5) -> Callable[[Path], None]:
    def f(base: Path) -> None:
        data = (base / rel).read_bytes()
        (base / rel).write_bytes(data[: int(len(data) * keep)])

    return f


def _scramble_header(rel: str) -> Callable[[Path], None]:
    """Overwrite the first 64 bytes (safetensors header length / zip local header) with noise."""

    def f(base: Path) -> None:
        data = bytearray((base / rel).read_bytes())
        data[:64] = bytes((i * 37 + 11) % 256 for i in range(64))
        (base / rel).write_bytes(bytes(data))

    return f


def _flip_bytes(rel: str) -> Callable[[Path], None]:
    """Corrupt bytes all through the file (zip directory included), size unchanged."""

    def f(base: Path) -> None:
        data = bytearray((base / rel).read_bytes())
        for i in range(100, len(data), 997):
            data[i] ^= 0xFF
        (base / rel).write_bytes(bytes(data))

    return f


def _copy(dst: str, src: str) -> Callable[[Path], None]:
    return lambda base: shutil.copy(base / src, base / dst)


def _write(rel: str, text: str) -> Callable[[Path], None]:
    return lambda base: (base / rel).write_text(text)


def _bigger_dit(base: Path) -> None:
    """A DiT state dict of the same family but another size (hidden 64 instead of 48)."""
    import json

    cfg = json.loads((base / DIT_DIR / "config.json").read_text())
    dims = {"text_states_dim": cfg["text_embed_dim"], "text_pool_dim": cfg["pooled_projection_dim"]}
    other = random_dit(TINY_DIT.replace(hidden_size=64, rope_axes=(4, 14, 14), **dims))
    torch.save({"module": other.state_dict()}, base / DIT)


# (id, layout, how to break the model, text the error line must contain)
WEIGHT_CASES: list[tuple[str, str, Callable[[Path], None], tuple[str, ...]]] = [
    # a component missing: one line listing what was expected where
    ("no-dit-file", "official", _rm(DIT), ("missing", DIT)),
    ("no-vae-config", "official", _rm(f"{VAE}/config.json"), ("missing", f"{VAE}/config.json")),
    ("no-vae-weights", "official", _rm(f"{VAE}/pytorch_model.pt"), ("missing", f"{VAE}/pytorch_model.pt")),
    ("no-text-encoder", "official", _rm("text_encoder"), ("missing", "text_encoder")),
    ("no-text-encoder-2", "official", _rm("text_encoder_2"), ("missing", "text_encoder_2")),
    ("no-llm-weights", "official", _rm("text_encoder/model.safetensors"), ("text_encoder/model.safetensors",)),
    ("no-llm-config", "official", _rm("text_encoder/config.json"), ("text_encoder/config.json",)),
    ("no-llm-vocab", "official", _rm("text_encoder/tokenizer.json"), ("text_encoder/tokenizer.json",)),
    ("no-clip-vocab", "official", _rm("text_encoder_2/tokenizer.json"), ("text_encoder_2/tokenizer.json",)),
    ("no-transformer", "diffusers", _rm("transformer"), ("missing", "transformer")),
    ("no-dit-shards", "diffusers", _rm("transformer/diffusion_pytorch_model.safetensors"), ("transformer/",)),
    ("no-tokenizer", "diffusers", _rm("tokenizer"), ("missing", "tokenizer")),
    ("no-tokenizer-2", "diffusers", _rm("tokenizer_2"), ("missing", "tokenizer_2")),
    ("no-vae-dir", "diffusers", _rm("vae"), ("missing", "vae")),
    # truncated or corrupt files
    ("dit-pt-truncated", "official", _truncate(DIT), (DIT, "truncated or corrupt")),
    ("dit-pt-corrupt", "official", _flip_bytes(DIT), (DIT, "truncated or corrupt")),
    ("dit-pt-empty", "official", _truncate(DIT, 0), (DIT,)),
    ("vae-pt-truncated", "official", _truncate(f"{VAE}/pytorch_model.pt"), (f"{VAE}/pytorch_model.pt", "corrupt")),
    ("vae-pt-corrupt", "official", _flip_bytes(f"{VAE}/pytorch_model.pt"), (f"{VAE}/pytorch_model.pt", "corrupt")),
    ("llm-truncated", "official", _truncate("text_encoder/model.safetensors"), ("text_encoder", "LLM")),
    ("llm-bad-header", "official", _scramble_header("text_encoder/model.safetensors"), ("text_encoder", "LLM")),
    ("clip-truncated", "official", _truncate("text_encoder_2/model.safetensors"), ("text_encoder_2", "CLIP")),
    ("clip-empty", "official", _truncate("text_encoder_2/model.safetensors", 0), ("text_encoder_2", "CLIP")),
    ("llm-config-not-json", "official", _write("text_encoder/config.json", "{"), ("text_encoder",)),
    ("llm-vocab-not-json", "official", _write("text_encoder/tokenizer.json", "{"), ("text_encoder", "tokenizer")),
    ("dit-config-not-json", "official", _write(f"{DIT_DIR}/config.json", "{"), (f"{DIT_DIR}/config.json",)),
    ("vae-config-not-json", "official", _write(f"{VAE}/config.json", "["), (f"{VAE}/config.json",)),
    (
        "dit-st-truncated",
        "diffusers",
        _truncate("transformer/diffusion_pytorch_model.safetensors"),
        ("transformer/diffusion_pytorch_model.safetensors", "truncated or corrupt"),
    ),
    (
        "dit-st-bad-header",
        "diffusers",
        _scramble_header("transformer/diffusion_pytorch_model.safetensors"),
        ("transformer/diffusion_pytorch_model.safetensors", "corrupt"),
    ),
    (
        "vae-st-truncated",
        "diffusers",
        _truncate("vae/diffusion_pytorch_model.safetensors"),
        ("vae/diffusion_pytorch_model.safetensors", "corrupt"),
    ),
    ("llm-st-truncated", "diffusers", _truncate("text_encoder/model.safetensors"), ("text_encoder", "LLM")),
    # a state dict for another architecture or size: names the first mismatching keys / shapes
    ("dit-other-size", "official", _bigger_dit, (DIT, "shape mismatches", "img_attn_k_norm.weight (checkpoint (32,)")),
    ("dit-holds-vae", "official", _copy(DIT, f"{VAE}/pytorch_model.pt"), (DIT, "missing keys", "unexpected keys")),
    ("vae-holds-dit", "official", _copy(f"{VAE}/pytorch_model.pt", DIT), (f"{VAE}/pytorch_model.pt",)),
    (
        "llm-holds-clip",
        "official",
        _copy("text_encoder/model.safetensors", "text_encoder_2/model.safetensors"),
        ("text_encoder", "missing weights", "embed_tokens.weight"),
    ),
    (
        "clip-holds-llm",
        "official",
        _copy("text_encoder_2/model.safetensors", "text_encoder/model.safetensors"),
        ("text_encoder_2", "missing weights", "token_embedding.weight"),
    ),
]


@pytest.mark.parametrize(("case", "layout", "breakage", "expected"), WEIGHT_CASES, ids=[c[0] for c in WEIGHT_CASES])
def test_bad_weights_exit_2_naming_the_file(
    case: str,
    layout: str,
    breakage: Callable[[Path], None],
    expected: tuple[str, ...],
    models: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    request: pytest.FixtureRequest,
) -> None:
    if not any(part in case for part in ("llm", "clip", "text-encoder", "tokenizer")):
        request.getfixturevalue("fast_text")
    base = shutil.copytree(models[layout], tmp_path / "model")
    breakage(base)
    out = tmp_path / "out"
    code, err = run_main(argv(base, out), capsys)
    line = error_line(err)
    assert code == 2, line
    for text in expected:
        assert text in line.replace(str(base) + "/", ""), (text, line)
    assert outputs(out) == []
    if case.startswith("vae"):  # checked before any model loads, not found after sampling
        assert "text encode:" not in err, err


class _CreatesFile:
    """Unpickling this runs `Path.touch(marker)`: the test can see whether a loader executed it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[Path]]:
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("component", ["dit", "vae"])
def test_pickle_payload_refused_without_executing(
    component: str, models: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """An official .pt with a code-running object next to the weights: exit 2, and the code never ran."""
    base = shutil.copytree(models["official"], tmp_path / "model")
    weights = base / (DIT if component == "dit" else f"{VAE}/pytorch_model.pt")
    marker = tmp_path / "payload-ran"
    state = torch.load(weights, weights_only=True)
    torch.save({**state, "extra": _CreatesFile(marker)}, weights)
    out = tmp_path / "out"
    code, err = run_main(argv(base, out), capsys)
    line = error_line(err)
    assert code == 2 and "refused" in line and str(weights) in line, line
    assert not marker.exists()
    assert outputs(out) == []
    torch.load(weights, weights_only=False)  # the payload is live: an unsafe loader would have run it
    assert marker.exists()
