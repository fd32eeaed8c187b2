"""Launching `torchrun` jobs from tests, so that they cannot flake on a busy machine and say why when they fail.

    from torchrun_launch import launch  # tests/ is on sys.path under pytest
    run = launch(2, ["sample_video.py", *flags], timeout=600)
    assert run.ok, run.failure_message()
    run.rank_stderr(0)  # what rank 0 wrote to stderr
    run = launch_cli_cases(2, [argv_1, argv_2], log_dir)  # several CLI runs in one launch (tests/cli_worker.py)
    run.case_stderr(0, 1)  # what rank 0 wrote to stderr during the second one

Every launch:
- uses `--standalone` rendezvous (the agent's store binds port 0: no fixed port, no clash between concurrent jobs;
  the workers reuse that store, so no second port is picked and released before use);
- removes a surrounding torchrun's RANK / WORLD_SIZE / ... from the environment;
- writes each rank's stdout and stderr to its own file (`--log-dir` + `--redirects 3`), so a failure shows every
  rank's first error, not the last few thousand characters of interleaved output ending in torchrun's summary;
- sets TORCHELASTIC_ERROR_FILE per rank (torchrun does): a worker whose entry point is wrapped in
  `torch.distributed.elastic.multiprocessing.errors.record` writes its traceback and the time of failure there,
  and the message names the rank that failed first by that time;
- has a wall-clock timeout after which the agent and every rank are stopped and the logs so far are reported.
Collective timeouts are the worker's business (`--dist-timeout`, `group.init(..., timeout_s)`): keep them generous
(minutes) on CPU tests, where four ranks share two cores.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.common import TORCHRUN_ENV, descendants

ROOT = Path(__file__).resolve().parents[1]
CLI_WORKER = ROOT / "tests" / "cli_worker.py"
CASE_MARKER = re.compile(r"^cli_worker: case (\d+)$", re.M)  # the line tests/cli_worker.py writes before each case
DEFAULT_TIMEOUT_S = 600.0  # one launch on a loaded 2-core machine: torch import x N ranks, then the work
FIRST_ERROR_CHARS = 2500  # per rank, in the failure message
# the first line of an error in a rank's stderr; c10d prefixes an uncaught exception's lines with "[rankN]: "
_ERROR_START = re.compile(
    r"^(\[rank\d+\]:\s*)?(Traceback \(most recent call last\)|error: |\S*Error: |\S*Exception: )", re.M
)


def torchrun_command(nproc: int, argv: list[str], log_dir: Path) -> list[str]:
    """The command line: this interpreter's torchrun, standalone rendezvous, per-rank log files under log_dir."""
    return [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
        "--log-dir", str(log_dir), "--redirects", "3", *argv,
    ]  # fmt: skip


def clean_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """os.environ (plus `env`) without the variables of an enclosing torchrun job."""
    out = {k: v for k, v in os.environ.items() if k not in TORCHRUN_ENV}
    out.update(env or {})
    return out


def first_error(text: str, limit: int = FIRST_ERROR_CHARS) -> str:
    """The part of a rank's stderr from its first traceback or error line on (at most `limit` characters); the
    last `limit` characters when there is no such line."""
    m = _ERROR_START.search(text)
    if m is None:
        return text[-limit:]
    return text[m.start() : m.start() + limit]


