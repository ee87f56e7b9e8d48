"""The results open in a real viewer: OHIF's prebuilt viewer (npm ``@ohif/app``, fetched by
``.ci/ohif``) in Debian's headless Chromium, served against a real Orthanc's DICOMweb.

The head-CT model (its committed demo weights, or the checkpoint named by
``NEUROREAD_VIEWER_WEIGHTS``) processes a phantom head CT with hemorrhage with
``neuroread.node.app.offline.run_files``; the source series, its Measurement Report, text report,
KOS, Secondary Captures (key-slice overlays and the report page) and Parametric Maps, and the
Segmentation the tiny test model makes of the same series, go into Orthanc. The browser then opens
OHIF's basic viewer on the study and checks what a reader sees:

* every series in the study browser, under its own description;
* the report page (a Secondary Capture) drawn in the viewport, in colour;
* the text report (Enhanced SR, "Diagnostic Imaging Report") in OHIF's SR text viewport: every
  finding's sentence with its probability, the demo-weights warning, no "not supported" item;
* the Measurement Report (TID 1500) in OHIF's SR measurement viewport: the key image with the
  finding's region drawn on it, labelled "Probability of …: <value>" and the decision threshold.
  OHIF 3.13 reads the image coordinates of every measurement group and fails on a group without
  them, which is why the Measurement Report holds only findings with a place;
* the Segmentation in OHIF's segmentation panel, with its segment, and drawn on the CT;
* the Parametric Map as a colour overlay on the CT (OHIF's PMAP viewport).

OHIF lists the KOS but marks it "SOP Class UID is not supported" (it has no KOS handler).

Screenshots of each step go to the test's tmp folder and, when ``NEUROREAD_SCREENSHOTS`` names a
folder, there too.
"""
from __future__ import annotations

import os
import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pydicom
import pytest
from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
from selenium.webdriver import ActionChains, Chrome
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys

from neuroread.models import ModelRegistry, default_registry
from neuroread.node.app.offline import run_files
from neuroread.node.config import parse_config
from neuroread.node.encode import DEMO_TEXT
from neuroread.training.phantoms.baseline import load_truth
from support.findings_check import regions_of
from support.node_checks import content_items
from support.ohif import OhifServer, headless_chromium, ohif_dist
from support.orthanc_peer import OrthancServer
from support.tiny_model import ENTRY as TINY_TEST

pytestmark = pytest.mark.slow

WEIGHTS_ENV = "NEUROREAD_VIEWER_WEIGHTS"
SCREENSHOTS_ENV = "NEUROREAD_SCREENSHOTS"
T = TypeVar("T")

# Pixel statistics of the viewport's canvas (cornerstone draws into a 2D canvas): pixels whose
# channels differ (colour: a CT alone is grey), pixels brighter than black, all pixels.
CANVAS_STATS = """
const c = document.querySelector('[data-cy="viewport-pane"] canvas.cornerstone-canvas');
if (!c || !c.width) return null;
const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
let colour = 0, lit = 0;
for (let i = 0; i < d.length; i += 4) {
  if (Math.abs(d[i] - d[i + 1]) + Math.abs(d[i + 1] - d[i + 2]) > 40) colour++;
  if (d[i] + d[i + 1] + d[i + 2] > 30) lit++;
}
return {colour: colour, lit: lit, total: d.length / 4};
"""
SERIES_LIST = """
return [...document.querySelectorAll('[data-cy^="study-browser-thumbnail"]')].map(e => [
  e.querySelector('[data-cy="series-modality-label"]')?.innerText ?? '',
  e.querySelector('[data-cy="series-description-label"]')?.innerText ?? '']);
"""
# The texts and the shapes cornerstone draws over the viewport's image (annotations are SVG).
SVG_TEXTS = """
return [...document.querySelectorAll('[data-cy="viewport-pane"] svg text')].map(t => t.textContent);
"""
SVG_SHAPES = """
return document.querySelectorAll('[data-cy="viewport-pane"] svg polyline, [data-cy="viewport-pane"] svg path').length;
"""
TOOLTIPS = "return [...document.querySelectorAll('[role=tooltip]')].map(e => e.innerText);"


