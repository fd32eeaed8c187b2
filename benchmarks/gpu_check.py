"""`make gpu-check`: every GPU path of the sampler once, on random mid-size weights, in one table.

    python -m benchmarks.gpu_check [--family 1.5] [--only NAME ...] [--workdir DIR] [--keep]

Writes a random mid-size model (DiT hidden 1536, 12 heads of 128 dims like the release, 2 double + 4 single blocks,
bf16 file; VAE (32, 64, 64, 64); the tiny text encoders) and runs the real command line (`sample_video.py`) once per
row in a fresh process: attention backends (sdpa / flash / sage where installed) in bf16 and fp16, `--compile` and
`--compile-mode reduce-overhead`, `--use-fp8` and `--use-fp8 --fp8-compute` (sm89+), `--offload model` / `block`,
the text stage alone with `--offload block` (the LLM's layers streamed, states compared with the resident encoder's),
TeaCache, the VAE decode tiled and untiled, and with 2+ GPUs Ulysses / ring / cfg-parallel over NCCL (torchrun).
Each row reports seconds per denoising step (of the last video, after warm-up), the peak device memory of the run
(from the JSON sidecar) and the memory preflight's estimate (from the log), and compares the final latents
(`--save-latents`) with its reference row within the row's tolerance (see `Row.rule`). A row that crashes is
reported in its row; the others still run. Exit 1 if any row crashed or mismatched, 0 otherwise; without CUDA, one
line and exit 0. `--device cpu --preset tiny` runs the CPU-capable rows on the tiny model (the harness's own test).
`--family 1.5` runs the same rows (TeaCache aside: 1.5 refuses it) on a random HunyuanVideo 1.5 model: DiT hidden
1024, 8 heads of 128, 4 double blocks, the 1.5 VAE at mid widths, the tiny Qwen2.5-VL / byT5 encoders (`mid15`), or
the tiny 1.5 model (`tiny15`, CPU).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.common import TORCHRUN_ENV, descendants, write_mid_vae15

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "A cat walks on the grass, realistic style."
SEED = 7
# The DiT takes the embedded guidance as 1000 x scale in its own dtype. The default 6.0 gives 6000, which bf16 rounds
# to 6016 (fp32 keeps 6000): on random weights that moves the guidance sinusoid's fast components and alone made a
# tiny DiT forward differ by 0.53 relative between bf16 and fp32 (0.0088 with 1000). 1.0 -> 1000 is exact in bf16
# and fp16, so E below measures rounding in the paths, not a different input.
EMBEDDED_CFG = "1.0"


# ---------------------------------------------------------------------------------------------------------------
# What the machine has
# ---------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Capabilities:
    """The device rows may use: `device` "cuda" or "cpu"; CUDA compute capability of device 0; GPU count;
    which optional attention packages import."""

    device: str
    gpus: int = 0
    capability: tuple[int, int] = (0, 0)
    name: str = ""
    flash: bool = False
    sage: bool = False

    @property
    def fp8_matmul(self) -> bool:
        """`torch._scaled_mm` needs Ada / Hopper or newer (sm89+)."""
        return self.device == "cuda" and self.capability >= (8, 9)

    @property
    def sage_kernels(self) -> bool:
        """`sageattn` dispatches on sm80, sm86, sm89, sm90 and (2.2+) sm120 and raises on others, e.g. sm100."""
        return self.sage and self.capability in ((8, 0), (8, 6), (8, 9), (9, 0), (12, 0))


def _imports(module: str) -> bool:
    try:
        __import__(module)
    except Exception:
        return False
    return True


def probe_here() -> dict | None:
    """This process's CUDA devices and optional kernels (initialises CUDA: see `probe`); None without CUDA."""
    import torch

    if not torch.cuda.is_available():
        return None
    return {
        "gpus": torch.cuda.device_count(),
        "capability": list(torch.cuda.get_device_capability(0)),
        "name": torch.cuda.get_device_name(0),
        "flash": _imports("flash_attn"),
        "sage": _imports("sageattention"),
    }


