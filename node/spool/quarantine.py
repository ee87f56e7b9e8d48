"""Quarantine: stored files that a replay at start-up could not use, kept apart with their reason.

Start-up replays what is on disk (the spool rescan gives the assembler every instance received
before a restart). One file that cannot be used there (unreadable, nested past the parse limit,
a series already held under another study, UIDs that do not match its place in the spool) must
not stop the node from starting, and must not be deleted either: it was acknowledged to a
sender. :meth:`Quarantine.put` moves it out of the spool to ``<quarantine>/<path in the spool>``
with a JSON file beside it (``<name>.reason.json``: the reason, where it came from, when) and the
node goes on. ``neuroread quarantine list`` shows what is there; an operator can move a file back
into a sender's outgoing folder, or delete it.

Reasons name attributes by keyword and tag, never their values (they are read by people and
written to logs). Moves are renames (atomic) when the quarantine is on the spool's file system,
else a durable copy followed by the removal of the original; the reason file is written first,
so a crash in between leaves the instance in the spool (and it is quarantined again at the
next start), never lost.
"""
from __future__ import annotations

import errno
import json
import logging
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from .atomic import atomic_write, fsync_dir, make_dirs

logger = logging.getLogger(__name__)

REASON_SUFFIX = ".reason.json"


@dataclass(frozen=True)
class QuarantinedFile:
    """One file in the quarantine: where it is, where it was, why, and when it was moved."""

    path: Path
    origin: str
    reason: str
    at: datetime
    stage: str


class Quarantine:
    """Files moved aside under ``root`` (made when the first file arrives)."""

    def __init__(self, root: Path | str) -> None:
        if not isinstance(root, (str, Path)) or not str(root):
            raise ValueError(f"Quarantine.root must be a non-empty path, got {root!r}")
        self.root = Path(root).resolve()

    def put(self, path: Path, reason: str, *, base: Path, stage: str = "spool rescan") -> Path:
        """Move ``path`` (a file under ``base``) to the quarantine with ``reason``; return its new path.

        The file keeps its path relative to ``base``; a name already taken gets a numbered
        suffix (nothing in the quarantine is overwritten). Raises ``OSError`` when the move
        fails (the file then stays where it was).
        """
        path, base = Path(path), Path(base).resolve()
        try:
            relative = path.resolve().relative_to(base)
        except ValueError:
            relative = Path(path.name)
        target = self.root / relative
        n = 1
        while target.exists() or _reason_path(target).exists():
            target = self.root / relative.with_name(f"{relative.stem}.{n}{relative.suffix}")
            n += 1
        make_dirs(target.parent, self.root)
        note = {"origin": str(path), "reason": reason, "stage": stage,
                "at": datetime.now(timezone.utc).isoformat(timespec="microseconds")}
        atomic_write(_reason_path(target), (json.dumps(note, indent=1) + "\n").encode("utf-8"))
        try:
            os.rename(path, target)
        except OSError as exc:
            if exc.errno != errno.EXDEV:  # not merely another file system
                _reason_path(target).unlink(missing_ok=True)
                raise
            atomic_write(target, path.read_bytes())
            path.unlink()
        fsync_dir(target.parent)
        fsync_dir(path.parent)
        _remove_empty_parents(path.parent, base)
        logger.warning("%s: %s moved to the quarantine (%s): %s", stage, relative, self.root, reason)
        return target

    def size(self) -> int:
        """Bytes held in the quarantine (files and their reasons)."""
        return sum(p.stat().st_size for p in self.root.rglob("*") if p.is_file()) if self.root.is_dir() else 0

    def list(self) -> list[QuarantinedFile]:
        """Every quarantined file, oldest first."""
        if not self.root.is_dir():
            return []
        out = []
        for note_path in self.root.rglob(f"*{REASON_SUFFIX}"):
            try:
                note = json.loads(note_path.read_text(encoding="utf-8"))
                at = datetime.fromisoformat(note["at"])
            except (OSError, ValueError, KeyError, TypeError) as exc:
                logger.warning("quarantine: reason file %s unreadable (%s)", note_path, type(exc).__name__)
                continue
            data = note_path.with_name(note_path.name[: -len(REASON_SUFFIX)])
            out.append(QuarantinedFile(data, str(note.get("origin", "")), str(note.get("reason", "")), at,
                                       str(note.get("stage", ""))))
        return sorted(out, key=lambda q: (q.at, str(q.path)))


def _reason_path(target: Path) -> Path:
    return target.with_name(target.name + REASON_SUFFIX)


def _remove_empty_parents(folder: Path, base: Path) -> None:
    """Remove ``folder`` and its parents up to (not including) ``base`` while they are empty."""
    folder = folder.resolve()
    while folder != base and base in folder.parents:
        try:
            folder.rmdir()
        except OSError:
            return  # not empty (or already gone): stop there
        folder = folder.parent


__all__ = ["Quarantine", "QuarantinedFile", "REASON_SUFFIX"]