# -- data -------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def checkpoint() -> Path:
    """The ct-hemorrhage weights: ``$NEUROREAD_VIEWER_WEIGHTS`` when set, else the demo weights
    committed with the model (they find the hemorrhage, so the study has a marked finding)."""
    given = os.environ.get(WEIGHTS_ENV) or str(default_registry().entry("ct-hemorrhage").demo_weights)
    if not Path(given).is_file():
        pytest.fail(f"{given}: no such checkpoint")
    return Path(given)


@pytest.fixture(scope="module")
def study(phantom_sets, checkpoint, tmp_path_factory) -> dict:
    """A phantom head CT with hemorrhage and its results: ``files`` (source and results, to
    upload), ``study_uid``, ``ct`` (source datasets) and ``by_kind`` (result datasets by SR, TEXT
    (the text report), KO, SC, PM, SEG)."""
    folder = next(p.parent for p in sorted(phantom_sets["ct-hemorrhage"].glob("*/truth.json"))
                  if load_truth(p.parent)["labels"]["any"])
    source = sorted((folder / load_truth(folder)["series"]["ct"]["folder"]).glob("*.dcm"))
    out = tmp_path_factory.mktemp("viewer-results")
    storage = {"storage": {"root": str(out / "node")}}
    config = parse_config({**storage, "models": {"ct-hemorrhage": {"weights": str(checkpoint)}}}, out)
    product = run_files(source, out / "ct-hemorrhage", config, default_registry())
    # The tiny test model's lesion mask is the Segmentation (no product model makes one of a CT
    # yet); its other objects would only crowd the study.
    segs = [p for p in run_files(source, out / "tiny-test", parse_config(storage, out), ModelRegistry([TINY_TEST]))
            if pydicom.dcmread(p, stop_before_pixels=True).Modality == "SEG"]
    kinds = {"Comprehensive 3D SR Storage": "SR", "Enhanced SR Storage": "TEXT", "Parametric Map Storage": "PM",
             "Key Object Selection Document Storage": "KO", "Segmentation Storage": "SEG"}
    by_kind: dict[str, list[pydicom.Dataset]] = {}
    for p in product + segs:
        ds = pydicom.dcmread(p)
        by_kind.setdefault(kinds.get(ds.SOPClassUID.name, "SC"), []).append(ds)
    assert sorted((k, len(v)) for k, v in by_kind.items()) == [("KO", 1), ("PM", 2), ("SC", 6), ("SEG", 1),
                                                                ("SR", 1), ("TEXT", 1)]
    ct = [pydicom.dcmread(p, stop_before_pixels=True) for p in source]
    return {"files": source + product + segs, "study_uid": str(ct[0].StudyInstanceUID), "ct": ct,
            "by_kind": by_kind}


# -- servers and browser ----------------------------------------------------------------------------

@pytest.fixture
def orthanc(tmp_path):
    server = OrthancServer(tmp_path / "orthanc")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def dist() -> Path:
    """OHIF's dist folder; module-scoped, so a missing viewer fails the test before any work."""
    return ohif_dist()


@pytest.fixture(scope="module")
def browser():
    driver = headless_chromium()
    yield driver
    driver.quit()


@pytest.fixture
def viewer(dist, orthanc):
    with OhifServer(dist, orthanc.url) as server:
        yield server


class Shots:
    """Screenshots into the test's tmp folder and ``$NEUROREAD_SCREENSHOTS`` when set."""

    def __init__(self, driver: Chrome, folder: Path) -> None:
        self.driver = driver
        self.folders = [folder] + ([Path(os.environ[SCREENSHOTS_ENV])] if os.environ.get(SCREENSHOTS_ENV) else [])
        for f in self.folders:
            f.mkdir(parents=True, exist_ok=True)

    def __call__(self, name: str) -> Path:
        first = self.folders[0] / f"{name}.png"
        self.driver.save_screenshot(str(first))
        for f in self.folders[1:]:
            shutil.copyfile(first, f / first.name)
        return first


