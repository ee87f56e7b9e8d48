"""The STOW-RS receiver (neuroread.node.receive.stow) over real HTTP on a free loopback port, into a real spool.

The good paths go through dicomweb-client (what a PACS-side script would use); each bad input
is its own request with ``requests`` (or a raw socket, where what matters is what the server
does *before* the body arrives), and each checks the status, the message and the spool.
"""
from __future__ import annotations

import base64
import dataclasses
import errno
import shutil
import socket
import ssl
import subprocess
import time
from io import BytesIO
from pathlib import Path

import pydicom
import pytest
import requests
from dicomweb_client import DICOMwebClient
from dicomweb_client.session_utils import create_session_from_user_pass
from pydicom.uid import generate_uid

from neuroread.node.config import ConfigError, DicomWebConfig, parse_config
from neuroread.node.receive.multipart import MultipartError, split_multipart
from neuroread.node.receive.stow import DICOM_JSON, FailureReason, StowReceiver
from neuroread.node.spool.store import Spool

USER, PASSWORD, TOKEN = "pacs", "s3cret-pw", "tok-9f8e7d"
BOUNDARY = "b0undary-42"
MULTIPART = f'multipart/related; type="application/dicom"; boundary="{BOUNDARY}"'
FAILED, REFERENCED, REASON = "00081198", "00081199", "00081197"
INSTANCE_UID = "00081155"


@pytest.fixture(scope="module")
def files(phantom_sets) -> list[Path]:
    """Three instances of the session's first head-CT phantom series."""
    study = sorted(p.parent for p in phantom_sets["ct-hemorrhage"].glob("*/truth.json"))[0]
    found = sorted((study / "S01").glob("*.dcm"))
    assert len(found) >= 3, f"phantom series {study / 'S01'} has {len(found)} files"
    return found[:3]


def part10(ds: pydicom.Dataset) -> bytes:
    with BytesIO() as out:
        pydicom.dcmwrite(out, ds, enforce_file_format=True)
        return out.getvalue()


def body(*parts: bytes, close: bool = True, content_type: str = "application/dicom") -> bytes:
    """A multipart/related body as RFC 2046 lays it out (the closing delimiter optional)."""
    out = b"".join(b"\r\n--" + BOUNDARY.encode() + f"\r\nContent-Type: {content_type}\r\n\r\n".encode() + p
                   for p in parts)
    return out + (b"\r\n--" + BOUNDARY.encode() + b"--\r\n" if close else b"")


class Receiver:
    """A StowReceiver on a free port with its spool, the records handed on and HTTP helpers."""

    def __init__(self, root: Path, *, writer=None, timeout: float = 5, **config) -> None:
        self.records = []
        self.spool = Spool(root / "spool", on_stored=self.records.append,
                           **({"writer": writer} if writer else {}))
        settings = {"port": 0, "users": {USER: PASSWORD}, "tokens": (TOKEN,), **config}
        self.stow = StowReceiver(self.spool, DicomWebConfig(**settings), timeout=timeout)
        self.stow.start()

    @property
    def studies(self) -> str:
        return f"{self.stow.url}/studies"

    def files(self) -> list[Path]:
        return sorted(p for p in self.spool.root.rglob("*") if p.is_file())

    def post(self, data: bytes, *, url: str | None = None, content_type: str = MULTIPART,
             auth=(USER, PASSWORD), headers=None) -> requests.Response:
        return requests.post(url or self.studies, data=data, auth=auth, timeout=10,
                             headers={"Content-Type": content_type, **(headers or {})})

    def raw(self, head: str, send: bytes = b"", wait_s: float = 5) -> bytes:
        """Send a request head (and ``send``) on a raw socket; what comes back within ``wait_s``."""
        with socket.create_connection(("127.0.0.1", self.stow.port), timeout=wait_s) as sock:
            sock.sendall(head.replace("\n", "\r\n").encode() + b"\r\n" + send)
            return _read_answer(sock, wait_s)


def _read_answer(sock: socket.socket, wait_s: float) -> bytes:
    """Read until the server closes, or until ``wait_s`` passes (then fail)."""
    data, deadline = b"", time.monotonic() + wait_s
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            break
        if not chunk:
            return data
        data += chunk
    pytest.fail(f"no complete answer within {wait_s} s, got {data[:200]!r}")


