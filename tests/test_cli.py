"""Command line: defaults, validation (exit 2, one line, nothing written), exit codes of main(). No model loads."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import tempfile
import types
from pathlib import Path

import pytest
from loguru import logger

from hyvideo import cli
from hyvideo.request import SampleRequest, UsageError

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def base(tmp_path: Path) -> Path:
    d = tmp_path / "ckpts"
    d.mkdir()
    return d


@pytest.fixture
def out(tmp_path: Path) -> Path:
    return tmp_path / "results"  # does not exist: validation must not create it


def good(base: Path, out: Path, *extra: str) -> list[str]:
    return ["--prompt", "a cat", "--model-base", str(base), "--save-path", str(out), "--device", "cpu", *extra]


@pytest.fixture
def logs() -> list[str]:
    lines: list[str] = []
    handler = logger.add(lambda m: lines.append(str(m).rstrip()), level="DEBUG", format="{message}")
    yield lines
    logger.remove(handler)


@pytest.fixture
def fake_run(monkeypatch: pytest.MonkeyPatch) -> list[SampleRequest]:
    """Replace hyvideo.pipeline (may not exist yet) with a module whose run() records the request."""
    seen: list[SampleRequest] = []

    def run(request: SampleRequest) -> list[Path]:
        seen.append(request)
        return [request.save_dir / "video.mp4"]

    module = types.ModuleType("hyvideo.pipeline")
    module.run = run  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "hyvideo.pipeline", module)
    return seen


def request(argv: list[str]) -> SampleRequest:
    return cli.parse_request(argv)


# --- bad input: exit 2, one line naming the flag, nothing created ---

BAD: list[tuple[list[str], str]] = [
    (["--video-size", "720"], "--video-size"),
    (["--video-size", "720", "1280", "3"], "--video-size"),
    (["--video-size", "0", "1280"], "--video-size"),
    (["--video-size", "720", "-16"], "--video-size"),
    (["--video-size"], "--video-size"),
    (["--video-size", "a", "b"], "--video-size"),
    (["--video-length", "0"], "--video-length"),
    (["--video-length", "-3"], "--video-length"),
    (["--video-length", "128"], "--video-length"),
    (["--video-length", "2"], "--video-length"),
    (["--infer-steps", "0"], "--infer-steps"),
    (["--infer-steps", "-1"], "--infer-steps"),
    (["--cfg-scale", "-1"], "--cfg-scale"),
    (["--cfg-scale", "nan"], "--cfg-scale"),
    (["--cfg-scale", "inf"], "--cfg-scale"),
    (["--cfg-scale", "0.5"], "--cfg-scale"),
    (["--embedded-cfg-scale", "-0.1"], "--embedded-cfg-scale"),
    (["--embedded-cfg-scale", "nan"], "--embedded-cfg-scale"),
    (["--flow-shift", "0"], "--flow-shift"),
    (["--flow-shift", "-2"], "--flow-shift"),
    (["--flow-shift", "nan"], "--flow-shift"),
    (["--prompt", ""], "--prompt"),
    (["--prompt", "  \t\n "], "--prompt"),
    (["--batch-size", "0"], "--batch-size"),
    (["--num-videos", "0"], "--num-videos"),
    (["--ulysses-degree", "0"], "--ulysses-degree"),
    (["--ring-degree", "-1"], "--ring-degree"),
    (["--fps", "0"], "--fps"),
    (["--text-len", "0"], "--text-len"),
    (["--latent-channels", "32"], "--latent-channels"),
    (["--latent-channels", "16c"], "--latent-channels"),
    (["--seed", "-1"], "--seed"),
    (["--seed", "x"], "--seed"),
    (["--seed-type", "fixed"], "--seed-type"),
    (["--seed-type", "random", "--seed", "3"], "--seed-type"),
    (["--precision", "fp8"], "--precision"),
    (["--model", "HYVideo-T/3"], "--model"),
    (["--attn-backend", "sage"], "--attn-backend"),
    (["--vae-precision", "int8"], "--vae-precision"),
    (["--device", "tpu"], "--device"),
    (["--name-suffix", "a/b"], "--name-suffix"),
    (["--load-key", " "], "--load-key"),
    (["--prompt"], "--prompt"),
    (["--no-such-flag"], "--no-such-flag"),
    (["stray"], "stray"),
    (["--prompt-t", "dit-llm-encode"], "--prompt-t"),  # no abbreviations
    (["--vae-tile-size", "60"], "--vae-tile-size"),
    (["--vae-tile-size", "100"], "--vae-tile-size"),
    (["--vae-tile-size", "128", "--vae-tile-stride", "56"], "--vae-tile-stride"),  # overlap > half a tile
    (["--vae-tile-size", "128", "--vae-tile-stride", "136"], "--vae-tile-stride"),
    (["--vae-tile-stride", "100"], "--vae-tile-stride"),
]


@pytest.mark.parametrize(("extra", "flag"), BAD, ids=[" ".join(a) or "empty" for a, _ in BAD])
def test_bad_input_exit_2_one_line(
    extra: list[str], flag: str, base: Path, out: Path, capsys: pytest.CaptureFixture, fake_run: list
) -> None:
    assert cli.main(good(base, out, *extra)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: "), err
    assert flag in err
    assert "Traceback" not in err
    assert not out.exists()
    assert fake_run == []


UNSUPPORTED: list[list[str]] = [
    ["--batch-size", "2"],
    ["--denoise-type", "ddpm"],
    ["--flow-solver", "heun"],
    ["--use-linear-quadratic-schedule"],
    ["--text-encoder", "clipL"],
    ["--text-encoder-2", "llm"],
    ["--tokenizer", "clipL"],
    ["--tokenizer-2", "llm"],
]


@pytest.mark.parametrize("extra", UNSUPPORTED, ids=[" ".join(a) for a in UNSUPPORTED])
def test_unsupported_flags_fail_clearly(
    extra: list[str], base: Path, out: Path, capsys: pytest.CaptureFixture, fake_run: list
) -> None:
    assert cli.main(good(base, out, *extra)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and extra[0] in err and "not supported yet" in err
    assert not out.exists() and fake_run == []


def test_filesystem_errors(tmp_path: Path, base: Path, capsys: pytest.CaptureFixture, fake_run: list) -> None:
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    cases = [
        (["--prompt", "x", "--model-base", str(tmp_path / "nope"), "--save-path", str(tmp_path / "o")], "--model-base"),
        (["--prompt", "x", "--model-base", str(a_file), "--save-path", str(tmp_path / "o")], "--model-base"),
        (["--prompt", "x", "--model-base", str(base), "--save-path", str(a_file)], "--save-path"),
        (["--prompt", "x", "--model-base", str(base), "--save-path", str(a_file / "sub" / "dir")], "--save-path"),
        (["--prompt", "x", "--model-base", str(base), "--save-path", str(tmp_path / "o"), "--save-path-suffix", "a\0"], "--save-path"),
        (["--model-base", str(base), "--save-path", str(tmp_path / "o"), "--decode-latents", str(tmp_path / "no.st")], "--decode-latents"),
        (["--model-base", str(base), "--save-path", str(tmp_path / "o"), "--decode-latents", str(base)], "--decode-latents"),
        (["--prompt", "x", "--model-base", str(base), "--save-path", str(tmp_path / "o"), "--dit-weight", str(tmp_path / "no.pt")], "--dit-weight"),
    ]  # fmt: skip
    before = sorted(tmp_path.rglob("*"))
    for argv, flag in cases:
        assert cli.main([*argv, "--device", "cpu"]) == 2, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith(f"error: {flag}:"), err
    assert sorted(tmp_path.rglob("*")) == before
    assert fake_run == []


def test_unwritable_save_path(tmp_path: Path, base: Path, capsys: pytest.CaptureFixture) -> None:
    """A save path that cannot be created: its parent is a regular file (no user, root included, can create a
    directory there); as a non-root user also a directory without write permission."""
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    cases = [blocker / "new", blocker / "new" / "deeper"]
    locked = tmp_path / "locked"
    locked.mkdir()
    if os.geteuid() != 0:  # root writes anywhere: permission bits only bind other users
        locked.chmod(0o500)
        cases += [locked, locked / "new"]
    try:
        for save in cases:
            assert (
                cli.main(["--prompt", "x", "--model-base", str(base), "--save-path", str(save), "--device", "cpu"]) == 2
            )
            err = capsys.readouterr().err
            assert err.count("\n") == 1 and err.startswith("error: --save-path:"), err
        assert list(locked.iterdir()) == [] and blocker.read_text() == "x"
    finally:
        locked.chmod(0o700)


def test_unwritable_save_path_via_access(
    tmp_path: Path, base: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """A folder whose permission bits allow writing but where writing fails all the same (a read-only mount: root
    cannot bypass it, EROFS simulated on file creation there): found by trying, not by reading permissions."""
    ro = tmp_path / "ro"
    ro.mkdir()
    real_mkstemp = tempfile.mkstemp

    def mkstemp(*args: object, dir: str | None = None, **kw: object) -> tuple[int, str]:
        if dir is not None and Path(dir) == ro:
            raise OSError(errno.EROFS, "Read-only file system")
        return real_mkstemp(*args, dir=dir, **kw)

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    assert os.access(ro, os.W_OK)
    assert cli.main(["--prompt", "x", "--model-base", str(base), "--save-path", str(ro), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: --save-path:") and "Read-only" in err, err
    assert list(ro.iterdir()) == []


@pytest.mark.parametrize("where", ["proc", "under-a-file"])
def test_unwritable_save_path_refused_before_anything_loads(
    tmp_path: Path, base: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, where: str
) -> None:
    """/proc/x/out (a kernel file system root cannot write either) and a path under a regular file: exit 2, one
    line naming --save-path, for a prompt, a prompt file and --decode-latents alike; no loader is ever called."""
    from hyvideo import pipeline  # the real one: its loaders must never run

    def boom(*a: object, **k: object) -> None:
        raise AssertionError("a model was loaded")

    for name in ("load_dit", "load_vae", "TextEncoders", "run"):
        monkeypatch.setattr(pipeline, name, boom)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    save = Path("/proc/x/out") if where == "proc" else blocker / "sub"
    prompts = tmp_path / "p.txt"
    prompts.write_text("a cat\n")
    latents = tmp_path / "v.latents.safetensors"
    latents.write_bytes(b"not read before the check")
    common = ["--model-base", str(base), "--save-path", str(save), "--device", "cpu"]
    for source in (["--prompt", "x"], ["--prompt-file", str(prompts)], ["--decode-latents", str(latents)]):
        assert cli.main([*source, *common]) == 2, source
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("error: --save-path:"), err
    assert blocker.read_text() == "x"


def test_cuda_requested_without_cuda(base: Path, out: Path, capsys: pytest.CaptureFixture) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA is present")
    argv = [a for a in good(base, out) if a != "cpu" and a != "--device"]
    assert cli.main([*argv, "--device", "cuda"]) == 2
    assert capsys.readouterr().err.startswith("error: --device:")
    assert cli.main([*argv, "--attn-backend", "flash"]) == 2
    assert capsys.readouterr().err.startswith("error: --attn-backend:")


# --- main(): exit codes around the pipeline ---


def test_main_runs_pipeline_and_logs_paths(
    base: Path, out: Path, capsys: pytest.CaptureFixture, fake_run: list
) -> None:
    assert cli.main(good(base, out, "--seed", "3")) == 0
    assert len(fake_run) == 1 and fake_run[0].seed == 3
    assert "video.mp4" in capsys.readouterr().err


def _pipeline_raising(monkeypatch: pytest.MonkeyPatch, exc: BaseException) -> None:
    def run(request: SampleRequest) -> list[Path]:
        raise exc

    module = types.ModuleType("hyvideo.pipeline")
    module.run = run  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "hyvideo.pipeline", module)


def test_main_exit_codes(base: Path, out: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    from hyvideo.checkpoints import CheckpointError

    cases = [
        (KeyboardInterrupt(), 130, "error: interrupted"),
        (CheckpointError("ckpts/x.pt: file not found"), 2, "error: ckpts/x.pt: file not found"),
        (UsageError("--video-size", "too big for the model"), 2, "error: --video-size: too big"),
        (RuntimeError("boom\nsecond line"), 1, "error: RuntimeError: boom"),
    ]
    for exc, code, start in cases:
        _pipeline_raising(monkeypatch, exc)
        assert cli.main(good(base, out, "--seed", "1")) == code
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith(start), err
        assert "Traceback" not in err


def test_debug_shows_traceback(base: Path, out: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    _pipeline_raising(monkeypatch, ValueError("bad"))
    assert cli.main(good(base, out, "--seed", "1", "--debug")) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and err.rstrip().splitlines()[-1] == "error: ValueError: bad"


def test_help_exits_0(capsys: pytest.CaptureFixture) -> None:
    assert cli.main(["--help"]) == 0
    text = capsys.readouterr().out
    assert "--video-size" in text and "--no-vae-tiling" in text


@pytest.mark.parametrize(
    ("extra", "start"),
    [(["--model-base", "missing"], "error: --model-base:"), (["--precison", "bf16"], "error: unknown argument(s)")],
)
def test_subprocess_bad_input_no_traceback(extra: list[str], start: str, tmp_path: Path) -> None:
    out = tmp_path / "results"
    p = subprocess.run(
        [sys.executable, str(REPO / "sample_video.py"), "--prompt", "x", "--save-path", str(out), *extra],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert p.returncode == 2
    assert p.stderr.count("\n") == 1 and p.stderr.startswith(start), p.stderr
    assert "Traceback" not in p.stderr and p.stdout == ""
    assert not out.exists()


@pytest.mark.parametrize(
    "argv",
    [
        ["--vidoe-size", "1", "2"],
        ["--video-size", "1"],
        ["--video-size", "0", "5"],
        ["--precision", "fp64"],
        ["--help"],
    ],
)
def test_flag_mistakes_are_reported_before_torch_loads(argv: list[str]) -> None:
    """Parsing (hyvideo.flags, hyvideo.choices) does not import torch, so a mistyped flag or a malformed size is
    reported in a fraction of a second (measured 0.2 s, against 3-14 s with torch's import on this machine)."""
    code = (
        "import sys\nfrom hyvideo.cli import main\n"
        f"rc = main({argv!r})\n"
        "print('torch loaded' if 'torch' in sys.modules else 'torch not loaded', rc)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.stdout.splitlines()[-1] == f"torch not loaded {0 if argv == ['--help'] else 2}", (
        proc.stdout + proc.stderr
    )
