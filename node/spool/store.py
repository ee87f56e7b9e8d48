"""The spool: received instances on disk, written durably and atomically.

An instance is *stored* only once its bytes are durable: they are written to a temporary file
in the instance's own folder, ``fsync``-ed, renamed (atomic) to
``<root>/<StudyUID>/<SeriesUID>/<SOPInstanceUID>.dcm`` and the folder is ``fsync``-ed, so the
rename survives a power cut too (:func:`neuroread.node.spool.atomic.atomic_write`; a new study or series
folder is synced into its parent when it is made). Threads storing into the same folder at once
(several associations sending one series) share that folder ``fsync``: each waits for one that
began after its own rename (:mod:`neuroread.node.spool.group_sync`). A crash leaves at most a temporary file,
which :meth:`Spool.remove_stale_temp_files` clears at start; never a half-written instance.

(An earlier version appended each instance to a write-ahead journal and synced the files in
the background. Measured on the development machine with ``python -m neuroread.bench_ingest``'s
300 × 512 KiB instances, the direct write was faster, 142-160 against 128-138 instances/s
over four alternating runs each: the journal wrote every byte twice and its background syncs
competed with the next instance's. So the spool writes each instance once.)

Only then does :meth:`Spool.store` return an :class:`InstanceRecord` and call the injected
``on_stored`` callback (the assemble stage subscribes there). The receive stage answers a
C-STORE with success only after :meth:`Spool.store` has returned.

UIDs are validated before they become path components (:func:`validate_uid`): a value such as
``../../x`` raises :class:`InvalidUIDError` and nothing is written.

Duplicates (same SOP Instance UID again) are idempotent:

* same bytes: nothing is rewritten, the record says ``outcome="duplicate"``; the folder is still
  synced first (the copy found may be another association's, renamed a moment ago and not yet
  covered by a folder ``fsync``: success for the re-send must not come before that);
* different bytes: **the new bytes replace the old ones atomically** (``outcome="replaced"``).
  A SOP Instance UID names one object (PS3.3 C.12.1.1.1); a peer that sends it again with other
  bytes is re-sending that object (another transfer syntax, corrected attributes), so the latest
  copy wins, as in Orthanc's and dcmtk storescp's default behaviour. A reader that opened the
  old file keeps reading the old bytes; a new reader sees only the new ones, never a mix.

A Series Instance UID belongs to one study (PS3.3 C.7.3.1): an instance whose series the spool
already holds under another Study Instance UID (re-used UIDs, merged studies: sender bugs seen in
the field) raises :class:`SeriesStudyConflictError` and nothing is written. Refusing it (the
SCP answers a failure status naming the conflict, the sender keeps its copy) rather than keeping
it apart under its own study key: every later stage, the job's inputs and the results' references
name a series by its UID alone, and a PACS that holds the series in one study would file results
for "the same" series of another study beside it or reject them. The spool knows each series'
study from its folders (read once at start, kept up to date under a lock).

``on_stored`` is called for every outcome, so a subscriber can tell a new instance from a
re-send. A full disk (``ENOSPC``/``EDQUOT``) removes the temporary file and raises
:class:`SpoolFullError`, which the SCP answers with "out of resources".
"""
from __future__ import annotations

import errno
import logging
import os
import re
import threading
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import BinaryIO, Callable, Literal

from pydicom import Dataset
from pydicom.uid import UID

from .atomic import atomic_write, make_dirs, write_all
from .group_sync import FolderSync

logger = logging.getLogger(__name__)

MAX_UID_LENGTH = 64
# PS3.5 9.1: components of digits separated by '.', no leading zero in a multi-digit component.
_UID_RE = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")
_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
TEMP_PREFIX = ".incoming-"
TEMP_SUFFIX = ".tmp"

Outcome = Literal["new", "duplicate", "replaced"]


class SpoolError(Exception):
    """Base class of the spool's errors."""


class InvalidUIDError(SpoolError, ValueError):
    """A UID that is not a valid DICOM UID (and so must never become a path)."""


class SpoolFullError(SpoolError):
    """The file system is full (ENOSPC) or over quota (EDQUOT); nothing was left behind."""


class SeriesStudyConflictError(SpoolError, ValueError):
    """The instance's series is already held under another study; nothing was written.

    ``study_uid`` is the study the spool holds the series under."""

    def __init__(self, series_uid: str, study_uid: str, held_under: str) -> None:
        super().__init__(f"series {series_uid} already belongs to study {held_under}, not {study_uid}")
        self.series_uid, self.study_uid, self.held_under = series_uid, study_uid, held_under


def describe_uid(value: object) -> str:
    """``value`` for a log line or an error: a valid UID as it is (UIDs are identifiers, logged as
    such), anything else only by its length, since an invalid "UID" may hold any text."""
    if isinstance(value, str) and 0 < len(value) <= MAX_UID_LENGTH and _UID_RE.fullmatch(value):
        return value
    if isinstance(value, str):
        return f"<not a UID, {len(value)} characters>"
    return f"<not a UID, {type(value).__name__}>"