@pytest.fixture
def make_receiver(tmp_path):
    made = []

    def make(**kwargs) -> Receiver:
        r = Receiver(tmp_path, **kwargs)
        made.append(r)
        return r

    yield make
    for r in made:
        r.stow.stop()


@pytest.fixture
def receiver(make_receiver) -> Receiver:
    return make_receiver()


def _failed(response: requests.Response) -> list[tuple[str, int]]:
    seq = response.json().get(FAILED, {}).get("Value", [])
    return [(item.get(INSTANCE_UID, {}).get("Value", [""])[0], item[REASON]["Value"][0]) for item in seq]


def _referenced(response: requests.Response) -> list[str]:
    return [item[INSTANCE_UID]["Value"][0] for item in response.json().get(REFERENCED, {}).get("Value", [])]


# -- good paths, with dicomweb-client -----------------------------------------------------------

def test_store_with_basic_auth(receiver, files):
    datasets = [pydicom.dcmread(f) for f in files]
    client = DICOMwebClient(receiver.stow.url, session=create_session_from_user_pass(USER, PASSWORD))
    answer = client.store_instances(datasets)
    assert [item.ReferencedSOPInstanceUID for item in answer.ReferencedSOPSequence] == \
        [ds.SOPInstanceUID for ds in datasets]
    assert [item.ReferencedSOPClassUID for item in answer.ReferencedSOPSequence] == [ds.SOPClassUID for ds in datasets]
    assert "FailedSOPSequence" not in answer
    stored = receiver.files()
    assert len(stored) == 3
    for ds in datasets:
        path = receiver.spool.root / ds.StudyInstanceUID / ds.SeriesInstanceUID / f"{ds.SOPInstanceUID}.dcm"
        assert path.read_bytes() == part10(ds)  # what dicomweb-client sent, preamble zero
        assert path.read_bytes()[:128] == bytes(128)
    assert [r.outcome for r in receiver.records] == ["new"] * 3
    header = receiver.records[0].header
    assert header.SOPInstanceUID == datasets[0].SOPInstanceUID and "PixelData" not in header


def test_store_with_bearer_token_to_study_resource(receiver, files):
    ds = pydicom.dcmread(files[0])
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {TOKEN}"
    answer = DICOMwebClient(receiver.stow.url, session=session).store_instances([ds], ds.StudyInstanceUID)
    assert answer.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == ds.SOPInstanceUID
    assert len(receiver.files()) == 1 and receiver.records[0].sop_instance_uid == ds.SOPInstanceUID


def test_duplicate_is_success_and_stored_once(receiver, files):
    data = files[0].read_bytes()
    first, second = receiver.post(body(data)), receiver.post(body(data, data))
    assert (first.status_code, second.status_code) == (200, 200)
    uid = pydicom.dcmread(files[0]).SOPInstanceUID
    assert _referenced(second) == [uid, uid] and _failed(second) == []
    assert len(receiver.files()) == 1
    assert [r.outcome for r in receiver.records] == ["new", "duplicate", "duplicate"]


def test_expect_continue_sent_only_after_checks(receiver, files):
    data = body(files[0].read_bytes())
    head = (f"POST /dicomweb/studies HTTP/1.1\nHost: x\nContent-Type: {MULTIPART}\nContent-Length: {len(data)}\n"
            "Expect: 100-continue\n")
    refused = receiver.raw(head + "Authorization: Basic " + base64.b64encode(b"pacs:nope").decode() + "\n")
    assert refused.startswith(b"HTTP/1.1 401") and b"100 Continue" not in refused
    with socket.create_connection(("127.0.0.1", receiver.stow.port), timeout=5) as sock:
        auth = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        sock.sendall((head + f"Authorization: Basic {auth}\n\n").replace("\n", "\r\n").encode())
        assert sock.recv(100).startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
        sock.sendall(data)
        answer = _read_answer(sock, 5)
    assert answer.startswith(b"HTTP/1.1 200 OK") and len(receiver.files()) == 1


