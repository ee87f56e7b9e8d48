"""The status page and /metrics over real HTTP on loopback, on a real job store and outbox
(:mod:`support.status_state`: jobs in every state on a fake clock, real Secondary Captures)."""
from __future__ import annotations

import base64
import io
import sys
import threading
import urllib.error
import urllib.request
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from neuroread.node.config import StatusConfig
from neuroread.node.http import basic_user
from neuroread.node.jobs import JobStore
from neuroread.node.schema import audit_table
from neuroread.node.status import NodeMetrics, StatusServer
from support.peers import StoreSCP
from support.status_state import PATIENT_ID, PATIENT_NAME, REASON, StatusState, series_uid, study_uid

# Files opened while a bad thumbnail request is served (an audit hook sees every open()).
_OPENED: list[str] = []
_RECORDING = threading.Event()


def _record_open(event: str, args: tuple) -> None:
    if _RECORDING.is_set() and event == "open":
        _OPENED.append(str(args[0]))


sys.addaudithook(_record_open)


@pytest.fixture
def state(tmp_path):
    state = StatusState(tmp_path)
    yield state
    state.close()


def serve(state: StatusState, **config) -> StatusServer:
    """A status server on a free loopback port whose poller only runs when the test calls poll()."""
    server = StatusServer(StatusConfig(port=0, **config), state.store.engine, outbox_folder=state.outbox_folder,
                          metrics=NodeMetrics(state.store.engine, clock=state.clock, models=("tiny", "other")), node_name="NEUROREAD",
                          clock=state.clock, poll_s=3600)
    server.start()
    return server


@pytest.fixture
def server(state):
    server = serve(state)  # the poller begins here: job 1 is done, its results wait in the outbox
    state.finish()
    yield server
    server.stop()


