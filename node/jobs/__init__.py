"""Jobs: the job state machine in SQL (:class:`JobStore`: idempotent enqueue, atomic claim, leases,
retries, the audit trail) and the embedded in-process workers (:class:`WorkerPool`).
"""
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
    "STATES",
    "Worker",
    "WorkerPool",
    "job_key",
]
