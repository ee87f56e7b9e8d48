"""The findings a model's objects carry agree with each other and with the model's result.

:func:`check_findings_agree` reads the objects back as a viewer would, with no help from the
encoder's code: the Measurement Report (TID 1500), the text report (Enhanced SR) and the KOS,
and checks, for every finding, decided class and lesion of the :class:`ModelResult`:

- the text report says present/absent (or the decided class) in its sentence and its CODE item,
  and the probability to three decimals in its sentence and its NUM;
- a finding with a place (:func:`neuroread.models.places.places`) is drawn as a closed polyline
  on the place's image in the Measurement Report, whose group says the same as the text report,
  and the text report's sentence names that image by its Instance Number; a finding without one
  is neither drawn nor said to be marked. There is a Measurement Report exactly when something
  has a place, and every group in it is tied to an image;
- the key images are the KOS's, in rank order, and the text report lists the same images;
- the text report carries the demo-weights warning exactly when the weights are demo weights.
"""
from __future__ import annotations

import re

import numpy as np
import pydicom

from neuroread.models import ModelResult
from neuroread.models.places import places
from neuroread.node.encode import DEMO_TEXT

MEASUREMENT_REPORT, TEXT_REPORT = "1.2.840.10008.5.1.4.1.1.88.34", "1.2.840.10008.5.1.4.1.1.88.22"
KOS = "1.2.840.10008.5.1.4.1.1.88.59"


def _items(owner):
    for item in owner.get("ContentSequence", []):
        yield item
        yield from _items(item)


def _meaning(item) -> str:
    return str(item.ConceptNameCodeSequence[0].CodeMeaning)


def _groups(sr) -> dict[str, list[pydicom.Dataset]]:
    """Measurement groups of a TID 1500 report by their tracking identifier's text (a lesion has
    two: its outline on one image and its volume)."""
    out = {}
    for group in _items(sr):
        if group.ValueType == "CONTAINER" and group.ConceptNameCodeSequence[0].CodeValue == "125007":
            ids = [str(i.TextValue) for i in group.ContentSequence if i.ValueType == "TEXT"
                   and i.ConceptNameCodeSequence[0].CodeValue == "112039"]
            assert len(ids) == 1, "a measurement group without exactly one tracking identifier"
            out.setdefault(ids[0], []).append(group)
    return out


def _nums(owner) -> dict[str, float]:
    return {_meaning(i): float(i.MeasuredValueSequence[0].NumericValue) for i in owner.ContentSequence
            if i.ValueType == "NUM"}


def _coded(owner, concept_meaning: str) -> str:
    """The code meaning of the CODE item named ``concept_meaning`` directly under ``owner``."""
    found = [str(i.ConceptCodeSequence[0].CodeMeaning) for i in owner.ContentSequence
             if i.ValueType == "CODE" and _meaning(i) == concept_meaning]
    assert len(found) == 1, f"{len(found)} CODE items {concept_meaning!r}"
    return found[0]


def _region(group) -> tuple[str, np.ndarray] | None:
    found = [i for i in group.ContentSequence if i.ValueType == "SCOORD"]
    if not found:
        return None
    (item,) = found
    assert item.GraphicType == "POLYLINE", item.GraphicType
    xy = np.asarray(item.GraphicData, float).reshape(-1, 2)
    assert len(xy) >= 4 and np.array_equal(xy[0], xy[-1]), "a region is a closed polygon"
    return str(item.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID), xy


def regions_of(sr) -> list[tuple[str, dict[str, float], str]]:
    """The groups of a Measurement Report drawn on an image, in document order: (tracking
    identifier, {"Probability of …": value}, referenced SOP Instance UID)."""
    out = []
    for name, found in _groups(sr).items():
        for group in found:
            region = _region(group)
            if region is not None:
                probabilities = {k: v for k, v in _nums(group).items() if k.startswith("Probability of")}
                out.append((name, probabilities, region[0]))
    return out


def _one(objects, sop_class: str) -> pydicom.Dataset:
    found = [ds for ds in objects if str(ds.SOPClassUID) == sop_class]
    assert len(found) == 1, f"{len(found)} objects of {sop_class}"
    return found[0]


def _direct_items(container):
    """The items a text viewer shows: each container's own items, recursively through containers."""
    for item in container.get("ContentSequence", []):
        yield item
        if item.ValueType == "CONTAINER":
            yield from _direct_items(item)


