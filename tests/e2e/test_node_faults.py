"""Faults through the whole node process: ``neuroread serve`` in a subprocess, real peers.

Each test starts the real command (``python -m neuroread.cli serve -c <yaml>``, the tiny test model
registered through ``plugins:``), sends phantom CT series with dcmtk ``storescu`` and reads the
outcome where an operator would: the C-STORE statuses the sender saw, the spool on disk, the
job database (:class:`neuroread.node.jobs.store.JobStore`), the outbox, and what arrived at the destination.
The destination is :class:`ResultSCP`, a pynetdicom storage SCP that counts every C-STORE it
receives: result UIDs are deterministic, so a second delivery would overwrite a file without a
trace; counting receptions shows it.

One node process (``shared``) serves the faults that need no special set-up (undecodable
pixel data, refused peers and data sets, a study sent twice); a kill -9, a destination that is
down and a full spool each get their own. The node's log (stdout and stderr) goes to
``serve-N.log`` beside its data and is printed when a test fails. The process, the peers and
the helpers are in ``tests/support/node_process.py``, shared with the fuzz and crash tests.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable

import pydicom
import pytest
from pydicom.encaps import encapsulate
from pydicom.uid import JPEG2000Lossless
from pynetdicom import AE
from pynetdicom import _config as pynetdicom_config
from pynetdicom.sop_class import CTImageStorage

from neuroread.node.deliver import OutboxItem
from neuroread.node.receive.dimse import StoreStatus
from neuroread.node.spool.store import TEMP_PREFIX
from support.node_process import (
    AET,
    SCU_AET,
    ResultSCP,
    ServeNode,
    all_sent,
    assert_spool_complete,
    copy_series,
    dcmtk_tool,
    statuses,
    storescu,
    tail,
    uids,
    wait_done,
    wait_for,
)
from support.tiny_model import HOLD_ENV

# A storage SOP class the node does not accept: retired Ultrasound Image Storage. (storescu
# refuses to propose a private class it does not know, so the node would never be asked.)
UNACCEPTED_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.6"


@pytest.fixture(scope="module", autouse=True)
def _tools():
    dcmtk_tool("storescu"), dcmtk_tool("echoscu")  # each fails the test with what to install
    if shutil.which("dciodvfy") is None:
        pytest.fail("dciodvfy required (Debian package dicom3tools)")


@pytest.fixture
def serve(tmp_path):
    """A factory of :class:`ServeNode` (not started); every node is stopped at teardown."""
    nodes: list[ServeNode] = []

    def make(**kwargs: Any) -> ServeNode:
        nodes.append(ServeNode(tmp_path / f"node{len(nodes)}", **kwargs))
        return nodes[-1]

    yield make
    for node in nodes:
        node.stop()
        print(node.log_tail())  # shown by pytest when the test failed


@pytest.fixture(scope="module")
def ct_files(head_ct) -> list[Path]:
    return head_ct


@pytest.fixture(scope="module")
def _shared_node(tmp_path_factory, results_scp):
    node = ServeNode(tmp_path_factory.mktemp("shared"), destination_port=results_scp.port, peers=[SCU_AET])
    node.start()
    yield node
    node.stop()


@pytest.fixture
def shared(_shared_node):
    """One node for the faults that need no set-up of their own; only SCU_AET may associate.
    Its log lines written during the test are printed (shown by pytest when the test failed)."""
    before = len(_shared_node.log_text())
    yield _shared_node
    print(_shared_node.log_text()[before:][-20_000:])


# -- 1. kill -9 during inference ----------------------------------------------------------------
@pytest.mark.slow
def test_kill_9_during_inference_then_restart_delivers_each_result_once(tmp_path, serve, ct_files):
    scp = ResultSCP().start()
    try:
        hold = tmp_path / "hold"
        hold.touch()
        running = hold.with_name(hold.name + ".running")
        node = serve(destination_port=scp.port, env={HOLD_ENV: str(hold)}).start()
        sent = copy_series(ct_files[:8], tmp_path / "series")
        _, series, _ = uids(sent)
        run = storescu(node.port, sent)
        assert run.returncode == 0 and statuses(run) == [StoreStatus.SUCCESS] * 8, tail(run)
        wait_for(running.exists, 60, "the tiny model holding inside predict", node)
        assert running.read_text() == series

        node.kill9()
        [job] = node.jobs_for(series)
        assert (job.state, job.attempts) == ("running", 1)
        assert not node.outbox(job.id) and not scp.received

        hold.unlink()
        node.start()
        job = wait_done(node, series)
        outputs = job.outputs["sop_instance_uids"]
        assert len(outputs) >= 5 and len(set(outputs)) == len(outputs)  # SR, KO, SEG, PM, SC…
        wait_for(lambda: set(scp.counts()) >= set(outputs), 30, "every result at the destination", node)
        items = wait_for(lambda: all_sent(node, job.id), 30, "every outbox row sent", node)

        assert job.attempts == 2
        events = node.audit_events(job.id)
        assert events.count("recovered") == 1 and events.count("done") == 1 and events.count("outbox") == 1, events
        assert [j.id for j in node.jobs()] == [job.id]  # the rescanned series found the same job
        assert sorted(i.sop_instance_uid for i in items) == sorted(outputs)
        assert scp.counts() == Counter({uid: 1 for uid in outputs})  # each result received exactly once
        assert_spool_complete(node, sent)
        assert not list(node.spool.rglob(f"{TEMP_PREFIX}*"))
        assert node.stop() == 0
    finally:
        scp.stop()


# -- 2. destination down, then up ---------------------------------------------------------------
def test_destination_down_then_up_every_result_arrives_once(tmp_path, serve, ct_files):
    """The outbox keeps the results while the destination is down and sends each once it is up
    (first retry after ``deliver.retry_base_s``, 2 s here)."""
    scp = ResultSCP()  # not listening yet
    node = serve(destination_port=scp.port).start()
    sent = copy_series(ct_files[:8], tmp_path / "series")
    _, series, _ = uids(sent)
    assert storescu(node.port, sent).returncode == 0
    job = wait_done(node, series)
    outputs = job.outputs["sop_instance_uids"]

    def retrying() -> list[OutboxItem] | None:
        items = node.outbox(job.id)
        return items if len(items) == len(outputs) and all(i.state == "retrying" for i in items) else None

    items = wait_for(retrying, 30, "the outbox rows retrying after a refused connection", node)
    assert sorted(i.sop_instance_uid for i in items) == sorted(outputs)
    assert all(i.attempts == 1 and "cannot connect" in i.last_error for i in items), items[0]
    assert all(i.path.is_file() and pydicom.dcmread(i.path).SOPInstanceUID == i.sop_instance_uid for i in items)

    scp.start()
    try:
        due = max(i.next_attempt_at for i in items) - time.time()
        wait_for(lambda: all_sent(node, job.id), due + 5 + 15, "the outbox delivering after the back-off", node)
        time.sleep(0.5)  # a stray second association would land now
        assert scp.counts() == Counter({uid: 1 for uid in outputs})
        assert all(i.attempts == 2 for i in node.outbox(job.id))
    finally:
        scp.stop()


# -- 3. spool disk full -------------------------------------------------------------------------
@pytest.fixture
def small_spool(tmp_path):
    """A 256 KiB tmpfs (about 7 of the phantom's 34 KB slices) as the node's spool."""
    mnt = tmp_path / "tmpfs-spool"
    mnt.mkdir()
    run = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)],
                         capture_output=True, text=True)
    if run.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs for the spool (needs root or CAP_SYS_ADMIN): {run.stderr.strip()}")
    yield mnt
    subprocess.run(["umount", str(mnt)], check=True, capture_output=True)


def test_spool_full_out_of_resources_no_partial_file_resend_after_space_freed(tmp_path, small_spool, serve, ct_files):
    node = serve(destination_port=None, spool=small_spool).start()
    sent = copy_series(ct_files, tmp_path / "series")
    _, _, sops = uids(sent)
    assert sum(p.stat().st_size for p in sent) > 3 * 256 * 1024

    run = storescu(node.port, sent, "--no-halt")  # go on after a failed C-STORE
    got = statuses(run)
    assert len(got) == len(sent), tail(run)
    stored = [s for s in got if s == StoreStatus.SUCCESS]
    refused = [s for s in got if s != StoreStatus.SUCCESS]
    assert 0 < len(stored) < len(sent) // 2 and refused, got
    assert set(refused) == {StoreStatus.OUT_OF_RESOURCES}, [hex(s) for s in refused]  # 0xA700

    def settled() -> list[Path] | None:  # no temporary file: instance files only
        files = [p for p in small_spool.rglob("*") if p.is_file()]
        return files if all(p.suffix == ".dcm" and not p.name.startswith(TEMP_PREFIX) for p in files) else None

    files = wait_for(settled, 15, "the spool holding complete instance files only", node)
    assert sorted(p.stem for p in files) == sorted(sop for sop, s in zip(sops, got) if s == StoreStatus.SUCCESS)
    for path in files:  # each whole: parses, pixel data of the declared size, equal to the sent slice
        ds = pydicom.dcmread(path)
        assert len(ds.PixelData) == ds.Rows * ds.Columns * ds.BitsAllocated // 8
        assert ds.PixelData == pydicom.dcmread(sent[sops.index(path.stem)]).PixelData
    assert "spool full" in node.log_text()
    assert node.echo() and node.proc.poll() is None

    subprocess.run(["mount", "-o", "remount,size=8m", str(small_spool)], check=True, capture_output=True)
    again = storescu(node.port, sent, "--no-halt")
    assert again.returncode == 0 and statuses(again) == [StoreStatus.SUCCESS] * len(sent), tail(again)
    assert_spool_complete(node, sent)
    assert node.stop() == 0


# -- 4. pixel data that cannot be decoded -------------------------------------------------------
def test_undecodable_pixel_data_job_failed_with_reason_inputs_kept_nothing_sent(tmp_path, shared, results_scp, ct_files):
    def garbage_jpeg2000(ds: pydicom.Dataset) -> None:
        ds.file_meta.TransferSyntaxUID = JPEG2000Lossless
        ds.PixelData = encapsulate([b"\xff\x4f\xff\x51" + os.urandom(2000)])  # SOC, SIZ, then noise
        ds["PixelData"].VR = "OB"

    sent = copy_series(ct_files[:4], tmp_path / "j2k", modify=garbage_jpeg2000)
    study, series, _ = uids(sent)
    run = storescu(shared.port, sent, "--propose-j2k-lossless", "--required")  # as it is
    assert run.returncode == 0 and statuses(run) == [StoreStatus.SUCCESS] * 4, tail(run)
    assert "JPEG 2000" in run.stdout + run.stderr  # sent as it is, not transcoded

    job = wait_done(shared, series, state="failed")
    assert job.attempts == 1  # not retried: the same bytes would fail again
    assert "cannot decode" in job.reason and "JPEG 2000" in job.reason and JPEG2000Lossless in job.reason, job.reason
    assert "not valid for it (corrupt or truncated)" in job.reason, job.reason  # the decoder is there
    assert series in job.reason
    assert_spool_complete(shared, sent)  # nothing lost: the instances stay for an operator
    assert shared.outbox(job.id) == []
    assert not results_scp.counts(study)


# -- 5. refused peers and data sets -------------------------------------------------------------
def _path_uid(uid: str) -> Callable[[pydicom.Dataset], None]:
    def modify(ds: pydicom.Dataset) -> None:
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = uid
    return modify


def _unaccepted_class(ds: pydicom.Dataset) -> None:
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = UNACCEPTED_SOP_CLASS


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")  # pydicom warns: that is the point
@pytest.mark.parametrize("fault", ["peer-not-allowed", "uid-dotdot", "uid-slash-dotdot", "truncated",
                                   "unknown-sop-class"])
def test_refused_peer_or_data_set_nothing_spooled_node_keeps_running(tmp_path, shared, ct_files, fault, monkeypatch):
    modify = {"uid-dotdot": _path_uid("../../x"), "uid-slash-dotdot": _path_uid("1.2.3/../../x"),
              "unknown-sop-class": _unaccepted_class}.get(fault)
    sent = copy_series(ct_files[:1], tmp_path / "one", modify=modify)
    study = str(pydicom.dcmread(sent[0], stop_before_pixels=True).StudyInstanceUID)
    log_before = len(shared.log_text())

    if fault == "truncated":
        # storescu will not send a file it cannot read, so pynetdicom sends the raw bytes: the
        # data set cut in the middle of its pixel data (UIDs readable, pixels not).
        monkeypatch.setattr(pynetdicom_config, "STORE_SEND_CHUNKED_DATASET", True)
        data = sent[0].read_bytes()
        sent[0].write_bytes(data[: len(data) - 10_000])
        ae = AE(ae_title=SCU_AET)
        ae.add_requested_context(CTImageStorage, pydicom.dcmread(sent[0], stop_before_pixels=True).file_meta.TransferSyntaxUID)
        assoc = ae.associate("127.0.0.1", shared.port, ae_title=AET)
        assert assoc.is_established
        try:
            rsp = assoc.send_c_store(sent[0])
        finally:
            assoc.release()
        assert rsp.Status == StoreStatus.CANNOT_UNDERSTAND and "truncated" in rsp.ErrorComment
    else:
        # --required: storescu proposes exactly each file's SOP class (by default a fixed list
        # without the retired one, and the node would never be asked)
        run = storescu(shared.port, sent, "--required", aet="STRANGER" if fault == "peer-not-allowed" else SCU_AET)
        output = run.stdout + run.stderr
        assert run.returncode != 0
        if fault == "peer-not-allowed":
            assert "Calling AE Title Not Recognized" in output and statuses(run) == []
        elif fault == "unknown-sop-class":
            assert "No Acceptable Presentation Contexts" in output and statuses(run) == [], tail(run)
        else:
            assert statuses(run) == [StoreStatus.CANNOT_UNDERSTAND_INVALID_UID], output[-2000:]

    assert not (shared.spool / study).exists()
    assert not list(shared.spool.rglob(f"{TEMP_PREFIX}*"))
    # nothing written anywhere in this session's temporary folders (the spool's among them)
    assert not [*tmp_path.parent.rglob("x.dcm"), *tmp_path.parent.rglob(f"{TEMP_PREFIX}x-*")]
    new_log = shared.log_text()[log_before:]
    expected = {"peer-not-allowed": "association rejected: peer not in the allow-list",
                "truncated": "data set truncated", "unknown-sop-class": "0 presentation contexts accepted"}.get(fault, "is not a valid DICOM UID")
    assert expected in new_log, new_log[-3000:]
    assert shared.echo()


# -- 6. the same study twice --------------------------------------------------------------------
def test_same_study_sent_twice_one_job_each_result_received_once(tmp_path, shared, results_scp, ct_files):
    sent = copy_series(ct_files[:8], tmp_path / "twice")
    study, series, _ = uids(sent)
    assert storescu(shared.port, sent).returncode == 0
    job = wait_done(shared, series)
    outputs = job.outputs["sop_instance_uids"]
    wait_for(lambda: set(results_scp.counts(study)) >= set(outputs), 30, "the results at the destination", shared)

    run = storescu(shared.port, sent)
    assert run.returncode == 0 and statuses(run) == [StoreStatus.SUCCESS] * 8
    # A barrier: a later series done and delivered means anything the re-send set off
    # (its quiet period ends first, the queue runs the oldest job first) has run too.
    later = copy_series(ct_files[:8], tmp_path / "later")
    later_study, later_series, _ = uids(later)
    assert storescu(shared.port, later).returncode == 0
    later_job = wait_done(shared, later_series)
    wait_for(lambda: set(results_scp.counts(later_study)) >= set(later_job.outputs["sop_instance_uids"]), 30,
             "the later series' results", shared)

    assert [j.id for j in shared.jobs_for(series)] == [job.id]
    assert shared.audit_events(job.id).count("done") == 1
    assert results_scp.counts(study) == Counter({uid: 1 for uid in outputs})
    assert_spool_complete(shared, sent)
