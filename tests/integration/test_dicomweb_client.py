"""DICOMweb client side against a real Orthanc: STOW-RS and Orthanc REST delivery of real result
objects (through the outbox: wrong password, Orthanc down, then fixed), the STOW-RS outcome
mapping, a bearer token on the wire, forwarding to a dcmtk storescp through Orthanc, and pull
mode (``neuroread run --dicomweb``) with its errors.

One Orthanc per module (HTTP basic auth, user ``neuro``; a DicomModality ``SCP`` that is a dcmtk
storescp: the module_storescp fixture), emptied before each test that stores into it.
"""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pydicom
import pytest
import requests
from dicomweb_client import DICOMwebClient

from neuroread.cli import main
from neuroread.models import ModelRegistry
from neuroread.node.app.offline import run_files
from neuroread.node.config import parse_config
from neuroread.node.deliver import (
    Backoff,
    OrthancDestination,
    Outbox,
    OutboxItem,
    StowRsDestination,
    destination_from_dict,
    stow_outcomes,
)
from neuroread.node.intake.dicomweb import DicomWebError, HttpAuth, StudyNotFoundError, http_session, pull_study
from neuroread.training.phantoms.baseline import load_truth
from support.orthanc_peer import OrthancServer
from support.peers import free_port
from support.tiny_model import ENTRY

USER, PASSWORD = "neuro", "secret"
PW_ENV = "NEUROREAD_TEST_ORTHANC_PASSWORD"
KINDS = {"1.2.840.10008.5.1.4.1.1.88.34", "1.2.840.10008.5.1.4.1.1.88.59", "1.2.840.10008.5.1.4.1.1.66.4",
         "1.2.840.10008.5.1.4.1.1.30", "1.2.840.10008.5.1.4.1.1.7",
         "1.2.840.10008.5.1.4.1.1.88.22"}  # SR, KOS, SEG, PM, SC, text report
BACKOFF = Backoff(base=10, cap=60)


# -- fixtures --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def orthanc(tmp_path_factory, module_storescp):
    server = OrthancServer(tmp_path_factory.mktemp("orthanc"), users={USER: PASSWORD},
                           modalities={"SCP": ["STORESCP", "127.0.0.1", module_storescp.port]})
    yield server
    server.kill()  # its storage is thrown away: no clean shutdown needed


@pytest.fixture
def empty_orthanc(orthanc):
    """The module's Orthanc, running and holding no study."""
    if orthanc.proc is None or orthanc.proc.poll() is not None:
        orthanc.start()
    for study in orthanc.get("/studies"):
        requests.delete(f"{orthanc.url}/studies/{study}", auth=orthanc.auth, timeout=30).raise_for_status()
    return orthanc


@pytest.fixture(scope="module")
def ct_series(phantom_sets) -> list[Path]:
    """The files of the first head-CT phantom's CT series."""
    study = sorted(p.parent for p in phantom_sets["ct-hemorrhage"].glob("*/truth.json"))[0]
    return sorted((study / load_truth(study)["series"]["ct"]["folder"]).glob("*.dcm"))


@pytest.fixture(scope="module")
def results(ct_series, tmp_path_factory) -> list[pydicom.Dataset]:
    """The tiny model's result objects for that series (SR, KOS, SEG, PM, SCs), as the node makes them."""
    tmp = tmp_path_factory.mktemp("results")
    config = parse_config({"storage": {"root": str(tmp / "node")}}, tmp)
    written = run_files([ct_series[0].parent], tmp / "out", config, ModelRegistry([ENTRY]))
    datasets = [pydicom.dcmread(p) for p in written]
    assert {str(ds.SOPClassUID) for ds in datasets} == KINDS
    return datasets


@pytest.fixture
def password(monkeypatch):
    monkeypatch.setenv(PW_ENV, PASSWORD)


def uids(datasets) -> set[str]:
    return {str(ds.SOPInstanceUID) for ds in datasets}


def qido_instances(orthanc: OrthancServer, study: str) -> set[str]:
    """The SOP Instance UIDs Orthanc's DICOMweb lists for ``study`` (QIDO-RS)."""
    client = DICOMwebClient(orthanc.dicomweb_url, session=http_session(HttpAuth(USER, PASSWORD)))
    return {r["00080018"]["Value"][0] for r in client.search_for_instances(study)}


def outbox(tmp_path: Path, *destinations, now: list[float]) -> Outbox:
    return Outbox(f"sqlite:///{tmp_path / 'outbox.db'}", tmp_path / "outbox", destinations, backoff=BACKOFF,
                  clock=lambda: now[0], fsync=False)