def probe() -> dict | None:
    """`probe_here` in a child process, so that this process never creates a CUDA context: one held during every
    row would take device 0's memory from the rows (the preflight counts free memory)."""
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.gpu_check", "--probe"], cwd=ROOT, capture_output=True, text=True
    )
    if out.returncode != 0:
        raise RuntimeError(f"probing the GPUs failed: {out.stderr.strip()[-500:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def detect(device: str = "cuda") -> Capabilities | None:
    """The capabilities of this machine for `device`; None when `device` is cuda and there is no CUDA."""
    if device == "cpu":
        return Capabilities("cpu")
    found = probe()
    if found is None:
        return None
    return Capabilities("cuda", found["gpus"], tuple(found["capability"]), found["name"], found["flash"], found["sage"])


# ---------------------------------------------------------------------------------------------------------------
# Rows and their tolerances
# ---------------------------------------------------------------------------------------------------------------
# Relative L2 error of final latents, ||got - ref|| / ||ref||, allowed per kind of row. "bf16" bounds scale with
# E = the measured error of the bf16 SDPA row against the fp32 SDPA row in the same run (bf16 rounding of this model
# and request): two bf16 computations of the same value differ by at most their two errors against fp32, so 3 E
# admits any equally accurate bf16 path (compiled, another kernel) with room for run-to-run spread.
EXACT = "exact"  # bitwise equal: same kernels on the same weights, only where the weights live differs
BF16 = "bf16"  # <= 3 E
FP16_VS_FP32 = "fp16"  # <= E: fp16 has 3 more mantissa bits than bf16, so it must not be less accurate
# bf16 vs fp32 itself (E): measured on the CPU with the embedded guidance above, 0.0059 (tiny model, 2 steps) and
# 0.0063 (the mid model, 2 steps, `--preset mid-small`). Rounding errors of the steps add up, so ~0.02 at 6 steps;
# 0.1 is 5x that, and still fails a bf16 path that is wrong by more than rounding. The row's value is E.
SANITY_BF16 = 0.1
# fp8 e4m3 weights round to 3 mantissa bits (every weight within 2^-4 relative); measured DiT output error vs float:
# 0.033-0.049 per forward for tiny and hidden-512 (4+8 blocks) models (docs/BENCHMARKS.md); 3x that for the deeper
# chain of blocks and steps here. fp8 compute adds the activations' rounding (0.041-0.051 measured): 4x.
FP8_WEIGHTS = 0.15
FP8_COMPUTE = 0.2
# SageAttention rounds q and k to int8 per block (its paper: attention outputs within ~1e-2 relative); 0.1 admits
# that compounded over blocks and steps and still fails a broken kernel, whose error is O(1).
SAGE = 0.1
# Sequence parallel in fp32 (TF32 is off): the same sums in other orders (all-to-all, log-sum-exp merge of key
# chunks), ~1e-6 per op; 1e-3 leaves room for their growth over the blocks and steps, a wrong chunk is O(1).
PARALLEL_FP32 = 1e-3
MIN_E = 1e-3  # floor for E, so a lucky near-zero bf16 error does not make the bf16 bounds impossible


@dataclass(frozen=True)
class Row:
    """One path of the sampler: the flags added to the common command line, what it is compared with and how."""

    name: str
    flags: tuple[str, ...] = ()
    ref: str | None = None  # the row whose latents this one must match
    rule: str | float | None = None  # EXACT, BF16, FP16_VS_FP32, a fixed relative bound, or None (no comparison)
    why: str = ""  # the reason for the rule, printed under the table
    nproc: int = 1  # > 1: torchrun with that many processes (one GPU each)
    decode_of: str | None = None  # a decode-only row: `--decode-latents` of this row's first video
    text_stage: bool = False  # the text stage alone (`text_stage`): these flags against the resident encoders

    def bound(self, e_bf16: float | None) -> float | None:
        """The relative bound for this row given the run's measured bf16 error (None: no numeric bound)."""
        if self.rule is None or self.rule == EXACT:
            return 0.0 if self.rule == EXACT else None
        if isinstance(self.rule, float):
            return self.rule
        e = max(e_bf16 if e_bf16 is not None else SANITY_BF16 / 3, MIN_E)
        return 3 * e if self.rule == BF16 else e


def select_rows(cap: Capabilities, family: str = "v1") -> list[Row]:
    """The rows this machine can run for a model `family` ("v1" or "1.5"), in order (references before the rows
    compared with them)."""
    cuda = cap.device == "cuda"
    sdpa = ("--attn-backend", "sdpa")
    rows = [
        Row("fp32 sdpa", ("--precision", "fp32", *sdpa), why="the reference"),
        Row("bf16 sdpa", ("--precision", "bf16", *sdpa), "fp32 sdpa", SANITY_BF16, "E = this row's error"),
    ]
    if cuda:  # fp16 and the optional kernels: CUDA only (the CPU has no fp16 kernels worth checking)
        rows.append(Row("fp16 sdpa", ("--precision", "fp16", *sdpa), "fp32 sdpa", FP16_VS_FP32, "<= E"))
        for backend, present, rule in (("flash", cap.flash, BF16), ("sage", cap.sage_kernels, SAGE)):
            if present:
                for prec in ("bf16", "fp16"):
                    why = "<= 3 E" if rule == BF16 else "int8 q/k"
                    rows.append(
                        Row(
                            f"{prec} {backend}",
                            ("--precision", prec, "--attn-backend", backend),
                            f"{prec} sdpa",
                            rule,
                            why,
                        )
                    )
    bf16 = ("--precision", "bf16", *sdpa)
    rows.append(Row("bf16 --compile", (*bf16, "--compile"), "bf16 sdpa", BF16, "fused kernels round once: <= 3 E"))
    if cuda:
        rows.append(
            Row(
                "bf16 --compile-mode reduce-overhead",
                (*bf16, "--compile-mode", "reduce-overhead"),
                "bf16 sdpa",
                BF16,
                "CUDA graphs of compiled code: <= 3 E",
            )
        )
    rows.append(Row("bf16 --use-fp8", (*bf16, "--use-fp8"), "bf16 sdpa", FP8_WEIGHTS, "e4m3 weights"))
    if cap.fp8_matmul:
        rows.append(
            Row(
                "bf16 --use-fp8 --fp8-compute",
                (*bf16, "--use-fp8", "--fp8-compute"),
                "bf16 sdpa",
                FP8_COMPUTE,
                "e4m3 weights and activations",
            )
        )
    for mode in ("model", "block"):
        rows.append(Row(f"bf16 --offload {mode}", (*bf16, "--offload", mode), "bf16 sdpa", EXACT, "same kernels"))
    # every layer of the tiny v1 LLM streams with skip 0 (the default 2 builds one of its three)
    text = ("--offload", "block", *(("--hidden-state-skip-layer", "0") if family == "v1" else ()))
    rows.append(Row("text encoders --offload block", text, rule=EXACT, text_stage=True,
                    why="the LLM's layers streamed vs resident: the same states"))  # fmt: skip
    if family == "v1":  # no TeaCache calibration exists for 1.5: refused there
        rows.append(Row("bf16 --teacache-thresh 0.1", (*bf16, "--teacache-thresh", "0.1"), why="skips steps by design"))
    rows.append(Row("VAE decode, 128 px tiles", ("--vae-tile-size", "128", "--vae-tile-stride", "96"),
                    decode_of="bf16 sdpa", why="decode only"))  # fmt: skip
    rows.append(Row("VAE decode, untiled", ("--no-vae-tiling",), decode_of="bf16 sdpa", why="decode only"))
    if cuda and cap.gpus >= 2:
        fp32 = ("--precision", "fp32", *sdpa)
        cfg = ("--cfg-scale", "2.0")
        rows += [
            Row("fp32 ulysses 2 (NCCL)", (*fp32, "--ulysses-degree", "2"), "fp32 sdpa", PARALLEL_FP32,
                "fp32 sums in other orders", nproc=2),
            Row("fp32 ring 2 (NCCL)", (*fp32, "--ring-degree", "2"), "fp32 sdpa", PARALLEL_FP32,
                "fp32 sums in other orders", nproc=2),
            Row("fp32 sdpa, cfg 2", (*fp32, *cfg), why="reference of cfg-parallel"),
            Row("fp32 cfg-parallel (NCCL)", (*fp32, *cfg, "--cfg-parallel"), "fp32 sdpa, cfg 2", PARALLEL_FP32,
                "fp32, the halves on two GPUs", nproc=2),
        ]  # fmt: skip
    return rows


def with_references(rows: Sequence[Row], names: Sequence[str]) -> list[Row]:
    """The rows named, plus the rows they are compared with or decode (transitively), in table order."""
    by_name = {r.name: r for r in rows}
    keep, todo = set(), list(names)
    while todo:
        row = by_name[todo.pop()]
        if row.name not in keep:
            keep.add(row.name)
            todo += [n for n in (row.ref, row.decode_of) if n is not None]
    return [r for r in rows if r.name in keep]


# ---------------------------------------------------------------------------------------------------------------
# Running a row through the real command line
# ---------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Preset:
    """The model and request every row shares."""

    name: str
    model: str  # "mid" or "tiny" (`write_model`)
    size: tuple[int, int]  # H, W
    frames: int
    steps: int
    videos: int  # > 1: the last video's steps are timed (compilation, autotuning and lazy init are behind us)
    extra: tuple[str, ...] = ()  # flags for every row (e.g. fp32 text encoders on the CPU)
    family: str = "v1"  # "v1" or "1.5": the model family `write_model` writes


CPU_PRECISIONS = ("--text-encoder-precision", "fp32", "--text-encoder-precision-2", "fp32", "--vae-precision", "fp32")
PRESETS = {
    "mid": Preset("mid", "mid", (320, 512), 33, 6, 2),  # 9 x 20 x 32 = 5760 image tokens
    "tiny": Preset("tiny", "tiny", (64, 64), 5, 2, 1, CPU_PRECISIONS),  # the harness's CPU test
    "mid-small": Preset("mid-small", "mid", (64, 64), 5, 2, 2, CPU_PRECISIONS),  # the mid model, a CPU-sized request
    # HunyuanVideo 1.5 (16x VAE: 320 x 512 x 33 is 9 x 20 x 32 = 5760 image tokens at patch 1, as the v1 mid preset)
    "mid15": Preset("mid15", "mid15", (320, 512), 33, 6, 2, family="1.5"),
    "tiny15": Preset("tiny15", "tiny15", (64, 64), 5, 2, 1, CPU_PRECISIONS, family="1.5"),
}
DEFAULT_PRESETS = {("v1", "cuda"): "mid", ("v1", "cpu"): "tiny", ("1.5", "cuda"): "mid15", ("1.5", "cpu"): "tiny15"}


@dataclass
class Result:
    """What one row measured; `error` is set when it crashed (then the numbers are missing)."""

    row: Row
    seconds_per_step: float | None = None
    peak_mib: float | None = None
    estimate_mib: float | None = None
    latents: Path | None = None  # the first video's latents
    rel: float | None = None  # relative error against the reference row
    bound: float | None = None
    error: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.error is None


def base_argv(model: Path, preset: Preset, device: str) -> list[str]:
    """The command line every row shares. 1.5 has no embedded guidance (its versions' real CFG applies)."""
    h, w = preset.size
    guidance = ("--embedded-cfg-scale", EMBEDDED_CFG) if preset.family == "v1" else ()
    return [
        "--model-base", str(model), "--prompt", PROMPT, "--video-size", str(h), str(w),
        "--video-length", str(preset.frames), "--infer-steps", str(preset.steps), "--seed", str(SEED),
        "--num-videos", str(preset.videos), *guidance, "--device", device, "--save-latents", *preset.extra,
    ]  # fmt: skip


def command(row: Row, argv: list[str]) -> list[str]:
    """The process to start: sample_video.py itself, or under torchrun (standalone rendezvous: a free port), or for a
    text-stage row this module's `--text-stage` check."""
    if row.text_stage:
        return [sys.executable, "-m", "benchmarks.gpu_check", "--text-stage", *argv]
    if row.nproc > 1:
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(row.nproc),
                "sample_video.py", *argv]  # fmt: skip
    return [sys.executable, "sample_video.py", *argv]


