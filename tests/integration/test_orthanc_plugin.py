"""neuroread inside a real Orthanc (orthanc-python plugin ``orthanc/neuroread_plugin.py``).

One Orthanc per module, on loopback ports with its own storage, the DICOMweb and Python
plugins, and the node's YAML registering the test model (``tests/support/tiny_model.py``). dcmtk
``storescu`` sends phantom head CTs to Orthanc; the plugin runs the pipeline; the results are
found by QIDO-RS on Orthanc's DICOMweb. Faults: a model that fails (the job is failed with the
reason, Orthanc keeps serving, the REST route retries it), and Orthanc restarted while a job
runs (the job is recovered and completes once, its results stored once).
"""
from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pydicom
import pytest
import requests
from dicomweb_client.api import DICOMwebClient

from neuroread.node.tools.dcmtk import dcmtk_tool
from neuroread.node.tools.orthanc_config import orthanc_configuration
from neuroread.training.phantoms.baseline import load_truth
from support.node_checks import wait_for
from support.orthanc_peer import OrthancServer
from support.tiny_model import FAIL_ENV, HOLD_ENV, SPEC

REPO = Path(__file__).resolve().parents[2]
PLUGIN = REPO / "orthanc" / "neuroread_plugin.py"
OUR_KINDS = {"SR", "KO", "SEG", "OT"}  # plus the parametric map's modality (that of its source)

STABLE_AGE = 3  # s; long enough to kill Orthanc between a series' last instance and its stability

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cts(phantom_sets) -> list[list[Path]]:
    """The CT series of the session's head-CT phantoms: one list of files per study."""
    out = []
    for study in sorted(p.parent for p in phantom_sets["ct-hemorrhage"].glob("*/truth.json")):
        folder = study / load_truth(study)["series"]["ct"]["folder"]
        out.append(sorted(folder.glob("*.dcm")))
    return out


