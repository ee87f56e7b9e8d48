"""The spool's write-ahead journal: what makes a received instance durable, fast.

Making one new file durable costs a file ``fsync``, a rename and a folder ``fsync`` — about
5–8 ms on a typical cloud disk, mostly the file system's journal commit for a new inode. An
append to a file that stays open, followed by ``fdatasync``, costs about 1 ms. So the spool
appends each instance to a journal segment and syncs that before the SCP answers success;
the instance's own file is then written without a sync, and a background *checkpoint* syncs
those files in batches and deletes the segment they came from. After a crash (or a power cut)
:meth:`Journal.recover` rewrites, durably, every instance of a leftover segment whose file is
missing or differs; a record cut short by the crash was never acknowledged and is dropped.

Segment format: records of ``MAGIC | meta length (u32) | data length (u64) | CRC-32 of meta and
data (u32)``, then ``meta`` (JSON: the instance's UIDs, the relative path) and ``data`` (the
Part 10 bytes), all little endian. A record whose header or CRC does not check is the torn end
of the segment; nothing after it is read.
"""
from __future__ import annotations

import json
import logging
import os
import struct
import threading
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from .durable import atomic_write, fsync_dir

logger = logging.getLogger(__name__)

MAGIC = b"NRJ1"
_HEADER = struct.Struct("<4sIQI")
SEGMENT_PREFIX, SEGMENT_SUFFIX = "segment-", ".wal"


@dataclass(frozen=True)
class JournalRecord:
    meta: dict
    data: bytes


def _segment_number(path: Path) -> int:
    return int(path.name[len(SEGMENT_PREFIX):-len(SEGMENT_SUFFIX)])


def read_segment(path: Path) -> Iterator[JournalRecord]:
    """The complete records of one segment, in order; stops at a torn or corrupt record."""
    with open(path, "rb") as f:
        while True:
            head = f.read(_HEADER.size)
            if len(head) < _HEADER.size:
                return
            magic, meta_len, data_len, crc = _HEADER.unpack(head)
            if magic != MAGIC:
                logger.warning("journal %s: bad record header at byte %d; the rest is ignored", path.name, f.tell() - len(head))
                return
            meta, data = f.read(meta_len), f.read(data_len)
            if len(meta) < meta_len or len(data) < data_len or zlib.crc32(data, zlib.crc32(meta)) != crc:
                logger.warning("journal %s: record at byte %d is incomplete (cut by a crash before it was "
                               "acknowledged); dropped", path.name, f.tell() - len(head) - len(meta) - len(data))
                return
            yield JournalRecord(json.loads(meta), data)


class Journal:
    """Append-only segments under ``folder``; see the module docstring.

    ``sync``: ``False`` skips ``fdatasync`` (tests of other behaviour; not durable).
    ``writer(file, data)``: writes bytes to the open segment (tests inject a full disk).
    ``segment_bytes``: a segment larger than this is checkpointed at the next opportunity.
    """

    def __init__(self, folder: Path, *, sync: bool = True, writer: Callable[[BinaryIO, bytes], None],
                 segment_bytes: int = 256 * 1024 * 1024) -> None:
        self.folder = Path(folder)  # made at the first append
        self.sync, self._writer, self.segment_bytes = sync, writer, segment_bytes
        self._lock = threading.Lock()
        self._file: BinaryIO | None = None
        self._path: Path | None = None
        self._pending: list[Path] = []  # files written from the current segment, not yet synced

    def segments(self) -> list[Path]:
        return sorted(self.folder.glob(f"{SEGMENT_PREFIX}*{SEGMENT_SUFFIX}"), key=_segment_number)

    # -- writing ----------------------------------------------------------------------------------
    def append(self, meta: dict, data: bytes, then: Callable[[], Path]) -> None:
        """Append one record and make it durable, then call ``then()`` (which writes the
        instance's own file and returns its path) under the same lock.

        If the append or ``then`` fails, the segment is cut back to where it was (nothing of
        this record remains) and the error propagates.
        """
        blob = json.dumps(meta, separators=(",", ":")).encode()
        head = _HEADER.pack(MAGIC, len(blob), len(data), zlib.crc32(data, zlib.crc32(blob)))
        with self._lock:
            f = self._open()
            start = f.tell()
            appended = False
            try:
                self._writer(f, head + blob)
                self._writer(f, data)
                f.flush()
                if self.sync:
                    os.fdatasync(f.fileno())
                self._pending.append(then())
                appended = True
            finally:
                if not appended:  # whatever failed, no trace of this record stays
                    self._cut(f, start)

    def _open(self) -> BinaryIO:
        if self._file is None:
            self.folder.mkdir(parents=True, exist_ok=True)
            existing = self.segments()
            number = _segment_number(existing[-1]) + 1 if existing else 1
            self._path = self.folder / f"{SEGMENT_PREFIX}{number:08d}{SEGMENT_SUFFIX}"
            self._file = open(self._path, "ab")
            if self.sync:
                fsync_dir(self.folder)
        return self._file

    def _cut(self, f: BinaryIO, offset: int) -> None:
        try:
            f.flush()
        except OSError:
            pass  # the buffered tail is being discarded anyway
        f.truncate(offset)
        f.seek(offset)
        if self.sync:
            os.fdatasync(f.fileno())

    def needs_checkpoint(self) -> bool:
        with self._lock:
            return self._file is not None and self._file.tell() >= self.segment_bytes

    def checkpoint(self) -> int:
        """Sync every file written since the last checkpoint, then delete the segment(s) that
        held them. Returns how many files were synced. Safe to call at any time."""
        with self._lock:
            if self._file is None or self._path is None:
                return 0
            self._file.close()
            done, pending = self._path, self._pending
            self._file, self._path, self._pending = None, None, []
        folders = set()
        for path in pending:
            try:
                fd = os.open(path, os.O_RDONLY)
            except FileNotFoundError:
                continue  # replaced since (its replacement is in a later segment) or removed
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            folders.update((path.parent, path.parent.parent, path.parent.parent.parent))
        for folder in folders:
            fsync_dir(folder)
        done.unlink(missing_ok=True)  # missing: another Spool on this folder recovered it
        fsync_dir(self.folder)
        return len(pending)

    def close(self) -> None:
        self.checkpoint()

    # -- recovery ---------------------------------------------------------------------------------
    def recover(self, restore: Callable[[JournalRecord], Path | None]) -> int:
        """Replay leftover segments (call before the first append): ``restore(record)`` makes
        the record's file hold its bytes (durably) and returns its path, or None to skip it.
        Deletes the segments afterwards. Returns how many files were rewritten."""
        rewritten = 0
        for segment in self.segments():
            for record in read_segment(segment):
                path = restore(record)
                if path is None:
                    continue
                try:
                    same = path.stat().st_size == len(record.data) and path.read_bytes() == record.data
                except FileNotFoundError:
                    same = False
                if not same:
                    atomic_write(path, record.data, fsync=True)
                    rewritten += 1
            segment.unlink()
        if rewritten:
            logger.warning("journal: %d received instances restored after an unclean stop", rewritten)
        if self.folder.is_dir():
            fsync_dir(self.folder)
        return rewritten
