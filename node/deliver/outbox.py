"""The durable outbox of the deliver stage (SQL through SQLAlchemy) and its delivery thread.

See :mod:`neuroread.node.deliver` for the states and the retry rules.
"""
from __future__ import annotations

import difflib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal

import sqlalchemy as sa
from pydicom.dataset import Dataset

from neuroread.node.schema import create_all, outbox_jobs_table, outbox_table

from .destinations import Destination, OutboxItem, Outcome, _check_positive, _layout, _part10, write_file

logger = logging.getLogger(__name__)

State = Literal["pending", "sent", "rejected", "retrying"]
STATES: tuple[str, ...] = ("pending", "sent", "rejected", "retrying")

# -- the outbox ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Backoff:
    """Delay before the next try after ``n`` failed attempts: ``min(cap, base * factor**(n-1))``."""

    base: float = 30.0
    cap: float = 3600.0
    factor: float = 2.0

    def __post_init__(self) -> None:
        _check_positive(self.base, "base")
        _check_positive(self.cap, "cap")
        if isinstance(self.factor, bool) or not isinstance(self.factor, (int, float)) or self.factor < 1:
            raise ValueError(f"factor must be a number >= 1, got {self.factor!r}")
        if self.cap < self.base:
            raise ValueError(f"cap ({self.cap}) must be >= base ({self.base})")

    def delay(self, attempts: int) -> float:
        return min(self.cap, self.base * self.factor ** min(max(attempts - 1, 0), 64))


@dataclass(frozen=True)
class DeliveryReport:
    """What one :meth:`Outbox.deliver_due` did: counts of sent, rejected and retrying objects."""

    sent: int = 0
    rejected: int = 0
    retrying: int = 0
    skipped: int = 0  # due rows whose destination is not configured


def _row_item(row: sa.Row) -> OutboxItem:
    m = row._mapping
    return OutboxItem(**{f.name: (Path(m[f.name]) if f.name == "path" else m[f.name]) for f in fields(OutboxItem)})


