"""Files that must survive a crash: the one way neuroread writes what it must not lose.

:func:`atomic_write` writes to a temporary file in the target's folder, flushes and
``fsync``-s it, renames it over the target (atomic on POSIX) and ``fsync``-s the folder so
that the rename itself is durable. A reader sees the old file or the whole new one, never a
part; on any error the temporary file is removed and the error propagates. The spool (what
we receive) and the deliver stage (outbox, folder destinations) both write through here.
"""
from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

Writer = Callable[[BinaryIO, bytes], None]


def write_all(f: BinaryIO, data: bytes) -> None:
    """The default writer (tests inject one that fails half-way, as a full disk does)."""
    f.write(data)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_dirs(folder: Path, root: Path, *, fsync: bool = True) -> None:
    """Create ``root`` if needed, then ``folder`` and its missing parents below ``root``,
    fsync-ing each parent that gained an entry, so a new study/series folder survives a crash
    with its files."""
    folder, root = Path(folder), Path(root)
    root.mkdir(parents=True, exist_ok=True)
    missing = []
    d = folder
    while not d.is_dir() and d != root and root in d.parents:
        missing.append(d)
        d = d.parent
    for d in reversed(missing):
        try:
            d.mkdir()
        except FileExistsError:
            continue  # another thread made it first
        if fsync:
            fsync_dir(d.parent)


def atomic_write(
    path: Path,
    data: bytes,
    *,
    fsync: bool = True,
    writer: Writer = write_all,
    temp_prefix: str = ".tmp-",
    temp_suffix: str = ".part",
    sync_folder: Callable[[Path], None] = fsync_dir,
) -> None:
    """Write ``data`` to ``path`` durably (see the module docstring); the folder must exist.

    ``sync_folder(folder)`` makes the rename durable (default :func:`fsync_dir`; the spool
    passes :meth:`neuroread.node.spool.group_sync.FolderSync.sync`, which concurrent writers share).
    """
    path = Path(path)
    fd, tmp_name = tempfile.mkstemp(prefix=temp_prefix, suffix=temp_suffix, dir=path.parent)
    tmp = Path(tmp_name)
    renamed = False
    try:
        with os.fdopen(fd, "wb") as f:
            writer(f, data)
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        os.replace(tmp, path)
        renamed = True
    finally:
        if not renamed:  # whatever went wrong, leave no half-written file behind
            tmp.unlink(missing_ok=True)
    if fsync:
        sync_folder(path.parent)
