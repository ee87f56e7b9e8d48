"""The result as a Comprehensive 3D SR holding a TID 1500 Measurement Report.

Groups in the report:

- one per finding (TID 1501): the finding's code as finding type, a qualitative evaluation
  (the code, Present/Absent) and the probability as a measurement (UCUM ``{probability}``),
  with the key slices of its series as source images;
- one per lesion (TID 1411): volume in mm3, lesion score when given, tracking identifier
  shared with the lesion's SEG segment, which it references;
- one per row of each table (TID 1501): the row's numeric columns as measurements.

The model appears as device observer, in each group's algorithm identification (TID 4019,
with its parameters) and in the Contributing Equipment Sequence. Demo weights are stated in
a root-level TEXT comment.
"""
from __future__ import annotations

import hashlib
import numbers

import highdicom as hd
import pydicom
from highdicom.coding_schemes import CodingSchemeIdentificationItem
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from neuroread.models import Code as ModelCode

from .context import DEMO_TEXT, PRIVATE_SCHEME, Job
from .seg import lesion_tracking

PROBABILITY = Code("PROBABILITY", PRIVATE_SCHEME, "Probability of finding")
LESION_SCORE = Code("LESIONSCORE", PRIVATE_SCHEME, "Lesion score")
PROBABILITY_UNIT = Code("{probability}", "UCUM", "probability")
NO_UNITS = codes.UCUM.NoUnits
IMAGING_PROCEDURE = Code("363679005", "SCT", "Imaging procedure")


def _code(code: ModelCode) -> Code:
    return Code(code.value, code.scheme, code.meaning)


def _column_code(table: str, column: str) -> Code:
    digest = hashlib.sha1(f"{table}\x00{column}".encode()).hexdigest()[:10].upper()
    return Code(f"COL{digest}", PRIVATE_SCHEME, column[:64])


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


def _key_images(job: Job, series_uid: str) -> list[hd.sr.SourceImageForMeasurementGroup]:
    out = []
    for ks in sorted(job.result.key_slices, key=lambda k: k.rank):
        if ks.series_instance_uid == series_uid:
            ds = job.instances_of(series_uid)[ks.slice_index]
            out.append(hd.sr.SourceImageForMeasurementGroup.from_source_image(ds))
    return out


def _finding_groups(job: Job, algorithm: hd.sr.AlgorithmIdentification) -> list:
    groups = []
    # Findings are whole-study statements; cite the key slices the model chose (any series).
    key_series = sorted({ks.series_instance_uid for ks in job.result.key_slices})
    sources = [img for uid in key_series for img in _key_images(job, uid)]
    for i, f in enumerate(job.result.findings):
        groups.append(hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=job.uids.other("sr", "finding", i),
                                                         identifier=f"finding {f.label}"[:64]),
            finding_type=_code(f.code),
            algorithm_id=algorithm,
            measurements=[hd.sr.Measurement(name=PROBABILITY, value=float(f.probability), unit=PROBABILITY_UNIT,
                                            algorithm_id=algorithm)],
            qualitative_evaluations=[hd.sr.QualitativeEvaluation(
                name=_code(f.code), value=codes.SCT.Present if f.present else codes.SCT.Absent)],
            source_images=sources or None,
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
        if les.score is not None:
            measurements.append(hd.sr.Measurement(name=LESION_SCORE, value=float(les.score), unit=NO_UNITS,
                                                  algorithm_id=algorithm))
        groups.append(hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=uid, identifier=tid),
            referenced_segment=_referenced_segment(job, seg, number, i),
            finding_type=_code(les.code),
            algorithm_id=algorithm,
            measurements=measurements,
        ))
    return groups


def _table_groups(job: Job, algorithm: hd.sr.AlgorithmIdentification) -> list:
    groups = []
    n = 0
    for table in job.result.tables:
        for row in table.rows:
            name = " ".join(str(v) for v in row if not isinstance(v, numbers.Number)) or f"row {n + 1}"
            measurements = [
                hd.sr.Measurement(name=_column_code(table.name, col), value=float(v), unit=NO_UNITS,
                                  algorithm_id=algorithm)
                for col, v in zip(table.columns, row)
                if isinstance(v, numbers.Number) and not isinstance(v, bool)
            ]
            groups.append(hd.sr.MeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(uid=job.uids.other("sr", "table-row", n),
                                                             identifier=f"{table.name}: {name}"[:64]),
                algorithm_id=algorithm,
                measurements=measurements or None,
            ))
            n += 1
    return groups


def build_report(job: Job, segments: dict[int, tuple[pydicom.Dataset, int]]) -> list[pydicom.Dataset]:
    """The SR document; ``segments`` maps each lesion index to its (SEG, segment number)."""
    algorithm = _algorithm(job)
    groups = _finding_groups(job, algorithm) + _lesion_groups(job, segments, algorithm) + _table_groups(job, algorithm)
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