def validate_uid(value: object, field: str) -> str:
    """Return ``value`` if it is a valid DICOM UID, else raise :class:`InvalidUIDError`.

    Checks the PS3.5 syntax with a strict regular expression (digits and dots only, so no
    path separator, ``..`` or NUL can pass) and the 64-character limit, and that pydicom agrees.
    """
    if not isinstance(value, str):
        raise InvalidUIDError(f"{field} must be a str, got {type(value).__name__}")
    if not value:
        raise InvalidUIDError(f"{field} is empty")
    if len(value) > MAX_UID_LENGTH:
        raise InvalidUIDError(f"{field} is {len(value)} characters long, more than {MAX_UID_LENGTH}")
    if not _UID_RE.fullmatch(value) or not UID(value).is_valid:
        raise InvalidUIDError(f"{field} is not a valid DICOM UID (digits and '.', no leading zeros; "
                              f"{len(value)} characters)")
    return value


@dataclass(frozen=True)
class InstanceRecord:
    """One stored instance, handed to the next stage.

    ``path`` is the final file (DICOM Part 10: preamble, file meta, data set as received);
    ``size`` its length in bytes; ``received_at`` a timezone-aware UTC time;
    ``outcome`` is ``"new"``, ``"duplicate"`` (same bytes, not rewritten) or ``"replaced"``;
    ``header``, when the caller had the data set parsed already (the SCP has), lets the next
    stage read attributes without opening the file again (do not keep it: it may hold pixels).
    """

    study_uid: str
    series_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    path: Path
    size: int
    received_at: datetime
    outcome: Outcome = "new"
    calling_ae: str = ""
    header: Dataset | None = field(default=None, compare=False, repr=False)


def _same_bytes(path: Path, data: bytes) -> bool:
    try:
        if path.stat().st_size != len(data):
            return False
        return path.read_bytes() == data
    except FileNotFoundError:
        return False


