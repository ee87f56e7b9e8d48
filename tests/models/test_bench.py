"""The generic inference benchmark (``python -m neuroread.training.bench MODEL``) runs for the
head-CT and the FLAIR model on a small series, and on a phantom DICOM series and a trained checkpoint
(`--series`, `--weights`), so it cannot rot unnoticed. Its figures belong to the machine:
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


def _study(phantom_sets, task: str) -> Path:
    return sorted(p.parent for p in phantom_sets[task].glob("*/truth.json"))[0]


@pytest.mark.slow
def test_a_series_folder_is_the_input_and_the_row_has_its_shape(phantom_sets, capsys):
    from neuroread.models.volume import load_series
    from neuroread.training.bench import report

    folder = _study(phantom_sets, "ct-hemorrhage") / "S01"
    shape = load_series(sorted(folder.glob("*.dcm"))).array.shape
    rows = report("ct-hemorrhage", ["demo"], slices=99, size=999, repeats=1, threads=1, series=[folder])
    header, line = capsys.readouterr().out.strip().splitlines()[-2:]
    assert header.startswith(f"ct-hemorrhage inference per series: the series in {folder}, 1 threads")

    row, = rows  # --slices and --size are ignored: the series' own shape
    assert (row["preset"], row["series"], row["weights"]) == ("demo", [str(folder)], None)
    assert (row["slices"], row["rows"], row["columns"]) == shape and row["shapes"] == {"ct": list(shape)}
    assert row["size"] == (shape[1] if shape[1] == shape[2] else f"{shape[1]}x{shape[2]}")
    assert line.startswith("demo") and f" on {shape[0]} slices of {shape[1]}x{shape[2]}: " in line
    assert row["seconds"] > 0 and row["gflops"] > 0


@pytest.mark.slow
def test_a_weights_file_is_benched_as_the_node_loads_it(weights, capsys):
    from neuroread.cli import main

    assert main(["bench", "ct-hemorrhage", "--weights", str(weights), "--slices", "8", "--size", "64",
                 "--repeats", "1", "--threads", "1"]) == 0
    header, line = capsys.readouterr().out.strip().splitlines()[-2:]  # no --presets with --weights: its row only
    assert header.startswith("ct-hemorrhage inference per series: 8 slices of 64x64, 1 threads")
    assert line.startswith("weights (tiny)") and "s per series" in line and "measured/estimate = " in line


def test_series_must_fill_the_slots_in_order(phantom_sets, tmp_path, capsys):
    from neuroread.cli import main
    from neuroread.training.bench import report

    folder = str(_study(phantom_sets, "ct-hemorrhage") / "S01")
    base = ["bench", "ct-hemorrhage", "--presets", "demo", "--repeats", "1"]
    assert main([*base, "--series", folder, "--series", folder]) == 2
    assert ("ct-hemorrhage has 1 input slot (ct): give --series once per slot in that order, not 2 times"
            in capsys.readouterr().err)
    assert main([*base, "--series", str(tmp_path)]) == 2
    assert f"--series {tmp_path}: no files in it" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError, match="--weights .*absent.pt: no such file"):
        report("ct-hemorrhage", None, slices=8, size=64, repeats=1, threads=1, weights=tmp_path / "absent.pt")


def test_a_model_of_two_series_is_timed_per_study():
    from neuroread.training.bench import describe

    row = {"preset": "demo", "config": "demo", "parameters": 360_000, "series": ["T1", "STIR"],
           "shapes": {"t1": [16, 320, 384], "fs": [15, 256, 288]}, "seconds": 0.48, "runs": [0.48],
           "peak_rss_mb": 1200.0, "gflops": 10.0, "matmul_gflops_per_s": 50.0, "seconds_at_matmul_speed": 0.2,
           "ratio": 2.4}
    line = describe(row)
    assert "on t1 16 slices of 320x384, fs 15 slices of 256x288: " in line and "s per study" in line
    one = {**row, "series": ["S01"], "shapes": {"ct": [40, 512, 512]}}
    assert "s per series" in describe(one) and "on 40 slices of 512x512" in describe(one)
