"""What the status page and ``/metrics`` read from the node's database, in one place.

Every function takes an open SQLAlchemy connection and reads only (the tables of
:mod:`neuroread.node.schema`: ``jobs``, ``series``, ``deliver_outbox``, ``deliver_outbox_jobs``);
each is one query, so a scrape or a page view costs a handful of them whatever the number of
jobs. The values are the database's, not this process's: with several workers (threads,
processes, machines) writing to one database, every node that reads it sees the same numbers.

Nothing here returns patient data: jobs carry UIDs, model names, states and reasons (already
redacted by the node, :mod:`neuroread.node.redact`).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from neuroread.node.jobs import CLAIMABLE
from neuroread.node.schema import jobs_table, outbox_table, series_table

WAITING = ("pending", "retrying")  # outbox rows not delivered yet and still tried


@dataclass(frozen=True)
class JobLine:
    """One job as the page lists it: ``at`` is when it reached its state (the row's last update)."""

    id: int
    model: str
    state: str
    series_uids: tuple[str, ...]
    reason: str
    at: datetime
    attempts: int = 0
    worker: str | None = None
    lease_expires: datetime | None = None


@dataclass(frozen=True)
class Backlog:
    """One destination's outbox rows: how many wait (``pending``, ``retrying``), how long the
    oldest waiting one has waited (seconds; None when none waits), how many were ``rejected``
    and ``sent``, and ``failed_attempts``: delivery attempts that did not deliver (every
    attempt of a row but the one that sent it)."""

    destination: str
    pending: int
    retrying: int
    rejected: int
    sent: int
    oldest_waiting_s: float | None
    failed_attempts: int

    @property
    def waiting(self) -> int:
        return self.pending + self.retrying


@dataclass(frozen=True)
class Throughput:
    """Jobs that ended in the last 5 minutes and the last hour, and series per minute over the
    last hour: received (their last instance arrived in the hour) and processed (input series
    of the jobs done in the hour)."""

    done_5min: int
    done_hour: int
    failed_hour: int
    series_received_per_min: float
    series_processed_per_min: float


def job_counts(conn: sa.Connection) -> dict[tuple[str, str], int]:
    """Jobs per (model, state)."""
    j = jobs_table.c
    rows = conn.execute(sa.select(j.model, j.state, sa.func.count()).group_by(j.model, j.state))
    return {(model, state): int(n) for model, state, n in rows}


def queue_depth(conn: sa.Connection, now: datetime) -> int:
    """Claimable jobs: ``queued``, and ``retrying`` whose next attempt time has come (what a
    worker's :meth:`~neuroread.node.jobs.JobStore.claim` could take now)."""
    j = jobs_table.c
    due = sa.or_(j.next_attempt_at.is_(None), j.next_attempt_at <= now)
    return int(conn.execute(sa.select(sa.func.count()).where(j.state.in_(CLAIMABLE), due)).scalar_one())


def _line(row: Any) -> JobLine:
    return JobLine(row.id, row.model, row.state, tuple(sorted(dict(row.inputs).values())), row.reason, row.updated,
                   row.attempts, row.lease_owner, row.lease_expires)


def jobs_in(conn: sa.Connection, state: str, limit: int | None = None) -> list[JobLine]:
    """Jobs in ``state``, the most recently changed first (``limit``: at most that many)."""
    j = jobs_table.c
    query = (sa.select(j.id, j.model, j.state, j.inputs, j.reason, j.updated, j.attempts, j.lease_owner,
                       j.lease_expires).where(j.state == state).order_by(j.updated.desc(), j.id.desc()))
    if limit is not None:
        query = query.limit(limit)
    return [_line(r) for r in conn.execute(query)]


def throughput(conn: sa.Connection, now: datetime) -> Throughput:
    """See :class:`Throughput`; a done job's ``updated`` is the time it was completed."""
    j = jobs_table.c
    hour, five = now - timedelta(hours=1), now - timedelta(minutes=5)

    def ended(state: str, since: datetime) -> int:
        return int(conn.execute(sa.select(sa.func.count()).where(j.state == state, j.updated >= since)).scalar_one())

    received = conn.execute(sa.select(sa.func.count()).where(series_table.c.last_received >= hour)).scalar_one()
    done_inputs = conn.execute(sa.select(j.inputs).where(j.state == "done", j.updated >= hour)).scalars()
    processed = {uid for inputs in done_inputs for uid in dict(inputs).values()}
    return Throughput(ended("done", five), ended("done", hour), ended("failed", hour), int(received) / 60.0,
                      len(processed) / 60.0)


def backlog(conn: sa.Connection, now: float) -> list[Backlog]:
    """Every destination that has outbox rows, by name (``now``: epoch seconds, as the outbox
    keeps its times)."""
    o = outbox_table.c

    def count(state: str) -> Any:
        return sa.func.sum(sa.case((o.state == state, 1), else_=0))

    query = sa.select(o.destination, count("pending"), count("retrying"), count("rejected"), count("sent"),
                      sa.func.min(sa.case((o.state.in_(WAITING), o.created_at), else_=None)),
                      sa.func.sum(o.attempts - sa.case((o.state == "sent", 1), else_=0))
                      ).group_by(o.destination).order_by(o.destination)
    return [Backlog(name, int(pending or 0), int(retrying or 0), int(rejected or 0), int(sent or 0),
                    None if oldest is None else max(0.0, now - float(oldest)), int(failed or 0))
            for name, pending, retrying, rejected, sent, oldest, failed in conn.execute(query)]


def series_last_received(conn: sa.Connection, series_uids: Sequence[str]) -> dict[str, datetime]:
    """When the last instance of each known series arrived (series the assembler recorded)."""
    s = series_table.c
    rows = conn.execute(sa.select(s.series_uid, s.last_received).where(s.series_uid.in_(list(series_uids))))
    return {uid: at for uid, at in rows}
