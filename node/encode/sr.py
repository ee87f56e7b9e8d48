"""Where the findings are, as a Comprehensive 3D SR holding a TID 1500 Measurement Report.

This is the report measurement viewers draw: every group in it is tied to an image. OHIF 3.13's
SR viewport (``@ohif/extension-cornerstone-dicom-sr``) shows a report titled "Imaging Measurement
Report" on the image of its first measurement and draws each measurement with its labels (the
NUMs' concept, value and unit); a measurement group without image coordinates makes its loader
throw (``_checkIfCanAddMeasurementsToDisplaySet`` reads ``coords[0]`` of a group that has none)
and the viewer shows "Something went wrong" instead of the study. So the groups here are:

- one planar ROI group (TID 1410) per **finding with a place** (a present finding or decided class
  that a heatmap explains, :mod:`neuroread.models.places`): a closed POLYLINE around the area on
  its key image, the finding type with its qualitative evaluation (the finding code → Present,
  or the outcome's concept → the decided class, as IHE AI Results asks), the probability as a
  NUM "Probability of <finding>" ({probability}, every class's for a classification), the
  decision threshold, and the area (mm2);
- per **lesion**, a planar ROI group (TID 1410) with its outline on the slice where it is
  largest (probability, volume, area, site), and a volumetric ROI group (TID 1411): its code as
  finding type, its coded location as finding site, volume (mm3), probability, MIL instance
  weight and every other measurement with its unit, its centroid as a SCOORD3D point
  ("Center"), a tracking identifier shared with its SEG segment, which it references;
- per **table row with a place** (e.g. an atlas region with its relevance), a planar ROI group
  (TID 1410): the region's outline on the slice where it is largest, the table's concept as
  finding type, the row's code as finding site and its values as NUMs with their units;
- the **card**: the model as device observer and in each group's algorithm identification
  (TID 4019: name, version, weights SHA-256, thresholds, demo or not, training data); demo
  weights are also stated in a root-level TEXT comment.

A result with nothing to draw (no finding with a place, no lesion, no table row with a place) gets
no Measurement Report:
an empty one throws in OHIF as well. Every finding, class, table and slice score, placed or not,
is in the text report (:mod:`.text`) as coded content; heatmaps and lesion masks are images (the
Parametric Maps and the Segmentation).
"""
from __future__ import annotations

import hashlib

import highdicom as hd
import numpy as np
import pydicom
from highdicom.coding_schemes import CodingSchemeIdentificationItem
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from neuroread.models import UCUM_PROBABILITY, UCUM_RATIO
from neuroread.models import Code as ModelCode
from neuroread.models.places import Place

from .context import DEMO_COMMENT, PRIVATE_SCHEME, Job
from .seg import lesion_tracking

DECISION_THRESHOLD = Code("DECISIONTHRESH", PRIVATE_SCHEME, "Decision threshold")
INSTANCE_WEIGHT = Code("MILWEIGHT", PRIVATE_SCHEME, "Multiple-instance attention weight")
LESION_PROBABILITY = Code("DETECTIONPROB", PRIVATE_SCHEME, "Detection probability")
IMAGING_PROCEDURE = Code("363679005", "SCT", "Imaging procedure")
CENTER = codes.DCM.Center


def code(c: ModelCode) -> Code:
    """A model's :class:`~neuroread.models.Code` as pydicom's."""
    return Code(c.value, c.scheme, c.meaning)


def probability_of(c: ModelCode) -> Code:
    """The NUM concept "Probability of <meaning>" for a coded finding or class: a private code
    derived from the finding's own (``P`` and 12 hex digits of a hash of its scheme and value,
    within the 16 characters of a Code Value, which some readers require), so the same finding
    always gets the same concept."""
    digest = hashlib.sha1(f"{c.scheme}\x00{c.value}".encode()).hexdigest()[:12].upper()
    return Code(f"P{digest}", PRIVATE_SCHEME, f"Probability of {c.meaning}"[:64])


def _algorithm(job: Job) -> hd.sr.AlgorithmIdentification:
    params = [f"{k}={v}" for k, v in sorted(job.algorithm_parameters().items())]
    return hd.sr.AlgorithmIdentification(name=job.spec.name, version=job.spec.version, parameters=params)


def observation_context(job: Job) -> hd.sr.ObservationContext:
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=job.uids.other("sr", "device-observer"),
        name=job.spec.name[:64],
        manufacturer_name=job.info.manufacturer,
        model_name=f"{job.spec.name} {job.spec.version}"[:64],
        serial_number=job.result.card.weights_sha256[:64],
    )
    return hd.sr.ObservationContext(observer_device_context=hd.sr.ObserverContext(
        observer_type=codes.DCM.Device, observer_identifying_attributes=device))


def _num(name: Code, value: float, unit: ModelCode | Code, algorithm: hd.sr.AlgorithmIdentification
         ) -> hd.sr.Measurement:
    return hd.sr.Measurement(name=name, value=float(value), unit=code(unit) if isinstance(unit, ModelCode) else unit,
                             algorithm_id=algorithm)


