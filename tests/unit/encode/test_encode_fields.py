"""Every field of a ModelResult reaches a DICOM object: a result with every field filled, encoded,
and each value found again where it belongs (the SR for findings, classes, lesions, tables, slice
scores and the card; the KOS for key slices; the PMs for heatmaps; the SEG for masks).

A field of :class:`neuroread.models.ModelResult` without a checker here fails the first test: a
new field must be encoded and checked before it can be used.
"""
from __future__ import annotations

import dataclasses

import highdicom as hd
import numpy as np
import pytest

from neuroread.models import (
    UCUM_MM,
    UCUM_PROBABILITY,
    UCUM_RATIO,
    Classification,
    ClassLabel,
    Code,
    Column,
    Heatmap,
    InputSlot,
    KeySlice,
    Label,
    Lesion,
    Measurement,
    ModelResult,
    ModelSpec,
    MultiClass,
    MultiLabel,
    SliceScores,
    Table,
    TableRow,
)
from neuroread.models.places import places
from neuroread.node.encode import EncodeInfo, encode_result, probability_of, validate
from support.findings_check import check_findings_agree

SUBTYPE = MultiClass("subtype", Code("439401001", "SCT", "Diagnosis"), (
    ClassLabel("asvd", Code("ASVD", "99NEUROREAD", "Arteriolosclerosis")),
    ClassLabel("caa", Code("45639009", "SCT", "Cerebral amyloid angiopathy")),
    ClassLabel("cadasil", Code("390936003", "SCT", "CADASIL"))))
SPEC = ModelSpec("fields-test", "1.2.3", "every field of a result", (InputSlot("ct", "CT", min_slices=3),),
                 (MultiLabel((Label("bleed", Code("1386000", "SCT", "Intracranial hemorrhage"), 0.4),
                              Label("mass", Code("MASS", "99NEUROREAD", "Mass effect"), 0.6))), SUBTYPE),
                 explanations=("attention", "lrp"))
LOBAR = Code("LOBAR", "99NEUROREAD", "Lobar")
DIAMETER = Code("81827009", "SCT", "Diameter")
REGION_TABLE = Code("RELEVANCEBYREGION", "99NEUROREAD", "Relevance by region")
DENSITY = Column("density", Code("RELDENSITY", "99NEUROREAD", "Relevance density"), Code("/mm3", "UCUM", "per mm3"))
GAIN = Column("gain", Code("RELGAIN", "99NEUROREAD", "Relevance gain"), UCUM_RATIO)
INFO = EncodeInfo(device_name="neuroread test node")


@pytest.fixture(scope="module")
def full(ct_case):
    """A result of :data:`SPEC` with every field filled, on the first ct-hemorrhage phantom, and its objects."""
    vol, sources, tiny = ct_case
    uid = vol.series_instance_uid
    attention = np.zeros(vol.array.shape, np.float32)
    attention[2, 20:30, 30:40] = 0.9
    relevance = np.zeros(vol.array.shape, np.float32)
    relevance[3, 40:44, 40:44], relevance[3, 50:52, 50:52] = 2.5, -1.5
    mask = tiny.lesions[0].mask
    region = np.zeros(vol.array.shape, bool)  # the left hippocampus, say: largest on slice 4
    region[3, 60:66, 20:30] = True
    region[4, 58:68, 18:32] = True
    result = ModelResult(
        model=SPEC.name, version=SPEC.version, card=dataclasses.replace(tiny.card, thresholds={"bleed": 0.4}),
        findings=(SPEC_FINDING("bleed", 0.83), SPEC_FINDING("mass", 0.12)),
        classifications=(Classification.of(SUBTYPE, [0.15, 0.7, 0.15]),),
        key_slices=(KeySlice(uid, 2, vol.sop_instance_uids[2], 0.7, 1), KeySlice(uid, 5, vol.sop_instance_uids[5], 0.2, 2)),
        slice_scores=(SliceScores(uid, Code("SLICEATT", "99NEUROREAD", "Slice attention"), (1, 2, 5),
                                  (0.1, 0.7, 0.2), UCUM_RATIO),),
        heatmaps=(Heatmap(uid, "attention", attention, explains="bleed", value_range=(0.0, 1.0)),
                  Heatmap(uid, "lrp", relevance, explains="caa", value_range=(-3.0, 3.0), signed=True,
                          branch="fuse")),
        lesions=(Lesion(uid, "bleed", Code("1386000", "SCT", "Intracranial hemorrhage"), mask, 123.5, (1.5, -2.25, 30.0),
                        location=LOBAR, measurements=(Measurement(DIAMETER, 4.5, UCUM_MM),), probability=0.91,
                        instance_weight=0.37, tracking_id="microbleed 7"),),
        tables=(Table("regions", REGION_TABLE, (DENSITY, GAIN),
                      (TableRow(Code("Left hippocampus", "99NMM", "Left hippocampus"), (0.0042, 1.8), mask=region,
                                series_instance_uid=uid),
                       TableRow(Code("Right hippocampus", "99NMM", "Right hippocampus"), (0.0031, 1.4)))),),
    )
    result.check(SPEC, {"ct": vol})
    return result, sources, encode_result(result, SPEC, {"ct": sources}, node_info=INFO)