def test_https(files, tmp_path):
    if shutil.which("openssl") is None:
        pytest.skip("openssl command not installed")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=60)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    records = []
    stow = StowReceiver(Spool(tmp_path / "spool", on_stored=records.append), DicomWebConfig(port=0, tokens=(TOKEN,)),
                        ssl_context=context, timeout=5)
    with stow:
        assert stow.url.startswith("https://")
        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {TOKEN}"
        session.verify = str(cert)
        session.trust_env = False  # else REQUESTS_CA_BUNDLE from the environment overrides verify
        answer = DICOMwebClient(stow.url, session=session).store_instances([pydicom.dcmread(files[0])])
        assert len(answer.ReferencedSOPSequence) == 1 and len(records) == 1
        with pytest.raises(requests.ConnectionError):  # plain HTTP to the HTTPS port
            requests.post(stow.url.replace("https", "http") + "/studies", data=b"x", timeout=5)


# -- authentication -------------------------------------------------------------------------------

def test_no_credentials(receiver, files):
    rsp = receiver.post(body(files[0].read_bytes()), auth=None)
    assert rsp.status_code == 401
    assert rsp.text == "401 Unauthorized: authentication required: send HTTP basic or bearer credentials\n"
    assert rsp.headers["WWW-Authenticate"] == 'Basic realm="neuroread", charset="UTF-8", Bearer realm="neuroread"'
    assert receiver.files() == [] and receiver.records == []


def test_an_address_outside_the_allowed_peers_is_refused_before_anything(make_receiver, files):
    r = make_receiver(peers=("10.0.0.0/8",))
    rsp = r.post(body(files[0].read_bytes()))  # good credentials, from 127.0.0.1
    assert rsp.status_code == 403
    assert rsp.text == "403 Forbidden: address 127.0.0.1 is not among the allowed peers (dicomweb.peers)\n"
    assert r.files() == [] and r.records == []
    allowed = make_receiver(peers=("10.0.0.0/8", "127.0.0.0/8"))
    assert allowed.post(body(files[0].read_bytes())).status_code == 200
    assert len(allowed.files()) == 1


def test_peers_must_be_addresses_or_networks(tmp_path):
    with pytest.raises(ConfigError, match=r"config: dicomweb.peers: must be a list of IP addresses or networks"):
        parse_config({"dicomweb": {"users": {"a": "b"}, "peers": ["pacs.example.org"]}}, tmp_path)


def test_wrong_password(receiver, files):
    rsp = receiver.post(body(files[0].read_bytes()), auth=(USER, "s3cret-pw!"))
    assert rsp.status_code == 401 and "wrong credentials (Basic authorization refused)" in rsp.text
    assert "WWW-Authenticate" in rsp.headers and receiver.files() == []


def test_unknown_user(receiver, files):
    rsp = receiver.post(body(files[0].read_bytes()), auth=("admin", PASSWORD))
    assert rsp.status_code == 401 and "wrong credentials" in rsp.text and receiver.files() == []


def test_wrong_token(receiver, files):
    rsp = receiver.post(body(files[0].read_bytes()), auth=None, headers={"Authorization": f"Bearer {TOKEN}x"})
    assert rsp.status_code == 401 and "wrong credentials (Bearer authorization refused)" in rsp.text
    assert receiver.files() == []


def test_password_is_not_a_token(receiver, files):
    rsp = receiver.post(body(files[0].read_bytes()), auth=None, headers={"Authorization": f"Bearer {PASSWORD}"})
    assert rsp.status_code == 401 and receiver.files() == []


# -- the request itself ---------------------------------------------------------------------------

def test_too_large_answered_before_the_body(make_receiver):
    r = make_receiver(max_body_mb=1)
    head = (f"POST /dicomweb/studies HTTP/1.1\nHost: x\nContent-Type: {MULTIPART}\n"
            f"Content-Length: {10 * 1024 * 1024}\nAuthorization: Bearer {TOKEN}\n")
    answer = r.raw(head)  # headers only: the answer comes although no body byte was sent
    assert answer.startswith(b"HTTP/1.1 413 ")
    assert answer.endswith(b"413 Request Entity Too Large: body of 10485760 bytes is over the limit of "
                           b"1048576 bytes (dicomweb.max_body_mb)\n")
    assert r.files() == []


