"""The status page in a real browser: Debian's headless Chromium (selenium) shows the job counts
of a real job store and loads the thumbnails of the Secondary Capture results.

The state is :mod:`support.status_state`'s. A screenshot goes to the test's tmp folder and, when
``NEUROREAD_SCREENSHOTS`` names a folder, there too.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from selenium.webdriver.common.by import By

from neuroread.node.config import StatusConfig
from neuroread.node.status import StatusServer
from support.ohif import headless_chromium
from support.status_state import REASON, StatusState

pytestmark = pytest.mark.slow


def test_chromium_shows_the_counts_and_loads_the_thumbnails(tmp_path):
    state = StatusState(tmp_path / "node")
    state.finish()
    server = StatusServer(StatusConfig(port=0), state.store.engine, outbox_folder=state.outbox_folder,
                          node_name="NEUROREAD", clock=state.clock)
    server.start()
    browser = headless_chromium(1400, 1600)
    try:
        browser.get(server.url)
        cell = browser.find_element(By.CSS_SELECTOR, 'td[data-model="tiny"][data-state="done"]')
        assert cell.text == "3"
        assert browser.find_element(By.CSS_SELECTOR, 'td[data-model="other"][data-state="running"]').text == "1"
        assert browser.find_element(By.CSS_SELECTOR, "#queue-depth b").text == "1"
        assert REASON in browser.find_element(By.ID, "failures").text
        pictures = browser.find_elements(By.CSS_SELECTOR, "img.thumb")
        assert len(pictures) == 4  # jobs 1 (two SCs), 2 and 3
        widths = browser.execute_script(
            "return Array.from(document.querySelectorAll('img.thumb'), i => i.complete ? i.naturalWidth : -1)")
        assert widths == [96] * 4, widths
        shot = tmp_path / "status-page.png"
        browser.save_screenshot(str(shot))
        if os.environ.get("NEUROREAD_SCREENSHOTS"):
            folder = Path(os.environ["NEUROREAD_SCREENSHOTS"])
            folder.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(shot, folder / shot.name)
        errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
        assert errors == [], errors  # no image failed, nothing the page's security policy blocked
    finally:
        browser.quit()
        server.stop()
        state.close()
