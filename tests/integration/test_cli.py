"""The command line as a user meets it: each command run as a subprocess."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from neuroread.node.deliver import Backoff, DicomDestination, FolderDestination, Outbox
from neuroread.node.jobs.store import JobStore
from neuroread.node.receive.dimse import StorageSCP
from neuroread.node.spool.store import Spool
from neuroread.node.tools.dcmtk import dcmtk_tool
from support.peers import free_port

SR = "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR Storage


def _cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "neuroread.cli", *args], capture_output=True, text=True, cwd=cwd)


@pytest.mark.parametrize("command", [[], ["models"], ["config", "check"], ["route", "explain"], ["jobs"], ["replay"]])
def test_every_command_has_help(command):
    res = _cli(*command, "--help")
    assert res.returncode == 0, res.stderr
    assert "usage: neuroread" in res.stdout


def test_config_check_prints_effective_settings_and_names_bad_keys(tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text("node:\n  port: 11200\ndestinations:\n  archive: {type: folder, path: results}\n"
                    "  pacs: {type: dicom, host: 127.0.0.1, port: 104, called_ae: PACS}\n")
    res = _cli("config", "check", "-c", str(good))
    assert res.returncode == 0, res.stderr
    assert "port: 11200" in res.stdout and "archive" in res.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text("node:\n  prot: 11200\n")
    res = _cli("config", "check", "-c", str(bad))
    assert res.returncode == 2
    assert "node" in res.stderr and "'prot'" in res.stderr and "port" in res.stderr


def test_config_check_hides_passwords_and_tokens(tmp_path):
    conf = tmp_path / "node.yaml"
    conf.write_text("dicomweb: {users: {pacs: hunter2-pw}, tokens: [tok-abc123], users_env: {ris: RIS_PW}}\n"
                    "destinations:\n  web: {type: stowrs, url: 'http://127.0.0.1:9/dicom-web', username: neuro,"
                    " password: dest-pw-77}\n  cloud: {type: stowrs, url: 'https://x/dicom-web', token: tok-dest-9}\n")
    res = _cli("config", "check", "-c", str(conf))
    assert res.returncode == 0, res.stderr
    for secret in ("hunter2-pw", "tok-abc123", "dest-pw-77", "tok-dest-9"):
        assert secret not in res.stdout
    assert "pacs: <hidden>" in res.stdout and "password: <hidden>" in res.stdout and "RIS_PW" in res.stdout
    assert "username: neuro" in res.stdout


def test_route_explain_names_the_sequence_class_from_parameters(phantom_sets):
    study = sorted(p.parent for p in phantom_sets["ms-csvd"].glob("*/truth.json"))[0]
    res = _cli("route", "explain", str(study))
    assert res.returncode == 0, res.stderr
    assert "sequence: FLAIR (from parameters)" in res.stdout
    assert "result: routed to ms-csvd slot flair by 'ms-csvd/flair'" in res.stdout


# A line of the log format (time, level, logger name), or one naming a node or pynetdicom logger.
LOG_LINE = re.compile(r"\b(DEBUG|INFO|WARNING|ERROR|CRITICAL) [\w.]+: |\b(node|pynetdicom)\.\w+: ")


def test_route_explain_prints_only_its_explanation(phantom_sets):
    study = sorted(p.parent for p in phantom_sets["ms-csvd"].glob("*/truth.json"))[0]
    res = _cli("route", "explain", str(study))
    assert res.returncode == 0, res.stderr
    assert "sequence: FLAIR (from parameters)" in res.stdout and "result: routed to ms-csvd" in res.stdout
    for line in (res.stdout + res.stderr).splitlines():
        assert " INFO " not in line and not LOG_LINE.search(line), line
    verbose = _cli("-v", "route", "explain", str(study))  # -v still gives the node's log, on stderr
    assert " INFO neuroread.node." in verbose.stderr and " INFO " not in verbose.stdout


T0 = 1_700_000_000.0


def _outputs(n: int) -> list[Dataset]:
    """``n`` small Part 10-ready result objects (SR), as the encode stage hands them to the outbox."""
    study, series = generate_uid(), generate_uid()
    out = []
    for _ in range(n):
        ds = Dataset()
        ds.SOPClassUID, ds.SOPInstanceUID = SR, generate_uid()
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.Modality = study, series, "SR"
        ds.PatientName, ds.PatientID = "Doe^Jane", "MRN-0042"
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = SR, ds.SOPInstanceUID
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        out.append(ds)
    return out


def test_jobs_show_gives_each_destinations_deliveries(tmp_path):
    data = tmp_path / "data"
    down = free_port()  # nothing listens there: every association fails, the rows retry
    cfg = tmp_path / "node.yaml"
    cfg.write_text(f"storage:\n  root: {data}\ndestinations:\n"
                   f"  archive: {{type: folder, path: {tmp_path / 'archive'}}}\n"
                   f"  pacs: {{type: dicom, host: 127.0.0.1, port: {down}, called_ae: PACS}}\n")
    data.mkdir()
    store = JobStore(f"sqlite:///{data / 'state.db'}")
    job = store.enqueue("tiny-test", "0.1.0", {"ct": "1.2.3"}, {"ct": ["1.2.3.1", "1.2.3.2"]})
    objects = _outputs(2)
    archive = FolderDestination(name="archive", path=tmp_path / "archive")
    pacs = DicomDestination(name="pacs", host="127.0.0.1", port=down, called_ae="PACS", calling_ae="NEUROREAD",
                            connect_timeout=2, acse_timeout=5, dimse_timeout=5, network_timeout=5)
    outbox = Outbox(store.engine, data / "outbox", [archive, pacs], backoff=Backoff(base=10.0, cap=40.0),
                    clock=lambda: T0, fsync=False)
    assert outbox.add(str(job.id), objects, ["archive", "pacs"]) == 4
    assert outbox.deliver_due(T0).sent == 2
    assert outbox.deliver_due(T0 + 10).retrying == 2  # the second try: attempts 2, next at T0 + 10 + 20
    error = next(i.last_error for i in outbox.status(str(job.id)) if i.destination == "pacs")
    assert "cannot connect" in error
    store.close()

    res = _cli("jobs", "show", str(job.id), "-c", str(cfg))
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert "input ct: series 1.2.3 (2 instances)" in res.stdout
    assert "Doe" not in res.stdout and "MRN-0042" not in res.stdout  # UIDs, states and errors only
    summary = {line.split(":", 1)[0].strip(): line for line in lines if re.match(r" {4}\S", line)}
    assert summary["archive"].strip() == "archive: 2 sent"
    sent_at, retry_at = (datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%d %H:%M:%S") for t in (T0, T0 + 30))
    assert summary["pacs"].strip() == f"pacs: 2 retrying (attempt 2, next {retry_at}, last error: {error})"
    rows = [re.split(r"\s{2,}", line.strip()) for line in lines if line.startswith("      ")]
    header = ["SOP Instance UID", "object", "state", "attempts", "status", "sent / next try", "last error"]
    assert rows[0] == rows[3] == header  # one table per destination, archive's first
    for ds in objects:
        uid = ds.SOPInstanceUID
        assert [uid, "Comprehensive 3D SR", "sent", "1", "-", f"sent {sent_at}", "-"] in rows[1:3]
        retrying = [r for r in rows[4:] if r[0] == uid]
        assert len(retrying) == 1 and retrying[0][:6] == [uid, "Comprehensive 3D SR", "retrying", "2", "-",
                                                          f"next {retry_at}"]
        assert "cannot connect" in retrying[0][6]
    assert lines.index(summary["archive"]) < lines.index(summary["pacs"])  # grouped by destination

    unknown = _cli("jobs", "show", "999", "-c", str(cfg))
    assert unknown.returncode == 2 and "no job 999" in unknown.stderr


def test_jobs_lists_and_shows_the_audit_trail(tmp_path):
    cfg = tmp_path / "node.yaml"
    cfg.write_text(f"storage:\n  root: {tmp_path / 'data'}\n")
    assert "no job database yet" in _cli("jobs", "-c", str(cfg)).stdout
    (tmp_path / "data").mkdir()
    store = JobStore(f"sqlite:///{tmp_path / 'data' / 'state.db'}")
    job = store.enqueue("tiny-test", "0.1.0", {"ct": "1.2.3"}, {"ct": ["1.2.3.1", "1.2.3.2"]})
    store.close()
    res = _cli("jobs", "-c", str(cfg))
    assert res.returncode == 0 and "tiny-test 0.1.0" in res.stdout and "queued" in res.stdout
    res = _cli("jobs", "show", str(job.id), "-c", str(cfg))
    assert "input ct: series 1.2.3 (2 instances)" in res.stdout and "queued" in res.stdout
    res = _cli("jobs", "retry", str(job.id), "-c", str(cfg))
    assert res.returncode == 2 and "error" in res.stderr  # only a failed job can be retried


def test_replay_sends_a_study_to_a_real_scp_and_fails_loudly_when_down(tmp_path, phantom_sets):
    study = sorted(p.parent for p in phantom_sets["ct-hemorrhage"].glob("*/truth.json"))[0]
    n = len(list(study.rglob("*.dcm")))
    spool = Spool(tmp_path / "spool", fsync=False)
    with StorageSCP(spool, port=0) as scp:
        port = scp.port
        res = _cli("replay", str(study), "--to", f"127.0.0.1:{port}", "-q")
        assert res.returncode == 0, res.stdout + res.stderr
        assert f"sent {n}, failed 0" in res.stdout
    assert len(list((tmp_path / "spool").rglob("*.dcm"))) == n
    res = _cli("replay", str(study), "--to", f"127.0.0.1:{port}", "-q")  # the SCP has stopped
    assert res.returncode == 1 and f"failed {n}" in res.stdout


def test_serve_answers_echo_and_stops_cleanly_on_sigterm(tmp_path):
    import signal

    port = free_port()
    cfg = tmp_path / "node.yaml"
    cfg.write_text(f"node:\n  port: {port}\nstorage:\n  root: {tmp_path / 'data'}\n")
    proc = subprocess.Popen([sys.executable, "-m", "neuroread.cli", "serve", "-c", str(cfg)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert f"listening on 127.0.0.1:{port}" in line, line + proc.stderr.read() if proc.poll() is not None else line
        echo = subprocess.run([dcmtk_tool("echoscu"), "-aec", "NEUROREAD", "127.0.0.1", str(port)], capture_output=True, text=True)
        assert echo.returncode == 0, echo.stderr
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "stopping" in out


def test_run_says_when_nothing_could_be_processed(tmp_path, phantom_sets):
    from support.node_process import copy_series

    study = sorted(p.parent for p in phantom_sets["ad-lrp"].glob("*/truth.json"))[0]
    knee = tmp_path / "knee"  # a 3D T1 of a knee: no model takes it (ad-lrp wants a head)
    copy_series(sorted((study / "S01").glob("*.dcm")), knee, modify=lambda ds: setattr(ds, "BodyPartExamined", "KNEE"))
    res = _cli("run", str(knee), "--out", str(tmp_path / "out"))
    assert res.returncode == 1
    assert "no results" in res.stdout and "unrouted" in res.stderr


def test_models_lists_plugin_models_from_the_configuration(tmp_path):
    (tmp_path / "cfg.yaml").write_text("plugins: ['support.tiny_model:ENTRY']\n"
                                       "models: {tiny-test: {thresholds: {finding: 0.3}}}\n")
    env_path = str(Path(__file__).resolve().parents[1])
    res = subprocess.run([sys.executable, "-m", "neuroread.cli", "models", "-c", str(tmp_path / "cfg.yaml")],
                         capture_output=True, text=True, env={**os.environ, "PYTHONPATH": env_path})
    assert res.returncode == 0, res.stderr
    assert "tiny-test 0.1.0 [ready]: " in res.stdout and "inputs: ct=CT" in res.stdout
    assert "outcome findings: multi-label finding@0.3" in res.stdout  # the configured threshold, not the spec's
    committed = Path(env_path) / "data" / "tiny-test.pt"  # the weights the model runs with: its committed ones
    assert f"weights: demo weights (synthetic phantoms) {committed} (sha256 " in res.stdout, res.stdout
    (tmp_path / "bad.yaml").write_text("plugins: ['support.tiny_model:NOPE']\n")
    res = subprocess.run([sys.executable, "-m", "neuroread.cli", "models", "-c", str(tmp_path / "bad.yaml")],
                         capture_output=True, text=True, env={**os.environ, "PYTHONPATH": env_path})
    assert res.returncode == 2 and "plugin 'support.tiny_model:NOPE': module support.tiny_model has no 'NOPE'" in res.stderr


def test_models_shows_each_models_headline_card_metrics():
    import json

    from neuroread.models.registry import default_registry

    res = _cli("models")
    assert res.returncode == 0, res.stderr
    blocks = {b.split(" ", 1)[0]: b for b in res.stdout.replace("\n  ", "  ").splitlines()}  # a model per line
    for name, shown in (("cmb-svd", ("subtype.auc_weighted", "subtype.balanced_accuracy", "detection.recall",
                                     "detection.fp_per_scan", "detection.dice")),
                        ("ms-csvd", ("diagnosis.auc", "diagnosis.balanced_accuracy")),
                        ("ct-hemorrhage", ("f1_macro", "auc_macro"))):
        card = json.loads(Path(f"{default_registry().entry(name).demo_weights}.card.json").read_text())
        metrics = card["heldout_metrics"]
        for key in shown:
            assert f"{key} {metrics[key]:.3f}" in blocks[name], (name, key, blocks[name])


def test_jobs_unrouted_says_why_a_series_made_no_job(tmp_path, phantom_sets):
    from neuroread.models.registry import default_registry
    from neuroread.node.app.node import Node
    from neuroread.node.config import load_config

    cfg = tmp_path / "node.yaml"
    # the FLAIR's model switched off: its series make no job, and say why
    cfg.write_text(f"storage:\n  root: {tmp_path / 'data'}\nassemble:\n  stable_age_s: 1\n"
                   "models:\n  ms-csvd:\n    enabled: false\n")
    study = sorted(p.parent for p in phantom_sets["ms-csvd"].glob("*/truth.json"))[0]
    files = sorted(p for p in study.rglob("*.dcm") if p.parent.name != "masks")
    series_uids = {str(pydicom.dcmread(f, stop_before_pixels=True).SeriesInstanceUID) for f in files}
    with Node(load_config(cfg), default_registry(), port=0, tick_s=0.2) as node:
        sent = subprocess.run([dcmtk_tool("storescu"), "-aec", "NEUROREAD", "127.0.0.1", str(node.port), *map(str, files)],
                              env={**os.environ, "TCP_NODELAY": "1"}, capture_output=True, text=True, timeout=120)
        assert sent.returncode == 0, sent.stderr
        deadline = time.monotonic() + 60
        while not all(node.routing(uid) for uid in series_uids):
            assert time.monotonic() < deadline, "the node did not record the series' routing"
            time.sleep(0.2)
    res = _cli("jobs", "unrouted", "-c", str(cfg))
    assert res.returncode == 0, res.stderr
    lines = [line for line in res.stdout.splitlines() if " unrouted: " in line]
    assert sorted(line.split()[3] for line in lines) == sorted(series_uids)  # every series, with a reason
    assert all(line.split(" unrouted: ", 1)[1].strip() for line in lines)
    assert all("switched off: ms-csvd" in line for line in lines)
