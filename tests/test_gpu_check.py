"""benchmarks/gpu_check.py (`make gpu-check`) on the CPU: row selection by capability, tolerances, the comparison, the
table, a crashing row, "no CUDA -> one line, exit 0", and real rows of the tiny model through the command line."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from benchmarks import gpu_check as gc
from hyvideo.io import save_latents

CPU = gc.Capabilities("cpu")
A100 = gc.Capabilities("cuda", gpus=1, capability=(8, 0), name="A100", flash=True)
H100x2 = gc.Capabilities("cuda", gpus=2, capability=(9, 0), name="H100", flash=True, sage=True)
B200 = gc.Capabilities("cuda", gpus=1, capability=(10, 0), name="B200", flash=True, sage=True)


def names(cap: gc.Capabilities) -> list[str]:
    return [r.name for r in gc.select_rows(cap)]


# ---------------------------------------------------------------------------------------------------------------
# Which rows a machine gets
# ---------------------------------------------------------------------------------------------------------------
def test_rows_follow_the_capabilities() -> None:
    cpu, a100, h100, b200 = names(CPU), names(A100), names(H100x2), names(B200)
    # the CPU: no fp16, no optional kernels, no CUDA graphs, no fp8 matmul, no NCCL
    assert not [n for n in cpu if re.search(r"fp16|flash|sage|reduce-overhead|fp8-compute|NCCL", n)], cpu
    assert {"fp32 sdpa", "bf16 sdpa", "bf16 --offload model", "bf16 --offload block", "bf16 --use-fp8"} <= set(cpu)
    # sm80 with flash-attn: flash rows in both dtypes, CUDA graphs; no fp8 matmul (sm89+), no sage, one GPU
    assert {"bf16 flash", "fp16 flash", "fp16 sdpa", "bf16 --compile-mode reduce-overhead"} <= set(a100)
    assert not [n for n in a100 if re.search(r"sage|fp8-compute|NCCL", n)], a100
    # sm90, two GPUs, both packages: everything
    assert {"bf16 sage", "fp16 sage", "bf16 --use-fp8 --fp8-compute", "fp32 ulysses 2 (NCCL)", "fp32 ring 2 (NCCL)",
            "fp32 cfg-parallel (NCCL)"} <= set(h100)  # fmt: skip
    assert [r.nproc for r in gc.select_rows(H100x2) if "NCCL" in r.name] == [2, 2, 2]
    # SageAttention has no sm100 kernel: installed but not offered
    assert "bf16 sage" not in b200 and "bf16 --use-fp8 --fp8-compute" in b200


def test_every_reference_comes_before_the_rows_compared_with_it() -> None:
    for cap in (CPU, A100, H100x2):
        seen: set[str] = set()
        for row in gc.select_rows(cap):
            assert row.ref is None or row.ref in seen, (row.name, row.ref)
            assert row.decode_of is None or row.decode_of in seen
            seen.add(row.name)


def test_only_pulls_in_the_references() -> None:
    rows = gc.with_references(gc.select_rows(A100), ["bf16 --offload block", "VAE decode, untiled"])
    assert [r.name for r in rows] == ["fp32 sdpa", "bf16 sdpa", "bf16 --offload block", "VAE decode, untiled"]


def test_bounds() -> None:
    rows = {r.name: r for r in gc.select_rows(H100x2)}
    assert rows["bf16 --offload block"].bound(0.02) == 0.0  # exact
    assert rows["bf16 --compile"].bound(0.02) == pytest.approx(0.06)  # 3 E
    assert rows["fp16 sdpa"].bound(0.02) == pytest.approx(0.02)  # E
    assert rows["bf16 --compile"].bound(1e-6) == pytest.approx(3 * gc.MIN_E)  # floor
    assert rows["bf16 --use-fp8"].bound(0.02) == gc.FP8_WEIGHTS
    assert rows["bf16 --teacache-thresh 0.1"].bound(0.02) is None


# ---------------------------------------------------------------------------------------------------------------
# Comparison and reading a run's files
# ---------------------------------------------------------------------------------------------------------------
def latents_file(path: Path, x: torch.Tensor) -> Path:
    return save_latents(x, path)


def test_compare_exact_bound_and_nan(tmp_path: Path) -> None:
    x = torch.randn(1, 16, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    rows = {r.name: r for r in gc.select_rows(A100)}
    ref = gc.Result(rows["bf16 sdpa"], latents=latents_file(tmp_path / "ref.latents.safetensors", x))

    same = gc.Result(rows["bf16 --offload block"], latents=latents_file(tmp_path / "a.latents.safetensors", x))
    gc.compare(same, ref, 0.02)
    assert same.ok and same.rel == 0.0

    ulp = x.clone()
    ulp[0, 0, 0, 0, 0] = torch.nextafter(ulp[0, 0, 0, 0, 0], torch.tensor(10.0))  # one float32 ulp
    off = gc.Result(rows["bf16 --offload block"], latents=latents_file(tmp_path / "b.latents.safetensors", ulp))
    gc.compare(off, ref, 0.02)
    assert not off.ok and "not bitwise equal" in off.error

    near = gc.Result(rows["bf16 --compile"], latents=latents_file(tmp_path / "c.latents.safetensors", x * 1.05))
    gc.compare(near, ref, 0.02)  # rel 0.05 <= 3 x 0.02
    assert near.ok and near.rel == pytest.approx(0.05, rel=1e-5)
    far = gc.Result(rows["bf16 --compile"], latents=latents_file(tmp_path / "d.latents.safetensors", x * 1.07))
    gc.compare(far, ref, 0.02)
    assert not far.ok and "rel 0.07 > 0.06" in far.error

    nan = x.clone()
    nan[0, 0, 0, 0, 0] = float("nan")
    bad = gc.Result(rows["bf16 --use-fp8"], latents=latents_file(tmp_path / "e.latents.safetensors", nan))
    gc.compare(bad, ref, 0.02)
    assert not bad.ok

    orphan = gc.Result(rows["bf16 --compile"], latents=latents_file(tmp_path / "f.latents.safetensors", x))
    gc.compare(orphan, gc.Result(rows["bf16 sdpa"], error="exit 1: boom"), 0.02)
    assert not orphan.ok and "bf16 sdpa failed" in orphan.error


def test_measure_reads_the_last_video_and_the_device_peak() -> None:
    records = [
        {"seed": 7, "timings_s": {"denoise seed 7": 60.0}, "peak_memory_mib": {}},
        {
            "seed": 8,
            "timings_s": {"text encode": 1.0, "denoise seed 7": 60.0, "denoise seed 8": 3.0},
            "peak_memory_mib": {
                "denoise seed 8 (host RSS)": 9000.0,
                "denoise seed 8 (cuda:0)": 700.0,
                "decode seed 8 (cuda:0)": 900.0,
            },
        },
    ]
    assert gc.measure(records, steps=6) == (0.5, 900.0)  # warm video's steps; CUDA peak, not host RSS
    cpu = [{"seed": 7, "timings_s": {"denoise seed 7": 2.0}, "peak_memory_mib": {"decode seed 7 (host RSS)": 400.0}}]
    assert gc.measure(cpu, steps=2) == (1.0, 400.0)
    decoded = {"seed": 7, "timings_s": {"denoise seed 7": 99.0}, "peak_memory_mib": {"x (cuda:0)": 1.0},
               "decoded_from": {"timings_s": {"decode": 4.5}, "peak_memory_mib": {"decode (cuda:0)": 321.0}}}  # fmt: skip
    assert gc.measure([decoded], steps=6) == (4.5, 321.0)  # the decode's own numbers


def test_parse_estimate() -> None:
    log = "2026-12-01 | INFO | memory estimate for 512x320x33 (bf16, offload none, VAE tiling on): peak cuda 1.4 GiB, host 2.0 GiB\n"
    assert gc.parse_estimate(log) == pytest.approx(1.4 * 1024)
    assert gc.parse_estimate("nothing") is None


def test_table_flags_an_estimate_below_the_peak_beyond_the_log_rounding() -> None:
    row = gc.Row("bf16 sdpa", ref="fp32 sdpa", rule=gc.SANITY_BF16)
    close = gc.Result(row, seconds_per_step=0.25, peak_mib=1060.0, estimate_mib=1024.0, rel=0.006, bound=1.0)
    under = gc.Result(row, seconds_per_step=0.25, peak_mib=1200.0, estimate_mib=1024.0, rel=0.006, bound=1.0)
    crashed = gc.Result(gc.Row("bf16 --compile", ref="bf16 sdpa", rule=gc.BF16), error="exit 1: error: boom")
    lines = gc.table([close, under, crashed]).splitlines()
    assert lines[2] == "| bf16 sdpa | 0.250 | 1060 | 1024 | fp32 sdpa | 0.006 | 1 | ok |"
    assert lines[3].endswith("| ok (estimate below peak) |")
    assert lines[4] == "| bf16 --compile | - | - | - | bf16 sdpa | - | - | FAIL: exit 1: error: boom |"


# ---------------------------------------------------------------------------------------------------------------
# The whole harness: a fake command line that writes what the real one writes, with one crash and one mismatch
# ---------------------------------------------------------------------------------------------------------------
TEXT_STAGE_OK = {"equal": True, "streamers": 1, "layers": 3, "forwards": 2, "max_resident": 2, "peak_mib": None,
                 "resident_peak_mib": None, "leaked_bytes": 0, "hooks_left": False}  # fmt: skip


def fake_cli(crash: str, drift: str):
    """A runner standing in for sample_video.py: writes a sidecar and latents per video; `crash` (a flag) exits 1,
    `drift` (a flag) perturbs the latents by one ulp."""

    def run(cmd: list[str], cwd: Path, timeout: float) -> subprocess.CompletedProcess:
        if "--text-stage" in cmd:  # the text-stage row's process: its JSON report
            return subprocess.CompletedProcess(cmd, 0, json.dumps(TEXT_STAGE_OK) + "\n", "")
        if crash in cmd:
            return subprocess.CompletedProcess(
                cmd, 1, "", "error: RuntimeError: CUDA error: an illegal memory access\n"
            )
        out = Path(cmd[cmd.index("--save-path") + 1])
        out.mkdir(parents=True, exist_ok=True)
        if "--teacache-thresh" in cmd:  # exit 0 but a sidecar that is not JSON
            (out / "v.json").write_text("{not json")
            return subprocess.CompletedProcess(cmd, 0, "", "")
        x = torch.ones(1, 16, 2, 4, 4)
        if "bf16" in cmd:
            x = x * 1.01
        if drift in cmd:
            x[0, 0, 0, 0, 0] += 1e-3
        if "--decode-latents" in cmd:
            record = {"seed": 7, "decoded_from": {"timings_s": {"decode": 0.5}, "peak_memory_mib": {}}}
        else:
            save_latents(x, out / "v.latents.safetensors")
            record = {"seed": 7, "timings_s": {"denoise seed 7": 1.0}, "peak_memory_mib": {"d (host RSS)": 300.0}}
        (out / "v.json").write_text(json.dumps(record))
        log = "memory estimate for 64x64x5 (fp32, offload none, VAE tiling on): peak cpu 0.4 GiB, host 0.4 GiB\n"
        return subprocess.CompletedProcess(cmd, 0, "", log)

    return run


def test_a_crash_and_a_mismatch_fail_their_rows_and_the_others_still_run(tmp_path: Path, capsys) -> None:
    code = gc.main(["--device", "cpu", "--workdir", str(tmp_path)], runner=fake_cli("--use-fp8", "model"))
    out = capsys.readouterr().out
    assert code == 1
    table = {line.split("|")[1].strip(): line for line in out.splitlines() if line.startswith("| ")}
    assert "FAIL: exit 1: error: RuntimeError: CUDA error" in table["bf16 --use-fp8"]
    assert "FAIL: mismatch vs bf16 sdpa: not bitwise equal" in table["bf16 --offload model"]
    assert "FAIL: JSONDecodeError" in table["bf16 --teacache-thresh 0.1"]
    for ok in ("fp32 sdpa", "bf16 --offload block", "VAE decode, untiled"):
        assert table[ok].rstrip().endswith("| ok |"), table[ok]
    assert (
        "| (resident encoders) | 0 | exact | ok (3 layers x 2 forwards streamed"
        in table["text encoders --offload block"]
    )
    assert "| 0.01 |" in table["bf16 sdpa"]  # E, the bf16 row's measured error
    assert "3 of 10 rows FAILED: bf16 --use-fp8, bf16 --offload model, bf16 --teacache-thresh 0.1" in out


def test_a_row_past_its_timeout_is_stopped_with_everything_it_started(tmp_path: Path) -> None:
    """Like torchrun's ranks, the grandchild runs in a session of its own; it must not outlive the row."""
    pid_file = tmp_path / "pid"
    child = f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(300)"
    parent = f"import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', {child!r}], start_new_session=True); time.sleep(300)"
    with pytest.raises(subprocess.TimeoutExpired):
        gc.run_process([sys.executable, "-c", parent], tmp_path, timeout=10)
    grandchild = int(pid_file.read_text())
    time.sleep(0.5)
    state = Path(f"/proc/{grandchild}/stat")
    assert not state.exists() or state.read_text().rsplit(")", 1)[1].split()[0] == "Z"


