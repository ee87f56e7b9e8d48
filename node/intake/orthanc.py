"""Orthanc as the node's front door: series that became stable in Orthanc go through the same
spool → route → queue → infer → encode → deliver path as series received over C-STORE.

:class:`OrthancIntake` follows Orthanc's change log (``GET /changes``) from a cursor kept in the
node's own database, not from callbacks: Orthanc's ``OnChange`` callback only wakes the intake's
thread (nothing is done on Orthanc's callback thread), and a change the node has not finished
with is simply read again after a crash or restart of Orthanc, because the cursor moves only
after the change was handled:

==============================  ==========================================================
change                          what the intake does
==============================  ==========================================================
``StableSeries``                copies the series' instances that the spool lacks
                                (``/instances/{id}/file``, bytes as Orthanc stored them) into
                                the node's spool, then :meth:`Pipeline.route_series`: one job per
                                (model, slot), idempotent, or ``unrouted`` with its reason
``StableStudy``                 when a registered model takes several series (e.g. T1 + STIR):
                                every series of the study into the spool, then
                                :meth:`Pipeline.route_study`
a series the node wrote         skipped (its Manufacturer is ours): results stored back into
                                Orthanc are never routed again
``NewSeries``                   noted as unstable (in the node's database) until its
                                ``StableSeries`` is handled
a resource deleted since        skipped
Orthanc unreachable, disk full  the cursor stays; tried again after ``poll_s``
==============================  ==========================================================

Orthanc keeps its list of series that are not stable yet in memory only: a series that was
still arriving when Orthanc stopped never gets a ``StableSeries``. So the first
:meth:`OrthancIntake.run_once` of a process (the plugin starts with Orthanc), once it has
caught up with the change log, takes every series noted unstable before that start which
Orthanc now reports ``IsStable`` as if it had just become stable; one that receives instances
again is unstable for Orthanc too and gets its ``StableSeries`` as usual.

A fresh node starts at Orthanc's current last change (``start_at="last"``): installing the
plugin on an Orthanc that already holds a thousand studies does not run the models on all of
them; ``start_at="first"`` processes the whole change log (Orthanc keeps it, by default, for
every resource it still holds).

The intake talks to Orthanc through one callable, ``get(path) -> bytes``: inside Orthanc it is
``orthanc.RestApiGet`` (``orthanc/neuroread_plugin.py``), which raises :class:`OrthancGone`
for a resource that no longer exists and :class:`OrthancUnavailable` for anything else.
"""
from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from io import BytesIO
from typing import Any, Literal, Protocol

import pydicom
import sqlalchemy as sa

from neuroread.node.assemble import CompleteSeries, CompleteStudy
from neuroread.node.encode import EncodeInfo
from neuroread.node.jobs import Job, JobStore
from neuroread.node.malformed import PARSE_ERRORS
from neuroread.node.redact import describe_error
from neuroread.node.schema import create_all, orthanc_cursor_table, orthanc_unstable_table, utc_now
from neuroread.node.spool import InvalidUIDError, SeriesStudyConflictError, Spool, SpoolError

logger = logging.getLogger(__name__)


class Pipeline(Protocol):
    """What the intake hands series to: a node built without listeners
    (:class:`neuroread.node.app.Node` with ``listen=False`` is one). The intake writes into its
    spool, keeps its cursor in its job store's database and skips series with its manufacturer."""

    spool: Spool
    store: JobStore
    info: EncodeInfo

    @property
    def multi_series(self) -> bool: ...

    def route_series(self, series: CompleteSeries) -> list[Job]: ...

    def route_study(self, study: CompleteStudy) -> list[Job]: ...


class OrthancGone(LookupError):
    """The resource does not exist (any more) in Orthanc."""


class OrthancUnavailable(RuntimeError):
    """Orthanc did not answer the request (stopping, overloaded, an internal error)."""


