"""The job store and workers: state machine, idempotent enqueue, atomic claims across threads and
processes, leases and recovery after SIGKILL, back-off, retry, audit trail."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from neuroread.node.jobs import (
    JobError,
    JobOutcome,
    JobStateError,
    JobStore,
    LeaseLostError,
    Worker,
    WorkerPool,
    job_key,
)

REPO = Path(__file__).resolve().parents[3]
T0 = datetime(2026, 1, 1, 12, 0, tzinfo=timezone.utc)


class FakeClock:
    def __init__(self, now: datetime = T0) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def _url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'jobs.db'}"


def _enqueue(store: JobStore, n: int = 0, model: str = "ms-csvd"):
    return store.enqueue(model, "1.0", {"flair": f"1.2.3.{n}"}, {"flair": [f"1.2.3.{n}.1", f"1.2.3.{n}.2"]})


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def store(tmp_path, clock):
    s = JobStore(_url(tmp_path), clock=clock, max_attempts=3, backoff_s=10, backoff_max_s=25)
    yield s
    s.close()


def test_state_machine_happy_path_and_audit_trail(store):
    job = _enqueue(store)
    assert (job.state, job.attempts, job.inputs) == ("queued", 0, {"flair": "1.2.3.0"})
    claimed = store.claim("w1", lease_s=30)
    assert (claimed.id, claimed.state, claimed.attempts, claimed.lease_owner) == (job.id, "running", 1, "w1")
    assert claimed.lease_expires == T0 + timedelta(seconds=30)
    assert store.claim("w2", lease_s=30) is None  # nothing else claimable
    store.heartbeat(job.id, "w1", lease_s=30)
    with pytest.raises(LeaseLostError):
        store.complete(job.id, "w2", {"x": 1})  # not the owner
    done = store.complete(job.id, "w1", {"sop_instance_uids": ["2.25.1"]}, weights_hash="sha256:ab")
    assert (done.state, done.outputs, done.lease_owner) == ("done", {"sop_instance_uids": ["2.25.1"]}, None)
    store.audit(job.id, "delivered", {"destination": "PACS", "sop_instance_uids": ["2.25.1"]})
    trail = store.audit_trail(job.id)
    assert [e.event for e in trail] == ["queued", "running", "done", "delivered"]
    assert trail[0].detail == {"model": "ms-csvd", "version": "1.0", "identity": "", "inputs": {"flair": "1.2.3.0"},
                               "instances": {"flair": ["1.2.3.0.1", "1.2.3.0.2"]}}
    assert trail[2].detail["weights_hash"] == "sha256:ab"
    assert trail[2].detail["outputs"] == {"sop_instance_uids": ["2.25.1"]}
    assert trail[3].detail["destination"] == "PACS"
    assert all(e.at.tzinfo is not None for e in trail)
    with pytest.raises(JobStateError):
        store.retry(job.id)  # only failed jobs


def test_received_needs_release(store):
    job = store.enqueue("m", "1", {"a": "1.2"}, {"a": ["1.2.1"]}, ready=False)
    assert job.state == "received" and store.claim("w", 10) is None
    assert store.release(job.id).state == "queued"
    assert store.claim("w", 10).id == job.id


def test_enqueue_idempotent_and_key_changes_with_instances(store):
    a = _enqueue(store)
    again = store.enqueue("ms-csvd", "1.0", {"flair": "1.2.3.0"}, {"flair": ["1.2.3.0.2", "1.2.3.0.1"]})
    assert again.id == a.id and len(store.list()) == 1
    bigger = store.enqueue("ms-csvd", "1.0", {"flair": "1.2.3.0"}, {"flair": ["1.2.3.0.1", "1.2.3.0.2", "1.2.3.0.3"]})
    other_version = store.enqueue("ms-csvd", "1.1", {"flair": "1.2.3.0"}, {"flair": ["1.2.3.0.1", "1.2.3.0.2"]})
    assert len({a.id, bigger.id, other_version.id}) == 3
    assert a.key == job_key("ms-csvd", "1.0", {"flair": "1.2.3.0"}, {"flair": ["1.2.3.0.2", "1.2.3.0.1"]})
    # idempotent also when enqueued from another store object (another process) on the same file
    other = JobStore(store.url)
    assert _enqueue(other).id == a.id
    other.close()


@pytest.mark.parametrize("bad", [dict(model=""), dict(inputs={}), dict(instances={"flair": []}),
                                 dict(instances={"flair": ["1.1"], "t1": ["1.2"]})])
def test_enqueue_validates(store, bad):
    args = dict(model="m", version="1", inputs={"flair": "1.2"}, instances={"flair": ["1.2.1"]}) | bad
    with pytest.raises(ValueError):
        store.enqueue(**args)


def test_constructor_validates(tmp_path):
    with pytest.raises(ValueError, match="max_attempts"):
        JobStore(_url(tmp_path), max_attempts=0)
    with pytest.raises(ValueError, match="url"):
        JobStore("")


def test_backoff_then_max_attempts_then_retry(store, clock):
    job = _enqueue(store)
    store.claim("w", 60)
    j = store.fail(job.id, "w", "destination down", retry=True)
    assert (j.state, j.reason, j.next_attempt_at) == ("retrying", "destination down", T0 + timedelta(seconds=10))
    assert store.claim("w", 60) is None  # not due yet
    clock.advance(10)
    assert store.claim("w", 60).attempts == 2
    j = store.fail(job.id, "w", "destination down", retry=True)
    assert j.next_attempt_at == clock.now + timedelta(seconds=20)  # doubled
    clock.advance(20)
    assert store.claim("w", 60).attempts == 3
    j = store.fail(job.id, "w", "destination down", retry=True)
    assert j.state == "failed" and "gave up after 3 attempts" in j.reason
    clock.advance(1000)
    assert store.claim("w", 60) is None
    assert [x.id for x in store.list("failed")] == [job.id]
    j = store.retry(job.id)
    assert (j.state, j.attempts, j.reason) == ("queued", 0, "")
    store.claim("w", 60)
    assert store.complete(job.id, "w").state == "done"
    events = [e.event for e in store.audit_trail(job.id)]
    assert events == ["queued", "running", "retrying", "running", "retrying", "running", "failed",
                      "retry", "running", "done"]


def test_backoff_is_capped(tmp_path, clock):
    s = JobStore(_url(tmp_path), clock=clock, max_attempts=10, backoff_s=10, backoff_max_s=25)
    job = _enqueue(s)
    for _ in range(4):
        s.claim("w", 60)
        j = s.fail(job.id, "w", "busy", retry=True)
        clock.advance(100)
    assert j.next_attempt_at - (clock.now - timedelta(seconds=100)) == timedelta(seconds=25)


def test_non_retryable_failure_is_final(store):
    job = _enqueue(store)
    store.claim("w", 60)
    j = store.fail(job.id, "w", "transfer syntax 1.2.840.10008.1.2.4.100 cannot be decoded", retry=False)
    assert j.state == "failed" and j.attempts == 1 and "cannot be decoded" in j.reason


def test_recover_expired_lease_only(store, clock):
    a, b = _enqueue(store, 1), _enqueue(store, 2)
    store.claim("dead", lease_s=30)
    store.claim("alive", lease_s=300)
    clock.advance(60)
    assert store.recover() == [a.id]
    assert store.get(a.id).state == "queued" and store.get(b.id).state == "running"
    with pytest.raises(LeaseLostError):
        store.complete(a.id, "dead")  # the dead worker's late answer is refused
    assert store.claim("new", 30).id == a.id


def test_recover_gives_up_after_max_attempts(store, clock):
    job = _enqueue(store)
    for _ in range(3):
        store.claim("w", 10)
        clock.advance(20)
        store.recover()
    j = store.get(job.id)
    assert j.state == "failed" and "expired after 3 attempts" in j.reason


def test_worker_records_done_joberror_and_unexpected(store):
    ok, retry_me, broken = _enqueue(store, 1), _enqueue(store, 2), _enqueue(store, 3)

    def run(job):
        if job.id == retry_me.id:
            raise JobError("PACS refused association", retryable=True)
        if job.id == broken.id:
            raise ZeroDivisionError("a bug")
        return JobOutcome({"uids": ["2.25.9"]}, weights_hash="h")

    w = Worker(store, run, "w0", lease_s=30)
    results = [w.run_once() for _ in range(3)]
    assert w.run_once() is None
    assert [r.state for r in results] == ["done", "retrying", "failed"]
    assert store.get(broken.id).reason == "internal error: ZeroDivisionError: a bug"
    assert store.get(ok.id).outputs == {"uids": ["2.25.9"]}


def test_heartbeat_keeps_lease_while_running(tmp_path):
    store = JobStore(_url(tmp_path))  # real clock: the heartbeat thread runs for real
    job = _enqueue(store)
    seen = []

    def run(j):
        time.sleep(0.5)  # longer than the lease; heartbeats every lease/3
        seen.append(store.recover())
        return JobOutcome()

    assert Worker(store, run, "w", lease_s=0.3).run_once().state == "done"
    assert seen == [[]] and store.get(job.id).state == "done"
    store.close()


def test_concurrent_claims_threads_each_job_once(tmp_path):
    store = JobStore(_url(tmp_path))
    ids = {_enqueue(store, n).id for n in range(40)}
    runs: Counter[int] = Counter()
    lock = threading.Lock()

    def run(job):
        with lock:
            runs[job.id] += 1
        return JobOutcome()

    with WorkerPool(store, run, n_workers=6, poll_s=0.02, lease_s=30):
        deadline = time.monotonic() + 30
        while len(store.list("done")) < len(ids) and time.monotonic() < deadline:
            time.sleep(0.05)
    assert set(runs) == ids and set(runs.values()) == {1}
    assert len({e.detail["worker"] for j in ids for e in store.audit_trail(j) if e.event == "done"}) > 1
    store.close()


_PROC_WORKER = """
import os, sys, time
from neuroread.node.jobs import JobStore, JobOutcome, WorkerPool
url, log, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
store = JobStore(url)
def run(job):
    with open(log, "a") as f:
        f.write(f"{job.id} {os.getpid()}\\n")
    return JobOutcome()
