"""The queue: jobs in SQL (SQLAlchemy Core), at-least-once execution, in-process workers.

States of a job::

    received ──release──▶ queued ──claim──▶ running ──complete──▶ done
                             ▲                 │
                             │                 ├─fail(retry, attempts < max)──▶ retrying ──(next_attempt_at)──▶ claimable
                             │                 ├─fail(no retry, or attempts = max)──▶ failed (reason)
                             └──recover────────┘  (lease expired: the worker died, e.g. kill -9)
    failed ──retry (CLI 'jobs retry')──▶ queued, attempts reset

* **Idempotent enqueue.** A job's key is a SHA-256 over (model, version, the identity of its
  weights and thresholds, slot → series UID, slot → sorted instance UIDs) (:func:`job_key`); the
  key is UNIQUE, so the same inputs through the same weights never make two jobs. An enlarged
  series (a late instance) has another instance set, and new weights or thresholds another
  identity, hence a new key (and new result objects: their UIDs derive from the same identity).
* **Atomic claim.** A worker picks a candidate, then moves it with a conditional
  ``UPDATE … WHERE id = ? AND state IN (queued, retrying) AND next_attempt_at <= now`` and
  owns it only if the row count is 1: two workers (threads or processes, one SQLite file or one
  PostgreSQL server) never both get a job.
* **Leases.** A running job has a lease owner and expiry, extended by :meth:`JobStore.heartbeat`.
  :meth:`JobStore.recover` (run at start-up) puts running jobs whose lease expired back to
  ``queued``; since the encode stage makes deterministic UIDs a re-run never duplicates outputs.
  An attempt counts when claimed, so a job that kills its node every time ends ``failed``
  after ``max_attempts`` rather than looping.
* **Back-off.** A retryable failure waits ``backoff_s * 2**(attempts-1)`` (capped by
  ``backoff_max_s``) in state ``retrying``.
* **Dispatch.** With a distributed engine (Celery, :mod:`.dispatch`) a message names one job:
  :meth:`JobStore.claim_job` claims that job only (a duplicate or stale message finds nothing to
  claim), :meth:`JobStore.take_over` gives back the job of a worker process known dead, and
  :meth:`JobStore.mark_published` / :meth:`JobStore.unpublished` keep when each job was last
  published, so that lost messages are re-published (table ``dispatch``).
* **Audit.** Every transition appends a row (job id, time, event, JSON detail): the inputs
  (series and instance UIDs) at enqueue, the model name/version/weights hash and output UIDs at
  completion; later stages add theirs (e.g. ``delivered``) with :meth:`JobStore.audit`.

Only portable SQL is used in the logic (no ``INSERT OR …``, no ``RETURNING``), so a
``postgresql+psycopg://`` URL works as is. SQLite connections get WAL journaling and a busy
timeout (connection set-up, not logic). Times are stored as UTC.
"""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Callable, Iterable, Mapping

from sqlalchemy import create_engine, event, insert, or_, select, update
from sqlalchemy.engine import Engine, RowMapping
from sqlalchemy.exc import IntegrityError
from sqlalchemy.pool import StaticPool

from neuroread.node.schema import audit_table, create_all, dispatch_table, jobs_table, series_table, utc_now

logger = logging.getLogger(__name__)

STATES = ("received", "queued", "running", "done", "failed", "retrying")
CLAIMABLE = ("queued", "retrying")
Clock = Callable[[], datetime]


class JobStateError(ValueError):
    """An operation that the job's current state does not allow (e.g. retry of a done job)."""


class LeaseLostError(RuntimeError):
    """The worker no longer holds the job's lease (it expired and the job was recovered)."""


