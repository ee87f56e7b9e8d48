"""Lesion masks as a binary Segmentation on the source geometry.

One SEG instance per source series that has lesions, all in one new series; **one segment
per lesion** (not per label), so that each lesion has its own tracking identifier and the
SR's per-lesion measurement group can reference exactly its segment. The segment's property
type is the lesion's code; its category is "Morphologically abnormal structure".
"""
from __future__ import annotations

import highdicom as hd
import numpy as np
import pydicom
from pydicom.sr.coding import Code

from .context import Job, freeze_dimension_uid

ABNORMAL_STRUCTURE = Code("49755003", "SCT", "Morphologically Abnormal Structure")


def lesion_tracking(job: Job, lesion_index: int) -> tuple[str, str]:
    """(tracking UID, tracking ID) of lesion ``lesion_index``, shared by SEG and SR: the lesion's own
    tracking id when the model gives one, else ``lesion N <label>``."""
    return job.uids.other("lesion", "tracking", lesion_index), job.result.lesions[lesion_index].name(lesion_index)


def build_segmentations(job: Job) -> tuple[list[pydicom.Dataset], dict[int, tuple[pydicom.Dataset, int]]]:
    """SEG instances and, per lesion index, the (SEG dataset, segment number) that holds it."""
    by_series: dict[str, list[int]] = {}
    for i, les in enumerate(job.result.lesions):
        by_series.setdefault(les.series_instance_uid, []).append(i)
    segs: list[pydicom.Dataset] = []
    where: dict[int, tuple[pydicom.Dataset, int]] = {}
    algorithm = job.algorithm_identification()
    for index, series_uid in enumerate(sorted(by_series)):
        sources = job.instances_of(series_uid)
        lesion_ids = by_series[series_uid]
        shape = (len(sources), int(sources[0].Rows), int(sources[0].Columns))
        masks = []
        descriptions = []
        for number, i in enumerate(lesion_ids, start=1):
            les = job.result.lesions[i]
            if les.mask.shape != shape:
                raise ValueError(f"lesion {i} ({les.label}): mask shape {les.mask.shape} is not its series' "
                                 f"grid {shape}")
            masks.append(les.mask)
            uid, tid = lesion_tracking(job, i)
            descriptions.append(hd.seg.SegmentDescription(
                segment_number=number,
                segment_label=f"{les.label} {i + 1}"[:64],
                segmented_property_category=ABNORMAL_STRUCTURE,
                segmented_property_type=Code(les.code.value, les.code.scheme, les.code.meaning),
                algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
                algorithm_identification=algorithm,
                tracking_uid=uid,
                tracking_id=tid,
            ))
        pixels = np.stack(masks, axis=-1)  # (slices, rows, columns, segments)
        kwargs = job.common_kwargs("seg", index)
        seg = hd.seg.Segmentation(
            source_images=sources,
            pixel_array=pixels,
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=descriptions,
            manufacturer_model_name=job.info.device_name,
            software_versions=job.info.software_version,
            device_serial_number=job.info.device_serial_number,
            series_description=f"{job.spec.name} lesions"[:64],
            content_label="LESIONS",
            content_description=f"{job.spec.name} {job.spec.version} lesion masks"[:64],
            **kwargs,
        )
        freeze_dimension_uid(seg, job.uids.other("seg", "dimension-organization", index))
        segs.append(seg)
        for number, i in enumerate(lesion_ids, start=1):
            where[i] = (seg, number)
    return segs, where
