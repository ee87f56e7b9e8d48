"""Result UIDs are a promise to the PACS: the same input, weights and thresholds give the same
UIDs, in this release and the next; a refactor that changes how a UID is derived fails here.

The golden file was written again (``NEUROREAD_WRITE_GOLDEN=1``) when the weights' identity
(their SHA-256 and the effective thresholds) became part of every result UID: every series and
instance UID changed then, by design (the study UID is the source's); and when the text report
(an Enhanced SR) joined the results: one entry added, every other unchanged. Write it again only
for such a deliberate change, and say so.

The input is the first small ct-hemorrhage phantom (seed 7, deterministic UIDs) and the model
is the tiny test network with its committed weights (``tests/data/tiny-test.pt``, from a fixed
seed) at its spec's threshold.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pydicom

from neuroread.models import ModelRegistry
from neuroread.node.app.offline import run_files
from neuroread.node.config import parse_config
from support.tiny_model import ENTRY

GOLDEN = Path(__file__).resolve().parents[1] / "data" / "result_uids.json"


def _uids(files: list[Path]) -> list[list[str]]:
    rows = []
    for f in files:
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        rows.append([str(ds.SOPClassUID), str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)])
    return sorted(rows)


def test_result_uids_match_the_golden_file(tmp_path, head_ct):
    folder = head_ct[0].parent
    config = parse_config({"storage": {"root": str(tmp_path / "data")}}, tmp_path)
    got = _uids(run_files([folder], tmp_path / "out", config, ModelRegistry([ENTRY])))
    assert len(got) >= 5
    if os.environ.get("NEUROREAD_WRITE_GOLDEN") == "1":
        GOLDEN.write_text(json.dumps(got, indent=1) + "\n")
    assert got == json.loads(GOLDEN.read_text())