_ESTIMATE = re.compile(r"memory estimate for .*?: peak (\S+) ([0-9.]+) GiB")
ESTIMATE_STEP_MIB = 0.1 * 1024  # the log line gives the estimate to 0.1 GiB


def parse_estimate(log: str) -> float | None:
    """The preflight's estimated peak (MiB) on the run's device, from its log line."""
    m = _ESTIMATE.search(log)
    return float(m.group(2)) * 1024 if m else None


def read_sidecars(out: Path) -> list[dict]:
    """Every video's sidecar in `out`, by seed."""
    records = []
    for path in out.glob("*.json"):
        record = json.loads(path.read_text(encoding="utf-8"))
        record["_latents"] = str(path.with_name(path.name.removesuffix(".json") + ".latents.safetensors"))
        records.append(record)
    return sorted(records, key=lambda r: int(r.get("seed", 0)))


def measure(records: list[dict], steps: int) -> tuple[float | None, float | None]:
    """(seconds per step of the last video's denoising, or the decode's seconds for a `--decode-latents` run;
    peak device memory MiB over every stage of the run: CUDA stages when there are any, else host RSS, which is a
    CPU run's device)."""
    last = records[-1]
    source = last.get("decoded_from") or last  # a decode's own numbers, not those of the run it decodes
    timings, peaks = source.get("timings_s", {}), source.get("peak_memory_mib", {})
    if "decoded_from" in last:
        seconds = timings.get("decode")
    else:
        denoise = timings.get(f"denoise seed {last.get('seed')}")
        seconds = None if denoise is None else denoise / steps
    device = [v for k, v in peaks.items() if "(cuda" in k]
    host = [v for k, v in peaks.items() if k.endswith("(host RSS)")]
    values = device or host
    return seconds, (max(values) if values else None)