@dataclass(frozen=True)
class IntakeReport:
    """What one :meth:`OrthancIntake.run_once` did."""

    changes: int = 0
    series: int = 0
    studies: int = 0
    skipped: int = 0
    jobs: int = 0
    last_seq: int = 0
    orphans: int = 0  # series left unstable by a restart, taken as stable


class OrthancIntake:
    """Feeds ``node`` (built with ``listen=False``) from Orthanc's change log (module docstring).

    ``get``: ``path -> bytes`` on Orthanc's REST API; ``name``: the cursor's name in the node's
    database (one per Orthanc); ``own_manufacturer``: series with this Manufacturer are the
    node's own results and are skipped; ``batch``: changes read per request; ``poll_s``: how
    often the thread looks without a wake-up.
    """

    def __init__(self, node: Pipeline, get: Callable[[str], bytes], *, name: str = "orthanc",
                 own_manufacturer: str | None = None, start_at: Literal["last", "first"] = "last",
                 batch: int = 100, poll_s: float = 5.0) -> None:
        if start_at not in ("last", "first"):
            raise ValueError(f"OrthancIntake.start_at must be 'last' or 'first', got {start_at!r}")
        if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
            raise ValueError(f"OrthancIntake.batch must be an integer >= 1, got {batch!r}")
        if isinstance(poll_s, bool) or not isinstance(poll_s, (int, float)) or poll_s <= 0:
            raise ValueError(f"OrthancIntake.poll_s must be a positive number, got {poll_s!r}")
        self.node, self._get, self.name = node, get, name
        self.own_manufacturer = own_manufacturer if own_manufacturer is not None else node.info.manufacturer
        self.start_at, self.batch, self.poll_s = start_at, batch, float(poll_s)
        create_all(node.store.engine)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()  # one run_once at a time (the thread, or a caller)
        self._orphans_checked = False  # the first run_once of this process looks for them
        self._thread: threading.Thread | None = None

    # -- life cycle -----------------------------------------------------------------------------------
    def start(self) -> "OrthancIntake":
        if self._thread is not None:
            raise RuntimeError("OrthancIntake is already started")
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="neuroread-orthanc-intake", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def wake(self) -> None:
        """Look at the change log now (Orthanc's OnChange callback calls this; it never blocks)."""
        self._wake.set()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()
            try:
                self.run_once()
            except OrthancUnavailable as exc:
                logger.warning("orthanc intake: Orthanc did not answer (%s); trying again in %.0f s", exc, self.poll_s)
            except SpoolError as exc:
                logger.error("orthanc intake: cannot spool (%s); trying again in %.0f s", exc, self.poll_s)
            except (OSError, sa.exc.SQLAlchemyError) as exc:
                logger.error("orthanc intake: %s: %s; trying again in %.0f s", type(exc).__name__, exc, self.poll_s)
            self._wake.wait(self.poll_s)

    # -- the change log -------------------------------------------------------------------------------
    def cursor(self) -> int | None:
        """The last change handled (None before the first run)."""
        with self.node.store.engine.connect() as conn:
            row = conn.execute(sa.select(orthanc_cursor_table.c.last_seq).where(orthanc_cursor_table.c.name == self.name)).first()
        return None if row is None else int(row[0])

    def _save_cursor(self, seq: int) -> None:
        values = dict(last_seq=seq, at=utc_now())
        with self.node.store.engine.begin() as conn:
            if conn.execute(orthanc_cursor_table.update().where(orthanc_cursor_table.c.name == self.name).values(**values)).rowcount == 0:
                conn.execute(orthanc_cursor_table.insert().values(name=self.name, **values))

    def _json(self, path: str) -> Any:
        data = self._get(path)
        try:
            return json.loads(data)
        except ValueError as exc:
            raise OrthancUnavailable(f"GET {path}: not JSON ({exc})") from exc

    def run_once(self) -> IntakeReport:
        """Handle every change after the cursor; the cursor moves after each one is handled."""
        with self._lock:
            seq = self.cursor()
            if seq is None:
                seq = int(self._json("/changes?last").get("Last", 0)) if self.start_at == "last" else 0
                self._save_cursor(seq)
                logger.info("orthanc intake %s: starting after change %d", self.name, seq)
            counts = dict(changes=0, series=0, studies=0, skipped=0, jobs=0, orphans=0)
            before_start = None if self._orphans_checked else int(self._json("/changes?last").get("Last", 0))
            while not self._stop.is_set():
                page = self._json(f"/changes?since={seq}&limit={self.batch}")
                for change in page.get("Changes", []):
                    self._handle(change, counts)
                    seq = int(change["Seq"])
                    self._save_cursor(seq)
                    counts["changes"] += 1
                if page.get("Done", True) or not page.get("Changes"):
                    break
            if before_start is not None and not self._stop.is_set():
                self._take_orphans(before_start, counts)
                self._orphans_checked = True
            return IntakeReport(**counts, last_seq=seq)

    def _take_orphans(self, before_start: int, counts: dict[str, int]) -> None:
        """Series noted unstable before this process started that Orthanc now calls stable
        (see the module docstring): handled as a ``StableSeries``."""
        key = orthanc_unstable_table.c.name == self.name
        with self.node.store.engine.connect() as conn:
            rows = conn.execute(sa.select(orthanc_unstable_table.c.series_id)
                                .where(key & (orthanc_unstable_table.c.seq <= before_start))).scalars().all()
        for series_id in rows:
            try:
                stable = bool(self._json(f"/series/{series_id}").get("IsStable", False))
            except OrthancGone:
                self._forget(series_id)
                continue
            if stable:
                logger.warning("orthanc intake: series %s was still arriving when Orthanc stopped; taken as stable now",
                               series_id)
                self._handle({"ChangeType": "StableSeries", "ID": series_id}, counts)
                counts["orphans"] += 1

    def _note_unstable(self, series_id: str, seq: int) -> None:
        with self.node.store.engine.begin() as conn:
            key = (orthanc_unstable_table.c.name == self.name) & (orthanc_unstable_table.c.series_id == series_id)
            if conn.execute(orthanc_unstable_table.update().where(key).values(seq=seq)).rowcount == 0:
                conn.execute(orthanc_unstable_table.insert().values(name=self.name, series_id=series_id, seq=seq))

    def _forget(self, series_id: str) -> None:
        with self.node.store.engine.begin() as conn:
            conn.execute(orthanc_unstable_table.delete().where((orthanc_unstable_table.c.name == self.name)
                                                       & (orthanc_unstable_table.c.series_id == series_id)))

    def _handle(self, change: dict[str, Any], counts: dict[str, int]) -> None:
        kind, resource = change.get("ChangeType"), str(change.get("ID", ""))
        try:
            if kind == "NewSeries":
                self._note_unstable(resource, int(change.get("Seq", 0)))
            elif kind == "StableSeries":
                jobs = self._stable_series(resource)
                counts["series" if jobs is not None else "skipped"] += 1
                counts["jobs"] += len(jobs or [])
                self._forget(resource)
            elif kind == "StableStudy" and self.node.multi_series:
                counts["jobs"] += len(self._stable_study(resource))
                counts["studies"] += 1
        except OrthancGone:
            logger.info("orthanc intake: %s %s was deleted before it was handled; skipped", kind, resource)
            counts["skipped"] += 1
            if kind == "StableSeries":
                self._forget(resource)
        except (ValueError, TypeError, KeyError, IndexError, AttributeError, RecursionError) as exc:
            # What Orthanc holds made this change fail, and would again at every retry: a poison
            # change must not stop the intake (the cursor moves on), so it is skipped with its
            # reason. Transient errors (Orthanc down, I/O, database) still propagate and retry.
            logger.error("orthanc intake: %s %s skipped: %s", kind, resource, describe_error(exc))
            counts["skipped"] += 1
            if kind == "StableSeries":
                self._forget(resource)

    # -- series and studies ---------------------------------------------------------------------------
    def _stable_series(self, series_id: str) -> list | None:
        """Spool and route one Orthanc series; None when it is one of ours (skipped)."""
        info = self._json(f"/series/{series_id}")
        if self._ours(info):
            logger.debug("orthanc intake: series %s holds our own results; not routed",
                         info.get("MainDicomTags", {}).get("SeriesInstanceUID"))
            return None
        study_uid = self._json(f"/series/{series_id}/study").get("MainDicomTags", {}).get("StudyInstanceUID", "")
        series = self._spool_series(series_id, info, str(study_uid))
        if series is None:
            return []
        jobs = self.node.route_series(series)
        logger.info("orthanc intake: series %s (%d instances) → %d jobs", series.series_uid, len(series.instances),
                    len(jobs))
        return jobs

    def _stable_study(self, study_id: str) -> list:
        info = self._json(f"/studies/{study_id}")
        study_uid = str(info.get("MainDicomTags", {}).get("StudyInstanceUID", ""))
        members = []
        for series_id in info.get("Series", []):
            series_info = self._json(f"/series/{series_id}")
            if self._ours(series_info):
                continue
            series = self._spool_series(series_id, series_info, study_uid)
            if series is not None:
                members.append(series)
        if not members:
            return []
        study = CompleteStudy(members[0].study_uid, tuple(members), generation=1)
        return self.node.route_study(study)

    def _ours(self, series_info: dict[str, Any]) -> bool:
        """Whether an Orthanc series holds results this node wrote (its Manufacturer is ours)."""
        return series_info.get("MainDicomTags", {}).get("Manufacturer", "").strip() == self.own_manufacturer

    def _spool_series(self, series_id: str, info: dict[str, Any], study_uid: str) -> CompleteSeries | None:
        """Every instance of an Orthanc series of study ``study_uid`` in the spool (only those
        missing are fetched); None when none can become a spool file (each reason logged)."""
        series_uid = str(info.get("MainDicomTags", {}).get("SeriesInstanceUID", ""))
        paths = {}
        for instance in self._json(f"/series/{series_id}/instances"):
            iid, sop_uid = instance["ID"], str(instance.get("MainDicomTags", {}).get("SOPInstanceUID", ""))
            try:
                path = self.node.spool.path_for(study_uid, series_uid, sop_uid)
            except InvalidUIDError as exc:
                logger.warning("orthanc intake: instance %s not spooled: %s", iid, exc)
                continue
            if not path.exists():
                data = self._get(f"/instances/{iid}/file")
                try:
                    meta = pydicom.dcmread(BytesIO(data), stop_before_pixels=True, specific_tags=["SOPClassUID"])
                    sop_class, syntax = str(meta.SOPClassUID), str(meta.file_meta.TransferSyntaxUID)
                except PARSE_ERRORS + (AttributeError,) as exc:
                    logger.warning("orthanc intake: instance %s unreadable: %s", iid, describe_error(exc))
                    continue
                try:
                    path = self.node.spool.store(data, study_uid=study_uid, series_uid=series_uid,
                                                 sop_instance_uid=sop_uid, sop_class_uid=sop_class,
                                                 transfer_syntax_uid=syntax, calling_ae="ORTHANC").path
                except (InvalidUIDError, SeriesStudyConflictError) as exc:  # this instance only: go on
                    logger.warning("orthanc intake: instance %s not spooled: %s", iid, exc)
                    continue
            paths[sop_uid] = path
        if not paths:
            logger.warning("orthanc intake: series %s has no instance the node can use", series_uid)
            return None
        return CompleteSeries(study_uid, series_uid, paths, generation=1, reason="orthanc-stable")
