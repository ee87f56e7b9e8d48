"""Secondary Capture pictures: a heatmap overlay per key slice and a one-page report.

Overlays (instances 1..n, rank order) show the source slice windowed with the first heatmap
of its series blended in, a caption with rank and score and, for demo weights, the demo
warning. The report page (last instance) says what the patient may have, lists the findings
with probabilities, draws the attention of every sampled slice when the result carries a
slice-attention table (else the key-slice scores as bars) and shows the ranked overlays as
thumbnails. All carry burned-in
text, so Burned In Annotation is YES.
"""
from __future__ import annotations

import highdicom as hd
import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian

from neuroread.models import SLICE_ATTENTION_TABLE

from . import pictures as render
from .context import DEMO_TEXT, Job, ensure_laterality

_AXIS_LETTERS = (("L", "R"), ("P", "A"), ("H", "F"))


def _orientation(ds: pydicom.Dataset) -> tuple[str, str]:
    """Patient Orientation (row, column directions) from Image Orientation (Patient)."""
    iop = [float(v) for v in ds.get("ImageOrientationPatient", [1, 0, 0, 0, 1, 0])]
    out = []
    for vec in (iop[:3], iop[3:]):
        axis = int(np.argmax(np.abs(vec)))
        out.append(_AXIS_LETTERS[axis][0 if vec[axis] > 0 else 1])
    return out[0], out[1]


def _heat_for(job: Job, series_uid: str) -> np.ndarray | None:
    """The first heatmap of ``series_uid`` scaled to [0, 1], or None."""
    for heat in job.result.heatmaps:
        if heat.series_instance_uid == series_uid:
            a = heat.array.astype(np.float32)
            low, high = float(a.min()), float(a.max())
            return (a - low) / (high - low) if high > low else np.zeros_like(a)
    return None


def _sampled_slices(job: Job) -> list[render.SampledSlice] | None:
    """The rows of the result's slice-attention table (:data:`neuroread.models.SLICE_ATTENTION_TABLE`) as
    windowed source slices with their attention, in the table's order; None without one."""
    table = next((t for t in job.result.tables if t.name == SLICE_ATTENTION_TABLE), None)
    if table is None or not table.rows:
        return None
    col = {name: i for i, name in enumerate(table.columns)}
    by_uid = {str(ds.SOPInstanceUID): ds for datasets in job.series.values() for ds in datasets}
    keys = {ks.sop_instance_uid for ks in job.result.key_slices}
    out = []
    for row in table.rows:
        uid = str(row[col["SOP Instance UID"]])
        out.append(render.SampledSlice(render.windowed(by_uid[uid]), int(row[col["slice index"]]),
                                       float(row[col["attention"]]), uid in keys))
    return out


def _sc(job: Job, pixels: np.ndarray, index: int, ref: pydicom.Dataset, orientation: tuple[str, str],
        description: str, source: pydicom.Dataset | None) -> pydicom.Dataset:
    ds = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=ref,
        pixel_array=pixels,
        photometric_interpretation=hd.PhotometricInterpretationValues.RGB,
        bits_allocated=8,
        coordinate_system=hd.CoordinateSystemNames.PATIENT,
        patient_orientation=orientation,
        transfer_syntax_uid=ExplicitVRLittleEndian,
        series_description=f"{job.spec.name} pictures"[:64],
        **job.common_kwargs("sc", index),
    )
    ensure_laterality(ds)
    ds.BurnedInAnnotation = "YES"
    ds.DerivationDescription = description[:1024]
    if source is not None:
        item = Dataset()
        item.ReferencedSOPClassUID = source.SOPClassUID
        item.ReferencedSOPInstanceUID = source.SOPInstanceUID
        ds.SourceImageSequence = [item]
    return ds


def build_secondary_captures(job: Job) -> list[pydicom.Dataset]:
    demo = DEMO_TEXT if job.demo else None
    out: list[pydicom.Dataset] = []
    thumbs: list[render.Thumb] = []
    heat_cache: dict[str, np.ndarray | None] = {}
    for ks in sorted(job.result.key_slices, key=lambda k: k.rank):
        src = job.instances_of(ks.series_instance_uid)[ks.slice_index]
        if ks.series_instance_uid not in heat_cache:
            heat_cache[ks.series_instance_uid] = _heat_for(job, ks.series_instance_uid)
        heat = heat_cache[ks.series_instance_uid]
        rgb = render.heat_colors(render.windowed(src), None if heat is None else heat[ks.slice_index])
        rgb = render.upscale(rgb)
        thumbs.append(render.Thumb(rgb, ks.rank, ks.score, ks.slice_index))
        lines = [f"{job.spec.name} {job.spec.version}  key slice #{ks.rank}",
                 f"slice {ks.slice_index}  score {ks.score:.3f}"]
        pixels = render.captioned(rgb, lines, demo)
        out.append(_sc(job, pixels, len(out), src, _orientation(src),
                       f"key slice {ks.slice_index} (rank {ks.rank}) with {job.spec.name} heatmap overlay", src))
    findings = [render.FindingLine(f.label, f.code.meaning, f.probability, f.threshold, f.present)
                for f in job.result.findings]
    page = render.report_page(
        title=f"{job.spec.name} {job.spec.version}",
        subtitle=f"{job.spec.summary} - weights {job.result.card.weights_sha256[:12]}"[:160],
        findings=findings, thumbs=thumbs, demo_text=demo, sampled=_sampled_slices(job),
    )
    ref = job.reference
    report = _sc(job, page, len(out), ref, _orientation(ref), f"{job.spec.name} report page", None)
    report.PatientOrientation = None  # a page, not an anatomical view: Type 2, left empty
    out.append(report)
    return out
