"""The inference benchmark runs (demo preset, one timed run) so it cannot rot unnoticed; its
figures belong to the machine and are not checked."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_inference_benchmark_reports_time_memory_and_flop_ratio():
    done = subprocess.run([sys.executable, "-m", "neuroread.models.ct_hemorrhage.bench", "--presets", "demo", "--repeats", "1",
                           "--slices", "12"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    line = done.stdout.strip().splitlines()[-1]
    assert line.startswith("demo") and "s per series" in line and "MB" in line and "GFLOP" in line
    assert "measured/estimate = " in line
