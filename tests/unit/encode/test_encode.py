"""Encode: a tiny model's result on a phantom CT becomes valid, deterministic DICOM objects."""
from __future__ import annotations

import copy
import dataclasses
import io

import highdicom as hd
import numpy as np
import pydicom
import pytest

from neuroread.models import UCUM_RATIO, Code, Column, Table, TableRow
from neuroread.node.encode import DEMO_TEXT, EncodeInfo, derive_uid, encode_result, validate
from support.tiny_model import SPEC

SC = "1.2.840.10008.5.1.4.1.1.7"
SR = "1.2.840.10008.5.1.4.1.1.88.34"
KO = "1.2.840.10008.5.1.4.1.1.88.59"
SEG = "1.2.840.10008.5.1.4.1.1.66.4"
PM = "1.2.840.10008.5.1.4.1.1.30"
TEXT_SR = "1.2.840.10008.5.1.4.1.1.88.22"
INFO = EncodeInfo(manufacturer="neuroread", device_name="neuroread test node", software_version="0.1.0")


@pytest.fixture(scope="module")
def case(ct_case):
    """(result, sources sorted as the volume) for the first ct-hemorrhage phantom.

    The tiny model's result (with the second lesion from ``ct_case``) gets a table too, so
    that segment numbering and region groups are exercised.
    """
    vol, sources, result = ct_case
    columns = (Column("relevance", Code("REL", "99NEUROREAD", "relevance"), UCUM_RATIO),
               Column("voxels", Code("VOX", "99NEUROREAD", "voxels"), Code("{count}", "UCUM", "count")))
    table = Table("relevance per region", Code("RELREGION", "99NEUROREAD", "Relevance per region"), columns,
                  (TableRow(Code("F", "99NMM", "frontal"), (0.4, 120)), TableRow(Code("O", "99NMM", "occipital"), (0.1, 80))))
    result = dataclasses.replace(result, tables=(table,))
    result.check(SPEC, {"ct": vol})
    return result, sources


@pytest.fixture(scope="module")
def objects(case):
    result, sources = case
    return encode_result(result, SPEC, {"ct": sources}, node_info=INFO)


def _by_class(objects, uid):
    return [ds for ds in objects if ds.SOPClassUID == uid]


def _items(seq_owner):
    for item in seq_owner.get("ContentSequence", []):
        yield item
        yield from _items(item)


def _bytes(ds) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def test_every_kind_passes_dciodvfy(objects, dciodvfy):
    kinds = {ds.SOPClassUID for ds in objects}
    assert kinds == {SR, KO, SEG, PM, SC, TEXT_SR}
    for ds in objects:
        assert validate(ds, dciodvfy=dciodvfy) == [], ds.SOPClassUID.name


def test_highdicom_reads_every_object_back(objects):
    """Each object, written to bytes and read back, is what highdicom's class for it accepts (the
    Secondary Captures as images, highdicom has no SC reader class)."""
    readers = {SR: hd.sr.Comprehensive3DSR, TEXT_SR: hd.sr.EnhancedSR, KO: hd.ko.KeyObjectSelectionDocument,
               SEG: hd.seg.Segmentation, PM: hd.pm.ParametricMap}
    for ds in objects:
        again = pydicom.dcmread(io.BytesIO(_bytes(ds)))
        if ds.SOPClassUID == SC:
            image = hd.imread(io.BytesIO(_bytes(ds)))
            assert image.get_frame(1).shape == (ds.Rows, ds.Columns, 3)
            continue
        read = readers[ds.SOPClassUID].from_dataset(again)
        assert read.SOPInstanceUID == ds.SOPInstanceUID, ds.SOPClassUID.name


def test_validate_reports_errors_of_a_broken_object(objects, dciodvfy):
    broken = copy.deepcopy(_by_class(objects, KO)[0])
    del broken.ContentSequence
    del broken.SeriesInstanceUID
    errors = validate(broken, dciodvfy=dciodvfy)
    assert errors and all(e.startswith(("Error", "Abort")) for e in errors)