def stow(orthanc: OrthancServer, **kw) -> StowRsDestination:
    return StowRsDestination(name="web", url=orthanc.dicomweb_url, username=USER, **kw)


# -- STOW-RS ---------------------------------------------------------------------------------------
def test_stowrs_delivers_results_to_orthanc_dicomweb(empty_orthanc, results, tmp_path, password):
    now = [1000.0]
    box = outbox(tmp_path, stow(empty_orthanc, password_env=PW_ENV, batch_size=2), now=now)
    assert box.add("job-1", results, ["web"]) == len(results)
    report = box.deliver_due()
    assert (report.sent, report.rejected, report.retrying) == (len(results), 0, 0)
    rows = box.status("job-1")
    assert {r.state for r in rows} == {"sent"} and {r.status_code for r in rows} == {200}
    assert qido_instances(empty_orthanc, str(results[0].StudyInstanceUID)) == uids(results)
    stored = requests.get(f"{empty_orthanc.url}/instances", params={"expand": ""}, auth=empty_orthanc.auth,
                          timeout=30).json()
    assert len(stored) == len(results)
    assert box.deliver_due(now[0] + 3600).sent == 0  # nothing left to send


def test_stowrs_wrong_password_then_orthanc_down_then_fixed(empty_orthanc, results, tmp_path, password):
    """401 → retrying with a message about the credentials; Orthanc down → retrying; fixed → sent."""
    study = str(results[0].StudyInstanceUID)
    now = [1000.0]
    box = outbox(tmp_path, stow(empty_orthanc, password="wrong", batch_size=3), now=now)
    box.add("job-1", results, ["web"])
    assert box.deliver_due().retrying == len(results)
    rows = box.status("job-1")
    assert {r.state for r in rows} == {"retrying"}
    # one request was refused; the other batches were not tried, with the same reason
    assert [r.status_code for r in rows] == [401] * 3 + [None] * (len(results) - 3)
    assert all(r.last_error.startswith("not tried: STOW-RS") for r in rows[3:])
    assert all("401 Unauthorized" in r.last_error and "basic auth as 'neuro'" in r.last_error
               and "credentials" in r.last_error and "wrong" not in r.last_error for r in rows)
    assert {r.next_attempt_at for r in rows} == {now[0] + BACKOFF.delay(1)}
    assert qido_instances(empty_orthanc, study) == set()

    # the operator fixes the password and restarts the node; meanwhile Orthanc went down
    empty_orthanc.kill()
    box = outbox(tmp_path, stow(empty_orthanc, password_env=PW_ENV), now=now)
    assert box.deliver_due().retrying == 0  # not due before the back-off
    now[0] += BACKOFF.delay(1)
    assert box.deliver_due().retrying == len(results)
    rows = box.status("job-1")
    assert {r.attempts for r in rows} == {2} and {r.status_code for r in rows} == {None}
    assert all("cannot reach it: connection refused" in r.last_error for r in rows)
    assert {r.next_attempt_at for r in rows} == {now[0] + BACKOFF.delay(2)}

    empty_orthanc.start()
    now[0] += BACKOFF.delay(2)
    assert box.deliver_due().sent == len(results)
    assert {r.state for r in box.status("job-1")} == {"sent"}
    assert qido_instances(empty_orthanc, study) == uids(results)


def test_stowrs_conflict_rejects_the_failed_instances_and_sends_the_others(empty_orthanc, results, tmp_path):
    """Orthanc answers 409 with a Failed SOP Sequence for an instance of another study than the
    request's; in a request that mixes, the Referenced SOP Sequence ones are sent."""
    other_study = "1.2.826.0.1.3680043.8.498.1"
    box = outbox(tmp_path, stow(empty_orthanc, password=PASSWORD), now=[1000.0])
    box.add("job-1", results, ["web"])
    items = box.due()
    good, bad = items[:3], items[3:5]
    foreign = [OutboxItem(**{**vars(i), "study_uid": other_study}) for i in bad]  # rows that lie about the study
    dest = stow(empty_orthanc, password=PASSWORD)

    outcomes = dest.send(foreign)
    assert [o.result for o in outcomes] == ["rejected", "rejected"]
    assert {o.status_code for o in outcomes} == {409}
    assert all("409 Conflict: failure reason 0x0110" in o.comment for o in outcomes)

    # one request (study of `good`) holding an instance of another study: only that one fails
    mixed_study = good[0].study_uid
    stray = OutboxItem(**{**vars(bad[0]), "study_uid": mixed_study, "path": tmp_path / "stray.dcm"})
    ds = pydicom.dcmread(bad[0].path)
    ds.StudyInstanceUID = other_study
    ds.save_as(stray.path, enforce_file_format=True)
    outcomes = {o.sop_instance_uid: o for o in dest.send(good + [stray])}
    assert [outcomes[i.sop_instance_uid].result for i in good] == ["sent"] * 3
    assert outcomes[stray.sop_instance_uid].result == "rejected"
    assert "failure reason 0x0110" in outcomes[stray.sop_instance_uid].comment
    assert qido_instances(empty_orthanc, mixed_study) == {i.sop_instance_uid for i in good}


