"""Hardening matrix (issue 9): bad weights, output faults, interrupts, numerics, environment.

Every row runs the real command line (`hyvideo.cli.main`, or `sample_video.py` in a subprocess where a process-wide
limit is needed) on the tiny model and checks the contract: exit 2 for bad input, 1 for a fault, 130 for Ctrl-C;
exactly one `error:` line on stderr naming the file or flag; no traceback; no partial output (no MP4, latents or
temporary file that a later run or a user could mistake for a result). Argument rows live in tests/test_cli.py.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

from hyvideo import cli, io
from hyvideo.checkpoints.layout import OFFICIAL_DIT_DIR, OFFICIAL_DIT_FILE
from hyvideo.modules.dit import HYVideoDiT
from hyvideo.modules.text_encoders import TextEncoders
from hyvideo.modules.vae import HYVideoVAE
from hyvideo.tiny import TINY_DIT, random_dit

ROOT = Path(__file__).resolve().parents[1]
DIT_DIR = f"{OFFICIAL_DIT_DIR}/transformers"  # official layout, relative to --model-base
DIT = f"{DIT_DIR}/{OFFICIAL_DIT_FILE}"
VAE = f"{OFFICIAL_DIT_DIR}/vae"
LOG_LINE = re.compile(r"^\d\d:\d\d:\d\d \| ")  # cli's loguru format
PROGRESS_BAR = re.compile(
    r"\d+/\d+ \[[^\]]*(it/s|s/it)\]\s*$"
)  # tqdm, redrawn with \r (left behind when stderr is a pipe)


@pytest.fixture(scope="module")
def models(tiny_v1) -> dict[str, Path]:
    """The session's (conftest.py), read only: the rows that break a file copy the folder first."""
    return {layout: tiny_v1(layout, 5) for layout in ("official", "diffusers")}


def argv(base: Path, out: Path, *extra: str) -> list[str]:
    """A request that runs in well under a second on the tiny model."""
    return [
        "--model-base", str(base), "--prompt", "a cat", "--video-size", "32", "32", "--video-length", "1",
        "--infer-steps", "2", "--seed", "1", "--save-path", str(out), "--device", "cpu", "--precision", "fp32",
        "--vae-precision", "fp32", "--text-encoder-precision", "fp32", "--text-encoder-precision-2", "fp32", *extra,
    ]  # fmt: skip


def error_line(stderr: str) -> str:
    """The one `error:` line of a failed run; log lines and progress-bar residue aside, nothing else on stderr."""
    assert "Traceback" not in stderr, stderr
    shown = [line.rsplit("\r", 1)[-1] for line in stderr.split("\n")]  # what a terminal shows after \r redraws
    other = [line for line in shown if line.strip() and not LOG_LINE.match(line) and not PROGRESS_BAR.search(line)]
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
    cfg = json.loads((base / DIT_DIR / "config.json").read_text())
    dims = {"text_states_dim": cfg["text_embed_dim"], "text_pool_dim": cfg["pooled_projection_dim"]}
    other = random_dit(TINY_DIT.replace(hidden_size=64, rope_axes=(4, 14, 14), **dims))
    torch.save({"module": other.state_dict()}, base / DIT)


def _bigger_vae(weights: str) -> Callable[[Path], None]:
    """VAE weights of another size (last block 64 channels instead of 32) under the model's own config.json."""

    def f(base: Path) -> None:
        from hyvideo.checkpoints.vae import random_vae, save_vae_diffusers, save_vae_official
        from hyvideo.tiny import tiny_vae_config

        cfg = dataclasses.replace(tiny_vae_config(), block_out_channels=(16, 32, 32, 64))
        save = save_vae_official if weights.endswith(".pt") else save_vae_diffusers
        save(random_vae(cfg), cfg, base / "other")
        shutil.copy(base / "other" / Path(weights).name, base / weights)

    return f


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
        "vae-other-size-pt",
        "official",
        _bigger_vae(f"{VAE}/pytorch_model.pt"),
        (f"{VAE}/pytorch_model.pt", "shape mismatches", "(checkpoint (64,"),
    ),
    (
        "vae-other-size-st",
        "diffusers",
        _bigger_vae("vae/diffusion_pytorch_model.safetensors"),
        ("vae/diffusion_pytorch_model.safetensors", "shape mismatches", "(checkpoint (64,"),
    ),
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


