"""Poison inputs through the whole node: one odd instance must never stop it, fail a study or leak a value.

Each test runs the real ``neuroread serve`` (:class:`support.node_process.ServeNode`, the tiny test model
registered through ``plugins:``), sends with dcmtk ``storescu`` or pynetdicom, and reads the outcome
where an operator would: the C-STORE statuses, the spool, the quarantine, the job database, the
results delivered, and the node's log.
"""
from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest
import sqlalchemy as sa
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.filewriter import dcmwrite
from pydicom.tag import Tag
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from neuroread.node.app import routing_records
from neuroread.node.malformed import MAX_SEQUENCE_DEPTH
from neuroread.node.receive.dimse import StoreStatus
from support.node_process import (
    REPO,
    ServeNode,
    all_sent,
    copy_series,
    statuses,
    storescu,
    tail,
    uids,
    wait_done,
    wait_for,
)

BIRTH_DATE = "1950-01-12"   # a common non-standard DA (DICOM's is 19500112)
WEIGHT = "heavyish"          # not a DS
TRACEBACK = "Traceback (most recent call last)"


@pytest.fixture(scope="module")
def ct_files(head_ct) -> list[Path]:
    return head_ct[:8]  # fewer slices than the head-CT model takes: only the tiny test model runs


@pytest.fixture(scope="module")
def node(tmp_path_factory, results_scp):
    node = ServeNode(tmp_path_factory.mktemp("poison"), destination_port=results_scp.port)
    node.start()
    yield node
    node.stop()
    print(node.log_tail())


def neuroread(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "neuroread.cli", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=120)


def routing_of(node: ServeNode, series_uid: str) -> dict | None:
    engine = sa.create_engine(node.database)
    try:
        with engine.connect() as conn:
            row = conn.execute(sa.text("SELECT state, reason FROM routing WHERE series_uid = :s"),
                               {"s": series_uid}).mappings().first()
        return dict(row) if row else None
    finally:
        engine.dispose()


# -- 1. a series UID seen before, now under another study ------------------------------------------
def test_series_under_a_second_study_refused_with_reason_then_restart_is_clean(tmp_path, ct_files, results_scp):
    node = ServeNode(tmp_path / "node", destination_port=results_scp.port)
    node.start()
    try:
        first = copy_series(ct_files, tmp_path / "a")
        study_a, series, _ = uids(first)
        assert set(statuses(storescu(node.port, first))) == {StoreStatus.SUCCESS}
        study_b = generate_uid()

        def other_study(ds: pydicom.Dataset) -> None:
            ds.StudyInstanceUID, ds.SeriesInstanceUID = study_b, series

        second = copy_series(ct_files[:4], tmp_path / "b", modify=other_study)
        run = storescu(node.port, second, "-nh")  # go on after a refusal
        assert statuses(run) == [StoreStatus.CANNOT_UNDERSTAND_SERIES_IN_OTHER_STUDY] * 4, tail(run)
        assert "series belongs to another study" in run.stdout + run.stderr
        assert not (node.spool / study_b).exists(), "nothing of the refused instances may be written"
        wait_done(node, series)
        node.stop()
        node.start()  # the restart that used to fail with KeyError
        assert node.echo()
        wait_for(lambda: "spool rescan" in node.log_text(), 30, "the spool rescan", node)
        log = node.log_text()
        assert TRACEBACK not in log and "KeyError" not in log, node.log_tail()
        assert len(node.jobs_for(series)) == 1, "the restart must not make a second job"
    finally:
        node.stop()


# -- 2. a poisoned spool at start -----------------------------------------------------------------------
def _deep_sequence_file(src: Path, out: Path, levels: int) -> Path:
    """``src`` with a Content Sequence nested ``levels`` deep (undefined lengths), written as bytes
    (pydicom's writer would recurse that deep itself)."""
    ds = pydicom.dcmread(src)
    pixels = ds.PixelData
    head = Dataset()
    head.file_meta = ds.file_meta
    for elem in ds:
        if elem.tag < 0x0040A730:
            head.add(elem)
    head.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    with open(out, "wb") as f:
        dcmwrite(f, head, enforce_file_format=True)
    open_sq = struct.pack("<HH2s2xI", 0x0040, 0xA730, b"SQ", 0xFFFFFFFF)
    item = struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF)
    close = struct.pack("<HHI", 0xFFFE, 0xE00D, 0) + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
    nested = (open_sq + item) * levels + close * levels
    pixel = struct.pack("<HH2s2xI", 0x7FE0, 0x0010, b"OW", len(pixels)) + pixels
    with open(out, "ab") as f:
        f.write(nested + pixel)
    return out