def test_chunked_body_refused(receiver, files):
    def chunks():
        yield body(files[0].read_bytes())

    rsp = requests.post(receiver.studies, data=chunks(), auth=(USER, PASSWORD), timeout=10,
                        headers={"Content-Type": MULTIPART})
    assert rsp.request.headers.get("Transfer-Encoding") == "chunked"
    assert rsp.status_code == 411 and "Content-Length required" in rsp.text and receiver.files() == []


@pytest.mark.parametrize("content_type", ["application/dicom", "application/json",
                                          f'multipart/related; type="application/dicom+json"; boundary={BOUNDARY}',
                                          f"multipart/mixed; boundary={BOUNDARY}"])
def test_wrong_content_type(receiver, files, content_type):
    rsp = receiver.post(body(files[0].read_bytes()), content_type=content_type)
    assert rsp.status_code == 415
    assert rsp.text.startswith("415 Unsupported Media Type: Content-Type ") and 'type="application/dicom"' in rsp.text
    assert receiver.files() == []


def test_no_boundary(receiver, files):
    rsp = receiver.post(body(files[0].read_bytes()), content_type='multipart/related; type="application/dicom"')
    assert rsp.status_code == 415 and rsp.text == "415 Unsupported Media Type: Content-Type has no boundary parameter\n"
    assert receiver.files() == []


def test_no_closing_boundary(receiver, files):
    rsp = receiver.post(body(files[0].read_bytes(), files[1].read_bytes(), close=False))
    assert rsp.status_code == 400
    assert rsp.text == (f"400 Bad Request: malformed multipart body: part 2 has no closing delimiter (--{BOUNDARY}--): "
                        "the body is truncated or its boundary wrong\n")
    assert receiver.files() == [] and receiver.records == []


def test_body_shorter_than_content_length(receiver, files):
    data = body(files[0].read_bytes())
    head = (f"POST /dicomweb/studies HTTP/1.1\nHost: x\nContent-Type: {MULTIPART}\nContent-Length: {len(data) + 1000}\n"
            f"Authorization: Bearer {TOKEN}\n")
    with socket.create_connection(("127.0.0.1", receiver.stow.port), timeout=5) as sock:
        sock.sendall(head.replace("\n", "\r\n").encode() + b"\r\n" + data)
        sock.shutdown(socket.SHUT_WR)  # the client is gone half-way
        answer = _read_answer(sock, 5)
    assert answer.startswith(b"HTTP/1.1 400 ")
    assert answer.endswith(f"body ended after {len(data)} of {len(data) + 1000} bytes (Content-Length)\n".encode())
    assert receiver.files() == []


def test_body_stalls(make_receiver, files):
    r = make_receiver(timeout=0.5)
    head = (f"POST /dicomweb/studies HTTP/1.1\nHost: x\nContent-Type: {MULTIPART}\nContent-Length: 100000\n"
            f"Authorization: Bearer {TOKEN}\n")
    answer = r.raw(head, b"\r\n--" + BOUNDARY.encode())
    assert answer.startswith(b"HTTP/1.1 408 ") and b"no body bytes for 0.5 s" in answer and r.files() == []


def test_zero_parts(receiver):
    rsp = receiver.post(b"--" + BOUNDARY.encode() + b"--\r\n")
    assert rsp.status_code == 400
    assert rsp.text == ("400 Bad Request: malformed multipart body: holds no part (only the close delimiter "
                        f"--{BOUNDARY}--)\n")
    assert receiver.files() == []


def test_empty_body(receiver):
    rsp = receiver.post(b"")
    assert rsp.status_code == 400 and receiver.files() == []
    assert rsp.text == f"400 Bad Request: malformed multipart body: holds no part (no line --{BOUNDARY})\n"


def test_boundary_inside_a_part(receiver, files):
    data = body(files[0].read_bytes())
    broken = data.replace(b"Content-Type: application/dicom\r\n\r\n",
                          b"Content-Type: application/dicom\r\n\r\nabc\r\n--" + BOUNDARY.encode() + b"xyz\r\n")
    rsp = receiver.post(broken)
    assert rsp.status_code == 400 and receiver.files() == []
    assert rsp.text.startswith("400 Bad Request: malformed multipart body: the delimiter before part 2 is "
                               "followed by b'xyz\\r\\n") and rsp.text.endswith("', not a line end\n")


