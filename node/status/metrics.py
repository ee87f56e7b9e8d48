"""The node's Prometheus metrics (prometheus-client), in a registry of their own.

:class:`NodeMetrics` keeps a private :class:`~prometheus_client.CollectorRegistry` (never the
global default: several nodes may live in one process, e.g. in tests) with three kinds of
metric, told apart by where their values come from:

=========================================  =========================================================
counted by the node, in this process
-------------------------------------------------------------------------------------------------------
``neuroread_instances_received_total``     instances the spool stored, by ``outcome`` (``new``,
{outcome}                                  ``duplicate``, ``replaced``): :meth:`NodeMetrics.instance_received`
=========================================  =========================================================
read from the database at each scrape (the same for every process that reads it)
-------------------------------------------------------------------------------------------------------
``neuroread_jobs{state,model}``            jobs per state and model (every state of every model
                                           that has a job, zeros included)
``neuroread_queue_depth``                  claimable jobs: ``queued``, and ``retrying`` whose next
                                           attempt is due
``neuroread_outbox_backlog{destination}``  outbox rows waiting (``pending`` + ``retrying``)
``neuroread_outbox_oldest_waiting_seconds  how long the oldest waiting row has waited (0: none)
{destination}``
``neuroread_outbox_rejected{destination}`` rows the destination refused (not retried by itself)
``neuroread_delivery_retries_total         failed delivery attempts: the sum over the outbox rows
{destination}``                            of their attempts but the one that sent (rows are never
                                           deleted and attempts only grow, so it only grows)
=========================================  =========================================================
observed by the poller from jobs that finish after it started
-------------------------------------------------------------------------------------------------------
``neuroread_inference_seconds{model}``     a done job's last ``running`` audit event (its claim)
                                           → its ``done`` event: inputs loaded, model run,
                                           results encoded, checked and put in the outbox
``neuroread_turnaround_seconds{model}``    the last instance of the job's input series received
                                           (``series.last_received``, capped at the job's creation)
                                           → the last of its outbox rows sent; observed once all
                                           its rows are ``sent``; not for a job without
                                           destinations, nor one whose objects were sent before it
                                           was created (a re-run: the PACS had them already)
``neuroread_jobs_failed_total{model}``     jobs that ended ``failed`` (their ``failed`` event, or a
                                           ``recovered`` one to ``failed``: a lease lost once too often)
=========================================  =========================================================

The poller (:meth:`NodeMetrics.start`, a thread; :meth:`NodeMetrics.poll` does one pass) reads
the ``audit`` table after a cursor, because the workers that finish jobs may be other processes
or machines (the Celery backend). It starts after what exists when :meth:`~NodeMetrics.start`
(or the first :meth:`~NodeMetrics.poll`) runs: old jobs are not observed again at every restart,
which Prometheus would read as a burst of work. Jobs done before the start whose results still
wait in the outbox are watched, so a restart while the PACS is down loses no turnaround. The
histograms and counters of this process begin at zero at its start, as any Prometheus counter.

The cursor is an audit row id. Ids are handed out at insert but become visible at commit, so
with concurrent writers (PostgreSQL) a lower id can appear after a higher one was read: ids
skipped over are remembered for :data:`GAP_S` seconds and read again, then given up (a rolled
back insert leaves a gap forever).

With several node processes on one database, each one's poller observes every job: scrape one
of them, or aggregate with ``max``, not ``sum``.
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder

from neuroread.node.jobs import STATES
from neuroread.node.schema import audit_table, jobs_table, outbox_jobs_table, outbox_table, utc_now

from .queries import WAITING, backlog, job_counts, queue_depth, series_last_received

logger = logging.getLogger(__name__)

OUTCOMES = ("new", "duplicate", "replaced")  # of neuroread.node.spool.InstanceRecord
INFERENCE_BUCKETS = (0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1200, 1800, 3600)
TURNAROUND_BUCKETS = (5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400, 43200, 86400)
GAP_S = 300.0  # how long an audit id skipped over is looked for again
MAX_GAPS = 10_000
MAX_AWAITING = 10_000  # done jobs whose deliveries are watched at once
BATCH = 5_000  # audit rows read per pass
_CHUNK = 500  # values per SQL IN (...)

Clock = Callable[[], datetime]


def _chunks(values: Sequence[Any]) -> Iterator[list[Any]]:
    for start in range(0, len(values), _CHUNK):
        yield list(values[start:start + _CHUNK])


class _DatabaseCollector:
    """The gauges and the retries counter, read from the database at each scrape."""

    def __init__(self, engine: sa.Engine, clock: Clock) -> None:
        self.engine, self.clock = engine, clock

    def collect(self) -> Iterable[Metric]:
        now = self.clock()
        with self.engine.connect() as conn:
            counts, depth, lines = job_counts(conn), queue_depth(conn, now), backlog(conn, now.timestamp())
        jobs = GaugeMetricFamily("neuroread_jobs", "Jobs by state and model (from the job store).",
                                 labels=["state", "model"])
        for model in sorted({model for model, _ in counts}):
            for state in STATES:
                jobs.add_metric([state, model], counts.get((model, state), 0))
        yield jobs
        yield GaugeMetricFamily("neuroread_queue_depth", "Claimable jobs: queued, and retrying whose next attempt "
                                "is due.", value=depth)
        families = (
            (GaugeMetricFamily("neuroread_outbox_backlog", "Outbox rows waiting (pending or retrying) per "
                               "destination.", labels=["destination"]), lambda b: b.waiting),
            (GaugeMetricFamily("neuroread_outbox_oldest_waiting_seconds", "Age of the oldest waiting outbox row "
                               "per destination (0: none waits).", labels=["destination"]),
             lambda b: b.oldest_waiting_s or 0.0),
            (GaugeMetricFamily("neuroread_outbox_rejected", "Outbox rows the destination rejected.",
                               labels=["destination"]), lambda b: b.rejected),
            (CounterMetricFamily("neuroread_delivery_retries", "Failed delivery attempts per destination (every "
                                 "attempt of an outbox row but the one that sent it).", labels=["destination"]),
             lambda b: b.failed_attempts),
        )
        for family, value in families:
            for line in lines:
                family.add_metric([line.destination], value(line))
            yield family


@dataclass(frozen=True)
class _Awaiting:
    """A done job whose deliveries are watched for its turnaround."""

    model: str
    series_uids: tuple[str, ...]
    created: float  # epoch seconds
    since: float  # time.monotonic() when the watch began


class NodeMetrics:
    """The node's metrics (see the module docstring).

    Parameters
    ----------
    engine:
        The node's database (:attr:`neuroread.node.jobs.JobStore.engine`).
    clock:
        The current aware UTC time (for the queue depth and the outbox ages); tests pass their own.
    models:
        The model names whose histograms and failure counter are exported from the start, at
        zero (the registry's; others appear with their first job), so that a rate over them
        is defined before anything happened.
    max_wait_s:
        How long a done job's deliveries are watched for its turnaround before it is given up
        (a destination down for longer, a rejected object never requeued).
    """

    def __init__(self, engine: sa.Engine, *, clock: Clock = utc_now, models: Iterable[str] = (),
                 max_wait_s: float = 86400.0) -> None:
        if not isinstance(engine, sa.Engine):
            raise ValueError(f"NodeMetrics.engine must be an sqlalchemy Engine, got {type(engine).__name__}")
        if not callable(clock):
            raise ValueError(f"NodeMetrics.clock must be callable, got {clock!r}")
        if isinstance(max_wait_s, bool) or not isinstance(max_wait_s, (int, float)) or max_wait_s <= 0:
            raise ValueError(f"NodeMetrics.max_wait_s must be a positive number of seconds, got {max_wait_s!r}")
        self.engine, self.clock, self.max_wait_s = engine, clock, float(max_wait_s)
        self.registry = CollectorRegistry()
        self._received = Counter("neuroread_instances_received", "Instances stored by the spool, by outcome.",
                                 ["outcome"], registry=self.registry)
        for outcome in OUTCOMES:
            self._received.labels(outcome)
        self._inference = Histogram("neuroread_inference_seconds", "A job's claim to its done event (load, infer, "
                                    "encode, check, outbox).", ["model"], buckets=INFERENCE_BUCKETS,
                                    registry=self.registry)
        self._turnaround = Histogram("neuroread_turnaround_seconds", "The last instance of a job's series received "
                                     "to the last of its results sent.", ["model"], buckets=TURNAROUND_BUCKETS,
                                     registry=self.registry)
        self._failed = Counter("neuroread_jobs_failed", "Jobs that ended failed.", ["model"], registry=self.registry)
        for model in models:
            if not isinstance(model, str) or not model:
                raise ValueError(f"NodeMetrics.models must hold model names, got {model!r}")
            for metric in (self._inference, self._turnaround, self._failed):
                metric.labels(model)
        self.registry.register(_DatabaseCollector(engine, clock))
        self._lock = threading.Lock()
        self._cursor: int | None = None  # None: the poller has not begun
        self._gaps: dict[int, float] = {}  # audit id skipped over -> time.monotonic() when seen missing
        self._awaiting: dict[int, _Awaiting] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- what the node calls ------------------------------------------------------------------------
    def instance_received(self, outcome: str) -> None:
        """Count one instance stored by the spool (``InstanceRecord.outcome``)."""
        if outcome not in OUTCOMES:
            raise ValueError(f"instance_received: outcome must be one of {OUTCOMES}, got {outcome!r}")
        self._received.labels(outcome).inc()

    def exposition(self, accept: str | None = None) -> tuple[bytes, str]:
        """The metrics in the format ``accept`` (an HTTP Accept header) asks for, Prometheus text
        by default, and its content type. Raises :class:`sqlalchemy.exc.SQLAlchemyError` when the
        database cannot be read."""
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type

    # -- the poller ---------------------------------------------------------------------------------
    def start(self, interval_s: float = 2.0) -> None:
        """Begin after what the audit trail holds now (see the module docstring) and poll every
        ``interval_s`` seconds in a thread until :meth:`stop`."""
        if isinstance(interval_s, bool) or not isinstance(interval_s, (int, float)) or interval_s <= 0:
            raise ValueError(f"NodeMetrics.start: interval_s must be a positive number, got {interval_s!r}")
        if self._thread is not None:
            raise RuntimeError("NodeMetrics is already started")
        with self._lock:
            if self._cursor is None:
                self._begin()
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, args=(float(interval_s),), name="neuroread-metrics",
                                        daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop polling (waits up to ``timeout`` seconds for a pass in progress)."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        self._stop.set()
        thread.join(timeout)

    def poll(self) -> int:
        """One pass: observe the jobs that finished since the last one, and the turnaround of
        watched jobs whose results are all sent. Returns the number of observations made. The
        first pass (when :meth:`start` did not make it) only sets the starting point."""
        with self._lock:
            if self._cursor is None:
                self._begin()
                return 0
            with self.engine.connect() as conn:
                made = self._observe_finished(conn, self._read_audit(conn))
                return made + self._observe_delivered(conn)

    def _loop(self, interval_s: float) -> None:
        while not self._stop.wait(interval_s):
            try:
                self.poll()
            except sa.exc.SQLAlchemyError as exc:
                logger.error("metrics poller: database: %s: %s; trying again in %g s", type(exc).__name__, exc,
                             interval_s)

    def _begin(self) -> None:
        """The cursor at the newest audit row; done jobs whose results still wait are watched."""
        a, j, o, oj = audit_table.c, jobs_table.c, outbox_table.c, outbox_jobs_table.c
        with self.engine.connect() as conn:
            self._cursor = int(conn.execute(sa.select(sa.func.max(a.id))).scalar() or 0)
            waiting = conn.execute(sa.select(oj.job_id).distinct().join(outbox_table, o.id == oj.item_id)
                                   .where(o.state.in_(WAITING)).limit(MAX_AWAITING)).scalars().all()
            ids = [int(x) for x in waiting if x.isdigit()]
            for chunk in _chunks(ids):
                for row in conn.execute(sa.select(j.id, j.model, j.inputs, j.created)
                                        .where(j.id.in_(chunk), j.state == "done")):
                    self._watch(row)
        logger.info("metrics poller: from audit row %d, %d done jobs' deliveries watched", self._cursor,
                    len(self._awaiting))

    def _watch(self, job: Any) -> None:
        if len(self._awaiting) < MAX_AWAITING:
            self._awaiting[int(job.id)] = _Awaiting(job.model, tuple(sorted(dict(job.inputs).values())),
                                                    job.created.timestamp(), time.monotonic())

    def _read_audit(self, conn: sa.Connection) -> list[Any]:
        """The audit rows after the cursor and those skipped over earlier that are visible now."""
        a = audit_table.c
        newer = a.id > self._cursor
        where = sa.or_(newer, a.id.in_(list(self._gaps))) if self._gaps else newer
        rows = conn.execute(sa.select(a.id, a.job_id, a.event, a.at).where(where).order_by(a.id).limit(BATCH)).all()
        now = time.monotonic()
        for row in rows:
            if row.id <= self._cursor:
                self._gaps.pop(row.id, None)
                continue
            for missing in range(self._cursor + 1, min(row.id, self._cursor + 1 + MAX_GAPS - len(self._gaps))):
                self._gaps[missing] = now
            self._cursor = row.id
        for gap in [g for g, seen in self._gaps.items() if now - seen > GAP_S]:
            del self._gaps[gap]
        return rows

    def _observe_finished(self, conn: sa.Connection, rows: list[Any]) -> int:
        """Inference time of each ``done`` event, a count per failure; done jobs watched."""
        a, j = audit_table.c, jobs_table.c
        recovered = [r.id for r in rows if r.event == "recovered"]  # their detail says whether to failed
        to_failed = {audit_id for chunk in _chunks(recovered) for audit_id, detail in conn.execute(
            sa.select(a.id, a.detail).where(a.id.in_(chunk))) if dict(detail).get("state") == "failed"}
        ended = [r for r in rows if r.event in ("done", "failed") or r.id in to_failed]
        if not ended:
            return 0
        ids = sorted({r.job_id for r in ended})
        jobs, claims = {}, {}  # claims: job id -> [(audit id, at)] of its running events
        for chunk in _chunks(ids):
            jobs.update({row.id: row for row in conn.execute(
                sa.select(j.id, j.model, j.inputs, j.created).where(j.id.in_(chunk)))})
            for job_id, audit_id, at in conn.execute(sa.select(a.job_id, a.id, a.at)
                                                     .where(a.job_id.in_(chunk), a.event == "running")):
                claims.setdefault(job_id, []).append((audit_id, at))
        made = 0
        for row in ended:
            job = jobs.get(row.job_id)
            if job is None:
                continue
            if row.event != "done":
                self._failed.labels(job.model).inc()
                made += 1
                continue
            claim = max((c for c in claims.get(row.job_id, ()) if c[0] < row.id), default=None)
            if claim is not None and row.at >= claim[1]:
                self._inference.labels(job.model).observe((row.at - claim[1]).total_seconds())
                made += 1
            self._watch(job)
        return made

    def _observe_delivered(self, conn: sa.Connection) -> int:
        """Turnaround of each watched job whose outbox rows are all sent (see the module docstring)."""
        if not self._awaiting:
            return 0
        o, oj = outbox_table.c, outbox_jobs_table.c
        rows: dict[int, list[tuple[str, float | None]]] = {}
        for chunk in _chunks([str(i) for i in self._awaiting]):
            for job_id, state, sent_at in conn.execute(sa.select(oj.job_id, o.state, o.sent_at).join(
                    outbox_table, o.id == oj.item_id).where(oj.job_id.in_(chunk))):
                rows.setdefault(int(job_id), []).append((state, sent_at))
        made, now = 0, time.monotonic()
        for job_id, job in list(self._awaiting.items()):
            items = rows.get(job_id)
            if items and any(state != "sent" for state, _ in items):
                if now - job.since > self.max_wait_s:
                    del self._awaiting[job_id]
                    logger.info("metrics: job %d's results not all sent after %g s; its turnaround is not observed",
                                job_id, self.max_wait_s)
                continue
            del self._awaiting[job_id]
            sent = [float(at) for _, at in items or () if at is not None]
            if not sent or min(sent) < job.created:  # no destination, or sent for an earlier job
                continue
            received = series_last_received(conn, job.series_uids)
            if not received:  # series the assembler did not record (e.g. through an intake)
                continue
            start = min(max(at.timestamp() for at in received.values()), job.created)
            self._turnaround.labels(job.model).observe(max(0.0, max(sent) - start))
            made += 1
        return made
