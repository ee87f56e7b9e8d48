"""Deliver: destinations and the outbox against real peers (dcmtk storescp, pynetdicom SCPs)."""
from __future__ import annotations

import copy
import errno
import socket
import time
from pathlib import Path

import pydicom
import pytest
import sqlalchemy as sa
from pydicom.dataset import Dataset
from pynetdicom import AE, AllStoragePresentationContexts, evt

from neuroread.node.deliver import (
    Backoff,
    Deliverer,
    DicomDestination,
    FolderDestination,
    Outbox,
    destination_from_dict,
)
from neuroread.node.encode import EncodeInfo, encode_result
from neuroread.node.receive.dimse import StorageSCP
from neuroread.node.spool.store import Spool
from neuroread.node.tools.dcmtk import DcmtkMissing, dcmtk_tool
from support.node_checks import KINDS, KO, PM, SC, SEG, SR
from support.peers import StoreSCP, free_port
from support.tiny_model import SPEC

T0 = 1_700_000_000.0
BACKOFF = Backoff(base=10.0, cap=40.0)


@pytest.fixture(scope="module", autouse=True)
def _tools():
    try:
        dcmtk_tool("storescp")  # dcmtk's, not pynetdicom's namesake
    except DcmtkMissing as exc:
        pytest.fail(str(exc))


@pytest.fixture(scope="module")
def objects(ct_case) -> list[Dataset]:
    """SR, text report, KOS, SEG, PM and SCs of the tiny model on a phantom CT (conftest's ct_case)."""
    _, sources, result = ct_case
    out = encode_result(result, SPEC, {"ct": sources}, node_info=EncodeInfo("neuroread", "test node", "0.1.0"))
    assert {ds.SOPClassUID for ds in out} == KINDS
    return out


@pytest.fixture
def storescp(tmp_path):
    started = []

    def start(port: int | None = None) -> StoreSCP:
        scp = StoreSCP(tmp_path / f"storescp{len(started)}", port)
        started.append(scp)
        return scp

    yield start
    for scp in started:
        scp.stop()


def dicom_dest(port: int, aec: str = "STORESCP", name: str = "pacs") -> DicomDestination:
    return DicomDestination(name=name, host="127.0.0.1", port=port, called_ae=aec, calling_ae="NEUROREAD",
                            connect_timeout=2, acse_timeout=5, dimse_timeout=10, network_timeout=10)


def make_outbox(tmp_path, *destinations, **kwargs) -> Outbox:
    return Outbox(f"sqlite:///{tmp_path / 'outbox.sqlite'}", tmp_path / "outbox", destinations, backoff=BACKOFF,
                  clock=lambda: T0, fsync=False, **kwargs)


def _dataset_bytes(path: Path) -> bytes:
    """The data set part of a Part 10 file (after the file meta), as stored."""
    with open(path, "rb") as f:
        pydicom.filereader.read_preamble(f, False)
        pydicom.filereader._read_file_meta_info(f)
        return f.read()


# -- C-STORE to dcmtk storescp ----------------------------------------------------------------------

def test_storescp_receives_every_object_equal_to_what_was_sent(tmp_path, objects, storescp):
    scp = storescp()
    outbox = make_outbox(tmp_path, dicom_dest(scp.port))
    assert outbox.add("job-1", objects, ["pacs"]) == len(objects)
    assert {i.state for i in outbox.status("job-1")} == {"pending"}

    report = outbox.deliver_due()
    assert (report.sent, report.rejected, report.retrying) == (len(objects), 0, 0)
    received = scp.received()
    assert set(received) == {ds.SOPInstanceUID for ds in objects}
    for item in outbox.status("job-1"):
        assert (item.state, item.status_code, item.attempts, item.sent_at) == ("sent", 0, 1, T0)
        got = received[item.sop_instance_uid]
        assert pydicom.dcmread(got) == pydicom.dcmread(item.path)
        assert _dataset_bytes(got) == _dataset_bytes(item.path)  # same transfer syntax, same bytes
    assert outbox.deliver_due(T0 + 1e6).sent == 0  # nothing left due


def test_destination_down_then_up_nothing_lost(tmp_path, objects, storescp):
    port = free_port()  # nothing listens there yet
    outbox = make_outbox(tmp_path, dicom_dest(port))
    outbox.add("job-1", objects, ["pacs"])

    first = outbox.deliver_due(T0)
    assert (first.sent, first.retrying) == (0, len(objects))
    items = outbox.status("job-1")
    assert {(i.state, i.attempts, i.next_attempt_at) for i in items} == {("retrying", 1, T0 + 10)}
    assert all("cannot connect" in i.last_error for i in items)
    assert outbox.deliver_due(T0 + 5).retrying == 0  # not due yet: no attempt made
    assert outbox.deliver_due(T0 + 10).retrying == len(objects)
    assert {i.next_attempt_at for i in outbox.status("job-1")} == {T0 + 10 + 20}  # back-off doubles

    restarted = make_outbox(tmp_path, dicom_dest(port))  # the node restarts: rows are durable
    scp = storescp(port)
    report = restarted.deliver_due(T0 + 30)
    assert (report.sent, report.retrying) == (len(objects), 0)
    assert set(scp.received()) == {ds.SOPInstanceUID for ds in objects}
    assert {(i.state, i.attempts) for i in restarted.status("job-1")} == {("sent", 3)}


