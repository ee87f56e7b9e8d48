"""Every registered model, on its committed demo weights, on its task's phantoms: the findings of
its Measurement Report, its text report and its key-image regions agree with each other and with
the model's result (:func:`support.findings_check.check_findings_agree`), read back from the bytes
a PACS would store. A model registered later is checked here without a new test."""
from __future__ import annotations

import io

import pydicom
import pytest

from neuroread.models import default_registry
from neuroread.models.volume import load_series
from neuroread.node.app.offline import process_files
from neuroread.node.config import parse_config
from support.findings_check import check_findings_agree

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("model", default_registry().names())
def test_sr_text_report_and_regions_agree_with_the_result(model, phantom_sets, tmp_path):
    registry = default_registry()
    config = parse_config({"storage": {"root": str(tmp_path / "node")},
                           "models": {name: {"enabled": name == model} for name in registry.names()}}, tmp_path)
    files = sorted(phantom_sets[model].rglob("*.dcm"))
    headers = {p: pydicom.dcmread(p, stop_before_pixels=True) for p in files}
    by_series: dict[str, list] = {}
    for p, ds in headers.items():
        by_series.setdefault(str(ds.SeriesInstanceUID), []).append(p)
    runs = list(process_files(files, config, registry))
    assert len(runs) == 4, f"{model}: {len(runs)} of its 4 phantom studies processed"
    placed = 0
    for _, name, processed in runs:
        assert name == model
        objects = []
        for ds in processed.objects:  # as stored: written and read back
            buffer = io.BytesIO()
            ds.save_as(buffer, enforce_file_format=True)
            objects.append(pydicom.dcmread(io.BytesIO(buffer.getvalue())))
        sources = {}
        for header in processed.headers.values():  # each input series, slice by slice as the model read it
            uid = str(header.SeriesInstanceUID)
            by_uid = {str(headers[p].SOPInstanceUID): headers[p] for p in by_series[uid]}
            sources[uid] = [by_uid[u] for u in load_series(by_series[uid]).sop_instance_uids]
        counts = check_findings_agree(processed.result, objects, sources)
        placed += counts["places"]
    assert placed > 0, f"{model}: no finding with a place in four phantom studies (half of them positive)"
