"""The generic inference benchmark (``python -m neuroread.training.bench MODEL``) runs for the
head-CT and the FLAIR model on a small series, so it cannot rot unnoticed. Its figures belong to the machine:
only their presence and sanity are checked."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.parametrize("model", ["ct-hemorrhage", "ms-csvd"])
def test_the_demo_preset_reports_time_memory_flops_and_their_ratio(tmp_path, model):
    rows_file = tmp_path / "rows.json"
    done = subprocess.run([sys.executable, "-m", "neuroread.training.bench", model, "--presets", "demo",
                           "--slices", "8", "--size", "64", "--repeats", "1", "--threads", "1",
                           "--json", str(rows_file)],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    header, line = done.stdout.strip().splitlines()[-2:]
    assert header.startswith(f"{model} inference per series: 8 slices of 64x64, 1 threads, 1 timed runs")
    assert line.startswith("demo") and "s per series" in line and " MB" in line and "GFLOP" in line
    assert "measured/estimate = " in line

    row, = json.loads(rows_file.read_text())  # run_preset's figures, from the preset's own process
    assert (row["model"], row["preset"], row["config"], row["slices"], row["size"]) == (
        model, "demo", "demo", 8, 64)
    assert len(row["runs"]) == 1 and row["seconds"] > 0 and row["threads"] == 1
    assert row["gflops"] > 0 and row["matmul_gflops_per_s"] > 0 and row["seconds_at_matmul_speed"] > 0
    assert row["ratio"] == pytest.approx(row["seconds"] / row["seconds_at_matmul_speed"]) and row["ratio"] > 0
    assert 0 < row["parameters"] < 5 * 2 ** 20 / 4 and row["peak_rss_mb"] > 50
    assert f"{row['gflops']:8.1f} GFLOP" in line and f"= {row['ratio']:.2f}" in line