def _tracking(job: Job, part: str, index: int, text: str) -> hd.sr.TrackingIdentifier:
    return hd.sr.TrackingIdentifier(uid=job.uids.other("sr", part, index), identifier=text[:64])


def _region(job: Job, place: Place) -> hd.sr.ImageRegion:
    """The place's outline as a closed POLYLINE on its source image."""
    source = job.instances_of(place.series_instance_uid)[place.slice_index]
    return hd.sr.ImageRegion(graphic_type=hd.sr.GraphicTypeValues.POLYLINE, graphic_data=place.outline,
                             source_image=hd.sr.SourceImageForRegion.from_source_image(source))


def _area(job: Job, place: Place, algorithm: hd.sr.AlgorithmIdentification) -> list[hd.sr.Measurement]:
    """The place's area in mm2 when its image says its pixel spacing."""
    spacing = job.instances_of(place.series_instance_uid)[place.slice_index].get("PixelSpacing")
    if not spacing:
        return []
    return [_num(codes.SCT.Area, place.area_px * float(spacing[0]) * float(spacing[1]), codes.UCUM.SquareMillimeter,
                 algorithm)]


def _planar_group(job: Job, algorithm: hd.sr.AlgorithmIdentification, place: Place, tracking: hd.sr.TrackingIdentifier,
                  finding_type: Code, measurements: list, evaluation: Code | None = None,
                  site: Code | None = None) -> hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations:
    """A planar ROI group (TID 1410): the place's outline on its image, the finding type, the
    measurements (then the area), and the finding type's qualitative evaluation when given."""
    return hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=tracking,
        referenced_region=_region(job, place),
        finding_type=finding_type,
        finding_sites=[hd.sr.FindingSite(site)] if site is not None else None,
        algorithm_id=algorithm,
        measurements=measurements + _area(job, place, algorithm),
        qualitative_evaluations=([hd.sr.QualitativeEvaluation(name=finding_type, value=evaluation)]
                                 if evaluation is not None else None),
    )


def _finding_groups(job: Job, algorithm: hd.sr.AlgorithmIdentification) -> list:
    """A planar ROI group per finding with a place, in the result's order."""
    where = job.target_places
    return [_planar_group(job, algorithm, where[f.label], _tracking(job, "finding", i, f"finding {f.label}"),
                          code(f.code),
                          [_num(probability_of(f.code), f.probability, UCUM_PROBABILITY, algorithm),
                           _num(DECISION_THRESHOLD, f.threshold, UCUM_PROBABILITY, algorithm)],
                          codes.SCT.Present if f.present else codes.SCT.Absent)
            for i, f in enumerate(job.result.findings) if f.label in where]


def _classification_groups(job: Job, algorithm: hd.sr.AlgorithmIdentification) -> list:
    """A planar ROI group per classification whose decided class has a place; the decided class's
    probability first, as viewers label a region with its first NUMs."""
    where = job.target_places
    return [_planar_group(job, algorithm, where[c.decided], _tracking(job, "classification", i, f"{c.outcome}: {c.decided}"),
                          code(c.concept),
                          [_num(probability_of(p.code), p.probability, UCUM_PROBABILITY, algorithm)
                           for p in sorted(c.probabilities, key=lambda p: p.name != c.decided)],
                          code(c.decided_class.code))
            for i, c in enumerate(job.result.classifications) if c.decided in where]


def _referenced_segment(job: Job, seg: pydicom.Dataset, number: int, lesion_index: int) -> hd.sr.ReferencedSegment:
    """The lesion's segment, with the source slices it covers.

    Built directly: ``ReferencedSegment.from_segmentation`` (highdicom 0.28) expects a
    per-frame segment identification, which a single-segment SEG keeps in the shared groups.
    """
    les = job.result.lesions[lesion_index]
    instances = job.instances_of(les.series_instance_uid)
    covered = [k for k in range(les.mask.shape[0]) if les.mask[k].any()]
    return hd.sr.ReferencedSegment(
        sop_class_uid=seg.SOPClassUID, sop_instance_uid=seg.SOPInstanceUID, segment_number=number,
        source_images=[hd.sr.SourceImageForSegmentation.from_source_image(instances[k]) for k in covered],
    )


