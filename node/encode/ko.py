"""The key slices a model picked, as a Key Object Selection document ("Of Interest")."""
from __future__ import annotations

import highdicom as hd
import pydicom
from pydicom.sr.codedict import codes

from .context import Job


def build_key_objects(job: Job) -> list[pydicom.Dataset]:
    """One KOS listing the key slices in rank order; none when the result has no key slices."""
    slices = sorted(job.result.key_slices, key=lambda k: k.rank)
    if not slices:
        return []
    referenced = [job.instances_of(k.series_instance_uid)[k.slice_index] for k in slices]
    content = hd.ko.KeyObjectSelection(
        document_title=codes.DCM.OfInterest,
        referenced_objects=referenced,
        description=f"{job.spec.name} {job.spec.version}: key slices by rank"[:1024],
    )
    kos = hd.ko.KeyObjectSelectionDocument(
        evidence=job.evidence,
        content=content,
        series_description=f"{job.spec.name} key images"[:64],
        **job.common_kwargs("ko"),
    )
    return [kos]