def until(check: Callable[[], T | None], timeout: float, what: str, shots: Shots | None = None) -> T:
    """Poll ``check`` (every 0.25 s) until it returns something truthy; fail, with a screenshot,
    after ``timeout`` seconds. A DOM element re-rendered under the check counts as not yet."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = check()
        except (StaleElementReferenceException, NoSuchElementException):
            value = None
        if value:
            return value
        time.sleep(0.25)
    where = f" (screenshot {shots('timeout')})" if shots else ""
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}{where}")


def open_series(driver: Chrome, description: str) -> None:
    """Double-click a series in OHIF's study browser: it loads into the active viewport."""
    label = driver.find_element(By.XPATH, f'//*[@data-cy="series-description-label" and text()="{description}"]')
    ActionChains(driver).double_click(label).perform()


def overlay(driver: Chrome, corner: str) -> str:
    return driver.find_element(By.CSS_SELECTOR, f'[data-cy="viewport-overlay-{corner}"]').text


# -- the test ---------------------------------------------------------------------------------------

def test_the_results_open_in_ohif(dist, browser, study, orthanc, viewer, tmp_path):
    started = time.monotonic()
    orthanc.upload(study["files"])
    shots = Shots(browser, tmp_path / "screenshots")
    by_kind = study["by_kind"]
    sr, = by_kind["SR"]
    text, = by_kind["TEXT"]
    ko, = by_kind["KO"]
    pm = min(by_kind["PM"], key=lambda ds: int(ds.InstanceNumber))  # the map the overlays draw
    seg, = by_kind["SEG"]
    pictures = sorted(by_kind["SC"], key=lambda ds: int(ds.InstanceNumber))
    page = next(ds for ds in pictures if "report page" in str(ds.DerivationDescription))

    browser.get(viewer.viewer_url(study["study_uid"]))
    expected = {(study["ct"][0].Modality, str(study["ct"][0].SeriesDescription)),
                ("SR", str(sr.SeriesDescription)), ("SR", str(text.SeriesDescription)),
                ("KO", str(ko.SeriesDescription)),
                ("OT", str(page.SeriesDescription)), ("PMAP", str(pm.SeriesDescription)),
                ("SEG", str(seg.SeriesDescription))}
    listed = until(lambda: (rows := browser.execute_script(SERIES_LIST)) and {tuple(r) for r in rows} >= expected
                   and rows, 90, f"OHIF's study browser listing {sorted(expected)}", shots)
    assert sorted(map(tuple, listed)) == sorted(expected)  # one entry per series (both maps in one), nothing else
    until(lambda: "(1/" in overlay(browser, "bottom-right"), 60, "the CT in the viewport", shots)
    shots("01-study")

    # The KOS: listed, but OHIF has no handler for its SOP class (a warning icon says so).
    warning = browser.find_element(
        By.XPATH, f'//*[@data-cy="series-description-label" and text()="{ko.SeriesDescription}"]'
                  '/ancestor::*[starts-with(@data-cy, "study-browser-thumbnail")]'
                  '//button[starts-with(@id, "display-set-tooltip-")]')
    browser.execute_script("arguments[0].focus()", warning)
    assert any("SOP Class UID is not supported" in t for t in until(
        lambda: browser.execute_script(TOOLTIPS), 10, "the KOS warning's tooltip", shots))

    # The report page: the Secondary Capture series opens on its first picture; End goes to the
    # last one, the report page. A CT is grey; the page has its coloured bars and warning.
    open_series(browser, str(page.SeriesDescription))
    position = f"({pictures.index(page) + 1}/{len(pictures)})"
    until(lambda: f"(1/{len(pictures)})" in overlay(browser, "bottom-right"), 30, "the pictures series opened", shots)
    pane = browser.find_element(By.CSS_SELECTOR, '[data-cy="viewport-pane"]')
    ActionChains(browser).move_to_element(pane).click().send_keys(Keys.END).perform()
    until(lambda: position in overlay(browser, "bottom-right"), 30, f"the report page at {position}", shots)
    stats = until(lambda: (s := browser.execute_script(CANVAS_STATS)) and s["colour"] > 0.005 * s["total"] and s,
                  30, "the report page drawn in colour", shots)
    assert stats["lit"] > 0.3 * stats["total"], stats  # a page, not a black viewport with a few pixels
    shots("02-report-page")

    # The text report: OHIF's SR text viewport shows its content tree; every finding's sentence,
    # with its probability, is on screen.
    open_series(browser, str(text.SeriesDescription))
    sentences = [str(i.TextValue) for i in content_items(text) if i.ValueType == "TEXT"
                 and i.ConceptNameCodeSequence[0].CodeMeaning == "Finding"]
    said = [x for x in sentences if re.search(r": (present|absent), probability \d\.\d{3} ", x)]
    assert len(said) == 6, sentences  # RSNA's six labels, each present or absent with its probability
    shown = until(lambda: (t := " ".join(browser.find_element(By.TAG_NAME, "body").text.split()))
                  and all(x in t for x in sentences) and t, 60, f"the text report's {len(sentences)} findings", shots)
    assert DEMO_TEXT in shown and "Diagnostic Imaging Report" in shown
    assert "not supported" not in shown  # nothing in it that OHIF cannot render
    shots("03-text-report")

    # The Measurement Report: OHIF's SR viewport draws each finding that has a place on its key
    # image, labelled with its probability.
    drawn = regions_of(sr)
    assert drawn, "no finding with a place in the Measurement Report"
    open_series(browser, str(sr.SeriesDescription))
    tracking, probability, _ = drawn[0]
    meaning, value = next(iter(probability.items()))
    label = f"{meaning}: {value:.2f}"

    def labelled() -> list[str] | None:
        texts = browser.execute_script(SVG_TEXTS)
        return texts if any(label in t for t in texts) and browser.execute_script(SVG_SHAPES) else None

    texts = until(labelled, 60, f"the region of {tracking!r} drawn and labelled {label!r}", shots)
    assert any("Decision threshold" in t for t in texts), texts
    shots("04-measurement-report")

    # The Segmentation: OHIF asks whether to load it, then lists it and its segments.
    open_series(browser, str(seg.SeriesDescription))
    until(lambda: browser.find_element(By.XPATH, '//button[normalize-space()="Yes"]'), 60,
          "OHIF asking to open the segmentation", shots).click()
    browser.find_element(By.CSS_SELECTOR, '[data-cy="panelSegmentation-btn"]').click()
    segments = [str(s.SegmentLabel) for s in seg.SegmentSequence]
    panel = until(lambda: (t := browser.find_element(By.TAG_NAME, "body").text) and all(s in t for s in segments)
                  and str(seg.SeriesDescription) in t.split("Segmentations", 1)[-1] and t,
                  30, f"the segmentation panel listing {seg.SeriesDescription!r} and {segments}", shots)
    assert "Segmentations" in panel
    until(lambda: (s := browser.execute_script(CANVAS_STATS)) and s["colour"] > 0, 30,
          "the segment drawn in colour on the (grey) CT", shots)
    shots("05-segmentation")

    # The Parametric Map: OHIF's PMAP viewport fuses it, in colour, over the CT. Attention is 0
    # outside the key slices, so step through the slices until one shows it. Last, because OHIF
    # keeps the map over the CT in later viewports.
    open_series(browser, str(pm.SeriesDescription))
    until(lambda: "multiplied by 100" in browser.find_element(By.TAG_NAME, "body").text, 60,
          "the PMAP viewport's notice (values shown x100)", shots)
    pane = browser.find_element(By.CSS_SELECTOR, '[data-cy="viewport-pane"]')
    ActionChains(browser).move_to_element(pane).perform()

    def a_coloured_slice() -> str | None:
        for key in [Keys.HOME] + [Keys.ARROW_DOWN] * (len(study["ct"]) - 1):
            ActionChains(browser).send_keys(key).perform()
            time.sleep(0.3)
            stats = browser.execute_script(CANVAS_STATS)
            if stats and stats["colour"] > 0.02 * stats["total"]:
                return overlay(browser, "bottom-right")
        return None

    until(a_coloured_slice, 90, f"a slice of the CT with {pm.SeriesDescription!r} over it in colour", shots)
    shots("06-parametric-map")

    failed = [(path, status) for path, status in viewer.requests if status >= 400]
    assert failed == [], f"requests the viewer or Orthanc refused: {failed[:10]}"
    print(f"viewer checks: {time.monotonic() - started:.1f} s")


