"""Group commit of folder syncs: concurrent writers into one folder share its ``fsync``.

A file renamed into a folder survives a power cut once the folder itself is ``fsync``-ed after
the rename (:mod:`.atomic`). With several associations storing into the same series folder at
once, each instance's own folder ``fsync`` is a journal commit of its own, and each costs its
thread two more trips through the interpreter lock. :class:`FolderSync` lets them share: a
writer that calls :meth:`FolderSync.sync` after its rename returns once an ``fsync`` of the
folder that *started after the call* has completed, which covers the rename (and every other
change made to the folder before that ``fsync`` began). One caller runs that ``fsync`` (the
leader); the writers that arrive while it runs wait for the next one, which one of them runs
for all of them.

Errors: when an ``fsync`` fails (an ``OSError``, or anything else it raises), every writer it
was meant to cover gets that exception (the same object, as :mod:`concurrent.futures` hands one
failure to every waiter), so none of them can report success; the writers of the next round
start a fresh ``fsync``.

With one writer at a time this is exactly the plain sequence (rename, then the folder's own
``fsync``, in the same thread), and nothing waits.
"""
from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .atomic import fsync_dir


@dataclass
class _Folder:
    """The sync state of one folder (kept only while someone is syncing it)."""

    started: int = 0  # rounds begun (the running or last round's number)
    done: int = 0  # rounds completed (they complete in order: one runs at a time)
    running: bool = False
    waiting: dict[int, int] = field(default_factory=dict)  # round -> writers waiting for it
    errors: dict[int, BaseException] = field(default_factory=dict)  # round -> its failure


class FolderSync:
    """Shared ``fsync`` of folders for concurrent writers; see the module docstring.

    Parameters
    ----------
    fsync:
        ``fsync(folder)`` makes the folder's entries durable; injectable for tests (a slow or
        failing sync). Defaults to :func:`neuroread.node.spool.atomic.fsync_dir`.
    """

    def __init__(self, fsync: Callable[[Path], None] = fsync_dir) -> None:
        if not callable(fsync):
            raise ValueError(f"FolderSync.fsync must be callable, got {fsync!r}")
        self._fsync = fsync
        self._cond = threading.Condition()
        self._folders: dict[Path, _Folder] = {}
        self.rounds = 0  # fsyncs run, all folders together (for tests and diagnostics)

    def waiting(self, folder: Path) -> int:
        """Writers inside :meth:`sync` for ``folder`` now, running its ``fsync`` or waiting (for
        tests and diagnostics)."""
        with self._cond:
            state = self._folders.get(Path(folder))
            return sum(state.waiting.values()) if state is not None else 0

    def sync(self, folder: Path) -> None:
        """Return once an ``fsync`` of ``folder`` begun after this call has completed; raise what
        it raised (an ``OSError``) if it failed."""
        folder = Path(folder)
        with self._cond:
            state = self._folders.setdefault(folder, _Folder())
            # A round already running may have begun before the caller's rename: the next one.
            mine = state.started + 1
            state.waiting[mine] = state.waiting.get(mine, 0) + 1
            try:
                while state.done < mine:
                    if state.running:
                        self._cond.wait()
                        continue
                    state.started += 1  # == mine: rounds begin one at a time, in order
                    state.running = True
                    self._cond.release()
                    error: BaseException | None = None
                    try:
                        self._fsync(folder)
                    except BaseException as exc:  # noqa: BLE001 -- handed to every writer of the round
                        error = exc
                    finally:
                        self._cond.acquire()
                        state.running = False
                        state.done = state.started
                        self.rounds += 1
                        if error is not None:
                            state.errors[state.done] = error
                        self._cond.notify_all()
                error = state.errors.get(mine)
            finally:
                state.waiting[mine] -= 1
                if not state.waiting[mine]:
                    del state.waiting[mine]
                    state.errors.pop(mine, None)
                if not state.waiting and not state.running:
                    del self._folders[folder]
        if error is not None:
            raise error
