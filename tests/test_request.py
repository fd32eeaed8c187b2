"""The request layer (hyvideo.request): each stage's options and checks, defaults, resolved values, the Python
API's way in (values, not argv), and the hardware checks (--reproduce, --attn-backend sage). No model loads."""

from __future__ import annotations

import argparse
import dataclasses
import os
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from loguru import logger

from hyvideo import cli, hardware
from hyvideo.choices import DEFAULT_NEGATIVE_PROMPT
from hyvideo.errors import UsageError
from hyvideo.request import (
    STAGES,
    SUPPORTED_VALUES_ONLY,
    DecodeOptions,
    Family15Options,
    SampleRequest,
    SamplingOptions,
    flag_defaults,
    for_prompt,
    validate,
)


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


def request(argv: list[str]) -> SampleRequest:
    return cli.parse_request(argv)


def values(base: Path, out: Path, **changes: object) -> dict[str, object]:
    """Flag values by dest, as the Python API passes them (no argv)."""
    return {"prompt": "a cat", "model_base": str(base), "save_path": str(out), "device": "cpu", **changes}


# ---------------------------------------------------------------------------------------------------------------
# The stages
# ---------------------------------------------------------------------------------------------------------------
def test_request_is_one_options_object_per_stage(base: Path, out: Path) -> None:
    r = request(good(base, out, "--seed", "5", "--vae-tile-size", "128"))
    assert [f.name for f in dataclasses.fields(r)] == list(STAGES)
    assert isinstance(r.sampling, SamplingOptions) and isinstance(r.decode, DecodeOptions)
    assert r.seed == r.sampling.seed == 5 and r.vae_tile_stride == r.decode.vae_tile_stride == 96
    names = [f.name for stage in STAGES[:-1] for f in dataclasses.fields(getattr(r, stage))]
    names += [f.name for f in dataclasses.fields(Family15Options)]  # the last stage: None for v1 weights
    assert STAGES[-1] == "hv15" and r.hv15 is None and r.family == "v1"
    assert len(names) == len(set(names))  # a field's own name finds its stage
    with pytest.raises(AttributeError, match="no field 'items'"):
        r.items  # noqa: B018
    moved = r.replace(seed=9, fps=8)
    assert (moved.seed, moved.fps, moved.output.save_dir, r.seed) == (9, 8, out, 5)
    with pytest.raises(TypeError, match="no field 'sead'"):
        r.replace(sead=1)


def test_python_values_are_checked_like_flags(base: Path, out: Path) -> None:
    """validate takes values by dest directly (the Python API's way in): same defaults, same checks, same
    messages as the command line, including the parser's choices."""
    assert validate(values(base, out, seed=3)) == request(good(base, out, "--seed", "3"))
    with pytest.raises(UsageError, match=r"^--precision: invalid choice: 'fp64' \(choose from fp32, fp16, bf16\)$"):
        validate(values(base, out, precision="fp64"))
    with pytest.raises(UsageError, match="--video-length: must be 4n\\+1"):
        validate(values(base, out, video_length=6))
    assert set(flag_defaults()) == {a.dest for a in cli.build_parser()._actions} - {"help"}


def test_for_prompt_rebuilds_only_text_and_sampling(base: Path, out: Path) -> None:
    r = request(good(base, out, "--seed", "1", "--cfg-scale", "2"))
    flags = {**vars(cli.build_parser().parse_args(good(base, out, "--seed", "1", "--cfg-scale", "2")))}
    other = for_prompt(r, {**flags, "prompt": " a dog ", "video_size": [40, 64], "cfg_scale": 1.0})
    assert (other.prompt, other.height, other.width, other.neg_prompt) == ("a dog", 48, 64, None)
    assert (other.dit, other.decode, other.runtime, other.parallel, other.output) == (
        r.dit, r.decode, r.runtime, r.parallel, r.output
    )  # fmt: skip
    with pytest.raises(UsageError, match="--infer-steps"):
        for_prompt(r, {**flags, "infer_steps": 0})


# ---------------------------------------------------------------------------------------------------------------
# Hardware checks
# ---------------------------------------------------------------------------------------------------------------
def test_reproduce_sets_the_cublas_workspace_before_cuda_runs(
    base: Path, out: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Deterministic cuBLAS needs CUBLAS_WORKSPACE_CONFIG :4096:8 or :16:8 before its first GEMM: validating
    --reproduce sets it, keeps a valid value the user chose, and replaces an invalid one."""
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    request(good(base, out, "--seed", "1"))
    assert "CUBLAS_WORKSPACE_CONFIG" not in os.environ
    assert request(good(base, out, "--seed", "1", "--reproduce")).reproduce
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":16:8")
    request(good(base, out, "--seed", "1", "--reproduce"))
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":16:8"
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":0:0")
    request(good(base, out, "--seed", "1", "--reproduce"))
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"


def fake_gpu(monkeypatch: pytest.MonkeyPatch, cap: tuple[int, int], name: str) -> None:
    """One CUDA device of compute capability `cap`, and SageAttention installed."""
    monkeypatch.setattr(hardware, "cuda_count", lambda: 1)
    monkeypatch.setattr(hardware, "capability", lambda device: cap)
    monkeypatch.setattr(hardware, "device_name", lambda device: name)
    monkeypatch.setattr(hardware, "installed", lambda module: True)


def test_sage_refused_on_a_card_it_has_no_kernel_for(
    base: Path, out: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    argv = [*good(base, out, "--seed", "1", "--attn-backend", "sage"), "--device", "cuda"]
    fake_gpu(monkeypatch, (10, 0), "NVIDIA B200")
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: --attn-backend: sage has no kernel"), err
    assert "NVIDIA B200" in err and "sm100" in err and not out.exists()
    for cap in hardware.SAGE_CAPABILITIES:  # the capabilities sageattn dispatches on
        fake_gpu(monkeypatch, cap, "a supported card")
        assert request(argv).attn_backend == "sage"


def test_unsupported_table_names_real_flags() -> None:
    """Every entry of the table is a flag of the parser, and its default is one of the accepted values."""
    actions = {s: a for a in cli.build_parser()._actions for s in a.option_strings}
    for flag, accepted in SUPPORTED_VALUES_ONLY.items():
        assert flag in actions, flag
        assert actions[flag].default in accepted, flag


# ---------------------------------------------------------------------------------------------------------------
# Defaults and resolved values
# ---------------------------------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------------------------------
# Property: parse + validate never end in a traceback
# ---------------------------------------------------------------------------------------------------------------

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


def test_disable_autocast_is_documented_as_without_effect(base: Path, out: Path) -> None:
    """Parsed and recorded for the official scripts, but dtypes are explicit: --help says so."""
    action = next(a for a in cli.build_parser()._actions if "--disable-autocast" in a.option_strings)
    assert "accepted for compatibility" in action.help and "dtypes are explicit" in action.help
    assert request(good(base, out, "--seed", "1", "--disable-autocast")).disable_autocast
