"""Pieces the benchmarks share."""

from __future__ import annotations

import argparse


def add_dit_size_args(ap: argparse.ArgumentParser, double: int = 6, single: int = 12) -> None:
    """--hidden/--heads/--double/--single: the random mid-size DiT a benchmark builds (`hyvideo.tiny.mid_dit_config`)."""
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--double", type=int, default=double)
    ap.add_argument("--single", type=int, default=single)