def test_backoff_is_capped():
    assert [BACKOFF.delay(n) for n in (1, 2, 3, 4, 5, 50)] == [10, 20, 40, 40, 40, 40]


def test_association_rejected_is_retried(tmp_path, objects):
    scp = StorageSCP(Spool(tmp_path / "spool"), ae_title="NODE", port=0, acse_timeout=5)
    with scp:
        outbox = make_outbox(tmp_path, dicom_dest(scp.port, aec="WRONG"))
        outbox.add("job-1", objects[:2], ["pacs"])
        assert outbox.deliver_due().retrying == 2
        assert all("association rejected" in i.last_error for i in outbox.status("job-1"))


# -- a peer that rejects some objects ---------------------------------------------------------------

class PickyPeer:
    """A pynetdicom SCP answering C-STORE by SOP class; records associations and proposals."""

    ANSWERS = {SEG: 0xA700, PM: 0xC000, KO: 0xB000}

    def __init__(self, unsupported=()) -> None:
        self.stores: list[str] = []
        self.associations = 0
        self.proposed: list[set[str]] = []
        ae = AE(ae_title="PICKY")
        for cx in AllStoragePresentationContexts:
            if cx.abstract_syntax not in unsupported:
                ae.add_supported_context(cx.abstract_syntax, cx.transfer_syntax)
        self.server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=[
            (evt.EVT_C_STORE, self._store), (evt.EVT_ACCEPTED, self._accepted)])
        self.port = self.server.server_address[1]

    def _accepted(self, event):
        self.associations += 1
        self.proposed.append({cx.abstract_syntax for cx in event.assoc.requestor.requested_contexts})

    def _store(self, event):
        sop_class = event.request.AffectedSOPClassUID
        self.stores.append(sop_class)
        rsp = Dataset()
        rsp.Status = self.ANSWERS.get(sop_class, 0x0000)
        if rsp.Status:
            rsp.ErrorComment = f"picky about {sop_class}"
        return rsp


def test_rejected_objects_recorded_not_retried_others_sent(tmp_path, objects):
    peer = PickyPeer(unsupported=(SC,))
    try:
        outbox = make_outbox(tmp_path, dicom_dest(peer.port, aec="PICKY"))
        outbox.add("job-1", objects, ["pacs"])
        report = outbox.deliver_due()
        n_sc = sum(ds.SOPClassUID == SC for ds in objects)
        assert (report.sent, report.rejected, report.retrying) == (3, len(objects) - 3, 0)  # SR, text report, KO
        by_class = {}
        for item in outbox.status("job-1"):
            by_class.setdefault(item.sop_class_uid, []).append(item)
        assert [(i.state, i.status_code) for i in by_class[SR]] == [("sent", 0)]
        assert [(i.state, i.status_code) for i in by_class[KO]] == [("sent", 0xB000)]
        assert "warning 0xB000" in by_class[KO][0].last_error
        assert {(i.state, i.status_code) for i in by_class[SEG]} == {("rejected", 0xA700)}
        assert {(i.state, i.status_code) for i in by_class[PM]} == {("rejected", 0xC000)}
        assert "0xA700 picky about" in by_class[SEG][0].last_error
        assert len(by_class[SC]) == n_sc
        assert all(i.state == "rejected" and "not accepted" in i.last_error for i in by_class[SC])

        # one association for the batch, proposing exactly the objects' SOP classes
        assert peer.associations == 1
        assert peer.proposed == [KINDS]
        stores = len(peer.stores)
        for later in (T0 + 60, T0 + 3600, T0 + 86400):  # no retry loop
            assert outbox.deliver_due(later) == type(report)()
        assert len(peer.stores) == stores and peer.associations == 1

        assert outbox.requeue("job-1") == len(objects) - 3  # an operator's explicit retry
        assert outbox.deliver_due().rejected == len(objects) - 3
    finally:
        peer.server.shutdown()


def test_scu_socket_has_tcp_nodelay(objects):
    peer = PickyPeer()
    try:
        assoc = dicom_dest(peer.port, aec="PICKY").associate({SR: ["1.2.840.10008.1.2.1"]})
        assert assoc.is_established
        try:
            assert assoc.dul.socket.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        finally:
            assoc.release()
    finally:
        peer.server.shutdown()


# -- folder destination ------------------------------------------------------------------------------

def test_folder_destination_layout_and_bytes(tmp_path, objects):
    folder = FolderDestination(name="archive", path=tmp_path / "archive", fsync=True)
    outbox = make_outbox(tmp_path, folder)
    outbox.add("job-1", objects, [folder])
    assert outbox.deliver_due().sent == len(objects)
    for ds, item in zip(objects, outbox.status("job-1")):
        target = tmp_path / "archive" / ds.StudyInstanceUID / ds.SeriesInstanceUID / f"{ds.SOPInstanceUID}.dcm"
        assert target.read_bytes() == item.path.read_bytes()
        assert pydicom.dcmread(target).SOPInstanceUID == ds.SOPInstanceUID
    assert not [p for p in (tmp_path / "archive").rglob(".outgoing-*")]