@pytest.fixture(scope="module")
def faults(tmp_path_factory):
    """Files whose existence makes the test model fail or hold (see tests/support/tiny_model.py)."""
    folder = tmp_path_factory.mktemp("faults")
    return {"fail": folder / "fail", "hold": folder / "hold"}


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory, faults, module_storescp):
    folder = tmp_path_factory.mktemp("orthanc-plugin")
    (folder / "node.yaml").write_text(
        f"storage: {{root: {folder / 'node'}}}\n"
        "plugins: ['support.tiny_model:ENTRY']\n"
        # the product head-CT model (committed weights) would take the same CTs: only the test model here
        "models: {ct-hemorrhage: {enabled: false}}\n")
    env = {FAIL_ENV: str(faults["fail"]), HOLD_ENV: str(faults["hold"])}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # Orthanc (and so the plugin) inherits them
    # the plugin's section as `neuroread orthanc-config` writes it, plus the tests folder (tiny_model)
    section = orthanc_configuration(folder, node_config=folder / "node.yaml")["NeuroRead"]
    section["PythonPath"].append(str(REPO / "tests"))
    section["PollSeconds"] = 1
    section["ForwardToModalities"] = ["SCP"]
    server = OrthancServer(folder, python_script=PLUGIN, ready_path="/neuroread/jobs", start_timeout=180,
                           stable_age=STABLE_AGE, users={"neuro": "secret"}, extra={"NeuroRead": section},
                           modalities={"SCP": ["STORESCP", "127.0.0.1", module_storescp.port]})  # results forwarded there
    yield server
    server.stop()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def storescu(orthanc: OrthancServer, files) -> None:
    proc = subprocess.run([dcmtk_tool("storescu"), "-aet", "PACS", "-aec", orthanc.aet, "127.0.0.1", str(orthanc.dicom_port),
                           *map(str, files)], env={**os.environ, "TCP_NODELAY": "1"},
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


def jobs_of(orthanc: OrthancServer, series_uid: str) -> list[dict]:
    return [j for j in orthanc.get("/neuroread/jobs")["jobs"]
            if series_uid in j["inputs"].values() and j["model"] == SPEC.name]


def one_job(orthanc: OrthancServer, series_uid: str, state: str, timeout: float = 90) -> dict:
    """The one job of ``series_uid`` once it is in ``state`` (with its audit and deliveries)."""
    deadline = time.monotonic() + timeout
    while (jobs := jobs_of(orthanc, series_uid)) == [] or jobs[0]["state"] != state:
        if time.monotonic() > deadline:
            pytest.fail(f"no {state} job for series {series_uid} after {timeout:.0f} s; jobs: {jobs}\n"
                        f"Orthanc log:\n{orthanc.log()[-4000:]}")
        time.sleep(0.25)
    assert len(jobs) == 1, jobs
    return orthanc.get(f"/neuroread/jobs/{jobs[0]['id']}")


def result_series(orthanc: OrthancServer, study_uid: str) -> dict[str, list[str]]:
    """QIDO-RS on Orthanc's DICOMweb: series UID → SOP Instance UIDs, for our results only."""
    client = DICOMwebClient(orthanc.dicomweb_url, session=_session(orthanc))
    out = {}
    for series in client.search_for_series(study_uid, search_filters={"Manufacturer": "neuroread"},
                                           fields=["Manufacturer"]):
        series_uid = series["0020000E"]["Value"][0]
        instances = client.search_for_instances(study_uid, series_uid)
        out[series_uid] = [i["00080018"]["Value"][0] for i in instances]
    return out


def _session(orthanc: OrthancServer) -> requests.Session:
    session = requests.Session()
    session.auth = orthanc.auth
    return session


def test_storescu_to_orthanc_to_plugin_results_found_by_qido(orthanc, cts, module_storescp):
    files = cts[0]
    header = pydicom.dcmread(files[0], stop_before_pixels=True)
    storescu(orthanc, files)
    job = one_job(orthanc, header.SeriesInstanceUID, "done")
    assert job["model"] == SPEC.name and job["instances"] == {"ct": len(files)}
    events = [e["event"] for e in job["audit"]]
    assert events[0] == "queued" and "outbox" in events and events[-1] == "done", events
    outputs = set(job["outputs"]["sop_instance_uids"])

    def stored():
        found = result_series(orthanc, header.StudyInstanceUID)
        return found if {u for uids in found.values() for u in uids} >= outputs else None
    found = wait_for(stored, 60, "the results in Orthanc (QIDO-RS)")
    assert {u for uids in found.values() for u in uids} == outputs  # each once, nothing else
    client = DICOMwebClient(orthanc.dicomweb_url, session=_session(orthanc))
    modalities = {client.search_for_series(header.StudyInstanceUID, search_filters={"SeriesInstanceUID": s})[0]
                  ["00080060"]["Value"][0] for s in found}
    assert {"SR", "KO", "SEG", "OT"} <= modalities, modalities
    deliveries = wait_for(lambda: (d := orthanc.get(f"/neuroread/jobs/{job['id']}")["deliveries"])
                          and all(i["state"] == "sent" for i in d) and d, 30, "the outbox to say sent")
    assert sorted(d["sop_instance_uid"] for d in deliveries) == sorted(outputs)
    assert {d["destination"] for d in deliveries} == {"orthanc"}
    # ... and forwarded by Orthanc to its modality SCP (sent means forwarded too)
    assert set(module_storescp.received()) == outputs
    # the SR as Orthanc serves it over WADO-RS: our findings, the demo warning
    sr_series = next(s for s in found if client.search_for_series(
        header.StudyInstanceUID, search_filters={"SeriesInstanceUID": s})[0]["00080060"]["Value"][0] == "SR")
    sr = client.retrieve_instance(header.StudyInstanceUID, sr_series, found[sr_series][0])
    assert sr.StudyInstanceUID == header.StudyInstanceUID and sr.Manufacturer == "neuroread"
    # the results stored back were not routed again (no job, nothing recorded unrouted)
    assert len(jobs_of(orthanc, header.SeriesInstanceUID)) == 1
    assert not any(r["series_uid"] in found for r in orthanc.get("/neuroread/unrouted")["series"])


def test_plugin_survives_a_model_failure_and_retries_the_job(orthanc, cts, faults):
    files = cts[1]
    header = pydicom.dcmread(files[0], stop_before_pixels=True)
    faults["fail"].touch()
    try:
        storescu(orthanc, files)
        job = one_job(orthanc, header.SeriesInstanceUID, "failed")
    finally:
        faults["fail"].unlink()
    assert "injected model failure" in job["reason"], job
    assert job["deliveries"] == []
    # Orthanc keeps serving: REST, DICOMweb and C-STORE (C-ECHO) all answer
    assert orthanc.get("/system")["Name"] == "neuroread-test"
    echo = subprocess.run([dcmtk_tool("echoscu"), "-aec", orthanc.aet, "127.0.0.1", str(orthanc.dicom_port)],
                          capture_output=True, text=True, timeout=30)
    assert echo.returncode == 0, echo.stderr
    # the REST route retries it; now it completes and its results reach Orthanc
    r = orthanc.post(f"/neuroread/jobs/{job['id']}/retry")
    assert r.status_code == 200 and r.json()["state"] == "queued", r.text
    done = one_job(orthanc, header.SeriesInstanceUID, "done")
    assert done["id"] == job["id"]
    wait_for(lambda: {u for v in result_series(orthanc, header.StudyInstanceUID).values() for u in v}
             >= set(done["outputs"]["sop_instance_uids"]), 60, "the retried job's results in Orthanc")
    again = orthanc.post(f"/neuroread/jobs/{job['id']}/retry")
    assert again.status_code == 409 and "done" in again.json()["error"]


def test_rest_routes_answer_unknown_jobs_and_bad_requests(orthanc):
    r = requests.get(orthanc.url + "/neuroread/jobs/99999", auth=orthanc.auth, timeout=10)
    assert r.status_code == 404 and r.json() == {"error": "no job 99999"}
    r = requests.get(orthanc.url + "/neuroread/jobs?state=sleeping", auth=orthanc.auth, timeout=10)
    assert r.status_code == 400 and "state must be one of" in r.json()["error"]
    assert requests.post(orthanc.url + "/neuroread/jobs/99999/retry", auth=orthanc.auth, timeout=10).status_code == 404
    assert requests.get(orthanc.url + "/neuroread/jobs/1/retry", auth=orthanc.auth, timeout=10).status_code == 405
    # Orthanc's own authentication guards the routes
    assert requests.get(orthanc.url + "/neuroread/jobs", timeout=10).status_code == 401


def test_orthanc_restarted_mid_job_completes_it_once(orthanc, cts, faults):
    files = cts[2]
    header = pydicom.dcmread(files[0], stop_before_pixels=True)
    faults["hold"].touch()
    running = faults["hold"].with_name(faults["hold"].name + ".running")
    try:
        storescu(orthanc, files)
        wait_for(running.exists, 90, "the job to be running (held in predict)")
        job = jobs_of(orthanc, header.SeriesInstanceUID)
        assert len(job) == 1 and job[0]["state"] == "running", job
        orthanc.stop()  # SIGTERM, as systemd restarts it; the held job is left "running"
        faults["hold"].unlink()  # the next run of the model is not held
        orthanc.start()
    finally:
        faults["hold"].unlink(missing_ok=True)
        running.unlink(missing_ok=True)
    done = one_job(orthanc, header.SeriesInstanceUID, "done", timeout=120)
    events = [e["event"] for e in done["audit"]]
    assert events.count("done") == 1 and "recovered" in events, events
    assert done["attempts"] >= 2
    outputs = set(done["outputs"]["sop_instance_uids"])
    found = wait_for(lambda: (f := result_series(orthanc, header.StudyInstanceUID))
                     and {u for v in f.values() for u in v} >= outputs and f, 60, "the results after the restart")
    assert sorted(u for v in found.values() for u in v) == sorted(outputs)  # stored once each
    deliveries = orthanc.get(f"/neuroread/jobs/{done['id']}")["deliveries"]
    assert sorted(d["sop_instance_uid"] for d in deliveries) == sorted(outputs)  # one outbox row each


def test_a_series_still_arriving_when_orthanc_crashed_is_processed_after_the_restart(orthanc, cts):
    """Orthanc keeps its unstable series in memory: killed before a series became stable, it
    never reports it stable. The intake noted the series (NewSeries) and takes it after the restart."""
    files = cts[3]
    header = pydicom.dcmread(files[0], stop_before_pixels=True)
    started = time.monotonic()
    storescu(orthanc, files)
    orthanc.kill()  # SIGKILL well within StableAge of the last instance
    assert time.monotonic() - started < STABLE_AGE, "too slow to crash Orthanc before the series was stable"
    orthanc.start()
    done = one_job(orthanc, header.SeriesInstanceUID, "done", timeout=120)
    assert done["instances"] == {"ct": len(files)}
    log = orthanc.log()
    assert "was still arriving when Orthanc stopped; taken as stable now" in log, log[-3000:]
    wait_for(lambda: {u for v in result_series(orthanc, header.StudyInstanceUID).values() for u in v}
             >= set(done["outputs"]["sop_instance_uids"]), 60, "the results in Orthanc after the restart")


def _copy(files: list[Path], out: Path, study: str, series: str) -> list[Path]:
    out.mkdir(parents=True)
    copies = []
    for f in files:
        ds = pydicom.dcmread(f)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
        copies.append(out / f.name)
        ds.save_as(copies[-1], enforce_file_format=True)
    return copies


def test_a_series_already_held_under_another_study_does_not_stop_the_intake(orthanc, cts, tmp_path):
    """Orthanc files the same Series Instance UID under a second study as another series; the
    node holds it under the first: those instances are skipped with the reason, the intake goes on."""
    series = pydicom.uid.generate_uid()
    first = _copy(cts[0][:6], tmp_path / "first", pydicom.uid.generate_uid(), series)
    storescu(orthanc, first)
    job = one_job(orthanc, series, "done")
    storescu(orthanc, _copy(cts[0][:6], tmp_path / "second", pydicom.uid.generate_uid(), series))
    after = pydicom.uid.generate_uid()
    storescu(orthanc, _copy(cts[1][:6], tmp_path / "after", pydicom.uid.generate_uid(), after))
    one_job(orthanc, after, "done")  # the intake was not stuck on the conflicting series
    assert [j["id"] for j in jobs_of(orthanc, series)] == [job["id"]]
    log = orthanc.log()
    assert f"series {series} already belongs to study" in log, log[-3000:]
    assert "RecursionError" not in log and "KeyError" not in log


@pytest.mark.parametrize("section, message", [
    ({"PythonPath": []}, "cannot import neuroread: NeuroRead.PythonPath must list neuroread's environment"),
    ({"PythonPath": [], "Confg": "x.yaml"}, "NeuroRead.Confg: unknown key"),
    (None, "Orthanc's configuration has no 'NeuroRead' section"),
])
def test_a_misconfigured_plugin_stops_orthanc_with_a_clear_message(tmp_path, section, message):
    with pytest.raises(RuntimeError) as failed:
        OrthancServer(tmp_path / "orthanc", python_script=PLUGIN, start_timeout=60,
                      extra={"NeuroRead": section} if section is not None else {})
    assert message in str(failed.value), str(failed.value)[-2000:]