def _response(status: int, body: bytes | dict, url: str = "http://pacs/dicom-web/studies/1.2.3") -> requests.Response:
    rsp = requests.Response()
    rsp.status_code, rsp.url = status, url
    rsp._content = json.dumps(body).encode() if isinstance(body, dict) else body
    return rsp


def _sop_item(uid: str, tag: str | None = None, value: int | None = None) -> dict:
    item = {"00081150": {"vr": "UI", "Value": ["1.2.840.10008.5.1.4.1.1.7"]}, "00081155": {"vr": "UI", "Value": [uid]}}
    if tag:
        item[tag] = {"vr": "US", "Value": [value]}
    return item


def test_stow_outcome_mapping_per_status(tmp_path):
    items = [OutboxItem(n, "web", f"1.2.3.{n}", "1.2.840.10008.5.1.4.1.1.7", "1.2.840.10008.1.2.1", "1.2.3",
                        "1.2.3.9", tmp_path / f"{n}.dcm") for n in (1, 2, 3)]
    # 202: one failed (0xA700 out of resources), one stored with a warning (0xB000), one not listed
    reply = {"00081198": {"vr": "SQ", "Value": [_sop_item("1.2.3.1", "00081197", 0xA700)]},
             "00081199": {"vr": "SQ", "Value": [_sop_item("1.2.3.2", "00081196", 0xB000)]}}
    out = stow_outcomes(items, _response(202, reply))
    assert [(o.result, o.status_code) for o in out] == [("rejected", 202), ("sent", 202), ("retry", 202)]
    assert "failure reason 0xA700" in out[0].comment and out[1].comment == "warning 0xB000"
    assert "not in the reply" in out[2].comment
    # 200 with an empty body: all stored
    assert [o.result for o in stow_outcomes(items, _response(200, b""))] == ["sent"] * 3
    # other 4xx without per-instance detail: rejected with the status and an excerpt of the body
    out = stow_outcomes(items, _response(413, b"request entity too large: limit is 1 MB"))
    assert {(o.result, o.status_code) for o in out} == {("rejected", 413)}
    assert "413 Request Entity Too Large: request entity too large: limit is 1 MB" in out[0].comment
    out = stow_outcomes(items, _response(415, b"<html>" + b"x" * 500 + b"</html>"))
    assert {o.result for o in out} == {"rejected"} and len(out[0].comment) < 300
    # credentials, server errors, rate limits: retried, with why
    out = stow_outcomes(items, _response(403, b""), HttpAuth(token="t0ken"))
    assert {o.result for o in out} == {"retry"} and "refused a bearer token" in out[0].comment
    assert "t0ken" not in out[0].comment
    for status in (500, 503, 429, 404):
        assert {o.result for o in stow_outcomes(items, _response(status, b"busy"))} == {"retry"}, status


