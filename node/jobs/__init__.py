"""Jobs: the job state machine in SQL (:class:`JobStore`: idempotent enqueue, atomic claim, leases,
retries, the audit trail), the embedded in-process workers (:class:`WorkerPool`), and the
distributed queue's dispatch through Celery on Redis (:mod:`.dispatch`: :class:`Publisher`,
:func:`make_celery`, :func:`register_task`).
"""
from .dispatch import Publisher, make_celery, register_task, time_limited, worker_id
from .store import (
                    CLAIMABLE,
                    STATES,
                    AuditEntry,
                    Job,
                    JobError,
                    JobOutcome,
                    JobStateError,
                    JobStore,
                    LeaseLostError,
                    job_key,
)
from .workers import Worker, WorkerPool

__all__ = [
    "AuditEntry",
    "CLAIMABLE",
    "Job",
    "JobError",
    "JobOutcome",
    "JobStateError",
    "JobStore",
    "LeaseLostError",
    "Publisher",
    "STATES",
    "Worker",
    "WorkerPool",
    "job_key",
    "make_celery",
    "register_task",
    "time_limited",
    "worker_id",
]
