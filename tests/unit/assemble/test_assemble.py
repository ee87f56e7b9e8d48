"""Assemble: quiet period, early completion from headers, study grouping, late instances
(new job key), re-sends ignored. Instances are real DICOM files read by the real header reader."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

from neuroread.node.assemble.assembler import Assembler, CompleteSeries, CompleteStudy
from neuroread.node.jobs.store import JobStore
from neuroread.node.spool.store import InstanceRecord

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=timezone.utc)
MR = "1.2.840.10008.5.1.4.1.1.4"
STUDY = "1.2.826.0.1.1"


def _t(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def _write(folder: Path, series: str, i: int, *, iia: int | None = None, z: float | None = None,
           acq: int | None = 1) -> Path:
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = MR, f"{series}.{i}"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = STUDY, series
    if iia is not None:
        ds.ImagesInAcquisition = iia
    if acq is not None:
        ds.AcquisitionNumber = acq
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.ImagePositionPatient = [0, 0, 3.0 * i if z is None else z]
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = MR, ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    path = folder / f"{ds.SOPInstanceUID}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def _rec(path: Path, series: str, i: int, at: float, outcome: str = "new", study: str = STUDY) -> InstanceRecord:
    return InstanceRecord(study, series, f"{series}.{i}", MR, ExplicitVRLittleEndian, path,
                          path.stat().st_size, _t(at), outcome)


class Feed:
    """An assembler with a recording callback, fed with real files."""

    def __init__(self, folder: Path, **kwargs) -> None:
        self.folder, self.seen = folder, []
        self.asm = Assembler(self.seen.append, **{"quiet_s": 60.0, **kwargs})

    def send(self, series: str, indices, at: float, outcome: str = "new", study: str = STUDY, **hdr) -> None:
        for i in indices:
            self.asm.add(_rec(_write(self.folder, series, i, **hdr), series, i, at, outcome, study))


def test_quiet_period(tmp_path):
    f = Feed(tmp_path)
    f.send("1.2.3", range(5), at=0)  # no ImagesInAcquisition: only the quiet period applies
    f.send("1.2.3", range(5, 8), at=30)
    assert f.asm.tick(_t(89)) == []  # 59 s after the last instance
    (series,) = [x for x in f.asm.tick(_t(90)) if isinstance(x, CompleteSeries)]
    assert (series.reason, series.generation, len(series.instances)) == ("quiet", 1, 8)
    assert series.sop_instance_uids == sorted(f"1.2.3.{i}" for i in range(8))
    assert f.asm.tick(_t(500)) == []  # reported once
    assert [type(x).__name__ for x in f.seen] == ["CompleteSeries", "CompleteStudy"]


def test_early_images_in_acquisition(tmp_path):
    f = Feed(tmp_path)
    f.send("1.2.3", range(3), at=0, iia=4)
    assert f.asm.tick(_t(1)) == []  # 3 of 4
    f.send("1.2.3", [3], at=1, iia=4)
    (series,) = f.asm.tick(_t(1))
    assert (series.reason, len(series.instances)) == ("images_in_acquisition", 4)


def test_early_images_in_acquisition_is_conservative(tmp_path):
    f = Feed(tmp_path)
    f.send("1.2.3", range(2), at=0, iia=4, acq=1)
    f.send("1.2.3", range(2, 4), at=0, iia=4, acq=2)  # two acquisitions: count is not the series'
    assert f.asm.tick(_t(1)) == []
    (tmp_path / "g").mkdir()
    g = Feed(tmp_path / "g", early=False)
    g.send("1.2.5", range(4), at=0, iia=4)
    assert g.asm.tick(_t(1)) == []  # early rules switched off


def test_early_regular_slices(tmp_path):
    f = Feed(tmp_path, slice_count_range=(4, 10), early_quiet_s=5)
    f.send("1.2.3", [0, 1, 3, 4], at=0)  # a gap at slice 2
    assert f.asm.tick(_t(10)) == []
    f.send("1.2.3", [2], at=10)
    assert f.asm.tick(_t(12)) == []  # regular now, but not yet quiet for early_quiet_s
    (series,) = f.asm.tick(_t(15))
    assert (series.reason, len(series.instances)) == ("regular_slices", 5)


def test_regular_slices_off_by_default_and_range_checked(tmp_path):
    f = Feed(tmp_path)
    f.send("1.2.3", range(5), at=0)
    assert f.asm.tick(_t(30)) == []
    g = Feed(tmp_path, slice_count_range=(6, 10), early_quiet_s=0)
    g.send("1.2.4", range(5), at=0)  # regular but fewer than expected
    assert g.asm.tick(_t(30)) == []


def test_unreadable_file_disables_early_rule(tmp_path):
    f = Feed(tmp_path)
    f.send("1.2.3", range(3), at=0, iia=4)
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"not dicom")
    f.asm.add(_rec(junk, "1.2.3", 3, at=0))
    assert f.asm.tick(_t(1)) == []
    assert f.asm.tick(_t(60))[0].reason == "quiet"


def test_study_grouping(tmp_path):
    f = Feed(tmp_path, study_quiet_s=120)
    f.send("1.2.3", range(4), at=0, iia=4)  # T1, complete early
    f.send("1.2.4", range(3), at=50)  # STIR, quiet period only
    out = f.asm.tick(_t(60))
    assert [x.series_uid for x in out] == ["1.2.3"]
    out = f.asm.tick(_t(110))
    assert [x.series_uid for x in out] == ["1.2.4"]  # all series complete, study not quiet 120 s
    (study,) = f.asm.tick(_t(170))
    assert isinstance(study, CompleteStudy) and study.study_uid == STUDY and study.generation == 1
    assert sorted(s.series_uid for s in study.series) == ["1.2.3", "1.2.4"]
    # another study is independent
    f.send("1.2.9", range(2), at=200, study="1.2.826.0.1.2")
    assert [type(x).__name__ for x in f.asm.tick(_t(330))] == ["CompleteSeries", "CompleteStudy"]


def test_late_instance_reopens_and_makes_a_new_job(tmp_path):
    store = JobStore(f"sqlite:///{tmp_path / 'jobs.db'}", clock=lambda: T0)
    f = Feed(tmp_path, store=store)

    def enqueue(c: CompleteSeries):
        return store.enqueue("ms-csvd", "1.0", {"flair": c.series_uid}, {"flair": c.sop_instance_uids})

    f.send("1.2.3", range(4), at=0, iia=4)
    first = f.asm.tick(_t(1))[0]
    job1 = enqueue(first)
    assert store.series("1.2.3")["state"] == "complete"
    assert isinstance(f.asm.tick(_t(61))[0], CompleteStudy)
    f.send("1.2.3", [4], at=100, iia=4)  # late
    assert store.series("1.2.3")["state"] == "complete"  # written at the next tick
    assert f.asm.tick(_t(101)) == []  # reopened: no early rule, waits for the quiet period
    assert store.series("1.2.3")["state"] == "receiving" and store.series("1.2.3")["instances"] == 5
    second = [x for x in f.asm.tick(_t(160)) if isinstance(x, CompleteSeries)][0]
    assert (second.generation, second.reason, len(second.instances)) == (2, "quiet", 5)
    job2 = enqueue(second)
    assert job2.id != job1.id and job2.key != job1.key
    assert enqueue(first).id == job1.id  # the first completion still maps to its job
    studies = [x for x in f.seen if isinstance(x, CompleteStudy)]
    assert [s.generation for s in studies] == [1, 2]
    assert len(studies[1].series[0].instances) == 5
    store.close()


@pytest.mark.parametrize("outcome", ["duplicate", "replaced"])
def test_resends_do_not_reopen_or_delay(tmp_path, outcome):
    f = Feed(tmp_path)
    f.send("1.2.3", range(3), at=0)
    f.send("1.2.3", [1], at=50, outcome=outcome)  # re-send before completion: no delay
    assert len(f.asm.tick(_t(60))) == 2
    f.send("1.2.3", [0, 2], at=100, outcome=outcome)  # after completion: no reopening
    assert f.asm.tick(_t(1000)) == []
    assert len(f.seen) == 2


def test_constructor_validates():
    with pytest.raises(ValueError, match="quiet_s"):
        Assembler(print, quiet_s=0)
    with pytest.raises(ValueError, match="study_quiet_s"):
        Assembler(print, quiet_s=60, study_quiet_s=10)
    with pytest.raises(ValueError, match="slice_count_range"):
        Assembler(print, slice_count_range=(5, 2))
    with pytest.raises(ValueError, match="on_complete"):
        Assembler(None)