@dataclass
class Launch:
    """A torchrun job, running or finished. Rank files: log_dir/<run id>/attempt_0/<local rank>/{stdout,stderr}.log
    and error.json."""

    nproc: int
    command: list[str]
    log_dir: Path
    proc: subprocess.Popen
    started: float = field(default_factory=time.monotonic)
    timed_out: bool = False
    stdout: str = ""  # torchrun's own console output (the ranks' output is in their files)
    stderr: str = ""

    # --- while running or after ---
    def _rank_file(self, rank: int, name: str) -> Path | None:
        found = sorted(self.log_dir.glob(f"*/attempt_*/{rank}/{name}"))
        return found[-1] if found else None

    def rank_stderr(self, rank: int) -> str:
        path = self._rank_file(rank, "stderr.log")
        return path.read_text(errors="replace") if path else ""

    def rank_stdout(self, rank: int) -> str:
        path = self._rank_file(rank, "stdout.log")
        return path.read_text(errors="replace") if path else ""

    def case_stderr(self, rank: int, case: int) -> str:
        """What the rank wrote to stderr during case `case` of a `launch_cli_cases` job ("" if it never started)."""
        text = self.rank_stderr(rank)
        starts = {int(m.group(1)): m.end() for m in CASE_MARKER.finditer(text)}
        if case not in starts:
            return ""
        following = [m.start() for m in CASE_MARKER.finditer(text) if int(m.group(1)) > case]
        return text[starts[case] : min(following, default=len(text))]

    def rank_error(self, rank: int) -> dict | None:
        """The rank's elastic error file (written by a `@record`-wrapped entry point that raised), or None."""
        path = self._rank_file(rank, "error.json")
        try:
            return json.loads(path.read_text()) if path else None
        except (OSError, ValueError):
            return None

    def wait(self, timeout: float | None = None) -> Launch:
        """Wait for the job to end; after `timeout` seconds from now, kill its process group and mark it timed out."""
        try:
            self.stdout, self.stderr = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.timed_out = True
            self.kill()
            self.stdout, self.stderr = self.proc.communicate()
        return self

    def kill(self, grace_s: float = 10.0) -> None:
        """Stop the agent and every rank. The ranks run in sessions of their own (torchrun starts them so), so
        killing the agent's group is not enough: SIGTERM the agent (it terminates its workers), then SIGKILL
        whatever of the job is left after `grace_s`."""
        if self.proc.poll() is not None:
            return
        job = descendants(self.proc.pid)
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(grace_s)
        for pid in [self.proc.pid, *job]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    # --- after ---
    @property
    def returncode(self) -> int | None:
        return self.proc.returncode

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out

    @property
    def all_stderr(self) -> str:
        """Every rank's stderr in rank order, then torchrun's."""
        return "".join(self.rank_stderr(r) for r in range(self.nproc)) + self.stderr

    def failure_message(self) -> str:
        """Why the job failed: exit code or timeout, the rank that failed first (by its error file's time when
        there is one), and the first error of every rank that wrote one, then the end of torchrun's output."""
        seconds = time.monotonic() - self.started
        head = f"torchrun exited {self.returncode}" if not self.timed_out else "torchrun timed out and was killed"
        lines = [f"{head} after {seconds:.0f} s: {' '.join(self.command)}"]
        errors = {r: e for r in range(self.nproc) if (e := self.rank_error(r)) is not None}
        if errors:
            stamp = lambda e: int(e.get("message", {}).get("extraInfo", {}).get("timestamp", 0) or 0)  # noqa: E731
            first = min(errors, key=lambda r: stamp(errors[r]))
            lines.append(f"first failure by error-file time: rank {first}")
        for r in range(self.nproc):
            err = self.rank_stderr(r)
            if r in errors:
                message = errors[r].get("message", {})
                trace = message.get("extraInfo", {}).get("py_callstack") if isinstance(message, dict) else None
                lines.append(f"--- rank {r} error file ---\n{(trace or json.dumps(errors[r]))[-FIRST_ERROR_CHARS:]}")
            elif _ERROR_START.search(err):
                lines.append(f"--- rank {r} first error (stderr) ---\n{first_error(err)}")
            else:
                lines.append(f"--- rank {r}: no error in its stderr; its end ---\n{err[-600:]}")
        lines.append(f"--- torchrun ---\n{self.stderr[-1500:]}")
        return "\n".join(lines)


def start(
    nproc: int, argv: list[str], *, env: dict[str, str] | None = None, cwd: Path = ROOT, log_dir: Path | None = None
) -> Launch:
    """Start `torchrun --nproc_per_node nproc argv...` in its own process group and return at once."""
    log_dir = Path(log_dir) if log_dir is not None else Path(tempfile.mkdtemp(prefix="torchrun-test-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    cmd = torchrun_command(nproc, [str(a) for a in argv], log_dir)
    proc = subprocess.Popen(
        cmd,
        cwd=cwd,
        env=clean_env(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    return Launch(nproc, cmd, log_dir, proc)


def launch(
    nproc: int,
    argv: list[str],
    *,
    env: dict[str, str] | None = None,
    timeout: float = DEFAULT_TIMEOUT_S,
    cwd: Path = ROOT,
    log_dir: Path | None = None,
) -> Launch:
    """Run a torchrun job to the end (or `timeout` seconds, then kill it). Check `.ok`; `.failure_message()` says
    what went wrong on every rank."""
    return start(nproc, argv, env=env, cwd=cwd, log_dir=log_dir).wait(timeout)


def launch_cli_cases(
    nproc: int, cases: list[list[str]], log_dir: Path, *, timeout: float = DEFAULT_TIMEOUT_S
) -> Launch:
    """Run the CLI once per argument list in one torchrun job (tests/cli_worker.py: the last case as
    `sample_video.py`), to the end or `timeout` seconds for all of them. The cases are written to
    log_dir/cases.json."""
    log_dir = Path(log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    cases_file = log_dir / "cases.json"
    cases_file.write_text(json.dumps([[str(a) for a in args] for args in cases]))
    # the worker runs as a script: its folder (tests/) is its sys.path[0]; the repository root is not
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return launch(nproc, [str(CLI_WORKER), str(cases_file)], env={"PYTHONPATH": path}, timeout=timeout, log_dir=log_dir)


class CaseLaunches:
    """Named CLI runs under torchrun, every run of one process count in one launch (`launch_cli_cases`), started
    when a test first asks for one of its runs: parametrized tests keep one test per case and share the launch.

        runs = CaseLaunches(tmp, {"ring": (2, [...flags]), "ring4": (4, [...flags])})
        runs.save_path("ring")  # the run's --save-path folder, after its launch ended well (else the test fails)
    """

    def __init__(self, root: Path, cases: dict[str, tuple[int, list[str]]], timeout: float = DEFAULT_TIMEOUT_S):
        self.root, self.cases, self.timeout = Path(root), cases, timeout
        self.jobs: dict[int, Launch] = {}

    def save_path(self, name: str) -> Path:
        nproc = self.cases[name][0]
        if nproc not in self.jobs:
            names = [n for n, (p, _) in self.cases.items() if p == nproc]
            argv = [[*self.cases[n][1], "--save-path", str(self.root / n)] for n in names]
            self.jobs[nproc] = launch_cli_cases(nproc, argv, self.root / f"logs{nproc}", timeout=self.timeout)
        job = self.jobs[nproc]
        assert job.ok, job.failure_message()
        return self.root / name
