"""The distributed queue: Celery on Redis dispatches job ids; the SQL job store decides.

The job store (:mod:`.store`) stays the one source of truth for claims, leases, attempts and the
audit trail. Celery only carries messages that name a job id:

* **Publishing** (the node, :class:`Publisher`): a job that becomes claimable is published
  once (:meth:`Publisher.publish`) and the time recorded (:meth:`JobStore.mark_published`).
  Every ``sweep_s`` the node's sweeper puts running jobs whose lease expired back to ``queued``
  (:meth:`JobStore.recover`: a whole worker killed, a machine lost) and publishes every
  claimable job whose message may be missing (:meth:`JobStore.unpublished`: never published,
  published before it last became claimable, or longer ago than ``republish_s``: a broker that
  lost its messages). So a lost worker's job runs again one lease after its last heartbeat,
  not after Redis's ``visibility_timeout`` (an hour by default); a lost message costs at most
  ``republish_s``.
* **Running** (a worker child, :func:`run_dispatched`): the message's job is claimed in SQL
  with a lease (:meth:`JobStore.claim_job`) and run by a :class:`~.workers.Worker`, which
  heartbeats the lease; a message whose job is not claimable (done, failed, running under a
  live lease: a duplicate or a stale redelivery) is dropped. A job running under a worker
  process of this machine that no longer exists (a pool child killed: Celery requeues its
  message at once) is taken over at once (:meth:`JobStore.take_over`) instead of waiting for
  its lease. A lease owner is ``host:pid`` (:func:`worker_id`), so each worker machine or
  container needs a host name of its own: two containers with one host name and separate pid
  namespaces could take over each other's live jobs (harmless, the outbox keeps one copy of each
  result, but the work is done twice).
* **Celery's settings** (:func:`make_celery`): ``acks_late`` (a message is acknowledged when the
  task ends, not when it starts), prefetch 1 (a busy child holds no other message),
  ``task_reject_on_worker_lost`` (a killed child's message is requeued, not acknowledged), a soft
  time limit of ``time_limit_s`` (the job fails with that reason) and a hard one 30 s later, no
  result backend (outcomes are in SQL). An attempt counts when the job is claimed, so a job that
  kills its worker every time ends ``failed`` after ``max_attempts`` and its messages drain.

Duplicates are harmless by construction: a job is claimed once at a time, and its results
have deterministic UIDs, so a job run twice (a lease lost to a stalled worker) puts the same
objects in the outbox, which keeps one row per object and destination.
"""
from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable

from celery import Celery
from celery.exceptions import SoftTimeLimitExceeded
from kombu.exceptions import KombuError
from kombu.exceptions import OperationalError as BrokerError
from sqlalchemy.exc import OperationalError, SQLAlchemyError

from neuroread.node.config import QueueConfig
from neuroread.node.redact import describe_error

from .store import Job, JobError, JobOutcome, JobStore
from .workers import Worker

logger = logging.getLogger(__name__)

TASK = "neuroread.run_job"
QUEUE = "neuroread"
HARD_LIMIT_MARGIN_S = 30.0
_PUBLISH_RETRY = {"max_retries": 2, "interval_start": 0, "interval_step": 0.5, "interval_max": 1}


def make_celery(queue: QueueConfig) -> Celery:
    """The Celery application of ``queue`` (its broker, time limit and the settings in the module
    docstring). Building it connects to nothing."""
    if queue.broker is None:
        raise ValueError("queue.broker is not set: the celery backend needs a Redis URL")
    app = Celery("neuroread", broker=queue.broker, set_as_current=False)
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_soft_time_limit=queue.time_limit_s,
        task_time_limit=queue.time_limit_s + HARD_LIMIT_MARGIN_S,
        task_ignore_result=True,
        result_backend=None,
        task_default_queue=QUEUE,
        task_serializer="json",
        accept_content=["json"],
        # Redis redelivers an unacknowledged message after this; the sweeper recovers the job
        # long before (one lease), and the late copy finds nothing to claim.
        broker_transport_options={"visibility_timeout": max(3600.0, 2 * (queue.time_limit_s + HARD_LIMIT_MARGIN_S))},
        broker_connection_retry_on_startup=True,
        broker_connection_timeout=5,
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        task_send_sent_event=False,
    )
    return app


def worker_id() -> str:
    """This process as a lease owner: ``host:pid`` (a pool child's own pid)."""
    return f"{socket.gethostname()}:{os.getpid()}"


