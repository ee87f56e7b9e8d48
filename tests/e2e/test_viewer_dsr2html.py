"""A second, independent renderer shows the same findings: dcmtk's ``dsr2html`` (Debian's dcmtk)
renders the Measurement Report and the text report of a processed head CT without an error or a
warning, and the HTML, opened in Debian's headless Chromium, shows every finding with its
probability: in the text report as the finding's sentence and "Probability of <finding>: <value>",
in the Measurement Report as each region drawn on a key image, with its probability.

The head-CT model runs on its committed demo weights on a positive phantom. Screenshots of both
pages go to the test's tmp folder and, when ``NEUROREAD_SCREENSHOTS`` names a folder, there too.
"""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pydicom
import pytest

from neuroread.models import default_registry
from neuroread.node.app.offline import process_files
from neuroread.node.config import parse_config
from neuroread.node.encode import DEMO_TEXT
from neuroread.node.tools.dcmtk import DcmtkMissing, dcmtk_tool
from neuroread.training.phantoms.baseline import load_truth
from support.findings_check import regions_of
from support.node_checks import TEXT_SR, content_items
from support.ohif import headless_chromium

pytestmark = pytest.mark.slow
MEASUREMENT_REPORT = "1.2.840.10008.5.1.4.1.1.88.34"


@pytest.fixture(scope="module")
def reports(phantom_sets, tmp_path_factory) -> dict:
    """The head-CT model's result and objects for a phantom with hemorrhage (demo weights)."""
    folder = next(p.parent for p in sorted(phantom_sets["ct-hemorrhage"].glob("*/truth.json"))
                  if load_truth(p.parent)["labels"]["any"])
    files = sorted((folder / load_truth(folder)["series"]["ct"]["folder"]).glob("*.dcm"))
    out = tmp_path_factory.mktemp("dsr2html")
    config = parse_config({"storage": {"root": str(out / "node")}}, out)
    ((_, _, processed),) = process_files(files, config, default_registry())
    by_class = {str(ds.SOPClassUID): ds for ds in processed.objects}
    return {"result": processed.result, "sr": by_class[MEASUREMENT_REPORT], "text": by_class[TEXT_SR]}


def render(ds: pydicom.Dataset, folder: Path) -> tuple[Path, str]:
    """``ds`` written to ``folder`` and rendered by dsr2html: (the HTML file, dsr2html's stderr
    and stdout)."""
    try:
        tool = dcmtk_tool("dsr2html")
    except DcmtkMissing as exc:
        pytest.fail(str(exc))
    source, page = folder / f"{ds.SOPInstanceUID}.dcm", folder / f"{ds.SOPInstanceUID}.html"
    ds.save_as(source, enforce_file_format=True)
    run = subprocess.run([tool, str(source), str(page)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    return page, (run.stderr + run.stdout).strip()


def page_text(browser, page: Path, shot: Path) -> str:
    browser.get(page.as_uri())
    browser.save_screenshot(str(shot))
    if os.environ.get("NEUROREAD_SCREENSHOTS"):
        folder = Path(os.environ["NEUROREAD_SCREENSHOTS"])
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, folder / shot.name)
    return " ".join(browser.execute_script("return document.body.innerText").split())


def test_dsr2html_renders_both_reports_and_chromium_shows_every_finding(reports, tmp_path):
    result, sr, text = reports["result"], reports["sr"], reports["text"]
    pages = {}
    for name, ds in (("measurement-report", sr), ("text-report", text)):
        pages[name], said = render(ds, tmp_path)
        assert said == "", f"dsr2html said, rendering the {name}: {said}"
    browser = headless_chromium(1200, 2400)
    try:
        shown = {name: page_text(browser, page, tmp_path / f"dsr2html-{name}.png") for name, page in pages.items()}
    finally:
        browser.quit()

    # the text report: every finding's sentence, its Present/Absent and its probability NUM
    sentences = [str(i.TextValue) for i in content_items(text) if i.ValueType == "TEXT"
                 and i.ConceptNameCodeSequence[0].CodeMeaning == "Finding"]
    text_numbers = _numbers(text)
    assert len(result.findings) == 6
    for f in result.findings:
        concept = f"Probability of {f.code.meaning}"[:64]
        line = next(s for s in sentences if s.startswith(f"{f.code.meaning}: "))
        assert f"probability {f.probability:.3f}" in line and line in shown["text-report"], line
        assert f"{concept}: {text_numbers[concept]} {{probability}}" in shown["text-report"], concept
        assert ("Present" if f.present else "Absent") in shown["text-report"]
    assert DEMO_TEXT in shown["text-report"]

    # the Measurement Report: every placed finding as a polyline on its image, with its probability
    regions = regions_of(sr)
    assert regions, "no region drawn: the phantom has hemorrhage, the demo weights find it"
    for name, probabilities, _ in regions:
        assert name in shown["measurement-report"], name
        for concept, value in probabilities.items():
            assert f"{concept}: {_number_text(sr, concept)} {{probability}}" in shown["measurement-report"], concept
    assert "POLYLINE" in shown["measurement-report"].upper()


def _numbers(ds) -> dict[str, str]:
    return {str(i.ConceptNameCodeSequence[0].CodeMeaning): str(i.MeasuredValueSequence[0].NumericValue)
            for i in content_items(ds) if i.ValueType == "NUM"}


def _number_text(ds, concept: str) -> str:
    return _numbers(ds)[concept]
