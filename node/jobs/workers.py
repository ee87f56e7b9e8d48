"""In-process workers of the embedded queue: threads that claim jobs from the :class:`JobStore`,
run the job function, heartbeat the lease and record the outcome (see :mod:`neuroread.node.jobs.store`
for the states, leases and retries)."""
from __future__ import annotations

import logging
import threading
import time
from typing import Callable, TypeVar

from sqlalchemy.exc import OperationalError

from neuroread.node.redact import describe_error

from .store import Job, JobError, JobOutcome, JobStateError, JobStore, LeaseLostError

logger = logging.getLogger(__name__)
T = TypeVar("T")


class Worker:
    """Claims jobs from ``store`` and runs ``run_job`` on them, one at a time.

    ``run_job(job) -> JobOutcome``; it raises :class:`JobError` for failures it knows about.
    While it runs, a heartbeat thread extends the lease every ``lease_s / 3`` seconds.
    """

    def __init__(self, store: JobStore, run_job: Callable[[Job], JobOutcome], worker_id: str,
                 *, lease_s: float = 60.0) -> None:
        if not callable(run_job):
            raise ValueError(f"Worker.run_job must be callable, got {run_job!r}")
        if not worker_id:
            raise ValueError("Worker.worker_id must be non-empty")
        if lease_s <= 0:
            raise ValueError(f"Worker.lease_s must be > 0, got {lease_s!r}")
        self.store, self.run_job, self.worker_id, self.lease_s = store, run_job, worker_id, lease_s

    def run_once(self) -> Job | None:
        """Claim one job and run it to done/retrying/failed; None when nothing was claimable."""
        job = self.store.claim(self.worker_id, self.lease_s)
        if job is None:
            return None
        return self.run_claimed(job)

    def run_claimed(self, job: Job) -> Job | None:
        """Run ``job``, claimed by this worker, to done/retrying/failed with its lease kept alive;
        None when the lease was lost meanwhile (another worker has the job now)."""
        stop = threading.Event()
        beat = threading.Thread(target=self._beat, args=(job.id, stop), name=f"{self.worker_id}-heartbeat",
                                daemon=True)
        beat.start()
        try:
            return self._run(job)
        finally:
            stop.set()
            beat.join()

    def _run(self, job: Job) -> Job | None:
        try:
            try:
                outcome = self.run_job(job)
            except JobError as e:
                reason, retry = e.reason, e.retryable
            except OperationalError as e:  # the job store unreachable mid-job (a database restart): try again later
                logger.warning("job %d: the job store was unreachable during the job: %s", job.id, describe_error(e))
                reason, retry = f"the job store was unreachable: {describe_error(e)}", True
            except Exception as e:  # noqa: BLE001 -- last resort, see below
                # A bug in a job function must not kill the worker thread, and must not vanish:
                # the job is recorded failed (not retried: a bug repeats) with the exception, and
                # the traceback is logged. Nothing else is caught anywhere in this loop.
                logger.exception("job %d: unexpected %s in the job function", job.id, type(e).__name__)
                reason, retry = f"internal error: {describe_error(e)}", False
            else:
                return self._record(lambda: self.store.complete(job.id, self.worker_id, outcome.outputs,
                                                                outcome.weights_hash))
            return self._record(lambda: self.store.fail(job.id, self.worker_id, reason, retry=retry))
        except LeaseLostError as e:
            logger.warning("%s", e)
            return None

    def _record(self, write: Callable[[], T]) -> T:
        """``write`` (the outcome into the store), tried again while the database is unreachable
        (a PostgreSQL restart) for up to a lease: the work is done, losing its record would run
        it again. After that the error propagates and the lease expires (the job runs again;
        its results have the same UIDs, so nothing is delivered twice)."""
        deadline = time.monotonic() + self.lease_s
        while True:
            try:
                return write()
            except OperationalError as exc:
                if time.monotonic() > deadline:
                    raise
                logger.warning("%s: the job store is unreachable (%s); recording the outcome again in 2 s",
                               self.worker_id, describe_error(exc))
                time.sleep(2)

    def _beat(self, job_id: int, stop: threading.Event) -> None:
        while not stop.wait(self.lease_s / 3):
            try:
                self.store.heartbeat(job_id, self.worker_id, self.lease_s)
            except LeaseLostError as e:
                logger.warning("%s", e)
                return
            except OperationalError as e:  # the database restarting: keep trying while the lease lasts
                logger.warning("job %d: heartbeat failed, the job store is unreachable: %s", job_id, describe_error(e))


class WorkerPool:
    """``n_workers`` in-process worker threads polling ``store`` every ``poll_s`` when idle.

    :meth:`start` first runs :meth:`JobStore.recover` so that jobs of a killed node resume.
    """

    def __init__(self, store: JobStore, run_job: Callable[[Job], JobOutcome], n_workers: int = 1,
                 poll_s: float = 1.0, *, lease_s: float = 60.0, name: str = "worker") -> None:
        if not isinstance(n_workers, int) or n_workers < 1:
            raise ValueError(f"WorkerPool.n_workers must be an int >= 1, got {n_workers!r}")
        if poll_s <= 0:
            raise ValueError(f"WorkerPool.poll_s must be > 0, got {poll_s!r}")
        self.store, self.poll_s = store, poll_s
        self.workers = [Worker(store, run_job, f"{name}-{i}", lease_s=lease_s) for i in range(n_workers)]
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> "WorkerPool":
        if self._threads:
            raise JobStateError("WorkerPool already started")
        self.store.recover()
        self._stop.clear()
        self._threads = [threading.Thread(target=self._loop, args=(w,), name=w.worker_id, daemon=True)
                         for w in self.workers]
        for t in self._threads:
            t.start()
        return self

    def stop(self, timeout: float | None = None) -> None:
        """Ask the workers to stop after their current job and wait for them."""
        self._stop.set()
        for t in self._threads:
            t.join(timeout)
        self._threads = []

    def __enter__(self) -> "WorkerPool":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _loop(self, worker: Worker) -> None:
        while not self._stop.is_set():
            if worker.run_once() is None:
                self._stop.wait(self.poll_s)
