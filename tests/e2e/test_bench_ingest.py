"""The ingest benchmark runs end to end (tiny series, one round), so it cannot rot unnoticed.
Its figures are not checked here: they belong to the machine (see node/bench_ingest.py)."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("Orthanc") is None, reason="Debian orthanc not installed (bash .ci/setup installs it)")
def test_bench_ingest_runs_all_four_receivers(tmp_path):
    done = subprocess.run([sys.executable, "-m", "neuroread.bench_ingest", "--slices", "6", "--rounds", "1",
                           "--series", str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    out = done.stdout
    for name in ("neuroread", "Orthanc", "storescp", "pynetdicom"):
        assert f"round 1: {name}" in out, out
    assert "neuroread / Orthanc  = " in out and "neuroread / storescp = " in out
    assert "neuroread / pynetdicom SCP = " in out
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("ingest-")]  # scratch removed
