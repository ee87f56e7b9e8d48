"""The pieces that keep one bad instance from doing harm, on their own: the spool's series → study
check, the assembler's, the quarantine, value redaction, tolerant copying, routing by agreement."""
from __future__ import annotations

import json
import logging
import warnings
from datetime import datetime, timezone
from pathlib import Path

import pytest
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.tag import Tag
from pydicom.uid import generate_uid

from neuroread.node.assemble.assembler import Assembler
from neuroread.node.assemble.consensus import series_consensus
from neuroread.node.encode.tolerant import copied_attributes, fill_series_level, withhold_invalid, withhold_invalid_all
from neuroread.node.malformed import MAX_SEQUENCE_DEPTH, sequence_too_deep
from neuroread.node.redact import RedactValues, describe_error, install, redact
from neuroread.node.spool.quarantine import Quarantine
from neuroread.node.spool.store import InstanceRecord, SeriesStudyConflictError, Spool, describe_uid

CT = "1.2.840.10008.5.1.4.1.1.2"
EVRLE = "1.2.840.10008.1.2.1"


def _store(spool: Spool, study: str, series: str, sop: str, data: bytes = b"x"):
    return spool.store(data, study_uid=study, series_uid=series, sop_instance_uid=sop, sop_class_uid=CT,
                       transfer_syntax_uid=EVRLE)


# -- spool and assembler ---------------------------------------------------------------------------
def test_spool_refuses_a_series_under_a_second_study_and_writes_nothing(tmp_path):
    seen = []
    spool = Spool(tmp_path / "spool", on_stored=seen.append)
    _store(spool, "1.2.3", "1.2.3.4", "1.2.3.4.1")
    with pytest.raises(SeriesStudyConflictError, match="already belongs to study 1.2.3, not 1.2.9") as info:
        _store(spool, "1.2.9", "1.2.3.4", "1.2.3.4.2")
    assert (info.value.series_uid, info.value.study_uid, info.value.held_under) == ("1.2.3.4", "1.2.9", "1.2.3")
    assert not (spool.root / "1.2.9").exists() and len(seen) == 1
    _store(spool, "1.2.3", "1.2.3.4", "1.2.3.4.2")  # the same study goes on


def test_spool_knows_each_series_study_after_a_restart(tmp_path):
    _store(Spool(tmp_path), "1.2.3", "1.2.3.4", "1.2.3.4.1")
    again = Spool(tmp_path)
    assert again.study_of("1.2.3.4") == "1.2.3"
    with pytest.raises(SeriesStudyConflictError):
        _store(again, "1.2.5", "1.2.3.4", "1.2.3.4.9")


def test_a_series_already_in_two_studies_belongs_to_the_one_received_first(tmp_path):
    for study, mtime in (("1.2.1", 2000), ("1.2.2", 1000)):  # 1.2.2 sorts later but came first
        folder = tmp_path / study / "1.2.3.4"
        folder.mkdir(parents=True)
        (folder / "1.2.3.4.1.dcm").write_bytes(b"x")
        import os
        os.utime(folder / "1.2.3.4.1.dcm", (mtime, mtime))
    spool = Spool(tmp_path)
    assert spool.study_of("1.2.3.4") == "1.2.2"
    spool.check_series("1.2.2", "1.2.3.4")
    with pytest.raises(SeriesStudyConflictError):
        spool.check_series("1.2.1", "1.2.3.4")


def test_assembler_refuses_a_series_under_a_second_study(tmp_path):
    asm = Assembler(lambda item: None, quiet_s=1, early=False)
    now = datetime.now(timezone.utc)

    def record(study: str, sop: str) -> InstanceRecord:
        return InstanceRecord(study, "1.2.3.4", sop, CT, EVRLE, tmp_path / f"{sop}.dcm", 1, now)

    asm.add(record("1.2.3", "1.2.3.4.1"))
    with pytest.raises(SeriesStudyConflictError):
        asm.add(record("1.2.9", "1.2.3.4.2"))
    (done,) = [c for c in asm.tick(now.replace(year=now.year + 1)) if hasattr(c, "series_uid")]
    assert done.study_uid == "1.2.3" and list(done.instances) == ["1.2.3.4.1"]


def test_invalid_uids_are_described_by_length_only():
    assert describe_uid("1.2.840.10008.1.2") == "1.2.840.10008.1.2"
    assert describe_uid("Doe^John") == "<not a UID, 8 characters>"
    from neuroread.node.spool.store import validate_uid
    with pytest.raises(ValueError) as info:
        validate_uid("SMITH^JANE", "SOPInstanceUID")
    assert "SMITH" not in str(info.value) and "10 characters" in str(info.value)


