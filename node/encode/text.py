"""The result as a text report any viewer reads: an Enhanced SR titled "Diagnostic Imaging Report".

The Measurement Report (:mod:`.sr`) is for viewers that draw measurements on images (OHIF's SR
viewport draws its regions, labelled with their probabilities) and for machines. This report is
for reading: OHIF shows any SR not titled "Imaging Measurement Report" as text (each content item
as "concept: value", containers as numbered headings, the children of a non-container item not at
all; IMAGE and SCOORD items as "not supported"), and so do PACS viewers and dcmtk's ``dsr2html``.
So it holds only CONTAINER, TEXT, CODE and NUM items directly under its containers (a NUM of a
slice score cites its image below it, which OHIF does not show and need not), in the style of
TID 2000 (Basic Diagnostic Imaging Report; no template is claimed). It is also the coded record
of every finding: the Measurement Report holds only what is tied to an image.

- the observation context: the model as device observer (as in the Measurement Report);
- one **Findings** section (DCM 121070) for the model: the demo-weights warning first when the
  weights are demo weights (a short Comment, then the model card's training data in full), the
  algorithm's name and version, then
  - per finding a container named by the finding: a one-line sentence ("Finding"), Present or
    Absent, "Probability of <finding>" and its "Decision threshold";
  - per classification a container named by its concept: a sentence, the decided class, and the
    probability of every class;
  - per lesion a sentence (tracking id, volume, site, probability);
  - the key images as a sentence (their instance numbers);
  - per slice score a container named by the score: a sentence (image number: value) and a NUM
    per slice inferred from its image;
  - per table a container named by its concept, a container per row (named by the row's code)
    with a NUM per column (the column's concept and unit).

Each sentence names the image where the finding is marked in the Measurement Report, when it has
a place (:mod:`neuroread.models.places`). Probabilities and thresholds are written to three
decimals (the Measurement Report and the Contributing Equipment carry the exact thresholds).
"""
from __future__ import annotations

import highdicom as hd
import pydicom
from highdicom.coding_schemes import CodingSchemeIdentificationItem
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from neuroread.models import UCUM_PROBABILITY
from neuroread.models.places import Place

from .context import DEMO_COMMENT, PRIVATE_SCHEME, Job
from .sr import DECISION_THRESHOLD, code, observation_context, probability_of

FINDING = codes.DCM.Finding
TRAINING_DATA = Code("TRAINDATA", PRIVATE_SCHEME, "Training data")
DIGITS = 3
CONTAINS = hd.sr.RelationshipTypeValues.CONTAINS
#: Lesions listed one by one; more are summed up in one sentence.
MAX_LESIONS_LISTED = 20


def rounded(p: float) -> float:
    """A probability as the text report writes it."""
    return round(float(p), DIGITS)


def _text(name: Code, value: str) -> hd.sr.TextContentItem:
    return hd.sr.TextContentItem(name=name, value=value, relationship_type=CONTAINS)


def _probability(c, p: float) -> hd.sr.NumContentItem:
    return hd.sr.NumContentItem(name=probability_of(c), value=rounded(p), unit=code(UCUM_PROBABILITY),
                                relationship_type=CONTAINS)


def _container(name: Code, items: list) -> hd.sr.ContainerContentItem:
    box = hd.sr.ContainerContentItem(name=name, is_content_continuous=False, relationship_type=CONTAINS)
    box.ContentSequence = items
    return box


def where_marked(job: Job, place: Place | None) -> str:
    """"; marked on image N of series S" for a finding with a place, else ""."""
    if place is None:
        return ""
    ds = job.instances_of(place.series_instance_uid)[place.slice_index]
    series = f"series {ds.get('SeriesNumber', '?')}"
    if ds.get("SeriesDescription"):
        series += f" ({ds.SeriesDescription})"
    return f"; marked on image {ds.get('InstanceNumber', place.slice_index + 1)} of {series}"


def finding_sentence(job: Job, f, place: Place | None) -> str:
    state = "present" if f.present else "absent"
    return (f"{f.code.meaning}: {state}, probability {rounded(f.probability):.{DIGITS}f} "
            f"(threshold {f.threshold:.2f}){where_marked(job, place)}.")


def class_sentence(job: Job, c, place: Place | None) -> str:
    return (f"{c.concept.meaning}: {c.decided_class.code.meaning}, probability "
            f"{rounded(c.decided_class.probability):.{DIGITS}f} of {len(c.probabilities)} classes"
            f"{where_marked(job, place)}.")


def lesion_sentence(job: Job, i: int, place: Place | None) -> str:
    les = job.result.lesions[i]
    parts = [f"{les.code.meaning}, volume {les.volume_mm3:.1f} mm3"]
    if les.location is not None:
        parts.append(f"site {les.location.meaning}")
    if les.probability is not None:
        parts.append(f"probability {rounded(les.probability):.{DIGITS}f}")
    return f"{les.name(i)}: {', '.join(parts)}{where_marked(job, place)}."