def get(url: str, auth: tuple[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url)
    if auth is not None:
        request.add_header("Authorization", "Basic " + base64.b64encode(":".join(auth).encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, dict(answer.headers), answer.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def metrics(server: StatusServer) -> dict[tuple[str, tuple], float]:
    status, headers, body = get(server.url + "metrics")
    assert status == 200 and headers["Content-Type"].startswith("text/plain"), (status, headers)
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(body.decode()) for s in family.samples}


def failed_counts(metrics: NodeMetrics) -> dict[str, float]:
    """``neuroread_jobs_failed_total`` by model, read from the registry."""
    return {s.labels["model"]: s.value for f in metrics.registry.collect() if f.name == "neuroread_jobs_failed"
            for s in f.samples if s.name.endswith("_total")}


def test_page_shows_jobs_failures_backlog_and_results_without_patient_data(server, state):
    status, headers, body = get(server.url)
    page = body.decode()
    assert status == 200 and headers["Content-Type"] == "text/html; charset=utf-8"
    assert '<meta http-equiv="refresh" content="10">' in page and "<script" not in page
    for model, state_name, n in (("tiny", "done", 3), ("tiny", "queued", 1), ("tiny", "retrying", 1),
                                 ("tiny", "failed", 0), ("other", "failed", 1), ("other", "running", 1)):
        assert f'data-model="{model}" data-state="{state_name}">{n}</td>' in page, (model, state_name)
    assert '<div class="tile" id="queue-depth"><b>1</b>' in page  # job 7; job 6 is not due before +121 s
    assert '<div class="tile" id="done-5min"><b>3</b>' in page
    assert "worker-7" in page and series_uid(5) in page  # the running job and its lease owner
    assert REASON in page and series_uid(4) in page  # the failure, its reason and series
    # destinations: pending, retrying, oldest waiting, rejected, sent, failed attempts
    assert ("<tr data-destination=\"pacs\"><th>pacs</th><td class='n'>0</td><td class='n'>1</td><td>47 s</td>"
            "<td class='n'>0</td><td class='n'>0</td><td class='n'>1</td></tr>") in page
    assert "<tr data-destination=\"archive\"><th>archive</th><td class='n'>0</td><td class='n'>0</td><td></td>" in page
    for job, datasets in state.sc.items():  # every SC of the recent jobs as a thumbnail, with its study
        assert study_uid(job) in page
        for ds in datasets:
            assert f'src="/thumbnail/{job}/{ds.SOPInstanceUID}.png"' in page
    assert "pacs: 1 retrying" in page and "archive: 2 sent" in page
    assert PATIENT_NAME not in page and "Doe" not in page and PATIENT_ID not in page


def test_thumbnail_is_a_small_png_of_the_secondary_capture(server, state):
    ds = state.sc[1][1]
    _OPENED.clear()
    _RECORDING.set()  # the audit hook sees the SC opened (what the test of bad requests relies on)
    try:
        status, headers, body = get(f"{server.url}thumbnail/1/{ds.SOPInstanceUID}.png")
    finally:
        _RECORDING.clear()
    assert [Path(p).name for p in _OPENED if p.endswith(".dcm")] == [f"{ds.SOPInstanceUID}.dcm"]
    assert status == 200 and headers["Content-Type"] == "image/png"
    picture = Image.open(io.BytesIO(body))
    assert picture.format == "PNG" and picture.mode == "RGB" and max(picture.size) <= 160
    assert picture.size == (96, 64)  # already small: kept as is
    assert picture.getpixel((0, 0)) == tuple(int(v) for v in ds.pixel_array[0, 0])
    assert get(f"{server.url}thumbnail/1/{ds.SOPInstanceUID}.png")[2] == body  # the cached one


@pytest.mark.parametrize("path, status", [
    ("thumbnail/1/..%2F..%2Fetc%2Fpasswd.png", 400),
    ("thumbnail/1/1.2.3.04.png", 400),  # a leading zero: not a UID
    ("thumbnail/1/" + "1" * 65 + ".png", 400),
    ("thumbnail/x1/1.2.3.png", 400),
    ("thumbnail/../../etc/passwd.png", 404),
    ("thumbnail/1/1.2.3.png", 404),  # a valid UID that is no result of job 1
    ("thumbnail/2/" + "1.2.826.0.1.3680043.10.1234.4.1.1" + ".png", 404),  # job 1's SC asked as job 2's
])
def test_bad_thumbnail_requests_are_refused_without_opening_a_file(server, path, status):
    _OPENED.clear()
    _RECORDING.set()
    try:
        answer = get(server.url + path)
    finally:
        _RECORDING.clear()
    assert answer[0] == status, answer
    assert _OPENED == []


def test_metrics_from_the_database_and_the_poller(server, state, tmp_path):
    server.metrics.instance_received("new")
    server.metrics.instance_received("new")
    server.metrics.instance_received("duplicate")
    with pytest.raises(ValueError, match="outcome must be one of"):
        server.metrics.instance_received("lost")
    before = metrics(server)
    assert before[("neuroread_inference_seconds_count", (("model", "tiny"),))] == 0  # nothing polled yet

    assert server.metrics.poll() == 5  # 2 inference times, 1 failure, 2 turnarounds
    m = metrics(server)
    assert m[("neuroread_instances_received_total", (("outcome", "new"),))] == 2
    assert m[("neuroread_instances_received_total", (("outcome", "duplicate"),))] == 1
    assert m[("neuroread_instances_received_total", (("outcome", "replaced"),))] == 0
    jobs = {labels: v for (name, labels), v in m.items() if name == "neuroread_jobs"}
    assert jobs[(("model", "tiny"), ("state", "done"))] == 3
    assert jobs[(("model", "tiny"), ("state", "queued"))] == 1
    assert jobs[(("model", "tiny"), ("state", "retrying"))] == 1
    assert jobs[(("model", "other"), ("state", "running"))] == 1
    assert jobs[(("model", "other"), ("state", "failed"))] == 1
    assert sum(jobs.values()) == 7 and len(jobs) == 12  # every state of both models
    assert m[("neuroread_queue_depth", ())] == 1
    assert m[("neuroread_outbox_backlog", (("destination", "pacs"),))] == 1
    assert m[("neuroread_outbox_backlog", (("destination", "archive"),))] == 0
    assert m[("neuroread_outbox_oldest_waiting_seconds", (("destination", "pacs"),))] == 110 - 63
    assert m[("neuroread_delivery_retries_total", (("destination", "pacs"),))] == 1
    assert m[("neuroread_delivery_retries_total", (("destination", "archive"),))] == 0
    assert m[("neuroread_outbox_rejected", (("destination", "pacs"),))] == 0
    assert m[("neuroread_jobs_failed_total", (("model", "other"),))] == 1
    # inference: claim -> done of jobs 2 (12 s) and 3 (3 s); job 1 was done before the poller began
    tiny = (("model", "tiny"),)
    assert m[("neuroread_inference_seconds_count", tiny)] == 2
    assert m[("neuroread_inference_seconds_sum", tiny)] == 15
    assert m[("neuroread_inference_seconds_bucket", (("le", "5.0"), ("model", "tiny")))] == 1
    # turnaround: last instance -> all sent, of job 1 (waiting in the outbox at the start: 109 s)
    # and job 2 (108 s); job 3 waits for the PACS
    assert m[("neuroread_turnaround_seconds_count", tiny)] == 2
    assert m[("neuroread_turnaround_seconds_sum", tiny)] == 109 + 108

    assert server.metrics.poll() == 0  # nothing observed twice
    state.now(200)
    pacs = StoreSCP(tmp_path / "pacs", state.pacs.port)  # the PACS is back
    try:
        assert state.outbox.deliver_due().sent == 1
    finally:
        pacs.stop()
    assert server.metrics.poll() == 1
    m = metrics(server)
    assert m[("neuroread_turnaround_seconds_count", tiny)] == 3
    assert m[("neuroread_turnaround_seconds_sum", tiny)] == 109 + 108 + (200 - 3)
    assert m[("neuroread_outbox_backlog", (("destination", "pacs"),))] == 0
    assert m[("neuroread_delivery_retries_total", (("destination", "pacs"),))] == 1  # it only grows


def test_poller_reads_audit_rows_that_became_visible_late(state):
    """An audit id skipped over (its transaction committed after a later one's) is read when it
    appears; ids are written here out of order, as concurrent PostgreSQL writers can make them."""
    state.finish()
    metrics = NodeMetrics(state.store.engine, clock=state.clock)
    assert metrics.poll() == 0  # the starting point
    with state.store.engine.connect() as conn:
        last = conn.execute(sa.select(sa.func.max(audit_table.c.id))).scalar_one()

    def failed(audit_id: int, job_id: int) -> None:
        with state.store.engine.begin() as conn:
            conn.execute(sa.insert(audit_table).values(id=audit_id, job_id=job_id, at=state.clock(), event="failed",
                                                       detail={"reason": "late"}))

    failed(last + 2, 4)  # job 4 is model "other"
    assert metrics.poll() == 1
    failed(last + 1, 7)  # job 7, "tiny": committed later, with the lower id
    assert metrics.poll() == 1
    assert metrics.poll() == 0
    assert failed_counts(metrics) == {"other": 1, "tiny": 1}


def test_a_job_failed_by_its_lease_counts_as_failed(state):
    state.finish()
    metrics = NodeMetrics(state.store.engine, clock=state.clock)
    metrics.poll()
    once = JobStore(state.store.url, clock=state.clock, max_attempts=1)  # job 5 ran out of attempts
    try:
        assert once.recover(now=state.clock() + timedelta(hours=1)) == [5]
    finally:
        once.close()
    assert metrics.poll() == 1
    assert failed_counts(metrics) == {"other": 1}


def test_poller_thread_observes_and_stops(state):
    server = serve(state)
    server.metrics.stop()
    server.metrics.start(0.05)
    try:
        state.finish()
        for _ in range(100):
            if metrics(server).get(("neuroread_inference_seconds_count", (("model", "tiny"),))) == 2:
                break
            threading.Event().wait(0.05)
        assert metrics(server)[("neuroread_inference_seconds_count", (("model", "tiny"),))] == 2
    finally:
        server.stop()
    assert not [t for t in threading.enumerate() if t.name in ("neuroread-metrics", "neuroread-status")]


def test_login_on_every_path(state, monkeypatch):
    monkeypatch.setenv("NEUROREAD_TEST_STATUS_PASSWORD", "from-the-env")
    server = serve(state, users={"ops": "s3cret"}, users_env={"viewer": "NEUROREAD_TEST_STATUS_PASSWORD"})
    try:
        uid = state.sc[1][0].SOPInstanceUID
        for path in ("", "metrics", f"thumbnail/1/{uid}.png", "nothing-here"):
            status, headers, _ = get(server.url + path)
            assert status == 401 and headers["WWW-Authenticate"].startswith('Basic realm="neuroread"'), path
            assert get(server.url + path, ("ops", "wrong"))[0] == 401
            assert get(server.url + path, ("nobody", "s3cret"))[0] == 401
            expected = 404 if path == "nothing-here" else 200
            assert get(server.url + path, ("ops", "s3cret"))[0] == expected, path
            assert get(server.url + path, ("viewer", "from-the-env"))[0] == expected, path
    finally:
        server.stop()


def test_a_missing_password_variable_is_named(state, monkeypatch):
    monkeypatch.delenv("NEUROREAD_TEST_STATUS_MISSING", raising=False)
    with pytest.raises(ValueError, match="status.users_env.ops: environment variable NEUROREAD_TEST_STATUS_MISSING"):
        StatusServer(StatusConfig(users_env={"ops": "NEUROREAD_TEST_STATUS_MISSING"}), state.store.engine,
                     outbox_folder=state.outbox_folder)


def test_basic_user_parses_only_well_formed_credentials():
    users = {"ops": "pa:ss"}

    def header(text: str) -> str:
        return "Basic " + base64.b64encode(text.encode()).decode()

    assert basic_user(header("ops:pa:ss"), users) == "ops"  # the password may hold ':'
    assert basic_user("basic  " + base64.b64encode(b"ops:pa:ss").decode(), users) == "ops"
    for bad in (None, "", "Bearer x", "Basic !!!", header("ops"), header("ops:pa"), header("OPS:pa:ss"),
                "Basic " + base64.b64encode(b"ops:\xff").decode()):
        assert basic_user(bad, users) is None, bad


def test_other_methods_and_paths(server):
    request = urllib.request.Request(server.url, data=b"x", method="POST")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    assert refused.value.code == 405 and refused.value.headers["Allow"] == "GET"
    assert get(server.url + "index.php")[0] == 404
    assert get(server.url + "favicon.ico")[0] == 204


def test_database_gone_answers_503(state, tmp_path):
    server = serve(state)
    try:
        with state.store.engine.begin() as conn:
            conn.execute(sa.text("DROP TABLE jobs"))
        for path in ("", "metrics"):
            status, headers, body = get(server.url + path)
            assert status == 503 and headers["Retry-After"] == "10", body
            assert b"database cannot be read (OperationalError)" in body
    finally:
        server.stop()


def test_constructor_checks(state):
    with pytest.raises(ValueError, match="StatusServer.config must be a StatusConfig"):
        StatusServer({"port": 0}, state.store.engine, outbox_folder=state.outbox_folder)
    with pytest.raises(ValueError, match="NodeMetrics.engine must be an sqlalchemy Engine"):
        NodeMetrics("sqlite://")
    server = serve(state)
    try:
        with pytest.raises(RuntimeError, match="already started"):
            server.start()
    finally:
        server.stop()
    server.stop()  # twice: nothing to do
