"""Command line: argparse -> `validate` -> `SampleRequest` -> `hyvideo.pipeline.run`.

Every flag of the official HunyuanVideo `sample_video.py` is accepted with the official default; flags we cannot honour
yet fail with exit code 2 (see `hyvideo.request.SUPPORTED_VALUES_ONLY`). Exit codes: 0 done, 1 fault while running,
2 bad input (one line on stderr, nothing written), 130 interrupted.
"""

from __future__ import annotations

import argparse
import errno
import os
import sys
import traceback
from pathlib import Path
from typing import TYPE_CHECKING

from loguru import logger

from hyvideo.errors import CheckpointError, ConfigError, UsageError
from hyvideo.flags import PROG, build_parser

if TYPE_CHECKING:
    from hyvideo.prompt_file import Batch
    from hyvideo.request import SampleRequest

__all__ = ["PROG", "build_parser", "main", "parse_batch", "parse_request"]


def parse_request(argv: list[str] | None = None) -> SampleRequest:
    """Parse and validate `argv` into a `SampleRequest` (raises `UsageError`), logging the notes about resolved
    values; handy for tests and scripts."""
    return _parse(argv)[1]


def parse_batch(argv: list[str]) -> Batch:
    """Parse and validate `argv`, which names a --prompt-file, into the batch of its entries (raises `UsageError`)."""
    from hyvideo import prompt_file  # start-up: validation imports torch; the parser alone does not

    args, request = _parse(argv)
    return prompt_file.expand(args, request)


def _parse(argv: list[str] | None) -> tuple[argparse.Namespace, SampleRequest]:
    from hyvideo.request import validate  # start-up: validation imports torch; the parser alone does not

    args = build_parser().parse_args(argv)
    notes: list[str] = []
    request = validate(args, notes)
    for note in notes:
        logger.info(note)
    return args, request


def _configure_logging(debug: bool) -> None:
    logger.remove()
    fmt = "<green>{time:HH:mm:ss}</green> | <level>{level: <7}</level> | {message}"
    level = "DEBUG" if debug else "INFO" if _rank() in (None, "0") else "WARNING"  # torchrun: rank 0 logs progress
    logger.add(sys.stderr, level=level, format=fmt, backtrace=False, diagnose=False)


def _rank() -> str | None:
    """This process's rank in a torchrun job of several processes, else None."""
    return os.environ.get("RANK") if int(os.environ.get("WORLD_SIZE", "1")) > 1 else None


def _report(code: int, text: str) -> int:
    rank = _rank()
    print(" ".join(f"error: {'' if rank is None else f'rank {rank}: '}{text}".split()), file=sys.stderr)
    return code


def _fail(code: int, text: str) -> int:
    from hyvideo.parallel.group import abort  # start-up: torch.distributed; loaded by then (validation imports it)

    _report(code, text)
    abort(code)  # in a running torchrun job: leave now so no peer waits on us
    return code


def _one_line(e: BaseException) -> str:
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    text = f"{type(e).__name__}: {lines[0] if lines else '(no message)'}"
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        text += "; free disk space or choose another --save-path"
    return text


def main(argv: list[str] | None = None) -> int:
    """Run the sampler; returns the process exit code (0 done, 1 fault, 2 bad input, 130 interrupted).

    The flags are parsed before torch is imported (`hyvideo.flags` and `hyvideo.choices` do not import it), so a
    mistyped flag or value is reported at once; no process group exists yet, so nothing is aborted then."""
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        args = build_parser().parse_args(argv)
    except UsageError as e:
        return _report(2, str(e))
    except KeyboardInterrupt:
        return _report(130, "interrupted")
    except SystemExit as e:  # --help
        return e.code if isinstance(e.code, int) else 0
    _configure_logging(args.debug)
    return _run(args)


def _run(args: argparse.Namespace) -> int:
    """Validate the parsed flags, then plan (--dry-run), run a prompt file or generate."""
    from hyvideo import prompt_file  # start-up: validation imports torch, after the flags parsed
    from hyvideo.request import validate  # start-up: as above

    try:
        notes: list[str] = []
        request = validate(args, notes)
        batch = prompt_file.expand(args, request) if request.prompt_file is not None else None
    except UsageError as e:
        return _fail(2, str(e))
    except KeyboardInterrupt:
        return _fail(130, "interrupted")

    for note in notes:  # shown only now that everything is valid, so a failing run prints exactly one line
        logger.info(note)
    logger.debug(f"request: {request}")
    try:
        if request.runtime.dry_run:
            from hyvideo.pipeline import dry_run  # start-up: imports transformers; bad flags fail before that cost

            lines = dry_run(request)
            if _rank() in (None, "0"):  # under torchrun, one copy of the plan
                print("\n".join(lines))  # the plan is what the command produces: stdout
            return 0
        if batch is not None:
            from hyvideo.batch import run_batch  # start-up: imports transformers; bad flags fail before that cost

            return 0 if run_batch(batch).ok else 1
        from hyvideo.pipeline import run  # start-up: imports transformers; bad flags fail before that cost

        paths: list[Path] = run(request)
    except KeyboardInterrupt:
        return _fail(130, "interrupted")
    except UsageError as e:  # a check that needs loaded components (e.g. a size the model cannot take)
        return _fail(2, str(e))
    except (CheckpointError, ConfigError) as e:
        if request.debug:
            traceback.print_exc()
        return _fail(2, str(e))
    except Exception as e:
        if request.debug:
            traceback.print_exc()
        return _fail(1, _one_line(e) + ("" if request.debug else " (run with --debug for the traceback)"))
    for path in paths:
        logger.info(f"wrote {path}")
    return 0