def test_poisoned_spool_at_start_is_quarantined_with_reasons_and_the_node_starts(tmp_path, ct_files, results_scp):
    node = ServeNode(tmp_path / "node", destination_port=results_scp.port)
    good = copy_series(ct_files, tmp_path / "good")
    study, series, sops = uids(good)
    for path, sop in zip(good, sops):
        (node.spool / study / series).mkdir(parents=True, exist_ok=True)
        (node.spool / study / series / f"{sop}.dcm").write_bytes(path.read_bytes())
    poison: dict[str, Path] = {}
    # the same series under a second study (spooled by a node without the check)
    other_study = generate_uid()
    (node.spool / other_study / series).mkdir(parents=True)
    stray = copy_series(ct_files[:1], tmp_path / "stray", modify=lambda ds: (
        setattr(ds, "StudyInstanceUID", other_study), setattr(ds, "SeriesInstanceUID", series)))[0]
    poison["conflict"] = node.spool / other_study / series / f"{uids([stray])[2][0]}.dcm"
    poison["conflict"].write_bytes(stray.read_bytes())
    # garbage, a truncated file, sequences nested past the limit, UIDs that do not match the path
    junk_series = node.spool / generate_uid() / generate_uid()
    junk_series.mkdir(parents=True)
    poison["garbage"] = junk_series / f"{generate_uid()}.dcm"
    poison["garbage"].write_bytes(b"not DICOM at all" * 64)
    poison["truncated"] = junk_series / f"{generate_uid()}.dcm"
    poison["truncated"].write_bytes(good[0].read_bytes()[:200])
    deep = _deep_sequence_file(good[1], tmp_path / "deep.dcm", 1000)
    deep_ds = pydicom.dcmread(good[1], stop_before_pixels=True)
    deep_dir = node.spool / str(deep_ds.StudyInstanceUID) / generate_uid()
    deep_dir.mkdir(parents=True)
    poison["deep"] = deep_dir / f"{generate_uid()}.dcm"
    poison["deep"].write_bytes(deep.read_bytes())
    poison["misplaced"] = junk_series / f"{generate_uid()}.dcm"
    poison["misplaced"].write_bytes(good[2].read_bytes())

    node.start()
    try:
        assert node.echo()
        for kind, path in poison.items():
            assert not path.exists(), f"{kind}: still in the spool"
        listing = neuroread("quarantine", "list", "-c", str(node.config_path))
        assert listing.returncode == 0, listing.stderr
        text = listing.stdout
        assert text.count(".dcm") >= len(poison), text
        assert "already belongs to study" in text
        assert "cannot be read" in text
        assert "do not match its place in the spool" in text
        quarantine = node.data / "quarantine"
        kept = sorted(p.name for p in quarantine.rglob("*.dcm"))
        assert sorted(p.name for p in poison.values()) == kept, "every poisoned file is kept, none is lost"
        for path in poison.values():
            moved = next(quarantine.rglob(path.name))
            assert moved.read_bytes(), path
            note = json.loads(moved.with_name(moved.name + ".reason.json").read_text())
            assert note["reason"] and note["origin"].endswith(path.name)
        job = wait_done(node, series)  # the good series still runs, once
        assert all_sent(node, job.id) or wait_for(lambda: all_sent(node, job.id), 60, "results sent", node)
        assert TRACEBACK not in node.log_text(), node.log_tail()
        as_json = json.loads(neuroread("quarantine", "list", "--json", "-c", str(node.config_path)).stdout)
        assert len(as_json) == len(poison) and all(e["reason"] for e in as_json)
    finally:
        node.stop()


