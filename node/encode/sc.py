"""Secondary Capture pictures: a heatmap overlay per key slice and a one-page report.

Overlays (instances 1..n, rank order) show the source slice windowed with the heatmap that
explains the main outcome blended in (:meth:`neuroread.models.ModelResult.ranked_heatmaps`), a caption with rank, score and
what the map shows and, for demo weights, the demo warning. The report page (last instance)
is built from the result's typed fields alone (:mod:`.pictures`' sections): the verdict, the
findings, each classification, the slice scores with the key slices outlined, the key-slice
overlays, each table and the lesions. All carry burned-in text, so Burned In Annotation is YES.
"""
from __future__ import annotations

import highdicom as hd
import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian

from neuroread.models import Heatmap

from . import pictures as render
from .context import DEMO_TEXT, Job, ensure_laterality
from .pm import describe

_AXIS_LETTERS = (("L", "R"), ("P", "A"), ("H", "F"))


def _orientation(ds: pydicom.Dataset) -> tuple[str, str]:
    """Patient Orientation (row, column directions) from Image Orientation (Patient)."""
    iop = [float(v) for v in ds.get("ImageOrientationPatient", [1, 0, 0, 0, 1, 0])]
    out = []
    for vec in (iop[:3], iop[3:]):
        axis = int(np.argmax(np.abs(vec)))
        out.append(_AXIS_LETTERS[axis][0 if vec[axis] > 0 else 1])
    return out[0], out[1]


def _scaled(heat: Heatmap) -> np.ndarray:
    """The map on the scale of its value range: [0, 1], or [-1, 1] when signed."""
    low, high = heat.value_range
    if heat.signed:
        return heat.array.astype(np.float32) / max(abs(low), abs(high))
    return (heat.array.astype(np.float32) - low) / (high - low)


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


def _sections(job: Job, thumbs: list[render.Thumb]) -> list[render.Section]:
    result = job.result
    sections: list[render.Section] = []
    if result.findings:
        sections.append(render.FindingsSection(tuple(
            render.FindingLine(f.label, f.code.meaning, f.probability, f.threshold, f.present) for f in result.findings)))
    for c in result.classifications:
        sections.append(render.ClassificationSection(c.concept.meaning, tuple(
            render.ClassLine(p.code.meaning, p.probability, p.name == c.decided) for p in c.probabilities)))
    keys = {(k.series_instance_uid, k.slice_index) for k in result.key_slices}
    for s in result.slice_scores:
        instances = job.instances_of(s.series_instance_uid)
        sections.append(render.SliceScoresSection(s.concept.meaning, tuple(
            render.SampledSlice(render.windowed(instances[k]), k, v, (s.series_instance_uid, k) in keys)
            for k, v in zip(s.slice_indices, s.scores))))
    if thumbs:
        sections.append(render.KeySlicesSection(tuple(thumbs)))
    for t in result.tables:
        if t.rows:
            col = t.columns[0]
            sections.append(render.TableSection(t.concept.meaning, col.concept.meaning, col.unit.value,
                                                tuple((r.code.meaning, r.values[0]) for r in t.rows)))
    if result.lesions:
        sections.append(render.LesionSection(tuple(
            render.LesionLine(les.code.meaning, les.location.meaning if les.location else "", les.volume_mm3,
                              les.probability) for les in result.lesions)))
    return sections


def build_secondary_captures(job: Job) -> list[pydicom.Dataset]:
    demo = DEMO_TEXT if job.demo else None
    out: list[pydicom.Dataset] = []
    thumbs: list[render.Thumb] = []
    heat_cache: dict[str, Heatmap | None] = {}
    for ks in sorted(job.result.key_slices, key=lambda k: k.rank):
        src = job.instances_of(ks.series_instance_uid)[ks.slice_index]
        if ks.series_instance_uid not in heat_cache:
            ranked = job.result.ranked_heatmaps(ks.series_instance_uid)
            heat_cache[ks.series_instance_uid] = ranked[0] if ranked else None
        heat = heat_cache[ks.series_instance_uid]
        rgb = render.heat_colors(render.windowed(src), None if heat is None else _scaled(heat)[ks.slice_index],
                                 signed=heat is not None and heat.signed)
        rgb = render.upscale(rgb)
        thumbs.append(render.Thumb(rgb, ks.rank, ks.score, ks.slice_index))
        lines = [f"{job.spec.name} {job.spec.version}  key slice #{ks.rank}",
                 f"slice {ks.slice_index}  score {ks.score:.3f}"]
        if heat is not None:
            lines.append(describe(heat))
        pixels = render.captioned(rgb, lines, demo)
        out.append(_sc(job, pixels, len(out), src, _orientation(src),
                       f"key slice {ks.slice_index} (rank {ks.rank}) with {job.spec.name} heatmap overlay", src))
    findings = [render.FindingLine(f.label, f.code.meaning, f.probability, f.threshold, f.present)
                for f in job.result.findings]
    decided = [c.decided_class.code.meaning for c in job.result.classifications]
    headline = render.verdict(findings, decided)
    page = render.report_page(
        title=f"{job.spec.name} {job.spec.version}",
        subtitle=f"{job.spec.summary} - weights {job.result.card.weights_sha256[:12]}"[:160],
        sections=_sections(job, thumbs), demo_text=demo, headline=headline,
        headline_positive=any(f.present for f in findings) or bool(decided),
    )
    ref = job.reference
    report = _sc(job, page, len(out), ref, _orientation(ref), f"{job.spec.name} report page", None)
    report.PatientOrientation = None  # a page, not an anatomical view: Type 2, left empty
    out.append(report)
    return out