def owner_is_dead(owner: str) -> bool:
    """Whether the lease owner ``owner`` (``host:pid``) is a process of this machine that no longer
    exists. An owner on another machine, or one that cannot be read, is never called dead."""
    host, _, pid = owner.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit() or int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # exists, under another user
        return False
    return False


def run_dispatched(worker: Worker, job_id: int) -> str:
    """Run the job a message names (rules in the module docstring); what happened, for the log."""
    store = worker.store
    job = store.claim_job(job_id, worker.worker_id, worker.lease_s)
    if job is None:
        try:
            current = store.get(job_id)
        except KeyError:
            logger.warning("message for job %d, which does not exist: dropped", job_id)
            return "unknown job"
        owner = current.lease_owner
        if current.state == "running" and owner and owner_is_dead(owner):
            if store.take_over(job_id, owner):
                job = store.claim_job(job_id, worker.worker_id, worker.lease_s)
        if job is None:
            state = store.get(job_id).state
            logger.info("message for job %d dropped: it is %s (a duplicate or late message)", job_id, state)
            return f"dropped: {state}"
    done = worker.run_claimed(job)
    return "lease lost" if done is None else done.state


def time_limited(run_job: Callable[[Job], JobOutcome], limit_s: float) -> Callable[[Job], JobOutcome]:
    """``run_job`` whose soft time limit becomes a job failure that names the limit."""
    def run(job: Job) -> JobOutcome:
        try:
            return run_job(job)
        except SoftTimeLimitExceeded:
            raise JobError(f"ran longer than queue.time_limit_s ({limit_s:g} s)", retryable=False) from None
    return run


def register_task(app: Celery, make_worker: Callable[[], Worker]) -> None:
    """Register the task that runs a job id on ``app``. ``make_worker`` builds this process's
    :class:`Worker` (store, job function, lease) the first time a task runs in it, so every pool
    child loads its models once and the parent process none."""
    state: dict[str, Worker] = {}

    @app.task(name=TASK, bind=True, acks_late=True, reject_on_worker_lost=True, max_retries=None)
    def run_job(task, job_id: int) -> str:  # noqa: ANN001 -- Celery's bound task
        if "worker" not in state:
            state["worker"] = make_worker()
        try:
            return run_dispatched(state["worker"], int(job_id))
        except OperationalError as exc:  # the job store unreachable before the job was claimed
            logger.warning("job %s: the job store is unreachable (%s); the message is retried in 5 s",
                           job_id, describe_error(exc))
            raise task.retry(countdown=5) from exc


class Publisher:
    """The node's side of the distributed queue: publishes job ids and runs the sweeper (see the
    module docstring). ``publish`` never raises for a broker that is down: the job stays claimable
    in SQL and the sweeper publishes it once the broker is back."""

    def __init__(self, app: Celery, store: JobStore, *, sweep_s: float, republish_s: float) -> None:
        self.app, self.store, self.sweep_s, self.republish_s = app, store, sweep_s, republish_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def publish(self, job_id: int) -> bool:
        """Hand a message naming ``job_id`` to the broker and record it; False when the broker
        could not be reached (logged; the sweeper tries again)."""
        try:
            with self._lock:
                self.app.send_task(TASK, args=[job_id], queue=QUEUE, retry=True, retry_policy=_PUBLISH_RETRY)
        except (KombuError, BrokerError, OSError) as exc:
            logger.warning("job %d: the broker is unreachable (%s); the sweeper will publish it", job_id,
                           describe_error(exc))
            return False
        self.store.mark_published(job_id)
        logger.debug("job %d published", job_id)
        return True

    def sweep(self) -> tuple[list[int], list[int]]:
        """Recover expired leases, then publish every claimable job whose message may be missing.
        Returns (recovered, published) job ids."""
        recovered = self.store.recover()
        published = [job_id for job_id in self.store.unpublished(self.republish_s) if self.publish(job_id)]
        if published:
            logger.info("sweeper published jobs %s", published)
        return recovered, published

    def start(self) -> "Publisher":
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="neuroread-sweeper", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)
            self._thread = None

    def _loop(self) -> None:
        while not self._stop.wait(self.sweep_s):
            try:
                self.sweep()
            except SQLAlchemyError as exc:  # the job store restarting: the next sweep tries again
                logger.error("sweeper: %s", describe_error(exc))
            except Exception as exc:  # noqa: BLE001 -- last resort: the sweeper must not die
                logger.exception("sweeper: unexpected %s", type(exc).__name__)
