"""The job store on a real PostgreSQL server (Debian's, a cluster of its own on loopback):
processes starting at once on an empty database create the schema once, and two processes
claiming from one database run each job once."""
from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import sqlalchemy as sa

from neuroread.node.jobs import JobStore
from support.services import PostgresServer

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def postgres():
    server = PostgresServer().start()
    yield server
    server.close()


_START = """
import sys, time
from neuroread.node.jobs import JobStore
time.sleep(float(sys.argv[2]) - time.time())  # all at once
JobStore(sys.argv[1]).close()
"""


def test_processes_starting_at_once_on_an_empty_database_create_the_schema_once(postgres):
    import time

    url = postgres.create_database("race")
    at = time.time() + 3
    procs = [subprocess.Popen([sys.executable, "-c", _START, url, str(at)], cwd=REPO, stderr=subprocess.PIPE, text=True)
             for _ in range(6)]
    errors = [p.communicate(timeout=120)[1] for p in procs]
    assert [p.returncode for p in procs] == [0] * 6, "\n".join(errors)[-3000:]
    engine = sa.create_engine(url)
    try:
        assert {"jobs", "audit", "series", "dispatch", "deliver_outbox"} <= set(sa.inspect(engine).get_table_names())
    finally:
        engine.dispose()


_CLAIMER = """
import os, sys
from neuroread.node.jobs import JobStore, JobOutcome, Worker
store = JobStore(sys.argv[1])
worker = Worker(store, lambda job: open(sys.argv[2], "a").write(f"{job.id}\\n") and JobOutcome(), f"p{os.getpid()}",
                lease_s=30)
while worker.run_once() is not None:
    pass
"""


def test_two_processes_claiming_from_one_postgresql_database_run_each_job_once(postgres, tmp_path):
    url = postgres.create_database("claims")
    store = JobStore(url)
    ids = {store.enqueue("m", "1", {"s": f"1.2.{n}"}, {"s": [f"1.2.{n}.1"]}).id for n in range(40)}
    log = tmp_path / "runs.log"
    procs = [subprocess.Popen([sys.executable, "-c", _CLAIMER, url, str(log)], cwd=REPO) for _ in range(2)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    counts = Counter(int(line) for line in log.read_text().split())
    assert set(counts) == ids and set(counts.values()) == {1}
    assert {j.state for j in store.list()} == {"done"}
    store.close()