def test_without_cuda_one_line_and_exit_0(capsys) -> None:
    assert not torch.cuda.is_available()  # this machine: the real probe (a child process) finds no CUDA
    assert gc.main([]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and "no CUDA" in out


def test_capabilities_come_from_a_child_process(monkeypatch) -> None:
    found = {"gpus": 2, "capability": [9, 0], "name": "H100", "flash": True, "sage": False}
    monkeypatch.setattr(gc, "probe", lambda: found)
    assert gc.detect() == gc.Capabilities("cuda", 2, (9, 0), "H100", flash=True, sage=False)
    monkeypatch.setattr(gc, "probe", lambda: None)
    assert gc.detect() is None and gc.detect("cpu") == CPU


@pytest.mark.parametrize(
    "change, problem",
    [
        ({"equal": False}, "not bitwise equal"),
        ({"streamers": 0, "layers": 0, "forwards": 0}, "did not stream"),
        ({"forwards": 1}, "did not stream"),  # the negative prompt's forward missed
        ({"max_resident": 3}, "3 layers resident"),
        ({"hooks_left": True}, "not freed"),
        ({"leaked_bytes": 512}, "not freed"),
    ],
)
def test_text_stage_report_fails_on_each_problem(change, problem) -> None:
    assert gc.text_stage_problem(TEXT_STAGE_OK) is None
    assert problem in gc.text_stage_problem({**TEXT_STAGE_OK, **change})


@pytest.mark.slow
@pytest.mark.parametrize("family, layers", [("v1", 3), ("1.5", 2)])
def test_text_stage_row_on_the_cpu(tmp_path: Path, capsys, family, layers) -> None:
    """The tiny encoders through the pipeline's text step: streamed equals resident, every layer ran in both
    forwards (prompt, negative prompt), at most 2 resident, all released (v1 skip 0: 3 layers; Qwen: 2 of 4)."""
    argv = [
        "--device",
        "cpu",
        "--family",
        family,
        "--only",
        "text encoders --offload block",
        "--workdir",
        str(tmp_path),
    ]
    code = gc.main(argv)
    out = capsys.readouterr().out
    assert code == 0, out
    row = next(line for line in out.splitlines() if line.startswith("| text encoders --offload block"))
    assert f"| 0 | exact | ok ({layers} layers x 2 forwards streamed, at most 2 resident)" in row, row


# ---------------------------------------------------------------------------------------------------------------
# Real rows: the tiny model through sample_video.py on the CPU
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_real_rows_on_the_cpu(tmp_path: Path, capsys) -> None:
    """Three processes of the real command line: fp32, bf16 (compared within its bound), block offload (bitwise)."""
    code = gc.main(["--device", "cpu", "--only", "bf16 --offload block", "--workdir", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0, out
    rows = {line.split("|")[1].strip(): line.split("|")[2:-1] for line in out.splitlines() if line.startswith("| ")}
    assert set(rows) == {"path", "fp32 sdpa", "bf16 sdpa", "bf16 --offload block"}
    s_step, peak, estimate, vs, rel, bound, status = (c.strip() for c in rows["bf16 --offload block"])
    assert float(s_step) > 0 and float(peak) > 100 and float(estimate) > 100  # MiB of a whole CPU process
    assert (vs, rel, bound, status) == ("bf16 sdpa", "0", "exact", "ok")
    assert 0 < float(rows["bf16 sdpa"][4]) < 0.03  # E: measured 0.0059 (bf16 rounding only, see EMBEDDED_CFG)


def test_hunyuanvideo15_rows_and_command_lines(tmp_path: Path, capsys, monkeypatch) -> None:
    """--family 1.5: the same rows without TeaCache (refused for 1.5), the 1.5 preset, no embedded guidance on the
    command line; a preset of the other family is exit 2."""
    assert "bf16 --teacache-thresh 0.1" not in [r.name for r in gc.select_rows(H100x2, "1.5")]
    assert [r.name for r in gc.select_rows(H100x2, "1.5")] == [n for n in names(H100x2) if "teacache" not in n]
    argv = gc.base_argv(tmp_path, gc.PRESETS["mid15"], "cuda")
    assert "--embedded-cfg-scale" not in argv and "--embedded-cfg-scale" in gc.base_argv(
        tmp_path, gc.PRESETS["mid"], "cuda"
    )
    seen: list[list[str]] = []
    fake = fake_cli("--no-such-flag", "--no-such-flag")

    def run(cmd, cwd, timeout):
        seen.append(cmd)
        return fake(cmd, cwd, timeout)

    monkeypatch.setattr(gc, "write_model", lambda root, preset: seen.append([preset.name]) or root)
    code = gc.main(["--device", "cpu", "--family", "1.5", "--workdir", str(tmp_path)], runner=run)
    assert code == 0 and seen[0] == ["tiny15"] and all("--embedded-cfg-scale" not in c for c in seen[1:])
    assert "HunyuanVideo 1.5 preset tiny15" in capsys.readouterr().out
    assert gc.main(["--device", "cpu", "--family", "1.5", "--preset", "tiny"]) == 2


@pytest.mark.slow
def test_real_rows_on_the_cpu_with_hunyuanvideo15(tmp_path: Path, capsys) -> None:
    """The tiny 1.5 model through the real command line: fp32, bf16 within its bound, block offload bitwise."""
    code = gc.main(["--device", "cpu", "--family", "1.5", "--only", "bf16 --offload block", "--workdir", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0, out
    rows = {line.split("|")[1].strip(): line.split("|")[2:-1] for line in out.splitlines() if line.startswith("| ")}
    assert set(rows) == {"path", "fp32 sdpa", "bf16 sdpa", "bf16 --offload block"}
    assert [c.strip() for c in rows["bf16 --offload block"]][3:] == ["bf16 sdpa", "0", "exact", "ok"]
    assert 0 < float(rows["bf16 sdpa"][4]) < 0.03
