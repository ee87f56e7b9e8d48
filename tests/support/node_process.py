"""``neuroread serve`` as a real subprocess, and the peers and helpers tests drive it with.

:class:`ServeNode` runs the real command (``python -m neuroread.cli serve -c <yaml>``, the tiny test
model registered through ``plugins:``) with its own configuration, data and log under a folder;
:class:`ResultSCP` is a pynetdicom storage SCP that counts every C-STORE it receives;
:func:`storescu` and :meth:`ServeNode.echo` run dcmtk's ``storescu`` and ``echoscu``.

dcmtk's tools are found by :func:`dcmtk_tool`, never by a bare name: pynetdicom installs its own
``storescu``/``echoscu`` into the virtual environment's ``bin``, which comes first on ``PATH``
when the venv is activated.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Callable, TypeVar

import pydicom
import pytest
import sqlalchemy as sa
import yaml
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt

from neuroread.bench_queue import fresh_copy
from neuroread.node.deliver import Outbox, OutboxItem
from neuroread.node.jobs.store import Job, JobStore
from neuroread.node.tools.dcmtk import DcmtkMissing
from neuroread.node.tools.dcmtk import dcmtk_tool as _dcmtk_tool
from support.peers import free_port

REPO = Path(__file__).resolve().parents[2]
AET = "NEUROREAD"
SCU_AET = "FAULTSCU"          # the one peer the shared node allows
RESULTS_AET = "RESULTS"
T = TypeVar("T")


def dcmtk_tool(name: str) -> str:
    """dcmtk's ``name`` (:func:`neuroread.node.tools.dcmtk.dcmtk_tool`); fails the test with what to install."""
    try:
        return _dcmtk_tool(name)
    except DcmtkMissing as exc:
        pytest.fail(str(exc))


# -- helpers --------------------------------------------------------------------------------------
def wait_for(check: Callable[[], T], timeout: float, what: str, node: "ServeNode | None" = None) -> T:
    """Poll ``check`` every 0.1 s until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if node is not None and node.proc is not None and node.proc.poll() is not None:
            pytest.fail(f"neuroread serve exited ({node.proc.returncode}) while waiting for {what}\n{node.log_tail()}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}"
                        + (f"\n{node.log_tail()}" if node is not None else ""))
        time.sleep(0.1)


def storescu(port: int, files: list[Path], *args: str, aet: str = SCU_AET) -> subprocess.CompletedProcess:
    """dcmtk's storescu (debug output: it prints each response's DIMSE status in hex)."""
    return subprocess.run([dcmtk_tool("storescu"), "-d", "-aet", aet, "-aec", AET, *args, "127.0.0.1", str(port),
                           *map(str, files)], env={**os.environ, "TCP_NODELAY": "1"},
                          capture_output=True, text=True, timeout=120)


def tail(run: subprocess.CompletedProcess, n: int = 3000) -> str:
    return (run.stdout + run.stderr)[-n:]


def statuses(run: subprocess.CompletedProcess) -> list[int]:
    """The C-STORE response statuses storescu received, in order."""
    return [int(s, 16) for s in re.findall(r"DIMSE Status\s*:\s*0x([0-9a-fA-F]{4})", run.stdout + run.stderr)]


def copy_series(src: list[Path], out: Path, *, modify: Callable[[pydicom.Dataset], None] | None = None) -> list[Path]:
    """``src`` as a new study and series (fresh UIDs), each data set optionally changed by ``modify``."""
    return fresh_copy(src, out, modify)


def uids(paths: list[Path]) -> tuple[str, str, list[str]]:
    """(study, series, SOP instance UIDs) of one series' files."""
    headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in paths]
    return str(headers[0].StudyInstanceUID), str(headers[0].SeriesInstanceUID), [str(h.SOPInstanceUID) for h in headers]


