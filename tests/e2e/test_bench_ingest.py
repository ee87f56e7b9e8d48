"""The ingest benchmark runs end to end (tiny series, one round, one association and four at once),
so it cannot rot unnoticed. Its figures are not checked here: they belong to the machine (see
neuroread/bench_ingest.py)."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("Orthanc") is None, reason="Debian orthanc not installed (bash .ci/setup installs it)")
def test_bench_ingest_runs_all_four_receivers_over_one_and_four_associations(tmp_path):
    done = subprocess.run([sys.executable, "-m", "neuroread.bench_ingest", "--slices", "8", "--rounds", "1",
                           "--associations", "1", "4", "--series", str(tmp_path)],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    out = done.stdout
    for label in ("1 association", "4 associations"):
        for name in ("neuroread", "Orthanc", "storescp", "pynetdicom"):
            assert f"round 1, {label}: {name}" in out, out
        assert f"8 × 512×512 CT, {label}:" in out, out
    for ratio in ("neuroread / Orthanc  = ", "neuroread / storescp = ", "neuroread / pynetdicom SCP = "):
        assert out.count(ratio) == 2, out
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("ingest-")]  # scratch removed


def test_bench_ingest_refuses_more_associations_than_slices():
    done = subprocess.run([sys.executable, "-m", "neuroread.bench_ingest", "--slices", "3", "--associations", "4"],
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "--associations" in done.stderr