# -- the microbleeds of an SWI ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def swi_study(phantom_sets, tmp_path_factory) -> dict:
    """A full-size SWI phantom through cmb-svd on its committed demo weights: ``files`` (the SWI
    series, the Segmentation and the Measurement Report), ``seg``, ``sr``, ``swi`` (source headers)."""
    folder = sorted(p.parent for p in phantom_sets["cmb-svd"].glob("*/truth.json"))[0]
    source = sorted((folder / load_truth(folder)["series"]["swi"]["folder"]).glob("*.dcm"))
    out = tmp_path_factory.mktemp("viewer-swi")
    config = parse_config({"storage": {"root": str(out / "node")},
                           "models": {"ct-hemorrhage": {"enabled": False}, "ms-csvd": {"enabled": False}}}, out)
    product = [pydicom.dcmread(p) for p in run_files(source, out / "cmb-svd", config, default_registry())]
    seg, = [ds for ds in product if ds.Modality == "SEG"]
    sr, = [ds for ds in product if ds.SOPClassUID.name == "Comprehensive 3D SR Storage"]
    return {"files": source + [Path(ds.filename) for ds in (seg, sr)], "seg": seg, "sr": sr,
            "study_uid": str(seg.StudyInstanceUID),
            "swi": [pydicom.dcmread(p, stop_before_pixels=True) for p in source]}


