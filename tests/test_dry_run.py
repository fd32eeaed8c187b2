"""--dry-run and --gpu-memory: the memory plan of a request printed before any download, nothing loaded or written."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from hyvideo import cli, hv15, pipeline
from hyvideo.memory import GiB, estimate, estimate15
from hyvideo.tiny import write_tiny15_model, write_tiny_model

ROOT = Path(__file__).resolve().parents[1]
PLAN_720P = ["--dry-run", "--video-size", "720", "1280", "--video-length", "129"]


@pytest.fixture
def no_loading(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every loader and the run itself fail the test if called: a dry run loads nothing."""

    def boom(*a: object, **k: object) -> None:
        raise AssertionError("a dry run loaded a model")

    for name in ("load_dit", "load_vae", "TextEncoders", "load_denoiser", "load_decoder", "run", "run15", "preflight"):
        monkeypatch.setattr(pipeline, name, boom)
    for name in ("encode_text", "encode_image", "load_encoder", "load_decoder"):  # HunyuanVideo 1.5's loaders
        monkeypatch.setattr(hv15, name, boom)


def dry(argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, list[str], str]:
    code = cli.main(argv)
    got = capsys.readouterr()
    return code, got.out.splitlines(), got.err


def test_plan_for_a_24_gb_card_without_weights(tmp_path: Path, capsys, no_loading) -> None:
    """The released model's sizes (no --model-base yet), a 24 GB card: the per-stage plan, and the estimator's answer
    for 720p x 129 (DiT weights 23.9 + activations 18.5 GiB as requested), block offload (20.4 GiB)."""
    out = tmp_path / "results"
    argv = [*PLAN_720P, "--gpu-memory", "24", "--model-base", str(tmp_path / "ckpts"), "--save-path", str(out)]
    code, lines, err = dry(argv, capsys)
    assert code == 0, err
    text = "\n".join(lines)
    assert lines[0].startswith("dry run, nothing loaded; sizes from the released HYVideo-T/2-cfgdistill")
    assert "peak cuda 42.4 GiB" in lines[1]
    for stage in ("text encoders: weights 13.40", "DiT denoise: weights 23.88 + activations 18.51", "VAE decode"):
        assert stage in text, text
    assert "capacity: cuda 23.5 GiB" in text  # 24 GiB less the CUDA context
    assert "cheapest flags that fit: --offload block (peak cuda 20.4 GiB" in text, text
    assert list(tmp_path.iterdir()) == []  # nothing written, not even the output folder


def test_small_cards(tmp_path: Path, capsys, no_loading) -> None:
    """What the plan says where nothing fits: the stage that blocks it and what to do."""
    base = ["--model-base", str(tmp_path / "none"), "--video-length", "129", "--dry-run", "--gpu-memory"]
    code, lines, _ = dry([*base, "16", "--video-size", "720", "1280"], capsys)
    assert (
        code == 0 and "no flag set fits" in lines[-2] and "DiT denoise" in lines[-2] and "--ulysses-degree" in lines[-2]
    )
    code, lines, _ = dry([*base, "16", "--video-size", "544", "960"], capsys)
    assert code == 0 and "cheapest flags that fit: --offload block (peak cuda 12.4 GiB" in lines[-2]
    # 12 GB: under block offload the LLM's layers stream too (text stage 2.1 GiB), so the DiT decides
    code, lines, _ = dry([*base, "12", "--video-size", "544", "960"], capsys)
    assert code == 0 and "--use-fp8 --offload block the DiT denoise stage needs 12.1 GiB" in lines[-2]
    code, lines, _ = dry([*base, "12", "--video-size", "480", "848"], capsys)
    assert code == 0 and "cheapest flags that fit: --offload block (peak cuda 10.1 GiB" in lines[-2]
    code, lines, _ = dry([*base, "2", "--video-size", "64", "64"], capsys)
    assert code == 0 and "text encoders stage needs 2.1 GiB" in lines[-2] and "larger card" in lines[-2]
    code, lines, _ = dry([*base, "80", "--video-size", "720", "1280"], capsys)
    assert code == 0 and lines[-2] == "fits as requested"


def test_plan_for_a_sequence_parallel_job_without_torchrun(tmp_path: Path, capsys, no_loading) -> None:
    """The degrees plan the job they describe (not started: no torchrun needed): 720p x 129 on 16 GB cards fits with
    4-way Ulysses (DiT weights sharded 1/4, activations 1/4 per card), and 4 processes' host RAM is counted."""
    argv = [*PLAN_720P, "--gpu-memory", "16", "--ulysses-degree", "4", "--model-base", str(tmp_path / "none")]
    code, lines, err = dry(argv, capsys)
    assert code == 0, err
    assert "parallel 4" in lines[1] and "4 processes" in lines[1] and lines[-2] == "fits as requested", lines


def test_plan_with_weights_present_uses_their_configs(tmp_path: Path, capsys, no_loading) -> None:
    """With weights under --model-base the sizes come from their configs (here the tiny model: a few MiB)."""
    base = write_tiny_model(tmp_path / "tiny", "official", seed=0)
    small = ["--video-size", "64", "96", "--video-length", "9"]
    code, lines, err = dry(["--dry-run", "--gpu-memory", "1", "--model-base", str(base), *small], capsys)
    assert code == 0, err
    assert lines[0] == f"dry run, nothing loaded; sizes from the configs under {base}"
    assert lines[-2] == "fits as requested" and "DiT denoise: weights 0.00" in lines[3], lines


def test_without_gpu_memory_on_a_cpu_machine_plans_for_ram(tmp_path: Path, capsys, no_loading) -> None:
    code, lines, err = dry([*PLAN_720P, "--device", "cpu", "--model-base", str(tmp_path / "none")], capsys)
    assert code == 0, err
    assert "peak cpu" in lines[1] and lines[-1].startswith("planned for this machine's RAM")