def SPEC_FINDING(label: str, p: float):
    from neuroread.models import Finding

    lb = SPEC.label(label)
    return Finding(lb.name, lb.code, p, lb.threshold)


def _items(owner):
    for item in owner.get("ContentSequence", []):
        yield item
        yield from _items(item)


def _sr(objects):
    return next(ds for ds in objects if ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.34")  # the Measurement Report


def _groups(sr):
    """The TID 1500 measurement groups (CONTAINER "Measurement Group") of the SR."""
    return [i for i in _items(sr) if i.ValueType == "CONTAINER" and i.ConceptNameCodeSequence[0].CodeValue == "125007"]


def _nums(owner) -> dict[str, tuple[float, str]]:
    return {i.ConceptNameCodeSequence[0].CodeMeaning: (float(i.MeasuredValueSequence[0].NumericValue),
                                                       i.MeasuredValueSequence[0].MeasurementUnitsCodeSequence[0].CodeValue)
            for i in _items(owner) if i.ValueType == "NUM"}


def _codes(owner) -> list[tuple[str, str]]:
    return [(i.ConceptNameCodeSequence[0].CodeMeaning, i.ConceptCodeSequence[0].CodeMeaning)
            for i in _items(owner) if i.ValueType == "CODE"]


def _group_with(sr, text: str):
    found = [g for g in _groups(sr) if any(i.ValueType == "TEXT" and text in i.TextValue for i in _items(g))]
    assert found, f"no measurement group tracked as {text!r}"
    return found


def _outline(group):
    """(referenced SOP Instance UID, (n, 2) vertices) of a group's image region, or None."""
    found = [i for i in _items(group) if i.ValueType == "SCOORD"]
    if not found:
        return None
    (item,) = found
    assert item.GraphicType == "POLYLINE"
    xy = np.asarray(item.GraphicData, float).reshape(-1, 2)
    assert np.array_equal(xy[0], xy[-1]), "the outline is closed"
    return item.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID, xy


def _check_place(result, sources, group, target):
    """A group's region is its target's place (None when it has none)."""
    where = {p.target: p for p in places(result, {sources[0].SeriesInstanceUID: [ds.SOPInstanceUID for ds in sources]})
             if p.source != "lesion"}
    outline = _outline(group)
    if target not in where:
        assert outline is None
        return
    place = where[target]
    assert outline is not None and outline[0] == sources[place.slice_index].SOPInstanceUID
    assert np.allclose(outline[1], place.outline)
    heat = next(h for h in result.heatmaps if h.explains == target).array[place.slice_index]
    peak_row, peak_col = np.unravel_index(int(np.argmax(heat)), heat.shape)
    xy = outline[1]
    assert xy[:, 0].min() <= peak_col + 0.5 <= xy[:, 0].max() and xy[:, 1].min() <= peak_row + 0.5 <= xy[:, 1].max()
    assert _nums(group)["Area"][1] == "mm2"


def _text(objects):
    return next(ds for ds in objects if ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.22")  # the text report


def _box(objects, meaning: str):
    """The text report's container named ``meaning`` (a finding, an outcome, a score, a table)."""
    found = [i for i in _items(_text(objects)) if i.ValueType == "CONTAINER"
             and i.ConceptNameCodeSequence[0].CodeMeaning == meaning]
    assert len(found) == 1, f"{len(found)} containers {meaning!r} in the text report"
    return found[0]


def check_findings(result, sources, objects):
    assert [f.label for f in result.findings if f.present] == ["bleed"]  # bleed's attention gives it a place
    for f in result.findings:
        box = _box(objects, f.code.meaning)
        assert _nums(box)[probability_of(f.code).meaning] == (round(f.probability, 3), UCUM_PROBABILITY.value)
        assert (f.code.meaning, "Present" if f.present else "Absent") in _codes(box)
        drawn = [g for g in _groups(_sr(objects)) if any(i.ValueType == "TEXT" and i.TextValue == f"finding {f.label}"
                                                         for i in _items(g))]
        if not f.present:
            assert drawn == []  # an absent finding has no place: nothing drawn
            continue
        (group,) = drawn
        _check_place(result, sources, group, f.label)
        nums = _nums(group)
        assert nums[probability_of(f.code).meaning] == (pytest.approx(f.probability), UCUM_PROBABILITY.value)
        assert nums["Decision threshold"][0] == pytest.approx(f.threshold)
        assert (f.code.meaning, "Present") in _codes(group)


def check_classifications(result, sources, objects):
    for c in result.classifications:
        box = _box(objects, c.concept.meaning)
        for p in c.probabilities:
            assert _nums(box)[probability_of(p.code).meaning][0] == round(p.probability, 3)
        assert (c.concept.meaning, c.decided_class.code.meaning) in _codes(box)
        (group,) = _group_with(_sr(objects), f"{c.outcome}: {c.decided}")
        _check_place(result, sources, group, c.decided)  # caa's relevance, off the key slices: on slice 3
        nums = _nums(group)
        for p in c.probabilities:
            assert nums[probability_of(p.code).meaning][0] == pytest.approx(p.probability)
        assert next(iter(nums)) == probability_of(c.decided_class.code).meaning  # a region's label starts with it
        assert (c.concept.meaning, c.decided_class.code.meaning) in _codes(group)


def check_key_slices(result, sources, objects):
    ko = next(ds for ds in objects if ds.Modality == "KO")
    refs = [i.ReferencedSOPSequence[0].ReferencedSOPInstanceUID for i in ko.ContentSequence if i.ValueType == "IMAGE"]
    assert refs == [k.sop_instance_uid for k in sorted(result.key_slices, key=lambda k: k.rank)]
    said = next(i.TextValue for i in _items(_text(objects)) if i.ValueType == "TEXT"
                and i.ConceptNameCodeSequence[0].CodeMeaning == "Key Images")
    numbers = {ds.SOPInstanceUID: ds.InstanceNumber for ds in sources}
    assert said == "; ".join(f"image {numbers[r]} of series 1" for r in refs) + "."


def check_slice_scores(result, sources, objects):
    for s in result.slice_scores:
        box = _box(objects, s.concept.meaning)
        nums = [i for i in box.ContentSequence if i.ValueType == "NUM"]
        assert [float(i.MeasuredValueSequence[0].NumericValue) for i in nums] == pytest.approx(list(s.scores))
        assert {i.MeasuredValueSequence[0].MeasurementUnitsCodeSequence[0].CodeValue for i in nums} == {s.unit.value}
        images = [i.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID for i in nums]
        assert images == [sources[k].SOPInstanceUID for k in s.slice_indices]
        line = next(i.TextValue for i in box.ContentSequence if i.ValueType == "TEXT")
        assert line.startswith(f"{s.concept.meaning} by image: image {sources[s.slice_indices[0]].InstanceNumber}: ")


def check_heatmaps(result, sources, objects):
    pms = sorted((ds for ds in objects if ds.Modality == "OT" and "ParametricMap" in ds.SOPClassUID.name.replace(" ", "")),
                 key=lambda ds: int(ds.InstanceNumber))
    assert len(pms) == len(result.heatmaps)
    for heat, pm in zip(result.heatmaps, pms):
        mapping = pm.SharedFunctionalGroupsSequence[0].RealWorldValueMappingSequence[0]
        low, high = heat.value_range
        assert (float(mapping.DoubleFloatRealWorldValueFirstValueMapped),
                float(mapping.DoubleFloatRealWorldValueLastValueMapped)) == (low, high)
        assert mapping.LUTLabel == heat.kind
        assert heat.explains in mapping.LUTExplanation and heat.branch in mapping.LUTExplanation
        assert ("signed" in mapping.LUTExplanation) == heat.signed
        voi = pm.SharedFunctionalGroupsSequence[0].FrameVOILUTSequence[0]
        assert float(voi.WindowCenter) == (0.0 if heat.signed else (low + high) / 2)
        slice_of = {ds.SOPInstanceUID: k for k, ds in enumerate(sources)}
        for frame, item in zip(pm.pixel_array, pm.PerFrameFunctionalGroupsSequence):
            source = item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
            assert np.array_equal(frame, heat.array[slice_of[source]])


def check_lesions(result, sources, objects):
    sr = _sr(objects)
    seg = next(ds for ds in objects if ds.Modality == "SEG")
    for i, les in enumerate(result.lesions):
        region, group = _group_with(sr, les.tracking_id or f"lesion {i + 1}")  # its outline, then its volume
        outline = [i for i in _items(region) if i.ValueType == "SCOORD"]
        assert len(outline) == 1 and outline[0].GraphicType == "POLYLINE"
        largest = int(np.argmax(les.mask.sum(axis=(1, 2))))
        assert outline[0].ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == \
            sources[largest].SOPInstanceUID
        xy = np.asarray(outline[0].GraphicData, float).reshape(-1, 2)
        rows, cols = np.nonzero(les.mask[largest])
        assert cols.min() <= xy[:, 0].min() and xy[:, 0].max() <= cols.max() + 1
        assert rows.min() <= xy[:, 1].min() and xy[:, 1].max() <= rows.max() + 1
        assert _nums(region)["Volume"][0] == pytest.approx(les.volume_mm3)
        nums = _nums(group)
        assert nums["Volume"] == (pytest.approx(les.volume_mm3), "mm3")
        assert nums["Detection probability"][0] == pytest.approx(les.probability)
        assert nums["Multiple-instance attention weight"][0] == pytest.approx(les.instance_weight)
        for m in les.measurements:
            assert nums[m.concept.meaning] == (pytest.approx(m.value), m.unit.value)
        assert ("Finding Site", les.location.meaning) in _codes(group)
        centre = [i for i in _items(group) if i.ValueType == "SCOORD3D"]
        assert len(centre) == 1 and centre[0].GraphicType == "POINT"
        assert np.allclose([float(v) for v in centre[0].GraphicData], les.centroid_lps)
        assert centre[0].ReferencedFrameOfReferenceUID == sources[0].FrameOfReferenceUID
        segment = next(s for s in seg.SegmentSequence if s.TrackingID == (les.tracking_id or f"lesion {i + 1} {les.label}"))
        refs = [i.ReferencedSOPSequence[0] for i in _items(group) if i.ValueType == "IMAGE"
                and i.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == seg.SOPInstanceUID]
        assert refs and refs[0].ReferencedSegmentNumber == segment.SegmentNumber


def check_tables(result, sources, objects):
    sr = _sr(objects)
    for t in result.tables:
        for row in t.rows:  # a row with a place is drawn: its region on the slice where it is largest
            drawn = [g for g in _groups(sr) if any(i.ValueType == "TEXT" and i.TextValue == f"{t.name} {row.code.meaning}"
                                                   for i in _items(g))]
            if row.mask is None:
                assert drawn == []
                continue
            (group,) = drawn
            uid, xy = _outline(group)
            assert uid == sources[4].SOPInstanceUID
            assert xy[:, 0].min() == 18 and xy[:, 0].max() == 32 and xy[:, 1].min() == 58 and xy[:, 1].max() == 68
            nums = _nums(group)
            for col, value in zip(t.columns, row.values):
                assert nums[col.concept.meaning] == (pytest.approx(value), col.unit.value)
            assert ("Finding Site", row.code.meaning) in _codes(group) and ("Finding", t.concept.meaning) in _codes(group)

    for t in result.tables:
        table = _box(objects, t.concept.meaning)
        rows = {i.ConceptNameCodeSequence[0].CodeMeaning: i for i in table.ContentSequence if i.ValueType == "CONTAINER"}
        assert list(rows) == [row.code.meaning for row in t.rows]
        for row in t.rows:
            nums = _nums(rows[row.code.meaning])
            for col, value in zip(t.columns, row.values):
                assert nums[col.concept.meaning] == (pytest.approx(value), col.unit.value)


def check_card(result, sources, objects):
    texts = [i.TextValue for i in _items(_sr(objects)) if i.ValueType == "TEXT"]
    assert f"weights_sha256={result.card.weights_sha256}" in texts
    assert "threshold_bleed=0.4" in texts and "threshold_mass=0.6" in texts
    assert any("DEMO WEIGHTS" in t for t in texts) == result.card.demo


def check_identity(result, sources, objects):
    texts = [i.TextValue for i in _items(_sr(objects)) if i.ValueType == "TEXT"]
    assert result.model in texts and result.version in texts  # TID 4019 algorithm name and version


CHECKS = {
    "findings": check_findings, "classifications": check_classifications, "key_slices": check_key_slices,
    "slice_scores": check_slice_scores, "heatmaps": check_heatmaps, "lesions": check_lesions, "tables": check_tables,
    "card": check_card, "model": check_identity, "version": check_identity,
}


def test_every_field_of_a_result_has_a_check():
    fields = [f.name for f in dataclasses.fields(ModelResult)]
    missing = [f for f in fields if f not in CHECKS]
    assert not missing, f"ModelResult fields {missing} have no encoding check: encode them and check them here"


@pytest.mark.parametrize("field", list(CHECKS))
def test_the_field_reaches_its_object(full, field):
    result, sources, objects = full
    CHECKS[field](result, sources, objects)


def test_the_objects_of_a_full_result_pass_dciodvfy(full, dciodvfy):
    for ds in full[2]:
        assert validate(ds, dciodvfy=dciodvfy) == [], f"{ds.Modality} {ds.SOPClassUID.name}"


def test_the_sr_the_text_report_and_the_regions_agree(full):
    """The full result's findings read back from the Measurement Report, the text report and the
    KOS agree with each other and the result (the check every model's end-to-end test runs)."""
    result, sources, objects = full
    counts = check_findings_agree(result, objects, {sources[0].SeriesInstanceUID: sources})
    assert counts == {"findings": 3, "places": 4}  # bleed's attention, caa's relevance, the lesion, a region


def test_the_text_report_holds_only_what_text_viewers_show_and_passes_dciodvfy(full, dciodvfy):
    result, sources, objects = full
    (text,) = [ds for ds in objects if ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.22"]
    assert text.ConceptNameCodeSequence[0].CodeValue == "18748-4"
    assert text.ConceptNameCodeSequence[0].CodingSchemeDesignator == "LN"
    assert text.SeriesDescription == "fields-test text report"
    assert validate(text, dciodvfy=dciodvfy) == []
    read = hd.sr.EnhancedSR.from_dataset(text)
    assert read.SOPInstanceUID == text.SOPInstanceUID
    sentences = [str(i.TextValue) for i in _items(text) if i.ValueType == "TEXT"]
    assert "Intracranial hemorrhage: present, probability 0.830 (threshold 0.40); marked on image 3 of series 1 " \
           "(HEAD STD 5mm)." in sentences
    assert "Mass effect: absent, probability 0.120 (threshold 0.60)." in sentences