def key_images_sentence(job: Job) -> str:
    parts = []
    for ks in sorted(job.result.key_slices, key=lambda k: k.rank):
        ds = job.instances_of(ks.series_instance_uid)[ks.slice_index]
        parts.append(f"image {ds.get('InstanceNumber', ks.slice_index + 1)} of series {ds.get('SeriesNumber', '?')}")
    return "; ".join(parts) + "."


def _slice_scores(job: Job, scores) -> hd.sr.ContainerContentItem:
    """A container named by the score: a sentence (image number: value, for readers) and a NUM per
    slice inferred from its image (for machines; viewers that show only a container's own items,
    such as OHIF, do not show the image reference and need not)."""
    instances = job.instances_of(scores.series_instance_uid)
    numbers = [instances[k].get("InstanceNumber", k + 1) for k in scores.slice_indices]
    line = "; ".join(f"image {n}: {v:.3f}" for n, v in zip(numbers, scores.scores))
    nums = []
    for k, value in zip(scores.slice_indices, scores.scores):
        num = hd.sr.NumContentItem(name=code(scores.concept), value=float(value), unit=code(scores.unit),
                                   relationship_type=CONTAINS)
        num.ContentSequence = [hd.sr.ImageContentItem(
            name=codes.SCT.Source, referenced_sop_class_uid=instances[k].SOPClassUID,
            referenced_sop_instance_uid=instances[k].SOPInstanceUID,
            relationship_type=hd.sr.RelationshipTypeValues.INFERRED_FROM)]
        nums.append(num)
    return _container(code(scores.concept), [_text(FINDING, f"{scores.concept.meaning} by image: {line}."), *nums])


def _table(table) -> hd.sr.ContainerContentItem:
    """A container named by the table's concept, one container per row (named by its code) with a
    NUM per column (the column's concept and unit)."""
    rows = [_container(code(row.code), [
        hd.sr.NumContentItem(name=code(col.concept), value=float(v), unit=code(col.unit), relationship_type=CONTAINS)
        for col, v in zip(table.columns, row.values)]) for row in table.rows]
    return _container(code(table.concept), rows)


def build_text_report(job: Job) -> list[pydicom.Dataset]:
    result = job.result
    where, lesion_places = job.target_places, job.lesion_places
    items: list = []
    if job.demo:
        items.append(_text(codes.DCM.Comment, DEMO_COMMENT))
        items.append(_text(TRAINING_DATA, result.card.training_data))
    items += [_text(codes.DCM.AlgorithmName, job.spec.name), _text(codes.DCM.AlgorithmVersion, job.spec.version)]
    for f in result.findings:
        place = where.get(f.label)
        items.append(_container(code(f.code), [
            _text(FINDING, finding_sentence(job, f, place)),
            hd.sr.CodeContentItem(name=code(f.code), value=codes.SCT.Present if f.present else codes.SCT.Absent,
                                  relationship_type=CONTAINS),
            _probability(f.code, f.probability),
            hd.sr.NumContentItem(name=DECISION_THRESHOLD, value=rounded(f.threshold), unit=code(UCUM_PROBABILITY),
                                 relationship_type=CONTAINS),
        ]))
    for c in result.classifications:
        items.append(_container(code(c.concept), [
            _text(FINDING, class_sentence(job, c, where.get(c.decided))),
            hd.sr.CodeContentItem(name=code(c.concept), value=code(c.decided_class.code), relationship_type=CONTAINS),
            *[_probability(p.code, p.probability) for p in c.probabilities],
        ]))
    shown = min(len(result.lesions), MAX_LESIONS_LISTED)
    for i in range(shown):
        items.append(_text(FINDING, lesion_sentence(job, i, lesion_places.get(i))))
    if len(result.lesions) > shown:
        items.append(_text(FINDING, f"{len(result.lesions) - shown} more lesions: see the measurement report."))
    if result.key_slices:
        items.append(_text(codes.DCM.KeyImages, key_images_sentence(job)))
    items += [_slice_scores(job, scores) for scores in result.slice_scores]
    items += [_table(table) for table in result.tables]
    root = hd.sr.ContainerContentItem(name=codes.LN.DiagnosticImagingReport, is_content_continuous=False)
    root.ContentSequence = [*observation_context(job), _container(codes.DCM.Findings, items)]
    sr = hd.sr.EnhancedSR(
        evidence=job.evidence,
        content=root,
        is_complete=True,
        series_description=f"{job.spec.name} text report"[:64],
        institution_name=job.info.institution_name or None,
        coding_schemes=[CodingSchemeIdentificationItem(
            designator=PRIVATE_SCHEME, name="neuroread private codes", responsible_organization="neuroread")],
        **job.common_kwargs("report"),
    )
    return [sr]