class JobError(Exception):
    """What a job function raises, by contract, when a job cannot finish.

    ``retryable=True`` for transient causes (a destination down, a busy device);
    ``False`` for causes that a retry will not fix (undecodable transfer syntax, bad geometry).
    """

    def __init__(self, reason: str, *, retryable: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retryable = retryable


@dataclass(frozen=True)
class Job:
    id: int
    key: str
    model: str
    model_version: str
    inputs: dict[str, str]
    instances: dict[str, list[str]]
    state: str
    reason: str
    attempts: int
    next_attempt_at: datetime | None
    lease_owner: str | None
    lease_expires: datetime | None
    outputs: dict[str, Any] | None
    created: datetime
    updated: datetime

    @classmethod
    def from_row(cls, row: RowMapping) -> "Job":
        return cls(id=row["id"], key=row["job_key"], model=row["model"], model_version=row["model_version"],
                   inputs=dict(row["inputs"]), instances={k: list(v) for k, v in row["instances"].items()},
                   state=row["state"], reason=row["reason"], attempts=row["attempts"],
                   next_attempt_at=row["next_attempt_at"], lease_owner=row["lease_owner"],
                   lease_expires=row["lease_expires"], outputs=row["outputs"],
                   created=row["created"], updated=row["updated"])


@dataclass(frozen=True)
class AuditEntry:
    job_id: int
    at: datetime
    event: str
    detail: dict[str, Any]


@dataclass(frozen=True)
class JobOutcome:
    """What a job function returns: JSON-able outputs (e.g. ``{"sop_instance_uids": [...]}``)
    and the identity of the weights that made them."""

    outputs: Mapping[str, Any] = field(default_factory=dict)
    weights_hash: str = ""


def job_key(model: str, version: str, inputs: Mapping[str, str], instances: Mapping[str, Iterable[str]],
            identity: str = "") -> str:
    """The idempotency key: SHA-256 hex of the canonical JSON of the job's inputs and ``identity``
    (the weights' SHA-256 and effective thresholds, :meth:`neuroread.models.weights.Weights.identity`)."""
    canonical = json.dumps({"model": model, "version": version, "identity": identity,
                            "inputs": dict(sorted(inputs.items())),
                            "instances": {slot: sorted(set(uids)) for slot, uids in sorted(instances.items())}},
                           sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def _make_engine(url: str, busy_timeout_s: float) -> Engine:
    if url.startswith("sqlite"):
        memory = url in ("sqlite://", "sqlite:///:memory:") or "mode=memory" in url
        kwargs: dict[str, Any] = {"connect_args": {"timeout": busy_timeout_s, "check_same_thread": False}}
        if memory:
            kwargs["poolclass"] = StaticPool
        engine = create_engine(url, **kwargs)

        @event.listens_for(engine, "connect")
        def _sqlite_setup(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            if not memory:
                cur.execute("PRAGMA journal_mode=WAL")
            cur.execute(f"PRAGMA busy_timeout={int(busy_timeout_s * 1000)}")
            cur.close()
        return engine
    return create_engine(url, pool_pre_ping=True)


class JobStore:
    """Jobs, series and the audit trail in one SQL database (see the module docstring).

    Parameters
    ----------
    url: SQLAlchemy URL, e.g. ``sqlite:////var/lib/neuroread/jobs.db`` or
        ``postgresql+psycopg://user@host/neuroread``.
    clock: returns the current aware UTC time; injectable for tests.
    max_attempts: claims allowed per job before it ends ``failed``.
    backoff_s, backoff_max_s: first retry delay and its cap (doubling in between).
    busy_timeout_s: how long an SQLite writer waits for the lock.
    """

    def __init__(self, url: str, *, clock: Clock = utc_now, max_attempts: int = 3, backoff_s: float = 30.0,
                 backoff_max_s: float = 3600.0, busy_timeout_s: float = 30.0) -> None:
        if not isinstance(url, str) or not url:
            raise ValueError(f"JobStore.url must be a non-empty SQLAlchemy URL, got {url!r}")
        if not callable(clock):
            raise ValueError(f"JobStore.clock must be callable, got {clock!r}")
        if not isinstance(max_attempts, int) or max_attempts < 1:
            raise ValueError(f"JobStore.max_attempts must be an int >= 1, got {max_attempts!r}")
        if backoff_s <= 0 or backoff_max_s < backoff_s:
            raise ValueError(f"JobStore.backoff_s must be > 0 and <= backoff_max_s, got {backoff_s!r}, {backoff_max_s!r}")
        if busy_timeout_s <= 0:
            raise ValueError(f"JobStore.busy_timeout_s must be > 0, got {busy_timeout_s!r}")
        self.url = url
        self.clock = clock
        self.max_attempts = max_attempts
        self.backoff_s = float(backoff_s)
        self.backoff_max_s = float(backoff_max_s)
        self.engine = _make_engine(url, busy_timeout_s)
        create_all(self.engine)

    def close(self) -> None:
        self.engine.dispose()

    # -- jobs ---------------------------------------------------------------------------------
    def enqueue(self, model: str, version: str, inputs: Mapping[str, str],
                instances: Mapping[str, Iterable[str]], *, ready: bool = True, identity: str = "") -> Job:
        """Create the job for these inputs, or return the one that already exists (same key).

        ``ready=False`` leaves a new job in ``received`` until :meth:`release`. ``identity``: the
        weights and thresholds the job will run with (part of the key, recorded in the audit).
        """
        for name, value in (("model", model), ("version", version)):
            if not isinstance(value, str) or not value:
                raise ValueError(f"enqueue: {name} must be a non-empty str, got {value!r}")
        if not inputs:
            raise ValueError("enqueue: inputs must name at least one slot")
        snapshot = {slot: sorted(set(instances.get(slot, ()))) for slot in inputs}
        missing = [slot for slot, uids in snapshot.items() if not uids]
        if missing or set(instances) - set(inputs):
            raise ValueError(f"enqueue: instances must list UIDs for exactly the input slots {sorted(inputs)}, "
                             f"got {sorted(instances)} (empty: {missing})")
        key = job_key(model, version, inputs, snapshot, identity)
        now = self.clock()
        state = "queued" if ready else "received"
        try:
            with self.engine.begin() as conn:
                job_id = conn.execute(insert(jobs_table).values(
                    job_key=key, model=model, model_version=version, inputs=dict(inputs), instances=snapshot,
                    state=state, reason="", attempts=0, next_attempt_at=None, created=now, updated=now,
                )).inserted_primary_key[0]
                self._audit(conn, job_id, state, {"model": model, "version": version, "identity": identity,
                                                  "inputs": dict(inputs), "instances": snapshot})
        except IntegrityError:
            existing = self._by_key(key)
            if existing is None:
                raise
            logger.info("job %d exists for these inputs (key %s), not enqueued again", existing.id, key[:12])
            return existing
        logger.info("job %d %s: model %s %s, series %s", job_id, state, model, version, sorted(inputs.values()))
        return self.get(job_id)

    def release(self, job_id: int) -> Job:
        """``received`` → ``queued``."""
        self._transition(job_id, ("received",), {"state": "queued"}, "queued", {})
        return self.get(job_id)

    def claim(self, worker_id: str, lease_s: float) -> Job | None:
        """Take the oldest claimable job for ``worker_id`` with a lease of ``lease_s``; None if none."""
        self._check_claim(worker_id, lease_s)
        with self.engine.connect() as conn:
            candidates = conn.execute(select(jobs_table.c.id).where(self._claimable(self.clock()))
                                      .order_by(jobs_table.c.created, jobs_table.c.id).limit(8)).scalars().all()
        for job_id in candidates:
            job = self._try_claim(job_id, worker_id, lease_s)
            if job is not None:
                return job
        return None

    def claim_job(self, job_id: int, worker_id: str, lease_s: float) -> Job | None:
        """Claim the job ``job_id`` itself (what a dispatched message names) for ``worker_id``;
        None when it is not claimable now: unknown, done, failed, running under a lease, or
        retrying and not yet due. Two claims of one job never both succeed."""
        self._check_claim(worker_id, lease_s)
        return self._try_claim(job_id, worker_id, lease_s)

    @staticmethod
    def _check_claim(worker_id: str, lease_s: float) -> None:
        if not worker_id:
            raise ValueError("claim: worker_id must be non-empty")
        if lease_s <= 0:
            raise ValueError(f"claim: lease_s must be > 0, got {lease_s!r}")

    @staticmethod
    def _claimable(now: datetime) -> Any:
        due = or_(jobs_table.c.next_attempt_at.is_(None), jobs_table.c.next_attempt_at <= now)
        return jobs_table.c.state.in_(CLAIMABLE) & due

    def _try_claim(self, job_id: int, worker_id: str, lease_s: float) -> Job | None:
        now = self.clock()
        with self.engine.begin() as conn:
            won = conn.execute(update(jobs_table).where((jobs_table.c.id == job_id) & self._claimable(now)).values(
                state="running", lease_owner=worker_id, lease_expires=now + timedelta(seconds=lease_s),
                attempts=jobs_table.c.attempts + 1, updated=now)).rowcount == 1
            if won:
                self._audit(conn, job_id, "running", {"worker": worker_id})
        if not won:
            return None
        job = self.get(job_id)
        logger.info("job %d claimed by %s (attempt %d)", job_id, worker_id, job.attempts)
        return job

    def heartbeat(self, job_id: int, worker_id: str, lease_s: float) -> None:
        """Extend the lease; :class:`LeaseLostError` if ``worker_id`` no longer holds it."""
        now = self.clock()
        with self.engine.begin() as conn:
            n = conn.execute(update(jobs_table).where(self._held(job_id, worker_id)).values(
                lease_expires=now + timedelta(seconds=lease_s), updated=now)).rowcount
        if n != 1:
            raise LeaseLostError(f"job {job_id}: {worker_id} no longer holds the lease")

    def complete(self, job_id: int, worker_id: str, outputs: Mapping[str, Any] | None = None,
                 weights_hash: str = "") -> Job:
        """``running`` → ``done``, recording the outputs (JSON-able) and the weights identity."""
        outputs = dict(outputs or {})
        self._finish(job_id, worker_id, {"state": "done", "outputs": outputs, "reason": ""},
                     "done", {"outputs": outputs, "weights_hash": weights_hash})
        return self.get(job_id)

    def fail(self, job_id: int, worker_id: str, reason: str, retry: bool) -> Job:
        """Record a failure: ``retrying`` with back-off, or ``failed`` when not retryable or out of attempts."""
        job = self.get(job_id)
        if retry and job.attempts < self.max_attempts:
            delay = min(self.backoff_s * 2 ** max(job.attempts - 1, 0), self.backoff_max_s)
            at = self.clock() + timedelta(seconds=delay)
            self._finish(job_id, worker_id, {"state": "retrying", "reason": reason, "next_attempt_at": at},
                         "retrying", {"reason": reason, "attempt": job.attempts, "next_attempt_at": at.isoformat()})
            logger.warning("job %d attempt %d failed, retry in %.0f s: %s", job_id, job.attempts, delay, reason)
        else:
            if retry:
                reason = f"{reason} (gave up after {job.attempts} attempts)"
            self._finish(job_id, worker_id, {"state": "failed", "reason": reason},
                         "failed", {"reason": reason, "attempt": job.attempts})
            logger.error("job %d failed: %s", job_id, reason)
        return self.get(job_id)

    def recover(self, now: datetime | None = None) -> list[int]:
        """Running jobs whose lease expired before ``now`` go back to ``queued`` (or ``failed`` when
        they used all their attempts). Returns the ids moved. Run at start-up (and, with a
        distributed engine, every few seconds by the node's sweeper)."""
        now = now or self.clock()
        return self._give_back((jobs_table.c.state == "running") & (jobs_table.c.lease_expires < now), now,
                               "lease of {owner} expired")

    def take_over(self, job_id: int, owner: str) -> bool:
        """Give back ``job_id`` at once when it is running under ``owner``, a worker known dead
        (its process is gone), as :meth:`recover` would once the lease expired: ``queued``, or
        ``failed`` when out of attempts. False when the job is no longer ``owner``'s."""
        held = (jobs_table.c.id == job_id) & (jobs_table.c.state == "running") & (jobs_table.c.lease_owner == owner)
        return bool(self._give_back(held, self.clock(), "worker {owner} died"))

    def _give_back(self, which: Any, now: datetime, why: str) -> list[int]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(jobs_table.c.id, jobs_table.c.attempts, jobs_table.c.lease_owner)
                                .where(which)).all()
        moved = []
        for job_id, attempts, owner in rows:
            out_of_attempts = attempts >= self.max_attempts
            values = ({"state": "failed", "reason": f"{why.format(owner=owner)} after {attempts} attempts"}
                      if out_of_attempts else {"state": "queued", "next_attempt_at": None})
            with self.engine.begin() as conn:
                n = conn.execute(update(jobs_table).where((jobs_table.c.id == job_id) & which).values(
                    lease_owner=None, lease_expires=None, updated=now, **values)).rowcount
                if n == 1:
                    self._audit(conn, job_id, "recovered", {"lease_owner": owner, "attempts": attempts,
                                                            "state": values["state"],
                                                            "why": why.format(owner=owner)})
            if n == 1:
                moved.append(job_id)
                logger.warning("job %d: %s, now %s", job_id, why.format(owner=owner), values["state"])
        return moved

    # -- dispatch (distributed engine) --------------------------------------------------------
    def mark_published(self, job_id: int) -> None:
        """Record that a message naming ``job_id`` was just handed to the broker."""
        now = self.clock()
        with self.engine.begin() as conn:
            n = conn.execute(update(dispatch_table).where(dispatch_table.c.job_id == job_id).values(
                published_at=now, count=dispatch_table.c.count + 1)).rowcount
            if n == 0:
                try:
                    with conn.begin_nested():
                        conn.execute(insert(dispatch_table).values(job_id=job_id, published_at=now, count=1))
                except IntegrityError:  # published meanwhile by another node
                    conn.execute(update(dispatch_table).where(dispatch_table.c.job_id == job_id).values(
                        published_at=now, count=dispatch_table.c.count + 1))

    def unpublished(self, republish_s: float, now: datetime | None = None) -> list[int]:
        """Claimable, due jobs whose message may be missing: never published, published before
        they last became claimable (enqueued, recovered, retried, or a back-off that ended), or
        published more than ``republish_s`` seconds ago (a broker that lost its messages)."""
        now = now or self.clock()
        query = (select(jobs_table.c.id, jobs_table.c.updated, jobs_table.c.next_attempt_at,
                        dispatch_table.c.published_at)
                 .select_from(jobs_table.outerjoin(dispatch_table, dispatch_table.c.job_id == jobs_table.c.id))
                 .where(self._claimable(now)).order_by(jobs_table.c.created, jobs_table.c.id))
        stale = now - timedelta(seconds=republish_s)
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        return [job_id for job_id, updated, next_at, published in rows
                if published is None or published < max(updated, next_at or updated) or published < stale]

    def retry(self, job_id: int) -> Job:
        """A ``failed`` job back to ``queued`` with its attempts reset (CLI ``jobs retry``)."""
        self._transition(job_id, ("failed",), {"state": "queued", "attempts": 0, "reason": "",
                                               "next_attempt_at": None}, "retry", {})
        return self.get(job_id)

    def get(self, job_id: int) -> Job:
        with self.engine.connect() as conn:
            row = conn.execute(select(jobs_table).where(jobs_table.c.id == job_id)).mappings().first()
        if row is None:
            raise KeyError(f"no job {job_id}")
        return Job.from_row(row)

    def list(self, state: str | None = None) -> list[Job]:
        if state is not None and state not in STATES:
            raise ValueError(f"list: state must be one of {STATES}, got {state!r}")
        query = select(jobs_table).order_by(jobs_table.c.id)
        if state is not None:
            query = query.where(jobs_table.c.state == state)
        with self.engine.connect() as conn:
            return [Job.from_row(r) for r in conn.execute(query).mappings()]

    # -- audit --------------------------------------------------------------------------------
    def audit(self, job_id: int, event_name: str, detail: Mapping[str, Any]) -> None:
        """Append an event of a later stage (e.g. ``delivered`` with destination and UIDs)."""
        self.get(job_id)
        with self.engine.begin() as conn:
            self._audit(conn, job_id, event_name, detail)

    def audit_trail(self, job_id: int) -> list[AuditEntry]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(audit_table).where(audit_table.c.job_id == job_id)
                                .order_by(audit_table.c.id)).mappings().all()
        return [AuditEntry(r["job_id"], r["at"], r["event"], dict(r["detail"])) for r in rows]

    # -- series -------------------------------------------------------------------------------
    def record_series(self, study_uid: str, series_uid: str, instances: int, first_received: datetime,
                      last_received: datetime, state: str) -> None:
        """Insert or update the assemble stage's view of a series."""
        values = dict(study_uid=study_uid, instances=instances, first_received=first_received,
                      last_received=last_received, state=state)
        with self.engine.begin() as conn:
            n = conn.execute(update(series_table).where(series_table.c.series_uid == series_uid)
                             .values(**values)).rowcount
            if n == 0:
                try:
                    with conn.begin_nested():
                        conn.execute(insert(series_table).values(series_uid=series_uid, **values))
                except IntegrityError:  # inserted meanwhile by another writer: update it
                    conn.execute(update(series_table).where(series_table.c.series_uid == series_uid)
                                 .values(**values))

    def series(self, series_uid: str) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(series_table).where(series_table.c.series_uid == series_uid)).mappings().first()
        return dict(row) if row else None

    # -- internals ----------------------------------------------------------------------------
    def inputs_index(self) -> dict[str, int]:
        """Every job by the key of its inputs alone (:func:`job_key` with no identity) → the newest
        job's id: which inputs were processed already, with whatever weights (one pass over the
        table, for the node's start-up rescan)."""
        index: dict[str, int] = {}
        with self.engine.connect() as conn:
            rows = conn.execute(select(jobs_table.c.id, jobs_table.c.model, jobs_table.c.model_version,
                                       jobs_table.c.inputs, jobs_table.c.instances).order_by(jobs_table.c.id))
            for row in rows:
                index[job_key(row.model, row.model_version, row.inputs, row.instances)] = int(row.id)
        return index

    def _by_key(self, key: str) -> Job | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(jobs_table).where(jobs_table.c.job_key == key)).mappings().first()
        return Job.from_row(row) if row else None

    @staticmethod
    def _held(job_id: int, worker_id: str) -> Any:
        return (jobs_table.c.id == job_id) & (jobs_table.c.state == "running") & (jobs_table.c.lease_owner == worker_id)

    def _finish(self, job_id: int, worker_id: str, values: dict[str, Any], event_name: str,
                detail: dict[str, Any]) -> None:
        now = self.clock()
        with self.engine.begin() as conn:
            n = conn.execute(update(jobs_table).where(self._held(job_id, worker_id)).values(
                lease_owner=None, lease_expires=None, updated=now, **values)).rowcount
            if n == 1:
                self._audit(conn, job_id, event_name, {"worker": worker_id, **detail})
        if n != 1:
            raise LeaseLostError(f"job {job_id}: {worker_id} no longer holds the lease; {event_name} not recorded")

    def _transition(self, job_id: int, from_states: tuple[str, ...], values: dict[str, Any], event_name: str,
                    detail: dict[str, Any]) -> None:
        now = self.clock()
        with self.engine.begin() as conn:
            n = conn.execute(update(jobs_table).where((jobs_table.c.id == job_id)
                                                      & jobs_table.c.state.in_(from_states))
                             .values(updated=now, **values)).rowcount
            if n == 1:
                self._audit(conn, job_id, event_name, detail)
        if n != 1:
            state = self.get(job_id).state
            raise JobStateError(f"job {job_id} is {state}; {event_name} needs one of {from_states}")

    def _audit(self, conn: Any, job_id: int, event_name: str, detail: Mapping[str, Any]) -> None:
        conn.execute(insert(audit_table).values(job_id=job_id, at=self.clock(), event=event_name,
                                                detail=json.loads(json.dumps(dict(detail), default=str))))
