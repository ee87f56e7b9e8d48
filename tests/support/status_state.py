"""A node's database in a known state, for the status page's tests: real jobs in a SQLite
:class:`JobStore` moved through their states on a fake clock, real Secondary Captures (highdicom
``SCImage``) in a real :class:`Outbox`, delivered to a folder and to a PACS that is down.

    state = StatusState(tmp_path)     # up to T0 + 30 s: job 1 done, its results waiting in the outbox
    ... start a NodeMetrics / StatusServer on state.store.engine now (its poller begins here) ...
    state.finish()                    # jobs 2-7 and a delivery at T0 + 110 s

After :meth:`StatusState.finish` (clock at T0 + 110 s):

====  =============  =========  ============================================================
job   model          state      how
====  =============  =========  ============================================================
1     tiny           done       claimed +10, done +20; 2 SCs to ``archive`` (sent at +110)
2     tiny           done       claimed +40, done +52 (12 s); 1 SC to ``archive`` (sent)
3     tiny           done       claimed +60, done +63 (3 s); 1 SC to ``archive`` (sent) and
                                ``pacs`` (down: retrying, 1 failed attempt)
4     other          failed     claimed +70, failed +75 with :data:`REASON`
5     other          running    claimed +80 by ``worker-7``
6     tiny           retrying   claimed +90, failed +91, next attempt +121 (not due)
7     tiny           queued     enqueued +100
====  =============  =========  ============================================================

Series ``S<n>`` (job n's input, :func:`series_uid`) last received at T0 + n s. The data sets carry a patient name
and ID (:data:`PATIENT_NAME`, :data:`PATIENT_ID`) that the page must never show.
"""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian

from neuroread.node.deliver import Backoff, DicomDestination, FolderDestination, Outbox
from neuroread.node.jobs import JobStore
from support.peers import free_port

T0 = datetime(2024, 1, 1, tzinfo=timezone.utc)
REASON = "cannot decode: transfer syntax 1.2.840.10008.1.2.4.100 is not supported"
PATIENT_NAME, PATIENT_ID = "Doe^Jane", "PID-4242-XYZ"
ROOT = "1.2.826.0.1.3680043.10.1234"


def series_uid(n: int) -> str:
    return f"{ROOT}.2.{n}"


def study_uid(n: int) -> str:
    return f"{ROOT}.1.{n}"


def secondary_capture(job: int, index: int) -> Dataset:
    """A small RGB Secondary Capture (96 x 64, a colour ramp) of job ``job``'s study."""
    ramp = np.linspace(0, 255, 96, dtype=np.uint8)
    pixels = np.stack([np.tile(ramp, (64, 1)), np.tile(ramp[::-1], (64, 1)), np.full((64, 96), 40 * index, np.uint8)],
                      axis=-1)
    return hd.sc.SCImage(
        pixel_array=pixels, photometric_interpretation=hd.PhotometricInterpretationValues.RGB, bits_allocated=8,
        coordinate_system=hd.CoordinateSystemNames.PATIENT, study_instance_uid=study_uid(job),
        series_instance_uid=f"{ROOT}.3.{job}", series_number=100, sop_instance_uid=f"{ROOT}.4.{job}.{index}",
        instance_number=index, manufacturer="neuroread", patient_id=PATIENT_ID, patient_name=PATIENT_NAME,
        patient_orientation=("L", "P"), transfer_syntax_uid=ExplicitVRLittleEndian)


class StatusState:
    """See the module docstring; ``now`` moves the fake clock (seconds after :data:`T0`)."""

    def __init__(self, tmp_path: Path) -> None:
        self.offset = 0.0
        tmp_path.mkdir(parents=True, exist_ok=True)
        self.store = JobStore(f"sqlite:///{tmp_path / 'state.db'}", clock=self.clock)
        self.outbox_folder = tmp_path / "outbox"
        self.archive = FolderDestination(name="archive", path=tmp_path / "archive", fsync=False)
        self.pacs = DicomDestination(name="pacs", host="127.0.0.1", port=free_port(), called_ae="STORESCP",
                                     calling_ae="NEUROREAD", connect_timeout=2, acse_timeout=2, dimse_timeout=2,
                                     network_timeout=2)
        self.outbox = Outbox(self.store.engine, self.outbox_folder, [self.archive, self.pacs],
                             backoff=Backoff(base=30.0, cap=60.0), clock=lambda: self.clock().timestamp(), fsync=False)
        self.sc = {job: [secondary_capture(job, i) for i in range(1, 3 if job == 1 else 2)] for job in (1, 2, 3)}
        for n in range(1, 8):
            at = T0 + timedelta(seconds=n)
            self.store.record_series(study_uid(n), series_uid(n), 3, at, at, "complete")
        self._done(1, "tiny", claimed=10, done=20, destinations=["archive"])
        self.now(30)

    def clock(self) -> datetime:
        return T0 + timedelta(seconds=self.offset)

    def now(self, seconds: float) -> None:
        self.offset = float(seconds)

    def _enqueue(self, n: int, model: str, at: float) -> int:
        self.now(at)
        slot = "ct" if model == "tiny" else "flair"
        job = self.store.enqueue(model, "1.0", {slot: series_uid(n)}, {slot: [f"{series_uid(n)}.{i}" for i in (1, 2, 3)]}).id
        if job != n:
            raise RuntimeError(f"job {n} got id {job}: the database was not empty")
        return job

    def _done(self, n: int, model: str, *, claimed: float, done: float, destinations: list[str]) -> None:
        job = self._enqueue(n, model, claimed)
        assert self.store.claim("worker-1", 60).id == job
        self.now(done)
        self.outbox.add(str(job), self.sc[n], destinations)
        self.store.complete(job, "worker-1", {"objects": len(self.sc[n])})

    def finish(self) -> None:
        """Jobs 2-7 and the delivery at T0 + 110 s (see the module docstring)."""
        self._done(2, "tiny", claimed=40, done=52, destinations=["archive"])
        self._done(3, "tiny", claimed=60, done=63, destinations=["archive", "pacs"])
        job = self._enqueue(4, "other", 70)
        assert self.store.claim("worker-2", 60).id == job
        self.now(75)
        self.store.fail(job, "worker-2", REASON, retry=False)
        job = self._enqueue(5, "other", 80)
        assert self.store.claim("worker-7", 60).id == job
        job = self._enqueue(6, "tiny", 90)
        assert self.store.claim("worker-1", 60).id == job
        self.now(91)
        self.store.fail(job, "worker-1", "destination busy", retry=True)
        self._enqueue(7, "tiny", 100)
        self.now(110)
        report = self.outbox.deliver_due()
        assert (report.sent, report.retrying) == (4, 1), report

    def close(self) -> None:
        self.store.close()