# -- 3. tolerant copying, no value in the log -----------------------------------------------------------
def test_non_standard_birth_date_results_made_attribute_left_out_value_nowhere(tmp_path, node, results_scp, ct_files):
    def sloppy(ds: pydicom.Dataset) -> None:
        # as a sloppy sender writes them: raw bytes, never checked (pydicom would refuse the DS)
        for tag, vr, value in ((0x00100030, "DA", BIRTH_DATE), (0x00101030, "DS", WEIGHT)):
            ds._dict[Tag(tag)] = RawDataElement(Tag(tag), vr, len(value), value.encode(), 0, False, True)

    files = copy_series(ct_files, tmp_path / "sloppy", modify=sloppy)
    study, series, _ = uids(files)
    before = len(node.log_text())
    assert set(statuses(storescu(node.port, files))) == {StoreStatus.SUCCESS}
    job = wait_done(node, series)
    items = wait_for(lambda: all_sent(node, job.id), 60, "every result sent", node)
    for item in items:
        ds = pydicom.dcmread(item.path)
        assert ds.StudyInstanceUID == study
        assert "PatientBirthDate" in ds and not ds.PatientBirthDate, "Type 2: present and empty"
        assert "PatientWeight" not in ds, "Type 3: left out"
        assert str(ds.PatientID) == str(pydicom.dcmread(files[0]).PatientID), "valid attributes are still copied"
    assert results_scp.counts(study), "results reached the destination"
    trail = [(e.event, e.detail) for e in _audit(node, job.id)]
    withheld = [d for ev, d in trail if ev == "withheld"]
    assert withheld, trail
    attributes = {a["keyword"]: a for a in withheld[0]["attributes"]}
    assert attributes["PatientBirthDate"]["tag"] == "(0010,0030)" and attributes["PatientBirthDate"]["action"] == "emptied"
    assert attributes["PatientWeight"]["tag"] == "(0010,1030)" and attributes["PatientWeight"]["action"] == "removed"
    log = node.log_text()[before:]
    assert "PatientBirthDate (0010,0030)" in log
    for value in (BIRTH_DATE, WEIGHT):
        assert value not in log, f"{value!r} reached the log"
        assert value not in json.dumps([d for _, d in trail], default=str), f"{value!r} reached the audit trail"
        assert value not in (job.reason or "")
    shown = neuroread("jobs", "show", str(job.id), "-c", str(node.config_path))
    assert shown.returncode == 0 and BIRTH_DATE not in shown.stdout


def _audit(node: ServeNode, job_id: int):
    from neuroread.node.jobs.store import JobStore
    store = JobStore(node.database)
    try:
        return store.audit_trail(job_id)
    finally:
        store.close()


# -- 4. nesting too deep: 0xC000 and one log line --------------------------------------------------------
@pytest.mark.parametrize("levels", [MAX_SEQUENCE_DEPTH + 8, 1000])
def test_sequences_nested_too_deep_answer_cannot_understand_with_one_log_line(tmp_path, node, ct_files, levels):
    base = copy_series(ct_files[:3], tmp_path / "base")
    deep = [_deep_sequence_file(p, tmp_path / f"deep{i}.dcm", levels) for i, p in enumerate(base)]
    before = len(node.log_text())
    run = storescu(node.port, deep, "-nh")  # dcmtk reads and sends them as they are
    assert statuses(run) == [StoreStatus.CANNOT_UNDERSTAND] * 3, tail(run)
    study, _, _ = uids(base)
    assert not (node.spool / study).exists()
    assert node.echo()
    log = node.log_text()[before:]
    assert TRACEBACK not in log and "RecursionError:" not in log
    refusals = [line for line in log.splitlines() if "nested" in line]
    assert len(refusals) == 3, log[-3000:]


# -- 5. routing by agreement ------------------------------------------------------------------------------
def test_one_instance_without_modality_does_not_decide_the_series(tmp_path, node, ct_files):
    files = copy_series(ct_files, tmp_path / "one-odd")
    odd = pydicom.dcmread(files[0])
    del odd.Modality
    odd.SOPInstanceUID = odd.file_meta.MediaStorageSOPInstanceUID = "1.2.3.4.5"  # the lowest SOP Instance UID
    odd.save_as(files[0], enforce_file_format=True)
    _, series, _ = uids(files)
    assert set(statuses(storescu(node.port, files))) == {StoreStatus.SUCCESS}
    job = wait_done(node, series)
    assert len(job.instances["ct"]) == len(files)
    assert routing_of(node, series)["state"] == "routed"
    (withheld,) = [e.detail for e in _audit(node, job.id) if e.event == "withheld"]
    assert {"keyword": "Modality", "tag": "(0008,0060)", "action": "filled from the series",
            "problem": f"missing or empty in 1 of {len(files)} instances"} in withheld["attributes"]


def test_instances_disagreeing_on_modality_recorded_unrouted_with_that_reason(tmp_path, node, ct_files):
    files = copy_series(ct_files, tmp_path / "mixed")
    for f in files[: len(files) // 2]:
        ds = pydicom.dcmread(f)
        ds.Modality = "MR"
        ds.save_as(f, enforce_file_format=True)
    _, series, _ = uids(files)
    assert set(statuses(storescu(node.port, files))) == {StoreStatus.SUCCESS}
    record = wait_for(lambda: routing_of(node, series), 60, "the routing record", node)
    assert record["state"] == "unrouted"
    assert "disagree on Modality" in record["reason"] and "CT ×" in record["reason"] and "MR ×" in record["reason"]
    assert not node.jobs_for(series)
    engine = sa.create_engine(node.database)
    try:
        unrouted, _ = routing_records(engine)
    finally:
        engine.dispose()
    assert series in {r["series_uid"] for r in unrouted}
