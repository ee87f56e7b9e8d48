"""Benchmark: DrCT2 inference per head-CT series, paper and demo configurations, on this machine.

    python -m neuroread.models.ct_hemorrhage.bench                        # both presets, 3 timed runs each
    python -m neuroread.models.ct_hemorrhage.bench --presets demo --repeats 5 --slices 40

For each preset, in a fresh subprocess (so that its peak memory is its own): a network with
random weights (seeded; the speed does not depend on the values) saved as a checkpoint and
loaded by :class:`~neuroread.models.ct_hemorrhage.model.HemorrhageModel`, then ``predict`` on one series of
``--slices`` 512×512 slices of head-like HU noise: windows, sampling, the three networks, the
spatial maps of the key slices, the result. One untimed warm-up run, then ``--repeats`` timed
ones (median reported). Printed per preset:

* seconds per series (median) and the peak resident memory of the process;
* the network's floating-point operations for one series, counted by
  :class:`torch.utils.flop_counter.FlopCounterMode` (convolutions and matrix products; the GRUs'
  recurrences are not counted, a few percent of the total);
* that count over this machine's measured float32 matrix-multiply speed (``torch.matmul`` of two
  2048×2048 matrices, same threads): the time the network would take at that speed, and the
  ratio of the measured time to it (1.0 = as fast as a large matrix product; convolution layers
  and everything around the network make it larger).
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

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[2]
PRESETS = ("paper", "demo")


def matmul_gflops(n: int = 2048, repeats: int = 5) -> float:
    """This machine's float32 matrix-multiply speed in GFLOP/s (best of ``repeats``)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.matmul(a, b)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.matmul(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * n ** 3 / best / 1e9


def _series(slices: int):
    """One series of head-like HU noise on a 512×512 grid, 5 mm slices."""
    from neuroread.models.result import SeriesVolume

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:512, :512]
    head = ((yy - 256) / 210.0) ** 2 + ((xx - 256) / 170.0) ** 2 <= 1
    array = np.where(head, 35.0, -1000.0)[None] + rng.normal(0, 8, (slices, 512, 512))
    array[:, ~head] = -1000.0
    return SeriesVolume("2.25.1", array.astype(np.float32), (0.45, 0.45, 5.0), (0.0, 0.0, 0.0), np.eye(3),
                        tuple(f"2.25.1.{k + 1}" for k in range(slices)), "CT")


def run_preset(preset: str, slices: int, repeats: int) -> dict:
    """Time ``predict`` for one preset in this process; returns the figures as a dict."""
    from torch.utils.flop_counter import FlopCounterMode

    from neuroread.models.checkpoint import save_checkpoint
    from neuroread.models.ct_hemorrhage.model import SPEC, HemorrhageModel
    from neuroread.models.ct_hemorrhage.network import DrCT2, DrCT2Config
    from neuroread.models.ct_hemorrhage.preprocess import prepare

    labels = [lb.name for lb in SPEC.labels]
    config = DrCT2Config.paper(len(labels)) if preset == "paper" else DrCT2Config.demo(len(labels))
    torch.manual_seed(0)
    net = DrCT2(config).eval()
    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp) / "w.pt"
        save_checkpoint(weights, model=SPEC.name, config=config.to_dict(), labels=labels, state_dict=net.state_dict(),
                        architecture=config.to_dict(), training_data="none: random weights for timing", demo=True)
        model = HemorrhageModel(SPEC)
        model.load(weights)
    volume = _series(slices)
    x, _ = prepare(volume.array, config.slices, config.input_size)
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        net(x.unsqueeze(0))
    flops = counter.get_total_flops()
    model.predict({"ct": volume})  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        model.predict({"ct": volume})
        times.append(time.perf_counter() - start)
    speed = matmul_gflops()
    seconds = statistics.median(times)
    at_speed = flops / (speed * 1e9)
    return {"preset": preset, "parameters": sum(p.numel() for p in net.parameters()), "slices": slices,
            "sampled": config.slices, "input": config.input_size, "zoom": config.zoom_size,
            "seconds": seconds, "runs": [round(t, 3) for t in times], "gflops": flops / 1e9,
            "matmul_gflops_per_s": speed, "seconds_at_matmul_speed": at_speed, "ratio": seconds / at_speed,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "threads": torch.get_num_threads()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", choices=PRESETS, default=list(PRESETS))
    parser.add_argument("--slices", type=int, default=32, help="slices in the benchmark series (default 32)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per preset (default 3)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads (default: all cores)")
    parser.add_argument("--one", choices=PRESETS, help=argparse.SUPPRESS)  # the per-preset subprocess
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.one:
        print(json.dumps(run_preset(args.one, args.slices, args.repeats)))
        return 0
    print(f"DrCT2 inference per series: {args.slices} slices of 512×512, {args.threads} threads, "
          f"{args.repeats} timed runs after one warm-up", flush=True)
    rows = []
    for preset in args.presets:
        done = subprocess.run([sys.executable, "-m", "neuroread.models.ct_hemorrhage.bench", "--one", preset, "--slices",
                               str(args.slices), "--repeats", str(args.repeats), "--threads", str(args.threads)],
                              capture_output=True, text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
        if done.returncode != 0:
            print(done.stderr[-2000:], file=sys.stderr)
            return 1
        row = json.loads(done.stdout.strip().splitlines()[-1])
        rows.append(row)
        print(f"{preset:6s} {row['parameters'] / 1e6:7.2f} M parameters, m={row['sampled']} at {row['input']} px "
              f"(key slices zoomed to {row['zoom']}): {row['seconds']:7.2f} s per series (runs {row['runs']}), "
              f"peak {row['peak_rss_mb']:6.0f} MB, {row['gflops']:8.1f} GFLOP; at this machine's matmul speed "
              f"({row['matmul_gflops_per_s']:.1f} GFLOP/s) {row['seconds_at_matmul_speed']:6.2f} s -> "
              f"measured/estimate = {row['ratio']:.2f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
