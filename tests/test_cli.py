"""Command line: defaults, validation (exit 2, one line, nothing written), exit codes of main(). No model loads."""

from __future__ import annotations

import argparse
import dataclasses
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from loguru import logger

from hyvideo import cli
from hyvideo.request import DEFAULT_NEGATIVE_PROMPT, SUPPORTED_VALUES_ONLY, SampleRequest, UsageError, validate

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


def test_unsupported_table_names_real_flags() -> None:
    """Every entry of the table is a flag of the parser, and its default is one of the accepted values."""
    actions = {s: a for a in cli.build_parser()._actions for s in a.option_strings}
    for flag, accepted in SUPPORTED_VALUES_ONLY.items():
        assert flag in actions, flag
        assert actions[flag].default in accepted, flag


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


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere; permission bits do not apply")
def test_unwritable_save_path(tmp_path: Path, base: Path, capsys: pytest.CaptureFixture) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        for save in (locked, locked / "new"):
            assert cli.main(["--prompt", "x", "--model-base", str(base), "--save-path", str(save)]) == 2
            assert capsys.readouterr().err.startswith("error: --save-path:")
        assert list(locked.iterdir()) == []
    finally:
        locked.chmod(0o700)


def test_unwritable_save_path_via_access(
    tmp_path: Path, base: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """Same as above for any user (root included): os.access says the directory is not writable."""
    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == locked else real_access(p, mode))
    for save in (locked, locked / "new"):
        assert cli.main(["--prompt", "x", "--model-base", str(base), "--save-path", str(save), "--device", "cpu"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: --save-path:") and "not writable" in err
    assert list(locked.iterdir()) == []


def test_cuda_requested_without_cuda(base: Path, out: Path, capsys: pytest.CaptureFixture) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA is present")
    argv = [a for a in good(base, out) if a != "cpu" and a != "--device"]
    assert cli.main([*argv, "--device", "cuda"]) == 2
    assert capsys.readouterr().err.startswith("error: --device:")
    assert cli.main([*argv, "--attn-backend", "flash"]) == 2
    assert capsys.readouterr().err.startswith("error: --attn-backend:")


# --- defaults and resolution ---


def test_official_defaults() -> None:
    a = cli.build_parser().parse_args([])
    expected = {
        "model": "HYVideo-T/2-cfgdistill",
        "latent_channels": 16,
        "precision": "bf16",
        "rope_theta": 256,
        "vae": "884-16c-hy",
        "vae_precision": "fp16",
        "vae_tiling": True,
        "text_encoder": "llm",
        "text_encoder_precision": "fp16",
        "text_states_dim": 4096,
        "text_len": 256,
        "tokenizer": "llm",
        "prompt_template": "dit-llm-encode",
        "prompt_template_video": "dit-llm-encode-video",
        "hidden_state_skip_layer": 2,
        "apply_final_norm": False,
        "text_encoder_2": "clipL",
        "text_encoder_precision_2": "fp16",
        "text_states_dim_2": 768,
        "tokenizer_2": "clipL",
        "text_len_2": 77,
        "denoise_type": "flow",
        "flow_shift": 7.0,
        "flow_reverse": False,
        "flow_solver": "euler",
        "use_linear_quadratic_schedule": False,
        "linear_schedule_end": 25,
        "model_base": "ckpts",
        "model_resolution": "540p",
        "load_key": "module",
        "use_cpu_offload": False,
        "batch_size": 1,
        "infer_steps": 50,
        "disable_autocast": False,
        "save_path": "./results",
        "save_path_suffix": "",
        "name_suffix": "",
        "num_videos": 1,
        "video_size": [720, 1280],
        "video_length": 129,
        "prompt": None,
        "seed_type": "auto",
        "seed": None,
        "neg_prompt": None,
        "cfg_scale": 1.0,
        "embedded_cfg_scale": 6.0,
        "use_fp8": False,
        "reproduce": False,
        "ulysses_degree": 1,
        "ring_degree": 1,
        # ours
        "fps": 24,
        "save_latents": False,
        "decode_latents": None,
        "debug": False,
        "attn_backend": "auto",
        "device": None,
    }
    assert {k: getattr(a, k) for k in expected} == expected


def test_request_fields_resolved(base: Path, out: Path) -> None:
    r = request(good(base, out, "--seed", "7", "--video-size", "544", "960", "--video-length", "33"))
    assert (r.height, r.width, r.video_length, r.seed, r.seed_was_random) == (544, 960, 33, 7, False)
    assert r.model_base == base and isinstance(r.model_base, Path)
    assert r.save_dir == out and r.device == "cpu" and r.prompt == "a cat"
    assert r.dit_weight is None and r.decode_latents is None and r.vae_tiling
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.seed = 3  # type: ignore[misc]
    assert not out.exists()


def test_default_device(base: Path, out: Path) -> None:
    import torch

    argv = [a for a in good(base, out) if a not in ("--device", "cpu")]
    assert request(argv).device == ("cuda" if torch.cuda.is_available() else "cpu")


def test_sizes_rounded_up_to_16_with_log_line(base: Path, out: Path, logs: list[str]) -> None:
    r = request(good(base, out, "--video-size", "100", "130", "--seed", "1"))
    assert (r.height, r.width) == (112, 144)
    assert any("rounded up to 112 144" in line for line in logs), logs
    logs.clear()
    r = request(good(base, out, "--video-size", "544", "960", "--seed", "1"))
    assert (r.height, r.width) == (544, 960)
    assert not any("rounded" in line for line in logs)


def test_seed_picked_when_missing_and_reported(base: Path, out: Path, logs: list[str]) -> None:
    r = request(good(base, out))
    assert r.seed_was_random and 0 <= r.seed <= 1_000_000
    assert any(f"seed {r.seed}" in line for line in logs), logs


def test_save_path_suffix(base: Path, tmp_path: Path) -> None:
    r = request(good(base, tmp_path / "res", "--save-path-suffix", "x"))
    assert r.save_dir == tmp_path / "res_x"


def test_negative_prompt_default_only_with_real_cfg(base: Path, out: Path, logs: list[str]) -> None:
    assert request(good(base, out)).neg_prompt is None
    assert request(good(base, out, "--cfg-scale", "1")).neg_prompt is None
    assert request(good(base, out, "--cfg-scale", "6")).neg_prompt == DEFAULT_NEGATIVE_PROMPT
    assert request(good(base, out, "--cfg-scale", "6", "--neg-prompt", " ")).neg_prompt == DEFAULT_NEGATIVE_PROMPT
    assert request(good(base, out, "--cfg-scale", "6", "--neg-prompt", " blur ")).neg_prompt == "blur"
    logs.clear()
    assert request(good(base, out, "--neg-prompt", "blur")).neg_prompt is None
    assert any("--neg-prompt has no effect" in line for line in logs)


def test_decode_latents_needs_no_prompt(base: Path, out: Path, tmp_path: Path) -> None:
    lat = tmp_path / "a.latents.safetensors"
    lat.write_bytes(b"x")
    r = request(["--model-base", str(base), "--save-path", str(out), "--decode-latents", str(lat), "--device", "cpu"])
    assert r.prompt is None and r.decode_latents == lat


def test_usage_error_is_one_line() -> None:
    assert str(UsageError("--x", "a\nb\r\n  c")) == "--x: a b c"
    assert str(UsageError(None, "m")) == "m"


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


# --- property: parse + validate never end in a traceback ---

FLAGS = [
    a
    for a in cli.build_parser()._actions
    if a.option_strings and a.option_strings[0] not in ("-h", "--help", "--model-base", "--save-path")
]

VALUES = st.one_of(
    st.integers(-(2**70), 2**70).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(str),
    st.sampled_from(["", " ", "nan", "-inf", "1e309", "0", "-0", "4n+1", "fp16", "cuda:0", "-", "--", "a\0b"]),
    st.text(max_size=12),
)


def value_for(action: argparse.Action) -> st.SearchStrategy[str]:
    """Mostly plausible values for this flag (so validation gets deep), sometimes garbage."""
    if action.choices:
        plausible = st.sampled_from([str(c) for c in action.choices])
    elif action.type is int:
        plausible = st.integers(-3, 300).map(str)
    elif action.type is float:
        plausible = st.floats(-2, 20).map(str)
    else:
        plausible = st.text(max_size=12)
    return st.one_of(*[plausible] * 7, VALUES)


@st.composite
def argv_lists(draw: st.DrawFn) -> list[str]:
    argv = ["--prompt", "a cat", "--device", "cpu"] if draw(st.booleans()) else []  # later flags override
    for _ in range(draw(st.integers(0, 5))):
        action = draw(st.sampled_from(FLAGS))
        argv.append(draw(st.sampled_from(action.option_strings)))
        n = action.nargs
        count = 0 if n == 0 else draw(st.sampled_from([2, 2, 2, 0, 1, 3])) if n == "+" else 1
        argv += [draw(value_for(action)) for _ in range(count)]
    if draw(st.integers(0, 9)) == 0:
        argv.append(draw(st.text(max_size=8)))
    return argv


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(argv=argv_lists())
def test_random_arguments_never_crash(argv: list[str], base: Path, out: Path) -> None:
    try:
        args = cli.build_parser().parse_args(["--model-base", str(base), "--save-path", str(out), *argv])
        validate(args)
    except UsageError as e:
        assert "\n" not in str(e) and str(e)
    assert not out.exists()