def test_busy(make_receiver, files):
    r = make_receiver(max_requests=1)
    head = (f"POST /dicomweb/studies HTTP/1.1\nHost: x\nContent-Type: {MULTIPART}\nContent-Length: 100000\n"
            f"Authorization: Bearer {TOKEN}\n\n").replace("\n", "\r\n").encode()
    with socket.create_connection(("127.0.0.1", r.stow.port), timeout=5) as holder:
        holder.sendall(head + b"\r\n--")  # takes the only slot, body still coming
        deadline = time.monotonic() + 5
        while r.stow.active_uploads == 0:
            assert time.monotonic() < deadline, "the first upload never took its slot"
            time.sleep(0.01)
        rsp = r.post(body(files[0].read_bytes()))
    assert rsp.status_code == 503 and rsp.headers["Retry-After"] == "30"
    assert "busy: 1 uploads in progress (dicomweb.max_requests)" in rsp.text and r.files() == []


def test_unknown_path_and_method(receiver):
    assert receiver.post(b"x", url=receiver.stow.url + "/series").status_code == 404
    rsp = requests.get(receiver.studies, auth=(USER, PASSWORD), timeout=10)
    assert rsp.status_code == 405 and rsp.headers["Allow"] == "POST" and "STOW-RS takes POST" in rsp.text
    rsp = receiver.post(b"x", url=receiver.studies + "/1.2.x")
    assert rsp.status_code == 400 and "StudyInstanceUID in the path is not a valid DICOM UID" in rsp.text \
        and "1.2.x" not in rsp.text  # an invalid UID is described, never echoed
    assert requests.get(receiver.studies, timeout=10).status_code == 401  # no answer without credentials


# -- per-instance failures --------------------------------------------------------------------------

def test_non_dicom_part_next_to_a_good_one(receiver, files):
    good = pydicom.dcmread(files[0])
    rsp = receiver.post(body(files[0].read_bytes(), b"this is not DICOM at all"))
    assert rsp.status_code == 202 and rsp.headers["Content-Type"] == DICOM_JSON
    assert _referenced(rsp) == [good.SOPInstanceUID]
    assert _failed(rsp) == [("", FailureReason.CANNOT_UNDERSTAND)]
    assert rsp.headers["Warning"] == '299 neuroread "part 2: not a DICOM PS3.10 file (no preamble and \'DICM\' prefix)"'
    assert [p.name for p in receiver.files()] == [f"{good.SOPInstanceUID}.dcm"]


def test_data_set_without_part10_header(receiver, files):
    ds = pydicom.dcmread(files[0])
    raw = part10(ds)
    bare = raw[132 + 12 + ds.file_meta.FileMetaInformationGroupLength:]  # the data set alone
    rsp = receiver.post(body(bare))
    assert rsp.status_code == 409 and _failed(rsp) == [("", FailureReason.CANNOT_UNDERSTAND)]
    assert "not a DICOM PS3.10 file (no preamble" in rsp.headers["Warning"] and receiver.files() == []


def test_truncated_instance(receiver, files):
    raw = files[0].read_bytes()
    rsp = receiver.post(body(raw[: len(raw) - 1000]))
    assert rsp.status_code == 409 and _failed(rsp)[0][1] == FailureReason.CANNOT_UNDERSTAND
    assert "data set truncated: (7FE0,0010)" in rsp.headers["Warning"] and receiver.files() == []


def test_part_of_another_content_type(receiver, files):
    rsp = receiver.post(body(files[0].read_bytes(), content_type="application/octet-stream"))
    assert rsp.status_code == 409 and _failed(rsp) == [("", FailureReason.CANNOT_UNDERSTAND)]
    assert "part Content-Type application/octet-stream is not application/dicom" in rsp.headers["Warning"]
    assert receiver.files() == []