LATENTS_CASES = [  # (id, what becomes of a good latents file)
    ("truncated", lambda good: good[: len(good) // 2]),
    ("garbage", lambda good: b"\x10" + bytes(7) + b'{"a": 1'),
    ("empty", lambda good: b""),
]


@pytest.mark.parametrize("damage", [c[1] for c in LATENTS_CASES], ids=[c[0] for c in LATENTS_CASES])
def test_bad_latents_file_exit_2(
    damage: Callable[[bytes], bytes], models: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    path = io.save_latents(torch.zeros(1, 16, 1, 2, 2), tmp_path / "v.latents.safetensors", {"seed": 1})
    path.write_bytes(damage(path.read_bytes()))
    out = tmp_path / "out"
    flags = ["--model-base", str(models["official"]), "--decode-latents", str(path), "--save-path", str(out)]
    code, err = run_main([*flags, "--device", "cpu"], capsys)
    line = error_line(err)
    assert code == 2 and line.startswith(f"error: --decode-latents: {path}") and "not a latents file" in line, line
    assert outputs(out) == []


class _CreatesFile:
    """Unpickling this runs `Path.touch(marker)`: the test can see whether a loader executed it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[Path]]:
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("component", ["dit", "vae"])
def test_pickle_payload_refused_without_executing(
    component: str, models: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture, fast_text: None
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
    assert code == 2 and "refused" in line and "Unsupported global" in line and str(weights) in line, line
    assert not marker.exists()
    assert outputs(out) == []
    torch.load(weights, weights_only=False)  # the payload is live: an unsafe loader would have run it
    assert marker.exists()


# ---------------------------------------------------------------------------------------------------------------
# Numerics: NaN/inf latents stop the run at the step where they appear; nothing is decoded or written
# ---------------------------------------------------------------------------------------------------------------
NAN_CASES = [  # (bad value, extra flags, DiT call that returns it, step named in the message)
    (float("nan"), [], 2, 2),
    (float("inf"), [], 3, 3),
    (float("nan"), ["--cfg-scale", "2"], 3, 2),  # real CFG: two DiT calls per step
]


@pytest.mark.parametrize(("bad", "extra", "call", "step"), NAN_CASES, ids=["nan-step2", "inf-step3", "nan-cfg-step2"])
def test_non_finite_latents_named_at_their_step(
    bad: float,
    extra: list[str],
    call: int,
    step: int,
    models: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    fast_text: None,
) -> None:
    real = HYVideoDiT.forward
    calls: list[int] = []

    def forward(self: HYVideoDiT, *args: object, **kwargs: object) -> torch.Tensor:
        calls.append(1)
        out = real(self, *args, **kwargs)
        return torch.full_like(out, bad) if len(calls) == call else out

    monkeypatch.setattr(HYVideoDiT, "forward", forward)
    out = tmp_path / "out"
    code, err = run_main(argv(models["official"], out, "--infer-steps", "4", "--save-latents", *extra), capsys)
    line = error_line(err)
    assert code == 1, line
    assert f"step {step} of 4" in line and "--precision fp32" in line and "cfg-scale" in line, line
    per_step = 2 if "--cfg-scale" in extra else 1
    assert len(calls) == step * per_step  # stopped at the end of that step: no further steps, no decoding
    assert "decode seed" not in err and outputs(out) == []


# ---------------------------------------------------------------------------------------------------------------
# Output: disk full while writing -> exit 1, one line, no half-written file
# ---------------------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def file_size_limit(n: int) -> Iterator[None]:
    """Inside the block, from the moment decoding ends, no file this process (or ffmpeg) writes may exceed n bytes,
    as on a full disk (RLIMIT_FSIZE; SIGXFSZ ignored so writes fail with EFBIG). Restored on leaving the block,
    before pytest writes its own report (its output file may be larger than n)."""
    import resource

    from hyvideo import pipeline

    saved = resource.getrlimit(resource.RLIMIT_FSIZE), signal.getsignal(signal.SIGXFSZ)
    real = pipeline.decode

    def decode_then_limit(*args: object, **kwargs: object) -> torch.Tensor:
        video = real(*args, **kwargs)
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (n, saved[0][1]))
        return video

    pipeline.decode = decode_then_limit
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, saved[0])
        signal.signal(signal.SIGXFSZ, saved[1])
        pipeline.decode = real


DISK_FULL = [  # (id, bytes allowed per file, extra flags, text in the error line)
    ("mp4", 8000, [], "video encoder stopped"),  # the sidecar (~2 KB) fits, the MP4 (~14 KB) does not
    ("latents", 8000, ["--save-latents"], "latents"),  # written first; ~12 KB
    ("first-file", 200, [], "free disk space"),  # nothing fits
]


@pytest.mark.parametrize(("limit", "extra", "text"), [c[1:] for c in DISK_FULL], ids=[c[0] for c in DISK_FULL])
def test_disk_full_leaves_nothing(
    limit: int,
    extra: list[str],
    text: str,
    models: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    fast_text: None,
) -> None:
    out = tmp_path / "out"
    with file_size_limit(limit):
        code, err = run_main(
            argv(models["official"], out, "--video-size", "64", "64", "--video-length", "9", *extra), capsys
        )
    line = error_line(err)
    assert code == 1 and text in line, line
    assert outputs(out) == []


def test_truncated_mp4_is_detected(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`io.check_mp4` accepts a finished MP4 and refuses it cut anywhere (what a full disk or a killed ffmpeg
    leaves); on a full disk the error is ENOSPC, so batch runs stop instead of failing every later entry."""
    import errno
    from collections import namedtuple

    video = torch.rand(3, 5, 32, 48, generator=torch.Generator().manual_seed(0))
    path = io.write_mp4(video, tmp_path / "v.mp4")
    io.check_mp4(path)
    data = path.read_bytes()
    cut = tmp_path / "cut.mp4"
    for n in [0, 7, 8, 100, *range(200, len(data), max(1, len(data) // 23)), len(data) - 1]:
        cut.write_bytes(data[:n])
        with pytest.raises(OSError, match="stopped before finishing") as e:
            io.check_mp4(cut)
        assert e.value.errno == errno.EIO
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda _: usage(2**40, 2**40, 0))
    with pytest.raises(OSError, match="the disk is full") as e:
        io.check_mp4(cut)
    assert e.value.errno == errno.ENOSPC


# ---------------------------------------------------------------------------------------------------------------
# Ctrl-C at every stage -> exit 130, one line, no partial files; the same command then succeeds
# ---------------------------------------------------------------------------------------------------------------
def _sigint_on_call(n: int, real: Callable[..., object] | None = None) -> Callable[..., object]:
    """A stand-in that delivers a real SIGINT to this process on its n-th call (calls before it run `real`)."""
    calls: list[int] = []

    def fn(*args: object, **kwargs: object) -> object:
        calls.append(1)
        if len(calls) == n:
            signal.raise_signal(signal.SIGINT)  # Python's handler raises KeyboardInterrupt right here
            raise AssertionError("SIGINT did not interrupt")
        return real(*args, **kwargs)  # type: ignore[misc]

    return fn


INTERRUPTS = [  # (stage, object, attribute, on which call, extra flags)
    ("text-encoding", TextEncoders, "encode", 1, []),
    ("sampling", HYVideoDiT, "forward", 2, []),
    ("decoding", HYVideoVAE, "decode_latents", 1, []),
    ("writing-mp4", io, "to_uint8", 3, ["--video-length", "5"]),  # frame 3 of 5: the MP4 is half written
    ("writing-latents", io, "save_file", 1, ["--save-latents"]),
]


@pytest.mark.parametrize(
    ("owner", "attr", "call", "extra"), [c[1:] for c in INTERRUPTS], ids=[c[0] for c in INTERRUPTS]
)
def test_ctrl_c_exit_130_no_partial_files(
    owner: object,
    attr: str,
    call: int,
    extra: list[str],
    models: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
) -> None:
    if owner is not TextEncoders:
        request.getfixturevalue("fast_text")
    handler = signal.signal(signal.SIGINT, signal.default_int_handler)  # Python's own, whatever the runner set
    args = argv(models["official"], tmp_path / "out", *extra)
    try:
        with monkeypatch.context() as m:
            m.setattr(owner, attr, _sigint_on_call(call, getattr(owner, attr)))
            code, err = run_main(args, capsys)
    finally:
        signal.signal(signal.SIGINT, handler)
    assert error_line(err) == "error: interrupted" and code == 130
    assert outputs(tmp_path / "out") == []
    # nothing half-done is in the way: the same command now writes one complete set
    code, err = run_main(args, capsys)
    assert code == 0, err
    names = outputs(tmp_path / "out")
    assert sorted(Path(n).suffix for n in names) == sorted(
        [".mp4", ".json"] + ([".safetensors"] if "--save-latents" in extra else [])
    ), names


def test_ctrl_c_in_a_batch_keeps_finished_videos_and_resumes(
    models: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a cat\na dog\n")
    args = argv(models["official"], tmp_path / "out", "--prompt-file", str(prompts))
    del args[args.index("--prompt") : args.index("--prompt") + 2]
    handler = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with monkeypatch.context() as m:
            m.setattr(io, "to_uint8", _sigint_on_call(2, io.to_uint8))  # 1 frame per video: while writing the 2nd
            code, err = run_main(args, capsys)
    finally:
        signal.signal(signal.SIGINT, handler)
    assert error_line(err) == "error: interrupted" and code == 130
    first = outputs(tmp_path / "out")
    assert sorted(Path(n).suffix for n in first) == [".json", ".mp4"] and all(n.startswith("0001_") for n in first)
    kept = (tmp_path / "out" / next(n for n in first if n.endswith(".mp4"))).read_bytes()
    code, err = run_main(args, capsys)
    assert code == 0 and "1 finished earlier, 1 to do" in err, err
    names = outputs(tmp_path / "out")
    assert sorted(Path(n).suffix for n in names) == [".json", ".json", ".mp4", ".mp4"], names
    assert set(first) < set(names) and (tmp_path / "out" / first[1]).read_bytes() == kept


_SAMPLING_WAITS_FOR_SIGINT = """
import sys, time
from hyvideo.cli import main
from hyvideo.modules.dit import HYVideoDiT

def forward(self, *args, **kwargs):
    print("sampling", flush=True)  # the test sends SIGINT now, as Ctrl-C in a terminal would
    time.sleep(120)

HYVideoDiT.forward = forward
sys.exit(main(sys.argv[1:]))
"""


def test_sigint_from_outside_exit_130(models: dict[str, Path], tmp_path: Path) -> None:
    """A real signal sent by another process (the terminal's Ctrl-C) while the sampler is busy."""
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [sys.executable, "-c", _SAMPLING_WAITS_FOR_SIGINT, *argv(models["official"], out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        # as in a terminal: a test run started in the background by a non-interactive shell inherits SIGINT ignored,
        # and Python keeps an ignored SIGINT (no KeyboardInterrupt), so the child would sleep through the signal
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        assert proc.stdout.readline() == "sampling\n"
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130 and error_line(err) == "error: interrupted", err
    assert outputs(out) == []


# ---------------------------------------------------------------------------------------------------------------
# LoRA files that do not fit the DiT -> exit 2, one line naming the file (through the command line)
# ---------------------------------------------------------------------------------------------------------------
def _kohya(stem: str, down: tuple[int, int], up: tuple[int, int]) -> dict[str, torch.Tensor]:
    return {
        f"lora_unet_{stem}.lora_down.weight": torch.randn(down, generator=torch.Generator().manual_seed(0)),
        f"lora_unet_{stem}.lora_up.weight": torch.randn(up, generator=torch.Generator().manual_seed(1)),
    }


H, MLP = TINY_DIT.hidden_size, TINY_DIT.mlp_hidden
LORA_CASES = [  # (id, tensors, text in the error line)
    ("input-size", _kohya("double_blocks_0_img_mlp_fc1", (2, H + 1), (MLP, 2)), "input size"),
    ("output-size", _kohya("double_blocks_0_img_mlp_fc1", (2, H), (MLP + 3, 2)), "double_blocks_0_img_mlp_fc1"),
    ("rank-mismatch", _kohya("single_blocks_1_linear2", (2, H + MLP), (H, 3)), "not a LoRA pair"),
    ("block-beyond-depth", _kohya("double_blocks_7_img_mlp_fc1", (2, H), (MLP, 2)), "not in this DiT"),
    ("other-model", _kohya("down_blocks_0_attentions_0_proj_in", (2, 320), (320, 2)), "match no DiT layer"),
    ("truncated", None, "not a readable .safetensors"),
]


@pytest.mark.parametrize(("tensors", "text"), [c[1:] for c in LORA_CASES], ids=[c[0] for c in LORA_CASES])
def test_lora_that_does_not_fit_exit_2(
    tensors: dict[str, torch.Tensor] | None,
    text: str,
    models: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    fast_text: None,
) -> None:
    from safetensors.torch import save_file

    path = tmp_path / "style.safetensors"
    if tensors is None:
        save_file(_kohya("double_blocks_0_img_mlp_fc1", (2, H), (MLP, 2)), path)
        path.write_bytes(path.read_bytes()[:100])
    else:
        save_file(tensors, path)
    out = tmp_path / "out"
    code, err = run_main(argv(models["official"], out, "--lora", f"{path}:0.8"), capsys)
    line = error_line(err)
    assert code == 2 and str(path) in line and text in line, line
    assert outputs(out) == []


# ---------------------------------------------------------------------------------------------------------------
# Environment: a device, kernel package or GPU feature that is not there -> exit 2 before anything loads
# ---------------------------------------------------------------------------------------------------------------
ENV_CASES = [  # (id, flags, CUDA devices present, compute capability, packages installed, text in the error line)
    ("cuda-absent", ["--device", "cuda"], 0, None, (), "--device: cuda requested but CUDA is not available"),
    ("cuda-index", ["--device", "cuda:2"], 1, (9, 0), (), "--device: cuda:2: only 1 CUDA device"),
    ("flash-absent", ["--device", "cuda", "--attn-backend", "flash"], 1, (9, 0), (), "pip install flash-attn"),
    ("sage-absent", ["--device", "cuda", "--attn-backend", "sage"], 1, (9, 0), (), "pip install sageattention"),
    ("flash-on-cpu", ["--attn-backend", "flash"], 0, None, ("flash_attn",), "flash needs a CUDA device"),
    (
        "fp8-compute-on-ampere",
        ["--device", "cuda", "--use-fp8", "--fp8-compute"],
        1,
        (8, 0),
        (),
        "--fp8-compute: cuda has no fp8 matmul",
    ),
    ("fp8-compute-on-cpu", ["--use-fp8", "--fp8-compute"], 0, None, (), "--fp8-compute: needs a CUDA GPU"),
    ("mps-absent", ["--device", "mps"], 0, None, (), "--device: mps is not available"),
]


@pytest.mark.parametrize(
    ("flags", "gpus", "capability", "installed", "text"), [c[1:] for c in ENV_CASES], ids=[c[0] for c in ENV_CASES]
)
def test_missing_environment_exit_2(
    flags: list[str],
    gpus: int,
    capability: tuple[int, int] | None,
    installed: tuple[str, ...],
    text: str,
    models: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The machine is faked (CUDA devices, their compute capability, kernel packages), so every row runs anywhere."""
    import importlib.util

    real_find_spec = importlib.util.find_spec
    kernels = ("flash_attn", "sageattention")

    def find_spec(name: str, *args: object):
        if name in kernels:
            return real_find_spec("json") if name in installed else None
        return real_find_spec(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpus > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    out = tmp_path / "out"
    code, err = run_main(argv(models["official"], out, *flags), capsys)  # a later --device overrides argv's cpu
    line = error_line(err)
    assert code == 2 and text in line, line
    assert "models:" not in err and not out.exists()
