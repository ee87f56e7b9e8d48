"""The results open in a real viewer: OHIF's prebuilt viewer (npm ``@ohif/app``, fetched by
``.ci/ohif``) in Debian's headless Chromium, served against a real Orthanc's DICOMweb.

The head-CT model (tiny DrCT2 weights trained here, or the checkpoint named by
``NEUROREAD_VIEWER_WEIGHTS``) processes a phantom head CT with ``neuroread.node.app.offline.run_files``; the
source series, its SR, KOS, Secondary Captures (key-slice overlays and the report page) and
Parametric Map, and the Segmentation the tiny test model makes of the same series, go into
Orthanc. The browser then opens OHIF's basic viewer on the study and checks what a reader sees:

* every series in the study browser, under its own description;
* the report page (a Secondary Capture) drawn in the viewport, in colour;
* the SR's findings and probabilities. OHIF 3.13's SR viewport draws only measurements with
  spatial coordinates (for a TID 1500 report it shows the referenced image with the
  annotations); findings without coordinates, such as ours, it parses and leaves undrawn. Its
  DICOM Tag Browser shows every content item, so the findings are looked up there;
* the Segmentation in OHIF's segmentation panel, with its segment, and drawn on the CT;
* the Parametric Map as a colour overlay on the CT (OHIF's PMAP viewport).

OHIF lists the KOS but marks it "SOP Class UID is not supported" (it has no KOS handler).

Screenshots of each step go to the test's tmp folder and, when ``NEUROREAD_SCREENSHOTS`` names a
folder, there too.
"""
from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pydicom
import pytest
from pydicom.sr.codedict import codes
from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
from selenium.webdriver import ActionChains, Chrome
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys

from neuroread.models import ModelRegistry, default_registry
from neuroread.node.app.offline import run_files
from neuroread.node.config import parse_config
from neuroread.training.phantoms.baseline import load_truth
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
# A React-controlled input takes a new value through the native setter and an input event.
SET_INPUT = """
Object.getOwnPropertyDescriptor(HTMLInputElement.prototype, 'value').set.call(arguments[0], arguments[1]);
arguments[0].dispatchEvent(new Event('input', {bubbles: true}));
"""
TOOLTIPS = "return [...document.querySelectorAll('[role=tooltip]')].map(e => e.innerText);"


# -- data -------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def checkpoint(request) -> Path:
    """The ct-hemorrhage weights: ``$NEUROREAD_VIEWER_WEIGHTS`` (e.g. the demo checkpoint, for
    the README's screenshot) or the tiny checkpoint trained on the session's phantoms."""
    given = os.environ.get(WEIGHTS_ENV)
    if given:
        if not Path(given).is_file():
            pytest.fail(f"{WEIGHTS_ENV}={given}: no such checkpoint")
        return Path(given)
    return request.getfixturevalue("weights")


@pytest.fixture(scope="module")
def study(phantom_sets, checkpoint, tmp_path_factory) -> dict:
    """A phantom head CT with hemorrhage and its results: ``files`` (source and results, to
    upload), ``study_uid``, ``ct`` (source datasets) and ``by_kind`` (result datasets by SR, KO,
    SC, PM, SEG)."""
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
    kinds = {"SR": "SR", "KO": "KO", "SEG": "SEG"}
    by_kind: dict[str, list[pydicom.Dataset]] = {}
    for p in product + segs:
        ds = pydicom.dcmread(p)
        kind = kinds.get(ds.Modality) or ("PM" if ds.SOPClassUID.name == "Parametric Map Storage" else "SC")
        by_kind.setdefault(kind, []).append(ds)
    assert sorted((k, len(v)) for k, v in by_kind.items()) == [("KO", 1), ("PM", 1), ("SC", 6), ("SEG", 1),
                                                                ("SR", 1)]
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


def sr_findings(sr: pydicom.Dataset) -> list[tuple[str, str]]:
    """(finding's code meaning, its probability as written) of each measurement group of ``sr``
    that holds a Finding."""
    found = []
    for group in sr.ContentSequence:
        for item in group.get("ContentSequence", []) if group.ValueType == "CONTAINER" else []:
            children = list(item.get("ContentSequence", []))
            finding = [c for c in children if c.ValueType == "CODE"
                       and c.ConceptNameCodeSequence[0].CodeValue == codes.DCM.Finding.value]
            numbers = [c for c in children if c.ValueType == "NUM"]
            if finding and numbers:
                found.append((str(finding[0].ConceptCodeSequence[0].CodeMeaning),
                              str(numbers[0].MeasuredValueSequence[0].NumericValue)))
    return found


