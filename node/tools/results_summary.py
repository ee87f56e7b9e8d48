"""What came back: a short summary of the result objects in a folder (``neuroread results DIR``).

A PACS or a ``storescp`` folder holds the node's results as plain DICOM files. This reads them
back the way a viewer would: files grouped by study, counted by kind (SR for the Measurement
Report, report for the text report, KOS, SC, PM, SEG), and the findings read from each text
report, which codes every finding (the Measurement Report holds only those with a place): either
Present/Absent with the finding's probability (multi-label outcomes) or the decided class with
its probability (multi-class). Demo weights are flagged as the results say. No patient names are
printed: studies are named by their UIDs.
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


@dataclass
class StudyResults:
    """The result objects of one study found in a folder."""

    study_uid: str
    models: set[str] = field(default_factory=set)
    kinds: Counter = field(default_factory=Counter)
    findings: list[tuple[str, Finding]] = field(default_factory=list)  # (model, finding)
    demo: bool = False
    files: list[Path] = field(default_factory=list)


def _meaning(item: pydicom.Dataset) -> str:
    return str(item.ConceptNameCodeSequence[0].CodeMeaning)


def _probability_of(item: pydicom.Dataset) -> str:
    """The meaning of the NUM that holds the probability of the finding ``item`` names (a
    container's concept name) or of the class it holds (a CODE item's value)."""
    c = (item.ConceptCodeSequence if item.ValueType == "CODE" else item.ConceptNameCodeSequence)[0]
    return probability_of(Code(str(c.CodeValue), str(c.CodingSchemeDesignator), str(c.CodeMeaning))).meaning


def _findings(ds: pydicom.Dataset) -> list[Finding]:
    """The findings and decided classes of a text report (Enhanced SR "Diagnostic Imaging Report"):
    each container of its Findings section that holds a CODE item named as the container (the
    finding → Present/Absent, or the outcome → the decided class), with the NUM "Probability of"
    that finding or class. Tables and slice scores (containers without such a CODE) are not findings."""
    out = []
    for section in ds.get("ContentSequence", []):
        if section.ValueType != "CONTAINER" or section.ConceptNameCodeSequence[0].CodeValue != FINDINGS:
            continue
        for box in section.get("ContentSequence", []):
            if box.ValueType != "CONTAINER":
                continue
            name = _meaning(box)
            coded = [i for i in box.ContentSequence if i.ValueType == "CODE" and _meaning(i) == name]
            if not coded:
                continue
            value = str(coded[0].ConceptCodeSequence[0].CodeMeaning)
            numbers = {_meaning(i): float(i.MeasuredValueSequence[0].NumericValue) for i in box.ContentSequence
                       if i.ValueType == "NUM"}
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
        if kind == "report":
            study.findings += [(models[0] if models else "", f) for f in _findings(pydicom.dcmread(path))]
    return [studies[k] for k in sorted(studies)]


def _describe(finding: Finding) -> str:
    return finding.meaning if finding.probability is None else f"{finding.meaning} ({finding.probability:.2f})"


def render(studies: list[StudyResults], folder: Path) -> str:
    """The summary as text: per study, its models, findings (present ones first) and file counts."""
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
        where = sorted({str(p.parent) for p in study.files})
        lines.append(f"  files: {', '.join(where)}")
    return "\n".join(lines)