with WorkerPool(store, run, n_workers=2, poll_s=0.02, lease_s=30, name=f"p{os.getpid()}"):
    deadline = time.monotonic() + 60
    while len(store.list("done")) < n and time.monotonic() < deadline:
        time.sleep(0.05)
"""


def test_concurrent_claims_two_processes_one_sqlite_file(tmp_path):
    store = JobStore(_url(tmp_path))
    ids = {_enqueue(store, n).id for n in range(30)}
    log = tmp_path / "runs.log"
    procs = [subprocess.Popen([sys.executable, "-c", _PROC_WORKER, store.url, str(log), str(len(ids))], cwd=REPO)
             for _ in range(2)]
    for p in procs:
        assert p.wait(timeout=90) == 0
    lines = [line.split() for line in log.read_text().splitlines()]
    counts = Counter(int(job_id) for job_id, _pid in lines)
    assert set(counts) == ids and set(counts.values()) == {1}
    assert len(store.list("done")) == len(ids)
    store.close()


_KILLED_WORKER = """
import sys, time
from pathlib import Path
from neuroread.node.jobs import JobStore, Worker
store = JobStore(sys.argv[1])
def run(job):
    Path(sys.argv[2]).write_text(str(job.id))
    time.sleep(600)
Worker(store, run, "victim", lease_s=5).run_once()
"""


def test_sigkill_mid_job_then_recover_runs_to_done_once(tmp_path):
    store = JobStore(_url(tmp_path))
    job = _enqueue(store)
    marker = tmp_path / "started"
    proc = subprocess.Popen([sys.executable, "-c", _KILLED_WORKER, store.url, str(marker)], cwd=REPO)
    try:
        deadline = time.monotonic() + 60
        while not marker.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert marker.read_text() == str(job.id)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    running = store.get(job.id)
    assert (running.state, running.lease_owner) == ("running", "victim")
    # a restart within the lease leaves the job alone; after it, the job goes back to queued
    assert store.recover(now=running.lease_expires - timedelta(seconds=1)) == []
    assert store.recover(now=running.lease_expires + timedelta(seconds=1)) == [job.id]
    runs = []
    w = Worker(store, lambda j: runs.append(j.id) or JobOutcome({"uids": ["2.25.5"]}), "restarted")
    assert w.run_once().state == "done"
    assert w.run_once() is None
    assert runs == [job.id] and store.get(job.id).attempts == 2
    events = [e.event for e in store.audit_trail(job.id)]
    assert events == ["queued", "running", "recovered", "running", "done"]
    store.close()


# -- the distributed queue's store operations (neuroread.node.jobs.dispatch) -------------------------
def test_claim_job_claims_that_job_only_once_and_only_when_due(store, clock):
    a, b = _enqueue(store, 1), _enqueue(store, 2)
    assert store.claim_job(b.id, "w1", 30).id == b.id  # the named job, not the oldest
    assert store.claim_job(b.id, "w2", 30) is None  # running under a lease: a duplicate message
    store.fail(b.id, "w1", "busy", retry=True)  # retrying, due in 10 s
    assert store.claim_job(b.id, "w2", 30) is None
    clock.advance(11)
    assert store.claim_job(b.id, "w2", 30).attempts == 2
    store.complete(b.id, "w2")
    assert store.claim_job(b.id, "w3", 30) is None  # done: a late message
    assert store.claim_job(999, "w3", 30) is None
    assert store.get(a.id).state == "queued"


def test_take_over_gives_back_a_dead_owners_job_then_fails_it_out_of_attempts(store):
    job = _enqueue(store)
    store.claim_job(job.id, "host:1", 600)
    assert not store.take_over(job.id, "host:2")  # not its owner: nothing happens
    assert store.take_over(job.id, "host:1") and store.get(job.id).state == "queued"
    for attempt in (2, 3):
        store.claim_job(job.id, f"host:{attempt}", 600)
        assert store.take_over(job.id, f"host:{attempt}")
    failed = store.get(job.id)
    assert (failed.state, failed.attempts) == ("failed", 3)
    assert failed.reason == "worker host:3 died after 3 attempts"
    assert [e.detail["why"] for e in store.audit_trail(job.id) if e.event == "recovered"][-1] == "worker host:3 died"


def test_unpublished_names_claimable_jobs_whose_message_may_be_missing(store, clock):
    a, b, c = _enqueue(store, 1), _enqueue(store, 2), _enqueue(store, 3)
    assert store.unpublished(60) == [a.id, b.id, c.id]  # never published
    clock.advance(1)
    for job in (a, b, c):
        store.mark_published(job.id)
    assert store.unpublished(60) == []
    store.claim_job(a.id, "w", 5)
    store.fail(a.id, "w", "busy", retry=True)  # back-off of 10 s: not due, not listed
    clock.advance(5)
    store.claim_job(b.id, "w", 5)
    assert store.unpublished(60) == []
    clock.advance(6)  # a's back-off over; b's lease expired
    assert store.unpublished(60) == [a.id]  # due again after its message was used
    assert store.recover() == [b.id]
    assert store.unpublished(60) == [a.id, b.id]  # recovered after it was published
    store.mark_published(a.id)
    store.mark_published(b.id)
    clock.advance(61)
    assert store.unpublished(60) == [a.id, b.id, c.id]  # published long ago: the broker may have lost them


def test_a_job_store_outage_inside_the_job_function_is_retried_not_failed(store):
    from sqlalchemy.exc import OperationalError

    job = _enqueue(store)

    def run(_job):
        raise OperationalError("UPDATE jobs ...", {}, ConnectionError("server closed the connection"))

    done = Worker(store, run, "w", lease_s=30).run_once()
    assert (done.id, done.state, done.attempts) == (job.id, "retrying", 1)
    assert done.reason.startswith("the job store was unreachable")
