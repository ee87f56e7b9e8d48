"""The command line as a user meets it: each command run as a subprocess."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pydicom
import pytest

from node.queue import JobStore
from node.receive import StorageSCP
from node.spool import Spool
from peers import free_port


def _cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "node.cli", *args], capture_output=True, text=True, cwd=cwd)


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
    assert "UNROUTED" in res.stdout  # no model registered yet: said, with the reason


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
    proc = subprocess.Popen([sys.executable, "-m", "node.cli", "serve", "-c", str(cfg)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert f"listening on 127.0.0.1:{port}" in line, line + proc.stderr.read() if proc.poll() is not None else line
        echo = subprocess.run(["echoscu", "-aec", "NEUROREAD", "127.0.0.1", str(port)], capture_output=True, text=True)
        assert echo.returncode == 0, echo.stderr
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "stopping" in out


def test_run_says_when_nothing_could_be_processed(tmp_path, phantom_sets):
    study = sorted(p.parent for p in phantom_sets["axspa-sij"].glob("*/truth.json"))[0]  # no model for it yet
    res = _cli("run", str(study), "--out", str(tmp_path / "out"))
    assert res.returncode == 1
    assert "no results" in res.stdout and "unrouted" in res.stderr


def test_models_lists_plugin_models_from_the_configuration(tmp_path):
    (tmp_path / "cfg.yaml").write_text("plugins: ['tiny_model:ENTRY']\n")
    env_path = str(Path(__file__).parent)
    res = subprocess.run([sys.executable, "-m", "node.cli", "models", "-c", str(tmp_path / "cfg.yaml")],
                         capture_output=True, text=True, env={**os.environ, "PYTHONPATH": env_path})
    assert res.returncode == 0, res.stderr
    assert "tiny-test 0.1.0" in res.stdout and "inputs: ct=CT" in res.stdout
    (tmp_path / "bad.yaml").write_text("plugins: ['tiny_model:NOPE']\n")
    res = subprocess.run([sys.executable, "-m", "node.cli", "models", "-c", str(tmp_path / "bad.yaml")],
                         capture_output=True, text=True, env={**os.environ, "PYTHONPATH": env_path})
    assert res.returncode == 2 and "plugin 'tiny_model:NOPE': module tiny_model has no 'NOPE'" in res.stderr


def test_jobs_unrouted_says_why_a_series_made_no_job(tmp_path, phantom_sets):
    from models.registry import default_registry
    from node.app import Node
    from node.config import load_config

    cfg = tmp_path / "node.yaml"
    cfg.write_text(f"storage:\n  root: {tmp_path / 'data'}\nassemble:\n  stable_age_s: 1\n")
    study = sorted(p.parent for p in phantom_sets["ms-csvd"].glob("*/truth.json"))[0]
    files = sorted(p for p in study.rglob("*.dcm") if p.parent.name != "masks")
    series_uids = {str(pydicom.dcmread(f, stop_before_pixels=True).SeriesInstanceUID) for f in files}
    with Node(load_config(cfg), default_registry(), port=0, tick_s=0.2) as node:
        sent = subprocess.run(["storescu", "-aec", "NEUROREAD", "127.0.0.1", str(node.port), *map(str, files)],
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
