"""``neuroread bench MODEL``: inference per series on this machine, for any model with a recipe.

For each preset (e.g. ``paper`` and ``demo``), in a fresh subprocess (so that its peak memory
is its own): the recipe's network with random weights (seeded; the speed does not depend on
the values) saved as a checkpoint and loaded by the registered model, exactly as the node loads
weights, then ``predict`` on a synthetic series per input slot (``--slices`` slices of
``--size``² voxels: head-like values in the slot's modality) through the contract (preprocessing,
network, explanations, the result). One untimed warm-up run, then ``--repeats`` timed ones
(median reported). Printed per preset:

* seconds per series (median) and the process's peak resident memory;
* the floating-point operations of one ``predict``, counted by
  :class:`torch.utils.flop_counter.FlopCounterMode` (convolutions and matrix products;
  recurrences and element-wise work are not counted);
* that count over this machine's measured float32 matrix-multiply speed (``torch.matmul`` of two
  4096×4096 matrices, same threads, median of 5 runs, the same statistic as the time per series:
  2048×2048 products gave readings from 300 to 430 GFLOP/s on one machine within a minute, the
  larger ones within 2 %): the time ``predict`` would take at that speed, and the ratio of the
  measured time to it (1.0 = as fast as a large matrix product).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np


def matmul_gflops(n: int = 4096, repeats: int = 5) -> float:
    """This machine's float32 matrix-multiply speed in GFLOP/s (median of ``repeats``)."""
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.matmul(a, b)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        torch.matmul(a, b)
        times.append(time.perf_counter() - start)
    return 2 * n ** 3 / statistics.median(times) / 1e9


def synthetic_volume(slot: Any, slices: int, size: int, uid: str):
    """A series for ``slot`` (an :class:`~neuroread.models.InputSlot`): an ellipse of head-like
    values with noise on ``slices`` slices of ``size``², 5 mm apart (HU for CT, arbitrary MR
    intensities otherwise), on an axial grid with 230 mm field of view."""
    from neuroread.models import SeriesVolume

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:size, :size]
    head = ((yy - size / 2) / (0.41 * size)) ** 2 + ((xx - size / 2) / (0.33 * size)) ** 2 <= 1
    inside, outside, noise = (35.0, -1000.0, 8.0) if slot.modality == "CT" else (400.0, 0.0, 20.0)
    array = np.where(head, inside, outside)[None] + rng.normal(0, noise, (slices, size, size))
    array[:, ~head] = outside
    pixel = 230.0 / size
    return SeriesVolume(uid, array.astype(np.float32), (pixel, pixel, 5.0), (0.0, 0.0, 0.0), np.eye(3),
                        tuple(f"{uid}.{k + 1}" for k in range(slices)), slot.modality,
                        {"FrameOfReferenceUID": "2.25.7"})


def run_preset(model_name: str, preset: str, slices: int, size: int, repeats: int) -> dict:
    """Time ``predict`` of ``model_name`` with ``preset``'s network in this process; the figures as a dict."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from neuroread.models import default_registry
    from neuroread.models.checkpoint import save_checkpoint
    from neuroread.training.recipes import recipe as recipe_of

    recipe = recipe_of(model_name)
    registry = default_registry()
    # The network only: a frozen backbone's settings want pre-training or ImageNet weights, which timing does not need.
    settings = recipe.settings(preset, pretrain_epochs=1)
    torch.manual_seed(0)
    net = recipe.build(settings).eval()
    model = registry.create(model_name) if model_name in registry.names() else None
    if model is None:
        raise ValueError(f"model {model_name} is not registered")
    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp) / "w.pt"
        config = recipe.checkpoint_config(net, settings)
        save_checkpoint(weights, model=model_name, config=config, labels=recipe.outputs(), state_dict=net.state_dict(),
                        architecture=config, training_data="none: random weights for timing", demo=True)
        model.load(weights, "cpu")
    inputs = {slot.name: synthetic_volume(slot, slices, size, f"2.25.{i + 1}")
              for i, slot in enumerate(model.spec.slots)}
    with FlopCounterMode(display=False) as counter:
        model.predict(inputs)  # also the warm-up
    flops = counter.get_total_flops()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        model.predict(inputs)
        times.append(time.perf_counter() - start)
    speed = matmul_gflops()
    seconds = statistics.median(times)
    at_speed = flops / (speed * 1e9)
    return {"model": model_name, "preset": preset, "parameters": sum(p.numel() for p in net.parameters()),
            "slices": slices, "size": size, "seconds": seconds, "runs": [round(t, 3) for t in times],
            "gflops": flops / 1e9, "matmul_gflops_per_s": speed, "seconds_at_matmul_speed": at_speed,
            "ratio": seconds / at_speed if at_speed else float("nan"),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "threads": torch.get_num_threads(), "config": config.get("name", preset)}


def bench(model_name: str, presets: list[str], *, slices: int, size: int, repeats: int, threads: int) -> list[dict]:
    """:func:`run_preset` for each preset, each in its own subprocess; the rows."""
    rows = []
    for preset in presets:
        done = subprocess.run([sys.executable, "-m", "neuroread.training.bench", model_name, "--one", preset,
                               "--slices", str(slices), "--size", str(size), "--repeats", str(repeats),
                               "--threads", str(threads)], capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"bench {model_name} {preset} failed: {done.stderr[-2000:]}")
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    return rows


def report(model_name: str, presets: list[str] | None, *, slices: int, size: int, repeats: int, threads: int,
           json_path: Path | None = None) -> list[dict]:
    """Benchmark ``presets`` (default: all of the model's recipe's), printing a header and a line per
    preset as each finishes (and writing the rows as JSON to ``json_path``); the rows."""
    from neuroread.training.recipes import recipe as recipe_of

    presets = presets or list(recipe_of(model_name).presets)
    print(f"{model_name} inference per series: {slices} slices of {size}x{size}, {threads} threads, "
          f"{repeats} timed runs after one warm-up", flush=True)
    rows = []
    for preset in presets:
        rows += bench(model_name, [preset], slices=slices, size=size, repeats=repeats, threads=threads)
        print(describe(rows[-1]), flush=True)
    if json_path is not None:
        Path(json_path).write_text(json.dumps(rows, indent=1) + "\n")
    return rows


def describe(row: dict) -> str:
    return (f"{row['preset']:6s} {row['parameters'] / 1e6:7.2f} M parameters: {row['seconds']:7.2f} s per series "
            f"(runs {row['runs']}), peak {row['peak_rss_mb']:6.0f} MB, {row['gflops']:8.1f} GFLOP; at this "
            f"machine's matmul speed ({row['matmul_gflops_per_s']:.1f} GFLOP/s) {row['seconds_at_matmul_speed']:6.2f} s "
            f"-> measured/estimate = {row['ratio']:.2f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model")
    parser.add_argument("--presets", nargs="+", default=None, help="network presets (default: the recipe's all)")
    parser.add_argument("--slices", type=int, default=32, help="slices in the benchmark series (default 32)")
    parser.add_argument("--size", type=int, default=512, help="rows and columns of each slice (default 512)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per preset (default 3)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads (default: all cores)")
    parser.add_argument("--json", metavar="FILE", help="also write the rows as JSON")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # the per-preset subprocess
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)  # this process runs one benchmark and nothing else
    if args.one:
        print(json.dumps(run_preset(args.model, args.one, args.slices, args.size, args.repeats)))
        return 0
    report(args.model, args.presets, slices=args.slices, size=args.size, repeats=args.repeats, threads=args.threads,
           json_path=Path(args.json) if args.json else None)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
