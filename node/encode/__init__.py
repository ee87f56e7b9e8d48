"""Encode: a ``ModelResult`` as DICOM objects made with highdicom (DESIGN.md, "Results as DICOM").

:func:`encode_result` returns, in the source study and one new series per kind:

=====  =========================================================================
kind   object
=====  =========================================================================
sr     Comprehensive 3D SR, TID 1500 Measurement Report (findings, lesions, tables)
ko     Key Object Selection of the key slices ("Of Interest")
seg    binary Segmentation, one segment per lesion, one instance per source series
pm     float32 Parametric Map per heatmap
sc     RGB Secondary Capture: one overlay per key slice, then the report page
report Enhanced SR "Diagnostic Imaging Report": the findings as text (any viewer)
=====  =========================================================================

UIDs come from (sorted input Series Instance UIDs, model name and version, the weights' SHA-256
and the effective thresholds, kind, index) and every date and time from the source instances,
so the same input through the same weights gives the same datasets.
:func:`validate` runs dciodvfy; the node sends nothing that has an error.
"""
from __future__ import annotations

import logging

import pydicom

from neuroread.models import ModelResult, ModelSpec

from .context import DEMO_TEXT, KINDS, EncodeInfo, Job, freeze_dates, source_stamp
from .dciodvfy import find_dciodvfy, validate
from .ko import build_key_objects
from .pm import build_parametric_maps
from .sc import build_secondary_captures
from .seg import build_segmentations
from .sr import build_report, probability_of
from .text import build_text_report
from .tolerant import Withheld, fill_series_level, withhold_invalid, withhold_invalid_all
from .uids import UidFactory, derive_uid

__all__ = ["DEMO_TEXT", "KINDS", "EncodeInfo", "UidFactory", "Withheld", "derive_uid", "encode_result", "fill_series_level",
           "find_dciodvfy", "probability_of", "validate", "withhold_invalid", "withhold_invalid_all"]

logger = logging.getLogger(__name__)


def _check_sources(spec: ModelSpec, sources: dict[str, list[pydicom.Dataset]]) -> dict[str, list[pydicom.Dataset]]:
    """Source instances by Series Instance UID, after checking they make one study."""
    if not sources:
        raise ValueError("sources must hold the instances of at least one input series")
    slots = {s.name for s in spec.slots}
    series: dict[str, list[pydicom.Dataset]] = {}
    studies = set()
    for slot, instances in sources.items():
        if slot not in slots:
            raise ValueError(f"sources[{slot!r}]: {spec.name} has no input slot {slot!r}; slots: {sorted(slots)}")
        if not instances:
            raise ValueError(f"sources[{slot!r}] is empty")
        uids = {str(ds.SeriesInstanceUID) for ds in instances}
        if len(uids) != 1:
            raise ValueError(f"sources[{slot!r}] mixes {len(uids)} series; one series per slot")
        studies.update(str(ds.StudyInstanceUID) for ds in instances)
        series[uids.pop()] = list(instances)
    if len(studies) != 1:
        raise ValueError(f"sources come from {len(studies)} studies; results belong to one study")
    return series


def _check_result(result: ModelResult, spec: ModelSpec, series: dict[str, list[pydicom.Dataset]]) -> None:
    if (result.model, result.version) != (spec.name, spec.version):
        raise ValueError(f"result of {result.model} {result.version} encoded with spec {spec.name} {spec.version}")
    for ks in result.key_slices:
        instances = series.get(ks.series_instance_uid)
        if instances is None:
            raise ValueError(f"key slice rank {ks.rank} refers to series {ks.series_instance_uid}, not a source")
        if ks.slice_index >= len(instances) or instances[ks.slice_index].SOPInstanceUID != ks.sop_instance_uid:
            raise ValueError(f"key slice rank {ks.rank}: slice {ks.slice_index} of the sources is not instance "
                             f"{ks.sop_instance_uid}; sources must be sorted as the model's volume")


def encode_result(result: ModelResult, spec: ModelSpec, sources: dict[str, list[pydicom.Dataset]], *,
                  node_info: EncodeInfo) -> list[pydicom.Dataset]:
    """Every result object of ``result`` (SR, KOS, SEGs, PMs, SCs), ready to validate and send.

    ``sources[slot]`` are the instances of the series that filled ``slot``, sorted as the
    model's :class:`neuroread.models.SeriesVolume` slices (slice k made from ``sources[slot][k]``), with
    pixel data (the Secondary Captures draw key slices). Raises ``ValueError`` naming what does
    not fit (unknown slot, several studies, key slice not matching its instance, wrong grid).
    """
    series = _check_sources(spec, sources)
    _check_result(result, spec, series)
    evidence = [ds for uid in sorted(series) for ds in series[uid]]
    job = Job(
        result=result, spec=spec, info=node_info, series=series,
        uids=UidFactory(tuple(sorted(series)), spec.name, spec.version,
                        identity=f"{result.card.weights_sha256}|{spec.thresholds_text()}"),
        stamp=source_stamp(evidence), evidence=evidence,
    )
    segs, segments = build_segmentations(job)
    objects = build_report(job, segments) + build_text_report(job) + build_key_objects(job) + segs
    objects += build_parametric_maps(job) + build_secondary_captures(job)
    for ds in objects:
        freeze_dates(ds, job.stamp)
    logger.info("encoded %s %s: %d objects (%s) for series %s", spec.name, spec.version, len(objects),
                ", ".join(f"{ds.Modality}" for ds in objects), ",".join(sorted(series)),
                extra={"model": spec.name, "study_instance_uid": str(job.reference.StudyInstanceUID)})
    return objects