def test_http_settings_are_checked_and_secrets_stay_out_of_sight(tmp_path, monkeypatch):
    base = {"type": "stowrs", "name": "web", "url": "https://pacs.example/dicom-web"}
    cases = [
        ({"url": "pacs.example/dicom-web"}, r"destinations\.web\.url must be an http\(s\) URL"),
        ({"url": "https://neuro:secret@pacs.example/dicom-web"}, r"\.url: put credentials in username/password"),
        ({"username": "neuro", "password": "x", "token": "t"}, r"\.token: give either username \+ password"),
        ({"username": "neuro"}, r"\.password \(or password_env\): basic authentication needs both"),
        ({"username": "neuro", "password_env": "NEUROREAD_TEST_UNSET"},
         r"\.password_env: environment variable NEUROREAD_TEST_UNSET is not set"),
        ({"ca_file": str(tmp_path / "absent.pem")}, r"\.ca_file must name an existing file"),
        ({"verify": False, "ca_file": __file__}, r"\.verify: false turns certificate checks off"),
        ({"timeout": 0}, r"\.timeout must be a number > 0"),
        ({"batch_size": 0}, r"\.batch_size must be an integer >= 1"),
        ({"modalities": ["PACS"]}, r"\.modalities: unknown key"),
    ]
    monkeypatch.delenv("NEUROREAD_TEST_UNSET", raising=False)
    for extra, message in cases:
        with pytest.raises(ValueError, match=message):
            destination_from_dict({**base, **extra}, "destinations.web")
    with pytest.raises(ValueError, match=r"\.modalities must be a list of names"):
        destination_from_dict({"type": "orthanc", "name": "o", "url": "http://127.0.0.1:8042", "modalities": "PACS"},
                              "destinations.o")
    dest = destination_from_dict({**base, "username": "neuro", "password": "s3cret", "ca_file": __file__})
    assert "s3cret" not in repr(dest) and dest.url == "https://pacs.example/dicom-web"
    with dest.session(dest.auth()) as session:
        assert session.verify == __file__ and session.auth == ("neuro", "s3cret")
    with http_session(HttpAuth(token="t0ken"), verify=False) as session:
        assert session.verify is False and "t0ken" not in repr(session.auth)


class _Recorder(BaseHTTPRequestHandler):
    """Records each request's method, path and headers; answers 200 (STOW: empty body; QIDO: [])."""

    seen: list[tuple[str, str, dict]] = []

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        elif self.headers.get("Transfer-Encoding") == "chunked":
            while (size := int(self.rfile.readline().strip(), 16)):
                self.rfile.read(size + 2)
            self.rfile.readline()
        self.seen.append((self.command, self.path, dict(self.headers)))
        body = b"[]" if self.command == "GET" else b""
        self.send_response(200)
        self.send_header("Content-Type", "application/dicom+json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _answer

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def recorder():
    _Recorder.seen = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}", _Recorder.seen
    server.shutdown()
    server.server_close()


def test_bearer_token_goes_in_the_authorization_header(recorder, results, tmp_path, monkeypatch, capsys):
    url, seen = recorder
    monkeypatch.setenv("NEUROREAD_TEST_TOKEN", "tok-123")
    dest = destination_from_dict({"type": "stowrs", "name": "web", "url": url + "/dicom-web",
                                  "token_env": "NEUROREAD_TEST_TOKEN"})
    box = outbox(tmp_path, dest, now=[1000.0])
    box.add("job-1", results, ["web"])
    assert box.deliver_due().sent == len(results)
    method, path, headers = seen[0]
    study = str(results[0].StudyInstanceUID)
    assert (method, path) == ("POST", f"/dicom-web/studies/{study}")
    assert headers["Authorization"] == "Bearer tok-123"
    assert headers["Content-Type"].startswith('multipart/related; type="application/dicom"')
    assert "tok-123" not in repr(dest)
    # pull mode sends it too; the recorder knows no study: a clear error, exit 2
    rc = main(["run", "--dicomweb", url + "/dicom-web", "--study", study, "--token-env", "NEUROREAD_TEST_TOKEN",
               "--out", str(tmp_path / "out"), "-q"])
    assert rc == 2
    assert f"study {study} not found at {url}/dicom-web (QIDO-RS found no series)" in capsys.readouterr().err
    method, path, headers = seen[-1]
    assert method == "GET" and path.startswith(f"/dicom-web/studies/{study}/series")
    assert headers["Authorization"] == "Bearer tok-123"


# -- Orthanc REST ----------------------------------------------------------------------------------
def test_orthanc_destination_stores_and_forwards_to_a_modality(empty_orthanc, module_storescp, results, tmp_path, password):
    now = [1000.0]
    dest = destination_from_dict({"type": "orthanc", "name": "orthanc", "url": empty_orthanc.url, "username": USER,
                                  "password_env": PW_ENV, "modalities": ["SCP"]})
    box = outbox(tmp_path, dest, now=now)
    box.add("job-1", results, ["orthanc"])
    report = box.deliver_due()
    assert (report.sent, report.rejected, report.retrying) == (len(results), 0, 0)
    assert qido_instances(empty_orthanc, str(results[0].StudyInstanceUID)) == uids(results)
    assert uids(results) <= set(module_storescp.received())  # forwarded by Orthanc over C-STORE

    # a forward that fails leaves the (stored) objects to retry; storing again is idempotent
    broken = OrthancDestination(name="orthanc", url=empty_orthanc.url, username=USER, password=PASSWORD,
                                modalities=("SCP", "NOPE"))
    outcomes = broken.send(box.status("job-1"))
    assert {o.result for o in outcomes} == {"retry"}
    assert all("stored in Orthanc, but forward to modality NOPE failed: HTTP 404 Not Found: "
               "No modality with symbolic name: NOPE" in o.comment for o in outcomes)