def test_study_uid_mismatch(receiver, files):
    ds = pydicom.dcmread(files[0])
    other = generate_uid()
    rsp = receiver.post(body(files[0].read_bytes()), url=f"{receiver.studies}/{other}")
    assert rsp.status_code == 409
    assert _failed(rsp) == [(ds.SOPInstanceUID, FailureReason.DATASET_DOES_NOT_MATCH)]
    assert f"instance of study {ds.StudyInstanceUID}, not of {other} named in the path" in rsp.headers["Warning"]
    assert receiver.files() == []


def test_study_resource_keeps_its_own_instances(receiver, files):
    ours, stranger = pydicom.dcmread(files[0]), pydicom.dcmread(files[1])
    stranger.StudyInstanceUID = generate_uid()
    rsp = receiver.post(body(part10(ours), part10(stranger)), url=f"{receiver.studies}/{ours.StudyInstanceUID}")
    assert rsp.status_code == 202 and _referenced(rsp) == [ours.SOPInstanceUID]
    assert _failed(rsp) == [(stranger.SOPInstanceUID, FailureReason.DATASET_DOES_NOT_MATCH)]
    assert len(receiver.files()) == 1


@pytest.mark.parametrize("keyword", ["SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID"])
def test_path_unsafe_uid(receiver, files, tmp_path, keyword):
    ds = pydicom.dcmread(files[0])
    with pytest.warns(UserWarning, match="Invalid value for VR UI"):  # pydicom's, here and in the server
        setattr(ds, keyword, "../../escape")
        if keyword == "SOPInstanceUID":
            ds.file_meta.MediaStorageSOPInstanceUID = "../../escape"
        rsp = receiver.post(body(part10(ds)))
    echoed = "" if keyword == "SOPInstanceUID" else ds.SOPInstanceUID  # only a valid UID is echoed
    assert rsp.status_code == 409 and _failed(rsp) == [(echoed, FailureReason.CANNOT_UNDERSTAND)]
    assert f"{keyword} is not a valid DICOM UID" in rsp.headers["Warning"]
    assert "escape" not in rsp.headers["Warning"]
    assert receiver.files() == [] and not list(tmp_path.rglob("escape*"))


def test_missing_uid(receiver, files):
    ds = pydicom.dcmread(files[0])
    del ds.SeriesInstanceUID
    rsp = receiver.post(body(part10(ds)))
    assert rsp.status_code == 409 and _failed(rsp) == [(ds.SOPInstanceUID, FailureReason.CANNOT_UNDERSTAND)]
    assert "data set lacks SeriesInstanceUID" in rsp.headers["Warning"] and receiver.files() == []


@pytest.mark.parametrize("change,reason,why", [
    ({"TransferSyntaxUID": "1.2.3.4.5.6"}, FailureReason.TRANSFER_SYNTAX_NOT_SUPPORTED,
     "transfer syntax 1.2.3.4.5.6 is not accepted"),
    ({"SOPClassUID": "1.2.840.10008.1.1", "MediaStorageSOPClassUID": "1.2.840.10008.1.1"},
     FailureReason.SOP_CLASS_NOT_SUPPORTED, "SOP class 1.2.840.10008.1.1 is not a storage SOP class"),
    ({"MediaStorageSOPClassUID": "1.2.840.10008.5.1.4.1.1.4"}, FailureReason.DATASET_DOES_NOT_MATCH,
     "file meta SOP class 1.2.840.10008.5.1.4.1.1.4 differs from the data set's 1.2.840.10008.5.1.4.1.1.2"),
    ({"MediaStorageSOPInstanceUID": "1.2.3"}, FailureReason.CANNOT_UNDERSTAND,
     "file meta SOP instance 1.2.3 differs from the data set's"),
])
def test_instance_the_scp_would_refuse_too(receiver, files, change, reason, why):
    ds = pydicom.dcmread(files[0])
    for keyword, value in change.items():
        setattr(ds.file_meta if keyword in ("TransferSyntaxUID", "MediaStorageSOPClassUID",
                                            "MediaStorageSOPInstanceUID") else ds, keyword, value)
    with BytesIO() as out:  # explicit VR little endian whatever the meta says, preamble and meta kept
        pydicom.dcmwrite(out, ds, implicit_vr=False, little_endian=True)  # meta as set, not derived
        rsp = receiver.post(body(out.getvalue()))
    assert rsp.status_code == 409 and _failed(rsp) == [(ds.SOPInstanceUID, reason)]
    assert why in rsp.headers["Warning"] and receiver.files() == []