def check_findings_agree(result: ModelResult, objects: list[pydicom.Dataset],
                         sources: dict[str, list[pydicom.Dataset]]) -> dict[str, int]:
    """Assert the agreement described in the module docstring; ``sources[series uid]`` are the
    source instances slice by slice as the model read them. Returns counts (findings, places) for
    the caller to report or assert on."""
    text, ko = _one(objects, TEXT_REPORT), _one(objects, KOS)
    instance_number = {str(ds.SOPInstanceUID): int(ds.InstanceNumber) for s in sources.values() for ds in s}
    found = places(result, {uid: [str(ds.SOPInstanceUID) for ds in s] for uid, s in sources.items()})
    where = {p.target: p for p in found if p.source not in ("lesion", "table")}
    reports = [ds for ds in objects if str(ds.SOPClassUID) == MEASUREMENT_REPORT]
    # a Measurement Report exactly when something is tied to an image, holding nothing else
    assert len(reports) == (1 if found else 0), f"{len(reports)} Measurement Reports for {len(found)} places"
    groups = _groups(reports[0]) if reports else {}
    assert all(_region(g) is not None or any(i.ValueType == "SCOORD3D" for i in g.ContentSequence)
               for gs in groups.values() for g in gs), "a measurement group not tied to an image"
    (section,) = [i for i in text.ContentSequence if i.ValueType == "CONTAINER" and _meaning(i) == "Findings"]
    boxes = {_meaning(i): i for i in section.ContentSequence if i.ValueType == "CONTAINER"}
    for item in _direct_items(text):
        assert item.ValueType in ("CONTAINER", "TEXT", "CODE", "NUM", "UIDREF"), \
            f"the text report shows a {item.ValueType} item, which text viewers do not render"

    def sentence(box) -> str:
        (line,) = [str(i.TextValue) for i in box.ContentSequence if i.ValueType == "TEXT" and _meaning(i) == "Finding"]
        return line

    def agrees_on_place(target: str, name: str, line: str) -> object:
        """The group tracked as ``name`` is drawn on the target's place, or there is none."""
        place = where.get(target)
        if place is None:
            assert name not in groups and "marked on" not in line, f"{target}: drawn or marked without a place"
            return None
        assert len(groups.get(name, [])) == 1, f"{target}: {len(groups.get(name, []))} groups tracked as {name!r}"
        group = groups[name][0]
        region = _region(group)
        assert region is not None and region[0] == place.sop_instance_uid, f"{target}: not drawn on its place"
        assert np.allclose(region[1], place.outline)
        assert f"marked on image {instance_number[place.sop_instance_uid]} of series" in line, line
        return group

    for f in result.findings:
        box = boxes[f.code.meaning]
        state = "Present" if f.present else "Absent"
        concept = f"Probability of {f.code.meaning}"[:64]
        assert _coded(box, f.code.meaning) == state and _nums(box)[concept] == round(f.probability, 3)
        line = sentence(box)
        assert line.startswith(f"{f.code.meaning}: {state.lower()}, probability {f.probability:.3f}"), line
        group = agrees_on_place(f.label, f"finding {f.label}", line)
        if group is not None:
            assert _coded(group, f.code.meaning) == state and abs(_nums(group)[concept] - f.probability) < 1e-6
    for c in result.classifications:
        box = boxes[c.concept.meaning]
        decided = c.decided_class.code.meaning
        assert _coded(box, c.concept.meaning) == decided
        for p in c.probabilities:
            assert _nums(box)[f"Probability of {p.code.meaning}"[:64]] == round(p.probability, 3)
        line = sentence(box)
        assert line.startswith(f"{c.concept.meaning}: {decided}, probability {c.decided_class.probability:.3f}"), line
        group = agrees_on_place(c.decided, f"{c.outcome}: {c.decided}", line)
        if group is not None:
            assert _coded(group, c.concept.meaning) == decided
            for p in c.probabilities:
                assert abs(_nums(group)[f"Probability of {p.code.meaning}"[:64]] - p.probability) < 1e-6
    lines = [str(i.TextValue) for i in section.ContentSequence if i.ValueType == "TEXT" and _meaning(i) == "Finding"]
    for i, place in enumerate(p for p in found if p.source == "lesion"):
        drawn = [g for g in groups.get(place.tracking_id, []) if _region(g) is not None]
        assert len(drawn) == 1 and _region(drawn[0])[0] == place.sop_instance_uid, place.tracking_id
        if i < 20:
            assert any(line.startswith(f"{place.tracking_id}: ") and
                       f"marked on image {instance_number[place.sop_instance_uid]} " in line for line in lines)

    for place in (p for p in found if p.source == "table"):  # a table row with a place (an atlas region)
        (drawn,) = groups.get(place.tracking_id, [])
        region = _region(drawn)
        assert region is not None and region[0] == place.sop_instance_uid and np.allclose(region[1], place.outline)
        table = result.tables[place.table_row[0]]
        row = table.rows[place.table_row[1]]
        nums = _nums(drawn)
        assert all(abs(nums[col.concept.meaning] - value) <= 1e-6 * max(1.0, abs(value))
                   for col, value in zip(table.columns, row.values)), (place.tracking_id, nums)

    keys = [k.sop_instance_uid for k in sorted(result.key_slices, key=lambda k: k.rank)]
    assert [str(i.ReferencedSOPSequence[0].ReferencedSOPInstanceUID) for i in ko.ContentSequence
            if i.ValueType == "IMAGE"] == keys
    said = [str(i.TextValue) for i in section.ContentSequence if _meaning(i) == "Key Images"]
    if keys:
        assert [int(n) for n in re.findall(r"image (\d+) of series", said[0])] == [instance_number[k] for k in keys]
    else:
        assert said == []
    warned = [str(i.TextValue) for i in section.ContentSequence if _meaning(i) == "Comment" and DEMO_TEXT in i.TextValue]
    assert len(warned) == (1 if result.card.demo else 0)
    return {"findings": len(result.findings) + len(result.classifications), "places": len(found)}