# -- quarantine --------------------------------------------------------------------------------------
def test_quarantine_keeps_the_file_with_its_reason_and_never_overwrites(tmp_path):
    spool = tmp_path / "spool"
    q = Quarantine(tmp_path / "quarantine")
    assert q.list() == []
    moved = []
    for content in (b"first", b"second"):
        src = spool / "1.2" / "1.2.3" / "1.2.3.4.dcm"
        src.parent.mkdir(parents=True, exist_ok=True)
        src.write_bytes(content)
        moved.append(q.put(src, f"reason {content.decode()}", base=spool))
        assert not src.exists()
    assert moved[0] != moved[1] and [p.read_bytes() for p in moved] == [b"first", b"second"]
    assert not (spool / "1.2").exists(), "emptied study and series folders are removed"
    listed = q.list()
    assert [e.reason for e in listed] == ["reason first", "reason second"]
    assert all(e.stage == "spool rescan" and e.origin.endswith("1.2.3.4.dcm") for e in listed)
    note = json.loads(Path(str(moved[0]) + ".reason.json").read_text())
    assert note["reason"] == "reason first"


# -- redaction ----------------------------------------------------------------------------------------
def test_redact_removes_quoted_values_and_dciodvfy_values():
    text = "Invalid value for VR DA: '1950-01-12'. b'\\x00ab' \"Doe^J\" Value = <SMITH>"
    out = redact(text)
    for value in ("1950-01-12", "x00ab", "Doe^J", "SMITH"):
        assert value not in out
    assert out.startswith("Invalid value for VR DA: <value>")
    assert describe_error(ValueError("invalid literal for int() with base 10: 'abc'")) == \
        "ValueError: invalid literal for int() with base 10: <value>"


