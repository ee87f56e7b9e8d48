"""The spool on its own: atomic durable writes, UID validation, duplicates, full disk."""
from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from neuroread.node.spool.store import InvalidUIDError, Spool, SpoolFullError, validate_uid

CT = "1.2.840.10008.5.1.4.1.1.2"
EVRLE = "1.2.840.10008.1.2.1"
UIDS = dict(study_uid="1.2.3", series_uid="1.2.3.4", sop_instance_uid="1.2.3.4.5",
            sop_class_uid=CT, transfer_syntax_uid=EVRLE)


def _all_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def test_store_layout_record_and_callback(tmp_path):
    seen = []
    spool = Spool(tmp_path / "spool", on_stored=seen.append)
    rec = spool.store(b"abc", **UIDS, calling_ae="SCU")
    assert rec.path == spool.root / "1.2.3" / "1.2.3.4" / "1.2.3.4.5.dcm"
    assert rec.path.read_bytes() == b"abc"
    assert (rec.size, rec.outcome, rec.calling_ae, rec.sop_class_uid) == (3, "new", "SCU", CT)
    assert rec.received_at.tzinfo is not None
    assert seen == [rec]
    assert _all_files(spool.root) == [rec.path]  # no temp file left


@pytest.mark.parametrize("bad", ["../../x", "..", "1.2/3", "1.2\\3", "/etc/passwd", "1.2.03", "1..2",
                                 "", "1.2.3 ", "1.2\x00", "1." * 32 + "1", "1.2.3.a"])
@pytest.mark.parametrize("field", ["study_uid", "series_uid", "sop_instance_uid"])
def test_invalid_uid_refused_nothing_written(tmp_path, bad, field):
    root = tmp_path / "spool"
    spool = Spool(root, on_stored=lambda r: pytest.fail("callback for a refused instance"))
    with pytest.raises(InvalidUIDError):
        spool.store(b"abc", **{**UIDS, field: bad})
    assert list(root.iterdir()) == []
    assert [p.name for p in tmp_path.iterdir()] == ["spool"]


def test_validate_uid_names_the_field():
    with pytest.raises(ValueError, match="StudyInstanceUID"):
        validate_uid("../x", "StudyInstanceUID")
    with pytest.raises(ValueError, match="more than 64"):
        validate_uid("1." * 32 + "1", "SOPInstanceUID")
    with pytest.raises(ValueError, match="str"):
        validate_uid(None, "SOPInstanceUID")
    assert validate_uid("1.2.840.10008.1.2.1", "x") == "1.2.840.10008.1.2.1"


def test_duplicate_same_bytes_not_rewritten(tmp_path):
    spool = Spool(tmp_path)
    first = spool.store(b"same", **UIDS)
    ino = first.path.stat().st_ino
    second = spool.store(b"same", **UIDS)
    assert second.outcome == "duplicate" and second.path == first.path
    assert first.path.stat().st_ino == ino  # not replaced
    assert _all_files(spool.root) == [first.path]


def test_duplicate_different_bytes_replaced_atomically(tmp_path):
    spool = Spool(tmp_path)
    first = spool.store(b"old bytes", **UIDS)
    with first.path.open("rb") as reader:  # a reader of the old file keeps the old bytes
        second = spool.store(b"new bytes!", **UIDS)
        assert reader.read() == b"old bytes"
    assert second.outcome == "replaced"
    assert first.path.read_bytes() == b"new bytes!"
    assert _all_files(spool.root) == [first.path]


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT])
def test_disk_full_leaves_nothing_half_written(tmp_path, code):
    def half_then_full(f, data):
        f.write(data[: len(data) // 2])
        raise OSError(code, "No space left on device")

    seen = []
    spool = Spool(tmp_path, on_stored=seen.append, writer=half_then_full)
    with pytest.raises(SpoolFullError):
        spool.store(b"0123456789", **UIDS)
    assert _all_files(spool.root) == [] and seen == []


def test_full_disk_on_replace_keeps_old_copy(tmp_path):
    good = Spool(tmp_path)
    rec = good.store(b"old", **UIDS)

    def full(f, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(SpoolFullError):
        Spool(tmp_path, writer=full).store(b"newer", **UIDS)
    assert _all_files(good.root) == [rec.path] and rec.path.read_bytes() == b"old"


def test_other_os_error_propagates_and_cleans_up(tmp_path):
    def eio(f, data):
        raise OSError(errno.EIO, "I/O error")

    with pytest.raises(OSError) as info:
        Spool(tmp_path, writer=eio).store(b"x", **UIDS)
    assert not isinstance(info.value, SpoolFullError)
    assert _all_files(tmp_path) == []


def test_stale_temp_files_removed(tmp_path):
    spool = Spool(tmp_path)
    rec = spool.store(b"x", **UIDS)
    stale = rec.path.parent / ".incoming-1.2.3.4.6-abc.tmp"
    stale.write_bytes(b"half")
    assert spool.remove_stale_temp_files() == 1
    assert _all_files(spool.root) == [rec.path]


def test_constructor_validates(tmp_path):
    with pytest.raises(ValueError, match="on_stored"):
        Spool(tmp_path, on_stored=42)
    with pytest.raises(ValueError, match="root"):
        Spool("")
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises((ValueError, FileExistsError)):
        Spool(tmp_path / "file")


def test_bytes_and_rename_are_synced_before_store_returns(tmp_path, monkeypatch):
    """The durability order, seen at the system calls: new folders synced into their parents,
    the temporary file synced, renamed onto the final name, then its folder synced; all before
    ``on_stored`` (the hand-off after which the SCP answers success)."""
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", str(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    spool = Spool(tmp_path / "spool", on_stored=lambda rec: events.append(("stored", str(rec.path))))
    rec = spool.store(b"precious bytes", **UIDS)
    series, study = str(rec.path.parent), str(rec.path.parent.parent)
    temp = [e for e in events if e[0] == "fsync" and ".incoming-" in e[1]]
    assert len(temp) == 1
    assert events == [("fsync", str(spool.root)), ("fsync", study),  # the new study and series folders
                      temp[0], ("replace", str(rec.path)), ("fsync", series), ("stored", str(rec.path))]
    events.clear()
    spool.store(b"more", **{**UIDS, "sop_instance_uid": "1.2.3.4.6"})  # folders exist: file, rename, folder
    assert [e[0] for e in events] == ["fsync", "replace", "fsync", "stored"]


def test_no_sync_when_turned_off(tmp_path, monkeypatch):
    synced = []
    monkeypatch.setattr(os, "fsync", synced.append)
    Spool(tmp_path, fsync=False).store(b"abc", **UIDS)
    assert synced == []