def test_orthanc_destination_rejects_non_dicom_and_retries_when_unreachable(empty_orthanc, results, tmp_path):
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"not a DICOM file")
    item = OutboxItem(1, "orthanc", "1.2.3.4", "1.2.840.10008.5.1.4.1.1.7", "1.2.840.10008.1.2.1", "1.2.3", "1.2.3.9",
                      junk)
    dest = OrthancDestination(name="orthanc", url=empty_orthanc.url, username=USER, password=PASSWORD)
    [out] = dest.send([item])
    assert (out.result, out.status_code) == ("rejected", 400)
    assert "HTTP 400 Bad Request: Cannot parse an invalid DICOM file" in out.comment
    [out] = OrthancDestination(name="o", url=empty_orthanc.url, username=USER, password="wrong").send([item])
    assert (out.result, out.status_code) == ("retry", 401) and "refused basic auth as 'neuro'" in out.comment
    [out] = OrthancDestination(name="o", url=f"http://127.0.0.1:{free_port()}").send([item])
    assert out.result == "retry" and "cannot reach it: connection refused" in out.comment


def test_orthanc_destination_through_an_injected_rest_call(empty_orthanc, module_storescp, results, tmp_path):
    """The plugin's way: no HTTP client of ours, a callable (here one that calls the real Orthanc)."""
    calls = []

    def rest(method: str, path: str, body: bytes | str) -> tuple[int, bytes]:
        calls.append((method, path, type(body).__name__))
        kind = "application/dicom" if isinstance(body, bytes) else "application/json"
        r = requests.request(method, empty_orthanc.url + path, data=body, auth=(USER, PASSWORD),
                             headers={"Content-Type": kind}, timeout=30)
        return r.status_code, r.content

    dest = OrthancDestination(name="local", url="orthanc://local", modalities=("SCP",), rest=rest)
    box = outbox(tmp_path, dest, now=[1000.0])
    box.add("job-1", results, ["local"])
    assert box.deliver_due().sent == len(results)
    assert calls == [("POST", "/instances", "bytes")] * len(results) + [("POST", "/modalities/SCP/store", "str")]
    assert qido_instances(empty_orthanc, str(results[0].StudyInstanceUID)) == uids(results)

    def gone(method: str, path: str, body: bytes | str) -> tuple[int, bytes]:
        raise ConnectionRefusedError("Orthanc is shutting down")

    outcomes = OrthancDestination(name="local", url="orthanc://local", rest=gone).send(box.status("job-1"))
    assert {o.result for o in outcomes} == {"retry"}
    assert "Orthanc orthanc://local: cannot reach it: Orthanc is shutting down" in outcomes[0].comment
    with pytest.raises(ValueError, match="url must be an http"):
        OrthancDestination(name="local", url="orthanc://local")


# -- pull mode -------------------------------------------------------------------------------------
@pytest.fixture
def node_config(tmp_path) -> Path:
    cfg = tmp_path / "node.yaml"
    cfg.write_text(f"storage: {{root: {tmp_path / 'node'}}}\nplugins: ['support.tiny_model:ENTRY']\n"
                   "models: {ct-hemorrhage: {enabled: false}}\n")
    return cfg