def relative_error(got: Path, ref: Path) -> float:
    from hyvideo.io import load_latents

    a, _ = load_latents(got)
    b, _ = load_latents(ref)
    if a.shape != b.shape:
        return math.inf
    if a.equal(b):
        return 0.0
    return float((a - b).double().norm() / b.double().norm())


def compare(result: Result, ref: Result | None, e_bf16: float | None) -> None:
    """Fill `rel` and `bound` and set `error` when the row's latents are outside its bound (or NaN, or its
    reference is missing)."""
    row = result.row
    if not result.ok or row.ref is None:
        return
    if ref is None or not ref.ok or ref.latents is None or result.latents is None:
        result.error = f"no latents to compare with ({row.ref} failed)"
        return
    result.rel = relative_error(result.latents, ref.latents)
    result.bound = row.bound(e_bf16)
    if not result.rel <= result.bound:  # NaN fails too
        what = "not bitwise equal" if row.rule == EXACT else f"rel {result.rel:.3g} > {result.bound:.3g}"
        result.error = f"mismatch vs {row.ref}: {what}"


Runner = Callable[[list[str], Path, float], subprocess.CompletedProcess]


def run_process(cmd: list[str], cwd: Path, timeout: float) -> subprocess.CompletedProcess:
    """Run a row's process; past `timeout`, stop it and everything it started (a hung torchrun job's ranks would
    otherwise keep their GPUs for the next rows) and raise TimeoutExpired."""
    env = {k: v for k, v in os.environ.items() if k not in TORCHRUN_ENV}
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        tree = descendants(proc.pid)
        proc.terminate()  # torchrun's agent terminates its ranks on SIGTERM
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(10)
        for pid in [proc.pid, *tree]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        proc.communicate()
        raise
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def run_row(
    row: Row,
    model: Path,
    preset: Preset,
    device: str,
    out: Path,
    done: dict[str, Result],
    timeout: float,
    runner: Runner = run_process,
) -> Result:
    """Run one row in a fresh process and read what it wrote; never raises for the row's own failure."""
    result = Result(row)
    argv = [*base_argv(model, preset, device), "--save-path", str(out), *row.flags]
    if row.decode_of is not None:
        source = done.get(row.decode_of)
        if source is None or source.latents is None:
            result.error = f"no latents to decode ({row.decode_of} failed)"
            return result
        argv = ["--model-base", str(model), "--decode-latents", str(source.latents), "--device", device,
                "--save-path", str(out), *row.flags, *preset.extra]  # fmt: skip
    try:
        proc = runner(command(row, argv), ROOT, timeout)
    except subprocess.TimeoutExpired:
        result.error = f"timed out after {timeout:.0f} s"
        return result
    if row.text_stage:
        return read_text_stage(result, proc)
    if proc.returncode != 0:
        result.error = exit_error(proc)
        return result
    records = read_sidecars(out)
    if not records:
        result.error = "exit 0 but no video sidecar written"
        return result
    result.seconds_per_step, result.peak_mib = measure(records, preset.steps)
    if row.decode_of is not None:
        return result
    result.estimate_mib = parse_estimate(proc.stderr)
    latents = Path(records[0]["_latents"])
    result.latents = latents if latents.is_file() else None
    if result.latents is None:
        result.error = "no --save-latents file written"
    skipped = [ln[ln.index("TeaCache") :] for ln in proc.stderr.splitlines() if "TeaCache" in ln and "skipped" in ln]
    result.notes += skipped[-1:]  # the last video's: "TeaCache prompt: computed 4 of 6 steps (...); skipped ..."
    return result


