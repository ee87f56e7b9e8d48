"""The receive stage against real peers on loopback: dcmtk storescu/echoscu and pynetdicom SCUs."""
from __future__ import annotations

import errno
import os
import shutil
import socket
import ssl
import subprocess
from io import BytesIO
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
)
from pynetdicom import AE
from pynetdicom import _config as pynetdicom_config
from pynetdicom.dsutils import encode, split_dataset
from pynetdicom.sop_class import CTImageStorage, MRImageStorage, Verification

from neuroread.node.receive.dimse import Peer, StorageSCP, StoreStatus
from neuroread.node.spool.store import Spool
from neuroread.node.tools.dcmtk import DcmtkMissing, dcmtk_tool

AET = "NEUROREAD"
TOOLS = ("storescu", "echoscu", "dcmcjpls", "dcmcrle")


@pytest.fixture(scope="module", autouse=True)
def _tools():
    for tool in TOOLS:  # dcmtk's, even with the environment (and pynetdicom's namesakes) on PATH
        try:
            dcmtk_tool(tool)
        except DcmtkMissing as exc:
            pytest.fail(str(exc))


class _Node:
    """An SCP on a free loopback port with its spool and the records it handed on."""

    def __init__(self, root: Path, **kwargs):
        self.records = []
        spool_kw = {k: kwargs.pop(k) for k in ("writer",) if k in kwargs}
        self.spool = Spool(root, on_stored=self.records.append, **spool_kw)
        self.scp = StorageSCP(self.spool, ae_title=AET, port=0, acse_timeout=5, dimse_timeout=10,
                              network_timeout=10, **kwargs)

    def files(self) -> list[Path]:
        """The spool's files."""
        return sorted(p for p in self.spool.root.rglob("*") if p.is_file())


@pytest.fixture
def make_node(tmp_path):
    nodes = []

    def make(**kwargs) -> _Node:
        node = _Node(tmp_path / "spool", **kwargs)
        node.scp.start()
        nodes.append(node)
        return node

    yield make
    for node in nodes:
        node.scp.stop()


def storescu(port: int, files, *args: str, aec: str = AET, aet: str = "STORESCU"):
    env = {**os.environ, "TCP_NODELAY": "1"}
    return subprocess.run([dcmtk_tool("storescu"), "-aet", aet, "-aec", aec, *args, "127.0.0.1", str(port),
                           *map(str, files)], env=env, capture_output=True, text=True, timeout=60)


def _associate(port: int, contexts=(CTImageStorage, MRImageStorage), aec: str = AET,
               aet: str = "PYSCU", tls=None):
    ae = AE(ae_title=aet)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    for cx in contexts:
        ae.add_requested_context(cx, ExplicitVRLittleEndian)
    return ae.associate("127.0.0.1", port, ae_title=aec, tls_args=tls)


def _send(port: int, dataset, **kwargs) -> int:
    assoc = _associate(port, **kwargs)
    assert assoc.is_established
    try:
        rsp = assoc.send_c_store(dataset)
    finally:
        assoc.release()
    return rsp.Status


def _data_set_bytes(path: Path) -> bytes:
    """The encoded data set after the file meta (what travels over the network)."""
    _, offset = split_dataset(path)
    return path.read_bytes()[offset:]


def _ct(study="1.2.826.0.1.3680043.8.498.1", series="1.2.826.0.1.3680043.8.498.1.1",
        sop="1.2.826.0.1.3680043.8.498.1.1.1") -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = sop
    ds.StudyInstanceUID = study
    ds.SeriesInstanceUID = series
    ds.Modality = "CT"
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return ds


# -- success paths -----------------------------------------------------------------------------

def test_storescu_series_stored_byte_equal(make_node, series):
    node = make_node()
    run = storescu(node.scp.port, series)
    assert run.returncode == 0, run.stderr
    assert len(node.records) == len(series) and len(node.files()) == len(series)
    for src in series:
        sent = pydicom.dcmread(src, stop_before_pixels=True)
        dst = node.spool.root / sent.StudyInstanceUID / sent.SeriesInstanceUID / f"{sent.SOPInstanceUID}.dcm"
        assert _data_set_bytes(dst) == _data_set_bytes(src), src.name
        meta = pydicom.dcmread(dst, stop_before_pixels=True).file_meta
        assert meta.TransferSyntaxUID == ExplicitVRLittleEndian
        assert meta.MediaStorageSOPInstanceUID == sent.SOPInstanceUID
        assert meta.SourceApplicationEntityTitle == "STORESCU"
    rec = node.records[0]
    assert rec.outcome == "new" and rec.calling_ae == "STORESCU"
    assert rec.size == rec.path.stat().st_size