def search_tags(driver: Chrome, text: str) -> None:
    """Type ``text`` into the Tag Browser's search box at once (key by key, React would filter
    the whole list on every key)."""
    box = driver.find_element(By.CSS_SELECTOR, 'input[placeholder="Search metadata"]')
    driver.execute_script(SET_INPUT, box, text)


def tag_rows(driver: Chrome) -> list[str]:
    """The rows the DICOM Tag Browser shows now (it renders only the visible part of the list)."""
    return driver.execute_script(
        "return [...document.querySelectorAll('.dicom-tag-browser-content .flex-row.items-center')]"
        ".map(e => e.innerText.replace(/\\s+/g, ' '));")


# -- the test ---------------------------------------------------------------------------------------

def test_the_results_open_in_ohif(dist, browser, study, orthanc, viewer, tmp_path):
    started = time.monotonic()
    orthanc.upload(study["files"])
    shots = Shots(browser, tmp_path / "screenshots")
    by_kind = study["by_kind"]
    sr, = by_kind["SR"]
    ko, = by_kind["KO"]
    pm, = by_kind["PM"]
    seg, = by_kind["SEG"]
    pictures = sorted(by_kind["SC"], key=lambda ds: int(ds.InstanceNumber))
    page = next(ds for ds in pictures if "report page" in str(ds.DerivationDescription))

    browser.get(viewer.viewer_url(study["study_uid"]))
    expected = {(study["ct"][0].Modality, str(study["ct"][0].SeriesDescription)),
                ("SR", str(sr.SeriesDescription)), ("KO", str(ko.SeriesDescription)),
                ("OT", str(page.SeriesDescription)), ("PMAP", str(pm.SeriesDescription)),
                ("SEG", str(seg.SeriesDescription))}
    listed = until(lambda: (rows := browser.execute_script(SERIES_LIST)) and {tuple(r) for r in rows} >= expected
                   and rows, 90, f"OHIF's study browser listing {sorted(expected)}", shots)
    assert sorted(map(tuple, listed)) == sorted(expected)  # one entry per series, nothing else
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

    # The SR's findings: the SR viewport draws nothing for findings without coordinates (see
    # the module docstring); the DICOM Tag Browser shows each content item.
    open_series(browser, str(sr.SeriesDescription))
    browser.find_element(By.CSS_SELECTOR, '[data-cy="MoreTools-split-button-secondary"]').click()
    until(lambda: browser.find_element(By.XPATH, '//*[text()="DICOM Tag Browser"]'), 10, "the More Tools menu",
          shots).click()
    select = until(lambda: browser.find_element(By.CSS_SELECTOR, '[data-cy="dicom-tag-series-select-trigger"]'),
                   15, "the DICOM Tag Browser", shots)
    if str(sr.SeriesDescription) not in select.text:
        select.click()
        until(lambda: [o for o in browser.find_elements(By.CSS_SELECTOR, '[role="option"]')
                       if f"(SR): {sr.SeriesDescription}" in o.text], 10, "the SR in the series menu", shots)[0].click()
    until(lambda: f"(SR): {sr.SeriesDescription}" in select.text, 10, "the SR selected in the Tag Browser", shots)
    findings = sr_findings(sr)
    assert len(findings) == 6, findings  # RSNA's six labels
    for meaning, probability in findings:
        search_tags(browser, meaning)
        until(lambda: any(f"CodeMeaning {meaning}" in r for r in tag_rows(browser)), 10,
              f"the finding {meaning!r} in the Tag Browser", shots)
        search_tags(browser, probability)
        until(lambda: any(f"NumericValue {probability}" in r for r in tag_rows(browser)), 10,
              f"the probability {probability} of {meaning!r} in the Tag Browser", shots)
    search_tags(browser, findings[0][0])
    time.sleep(0.5)
    shots("03-sr-findings")
    ActionChains(browser).send_keys(Keys.ESCAPE).perform()
    until(lambda: not browser.find_elements(By.CSS_SELECTOR, '[data-cy="dicom-tag-series-select-trigger"]'), 10,
          "the Tag Browser closed", shots)

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
    shots("04-segmentation")

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
    shots("05-parametric-map")

    failed = [(path, status) for path, status in viewer.requests if status >= 400]
    assert failed == [], f"requests the viewer or Orthanc refused: {failed[:10]}"
    print(f"viewer checks: {time.monotonic() - started:.1f} s")
