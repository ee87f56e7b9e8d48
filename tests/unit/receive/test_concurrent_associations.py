"""Several associations at once into one SCP: every instance of a series sent over four dcmtk
``storescu`` at once is stored whole and acknowledged; an A-ASSOCIATE-RQ is decoded and
negotiated once per distinct request (also when the same request arrives on several connections
at once), while the per-association checks still run every time."""
from __future__ import annotations

import os
import subprocess
import threading
import time
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.dsutils import split_dataset
from pynetdicom.sop_class import CTImageStorage, MRImageStorage

from neuroread.node.receive import association
from neuroread.node.receive.dimse import StorageSCP
from neuroread.node.spool.store import Spool
from neuroread.node.tools.dcmtk import DcmtkMissing, dcmtk_tool

AET = "NEUROREAD"


@pytest.fixture
def node(tmp_path):
    records = []
    scp = StorageSCP(Spool(tmp_path / "spool", on_stored=records.append), ae_title=AET, port=0,
                     acse_timeout=5, dimse_timeout=10, network_timeout=10, max_associations=8)
    scp.start()
    scp.records = records
    yield scp
    scp.stop()


@pytest.fixture
def negotiations(monkeypatch):
    """Counts pynetdicom's negotiations in the association server (each one slowed by ``delay``)."""
    calls = []
    real = association.negotiate_as_acceptor

    def counted(*args, **kwargs):
        calls.append(time.monotonic())
        time.sleep(counted.delay)
        return real(*args, **kwargs)

    counted.delay = 0.0
    monkeypatch.setattr(association, "negotiate_as_acceptor", counted)
    counted.calls = calls
    return counted


def _storescu(port: int, files: list[Path], aet: str = "STORESCU") -> subprocess.Popen:
    try:
        tool = dcmtk_tool("storescu")
    except DcmtkMissing as exc:
        pytest.fail(str(exc))
    return subprocess.Popen([tool, "-aet", aet, "-aec", AET, "127.0.0.1", str(port), *map(str, files)],
                            env={**os.environ, "TCP_NODELAY": "1"}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def _data_set_bytes(path: Path) -> bytes:
    _, offset = split_dataset(path)
    return path.read_bytes()[offset:]


def test_a_series_over_four_storescu_at_once_is_stored_whole(node, series, negotiations):
    parts = [series[i::4] for i in range(4)]
    procs = [_storescu(node.port, part) for part in parts]
    for proc in procs:
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0, out
    assert len(node.records) == len(series)
    stored = {r.sop_instance_uid: r.path for r in node.records}
    for f in series:
        uid = pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID
        assert stored[uid].read_bytes().endswith(_data_set_bytes(f))
    assert not list(node.spool.root.rglob(".incoming-*"))
    assert len(negotiations.calls) <= 4  # the same request from each storescu: usually 1


def _associate(port: int, aet: str = "PYSCU"):
    ae = AE(ae_title=aet)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    for cx in (CTImageStorage, MRImageStorage):
        ae.add_requested_context(cx, ExplicitVRLittleEndian)
    return ae.associate("127.0.0.1", port, ae_title=AET)


def test_the_same_request_is_negotiated_once(node, negotiations):
    for _ in range(3):
        assoc = _associate(node.port)
        assert assoc.is_established
        assert [cx.abstract_syntax for cx in assoc.accepted_contexts] == [CTImageStorage, MRImageStorage]
        assoc.release()
    assert len(negotiations.calls) == 1
    other = _associate(node.port, aet="OTHERSCU")  # other bytes: negotiated anew
    assert other.is_established
    other.release()
    assert len(negotiations.calls) == 2


def test_the_same_request_on_connections_at_once_is_negotiated_once(node, negotiations):
    negotiations.delay = 0.5  # the first one negotiates slowly: the others arrive meanwhile
    results = {}

    def run(i):
        assoc = _associate(node.port)
        results[i] = assoc.is_established and len(assoc.accepted_contexts) == 2
        if assoc.is_established:
            assoc.release()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert results == {i: True for i in range(4)}
    assert len(negotiations.calls) == 1


def test_a_cached_request_still_meets_the_association_limit(tmp_path, negotiations):
    scp = StorageSCP(Spool(tmp_path / "spool"), ae_title=AET, port=0, acse_timeout=5, dimse_timeout=10,
                     network_timeout=10, max_associations=1)
    with scp:
        first = _associate(scp.port)
        assert first.is_established
        second = _associate(scp.port)  # same bytes, from the cache: still over the limit
        assert second.is_rejected
        first.release()
        third = _associate(scp.port)
        assert third.is_established
        third.release()
    assert len(negotiations.calls) == 1