def _lesion_groups(job: Job, segments: dict, algorithm: hd.sr.AlgorithmIdentification) -> list:
    groups = []
    for i, les in enumerate(job.result.lesions):
        seg, number = segments[i]
        uid, tid = lesion_tracking(job, i)
        measurements = [_num(codes.SCT.Volume, les.volume_mm3, codes.UCUM.CubicMillimeter, algorithm)]
        if les.probability is not None:
            measurements.append(_num(LESION_PROBABILITY, les.probability, UCUM_PROBABILITY, algorithm))
        if les.instance_weight is not None:
            measurements.append(_num(INSTANCE_WEIGHT, les.instance_weight, UCUM_RATIO, algorithm))
        measurements += [_num(code(m.concept), m.value, m.unit, algorithm) for m in les.measurements]
        group = hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=uid, identifier=tid),
            referenced_segment=_referenced_segment(job, seg, number, i),
            finding_type=code(les.code),
            finding_sites=[hd.sr.FindingSite(code(les.location))] if les.location is not None else None,
            algorithm_id=algorithm,
            measurements=measurements,
        )
        frame = job.instances_of(les.series_instance_uid)[0].get("FrameOfReferenceUID")
        if frame:
            group[0].ContentSequence.append(hd.sr.Scoord3DContentItem(
                name=CENTER, graphic_type=hd.sr.GraphicTypeValues3D.POINT,
                graphic_data=np.asarray([les.centroid_lps], float), frame_of_reference_uid=str(frame),
                relationship_type=hd.sr.RelationshipTypeValues.CONTAINS))
        groups.append(group)
    return groups


def _lesion_region_groups(job: Job, algorithm: hd.sr.AlgorithmIdentification) -> list:
    """Each lesion's outline on the slice where it is largest (TID 1410), beside its volumetric
    group: viewers that draw only image regions (OHIF) show the lesion there."""
    groups = []
    for i, place in sorted(job.lesion_places.items()):
        les = job.result.lesions[i]
        measurements = [_num(LESION_PROBABILITY, les.probability, UCUM_PROBABILITY, algorithm)] \
            if les.probability is not None else []
        measurements.append(_num(codes.SCT.Volume, les.volume_mm3, codes.UCUM.CubicMillimeter, algorithm))
        groups.append(_planar_group(job, algorithm, place, _tracking(job, "lesion-region", i, place.tracking_id),
                                    code(les.code), measurements,
                                    site=code(les.location) if les.location is not None else None))
    return groups


def _table_groups(job: Job, algorithm: hd.sr.AlgorithmIdentification) -> list:
    """A planar ROI group (TID 1410) per table row with a place (e.g. an atlas region and its
    relevance): the table's concept as finding type, the row's code as finding site, the row's
    values as NUMs with their columns' concepts and units, on the region's outline."""
    groups = []
    for (t, r), place in sorted(job.table_places.items()):
        table = job.result.tables[t]
        row = table.rows[r]
        measurements = [_num(code(col.concept), value, col.unit, algorithm) for col, value in zip(table.columns, row.values)]
        groups.append(_planar_group(job, algorithm, place, _tracking(job, f"table-{t}", r, place.tracking_id),
                                    code(table.concept), measurements, site=code(row.code)))
    return groups


def build_report(job: Job, segments: dict[int, tuple[pydicom.Dataset, int]]) -> list[pydicom.Dataset]:
    """The Measurement Report, or none when nothing is tied to an image; ``segments`` maps each
    lesion index to its (SEG, segment number)."""
    algorithm = _algorithm(job)
    groups = (_finding_groups(job, algorithm) + _classification_groups(job, algorithm)
              + _lesion_region_groups(job, algorithm) + _lesion_groups(job, segments, algorithm)
              + _table_groups(job, algorithm))
    if not groups:
        return []  # nothing tied to an image: the text report carries the findings
    report = hd.sr.MeasurementReport(
        observation_context=observation_context(job),
        procedure_reported=IMAGING_PROCEDURE,
        imaging_measurements=groups,
        title=codes.cid7021.ImagingMeasurementReport,
        referenced_images=job.evidence,
    )
    if job.demo:
        report[0].ContentSequence.append(hd.sr.TextContentItem(
            name=codes.DCM.Comment,
            value=DEMO_COMMENT,
            relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
        ))
    segs = {seg.SOPInstanceUID: seg for seg, _ in segments.values()}
    evidence = list(job.evidence) + [segs[uid] for uid in sorted(segs)]
    sr = hd.sr.Comprehensive3DSR(
        evidence=evidence,
        content=report[0],
        is_complete=True,
        series_description=f"{job.spec.name} report"[:64],
        institution_name=job.info.institution_name or None,
        coding_schemes=[CodingSchemeIdentificationItem(
            designator=PRIVATE_SCHEME, name="neuroread private codes", responsible_organization="neuroread")],
        **job.common_kwargs("sr"),
    )
    _separate(sr)
    return [sr]


def _separate(owner: pydicom.Dataset) -> None:
    """Every container of the document SEPARATE, not CONTINUOUS (highdicom's default): its items
    are measurements to be read one by one, not running text, and renderers that honour
    continuity (dcmtk's dsr2html) otherwise print the values without their concept names."""
    for item in owner.get("ContentSequence", []):
        if item.ValueType == "CONTAINER":
            item.ContinuityOfContent = "SEPARATE"
        _separate(item)
    if "ContinuityOfContent" in owner:
        owner.ContinuityOfContent = "SEPARATE"