class Spool:
    """Instances on disk under ``root`` (see the module docstring for the guarantees).

    Parameters
    ----------
    root:
        The spool folder; made if missing. Everything the spool writes stays under it.
    on_stored:
        Called with each :class:`InstanceRecord` after the instance is durable. It runs in the
        caller's thread (an SCP association thread); an exception it raises propagates to
        the caller, after the instance is already stored.
    fsync:
        ``False`` turns every sync off (tests, benchmarks of the network path only); the
        rename stays atomic but is no longer durable across a power cut.
    writer:
        ``writer(file, data)`` writes bytes to an open temporary file;
        injectable so that tests can simulate a full disk. Defaults to ``file.write(data)``.
    folder_sync:
        Makes a rename into a series folder durable; threads storing into the same folder at
        once share its ``fsync`` (:class:`~neuroread.node.spool.group_sync.FolderSync`, the
        default; injectable for tests).
    """

    def __init__(
        self,
        root: Path | str,
        on_stored: Callable[[InstanceRecord], None] | None = None,
        *,
        fsync: bool = True,
        writer: Callable[[BinaryIO, bytes], None] = write_all,
        folder_sync: FolderSync | None = None,
    ) -> None:
        if not isinstance(root, (str, Path)) or not str(root):
            raise ValueError(f"Spool.root must be a non-empty path, got {root!r}")
        if on_stored is not None and not callable(on_stored):
            raise ValueError(f"Spool.on_stored must be callable, got {on_stored!r}")
        if not callable(writer):
            raise ValueError(f"Spool.writer must be callable, got {writer!r}")
        if folder_sync is not None and not isinstance(folder_sync, FolderSync):
            raise ValueError(f"Spool.folder_sync must be a FolderSync, got {folder_sync!r}")
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        if not self.root.is_dir():
            raise ValueError(f"Spool.root {self.root} is not a directory")
        self._on_stored = on_stored
        self._fsync = bool(fsync)
        self._writer = writer
        self._folder_sync = folder_sync or FolderSync()
        self._lock = threading.Lock()
        self._study_of: dict[str, str] = self._read_series_index()

    def _read_series_index(self) -> dict[str, str]:
        """Series Instance UID → Study Instance UID of every series folder in the spool.

        A series already in two study folders (spooled before this check existed) belongs to
        the study whose oldest file is oldest (the first one received; name order breaks ties),
        as the check would have decided when the second arrived; start-up quarantines the
        other folders' files.
        """
        found: dict[str, list[str]] = {}
        for study_dir in sorted(self.root.iterdir()):
            if not study_dir.is_dir() or not _UID_RE.fullmatch(study_dir.name):
                continue
            for series_dir in sorted(study_dir.iterdir()):
                if series_dir.is_dir():
                    found.setdefault(series_dir.name, []).append(study_dir.name)
        index = {}
        for series_uid, studies in found.items():
            if len(studies) > 1:
                studies = sorted(studies, key=lambda study: (self._oldest(self.root / study / series_uid), study))
            index[series_uid] = studies[0]
        return index

    @staticmethod
    def _oldest(folder: Path) -> float:
        times = [p.stat().st_mtime for p in folder.glob("*.dcm")]
        return min(times) if times else float("inf")

    def reindex(self) -> None:
        """Read the series → study index from the folders again (after files were moved out)."""
        index = self._read_series_index()
        with self._lock:
            self._study_of = index

    def study_of(self, series_uid: str) -> str | None:
        """The study the spool holds ``series_uid`` under (None if it holds no such series)."""
        with self._lock:
            return self._study_of.get(series_uid)

    def check_series(self, study_uid: str, series_uid: str) -> None:
        """Raise :class:`SeriesStudyConflictError` if the series is held under another study."""
        with self._lock:
            self._check_series_locked(study_uid, series_uid)

    def _check_series_locked(self, study_uid: str, series_uid: str) -> None:
        held = self._study_of.get(series_uid)
        if held is not None and held != study_uid:
            raise SeriesStudyConflictError(series_uid, study_uid, held)

    def path_for(self, study_uid: str, series_uid: str, sop_instance_uid: str) -> Path:
        """The final path of an instance; raises :class:`InvalidUIDError` for a bad UID."""
        parts = (
            validate_uid(study_uid, "StudyInstanceUID"),
            validate_uid(series_uid, "SeriesInstanceUID"),
            validate_uid(sop_instance_uid, "SOPInstanceUID"),
        )
        path = self.root / parts[0] / parts[1] / f"{parts[2]}.dcm"
        # Belt and braces: the regex already excludes separators and '..' (string check: a
        # resolve() per instance costs a stat per path component on the receive path).
        if os.path.dirname(os.path.dirname(os.path.dirname(os.path.normpath(path)))) != str(self.root):
            raise InvalidUIDError(f"instance path {path} would leave the spool {self.root}")
        return path

    def store(
        self,
        data: bytes,
        *,
        study_uid: str,
        series_uid: str,
        sop_instance_uid: str,
        sop_class_uid: str,
        transfer_syntax_uid: str,
        calling_ae: str = "",
        header: Dataset | None = None,
    ) -> InstanceRecord:
        """Store one instance's bytes durably and return its record.

        Raises :class:`InvalidUIDError` (nothing written) for an invalid UID,
        :class:`SeriesStudyConflictError` (nothing written) for a series held under another study,
        :class:`SpoolFullError` (temporary file removed) when the disk is full, and ``OSError``
        for any other I/O failure (temporary file removed too).
        """
        if not isinstance(data, (bytes, bytearray, memoryview)) or not len(data):
            raise ValueError("Spool.store data must be non-empty bytes")
        validate_uid(sop_class_uid, "SOPClassUID")
        validate_uid(transfer_syntax_uid, "TransferSyntaxUID")
        path = self.path_for(study_uid, series_uid, sop_instance_uid)
        data = bytes(data)

        try:
            with self._lock:  # check and claim the series for its study in one step
                self._check_series_locked(study_uid, series_uid)
                self._make_dirs(path.parent)
                self._study_of[series_uid] = study_uid
            exists = path.exists()  # one stat on the receive path
            if exists and _same_bytes(path, data):
                outcome: Outcome = "duplicate"
                if self._fsync:  # the copy found may be another thread's, renamed but not yet synced
                    self._folder_sync.sync(path.parent)
            else:
                outcome = "replaced" if exists else "new"
                self._write_atomic(path, data)
        except OSError as exc:
            if exc.errno in _FULL_ERRNOS:
                logger.error("spool full storing SOP instance %s: %s", sop_instance_uid, exc.strerror,
                             extra={"sop_instance_uid": sop_instance_uid})
                raise SpoolFullError(f"no space left in spool {self.root}: {exc.strerror}") from exc
            raise

        record = InstanceRecord(
            study_uid=study_uid,
            series_uid=series_uid,
            sop_instance_uid=sop_instance_uid,
            sop_class_uid=sop_class_uid,
            transfer_syntax_uid=transfer_syntax_uid,
            path=path,
            size=len(data),
            received_at=datetime.now(timezone.utc),
            outcome=outcome,
            calling_ae=calling_ae,
            header=header,
        )
        logger.debug("stored %s (%s, %d bytes)", sop_instance_uid, outcome, len(data),
                     extra={"sop_instance_uid": sop_instance_uid, "series_uid": series_uid})
        if self._on_stored is not None:
            self._on_stored(record)
        return record

    def remove_stale_temp_files(self) -> int:
        """Remove temporary files a crash left behind (call at start, before serving)."""
        n = 0
        for tmp in self.root.glob(f"*/*/{TEMP_PREFIX}*{TEMP_SUFFIX}"):
            tmp.unlink(missing_ok=True)
            n += 1
        if n:
            logger.warning("removed %d stale temporary files from the spool", n)
        return n

    def _make_dirs(self, series_dir: Path) -> None:
        """Make the study and series folders, each synced into its parent."""
        if not series_dir.is_dir():  # one stat on the receive path when the folder exists
            make_dirs(series_dir, self.root, fsync=self._fsync)

    def _write_atomic(self, path: Path, data: bytes) -> None:
        atomic_write(path, data, fsync=self._fsync, writer=self._writer,
                     temp_prefix=f"{TEMP_PREFIX}{path.stem}-", temp_suffix=TEMP_SUFFIX,
                     sync_folder=self._folder_sync.sync)