# ---------------------------------------------------------------------------------------------------------------
# The text stage under block offload: the streamed LLM against the resident one, in one process
# ---------------------------------------------------------------------------------------------------------------
def text_stage(argv: list[str]) -> dict:
    """Encode the prompt and a negative prompt (real CFG: two forwards of the LLM) with the encoders of request
    `argv` (which says `--offload block`) resident (`--offload none`), then streamed as `argv` asks (the pipeline's
    own `encode_text`, which loads and frees them), and report:
    whether every state is bitwise equal, how the streamer ran (layers, forwards, most resident), each pass's peak
    device memory, and whether the device memory and the hooks were all released after the streamed pass."""
    import torch

    from hyvideo import offload, pipeline
    from hyvideo.checkpoints.layout import locate
    from hyvideo.cli import parse_request
    from hyvideo.modules import llava_encoder, qwen_encoder, text_encoders

    made: list[offload.BlockStreamer] = []

    def record(*args, **kwargs) -> offload.BlockStreamer:
        made.append(offload.stream_layers(*args, **kwargs))
        return made[-1]

    for module in (text_encoders, llava_encoder, qwen_encoder):  # see the streamers the encoders build
        module.stream_layers = record
    cuda = torch.cuda.is_available()

    def encode(extra: list[str]) -> tuple[list[torch.Tensor], float | None, int]:
        req = parse_request([*argv, "--cfg-scale", "2.0", *extra])
        device = torch.device(req.device)
        paths = None if req.hv15 is not None else locate(req.model_base, req.dit_weight)
        before = torch.cuda.memory_allocated() if cuda else 0
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        embeddings = pipeline.encode_text(req, paths, device)  # the encoders are freed before it returns
        peak = torch.cuda.max_memory_allocated() / 2**20 if cuda else None
        states = [t for e in embeddings if e is not None for t in vars(e).values() if isinstance(t, torch.Tensor)]
        kept = sum(t.numel() * t.element_size() for t in states if t.device.type == "cuda")  # the results
        leaked = (torch.cuda.memory_allocated() - before - kept) if cuda else 0
        return [t.cpu() for t in states], peak, leaked

    resident, resident_peak, _ = encode(["--offload", "none"])  # the last --offload given counts
    streamed, streamed_peak, leaked = encode([])
    equal = len(resident) == len(streamed) and all(a.equal(b) for a, b in zip(resident, streamed, strict=True))
    runs = [i for s in made for op, i in s.trace if op == "run"]
    layers = sum(len(s.blocks) for s in made)
    hooked = any(b._forward_pre_hooks or b._forward_hooks for s in made for b in s.modules)
    return {
        "equal": equal,
        "streamers": len(made),
        "layers": layers,
        "forwards": len(runs) // layers if layers else 0,
        "max_resident": max((s.max_resident for s in made), default=0),
        "peak_mib": streamed_peak,
        "resident_peak_mib": resident_peak,
        "leaked_bytes": leaked,
        "hooks_left": hooked,
    }


