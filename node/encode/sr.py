"""The result as a Comprehensive 3D SR holding a TID 1500 Measurement Report.

Every field of a :class:`~neuroread.models.ModelResult` that is not an image lands here (a test
builds a result with every field filled and finds each value in the SR):

- one group per **finding** of a multi-label outcome (TID 1501): the finding's code as finding
  type, a qualitative evaluation (the code, Present/Absent at its threshold), the probability
  as a NUM "Probability of <finding>" ({probability}) and its threshold as a NUM
  "Decision threshold", with the key slices of its series as source images;
- one group per **classification** (TID 1501): the outcome's concept as finding type, the
  decided class as a qualitative evaluation (concept → class code) and one NUM
  "Probability of <class>" per class;
- one group per **lesion** (TID 1411): its code as finding type, its coded location as finding
  site, volume (mm3), probability, MIL instance weight and every other measurement with its
  unit, its centroid as a SCOORD3D point ("Center"), a tracking identifier shared with its SEG
  segment, which it references;
- one group per **table row** (TID 1501): the table's concept as finding type, the row's code as
  finding site, one NUM per column (the column's concept and unit);
- one group per slice of each **slice score** (TID 1501): the score's concept and unit, with
  that slice as source image;
- the **key slices** as each finding group's source images (and in the KOS);
- the **card**: the model as device observer and in each group's algorithm identification
  (TID 4019: name, version, weights SHA-256, thresholds, demo or not, training data); demo
  weights are also stated in a root-level TEXT comment.

Heatmaps and lesion masks are images: they go to the Parametric Maps and the Segmentation.
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

from .context import DEMO_TEXT, PRIVATE_SCHEME, Job
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


def _observation_context(job: Job) -> hd.sr.ObservationContext:
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


def _key_images(job: Job) -> list[hd.sr.SourceImageForMeasurementGroup]:
    """The key slices the model chose (any series), in rank order."""
    return [hd.sr.SourceImageForMeasurementGroup.from_source_image(
                job.instances_of(ks.series_instance_uid)[ks.slice_index])
            for ks in sorted(job.result.key_slices, key=lambda k: k.rank)]


def _finding_groups(job: Job, algorithm: hd.sr.AlgorithmIdentification) -> list:
    sources = _key_images(job) or None  # findings are study-level statements; cite the key slices
    groups = []
    for i, f in enumerate(job.result.findings):
        groups.append(hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=_tracking(job, "finding", i, f"finding {f.label}"),
            finding_type=code(f.code),
            algorithm_id=algorithm,
            measurements=[_num(probability_of(f.code), f.probability, UCUM_PROBABILITY, algorithm),
                          _num(DECISION_THRESHOLD, f.threshold, UCUM_PROBABILITY, algorithm)],
            qualitative_evaluations=[hd.sr.QualitativeEvaluation(
                name=code(f.code), value=codes.SCT.Present if f.present else codes.SCT.Absent)],
            source_images=sources,
        ))
    return groups


def _classification_groups(job: Job, algorithm: hd.sr.AlgorithmIdentification) -> list:
    sources = _key_images(job) or None
    groups = []
    for i, c in enumerate(job.result.classifications):
        groups.append(hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=_tracking(job, "classification", i, f"{c.outcome}: {c.decided}"),
            finding_type=code(c.concept),
            algorithm_id=algorithm,
            measurements=[_num(probability_of(p.code), p.probability, UCUM_PROBABILITY, algorithm)
                          for p in c.probabilities],
            qualitative_evaluations=[hd.sr.QualitativeEvaluation(name=code(c.concept),
                                                                 value=code(c.decided_class.code))],
            source_images=sources,
        ))
    return groups


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
        measurements = [hd.sr.Measurement(name=codes.SCT.Volume, value=float(les.volume_mm3),
                                          unit=codes.UCUM.CubicMillimeter, algorithm_id=algorithm)]
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


def _table_groups(job: Job, algorithm: hd.sr.AlgorithmIdentification) -> list:
    groups = []
    n = 0
    for table in job.result.tables:
        for row in table.rows:
            groups.append(hd.sr.MeasurementsAndQualitativeEvaluations(
                tracking_identifier=_tracking(job, "table-row", n, f"{table.name}: {row.code.meaning}"),
                finding_type=code(table.concept),
                finding_sites=[hd.sr.FindingSite(code(row.code))],
                algorithm_id=algorithm,
                measurements=[_num(code(col.concept), v, col.unit, algorithm) for col, v in zip(table.columns, row.values)],
            ))
            n += 1
    return groups


def _slice_score_groups(job: Job, algorithm: hd.sr.AlgorithmIdentification) -> list:
    groups = []
    n = 0
    for scores in job.result.slice_scores:
        instances = job.instances_of(scores.series_instance_uid)
        for k, value in zip(scores.slice_indices, scores.scores):
            groups.append(hd.sr.MeasurementsAndQualitativeEvaluations(
                tracking_identifier=_tracking(job, "slice-score", n, f"{scores.concept.meaning}: slice {k}"),
                algorithm_id=algorithm,
                measurements=[_num(code(scores.concept), value, scores.unit, algorithm)],
                source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(instances[k])],
            ))
            n += 1
    return groups


def build_report(job: Job, segments: dict[int, tuple[pydicom.Dataset, int]]) -> list[pydicom.Dataset]:
    """The SR document; ``segments`` maps each lesion index to its (SEG, segment number)."""
    algorithm = _algorithm(job)
    groups = (_finding_groups(job, algorithm) + _classification_groups(job, algorithm)
              + _lesion_groups(job, segments, algorithm) + _table_groups(job, algorithm)
              + _slice_score_groups(job, algorithm))
    report = hd.sr.MeasurementReport(
        observation_context=_observation_context(job),
        procedure_reported=IMAGING_PROCEDURE,
        imaging_measurements=groups,
        title=codes.cid7021.ImagingMeasurementReport,
        referenced_images=job.evidence,
    )
    if job.demo:
        report[0].ContentSequence.append(hd.sr.TextContentItem(
            name=codes.DCM.Comment,
            value=f"{DEMO_TEXT}. Weights trained on synthetic phantoms ({job.result.card.training_data}); "
                  "no clinical accuracy is claimed."[:1024],
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
    return [sr]
