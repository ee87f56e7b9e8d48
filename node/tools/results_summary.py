"""What came back: a short summary of the result objects in a folder (``neuroread results DIR``).

A PACS or a ``storescp`` folder holds the node's results as plain DICOM files. This reads them
back the way a viewer would: files grouped by study, counted by kind (SR for the Measurement
Report, report for the text report, KOS, SC, PM, SEG), and the findings read from each text
report, which codes every finding (the Measurement Report holds only those with a place): either
Present/Absent with the finding's probability (multi-label outcomes) or the decided class with
its probability (multi-class). Each table of a text report (e.g. cmb-svd's microbleeds per
location) is printed on one line, and each Segmentation on one line with its number of segments
(one per lesion) by segmented property type. Demo weights are flagged as the results say. No
patient names are printed: studies are named by their UIDs.
"""
from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import highdicom as hd
import pydicom
from pydicom import uid
from pydicom.errors import InvalidDicomError
from pydicom.sr.codedict import codes

from neuroread.models import Code
from neuroread.node.encode import DEMO_TEXT, probability_of

logger = logging.getLogger(__name__)
FINDINGS = "121070"  # DCM Findings: the text report's section
HIGHDICOM = str(hd.ContributingEquipment.for_highdicom().ManufacturerModelName)

KIND_NAMES = {
    uid.Comprehensive3DSRStorage: "SR",
    uid.ComprehensiveSRStorage: "SR",
    uid.EnhancedSRStorage: "report",
    uid.KeyObjectSelectionDocumentStorage: "KOS",
    uid.SecondaryCaptureImageStorage: "SC",
    uid.ParametricMapStorage: "PM",
    uid.SegmentationStorage: "SEG",
}


@dataclass(frozen=True)
class Finding:
    meaning: str
    present: bool | None
    probability: float | None


@dataclass(frozen=True)
class ReportTableRow:
    """A row of a text report's table: its meaning and (column meaning, value, UCUM unit) per column."""

    meaning: str
    values: tuple[tuple[str, float, str], ...]


@dataclass(frozen=True)
class ReportTable:
    """A table of a text report: a container of its Findings section named by the table's concept,
    holding one container per row (named by the row's code) of NUMs (one per column)."""

    meaning: str
    rows: tuple[ReportTableRow, ...]


@dataclass(frozen=True)
class SegmentationSummary:
    """A SEG: its number of segments (one per lesion) by segmented property type, in segment order."""

    segments: int
    types: tuple[tuple[str, int], ...]  # (property type meaning, segments)


@dataclass
class StudyResults:
    """The result objects of one study found in a folder."""

    study_uid: str
    models: set[str] = field(default_factory=set)
    kinds: Counter = field(default_factory=Counter)
    findings: list[tuple[str, Finding]] = field(default_factory=list)  # (model, finding)
    tables: list[tuple[str, ReportTable]] = field(default_factory=list)  # (model, table)
    segmentations: list[tuple[str, SegmentationSummary]] = field(default_factory=list)  # (model, SEG)
    demo: bool = False
    files: list[Path] = field(default_factory=list)


def _meaning(item: pydicom.Dataset) -> str:
    return str(item.ConceptNameCodeSequence[0].CodeMeaning)


def _probability_of(item: pydicom.Dataset) -> str:
    """The meaning of the NUM that holds the probability of the finding ``item`` names (a
    container's concept name) or of the class it holds (a CODE item's value)."""
    c = (item.ConceptCodeSequence if item.ValueType == "CODE" else item.ConceptNameCodeSequence)[0]
    return probability_of(Code(str(c.CodeValue), str(c.CodingSchemeDesignator), str(c.CodeMeaning))).meaning


def _findings_boxes(ds: pydicom.Dataset):
    """The containers directly under the text report's Findings section."""
    for section in ds.get("ContentSequence", []):
        if section.ValueType != "CONTAINER" or section.ConceptNameCodeSequence[0].CodeValue != FINDINGS:
            continue
        yield from (box for box in section.get("ContentSequence", []) if box.ValueType == "CONTAINER")