def text_stage_problem(found: dict) -> str | None:
    """Why a text-stage report fails, or None: states differ, nothing streamed, fewer than two forwards (prompt and
    negative prompt), more than the window resident, hooks or device memory left behind."""
    if not found["equal"]:
        return "streamed states are not bitwise equal to the resident ones"
    if found["streamers"] != 1 or found["layers"] < 1 or found["forwards"] < 2:
        return f"the LLM did not stream ({found['streamers']} streamers, {found['forwards']} forwards)"
    if found["max_resident"] > 2:
        return f"{found['max_resident']} layers resident at once (window 2)"
    if found["hooks_left"] or found["leaked_bytes"] > 0:
        return f"not freed: hooks left {found['hooks_left']}, {found['leaked_bytes']} device bytes still allocated"
    return None


def exit_error(proc: subprocess.CompletedProcess) -> str:
    """A failed row's error: its exit code and its last error lines (else the last lines of its stderr)."""
    lines = [ln for ln in proc.stderr.splitlines() if "error" in ln.lower()] or proc.stderr.splitlines()[-3:]
    return f"exit {proc.returncode}: {' | '.join(lines[-3:])[:400]}"


def read_text_stage(result: Result, proc: subprocess.CompletedProcess) -> Result:
    """A text-stage row's result from its process's last stdout line (the JSON report)."""
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 and not lines:
        result.error = exit_error(proc)
        return result
    found = json.loads(lines[-1])
    result.peak_mib = found["peak_mib"]
    result.rel, result.bound = (0.0 if found["equal"] else math.inf), 0.0
    result.error = text_stage_problem(found)
    result.notes.append(
        f"{found['layers']} layers x {found['forwards']} forwards streamed, at most {found['max_resident']} resident"
        + (f"; resident encoders' peak {found['resident_peak_mib']:.0f} MiB" if found["resident_peak_mib"] else "")
    )
    return result