def test_folder_write_failure_leaves_nothing_and_retries(tmp_path, objects):
    failing = {"on": True}

    def half_then_full(f, data):
        if failing["on"]:
            f.write(data[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")
        f.write(data)

    folder = FolderDestination(name="archive", path=tmp_path / "archive", writer=half_then_full)
    outbox = make_outbox(tmp_path, folder)
    outbox.add("job-1", objects[:3], ["archive"])
    assert outbox.deliver_due(T0).retrying == 3
    assert [p for p in (tmp_path / "archive").rglob("*") if p.is_file()] == []  # no partial, no temp file
    assert all("No space left" in i.last_error for i in outbox.status("job-1"))
    failing["on"] = False
    assert outbox.deliver_due(T0 + 10).sent == 3


# -- the outbox itself -------------------------------------------------------------------------------

def test_add_is_idempotent_and_links_jobs(tmp_path, objects, storescp):
    folder = FolderDestination(name="archive", path=tmp_path / "archive", fsync=False)
    outbox = make_outbox(tmp_path, folder, dicom_dest(free_port()))
    assert outbox.add("job-1", objects, ["archive", "pacs"]) == 2 * len(objects)
    assert outbox.add("job-1", objects, ["archive", "pacs"]) == 0
    outbox.deliver_due(T0)  # archive: sent; pacs: down, retrying
    assert outbox.add("job-2", objects, ["archive"]) == 0  # a re-run job: same UIDs, no new row
    again = outbox.status("job-2")
    assert len(again) == len(objects) and {i.state for i in again} == {"sent"}
    with outbox.engine.connect() as conn:
        assert conn.execute(sa.text("select count(*) from deliver_outbox")).scalar() == 2 * len(objects)
    assert len({i.path for i in outbox.status("job-1")}) == len(objects)  # one outbox file per object


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")
def test_add_validates(tmp_path, objects):
    outbox = make_outbox(tmp_path, FolderDestination(name="archive", path=tmp_path / "a"))
    with pytest.raises(ValueError, match="did you mean 'archive'"):
        outbox.add("job-1", objects, ["archiv"])
    bad = copy.deepcopy(objects[0])
    bad.SOPInstanceUID = "../../etc"
    with pytest.raises(ValueError, match="SOPInstanceUID"):
        outbox.add("job-1", [bad], ["archive"])
    assert not list(tmp_path.rglob("etc*"))


def test_deliverer_thread(tmp_path, objects):
    folder = FolderDestination(name="archive", path=tmp_path / "archive", fsync=False)
    outbox = Outbox(f"sqlite:///{tmp_path / 'o.sqlite'}", tmp_path / "outbox", [folder], fsync=False)
    deliverer = Deliverer(outbox, interval=60)
    deliverer.start()
    try:
        outbox.add("job-1", objects[:2], ["archive"])
        deliverer.wake()
        deadline = time.monotonic() + 20
        while {i.state for i in outbox.status("job-1")} != {"sent"}:
            assert time.monotonic() < deadline, outbox.status("job-1")
            time.sleep(0.05)
    finally:
        deliverer.stop()


def test_destinations_from_yaml_dicts(tmp_path):
    d = destination_from_dict({"type": "dicom", "name": "pacs", "host": "10.0.0.5", "port": 104, "called_ae": "PACS"})
    assert isinstance(d, DicomDestination) and d.calling_ae == "NEUROREAD"
    f = destination_from_dict({"type": "folder", "name": "archive", "path": str(tmp_path)})
    assert f.path == tmp_path
    cases = [
        ({"type": "dicom", "name": "p", "host": "h", "port": 0, "called_ae": "PACS"}, r"destinations\[0\]\.port"),
        ({"type": "dicom", "name": "p", "host": "h", "called_ae": "PACS"}, r"missing key port"),
        ({"type": "dicom", "name": "p", "host": "h", "port": 104, "called_ae": "X" * 17}, r"\.called_ae"),
        ({"type": "dicom", "name": "p", "host": "h", "port": 104, "called_ae": "P", "tls": {"ca_file": "/nope"}},
         r"\.tls\.ca_file"),
        ({"type": "folder", "name": "a", "pth": "x"}, r"\.pth: unknown key; did you mean 'path'"),
        ({"type": "stow-rs", "name": "w"}, r"\.type: 'stow-rs' is not a destination type .*did you mean 'stowrs'"),
        ({"type": "stowrs", "name": "w"}, r"missing key url"),
        ({"type": "dicomm"}, r"did you mean 'dicom'"),
        ("pacs", r"must be a mapping"),
    ]
    for cfg, message in cases:
        with pytest.raises(ValueError, match=message):
            destination_from_dict(cfg, "destinations[0]")
    with pytest.raises(ValueError, match="cap"):
        Backoff(base=10, cap=5)
    with pytest.raises(ValueError, match="two destinations named"):
        Outbox("sqlite://", tmp_path / "o", [f, f])