def _num(item: pydicom.Dataset) -> tuple[str, float, str]:
    value = item.MeasuredValueSequence[0]
    unit = value.MeasurementUnitsCodeSequence[0]  # a code longer than 16 characters is a LongCodeValue
    return _meaning(item), float(value.NumericValue), str(unit.get("CodeValue") or unit.get("LongCodeValue", ""))


def _tables(ds: pydicom.Dataset) -> list[ReportTable]:
    """The tables of a text report: the containers of its Findings section whose items are all
    containers (the rows) holding only NUMs (the columns). Findings, classifications and slice
    scores hold TEXT, CODE or NUM items directly, so they are not tables."""
    out = []
    for box in _findings_boxes(ds):
        rows = list(box.get("ContentSequence", []))  # none: a table without rows
        if any(r.ValueType != "CONTAINER" or not r.get("ContentSequence")
               or any(i.ValueType != "NUM" for i in r.ContentSequence) for r in rows):
            continue
        out.append(ReportTable(_meaning(box), tuple(
            ReportTableRow(_meaning(r), tuple(map(_num, r.ContentSequence))) for r in rows)))
    return out


def _segmentation(ds: pydicom.Dataset) -> SegmentationSummary:
    """A SEG's segments counted by segmented property type (the lesion's code)."""
    types: Counter = Counter()
    segments = ds.get("SegmentSequence", [])
    for segment in segments:
        prop = segment.get("SegmentedPropertyTypeCodeSequence", [])
        types[str(prop[0].CodeMeaning) if prop else str(segment.get("SegmentLabel", "unnamed"))] += 1
    return SegmentationSummary(len(segments), tuple(types.items()))


def _findings(ds: pydicom.Dataset) -> list[Finding]:
    """The findings and decided classes of a text report (Enhanced SR "Diagnostic Imaging Report"):
    each container of its Findings section that holds a CODE item named as the container (the
    finding → Present/Absent, or the outcome → the decided class), with the NUM "Probability of"
    that finding or class. Tables and slice scores (containers without such a CODE) are not findings."""
    out = []
    for box in _findings_boxes(ds):
        name = _meaning(box)
        items = box.get("ContentSequence", [])
        coded = [i for i in items if i.ValueType == "CODE" and _meaning(i) == name]
        if not coded:
            continue
        value = str(coded[0].ConceptCodeSequence[0].CodeMeaning)
        numbers = {_meaning(i): float(i.MeasuredValueSequence[0].NumericValue) for i in items if i.ValueType == "NUM"}
        if value.lower() in ("present", "absent"):
            out.append(Finding(name, value.lower() == "present", numbers.get(_probability_of(box))))
        else:  # a multi-class outcome: the decided class
            out.append(Finding(f"{name}: {value}", True, numbers.get(_probability_of(coded[0]))))
    return out


def summarize(folder: Path) -> list[StudyResults]:
    """Every study with result objects under ``folder`` (searched recursively), in UID order.
    Files that are not DICOM, and DICOM objects that are not results, are skipped."""
    studies: dict[str, StudyResults] = {}
    for path in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except (InvalidDicomError, OSError) as exc:
            logger.debug("skipping %s: %s", path, exc)
            continue
        kind = KIND_NAMES.get(str(ds.get("SOPClassUID", "")))
        if kind is None:
            continue
        study = studies.setdefault(str(ds.StudyInstanceUID), StudyResults(str(ds.StudyInstanceUID)))
        study.kinds[kind] += 1
        study.files.append(path)
        models = []
        for item in ds.get("ContributingEquipmentSequence", []):  # the models: processing equipment
            purpose = item.get("PurposeOfReferenceCodeSequence", [])
            if (purpose and purpose[0].get("CodeValue") == codes.DCM.ProcessingEquipment.value
                    and item.get("ManufacturerModelName") != HIGHDICOM):  # the library that wrote the object
                models.append(str(item.get("ManufacturerModelName", "")))
                study.demo |= DEMO_TEXT in str(item.get("ContributionDescription", ""))
        study.models.update(m for m in models if m)
        model = models[0] if models else ""
        if kind == "report":
            report = pydicom.dcmread(path)
            study.findings += [(model, f) for f in _findings(report)]
            study.tables += [(model, t) for t in _tables(report)]
        elif kind == "SEG":
            study.segmentations.append((model, _segmentation(ds)))
    return [studies[k] for k in sorted(studies)]


