"""Checks shared by the tests that run the whole node: SOP classes of the results, sending with
dcmtk's storescu, waiting, what a result refers to, reading an SR's content items, and the
``neuroread`` command run as a subprocess."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import pydicom
import pytest
from pydicom.uid import (
    Comprehensive3DSRStorage,
    ComprehensiveSRStorage,
    EnhancedSRStorage,
    KeyObjectSelectionDocumentStorage,
    ParametricMapStorage,
    SecondaryCaptureImageStorage,
    SegmentationStorage,
)

from neuroread.node.tools.dcmtk import dcmtk_tool

from . import TESTS

SR = "1.2.840.10008.5.1.4.1.1.88.34"
KO = "1.2.840.10008.5.1.4.1.1.88.59"
SEG = "1.2.840.10008.5.1.4.1.1.66.4"
PM = "1.2.840.10008.5.1.4.1.1.30"
SC = "1.2.840.10008.5.1.4.1.1.7"
TEXT_SR = "1.2.840.10008.5.1.4.1.1.88.22"  # Enhanced SR: the text report
KINDS = {SR, KO, SEG, PM, SC, TEXT_SR}

# The kind of each result object the node writes, by SOP class, as the routing tests count them
# (every SR flavour counts as an SR; node.tools.results_summary calls the Enhanced SR a report).
RESULT_KINDS = {ComprehensiveSRStorage: "SR", Comprehensive3DSRStorage: "SR", EnhancedSRStorage: "SR",
                KeyObjectSelectionDocumentStorage: "KOS", SecondaryCaptureImageStorage: "SC",
                ParametricMapStorage: "PM", SegmentationStorage: "SEG"}


def storescu(port: int, files) -> None:
    proc = subprocess.run([dcmtk_tool("storescu"), "-aet", "STORESCU", "-aec", "NEUROREAD", "127.0.0.1", str(port),
                           *map(str, files)], env={**os.environ, "TCP_NODELAY": "1"},
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


def wait_for(check, timeout: float = 60.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.25)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")


def referenced_uids(ds: pydicom.Dataset) -> set[str]:
    """Every UID value anywhere in ``ds`` (nested sequences included)."""
    out: set[str] = set()
    for elem in ds.iterall():
        if elem.VR == "UI" and elem.value:
            out.update(map(str, elem.value if elem.VM > 1 else [elem.value]))
    return out


def refers_to_source(ds: pydicom.Dataset, info: dict) -> bool:
    refs = referenced_uids(ds)
    return info["series_instance_uid"] in refs or bool(refs & set(info["sop_instance_uids"]))


def delivered_outputs(node, storescp) -> list[pydicom.Dataset] | None:
    """Every output the first job's outbox event lists, read from storescp once all were sent;
    None before. storescp answers a C-STORE once its file is written, so "sent" means whole (a
    file read while storescp still writes it can parse with pixel bytes taken for elements)."""
    jobs = node.store.list()
    outbox = [e for e in node.store.audit_trail(jobs[0].id) if e.event == "outbox"] if jobs else []
    if not outbox or [i.state for i in node.outbox.status(str(jobs[0].id))] != ["sent"] * len(
            outbox[0].detail["outputs"]):
        return None
    return [pydicom.dcmread(p) for p in storescp.files()]


def content_items(ds: pydicom.Dataset):
    """Every SR content item under ``ds``, depth first."""
    for item in ds.get("ContentSequence", []):
        yield item
        yield from content_items(item)


def code_value(item: pydicom.Dataset) -> str:
    """A coded entry's value: its Code Value, or its Long Code Value (values over 16 characters)."""
    return str(item.get("CodeValue") or item.get("LongCodeValue") or item.get("URNCodeValue") or "")


def neuroread(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """``neuroread ARGS`` as a user runs it, with ``tests/`` importable so that a configuration's
    ``plugins`` can name the test models (``support.tiny_model:ENTRY``)."""
    path = os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "-m", "neuroread.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "PYTHONPATH": path})
