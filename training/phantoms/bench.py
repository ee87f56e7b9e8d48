"""Benchmark: how long phantom sets take on this machine.

    python -m neuroread.training.phantoms.bench                 # small: 20 studies per task, all cores
    python -m neuroread.training.phantoms.bench --size full --n 2

Prints seconds per task and in total, and studies per second. Not a timed test: the issue's
target is the small set (20 per task, all five tasks) in under two minutes on two cores.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from .registry import generate_set, task_names


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=("small", "full"), default="small")
    parser.add_argument("--n", type=int, default=20, help="studies per task (default 20)")
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--tasks", nargs="*", default=task_names())
    args = parser.parse_args(argv)
    total = 0.0
    print(f"cores: {os.cpu_count()}, size: {args.size}, studies per task: {args.n}")
    with tempfile.TemporaryDirectory() as tmp:
        for task in args.tasks:
            start = time.perf_counter()
            generate_set(task, args.n, 1, Path(tmp) / task, size=args.size, workers=args.workers, progress=False)
            dt = time.perf_counter() - start
            total += dt
            size_mb = sum(f.stat().st_size for f in (Path(tmp) / task).rglob("*") if f.is_file()) / 1e6
            print(f"{task:14s} {dt:7.1f} s  {dt / args.n:6.2f} s/study  {size_mb:8.1f} MB")
    n = args.n * len(args.tasks)
    print(f"{'total':14s} {total:7.1f} s  {n / total:6.2f} studies/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