def test_disk_full_keeps_what_was_stored(make_receiver, files):
    writes = []

    def full_after_one(f, data):
        writes.append(len(data))
        if len(writes) > 1:
            f.write(data[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")
        f.write(data)

    r = make_receiver(writer=full_after_one)
    uids = [pydicom.dcmread(f).SOPInstanceUID for f in files]
    rsp = r.post(body(*(f.read_bytes() for f in files)))
    assert rsp.status_code == 503 and rsp.headers["Retry-After"] == "30"
    assert _referenced(rsp) == uids[:1]
    assert _failed(rsp) == [(uid, FailureReason.OUT_OF_RESOURCES) for uid in uids[1:]]
    assert 'part 2: spool full' in rsp.headers["Warning"] and "part 3: not stored: spool full" in rsp.headers["Warning"]
    assert [p.name for p in r.files()] == [f"{uids[0]}.dcm"]  # no half-written or temporary file
    assert len(writes) == 2  # nothing tried after the disk was full


# -- the multipart splitter on its own -------------------------------------------------------------

def test_split_multipart_follows_rfc2046():
    raw = (b"preamble to ignore\r\n--B \t\r\nContent-Type: application/dicom\r\n\r\nfirst\r\n\r\n"
           b"--B\r\n\r\nsecond, without headers\r\n--B--  \r\nepilogue to ignore\r\n--B\r\n")
    parts = split_multipart(raw, "B")
    assert [bytes(p.content) for p in parts] == [b"first\r\n", b"second, without headers"]
    assert parts[0].headers.get_content_type() == "application/dicom" and parts[1].headers.get("Content-Type") is None
    with pytest.raises(MultipartError, match="part 1: no blank line ends its headers"):
        split_multipart(b"--B\r\nContent-Type: application/dicom\r\n--B--", "B")


def test_split_multipart_takes_linear_time():
    """The stdlib email parser needed 17.5 s for 10 MB of newlines; a body is split with find()."""
    size = 32 << 20
    raw = b"--B\r\nContent-Type: application/dicom\r\n\r\n" + b"\n\r" * (size // 2) + b"\r\n--B--"
    started = time.perf_counter()
    parts = split_multipart(raw, "B")
    assert len(parts[0].content) == size and time.perf_counter() - started < 2.0


# -- construction and configuration -----------------------------------------------------------------

def test_constructor_validates(tmp_path):
    spool = Spool(tmp_path)
    with pytest.raises(ValueError, match="nobody could store"):
        StowReceiver(spool, DicomWebConfig(port=0))
    with pytest.raises(ValueError, match="config.tls is set but no ssl_context"):
        StowReceiver(spool, parse_config({"dicomweb": {"tokens": [TOKEN], "tls": {"cert": "c", "key": "k"}}},
                                         tmp_path).dicomweb)
    with pytest.raises(ValueError, match="StowReceiver.spool must be a Spool"):
        StowReceiver(tmp_path, DicomWebConfig(tokens=(TOKEN,)))


def test_configured_receiver_serves(tmp_path, files):
    config = parse_config({"dicomweb": {"port": 8080, "base_path": "/web/dicom",
                                        "users": {"modality": "pw:with:colons"},
                                        "max_body_mb": 2}}, tmp_path).dicomweb
    stow = StowReceiver(Spool(tmp_path / "spool"), dataclasses.replace(config, port=0))
    with stow:
        rsp = requests.post(f"http://127.0.0.1:{stow.port}/web/dicom/studies", data=body(files[0].read_bytes()),
                            auth=("modality", "pw:with:colons"), headers={"Content-Type": MULTIPART}, timeout=10)
    assert rsp.status_code == 200 and len(list((tmp_path / "spool").rglob("*.dcm"))) == 1
    assert "pw:with:colons" not in repr(config)


def test_secrets_from_the_environment(tmp_path, files, monkeypatch):
    config = parse_config({"dicomweb": {"users_env": {"modality": "STOW_TEST_PASSWORD"},
                                        "tokens_env": ["STOW_TEST_TOKEN"]}}, tmp_path).dicomweb
    with pytest.raises(ValueError, match="dicomweb.users_env.modality: environment variable STOW_TEST_PASSWORD "
                                         "is not set"):
        StowReceiver(Spool(tmp_path / "spool"), config)
    monkeypatch.setenv("STOW_TEST_PASSWORD", "from-env")
    monkeypatch.setenv("STOW_TEST_TOKEN", "env-token\n")  # as read from a file: the line end is dropped
    with StowReceiver(Spool(tmp_path / "spool"), dataclasses.replace(config, port=0)) as stow:
        url, data = f"{stow.url}/studies", body(files[0].read_bytes())
        ok = requests.post(url, data=data, auth=("modality", "from-env"), headers={"Content-Type": MULTIPART},
                           timeout=10)
        token = requests.post(url, data=data, headers={"Content-Type": MULTIPART, "Authorization": "Bearer env-token"},
                              timeout=10)
        wrong = requests.post(url, data=data, auth=("modality", "STOW_TEST_PASSWORD"),
                              headers={"Content-Type": MULTIPART}, timeout=10)
    assert (ok.status_code, token.status_code, wrong.status_code) == (200, 200, 401)
    assert "from-env" not in repr(config)


def test_config_errors(tmp_path):
    with pytest.raises(ConfigError, match=r"config: dicomweb.users: the STOW-RS receiver needs credentials"):
        parse_config({"dicomweb": {"port": 8081}}, tmp_path)
    with pytest.raises(ConfigError, match=r"config: dicomweb: unknown key 'token' \(did you mean 'tokens'\?\)"):
        parse_config({"dicomweb": {"token": [TOKEN]}}, tmp_path)


@pytest.mark.slow
def test_a_pacs_pushing_over_stow_rs_to_the_node_gets_results_back(tmp_path, files):
    """STOW-RS into the whole node (``Node`` with ``dicomweb`` configured): the pushed series is
    spooled, assembled, routed to the test model, and its results reach a dcmtk storescp."""
    from neuroread.models import ModelRegistry
    from neuroread.node.app.node import Node
    from support.node_checks import delivered_outputs, wait_for
    from support.peers import StoreSCP
    from support.tiny_model import ENTRY

    scp = StoreSCP(tmp_path / "storescp")
    config = parse_config({
        "storage": {"root": str(tmp_path / "node")}, "assemble": {"stable_age_s": 1},
        "dicomweb": {"users": {"pacs": "s3cret"}},
        "destinations": {"pacs": {"type": "dicom", "host": "127.0.0.1", "port": scp.port, "called_ae": "STORESCP"}},
    }, tmp_path)
    try:
        with Node(config, ModelRegistry([ENTRY]), port=0, web_port=0, tick_s=0.1, deliver_interval_s=0.2) as node:
            client = DICOMwebClient(node.stow.url, session=create_session_from_user_pass("pacs", "s3cret"))
            datasets = [pydicom.dcmread(f) for f in files]
            reply = client.store_instances(datasets)
            assert {i.ReferencedSOPInstanceUID for i in reply.ReferencedSOPSequence} == \
                {str(ds.SOPInstanceUID) for ds in datasets}
            outputs = wait_for(lambda: delivered_outputs(node, scp), 90, "the job's results at storescp")
            job = node.store.list()[0]
    finally:
        scp.stop()
    assert job.state == "done" and job.inputs == {"ct": str(datasets[0].SeriesInstanceUID)}
    assert {ds.Modality for ds in outputs} >= {"SR", "KO", "SEG"}
    assert {str(ds.StudyInstanceUID) for ds in outputs} == {str(datasets[0].StudyInstanceUID)}


def test_series_already_held_under_another_study_is_a_failed_sop_nothing_written(receiver, files):
    first = pydicom.dcmread(files[0])
    assert receiver.post(body(part10(first))).status_code == 200
    moved = pydicom.dcmread(files[1])
    moved.StudyInstanceUID = pydicom.uid.generate_uid()
    answer = receiver.post(body(part10(moved)))
    assert answer.status_code == 409
    assert _failed(answer) == [(moved.SOPInstanceUID, 0xC000)]
    assert not (receiver.spool.root / moved.StudyInstanceUID).exists()
    assert len(receiver.files()) == 1