@pytest.mark.parametrize(
    ("extra", "flag"),
    [
        (["--gpu-memory", "24"], "--gpu-memory"),  # without --dry-run: a real run checks its own card
        (["--dry-run", "--gpu-memory", "0"], "--gpu-memory"),
        (["--dry-run", "--gpu-memory", "nan"], "--gpu-memory"),
        (["--dry-run", "--gpu-memory", "24", "--device", "cpu"], "--gpu-memory"),
        (["--dry-run", "--decode-latents", "x.latents.safetensors"], "--dry-run"),
    ],
)
def test_bad_dry_run_flags(tmp_path: Path, capsys, no_loading, extra: list[str], flag: str) -> None:
    (tmp_path / "x.latents.safetensors").write_bytes(b"x")
    extra = [str(tmp_path / e) if e.endswith(".safetensors") else e for e in extra]
    code, lines, err = dry(["--prompt", "a cat", "--model-base", str(tmp_path), *extra], capsys)
    assert code == 2 and lines == [] and err.count("\n") == 1 and err.startswith(f"error: {flag}:"), err


# ---------------------------------------------------------------------------------------------------------------
# HunyuanVideo 1.5: the plan of its own components (Qwen2.5-VL, byT5, SigLIP, the 8.3B DiT, the 32-channel VAE)
# ---------------------------------------------------------------------------------------------------------------
def test_plan15_without_weights_is_the_release_of_the_version(tmp_path: Path, capsys, no_loading) -> None:
    """Before the download the flags name the version (--resolution 720p: 720p_t2v, 1280x720, cfg 6: real CFG):
    the plan is the one the 1.5 preflight makes (`estimate15` of the release), not v1's sizes (its 13B DiT is
    23.9 GiB of bf16 weights; 1.5's 8,326,608,160 parameters are 15.51 GiB). Real CFG runs its two branches one
    after the other (as the pipeline does), so 720p x 121 on 24 GB fits with fp8 weights, as without real CFG."""
    base = ["--model-base", str(tmp_path / "ckpts"), "--resolution", "720p", "--dry-run", "--gpu-memory", "24"]
    code, lines, err = dry([*base, "--prompt", "a cat"], capsys)
    assert code == 0, err
    assert (
        lines[0]
        == f"dry run, nothing loaded; sizes from the released HunyuanVideo 1.5 720p_t2v (no weights under {tmp_path / 'ckpts'})"
    )
    want = estimate15(720, 1280, 121, version="720p_t2v", cfg_batched=False)
    assert lines[1].startswith("memory estimate for 1280x720x121 (bf16, offload none, real CFG one branch at a time")
    assert f"peak cuda {want.device_peak / GiB:.1f} GiB" in lines[1], lines[1]
    assert "DiT denoise: weights 15.51 + " in lines[3], lines
    assert lines[-2].startswith("cheapest flags that fit: --use-fp8 (peak cuda"), lines
    code, lines, err = dry([*base, "--prompt", "a cat", "--cfg-scale", "1"], capsys)
    assert code == 0 and "real CFG" not in lines[1], err
    assert lines[-2].startswith("cheapest flags that fit: --use-fp8 (peak cuda"), lines
    assert list(tmp_path.iterdir()) == []


@pytest.fixture(scope="module")
def tiny15(tmp_path_factory) -> Path:
    return write_tiny15_model(tmp_path_factory.mktemp("tiny15") / "ckpts", "official", "480p_i2v_step_distilled", 0)


def test_plan15_with_weights_present_is_the_preflights(tiny15: Path, tmp_path: Path, capsys, no_loading) -> None:
    """With the weights under --model-base the sizes come from their configs, exactly as the run's preflight
    computes them (`hv15.memory_plan`, `hv15.memory_sizes`): I2V adds the image encoders' stage, the meanflow DiT
    its time_r_in; the step-distilled version runs no real CFG."""
    image = tmp_path / "first.png"
    Image.new("RGB", (64, 48), (200, 30, 30)).save(image)
    argv = ["--model-base", str(tiny15), "--prompt", "a cat", "--image-path", str(image), "--video-length", "9"]
    code, lines, err = dry([*argv, "--dry-run", "--device", "cpu"], capsys)
    assert code == 0, err
    assert (
        lines[0]
        == f"dry run, nothing loaded; sizes from the configs under {tiny15} (HunyuanVideo 1.5 480p_i2v_step_distilled)"
    )
    req = cli.parse_request([*argv, "--device", "cpu", "--save-path", str(tmp_path / "out")])  # a run's request
    preflight = estimate(hv15.memory_plan(req), hv15.memory_sizes(req))
    assert lines[2:6] == preflight.lines()[1:5]  # the stages: text, image encoders, DiT, VAE (host RSS aside)
    assert [ln.split(":")[0].strip() for ln in lines[2:6]] == ["text encoders", "image encoders", "DiT denoise",
                                                              "VAE decode"]  # fmt: skip
    assert lines[1].startswith("memory estimate for ") and "I2V" in lines[1] and "real CFG" not in lines[1]
    assert lines[-2] == "fits as requested"


def test_real_entry_point(tmp_path: Path) -> None:
    """As a user runs it: the plan on stdout, exit 0, nothing on stderr but log lines, nothing written."""
    proc = subprocess.run(
        [sys.executable, str(ROOT / "sample_video.py"), *PLAN_720P, "--gpu-memory", "24"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "cheapest flags that fit: --offload block" in proc.stdout
    assert "Traceback" not in proc.stderr and "error" not in proc.stderr
    assert list(tmp_path.iterdir()) == []