def test_the_microbleed_segmentation_opens_in_ohif_over_the_swi(dist, browser, swi_study, orthanc, viewer, dciodvfy,
                                                               tmp_path):
    from neuroread.node.encode import validate

    seg, sr = swi_study["seg"], swi_study["sr"]
    # one segment per microbleed, each tracked, and the SR's microbleed groups reference exactly them
    numbers = [int(s.SegmentNumber) for s in seg.SegmentSequence]
    assert numbers == list(range(1, len(numbers) + 1)) and numbers
    assert all(str(s.SegmentLabel).startswith("microbleed") for s in seg.SegmentSequence)
    referenced = [(str(i.ReferencedSOPSequence[0].ReferencedSOPInstanceUID),
                   int(i.ReferencedSOPSequence[0].ReferencedSegmentNumber))
                  for i in content_items(sr) if i.ValueType == "IMAGE" and "ReferencedSOPSequence" in i
                  and "ReferencedSegmentNumber" in i.ReferencedSOPSequence[0]]
    assert sorted(referenced) == [(str(seg.SOPInstanceUID), n) for n in numbers]
    assert validate(seg) == [], "dciodvfy finds errors in the Segmentation"

    orthanc.upload(swi_study["files"])
    shots = Shots(browser, tmp_path / "screenshots")
    browser.get(viewer.viewer_url(swi_study["study_uid"]))
    until(lambda: (rows := browser.execute_script(SERIES_LIST)) and ("SEG", str(seg.SeriesDescription)) in
          {tuple(r) for r in rows}, 90, "OHIF's study browser listing the SWI and its Segmentation", shots)
    until(lambda: "(1/" in overlay(browser, "bottom-right"), 60, "the SWI in the viewport", shots)
    open_series(browser, str(seg.SeriesDescription))
    until(lambda: browser.find_element(By.XPATH, '//button[normalize-space()="Yes"]'), 60,
          "OHIF asking to open the segmentation", shots).click()
    browser.find_element(By.CSS_SELECTOR, '[data-cy="panelSegmentation-btn"]').click()
    segments = [str(s.SegmentLabel) for s in seg.SegmentSequence]
    until(lambda: (t := browser.find_element(By.TAG_NAME, "body").text) and all(s in t for s in segments) and t,
          30, f"the segmentation panel listing its {len(segments)} microbleeds", shots)
    pane = browser.find_element(By.CSS_SELECTOR, '[data-cy="viewport-pane"]')
    ActionChains(browser).move_to_element(pane).perform()

    def a_microbleed_drawn() -> str | None:  # a microbleed is a few pixels: look through the slices for one
        for key in [Keys.HOME] + [Keys.ARROW_DOWN] * (len(swi_study["swi"]) - 1):
            ActionChains(browser).send_keys(key).perform()
            time.sleep(0.2)
            stats = browser.execute_script(CANVAS_STATS)
            if stats and stats["colour"] > 0:
                return overlay(browser, "bottom-right")
        return None

    until(a_microbleed_drawn, 120, "a slice of the SWI with a microbleed segment drawn in colour", shots)
    shots("07-microbleed-segmentation")
    failed = [(path, status) for path, status in viewer.requests if status >= 400]
    assert failed == [], f"requests the viewer or Orthanc refused: {failed[:10]}"