def test_objects_join_the_source_study_one_series_per_kind(case, objects):
    _, sources = case
    src = sources[0]
    series = {}
    for ds in objects:
        assert ds.StudyInstanceUID == src.StudyInstanceUID
        assert ds.PatientID == src.PatientID and ds.PatientName == src.PatientName
        assert ds.AccessionNumber == src.AccessionNumber
        series.setdefault(ds.SOPClassUID, set()).add((ds.SeriesInstanceUID, ds.SeriesNumber))
    assert all(len(v) == 1 for v in series.values())
    assert len({next(iter(v))[0] for v in series.values()}) == 6
    assert src.SeriesInstanceUID not in {next(iter(v))[0] for v in series.values()}
    assert len({ds.SOPInstanceUID for ds in objects}) == len(objects)


def test_objects_reference_the_right_source_instances(case, objects):
    result, sources = case
    source_uids = [ds.SOPInstanceUID for ds in sources]
    (sr,) = _by_class(objects, SR)
    evidence = {ref.ReferencedSOPInstanceUID for s in sr.CurrentRequestedProcedureEvidenceSequence
                for ser in s.ReferencedSeriesSequence for ref in ser.ReferencedSOPSequence}
    assert set(source_uids) <= evidence
    assert set(_by_class(objects, SEG)[0].SOPInstanceUID for _ in [0]) <= evidence
    sr_refs = {i.ReferencedSOPSequence[0].ReferencedSOPInstanceUID for i in _items(sr) if i.ValueType == "IMAGE"}
    assert {k.sop_instance_uid for k in result.key_slices} <= sr_refs

    (ko,) = _by_class(objects, KO)
    ko_refs = [i.ReferencedSOPSequence[0].ReferencedSOPInstanceUID for i in ko.ContentSequence if i.ValueType == "IMAGE"]
    assert ko_refs == [k.sop_instance_uid for k in sorted(result.key_slices, key=lambda k: k.rank)]
    assert ko.ConceptNameCodeSequence[0].CodeValue == "113000"

    (seg,) = _by_class(objects, SEG)
    assert len(seg.SegmentSequence) == len(result.lesions)
    covered = {source_uids[k] for les in result.lesions for k in np.flatnonzero(les.mask.any(axis=(1, 2)))}
    frame_refs = {f.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
                  for f in seg.PerFrameFunctionalGroupsSequence}
    assert frame_refs == covered
    assert [s.SegmentedPropertyTypeCodeSequence[0].CodeValue for s in seg.SegmentSequence] == \
        [les.code.value for les in result.lesions]

    (pm,) = _by_class(objects, PM)
    pm_refs = [f.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
               for f in pm.PerFrameFunctionalGroupsSequence]
    assert sorted(pm_refs) == sorted(source_uids)
    assert pm.FloatPixelData and pm.BitsAllocated == 32

    overlays = [ds for ds in _by_class(objects, SC) if "SourceImageSequence" in ds]
    assert [ds.SourceImageSequence[0].ReferencedSOPInstanceUID for ds in overlays] == ko_refs


def test_maps_and_segmentations_are_laid_out_as_viewers_read_them(case, objects):
    """OHIF's PMAP and SEG viewports fuse a map or a mask over its source series by the top-level
    Referenced Series Sequence and each frame's derivation reference and position: the PM has one
    frame per source slice, in slice order, on the source geometry; the SEG the same for
    each slice a lesion touches (empty frames are left out, as the standard allows)."""
    _, sources = case
    position = {str(ds.SOPInstanceUID): [float(v) for v in ds.ImagePositionPatient] for ds in sources}
    src = sources[0]
    normal = np.cross(*np.reshape(np.asarray(src.ImageOrientationPatient, float), (2, 3)))
    for ds in _by_class(objects, PM) + _by_class(objects, SEG):
        name = ds.SOPClassUID.name
        (series,) = ds.ReferencedSeriesSequence
        assert series.SeriesInstanceUID == src.SeriesInstanceUID, name
        assert {str(r.ReferencedSOPInstanceUID) for r in series.ReferencedInstanceSequence} <= set(position), name
        assert (ds.Rows, ds.Columns) == (src.Rows, src.Columns), name
        assert ds.FrameOfReferenceUID == src.FrameOfReferenceUID, name
        shared = ds.SharedFunctionalGroupsSequence[0]
        assert np.allclose(shared.PixelMeasuresSequence[0].PixelSpacing, src.PixelSpacing), name
        assert np.allclose(shared.PlaneOrientationSequence[0].ImageOrientationPatient, src.ImageOrientationPatient), name
        frames = ds.PerFrameFunctionalGroupsSequence
        assert len(frames) == int(ds.NumberOfFrames), name
        refs = [str(f.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID) for f in frames]
        for f, ref in zip(frames, refs, strict=True):  # each frame lies where its source slice lies
            assert np.allclose(f.PlanePositionSequence[0].ImagePositionPatient, position[ref]), name
        runs: dict[int, list[float]] = {}  # a SEG's frames come segment by segment
        for f in frames:
            segment = int(f.SegmentIdentificationSequence[0].ReferencedSegmentNumber) if "SegmentIdentificationSequence" in f else 0
            runs.setdefault(segment, []).append(float(np.dot(f.PlanePositionSequence[0].ImagePositionPatient, normal)))
        for along in runs.values():
            assert along == sorted(along) or along == sorted(along, reverse=True), f"{name}: frames out of slice order"
        if ds.SOPClassUID == PM:
            assert sorted(refs) == sorted(position) and len(refs) == len(set(refs)), "one PM frame per source slice"


