"""Group commit of folder syncs (:class:`FolderSync`): writers storing into one folder at once share
its fsync, each returns only after an fsync that began after its rename, and a failing fsync
fails every writer it was meant to cover. Real files and real fsyncs, except where a test needs a
sync to block or fail on cue."""
from __future__ import annotations

import errno
import itertools
import os
import threading
import time
from pathlib import Path

import pytest

from neuroread.node.spool import FolderSync, Spool, fsync_dir

CT = "1.2.840.10008.5.1.4.1.1.2"
EVRLE = "1.2.840.10008.1.2.1"
STUDY, SERIES = "1.2.3", "1.2.3.4"


def _store_args(n: int) -> dict:
    return dict(study_uid=STUDY, series_uid=SERIES, sop_instance_uid=f"1.2.3.4.{n}", sop_class_uid=CT,
                transfer_syntax_uid=EVRLE)


def _wait_until(check, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail("condition not reached in time")
        time.sleep(0.005)


class _Gated:
    """An fsync that blocks its first call until released and can fail a chosen round."""

    def __init__(self, fail_round: int | None = None) -> None:
        self.calls: list[Path] = []
        self.first_running = threading.Event()
        self.release = threading.Event()
        self.fail_round = fail_round
        self.errors: list[OSError] = []

    def __call__(self, folder: Path) -> None:
        self.calls.append(folder)
        if len(self.calls) == 1:
            self.first_running.set()
            if not self.release.wait(10):
                raise RuntimeError("never released")
        if len(self.calls) == self.fail_round:
            error = OSError(errno.EIO, "Input/output error")
            self.errors.append(error)
            raise error
        fsync_dir(folder)


def _run(target, n: int) -> tuple[list[threading.Thread], dict[int, BaseException | None]]:
    outcome: dict[int, BaseException | None] = {}

    def run(i: int) -> None:
        try:
            target(i)
            outcome[i] = None
        except BaseException as exc:  # noqa: BLE001 -- recorded for the test to check
            outcome[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    return threads, outcome


def test_one_writer_at_a_time_gets_its_own_sync(tmp_path):
    calls = []
    sync = FolderSync(fsync=lambda folder: calls.append(folder) or fsync_dir(folder))
    for _ in range(3):
        sync.sync(tmp_path)
    assert calls == [tmp_path] * 3 and sync.rounds == 3 and sync.waiting(tmp_path) == 0


def test_writers_arriving_during_a_sync_share_the_next_one(tmp_path):
    fsync = _Gated()
    sync = FolderSync(fsync=fsync)
    first, first_outcome = _run(lambda i: sync.sync(tmp_path), 1)
    assert fsync.first_running.wait(10)
    later, later_outcome = _run(lambda i: sync.sync(tmp_path), 5)
    _wait_until(lambda: sync.waiting(tmp_path) == 6)  # the first in its fsync, five waiting
    assert all(t.is_alive() for t in later)  # none returns before a sync that began after its call
    fsync.release.set()
    for t in first + later:
        t.join(10)
    assert first_outcome == {0: None} and later_outcome == {i: None for i in range(5)}
    assert fsync.calls == [tmp_path, tmp_path]  # one for the first, one shared by the five
    assert sync.waiting(tmp_path) == 0


def test_a_failing_sync_fails_every_writer_of_its_round_and_the_next_round_starts_afresh(tmp_path):
    fsync = _Gated(fail_round=2)
    sync = FolderSync(fsync=fsync)
    first, first_outcome = _run(lambda i: sync.sync(tmp_path), 1)
    assert fsync.first_running.wait(10)
    later, later_outcome = _run(lambda i: sync.sync(tmp_path), 5)
    _wait_until(lambda: sync.waiting(tmp_path) == 6)
    fsync.release.set()
    for t in first + later:
        t.join(10)
    assert first_outcome == {0: None}
    (error,) = fsync.errors
    assert len(later_outcome) == 5 and all(exc is error for exc in later_outcome.values())
    sync.sync(tmp_path)  # a fresh round, after the failure: it succeeds
    assert len(fsync.calls) == 3 and sync.waiting(tmp_path) == 0


def test_folders_do_not_wait_for_each_other(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    fsync = _Gated()
    sync = FolderSync(fsync=fsync)
    blocked, outcome = _run(lambda i: sync.sync(a), 1)
    assert fsync.first_running.wait(10)
    sync.sync(b)  # returns while a's fsync is still blocked
    assert blocked[0].is_alive()
    fsync.release.set()
    blocked[0].join(10)
    assert outcome == {0: None} and fsync.calls == [a, b]


def test_many_threads_storing_at_once_each_return_after_a_sync_covering_its_file(tmp_path, monkeypatch):
    """32 threads store 8 instances each into one series folder with real files and fsyncs; the
    order of renames, folder syncs and returns is logged: each store returns only after a folder
    fsync that began after its rename ended, and its file's bytes were synced before the rename."""
    seq = itertools.count()
    lock = threading.Lock()
    renamed: dict[str, int] = {}
    synced_files: dict[str, int] = {}  # temporary file -> when its fsync ended
    temp_of: dict[str, str] = {}
    rounds: list[tuple[int, int]] = []  # (began, ended) of each folder fsync
    real_replace, real_fsync = os.replace, os.fsync

    def replace(src, dst):
        real_replace(src, dst)
        with lock:
            renamed[str(dst)] = next(seq)
            temp_of[str(dst)] = str(src)

    def fsync(fd):
        real_fsync(fd)
        with lock:
            synced_files[os.readlink(f"/proc/self/fd/{fd}")] = next(seq)

    def folder_fsync(folder):
        with lock:
            began = next(seq)
        fsync_dir(folder)
        with lock:
            rounds.append((began, next(seq)))

    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(os, "fsync", fsync)
    spool = Spool(tmp_path / "spool", folder_sync=FolderSync(fsync=folder_fsync))
    spool.store(b"first", **_store_args(0))  # the folders exist before the crowd arrives
    returned: dict[str, int] = {}
    start = threading.Barrier(32)

    def writer(t: int) -> None:
        start.wait()
        for k in range(8):
            n = 1 + t * 8 + k
            rec = spool.store(f"instance {n} ".encode() * 1000, **_store_args(n))
            with lock:
                returned[str(rec.path)] = next(seq)

    threads, outcome = _run(writer, 32)
    for t in threads:
        t.join(60)
    assert outcome == {t: None for t in range(32)}
    assert len(returned) == 256
    for path, at in returned.items():
        assert synced_files[temp_of[path]] < renamed[path]  # bytes synced before the name appeared
        assert any(renamed[path] < began and ended < at for began, ended in rounds), path
        n = int(Path(path).stem.rsplit(".", 1)[1])
        assert Path(path).read_bytes() == f"instance {n} ".encode() * 1000
    assert not [p for p in spool.root.rglob(".incoming-*")]
    assert len(rounds) <= 257  # at most one folder fsync per store (fewer when they grouped)


def test_a_failing_folder_sync_fails_the_store_and_nothing_is_handed_on(tmp_path):
    def broken(folder):
        raise OSError(errno.EIO, "Input/output error")

    seen = []
    spool = Spool(tmp_path, on_stored=seen.append, folder_sync=FolderSync(fsync=broken))
    with pytest.raises(OSError) as info:
        spool.store(b"abc", **_store_args(1))
    assert info.value.errno == errno.EIO and seen == []


def test_a_duplicate_waits_for_a_folder_sync_too(tmp_path):
    """The copy a re-send finds may be another association's, renamed and not yet synced."""
    calls = []
    spool = Spool(tmp_path, folder_sync=FolderSync(fsync=lambda folder: calls.append(folder) or fsync_dir(folder)))
    first = spool.store(b"same", **_store_args(1))
    calls.clear()
    again = spool.store(b"same", **_store_args(1))
    assert again.outcome == "duplicate" and calls == [first.path.parent]


def test_constructor_validates(tmp_path):
    with pytest.raises(ValueError, match="fsync"):
        FolderSync(fsync=42)
    with pytest.raises(ValueError, match="folder_sync"):
        Spool(tmp_path, folder_sync=object())
