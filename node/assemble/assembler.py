"""Assemble: when is a series (or a study) complete?

The assembler receives every :class:`neuroread.node.spool.store.InstanceRecord` (it is the spool's
``on_stored``) and calls ``on_complete`` with a :class:`CompleteSeries` or a
:class:`CompleteStudy`. :meth:`Assembler.add` only records; completion is decided in
:meth:`Assembler.tick` (the node calls it about once a second; tests pass the time), so
callbacks never run in an SCP association thread and tests need no sleeps.

Rules
-----
* **Quiet period** (like Orthanc's ``StableAge``): a series is complete once no new instance
  arrived for ``quiet_s`` seconds.
* **Early completion** (conservative; both rules read headers, so a file that cannot be read
  disables them for its series and only the quiet period applies):

  - *ImagesInAcquisition*: every instance is single-frame, carries the same
    ImagesInAcquisition (0020,1002) N and the same AcquisitionNumber (or none), and the series
    holds exactly N instances.
  - *Regular slices* (off unless ``slice_count_range`` is given): every instance is
    single-frame with the same ImageOrientationPatient; their positions along the slice normal
    are distinct and evenly spaced (no gap, within ``spacing_tol_mm``); the count lies in
    ``slice_count_range``; and the series has been quiet for at least ``early_quiet_s``
    (so a stack still streaming in is not cut at a regular prefix).

* **Study grouping**: a study is complete when every series in it is complete *and* no
  instance of the study arrived for ``study_quiet_s`` (≥ ``quiet_s``); no header says how many
  series a study will have, so there is no early rule for studies. Models that need several
  series (e.g. T1 + STIR) are routed from :class:`CompleteStudy` (see :mod:`neuroread.node.app.node`). A new
  series in a completed study reopens the study as a late instance does (below): it completes
  again, with a higher ``generation`` and every series it now holds.
* **Late instances**: a *new* instance for a series that was already completed **reopens**
  it (and its study). It completes again by the quiet period only (the early rules already
  fired once and the header count no longer matches), with a higher ``generation`` and the
  enlarged instance set — so the queue's job key (over the instance set) is new and a new job
  runs for the enlarged series; the earlier job's results stay as they were.
* **Re-sends**: a record with outcome ``duplicate`` (same bytes) or ``replaced`` (same SOP
  Instance UID, new bytes) leaves the instance set unchanged: it neither reopens a series nor
  delays its completion (the job key would be the same, so the queue would not run it again).
  The test is "is this SOP Instance UID already in the series", so after a restart (state is
  in memory) a re-sent instance counts as new.

State is in memory; with a ``store`` (:class:`neuroread.node.jobs.store.JobStore`) each series' state is
also written to the ``series`` table at each tick where it changed.
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable, Union

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError

from neuroread.node.redact import describe_error
from neuroread.node.spool import InstanceRecord, SeriesStudyConflictError

logger = logging.getLogger(__name__)

_HEADER_TAGS = ["ImagesInAcquisition", "AcquisitionNumber", "NumberOfFrames",
                "ImagePositionPatient", "ImageOrientationPatient"]


@dataclass(frozen=True)
class Header:
    """The few attributes the early rules read (None when absent)."""

    images_in_acquisition: int | None = None
    acquisition_number: int | None = None
    frames: int = 1
    position: tuple[float, float, float] | None = None
    orientation: tuple[float, ...] | None = None


def read_header(path: Path) -> Header | None:
    """Read the early-rule attributes of one file; None if it is not readable DICOM."""
    try:
        return header_of(pydicom.dcmread(path, stop_before_pixels=True, specific_tags=_HEADER_TAGS))
    except (InvalidDicomError, OSError, ValueError, TypeError) as e:
        logger.warning("header of %s unreadable (%s): early completion off for its series", path.name,
                       describe_error(e))
        return None


def header_of(ds: pydicom.Dataset) -> Header:
    """The early-rule attributes of a data set already parsed (the SCP's, or read from a file);
    raises ValueError/TypeError for values that are not numbers."""
    iia = ds.get("ImagesInAcquisition")
    acq = ds.get("AcquisitionNumber")
    ipp = ds.get("ImagePositionPatient")
    iop = ds.get("ImageOrientationPatient")
    return Header(images_in_acquisition=int(iia) if iia not in (None, "") else None,
                  acquisition_number=int(acq) if acq not in (None, "") else None,
                  frames=int(ds.get("NumberOfFrames") or 1),
                  position=tuple(float(v) for v in ipp) if ipp and len(ipp) == 3 else None,
                  orientation=tuple(float(v) for v in iop) if iop and len(iop) == 6 else None)


def _header(record: InstanceRecord, read: Callable[[Path], Header | None]) -> Header | None:
    """The record's header: from the data set the SCP parsed when there is one, else the file."""
    if record.header is None:
        return read(record.path)
    try:
        return header_of(record.header)
    except (ValueError, TypeError) as e:
        logger.warning("header of %s unreadable (%s): early completion off for its series", record.sop_instance_uid,
                       describe_error(e))
        return None


@dataclass(frozen=True)
class CompleteSeries:
    study_uid: str
    series_uid: str
    instances: dict[str, Path]  # SOP Instance UID → file
    generation: int  # 1 at first completion, +1 after each reopening
    reason: str  # "quiet", "images_in_acquisition", "regular_slices"

    @property
    def sop_instance_uids(self) -> list[str]:
        return sorted(self.instances)


@dataclass(frozen=True)
class CompleteStudy:
    study_uid: str
    series: tuple[CompleteSeries, ...]
    generation: int


Complete = Union[CompleteSeries, CompleteStudy]


@dataclass
class _Series:
    study_uid: str
    series_uid: str
    first: datetime
    last: datetime
    instances: dict[str, Path] = field(default_factory=dict)
    headers: dict[str, Header | None] = field(default_factory=dict)
    complete: bool = False
    generation: int = 0
    last_emitted: CompleteSeries | None = None
    dirty: bool = True


@dataclass
class _Study:
    last: datetime
    series: list[str] = field(default_factory=list)
    complete: bool = False
    generation: int = 0


def _utc_now() -> datetime:
    return datetime.now(timezone.utc)


class Assembler:
    """Tracks series and studies and reports them complete (rules in the module docstring).

    Parameters
    ----------
    on_complete: called with each :class:`CompleteSeries` and :class:`CompleteStudy`, from
        :meth:`tick`'s thread, outside the assembler's lock.
    quiet_s: the series quiet period; ``study_quiet_s`` the study's (defaults to ``quiet_s``).
    early: enable the header rules; ``slice_count_range=(lo, hi)`` enables the regular-slices
        rule; ``early_quiet_s`` its minimum quiet time; ``spacing_tol_mm`` its tolerance.
    clock: aware UTC time, used when :meth:`tick` is called without ``now``.
    read_header: header reader (injectable); ``store``: optional JobStore for the series table.
    """

    def __init__(self, on_complete: Callable[[Complete], None], *, quiet_s: float = 60.0,
                 study_quiet_s: float | None = None, early: bool = True,
                 slice_count_range: tuple[int, int] | None = None, early_quiet_s: float = 5.0,
                 spacing_tol_mm: float = 0.01, clock: Callable[[], datetime] = _utc_now,
                 read_header: Callable[[Path], Header | None] = read_header, store: Any = None) -> None:
        if not callable(on_complete):
            raise ValueError(f"Assembler.on_complete must be callable, got {on_complete!r}")
        if quiet_s <= 0:
            raise ValueError(f"Assembler.quiet_s must be > 0, got {quiet_s!r}")
        study_quiet_s = quiet_s if study_quiet_s is None else study_quiet_s
        if study_quiet_s < quiet_s:
            raise ValueError(f"Assembler.study_quiet_s must be >= quiet_s ({quiet_s}), got {study_quiet_s!r}")
        if slice_count_range is not None:
            lo, hi = slice_count_range
            if not (isinstance(lo, int) and isinstance(hi, int) and 2 <= lo <= hi):
                raise ValueError(f"Assembler.slice_count_range must be (lo, hi) ints with 2 <= lo <= hi, "
                                 f"got {slice_count_range!r}")
        if early_quiet_s < 0 or spacing_tol_mm <= 0:
            raise ValueError(f"Assembler.early_quiet_s must be >= 0 and spacing_tol_mm > 0, "
                             f"got {early_quiet_s!r}, {spacing_tol_mm!r}")
        self.on_complete = on_complete
        self.quiet = timedelta(seconds=quiet_s)
        self.study_quiet = timedelta(seconds=study_quiet_s)
        self.early = early
        self.slice_count_range = slice_count_range
        self.early_quiet = timedelta(seconds=early_quiet_s)
        self.spacing_tol_mm = spacing_tol_mm
        self.clock = clock
        self.read_header = read_header
        self.store = store
        self._lock = threading.Lock()
        self._series: dict[str, _Series] = {}
        self._studies: dict[str, _Study] = {}

    def add(self, record: InstanceRecord) -> None:
        """Record one stored instance (the spool's ``on_stored``).

        Raises :class:`~neuroread.node.spool.store.SeriesStudyConflictError` (and records nothing) when the
        series is already tracked under another study: the spool refuses such an instance
        before it is stored, so this only happens with files spooled before that check (the
        node's start-up quarantines them).
        """
        with self._lock:
            held = self._series.get(record.series_uid)
            if held is not None and held.study_uid != record.study_uid:
                raise SeriesStudyConflictError(record.series_uid, record.study_uid, held.study_uid)
            known = record.series_uid in self._series and record.sop_instance_uid in self._series[record.series_uid].instances
        if known:
            # a re-send (duplicate or replaced): same instance set, no reopening, no delay
            logger.debug("instance %s re-sent (%s), series unchanged", record.sop_instance_uid, record.outcome)
            return
        header = _header(record, self.read_header) if self.early else None
        at = record.received_at
        with self._lock:
            s = self._series.get(record.series_uid)
            if s is None:
                s = self._series[record.series_uid] = _Series(record.study_uid, record.series_uid, at, at)
                study = self._studies.setdefault(record.study_uid, _Study(at))
                study.series.append(record.series_uid)
            s.instances[record.sop_instance_uid] = record.path
            s.headers[record.sop_instance_uid] = header
            s.last = max(s.last, at)
            s.dirty = True
            study = self._studies[record.study_uid]
            study.last = max(study.last, at)
            if s.complete:
                s.complete = False
                logger.info("series %s reopened by a late instance (now %d instances)",
                            s.series_uid, len(s.instances))
            study.complete = False

    def tick(self, now: datetime | None = None) -> list[Complete]:
        """Decide completions at ``now``, call ``on_complete`` for each, and return them."""
        now = now or self.clock()
        done: list[Complete] = []
        with self._lock:
            for s in self._series.values():
                if s.complete:
                    continue
                reason = self._series_rule(s, now)
                if reason:
                    s.complete, s.generation, s.dirty = True, s.generation + 1, True
                    s.last_emitted = CompleteSeries(s.study_uid, s.series_uid, dict(s.instances), s.generation, reason)
                    done.append(s.last_emitted)
            for study_uid, st in self._studies.items():
                members = [self._series[uid] for uid in st.series]
                if not st.complete and all(m.complete for m in members) and now - st.last >= self.study_quiet:
                    st.complete, st.generation = True, st.generation + 1
                    done.append(CompleteStudy(study_uid, tuple(m.last_emitted for m in members), st.generation))
            changed = [s for s in self._series.values() if s.dirty]
            for s in changed:
                s.dirty = False
        if self.store is not None:
            for s in changed:
                self.store.record_series(s.study_uid, s.series_uid, len(s.instances), s.first, s.last,
                                         "complete" if s.complete else "receiving")
        for item in done:
            if isinstance(item, CompleteSeries):
                logger.info("series %s complete (%s, %d instances, generation %d)",
                            item.series_uid, item.reason, len(item.instances), item.generation)
            else:
                logger.info("study %s complete (%d series, generation %d)",
                            item.study_uid, len(item.series), item.generation)
            self.on_complete(item)
        return done

    # -- rules --------------------------------------------------------------------------------
    def _series_rule(self, s: _Series, now: datetime) -> str:
        quiet = now - s.last
        if quiet >= self.quiet:
            return "quiet"
        if not self.early or s.generation > 0:
            return ""
        headers = list(s.headers.values())
        if any(h is None or h.frames != 1 for h in headers):
            return ""
        if self._images_in_acquisition(headers):
            return "images_in_acquisition"
        if self.slice_count_range and quiet >= self.early_quiet and self._regular_slices(headers):
            return "regular_slices"
        return ""

    @staticmethod
    def _images_in_acquisition(headers: list[Header]) -> bool:
        counts = {h.images_in_acquisition for h in headers}
        acquisitions = {h.acquisition_number for h in headers}
        if len(counts) != 1 or len(acquisitions) != 1:
            return False
        (n,) = counts
        return n is not None and n == len(headers)

    def _regular_slices(self, headers: list[Header]) -> bool:
        lo, hi = self.slice_count_range or (0, 0)
        if not lo <= len(headers) <= hi:
            return False
        if any(h.position is None or h.orientation is None for h in headers):
            return False
        iop = np.array([h.orientation for h in headers], dtype=float)
        if np.abs(iop - iop[0]).max() > 1e-4:
            return False
        normal = np.cross(iop[0, :3], iop[0, 3:])
        if np.linalg.norm(normal) < 0.5:
            return False
        d = np.sort(np.array([h.position for h in headers], dtype=float) @ normal)
        steps = np.diff(d)
        return bool(steps.min() > self.spacing_tol_mm and steps.max() - steps.min() <= self.spacing_tol_mm)