def _compress(kind: str, src: Path, dst: Path) -> tuple[str, str]:
    """Compress ``src`` to ``dst``; returns the transfer syntax and storescu's option to propose it."""
    if kind == "jpeg-ls":
        subprocess.run(["dcmcjpls", str(src), str(dst)], check=True, timeout=60)
        return JPEGLSLossless, "-xt"
    if kind == "rle":
        subprocess.run(["dcmcrle", str(src), str(dst)], check=True, timeout=60)
        return RLELossless, "-xr"
    ds = pydicom.dcmread(src)
    ds.compress(JPEG2000Lossless)  # pylibjpeg-openjpeg encodes
    ds.save_as(dst, enforce_file_format=True)
    return JPEG2000Lossless, "-xv"


@pytest.mark.parametrize("kind", ["jpeg-ls", "rle", "jpeg2000"])
def test_compressed_stored_as_received_and_decodable(make_node, series, tmp_path, kind):
    src = series[len(series) // 2]
    compressed = tmp_path / f"{kind}.dcm"
    tsuid, propose = _compress(kind, src, compressed)
    node = make_node()
    run = storescu(node.scp.port, [compressed], propose)
    assert run.returncode == 0, run.stderr
    [rec] = node.records
    assert rec.transfer_syntax_uid == tsuid
    assert _data_set_bytes(rec.path) == _data_set_bytes(compressed)
    stored = pydicom.dcmread(rec.path)
    assert stored.file_meta.TransferSyntaxUID == tsuid
    np.testing.assert_array_equal(stored.pixel_array, pydicom.dcmread(src).pixel_array)


def test_deflated_stored_as_received(make_node, series):
    node = make_node()
    run = storescu(node.scp.port, series[:1], "-xd")  # storescu deflates on the wire
    assert run.returncode == 0, run.stderr
    [rec] = node.records
    assert rec.transfer_syntax_uid == DeflatedExplicitVRLittleEndian
    assert len(_data_set_bytes(rec.path)) < len(_data_set_bytes(series[0]))  # kept deflated
    np.testing.assert_array_equal(pydicom.dcmread(rec.path).pixel_array,
                                  pydicom.dcmread(series[0]).pixel_array)


def test_echo_with_dcmtk_and_pynetdicom(make_node):
    node = make_node()
    run = subprocess.run([dcmtk_tool("echoscu"), "-aec", AET, "127.0.0.1", str(node.scp.port)],
                         capture_output=True, text=True, timeout=30)
    assert run.returncode == 0, run.stderr
    assoc = _associate(node.scp.port, contexts=(Verification,))
    assert assoc.is_established
    assert assoc.send_c_echo().Status == StoreStatus.SUCCESS
    assoc.release()


def test_same_instance_twice_one_file_success_both_times(make_node, series):
    node = make_node()
    for _ in range(2):
        run = storescu(node.scp.port, series[:2])
        assert run.returncode == 0, run.stderr
    assert len(node.files()) == 2
    assert [r.outcome for r in node.records] == ["new", "new", "duplicate", "duplicate"]


# -- who may associate -------------------------------------------------------------------------

def test_peer_not_allowed_is_rejected_nothing_stored(make_node, series, caplog):
    node = make_node(peers=[Peer("PACS", "127.0.0.1"), Peer("STORESCU", "10.0.0.0/8")])
    run = storescu(node.scp.port, series[:1])
    assert run.returncode != 0
    assert "Calling AE Title Not Recognized" in run.stderr
    assoc = _associate(node.scp.port, aet="INTRUDER")
    assert assoc.is_rejected
    rj = assoc.acceptor.primitive
    assert (rj.result, rj.result_source, rj.diagnostic) == (0x01, 0x01, 0x03)
    assert node.files() == [] and node.records == []
    assert "INTRUDER" in caplog.text and "127.0.0.1" in caplog.text
    # The listed peer from an allowed address gets through.
    assoc = _associate(node.scp.port, aet="PACS")
    assert assoc.is_established
    assoc.release()


def test_allowed_peer_by_network(make_node, series):
    node = make_node(peers=[Peer("STORESCU", "127.0.0.0/8")])
    run = storescu(node.scp.port, series[:1])
    assert run.returncode == 0, run.stderr
    assert len(node.files()) == 1


def test_wrong_called_ae_rejected(make_node, series):
    node = make_node()
    run = storescu(node.scp.port, series[:1], aec="SOMEONE")
    assert run.returncode != 0 and "Called AE Title Not Recognized" in run.stderr
    assoc = _associate(node.scp.port, aec="SOMEONE")
    assert assoc.is_rejected and assoc.acceptor.primitive.diagnostic == 0x07
    assert node.files() == []


def test_called_ae_check_can_be_turned_off(make_node, series):
    node = make_node(require_called_ae=False)
    run = storescu(node.scp.port, series[:1], aec="ANYTHING")
    assert run.returncode == 0, run.stderr


def test_association_limit_and_tcp_nodelay(make_node):
    node = make_node(max_associations=1)
    first = _associate(node.scp.port)
    assert first.is_established

    [server_side] = node.scp.server.sockets()
    assert server_side.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    second = _associate(node.scp.port)
    assert second.is_rejected
    rj = second.acceptor.primitive
    assert (rj.result, rj.result_source, rj.diagnostic) == (0x02, 0x03, 0x02)  # local limit exceeded
    first.release()
    third = _associate(node.scp.port)
    assert third.is_established
    third.release()


# -- faults in C-STORE -------------------------------------------------------------------------

@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")  # pydicom warns: that is the point
@pytest.mark.parametrize("field", ["StudyInstanceUID", "SeriesInstanceUID"])
def test_uid_with_path_characters_refused(make_node, tmp_path, field):
    node = make_node()
    ds = _ct()
    setattr(ds, field, "../../evil")
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    assert _send(node.scp.port, ds) == StoreStatus.CANNOT_UNDERSTAND_INVALID_UID
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
    assert not list(tmp_path.parent.glob("**/evil*"))
    assert node.records == []


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")
def test_sop_instance_uid_with_path_characters_from_storescu(make_node, series, tmp_path):
    ds = pydicom.dcmread(series[0])
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = "../../../evil"
    evil = tmp_path / "evil.dcm"
    ds.save_as(evil)
    node = make_node()
    before = sorted(tmp_path.parent.rglob("*"))
    run = storescu(node.scp.port, [evil], "-v")
    assert "Error: CannotUnderstand" in run.stdout + run.stderr
    assert sorted(tmp_path.parent.rglob("*")) == before  # nothing written anywhere near
    assert node.files() == [] and node.records == []


def _raw_file(path: Path, sop_class: str, data: bytes) -> Path:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = "1.2.826.0.1.3680043.8.498.9"
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    buf = BytesIO()
    buf.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(buf, meta, enforce_standard=True)
    path.write_bytes(buf.getvalue() + data)
    return path


@pytest.mark.parametrize("corruption", ["garbage", "truncated"])
def test_unparsable_dataset_refused(make_node, series, tmp_path, monkeypatch, corruption):
    # Send the file's bytes as they are (pynetdicom does not decode them first).
    monkeypatch.setattr(pynetdicom_config, "STORE_SEND_CHUNKED_DATASET", True)
    node = make_node()
    if corruption == "garbage":  # an undefined-length element that never ends
        data = b"\x08\x00\x16\x00UN\x00\x00\xff\xff\xff\xff" + b"junk" * 3
    else:  # a real image cut in the middle of its pixel data: UIDs readable, pixels not
        data = _data_set_bytes(series[0])
        data = data[: len(data) // 2]
    bad = _raw_file(tmp_path / "bad.dcm", MRImageStorage, data)
    assert _send(node.scp.port, bad, contexts=(MRImageStorage,)) == StoreStatus.CANNOT_UNDERSTAND
    assert node.files() == [] and node.records == []


def test_dataset_missing_uids_refused(make_node):
    node = make_node()
    ds = _ct()
    del ds.SeriesInstanceUID
    assert _send(node.scp.port, ds) == StoreStatus.CANNOT_UNDERSTAND_MISSING_UID
    assert node.files() == []


def test_dataset_not_matching_sop_class_refused(make_node, tmp_path, monkeypatch):
    monkeypatch.setattr(pynetdicom_config, "STORE_SEND_CHUNKED_DATASET", True)
    node = make_node()
    ds = _ct(sop="1.2.826.0.1.3680043.8.498.9")  # a CT data set announced as MR
    del ds.file_meta
    wrong = _raw_file(tmp_path / "wrong.dcm", MRImageStorage, encode(ds, False, True))
    assert _send(node.scp.port, wrong) == StoreStatus.DATASET_DOES_NOT_MATCH_SOP_CLASS
    assert node.files() == []


def test_unknown_sop_class_not_accepted(make_node):
    node = make_node()
    private = "1.2.826.0.1.3680043.8.498.777.1"
    assoc = _associate(node.scp.port, contexts=(private, CTImageStorage))
    assert assoc.is_established  # the CT context is accepted ...
    assert [cx.abstract_syntax for cx in assoc.accepted_contexts] == [CTImageStorage]
    assert [cx.abstract_syntax for cx in assoc.rejected_contexts] == [private]  # ... the private one is not
    ds = _ct()
    ds.SOPClassUID = private
    with pytest.raises(ValueError, match="presentation context"):
        assoc.send_c_store(ds)
    assoc.release()
    only_private = _associate(node.scp.port, contexts=(private,))
    assert not only_private.is_established  # no context left: pynetdicom's SCU aborts
    assert node.files() == []


def test_disk_full_answers_out_of_resources(make_node, series):
    def full_after_half(f, data):
        f.write(data[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    node = make_node(writer=full_after_half)
    run = storescu(node.scp.port, series[:1], "-v")
    assert "Refused: OutOfResources" in run.stdout + run.stderr
    assert _send(node.scp.port, pydicom.dcmread(series[1])) == StoreStatus.OUT_OF_RESOURCES
    assert node.files() == [] and node.records == []  # no partial or temporary file


# -- DICOM-TLS ---------------------------------------------------------------------------------

def test_tls(make_node, series, tmp_path):
    if shutil.which("openssl") is None:
        pytest.skip("openssl command not installed")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=localhost", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=60)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    node = make_node(ssl_context=server_ctx)
    client_ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(cert))
    client_ctx.check_hostname = False
    assert _send(node.scp.port, pydicom.dcmread(series[0]), tls=(client_ctx, None)) == StoreStatus.SUCCESS
    assert len(node.files()) == 1
    plain = _associate(node.scp.port)
    assert not plain.is_established  # a plain-TCP peer cannot talk to the TLS port


def test_constructor_validates(tmp_path):
    spool = Spool(tmp_path)
    with pytest.raises(ValueError, match="ae_title"):
        StorageSCP(spool, ae_title="X" * 17)
    with pytest.raises(ValueError, match="max_associations"):
        StorageSCP(spool, max_associations=0)
    with pytest.raises(ValueError, match="peers"):
        StorageSCP(spool, peers=["PACS"])
    with pytest.raises(ValueError, match="address"):
        Peer("PACS", "not-an-ip")
    with pytest.raises(ValueError, match="spool"):
        StorageSCP(str(tmp_path))


# -- the association loop (neuroread.node.receive.association) --------------------------------------------------

def _raw_connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.settimeout(10)
    return sock


def _read_all(sock: socket.socket) -> bytes:
    out = b""
    while chunk := sock.recv(65536):
        out += chunk
    return out


def test_unsupported_dimse_request_answered_and_association_goes_on(make_node):
    node = make_node()
    assoc = _associate(node.scp.port)
    status, _ = assoc.send_n_get([0x00080016], CTImageStorage, "1.2.826.0.1.3680043.8.498.5")
    assert status.Status == 0x0211  # unrecognised operation
    assert assoc.send_c_store(_ct()).Status == StoreStatus.SUCCESS  # the association is still fine
    assoc.release()
    assert len(node.records) == 1


def test_failure_after_the_spool_answers_processing_failure(tmp_path, caplog):
    def boom(record):
        raise RuntimeError("assemble stage broken")

    scp = StorageSCP(Spool(tmp_path / "spool", on_stored=boom), ae_title=AET, port=0, acse_timeout=5)
    with scp:
        assoc = _associate(scp.port, contexts=(CTImageStorage, Verification))
        rsp = assoc.send_c_store(_ct())
        assert rsp.Status == 0x0110 and "RuntimeError" in rsp.ErrorComment
        assert assoc.send_c_echo().Status == 0  # same association, still served
        assoc.release()
    assert "handling failed" in caplog.text


def test_silent_connection_closed_after_acse_timeout(tmp_path):
    scp = StorageSCP(Spool(tmp_path / "spool"), ae_title=AET, port=0, acse_timeout=1)
    with scp:
        sock = _raw_connect(scp.port)
        assert _read_all(sock) == b""  # closed by the node, nothing said
        sock.close()
        assert _send(scp.port, _ct()) == StoreStatus.SUCCESS  # and it still serves others


def test_silent_established_association_aborted_after_network_timeout(tmp_path, caplog):
    scp = StorageSCP(Spool(tmp_path / "spool"), ae_title=AET, port=0, acse_timeout=5, network_timeout=1)
    with scp:
        assoc = _associate(scp.port)
        assert assoc.is_established
        assoc.join(10)  # the SCU sends nothing; the node gives up after 1 s
        assert assoc.is_aborted
    assert "nothing received for 1 s" in caplog.text


@pytest.mark.parametrize("pdu, reason", [
    (b"\x01\x00\x00\x00\x00\x10" + b"\xff" * 16, 0x06),  # an A-ASSOCIATE-RQ that cannot be decoded
    (b"\x99\x00\x00\x00\x00\x02\x00\x00", 0x01),  # an unknown PDU type
    (b"\x04\x00\x00\x00\x00\x02\x00\x00", 0x02),  # P-DATA before any association
])
def test_malformed_or_unexpected_pdu_gets_a_provider_abort(make_node, caplog, pdu, reason):
    node = make_node()
    sock = _raw_connect(node.scp.port)
    sock.sendall(pdu)
    answer = _read_all(sock)
    sock.close()
    assert answer[:1] == b"\x07" and answer[8:10] == bytes([0x02, reason])  # A-ABORT, provider, reason
    assert "aborted" in caplog.text
    assert _send(node.scp.port, _ct()) == StoreStatus.SUCCESS


def test_peer_abort_in_the_middle_of_a_data_set_stores_nothing(make_node, series):
    from pynetdicom.dimse_messages import C_STORE_RQ
    from pynetdicom.dimse_primitives import C_STORE
    from pynetdicom.pdu import P_DATA_TF

    node = make_node()
    assoc = _associate(node.scp.port)
    ds = pydicom.dcmread(series[0])
    rq = C_STORE()
    rq.MessageID, rq.Priority = 1, 0
    rq.AffectedSOPClassUID, rq.AffectedSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
    rq.DataSet = BytesIO(_data_set_bytes(series[0]))
    message = C_STORE_RQ()
    message.primitive_to_message(rq)
    [cx] = [c for c in assoc.accepted_contexts if c.abstract_syntax == ds.SOPClassUID]
    fragments = list(message.encode_msg(cx.context_id, 4096))
    assert len(fragments) > 3
    for p_data in fragments[:3]:  # the command and the data set's first fragments, not its last
        pdu = P_DATA_TF()
        pdu.from_primitive(p_data)
        assoc.dul.socket.send(pdu.encode())
    assoc.abort()
    assert _send(node.scp.port, _ct()) == StoreStatus.SUCCESS  # served after the abort ...
    assert [r.sop_instance_uid for r in node.records] == [_ct().SOPInstanceUID]  # ... nothing of the cut one


def test_stop_aborts_open_associations(tmp_path):
    scp = StorageSCP(Spool(tmp_path / "spool"), ae_title=AET, port=0, acse_timeout=5)
    scp.start()
    assoc = _associate(scp.port)
    assert assoc.is_established
    scp.stop()
    assoc.join(10)  # the SCU's association thread ends when the A-ABORT arrives
    assert assoc.is_aborted and not assoc.is_established
