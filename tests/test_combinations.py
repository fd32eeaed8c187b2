"""The flags users combine, two at a time, on the tiny model, CPU, through the real command line.

Features (the table `FEATURES`): offload model / block, `--use-cpu-offload`, TeaCache, `--compile`, `--use-fp8`,
`--lora` merged and unmerged, real CFG, and torchrun Ulysses / ring / cfg-parallel (gloo). Every pair runs and
its final latents (`--save-latents`) are checked against the run of its *numeric* features alone:
- plumbing (offload, compile, the torchrun layouts) changes no number: rel. difference <= 1e-5 (compile 1e-4);
- a run of numeric features only (TeaCache, fp8, LoRA, CFG) must differ from the run of each of them alone (both
  took effect); each numeric feature alone must differ from the plain run.
Pairs of two in-process features run in this process (`hyvideo.cli.main`). A torchrun launch costs a torch import
per rank and the job's start, so the torchrun pairs are covered by six configurations, each a layout with several
other features (`TORCHRUN_ROWS`, a covering table that `test_every_torchrun_pair_is_covered` checks), compared with
the single-process run of the same numeric features; the configurations of one process count share one launch
(tests/cli_worker.py: the CLI once per configuration in the same ranks, the last one as `sample_video.py`).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torchrun_launch import launch_cli_cases  # tests/ is on sys.path under pytest

from hyvideo import io
from hyvideo.cli import main

# the bounds; measured on these runs (tiny model, fp32, CPU): offload and SP layouts <= 3.4e-7 (the ring's
# and Ulysses' reordered attention sums), compile <= 4.4e-7
PLUMBING_TOL = 1e-5
COMPILE_TOL = 1e-4
EFFECT = 1e-3  # a numeric feature that took effect moves the latents by more: measured >= 2.4e-2 (fp8 on a LoRA run)
TORCHRUN_TIMEOUT_S = 1500  # one launch: three configurations (compile in each of the 2-process ones), busy cores

pytestmark = pytest.mark.slow


@dataclass(frozen=True)
class Feature:
    flags: tuple[str, ...]
    numeric: bool  # changes the numbers; plumbing must not
    group: str = ""  # features of one group are values of one flag: never combined
    procs: int = 1  # torchrun processes it needs (1: runs in this process)
    implies: tuple[str, ...] = ()  # features it needs (cfg-parallel splits real CFG)


LORA = "{lora}"  # replaced by the LoRA file the fixture writes
FEATURES: dict[str, Feature] = {
    "offload-model": Feature(("--offload", "model"), False, "offload"),
    "offload-block": Feature(("--offload", "block"), False, "offload"),
    "cpu-offload": Feature(("--use-cpu-offload",), False),
    "compile": Feature(("--compile",), False),
    # a threshold no step of 3 reaches: step 1 is always skipped (steps 0 and 2 always compute), whatever the
    # plumbing does to the last digits of the distance
    "teacache": Feature(("--teacache-thresh", "1e9"), True),
    "fp8": Feature(("--use-fp8",), True),
    "lora-merge": Feature(("--lora", LORA), True, "lora"),
    "lora-unmerged": Feature(("--lora", LORA, "--lora-mode", "unmerged"), True, "lora"),
    "cfg": Feature(("--cfg-scale", "3", "--neg-prompt", "car"), True),  # as many tokens as "cat": no recompile
    "ulysses": Feature(("--ulysses-degree", "2"), False, procs=2),
    "ring": Feature(("--ring-degree", "2"), False, procs=2),
    "cfg-parallel": Feature(("--cfg-parallel",), False, procs=2, implies=("cfg",)),
}
LOCAL = [name for name, f in FEATURES.items() if f.procs == 1]
TORCHRUN_MODES = [name for name, f in FEATURES.items() if f.procs > 1]

# Each torchrun mode with every other feature (the other two modes included) at least once, in six configurations:
# three of four processes that pair the modes, three of two that carry --compile (compiling in four processes on two
# cores would dominate the file's time); one launch for each process count. See the module docstring.
TORCHRUN_ROWS: list[tuple[str, ...]] = [
    ("ulysses", "ring", "offload-block", "teacache", "lora-merge", "cfg"),
    ("ulysses", "cfg-parallel", "offload-model", "fp8"),
    ("ring", "cfg-parallel", "cpu-offload", "lora-unmerged"),
    ("ulysses", "cpu-offload", "compile", "lora-unmerged"),
    ("ring", "offload-model", "compile", "fp8"),
    ("cfg-parallel", "offload-block", "compile", "teacache", "lora-merge"),
]


def processes(features: frozenset[str]) -> int:
    """The torchrun processes a configuration needs (1: runs in this process)."""
    out = 1
    for f in features:
        out *= FEATURES[f].procs
    return out


def closure(features: tuple[str, ...]) -> frozenset[str]:
    out = set(features)
    for f in features:
        out.update(FEATURES[f].implies)
    return frozenset(out)


def compatible(features: tuple[str, ...]) -> bool:
    groups = [FEATURES[f].group for f in features if FEATURES[f].group]
    return len(groups) == len(set(groups))


LOCAL_PAIRS = [p for p in itertools.combinations(LOCAL, 2) if compatible(p)]

# Pairs that fail in code another helper owns: (features) -> reason (xfail strict, for the lead to fix on merge).
KNOWN_FAILURES: dict[frozenset[str], str] = {}


def marks(features: tuple[str, ...]) -> list[pytest.MarkDecorator]:
    reason = KNOWN_FAILURES.get(frozenset(features))
    return [pytest.mark.xfail(strict=True, reason=reason)] if reason else []


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


# ---------------------------------------------------------------------------------------------------------------
# Running a configuration
# ---------------------------------------------------------------------------------------------------------------
def base_args(model: Path, out: Path) -> list[str]:
    return [
        "--model-base", str(model), "--prompt", "cat", "--video-size", "16", "16", "--video-length", "5",
        "--infer-steps", "3", "--seed", "7", "--save-path", str(out), "--precision", "fp32", "--vae-precision", "fp32",
        "--text-encoder-precision", "fp32", "--text-encoder-precision-2", "fp32", "--device", "cpu", "--save-latents",
    ]  # fmt: skip


def write_lora(path: Path, hidden: int, mlp: int) -> Path:
    """A kohya LoRA on a double block's fused qkv, a single block's linear1 and the final linear."""
    g = torch.Generator().manual_seed(5)
    layers = {"double_blocks_0_img_attn_qkv": (3 * hidden, hidden), "single_blocks_1_linear1": (3 * hidden + mlp,
              hidden), "final_layer_linear": (64, hidden)}  # fmt: skip
    sd = {}
    for name, (out, inp) in layers.items():
        sd[f"lora_unet_{name}.lora_down.weight"] = torch.randn(4, inp, generator=g) / inp**0.5
        sd[f"lora_unet_{name}.lora_up.weight"] = torch.randn(out, 4, generator=g) / 2
        sd[f"lora_unet_{name}.alpha"] = torch.tensor(4.0)
    save_file(sd, path)
    return path


class Runner:
    """Runs configurations once each (a session-wide cache keyed by the set of features) and returns latents."""

    def __init__(self, root: Path, model: Path) -> None:
        self.root = root
        self.model = model
        self.lora = write_lora(root / "lora.safetensors", 48, 192)
        self.cache: dict[frozenset[str], torch.Tensor] = {}
        self.failed: dict[int, str] = {}  # process count -> why its launch failed

    def flags(self, features: frozenset[str]) -> list[str]:
        out = []
        for f in sorted(features):
            out += [a.replace(LORA, str(self.lora)) for a in FEATURES[f].flags]
        return out

    def out_dir(self, features: frozenset[str]) -> Path:
        return self.root / ("+".join(sorted(features)) or "plain")

    def run(self, features: frozenset[str]) -> torch.Tensor:
        if features not in self.cache:
            procs = processes(features)
            if procs > 1:
                self.run_torchrun(procs)
                assert features in self.cache, f"{sorted(features)} is no torchrun row"
                return self.cache[features]
            if "compile" in features:
                torch._dynamo.reset()  # a fresh model per run: no recompile-limit fallback to eager
                torch._dynamo.utils.counters.clear()
            code = main(base_args(self.model, self.out_dir(features)) + self.flags(features))
            assert code == 0, f"{sorted(features)}: exit {code}"
            if "compile" in features:  # the blocks did run compiled (an eager fallback would pass any tolerance)
                assert torch._dynamo.utils.counters["frames"]["ok"] > 0, sorted(features)
            self.cache[features] = self.latents(features)
        return self.cache[features]

    def run_torchrun(self, nproc: int) -> None:
        """Every torchrun row of `nproc` processes, in one launch (tests/cli_worker.py)."""
        if nproc in self.failed:
            pytest.fail(f"the launch of the {nproc}-process rows failed (see its first test):\n{self.failed[nproc]}")
        rows = [row for r in TORCHRUN_ROWS if processes(row := closure(r)) == nproc]
        cases = [[*base_args(self.model, self.out_dir(r)), *self.flags(r), "--dist-timeout", "300"] for r in rows]
        job = launch_cli_cases(nproc, cases, self.root / f"torchrun{nproc}.logs", timeout=TORCHRUN_TIMEOUT_S)
        if not job.ok:
            self.failed[nproc] = job.failure_message()
            pytest.fail(self.failed[nproc])
        for i, row in enumerate(rows):
            if "compile" in row:  # rank 0 logs the compiled blocks (an eager fallback would pass any tolerance)
                assert "torch.compile (" in job.case_stderr(0, i), sorted(row)
            self.cache[row] = self.latents(row)

    def latents(self, features: frozenset[str]) -> torch.Tensor:
        [path] = self.out_dir(features).glob("*.latents.safetensors")
        latents, _ = io.load_latents(path)
        assert torch.isfinite(latents).all(), sorted(features)
        return latents

    def check(self, features: tuple[str, ...]) -> None:
        """Run `features` and compare with the run of its numeric features alone (see the module docstring)."""
        wanted = closure(features)
        got = self.run(wanted)
        numeric = frozenset(f for f in wanted if FEATURES[f].numeric)
        if numeric == wanted:  # numeric features only: each must have taken effect
            for f in numeric:
                other = self.run(numeric - {f})
                assert rel(got, other) > EFFECT, f"{sorted(wanted)}: {f} changed nothing"
            return
        tol = COMPILE_TOL if "compile" in wanted else PLUMBING_TOL
        err = rel(got, self.run(numeric))
        assert err <= tol, f"{sorted(wanted)} vs {sorted(numeric) or 'plain'}: rel. {err:.2e} > {tol:g}"


@pytest.fixture(scope="session")
def runner(tmp_path_factory, tiny_v1) -> Runner:
    return Runner(tmp_path_factory.mktemp("combinations"), tiny_v1("official", 3))  # the session's model (conftest.py)


# ---------------------------------------------------------------------------------------------------------------
# The tests
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "features", [pytest.param(p, id="+".join(p), marks=marks(p)) for p in [(f,) for f in LOCAL] + LOCAL_PAIRS]
)
def test_in_process(runner: Runner, features: tuple[str, ...]) -> None:
    runner.check(features)


@pytest.mark.parametrize("features", [pytest.param(r, id="+".join(r), marks=marks(r)) for r in TORCHRUN_ROWS])
def test_torchrun(runner: Runner, features: tuple[str, ...]) -> None:
    runner.check(features)


def test_every_torchrun_pair_is_covered() -> None:
    rows = [closure(r) for r in TORCHRUN_ROWS]
    assert all(compatible(tuple(r)) for r in rows)
    for mode in TORCHRUN_MODES:
        for other in FEATURES:
            if other != mode:
                assert any({mode, other} <= r for r in rows), (mode, other)
    every_local_pair = {frozenset(p) for p in itertools.combinations(LOCAL, 2) if compatible(p)}
    assert {frozenset(p) for p in LOCAL_PAIRS} == every_local_pair