def test_pydicom_validation_messages_reach_the_log_without_values(caplog):
    install()
    install()  # idempotent
    assert sum(isinstance(f, RedactValues) for f in logging.getLogger("pydicom").filters) == 1
    ds = Dataset()
    ds._dict[Tag(0x00200013)] = RawDataElement(Tag(0x00200013), "IS", 4, b"abc ", 0, False, True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        install()  # our filter goes in front of the catch-all
        with caplog.at_level(logging.WARNING, logger="pydicom"):
            _ = ds.InstanceNumber  # reading it is what warns
    assert "Invalid value for VR IS" in caplog.text and "abc" not in caplog.text
    assert not [w for w in caught if "abc" in str(w.message)], "the duplicate warning is silenced"


# -- nesting ----------------------------------------------------------------------------------------
def _nested(levels: int) -> Dataset:
    ds = Dataset()
    inner = ds
    for _ in range(levels):
        item = Dataset()
        inner.ContentSequence = Sequence([item])
        inner = item
    inner.TextValue = "leaf"
    return ds


def test_sequence_depth_limit():
    assert not sequence_too_deep(_nested(MAX_SEQUENCE_DEPTH))
    assert sequence_too_deep(_nested(MAX_SEQUENCE_DEPTH + 1))
    assert not sequence_too_deep(Dataset())


# -- tolerant copying -----------------------------------------------------------------------------------
def _source(**raw: tuple[int, str, bytes]) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = CT, generate_uid()
    ds.PatientID, ds.PatientName, ds.StudyInstanceUID = "ID1", "Doe^J", generate_uid()
    for tag, vr, value in raw.values():
        ds._dict[Tag(tag)] = RawDataElement(Tag(tag), vr, len(value), value, 0, False, True)
    return ds


def test_copied_attributes_are_highdicoms_patient_and_study_modules():
    keywords = dict(copied_attributes(CT))
    assert keywords["PatientBirthDate"] == "2" and keywords["StudyInstanceUID"] == "1"
    assert "PatientWeight" in keywords and "SeriesInstanceUID" not in keywords and "PixelData" not in keywords
    assert dict(copied_attributes("1.2.3.4.5.6.7")), "an unknown SOP class falls back to the mandatory modules"


def test_invalid_copied_values_are_emptied_or_removed_named_without_their_values():
    ds = _source(birth=(0x00100030, "DA", b"1950-01-12"), weight=(0x00101030, "DS", b"heavy "),
                 age=(0x00101010, "AS", b"45 years"), accession=(0x00080050, "SH", b"A" * 20),
                 time=(0x00080030, "TM", b"25:61:00"))
    withheld = {w.keyword: w for w in withhold_invalid(ds)}
    assert set(withheld) == {"PatientBirthDate", "PatientWeight", "PatientAge", "AccessionNumber", "StudyTime"}
    assert (withheld["PatientBirthDate"].tag, withheld["PatientBirthDate"].action) == ("(0010,0030)", "emptied")
    assert withheld["PatientWeight"].action == "removed" and withheld["PatientAge"].action == "removed"
    assert withheld["AccessionNumber"].action == "emptied" and withheld["StudyTime"].action == "emptied"
    assert "PatientBirthDate" in ds and ds.PatientBirthDate in (None, "")
    assert "PatientWeight" not in ds and "PatientAge" not in ds
    assert ds.PatientID == "ID1" and str(ds.PatientName) == "Doe^J", "valid values stay"
    text = json.dumps([w.as_dict() for w in withheld.values()])
    for value in ("1950-01-12", "heavy", "45 years", "AAAA", "25:61"):
        assert value not in text
    assert withhold_invalid(ds) == [], "a second pass finds nothing"


def test_valid_numbers_are_kept():
    # pydicom's validators refuse a decoded DSfloat or IS itself; the text it was read from is valid
    ds = _source(weight=(0x00101030, "DS", b"82.0"), size=(0x00101020, "DS", b"1.75"),
                 series=(0x00200011, "IS", b"3 "))
    assert withhold_invalid(ds) == []
    assert float(ds.PatientWeight) == 82.0 and float(ds.PatientSize) == 1.75


def test_a_sequence_with_an_invalid_item_value_is_left_out_and_valid_data_kept():
    ds = _source()
    item = Dataset()
    item._dict[Tag(0x00100020)] = RawDataElement(Tag(0x00100020), "LO", 70, b"X" * 70, 0, False, True)
    ds.OtherPatientIDsSequence = Sequence([item])
    (w,) = withhold_invalid(ds)
    assert w.keyword == "OtherPatientIDsSequence" and "PatientID (0010,0020)" in w.problem and w.action == "removed"
    assert "OtherPatientIDsSequence" not in ds


def test_withheld_changes_are_reported_once_over_a_series():
    series = [_source(birth=(0x00100030, "DA", b"1950-01-12")) for _ in range(5)]
    assert [w.keyword for w in withhold_invalid_all(series)] == ["PatientBirthDate"]
    assert all(not ds.PatientBirthDate for ds in series)


# -- routing by agreement -----------------------------------------------------------------------------
def _header(uid: str, modality: str | None = "CT", **kw) -> Dataset:
    ds = Dataset()
    ds.SOPInstanceUID, ds.SOPClassUID, ds.SeriesInstanceUID = uid, CT, "1.2.3"
    if modality is not None:
        ds.Modality = modality
    for k, v in kw.items():
        setattr(ds, k, v)
    return ds


def test_consensus_ignores_missing_values_and_unreadable_headers():
    headers = [_header("1.1", None, BodyPartExamined="HEAD")] + \
        [_header(f"1.{i}", "CT", BodyPartExamined="HEAD") for i in range(2, 10)] + [None]
    c = series_consensus(headers)
    assert c.problem == "" and c.unreadable == 1 and c.readable == 9
    assert c.header.Modality == "CT" and c.header.SOPInstanceUID == "1.2", "the first agreeing instance represents"


def test_consensus_takes_the_value_most_instances_carry():
    headers = [_header("1.1", BodyPartExamined="CHEST")] + [_header(f"1.{i}", BodyPartExamined="HEAD")
                                                           for i in range(2, 6)]
    assert series_consensus(headers).header.BodyPartExamined == "HEAD"
    per_instance = [_header(f"1.{i}", InstanceNumber=i) for i in range(1, 6)]
    assert series_consensus(per_instance).header.InstanceNumber == 1, "per-instance values stay the representative's"


def test_consensus_names_a_disagreement_on_modality_with_counts():
    headers = [_header(f"1.{i}", "CT") for i in range(3)] + [_header(f"2.{i}", "MR") for i in range(2)]
    c = series_consensus(headers)
    assert c.disagreements == ("Modality (CT ×3, MR ×2)",)
    assert "disagree on Modality (CT ×3, MR ×2)" in c.problem
    assert series_consensus([None, None]).problem == "none of its 2 instances has a readable header"


def test_series_level_values_missing_in_some_instances_are_filled_from_the_others():
    series = [_header(f"1.{i}", "CT") for i in range(4)] + [_header("1.9", None), _header("1.8", "")]
    (w,) = fill_series_level(series)
    assert (w.keyword, w.tag, w.action, w.problem) == ("Modality", "(0008,0060)", "filled from the series",
                                                       "missing or empty in 2 of 6 instances")
    assert {ds.Modality for ds in series} == {"CT"}
    assert fill_series_level(series) == [] and fill_series_level([_header("1", None)]) == []


def test_a_data_set_cut_inside_an_element_header_is_truncated():
    from io import BytesIO

    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset
    from pynetdicom.dsutils import decode

    from neuroread.node.malformed import truncated_element

    ds = Dataset()
    ds.PatientName, ds.Rows, ds.Columns, ds.BitsAllocated, ds.PixelData = "A", 4, 4, 16, b"\0" * 32
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, False
    write_dataset(fp, ds)
    data = fp.getvalue()
    whole = decode(BytesIO(data), False, True, False)
    assert truncated_element(whole, len(data)) is None
    cut = data[: len(data) - 32 - 6]  # 6 of PixelData's 12 header bytes left: pydicom drops them silently
    partial = decode(BytesIO(cut), False, True, False)
    assert "PixelData" not in partial
    assert truncated_element(partial, len(cut)) == "6 bytes after the last element (0028,0100): an element header cut short"
    assert truncated_element(partial) is None, "without the size only short values are seen"