def test_reports_carry_findings_lesion_volumes_tables_and_algorithm(case, objects):
    """The Measurement Report: the finding drawn where it is, the lesions; the text report: the
    table (not tied to an image)."""
    result, _ = case
    (sr,) = _by_class(objects, SR)
    (text,) = _by_class(objects, TEXT_SR)
    items = list(_items(sr))
    nums = [(i.ConceptNameCodeSequence[0].CodeMeaning, float(i.MeasuredValueSequence[0].NumericValue),
             i.MeasuredValueSequence[0].MeasurementUnitsCodeSequence[0].CodeValue)
            for i in items if i.ValueType == "NUM"]
    for les in result.lesions:
        assert any(m == "Volume" and u == "mm3" and v == pytest.approx(les.volume_mm3, rel=1e-6) for m, v, u in nums)
    finding = result.findings[0]
    assert any(m == "Probability of Clinical finding" and u == "{probability}"
               and v == pytest.approx(finding.probability, rel=1e-6) for m, v, u in nums)
    assert not any(m == "relevance" for m, _, _ in nums)
    assert sum(i.ConceptNameCodeSequence[0].CodeMeaning == "relevance" for i in _items(text) if i.ValueType == "NUM") == 2
    codes = [(i.ConceptNameCodeSequence[0].CodeValue, i.ConceptCodeSequence[0].CodeMeaning)
             for i in items if i.ValueType == "CODE"]
    assert (finding.code.value, "Present" if finding.present else "Absent") in codes
    texts = [i.TextValue for i in items if i.ValueType == "TEXT"]
    assert "tiny-test" in texts and "0.1.0" in texts  # TID 4019 algorithm name and version
    refs = [i for i in items if i.ValueType == "IMAGE" and i.ReferencedSOPSequence[0].ReferencedSOPClassUID == SEG]
    assert sorted(i.ReferencedSOPSequence[0].ReferencedSegmentNumber for i in refs) == [1, 2]
    algorithm = [(e.ManufacturerModelName, e.SoftwareVersions) for e in sr.ContributingEquipmentSequence
                 if e.PurposeOfReferenceCodeSequence[0].CodeValue == "109102"]  # Processing Equipment
    assert ("tiny-test", "0.1.0") in algorithm


def test_demo_weights_are_stated_in_the_sr_and_burned_into_the_pictures(case, objects):
    result, sources = case
    (sr,) = _by_class(objects, SR)
    texts = [i.TextValue for i in _items(sr) if i.ValueType == "TEXT"]
    assert any(DEMO_TEXT in t and "synthetic" in t for t in texts)
    scs = _by_class(objects, SC)
    assert all(ds.BurnedInAnnotation == "YES" for ds in scs)

    real = dataclasses.replace(result, card=dataclasses.replace(result.card, demo=False))
    again = encode_result(real, SPEC, {"ct": sources}, node_info=INFO)
    (sr2,) = _by_class(again, SR)
    assert not any(DEMO_TEXT in i.TextValue for i in _items(sr2) if i.ValueType == "TEXT")
    pages = [ds.pixel_array for ds in scs], [ds.pixel_array for ds in _by_class(again, SC)]
    for demo_pixels, plain_pixels in zip(*pages):
        assert not np.array_equal(demo_pixels, plain_pixels)


