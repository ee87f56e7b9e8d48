"""The whole node against real peers: dcmtk storescu sends a phantom CT, dcmtk storescp receives
the results, dciodvfy checks them; plus unusable series, a restart mid-job, and run_files."""
from __future__ import annotations

import shutil
import time
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid

from neuroread.models import ModelRegistry
from neuroread.node.app import make_catalog
from neuroread.node.app.node import Node
from neuroread.node.app.offline import run_files
from neuroread.node.assemble.assembler import CompleteSeries
from neuroread.node.config import parse_config
from neuroread.node.encode import validate
from neuroread.node.jobs.store import JobStore
from neuroread.node.spool.store import Spool
from neuroread.node.tools.dcmtk import DcmtkMissing, dcmtk_tool
from neuroread.training.phantoms.baseline import load_truth
from support.node_checks import KINDS, SC, SR, delivered_outputs, referenced_uids, refers_to_source, storescu, wait_for
from support.peers import StoreSCP
from support.tiny_model import ENTRY

REGISTRY = ModelRegistry([ENTRY])


@pytest.fixture(scope="module", autouse=True)
def _tools():
    try:
        dcmtk_tool("storescp"), dcmtk_tool("storescu")  # dcmtk's, even with the environment activated
    except DcmtkMissing as exc:
        pytest.fail(str(exc))
    if shutil.which("dciodvfy") is None:
        pytest.fail("dciodvfy is required (Debian package dicom3tools)")


@pytest.fixture(scope="module")
def ct(phantom_sets) -> tuple[Path, dict]:
    """The first phantom CT series: its folder and its truth entry."""
    study = sorted(p.parent for p in phantom_sets["ct-hemorrhage"].glob("*/truth.json"))[0]
    info = load_truth(study)["series"]["ct"]
    return study / info["folder"], info


@pytest.fixture
def storescp(tmp_path):
    scp = StoreSCP(tmp_path / "storescp")
    yield scp
    scp.stop()


def make_config(tmp_path: Path, destinations: dict, routes: tuple = ()):
    return parse_config({
        "node": {"ae_title": "NEUROREAD"},
        "storage": {"root": str(tmp_path / "node")},
        "assemble": {"stable_age_s": 1},
        "routes": list(routes),
        "destinations": destinations,
    }, tmp_path)


def copy_series(src: list[Path], out: Path, *, modality: str | None = None) -> tuple[str, list[Path]]:
    """A copy of ``src`` as a new series (new series and instance UIDs); optionally another modality."""
    out.mkdir(parents=True)
    series_uid = generate_uid()
    paths = []
    for i, path in enumerate(src):
        ds = pydicom.dcmread(path)
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        if modality == "MR":
            ds.Modality = "MR"
            ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
        paths.append(out / f"{i}.dcm")
        ds.save_as(paths[-1], enforce_file_format=True)
    return series_uid, paths


def test_node_end_to_end_results_valid_and_idempotent(tmp_path, ct, storescp):
    folder, info = ct
    files = sorted(folder.glob("*.dcm"))
    study_uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    config = make_config(tmp_path, {"pacs": {"type": "dicom", "host": "127.0.0.1", "port": storescp.port,
                                             "called_ae": "STORESCP"}})
    with Node(config, REGISTRY, port=0, tick_s=0.2, deliver_interval_s=0.5) as node:
        assert node.port > 0
        storescu(node.port, files)

        received = wait_for(lambda: delivered_outputs(node, storescp), 60, "every output of the job at storescp")
        assert {str(ds.SOPClassUID) for ds in received} >= KINDS
        for ds in received:
            assert validate(ds) == [], ds.SOPClassUID.name
            assert str(ds.StudyInstanceUID) == study_uid
        # SR, KO, SEG, PM reference the source series; the key-slice SCs their slices (the report page need not)
        for ds in received:
            if ds.SOPClassUID != SC:
                assert refers_to_source(ds, info), ds.SOPClassUID.name
        assert sum(refers_to_source(ds, info) for ds in received if ds.SOPClassUID == SC) >= 1
        assert any(info["series_instance_uid"] in referenced_uids(ds) for ds in received if ds.SOPClassUID == SR)

        jobs = node.store.list()
        assert [(j.model, j.state) for j in jobs] == [("tiny-test", "done")]
        assert node.routing(info["series_instance_uid"])["state"] == "routed"
        trail = node.store.audit_trail(jobs[0].id)
        outbox = [e for e in trail if e.event == "outbox"]
        assert len(outbox) == 1
        detail = outbox[0].detail
        assert detail["inputs"]["ct"]["series"] == info["series_instance_uid"]
        assert detail["destinations"] == ["pacs"] and len(detail["weights_sha256"]) == 64
        assert sorted(detail["outputs"]) == sorted(str(ds.SOPInstanceUID) for ds in received)

        # the same study again: no new job, no new objects
        count = len(storescp.files())
        storescu(node.port, files)
        time.sleep(3.0)  # quiet period 1 s + ticks + a delivery round
        assert len(storescp.files()) == count
        assert len(node.store.list()) == 1
        # even if the series is reported complete again (a later generation), the job is the same one
        spooled = {uid: node.spool.path_for(study_uid, info["series_instance_uid"], uid) for uid in info["sop_instance_uids"]}
        again = node.route_series(CompleteSeries(study_uid, info["series_instance_uid"], spooled, 2, "quiet"))
        assert [(j.id, j.state) for j in again] == [(jobs[0].id, "done")]
        time.sleep(1.0)
        assert len(storescp.files()) == count