def test_run_pulls_a_study_over_dicomweb_and_processes_it(empty_orthanc, ct_series, node_config, tmp_path,
                                                         monkeypatch, capsys):
    empty_orthanc.upload(ct_series)
    source = pydicom.dcmread(ct_series[0], stop_before_pixels=True)
    study, series = str(source.StudyInstanceUID), str(source.SeriesInstanceUID)
    monkeypatch.setenv("NEUROREAD_DICOMWEB_PASSWORD", PASSWORD)
    out, keep = tmp_path / "out", tmp_path / "inputs"
    rc = main(["run", "-c", str(node_config), "--dicomweb", empty_orthanc.dicomweb_url, "--study", study,
               "--user", USER, "--keep", str(keep), "--out", str(out), "-q"])
    printed = capsys.readouterr().out
    assert rc == 0, printed
    assert f"pulled {len(ct_series)} instances of 1 series of study {study}" in printed
    pulled = sorted((keep / series).glob("*.dcm"))
    expected = {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in ct_series}
    assert {p.stem for p in pulled} == expected
    written = sorted(out.rglob("*.dcm"))
    results = [pydicom.dcmread(p) for p in written]
    assert {str(ds.SOPClassUID) for ds in results} == KINDS
    assert {str(ds.StudyInstanceUID) for ds in results} == {study}
    assert f"wrote {len(written)} result objects under {out}" in printed
    assert all(str(p) in printed for p in written)
    sr = next(ds for ds in results if ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.34")
    refs = {str(s.SeriesInstanceUID) for e in sr.CurrentRequestedProcedureEvidenceSequence
            for s in e.ReferencedSeriesSequence}
    assert series in refs  # the pulled series is the evidence


def test_run_dicomweb_errors_are_clear(empty_orthanc, node_config, tmp_path, monkeypatch, capsys):
    url = empty_orthanc.dicomweb_url
    base = ["run", "-c", str(node_config), "--dicomweb", url, "--out", str(tmp_path / "out"), "-q"]
    monkeypatch.setenv("NEUROREAD_DICOMWEB_PASSWORD", PASSWORD)
    assert main([*base, "--study", "1.2.3.4.5", "--user", USER]) == 2
    assert f"study 1.2.3.4.5 not found at {url} (QIDO-RS found no series)" in capsys.readouterr().err
    monkeypatch.setenv("NEUROREAD_DICOMWEB_PASSWORD", "wrong")
    assert main([*base, "--study", "1.2.3.4.5", "--user", USER]) == 2
    err = capsys.readouterr().err
    assert "HTTP 401 Unauthorized" in err and "refused basic auth as 'neuro'" in err and "wrong" not in err
    monkeypatch.delenv("NEUROREAD_DICOMWEB_PASSWORD")
    assert main([*base, "--study", "1.2.3.4.5", "--user", USER]) == 2
    assert "put the password in the environment variable NEUROREAD_DICOMWEB_PASSWORD" in capsys.readouterr().err
    assert main([*base, "--study", "1.2.3/../4"]) == 2
    assert "--study" in capsys.readouterr().err
    assert main([*base]) == 2
    assert "--dicomweb needs --study" in capsys.readouterr().err
    assert main(["run", "somewhere", "--study", "1.2.3", "--out", str(tmp_path / "out")]) == 2
    assert "--study only go with --dicomweb" in capsys.readouterr().err
    down = f"http://127.0.0.1:{free_port()}/dicom-web"
    assert main(["run", "--dicomweb", down, "--study", "1.2.3", "--out", str(tmp_path / "out"), "-q"]) == 2
    assert f"cannot reach {down}: connection refused" in capsys.readouterr().err


def test_pull_study_errors_name_url_and_status(empty_orthanc, tmp_path):
    with pytest.raises(StudyNotFoundError) as info:
        pull_study(empty_orthanc.dicomweb_url, "1.2.3.4.5", tmp_path, auth=HttpAuth(USER, PASSWORD), progress=False)
    assert info.value.status == 200 and info.value.url == empty_orthanc.dicomweb_url
    with pytest.raises(DicomWebError) as info:
        pull_study(empty_orthanc.dicomweb_url, "1.2.3.4.5", tmp_path, auth=HttpAuth(USER, "nope"), progress=False)
    assert info.value.status == 401 and "/dicom-web/studies/1.2.3.4.5/series" in info.value.url
    with pytest.raises(StudyNotFoundError) as info:  # a 404: no such study, or no DICOMweb there
        pull_study(empty_orthanc.url + "/wrong-root", "1.2.3.4.5", tmp_path, auth=HttpAuth(USER, PASSWORD),
                   progress=False)
    assert info.value.status == 404
    assert str(info.value) == (f"study 1.2.3.4.5 not found: HTTP 404 Not Found from {empty_orthanc.url}/wrong-root"
                               f"/studies/1.2.3.4.5/series?includefield=NumberOfSeriesRelatedInstances "
                               f"(is {empty_orthanc.url}/wrong-root the DICOMweb root?)")
    with pytest.raises(ValueError, match="not in the URL"):
        pull_study(f"http://neuro:secret@127.0.0.1:{empty_orthanc.http_port}/dicom-web", "1.2.3", tmp_path)
    assert not list(tmp_path.iterdir())  # nothing written on any error
