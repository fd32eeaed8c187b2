"""`make bench`: every benchmark, one after another (`python -m benchmarks [name ...]`).

Each entry is a module under benchmarks/ with a `main(argv)`; add new ones to BENCHMARKS.
"""

from __future__ import annotations

import importlib
import sys
import time

BENCHMARKS = ["bench_load", "bench_vae", "bench_pipeline", "bench_i2v", "bench_parallel", "bench_memory", "bench_batch"]


def main(argv: list[str] | None = None) -> int:
    names = (argv if argv is not None else sys.argv[1:]) or BENCHMARKS
    for name in names:
        mod = importlib.import_module(f"benchmarks.{name}")
        print(f"\n=== {name} ===", flush=True)
        t0 = time.perf_counter()
        mod.main([])
        print(f"({name}: {time.perf_counter() - t0:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