def test_unusable_series_recorded_with_reason(tmp_path, ct, storescp):
    folder, _ = ct
    files = sorted(folder.glob("*.dcm"))
    two_uid, two = copy_series(files[:2], tmp_path / "two")                 # min_slices is 3
    mr_uid, mr = copy_series(files[:4], tmp_path / "mr", modality="MR")     # no route takes MR
    gap_uid, gap = copy_series(files[:3] + files[4:6], tmp_path / "gap")   # a missing slice
    ok_uid, ok = copy_series(files[:4], tmp_path / "ok")                     # fine, but its results "invalid"
    fake = tmp_path / "bin" / "dciodvfy"  # a validator that reports an error for every object
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\necho 'Error - Missing attribute Type 1 Required Element=Foo'\n")
    fake.chmod(0o755)
    config = make_config(tmp_path, {"pacs": {"type": "dicom", "host": "127.0.0.1", "port": storescp.port,
                                             "called_ae": "STORESCP"}})
    node = Node(config, REGISTRY, port=0, tick_s=0.2)
    node.dciodvfy = str(fake)
    with node:
        storescu(node.port, two + mr + gap + ok)
        wait_for(lambda: all(node.routing(u) for u in (two_uid, mr_uid)), 30, "unrouted series recorded")
        two_rec, mr_rec = node.routing(two_uid), node.routing(mr_uid)
        assert two_rec["state"] == "unrouted" and "slices" in two_rec["reason"] and "3" in two_rec["reason"]
        assert mr_rec["state"] == "unrouted" and "MR" in mr_rec["reason"]
        assert node.store.series(two_uid)["state"] == "unrouted"
        failed = wait_for(lambda: (lambda f: f if len(f) == 2 else None)(node.store.list("failed")), 40,
                          "the gap and the invalid-result jobs failing")
        by_series = {j.inputs["ct"]: j for j in failed}
        assert set(by_series) == {gap_uid, ok_uid}
        gap_job, ok_job = by_series[gap_uid], by_series[ok_uid]
        assert "missing" in gap_job.reason or "gap" in gap_job.reason, gap_job.reason
        assert "dciodvfy" in ok_job.reason and "Type 1" in ok_job.reason, ok_job.reason
        assert gap_job.attempts == ok_job.attempts == 1  # not retryable: a retry would not fix it
        assert node.outbox.status(str(ok_job.id)) == []  # nothing queued for sending
        # nothing lost: the inputs stay in the spool; nothing sent
        assert all(node.spool.path_for(str(pydicom.dcmread(p).StudyInstanceUID), gap_uid,
                                       str(pydicom.dcmread(p).SOPInstanceUID)).exists() for p in gap)
    assert storescp.files() == []


def test_restart_finishes_job_of_killed_node(tmp_path, ct):
    """A job left running by a dead node (lease still valid) is finished by the next start."""
    folder, info = ct
    out = tmp_path / "results"
    config = make_config(tmp_path, {"archive": {"type": "folder", "path": str(out)}})
    spool = Spool(config.storage.spool, fsync=False)
    for path in sorted(folder.glob("*.dcm")):
        ds = pydicom.dcmread(path)
        spool.store(path.read_bytes(), study_uid=ds.StudyInstanceUID, series_uid=ds.SeriesInstanceUID,
                    sop_instance_uid=ds.SOPInstanceUID, sop_class_uid=ds.SOPClassUID,
                    transfer_syntax_uid=ds.file_meta.TransferSyntaxUID)
    store = JobStore(config.queue.database)
    # as the dead node enqueued it: keyed by the weights and thresholds it runs with
    identity = make_catalog(config, REGISTRY).identity("tiny-test")
    job = store.enqueue("tiny-test", "0.1.0", {"ct": info["series_instance_uid"]}, {"ct": info["sop_instance_uids"]},
                        identity=identity)
    assert store.claim("dead-node", lease_s=600).id == job.id
    store.close()
    with Node(config, REGISTRY, port=0, tick_s=0.2, deliver_interval_s=0.5) as node:
        wait_for(lambda: node.store.get(job.id).state == "done", 60, "the recovered job done")
        written = wait_for(lambda: sorted(out.rglob("*.dcm")) if len(list(out.rglob("*.dcm"))) >= 5 else None,
                           30, "results in the folder destination")
        events = [e.event for e in node.store.audit_trail(job.id)]
        assert "recovered" in events and events[-1] in ("done", "outbox")
        assert len(node.store.list()) == 1  # the rescanned series found the same job
    assert {str(pydicom.dcmread(p, stop_before_pixels=True).SOPClassUID) for p in written} == KINDS


def test_run_files_writes_results(tmp_path, ct):
    folder, info = ct
    config = make_config(tmp_path, {})
    written = run_files([folder], tmp_path / "out", config, REGISTRY)
    assert written and all(p.is_file() and p.is_relative_to(tmp_path / "out") for p in written)
    datasets = [pydicom.dcmread(p) for p in written]
    assert {str(ds.SOPClassUID) for ds in datasets} == KINDS
    assert all(refers_to_source(ds, info) for ds in datasets if ds.SOPClassUID != SC)
    again = run_files([folder], tmp_path / "out", config, REGISTRY)
    assert sorted(again) == sorted(written)  # deterministic UIDs: same files


def test_a_series_whose_header_cannot_be_read_is_recorded_not_fatal(tmp_path):
    """route_series on a vanished file records the series unrouted with the reason."""
    config = parse_config({"storage": {"root": str(tmp_path / "data")}}, tmp_path)
    node = Node(config, ModelRegistry([ENTRY]), port=0)
    try:
        gone = CompleteSeries(study_uid="1.2.3", series_uid="1.2.3.4", instances={"1.2.3.4.5": tmp_path / "gone.dcm"},
                              generation=1, reason="quiet")
        assert node.route_series(gone) == []
        record = node.routing("1.2.3.4")
        assert record["state"] == "unrouted" and "cannot route" in record["reason"]
    finally:
        node.store.close()
