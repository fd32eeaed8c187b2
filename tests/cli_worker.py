"""Several CLI runs in one torchrun launch: `cli_worker.py CASES.json` (a JSON list of argument lists), started by
`torchrun_launch.launch_cli_cases`.

A launch costs a torch import per rank and the job's start (tens of seconds on a busy 2-core machine), so the tests
that compare numbers run all their cases in one. Every case but the last goes through `hyvideo.cli.main` in the same
processes with the job kept up: the runner's end-of-job teardown (`group.shutdown`) is held back and each case builds
its rank groups anew. The last case runs `sample_video.py` as `__main__`, teardown and exit code included, as a
launch of its own would. Before each case a line `cli_worker: case N` goes to stderr, so that a test can tell which
case logged what (`Launch.case_stderr`). The compiler's caches are reset before each case (a fresh model per run).
"""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

import torch
from torch.distributed.elastic.multiprocessing.errors import record

from hyvideo import cli
from hyvideo.parallel import group

ROOT = Path(__file__).resolve().parents[1]
MARKER = "cli_worker: case {}"


def begin(i: int) -> None:
    print(MARKER.format(i), file=sys.stderr, flush=True)
    torch._dynamo.reset()  # --compile: no recompile-limit fallback to eager from an earlier case's graphs


@record  # an exception writes this rank's traceback and time to torchrun's error file (the launcher reports it)
def main(cases_file: Path) -> None:
    cases: list[list[str]] = json.loads(cases_file.read_text())
    shutdown = group.shutdown
    group.shutdown = lambda: None  # the job stays up for the next case
    try:
        for i, args in enumerate(cases[:-1]):
            begin(i)
            code = cli.main(args)
            if code != 0:
                raise RuntimeError(f"case {i}: the CLI exited {code}")
        group.shutdown = shutdown
        begin(len(cases) - 1)
        sys.argv = ["sample_video.py", *cases[-1]]
        runpy.run_path(str(ROOT / "sample_video.py"), run_name="__main__")  # raises SystemExit(the CLI's code)
    finally:
        # every path leaves the process group: a process exiting with a live gloo group can abort in teardown
        group.shutdown = shutdown
        shutdown()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