class ResultSCP:
    """A pynetdicom storage SCP on a loopback port that records every C-STORE it receives."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.received: list[tuple[str, str]] = []  # (SOP Instance UID, Study Instance UID), one per C-STORE
        self._lock = threading.Lock()
        self._server = None

    def start(self) -> "ResultSCP":
        ae = AE(ae_title=RESULTS_AET)
        for cx in AllStoragePresentationContexts:
            ae.add_supported_context(cx.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        self._server = ae.start_server(("127.0.0.1", self.port), block=False,
                                       evt_handlers=[(evt.EVT_C_STORE, self._on_store)])
        return self

    def _on_store(self, event: evt.Event) -> int:
        ds = event.dataset
        with self._lock:
            self.received.append((str(ds.SOPInstanceUID), str(ds.StudyInstanceUID)))
        return 0x0000

    def counts(self, study_uid: str | None = None) -> Counter:
        """Receptions per SOP Instance UID (of one study, if given)."""
        with self._lock:
            return Counter(sop for sop, study in self.received if study_uid is None or study == study_uid)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None


class ServeNode:
    """``neuroread serve`` in a subprocess with its own configuration, data and log under ``root``."""

    def __init__(self, root: Path, *, destination_port: int | None, spool: Path | None = None,
                 peers: list[str] | None = None, env: dict[str, str] | None = None,
                 queue: dict | None = None, status: dict | None = None) -> None:
        self.root, self.port, self.env = root, free_port(), env or {}
        self.data = root / "data"
        self.spool = spool or self.data / "spool"
        destinations = {} if destination_port is None else {"results": {
            "type": "dicom", "host": "127.0.0.1", "port": destination_port, "called_ae": RESULTS_AET}}
        self.config = {
            "node": {"ae_title": AET, "port": self.port, "peers": [{"ae_title": p} for p in peers or []]},
            "storage": {"root": str(self.data), "spool": str(self.spool)},
            "assemble": {"stable_age_s": 0.5},
            "destinations": destinations,
            "deliver": {"interval_s": 0.5, "retry_base_s": 2},
            "queue": {"torch_threads": 1, **(queue or {})},
            "plugins": ["support.tiny_model:ENTRY"],
            # the product head-CT model would take the same CTs: these tests are about the node, with the test model
            "models": {"ct-hemorrhage": {"enabled": False}},
        }
        if status is not None:
            self.config["status"] = status
        root.mkdir(parents=True, exist_ok=True)
        self.config_path = root / "neuroread.yaml"
        self.config_path.write_text(yaml.safe_dump(self.config), encoding="utf-8")
        self.database = (queue or {}).get("database") or f"sqlite:///{self.data / 'state.db'}"
        self.proc: subprocess.Popen | None = None
        self.logs: list[Path] = []

    # -- the process ---------------------------------------------------------------------------
    def start(self, timeout: float = 90.0) -> "ServeNode":
        self.logs.append(self.root / f"serve-{len(self.logs) + 1}.log")
        with open(self.logs[-1], "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "neuroread.cli", "serve", "-c", str(self.config_path)], cwd=REPO,
                env={**os.environ, "PYTHONPATH": str(REPO / "tests"), **self.env}, stdout=log, stderr=subprocess.STDOUT)
        wait_for(self.echo, timeout, f"neuroread serve answering C-ECHO on port {self.port}", self)
        return self

    def echo(self) -> bool:
        run = subprocess.run([dcmtk_tool("echoscu"), "-aet", SCU_AET, "-aec", AET, "-to", "5", "127.0.0.1",
                              str(self.port)], capture_output=True, timeout=30)
        return run.returncode == 0

    def stop(self) -> int | None:
        """SIGTERM, then SIGKILL after 30 s; the exit status (None if it was not running)."""
        proc, self.proc = self.proc, None
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        return proc.returncode

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        assert self.proc.wait(10) == -signal.SIGKILL
        self.proc = None

    def log_tail(self, lines: int = 80) -> str:
        out = []
        for path in self.logs:
            text = path.read_text(errors="replace").splitlines() if path.exists() else []
            out.append(f"--- {path.name} (last {lines} lines) ---\n" + "\n".join(text[-lines:]))
        return "\n".join(out)

    def log_text(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in self.logs if p.exists())

    # -- what it recorded ----------------------------------------------------------------------
    def jobs(self) -> list[Job]:
        store = JobStore(self.database)
        try:
            return store.list()
        finally:
            store.close()

    def jobs_for(self, series_uid: str) -> list[Job]:
        return [j for j in self.jobs() if series_uid in j.inputs.values()]

    def audit_events(self, job_id: int) -> list[str]:
        store = JobStore(self.database)
        try:
            return [e.event for e in store.audit_trail(job_id)]
        finally:
            store.close()

    def outbox(self, job_id: int) -> list[OutboxItem]:
        engine = sa.create_engine(self.database)
        try:
            return Outbox(engine, self.data / "outbox", []).status(str(job_id))
        finally:
            engine.dispose()

    def spooled(self, study_uid: str) -> dict[str, Path]:
        """SOP Instance UID → spool file, for one study."""
        return {p.stem: p for p in (self.spool / study_uid).glob("*/*.dcm")}


def wait_done(node: ServeNode, series_uid: str, timeout: float = 90.0, state: str = "done") -> Job:
    """The one job of ``series_uid`` once it reached ``state`` (failing fast on another final state)."""
    def check() -> Job | None:
        jobs = node.jobs_for(series_uid)
        if len(jobs) > 1:
            pytest.fail(f"series {series_uid}: {len(jobs)} jobs, expected one: {jobs}\n{node.log_tail()}")
        if jobs and jobs[0].state in ("done", "failed") and jobs[0].state != state:
            pytest.fail(f"job {jobs[0].id} ended {jobs[0].state} ({jobs[0].reason}), expected {state}\n"
                        f"{node.log_tail()}")
        return jobs[0] if jobs and jobs[0].state == state else None

    return wait_for(check, timeout, f"the job of series {series_uid} {state}", node)


def all_sent(node: ServeNode, job_id: int) -> list[OutboxItem] | None:
    """The job's outbox rows once every one of them is ``sent``."""
    items = node.outbox(job_id)
    return items if items and all(i.state == "sent" for i in items) else None


def assert_spool_complete(node: ServeNode, sent: list[Path]) -> None:
    """Every sent instance is in the spool, whole (its pixel data equal to what was sent)."""
    study, _, sops = uids(sent)
    spooled = node.spooled(study)
    assert sorted(spooled) == sorted(sops)
    for path in sent:
        src = pydicom.dcmread(path)
        dst = pydicom.dcmread(spooled[str(src.SOPInstanceUID)])
        assert dst.PixelData == src.PixelData, src.SOPInstanceUID