def _describe(finding: Finding) -> str:
    return finding.meaning if finding.probability is None else f"{finding.meaning} ({finding.probability:.2f})"


def _number(value: float, unit: str) -> str:
    """A table value as read: whole numbers without decimals, others to three decimals, then the
    UCUM unit unless it is dimensionless ("1") or an annotation ("{count}", "{probability}")."""
    if value.is_integer():
        text = str(int(value))
    else:
        text = f"{value:.3f}".rstrip("0").rstrip(".")
        text = f"{value:.3g}" if text in ("0", "-0") else text
    return text if unit == "1" or (unit.startswith("{") and unit.endswith("}")) else f"{text} {unit}"


def _short(meanings: list[str]) -> list[str]:
    """Row names without a trailing explanation in parentheses ("Lobar (cortex and ...)" → "Lobar"),
    unless that would make two rows alike."""
    short = [m.split(" (", 1)[0] if m.endswith(")") and " (" in m else m for m in meanings]
    return short if len(set(short)) == len(set(meanings)) else meanings


def _describe_table(table: ReportTable) -> str:
    """One line: "concept: row value, ..." for one column, "concept: row col value, col value; ..."
    for several."""
    if not table.rows:
        return f"{table.meaning}: no rows"
    names = _short([r.meaning for r in table.rows])
    if all(len(r.values) == 1 for r in table.rows):
        parts = [f"{n} {_number(v, u)}" for n, r in zip(names, table.rows) for _, v, u in r.values]
        return f"{table.meaning}: {', '.join(parts)}"
    parts = [f"{n} " + ", ".join(f"{c} {_number(v, u)}" for c, v, u in r.values) for n, r in zip(names, table.rows)]
    return f"{table.meaning}: {'; '.join(parts)}"


def _describe_segmentation(seg: SegmentationSummary) -> str:
    """One line: "SEG: N segments (type)" or "(n1 type1, n2 type2)" when they differ."""
    noun = "segment" if seg.segments == 1 else "segments"
    if len(seg.types) == 1:
        types = f" ({seg.types[0][0]})"
    else:
        types = f" ({', '.join(f'{n} {t}' for t, n in seg.types)})" if seg.types else ""
    return f"SEG: {seg.segments} {noun}{types}"


def render(studies: list[StudyResults], folder: Path) -> str:
    """The summary as text: per study, its models, findings (present ones first), a line per table
    of its text reports and per SEG (its segments), and its file counts and folders."""
    if not studies:
        return f"no result objects under {folder}"
    lines = []
    for study in studies:
        counts = ", ".join(f"{study.kinds[k]} {k}" for k in ("SR", "report", "KOS", "SC", "PM", "SEG")
                           if study.kinds[k])
        lines.append(f"study {study.study_uid}: {', '.join(sorted(study.models)) or 'no model named'} - {counts}")
        if study.demo:
            lines.append(f"  {DEMO_TEXT}")
        present = [f for _, f in study.findings if f.present]
        lines.append("  may have: " + (", ".join(map(_describe, present)) if present else "none of the findings"))
        absent = [f for _, f in study.findings if not f.present]
        if absent:
            lines.append("  not found: " + ", ".join(map(_describe, absent)))
        lines += [f"  {_describe_table(t)}" for _, t in study.tables]
        lines += [f"  {_describe_segmentation(s)}" for _, s in study.segmentations]
        where = sorted({str(p.parent) for p in study.files})
        lines.append(f"  files: {', '.join(where)}")
    return "\n".join(lines)