class Outbox:
    """A durable outbox (see the module docstring).

    Parameters
    ----------
    db:
        A SQLAlchemy URL (``sqlite:////var/lib/neuroread/outbox.sqlite``,
        ``postgresql+psycopg://…``) or an :class:`sqlalchemy.Engine`. Tables are created if missing.
    folder:
        Where objects wait for delivery (made if missing).
    destinations:
        The configured destinations; rows name them by ``name``.
    backoff, batch_size:
        Retry delays, and at most this many objects per association / batch.
    clock:
        Seconds since the epoch (``time.time``); tests pass their own.
    fsync:
        ``False`` skips fsync of the outbox files (tests only).
    """

    def __init__(self, db: str | sa.Engine, folder: str | os.PathLike, destinations: Iterable[Destination], *,
                 backoff: Backoff = Backoff(), batch_size: int = 500, clock: Callable[[], float] = time.time,
                 fsync: bool = True) -> None:
        if isinstance(db, str):
            try:
                db = sa.create_engine(db)
            except sa.exc.ArgumentError as exc:
                raise ValueError(f"Outbox.db: not a database URL: {exc}") from exc
        if not isinstance(db, sa.Engine):
            raise ValueError(f"Outbox.db must be a URL or an sqlalchemy Engine, got {type(db).__name__}")
        if not isinstance(backoff, Backoff):
            raise ValueError(f"Outbox.backoff must be a Backoff, got {backoff!r}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"Outbox.batch_size must be an integer >= 1, got {batch_size!r}")
        self.destinations: dict[str, Destination] = {}
        for d in destinations:
            if not callable(getattr(d, "send", None)) or not isinstance(getattr(d, "name", None), str):
                raise ValueError(f"Outbox.destinations must hold destinations, got {d!r}")
            if d.name in self.destinations:
                raise ValueError(f"Outbox.destinations: two destinations named {d.name!r}")
            self.destinations[d.name] = d
        self.engine = db
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.backoff, self.batch_size, self.clock, self.fsync = backoff, batch_size, clock, fsync
        self._lock = threading.Lock()
        create_all(self.engine)

    # -- adding --------------------------------------------------------------------------------
    def add(self, job_id: str, datasets: Iterable[Dataset], destinations: Iterable[str | Destination]) -> int:
        """Queue ``datasets`` for each destination; returns how many new rows were made.

        Each object is written to the outbox folder (atomically) before its rows exist, so a
        row always has its file. An instance already queued for a destination adds no row.
        """
        if not isinstance(job_id, str) or not 0 < len(job_id) <= 128:
            raise ValueError(f"job_id must be a string of 1-128 characters, got {job_id!r}")
        names = [d if isinstance(d, str) else getattr(d, "name", None) for d in destinations]
        for n in names:
            if n not in self.destinations:
                near = difflib.get_close_matches(str(n), list(self.destinations), n=1)
                raise ValueError(f"destination {n!r} is not configured"
                                 + (f"; did you mean {near[0]!r}?" if near else f"; known: {sorted(self.destinations)}"))
        now = self.clock()
        rows = []
        for ds in datasets:
            try:
                uids = {k: str(ds[k].value) for k in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID")}
                ts = str(ds.file_meta.TransferSyntaxUID)
            except (KeyError, AttributeError) as exc:
                raise ValueError(f"a data set lacks {exc} (UIDs and file meta are required)") from exc
            path = _layout(self.folder, uids["StudyInstanceUID"], uids["SeriesInstanceUID"], uids["SOPInstanceUID"])
            if not path.exists():  # deterministic UIDs: an existing file is this same object
                write_file(self.folder, path, _part10(ds), fsync=self.fsync)
            for name in names:
                rows.append(dict(destination=name, sop_instance_uid=uids["SOPInstanceUID"],
                                 sop_class_uid=uids["SOPClassUID"], transfer_syntax_uid=ts,
                                 study_uid=uids["StudyInstanceUID"], series_uid=uids["SeriesInstanceUID"],
                                 path=str(path), state="pending", attempts=0, next_attempt_at=now,
                                 created_at=now))
        for attempt in (1, 2):  # a concurrent add of the same instance wins the unique constraint once
            try:
                with self.engine.begin() as conn:
                    new = sum(self._add_row(conn, job_id, row) for row in rows)
                break
            except sa.exc.IntegrityError:
                if attempt == 2:
                    raise
        logger.info("job %s: %d objects for %d destinations, %d new outbox rows", job_id,
                    len(rows) // max(len(names), 1), len(names), new, extra={"job_id": job_id})
        return new

    @staticmethod
    def _add_row(conn: sa.Connection, job_id: str, row: dict[str, Any]) -> bool:
        item_id = conn.execute(sa.select(outbox_table.c.id).where(
            outbox_table.c.destination == row["destination"], outbox_table.c.sop_instance_uid == row["sop_instance_uid"])).scalar()
        created = item_id is None
        if created:
            item_id = conn.execute(sa.insert(outbox_table).values(**row)).inserted_primary_key[0]
        linked = conn.execute(sa.select(outbox_jobs_table.c.item_id).where(
            outbox_jobs_table.c.job_id == job_id, outbox_jobs_table.c.item_id == item_id)).first()
        if linked is None:
            conn.execute(sa.insert(outbox_jobs_table).values(job_id=job_id, item_id=item_id))
        return created

    # -- delivering ----------------------------------------------------------------------------
    def due(self, now: float | None = None) -> list[OutboxItem]:
        """Rows waiting (pending or retrying) whose next attempt time has come."""
        now = self.clock() if now is None else now
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(outbox_table).where(outbox_table.c.state.in_(("pending", "retrying")),
                                                       outbox_table.c.next_attempt_at <= now).order_by(outbox_table.c.id))
            return [_row_item(r) for r in rows]

    def deliver_due(self, now: float | None = None) -> DeliveryReport:
        """Send everything due at ``now`` (default: the clock), batch by batch, and record it."""
        counts = dict(sent=0, rejected=0, retrying=0, skipped=0)
        with self._lock:
            now = self.clock() if now is None else now
            by_dest: dict[str, list[OutboxItem]] = {}
            for item in self.due(now):
                by_dest.setdefault(item.destination, []).append(item)
            for name, items in by_dest.items():
                dest = self.destinations.get(name)
                if dest is None:
                    logger.warning("outbox: %d objects for destination %r, which is not configured",
                                   len(items), name, extra={"destination": name})
                    counts["skipped"] += len(items)
                    continue
                for start in range(0, len(items), self.batch_size):
                    batch = items[start:start + self.batch_size]
                    for k, v in self._record(batch, dest.send(batch), now).items():
                        counts[k] += v
        return DeliveryReport(**counts)

    def _record(self, batch: Sequence[OutboxItem], outcomes: Sequence[Outcome], now: float) -> dict[str, int]:
        by_uid = {o.sop_instance_uid: o for o in outcomes}
        counts = dict(sent=0, rejected=0, retrying=0)
        with self.engine.begin() as conn:
            for item in batch:
                o = by_uid.get(item.sop_instance_uid) or Outcome(item.sop_instance_uid, "retry", None,
                                                                  "destination reported no outcome")
                attempts = item.attempts + 1
                values: dict[str, Any] = dict(attempts=attempts, status_code=o.status_code, last_error=o.comment or None)
                if o.result == "sent":
                    values.update(state="sent", sent_at=now)
                elif o.result == "rejected":
                    values.update(state="rejected")
                else:
                    values.update(state="retrying", next_attempt_at=now + self.backoff.delay(attempts))
                counts[values["state"]] += 1
                conn.execute(sa.update(outbox_table).where(outbox_table.c.id == item.id).values(**values))
        return counts

    # -- audit trail ---------------------------------------------------------------------------
    def status(self, job_id: str) -> list[OutboxItem]:
        """Every output of ``job_id`` per destination: state, attempts, DIMSE status, last error."""
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(outbox_table).join(outbox_jobs_table, outbox_jobs_table.c.item_id == outbox_table.c.id)
                                .where(outbox_jobs_table.c.job_id == job_id).order_by(outbox_table.c.id))
            return [_row_item(r) for r in rows]

    def requeue(self, job_id: str, *, now: float | None = None) -> int:
        """Make a job's rejected and retrying rows due again now (an operator's retry)."""
        now = self.clock() if now is None else now
        with self.engine.begin() as conn:
            ids = sa.select(outbox_jobs_table.c.item_id).where(outbox_jobs_table.c.job_id == job_id)
            result = conn.execute(sa.update(outbox_table).where(outbox_table.c.id.in_(ids), outbox_table.c.state.in_(("rejected", "retrying")))
                                  .values(state="pending", next_attempt_at=now))
        return result.rowcount


class Deliverer:
    """A thread that calls :meth:`Outbox.deliver_due` every ``interval`` seconds (and on :meth:`wake`)."""

    def __init__(self, outbox: Outbox, *, interval: float = 5.0) -> None:
        if not isinstance(outbox, Outbox):
            raise ValueError(f"Deliverer.outbox must be an Outbox, got {type(outbox).__name__}")
        self.outbox = outbox
        self.interval = _check_positive(interval, "Deliverer.interval")
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("Deliverer is already started")
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="neuroread-deliver", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        """Deliver now rather than at the next tick (call after :meth:`Outbox.add`)."""
        self._wake.set()

    def stop(self, timeout: float = 30.0) -> None:
        thread, self._thread = self._thread, None
        if thread is None:
            return
        self._stop.set()
        self._wake.set()
        thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.outbox.deliver_due()
            except (sa.exc.SQLAlchemyError, OSError) as exc:  # the database or the outbox folder
                logger.error("deliver loop: %s: %s; trying again in %.0f s", type(exc).__name__, exc, self.interval)
            self._wake.wait(self.interval)
            self._wake.clear()