# ---------------------------------------------------------------------------------------------------------------
# The table
# ---------------------------------------------------------------------------------------------------------------
def _num(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def table(results: Sequence[Result]) -> str:
    """One markdown table, a row per path; failures carry their reason in the last column."""
    lines = [
        "| path | s/step | peak MiB | estimate MiB | vs | rel. error | bound | status |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        vs = r.row.ref or (f"(decode of {r.row.decode_of})" if r.row.decode_of else "")
        vs = "(resident encoders)" if r.row.text_stage else vs
        bound = "exact" if r.row.rule == EXACT else _num(r.bound, ".3g")
        status = "ok" if r.ok else f"FAIL: {r.error}"
        if r.ok and r.notes:
            status += f" ({'; '.join(r.notes)})"
        if r.ok and r.peak_mib and r.estimate_mib and r.estimate_mib + ESTIMATE_STEP_MIB / 2 < r.peak_mib:
            status += " (estimate below peak)"  # beyond the log's rounding
        lines.append(
            f"| {r.row.name} | {_num(r.seconds_per_step, '.3f')} | {_num(r.peak_mib, '.0f')} | "
            f"{_num(r.estimate_mib, '.0f')} | {vs} | {_num(r.rel, '.3g')} | {bound} | {status} |"
        )
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------------------------------------
def write_model(root: Path, preset: Preset) -> Path:
    """The random model every row loads: tiny (the test model) or mid (DiT hidden 1536, 12 heads x 128, 2 double +
    4 single blocks, saved in bf16 like the release; VAE (32, 64, 64, 64) with 2 resnets per level)."""
    import torch

    from hyvideo.checkpoints.layout import OFFICIAL_DIT_DIR
    from hyvideo.checkpoints.vae import random_vae, save_vae_official
    from hyvideo.modules.vae import VAEConfig
    from hyvideo.tiny import mid_dit_config, write_tiny_model

    if preset.model == "tiny":
        return write_tiny_model(root, "official", seed=0)
    if preset.family == "1.5":
        return write_model15(root, preset)
    write_tiny_model(root, "official", seed=0, dit=mid_dit_config(1536, 12, 2, 4, refiner=1))
    dit_file = root / OFFICIAL_DIT_DIR / "transformers" / "mp_rank_00_model_states.pt"
    state = torch.load(dit_file, weights_only=True, mmap=True)
    tmp = dit_file.with_suffix(".bf16.tmp")  # not over the file the mapping reads from
    torch.save({k: {n: t.to(torch.bfloat16) for n, t in v.items()} for k, v in state.items()}, tmp)
    del state
    tmp.replace(dit_file)
    vae_cfg = VAEConfig(block_out_channels=(32, 64, 64, 64), layers_per_block=2, norm_num_groups=32)
    vae_dir = root / OFFICIAL_DIT_DIR / "vae"
    shutil.rmtree(vae_dir)
    save_vae_official(random_vae(vae_cfg, 0, torch.float32), vae_cfg, vae_dir)
    return root


def write_model15(root: Path, preset: Preset) -> Path:
    """A random 480p_t2v HunyuanVideo 1.5 tree (official layout): the tiny one, or (mid15) the DiT at hidden 1024,
    8 heads of 128 with the release's RoPE split, 4 double blocks, and the mid-width 1.5 VAE; fp32 files."""
    from hyvideo.config import TINY_DIT15
    from hyvideo.tiny import write_tiny15_model

    if preset.model == "tiny15":
        return write_tiny15_model(root, "official", "480p_t2v", seed=0)
    dit = TINY_DIT15.replace(hidden_size=1024, heads=8, depth_double=4, rope_axes=(16, 56, 56))
    write_tiny15_model(root, "official", "480p_t2v", seed=0, dit=dit)
    shutil.rmtree(root / "vae")
    write_mid_vae15(root / "vae", 0, "official")
    return root


# ---------------------------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------------------------
def run_all(
    rows: Sequence[Row], model: Path, preset: Preset, device: str, work: Path, timeout: float, runner: Runner
) -> list[Result]:
    done: dict[str, Result] = {}
    e_bf16 = None
    for i, row in enumerate(rows):
        t0 = time.perf_counter()
        try:
            result = run_row(row, model, preset, device, work / f"row{i:02d}", done, timeout, runner)
            compare(result, done.get(row.ref) if row.ref else None, e_bf16)
        except Exception as e:  # unreadable outputs, a corrupt latents file: this row fails, the others still run
            result = Result(row, error=f"{type(e).__name__}: {e}"[:400])
        if row.name == "bf16 sdpa" and result.rel is not None:
            e_bf16 = result.rel
        done[row.name] = result
        state = "ok" if result.ok else f"FAIL: {result.error}"
        print(f"[{i + 1}/{len(rows)}] {row.name}: {state} ({time.perf_counter() - t0:.0f} s)", flush=True)
    return [done[r.name] for r in rows]


def main(argv: list[str] | None = None, runner: Runner = run_process) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check", description=__doc__.splitlines()[0])
    ap.add_argument("--device", choices=("cuda", "cpu"), default="cuda", help="cpu: the harness's own test")
    ap.add_argument("--family", choices=("v1", "1.5"), default="v1", help="the model family to check")
    ap.add_argument("--preset", choices=sorted(PRESETS), default=None,
                    help="mid (1.5: mid15) on CUDA, tiny (tiny15) on the CPU")  # fmt: skip
    ap.add_argument("--only", nargs="+", metavar="NAME", help="run only these rows (and their references)")
    ap.add_argument("--workdir", type=Path, help="where the model and the outputs go (default: a temporary dir)")
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds per row")
    ap.add_argument("--probe", action="store_true", help=argparse.SUPPRESS)  # used by probe(): JSON, then exit
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--text-stage"]:  # a text-stage row's process: `--text-stage <sample_video.py flags>`
        found = text_stage(argv[1:])
        print(json.dumps(found))
        return 0 if text_stage_problem(found) is None else 1
    args = ap.parse_args(argv)
    if args.probe:
        print(json.dumps(probe_here()))
        return 0

    cap = detect(args.device)
    if cap is None:
        print("gpu-check: no CUDA device here (torch.cuda.is_available() is False); nothing to check")
        return 0
    preset = PRESETS[args.preset or DEFAULT_PRESETS[(args.family, cap.device)]]
    if preset.family != args.family:
        print(f"error: --preset {preset.name} is a {preset.family} model; it contradicts --family {args.family}")
        return 2
    rows = select_rows(cap, preset.family)
    if args.only:
        unknown = set(args.only) - {r.name for r in rows}
        if unknown:
            print(f"error: --only: no row named {sorted(unknown)} here; rows: {[r.name for r in rows]}")
            return 2
        rows = with_references(rows, args.only)
    where = f"{cap.gpus} x {cap.name} (sm{cap.capability[0]}{cap.capability[1]})" if cap.device == "cuda" else "cpu"
    print(f"gpu-check on {where}: {len(rows)} rows, HunyuanVideo {preset.family} preset {preset.name} ({preset.size[0]}x{preset.size[1]}x"
          f"{preset.frames}, {preset.steps} steps, {preset.videos} video(s))"
          f"{'' if cap.flash else '; flash-attn not installed'}{'' if cap.sage else '; sageattention not installed'}",
          flush=True)  # fmt: skip
    t0 = time.perf_counter()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="gpu-check-"))
    try:
        model = write_model(work / "model", preset)
        results = run_all(rows, model, preset, cap.device, work, args.timeout, runner)
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    print()
    print(table(results))
    print()
    for r in results:
        if r.row.why and r.row.rule is not None:
            print(f"- {r.row.name}: {r.row.why}")
    failed = [r.row.name for r in results if not r.ok]
    verdict = f"{len(failed)} of {len(results)} rows FAILED: {', '.join(failed)}" if failed else "all rows ok"
    print(f"\ngpu-check: {verdict} ({time.perf_counter() - t0:.0f} s)")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