def test_encoding_twice_gives_identical_objects(case, objects):
    result, sources = case
    again = encode_result(result, SPEC, {"ct": list(sources)}, node_info=INFO)
    assert [ds.SOPInstanceUID for ds in again] == [ds.SOPInstanceUID for ds in objects]
    assert [_bytes(ds) for ds in again] == [_bytes(ds) for ds in objects]  # no wall-clock dates
    src = sources[0]
    written = [pydicom.dcmread(io.BytesIO(_bytes(ds))) for ds in objects]
    assert {(ds.InstanceCreationDate, ds.InstanceCreationTime) for ds in written} == {(src.ContentDate, src.ContentTime)}
    assert {(ds.SeriesDate, ds.SeriesTime) for ds in written} == {(src.ContentDate, src.ContentTime)}  # viewers sort by it


def test_uids_depend_on_every_input_and_fit_dicom():
    base = derive_uid(["1.2.3", "1.2.4"], "m", "1.0.0", "sr", "instance", 0, "abc|a=0.5")
    assert base == derive_uid(["1.2.4", "1.2.3"], "m", "1.0.0", "sr", "instance", 0, "abc|a=0.5")
    others = {derive_uid(["1.2.3"], "m", "1.0.0", "sr", "instance", 0, "abc|a=0.5"),
              derive_uid(["1.2.3", "1.2.4"], "m", "1.0.1", "sr", "instance", 0, "abc|a=0.5"),
              derive_uid(["1.2.3", "1.2.4"], "m", "1.0.0", "ko", "instance", 0, "abc|a=0.5"),
              derive_uid(["1.2.3", "1.2.4"], "m", "1.0.0", "sr", "instance", 1, "abc|a=0.5"),
              derive_uid(["1.2.3", "1.2.4"], "m", "1.0.0", "sr", "instance", 0, "abd|a=0.5"),  # other weights
              derive_uid(["1.2.3", "1.2.4"], "m", "1.0.0", "sr", "instance", 0, "abc|a=0.4")}  # other thresholds
    assert base not in others and len(others) == 6
    assert base.startswith("2.25.") and len(base) <= 64
    with pytest.raises(ValueError, match="invalid UID"):
        derive_uid(["../x"], "m", "1.0.0", "sr", "instance")


def test_new_weights_or_thresholds_make_new_objects_and_the_same_ones_the_same(case, objects):
    result, sources = case
    uids = [ds.SOPInstanceUID for ds in objects]
    other_weights = dataclasses.replace(result, card=dataclasses.replace(result.card, weights_sha256="f" * 64))
    moved = SPEC.with_thresholds({"finding": 0.3})
    for res, spec in ((other_weights, SPEC), (result, moved)):
        again = [ds.SOPInstanceUID for ds in encode_result(res, spec, {"ct": sources}, node_info=INFO)]
        assert not set(again) & set(uids)


def test_encode_refuses_sources_that_do_not_fit(case):
    result, sources = case
    with pytest.raises(ValueError, match="sorted as the model's volume"):
        encode_result(result, SPEC, {"ct": sources[::-1]}, node_info=INFO)
    with pytest.raises(ValueError, match="no input slot 't1'"):
        encode_result(result, SPEC, {"t1": sources}, node_info=INFO)
    with pytest.raises(ValueError, match="is not its series' grid"):
        h = result.heatmaps[0]
        bad = dataclasses.replace(result, heatmaps=(dataclasses.replace(h, array=h.array[:, :-1]),))
        encode_result(bad, SPEC, {"ct": sources}, node_info=INFO)
    with pytest.raises(ValueError, match="EncodeInfo.manufacturer"):
        EncodeInfo(manufacturer="")
    with pytest.raises(ValueError, match="EncodeInfo.device_name"):
        EncodeInfo(device_name="x" * 65)
