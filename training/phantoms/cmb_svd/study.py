"""The cmb-svd study: the SWI series with its headers, the mask and truth, the baseline and ``TASK``."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..acquisition import bias_field, rician, to_stored
from ..baseline import read_mask
from ..geometry import render
from ..identity import pick_description
from ..registry import TaskSpec
from ..study import Series, Study
from .scene import _microbleed_mask, _scene
from .sites import lobe_of
from .subject import CLASSES, Subject, plan_subject

TASK_NAME = "cmb-svd"
MASK = "microbleeds"

_DESCRIPTIONS = {
    "siemens": ("SWI_Images", "t2_swi3d_tra_p2_0.9mm_SWI", "SWI_tra", "swi_tra_mIP_Images(SW)"),
    "ge": ("Ax SWAN", "AX SWAN 3D", "SWAN", "Ax SWAN Hemo"),
    "philips": ("SWIp", "sSWIp_tra", "SWI_minIP", "VEN_BOLD_SWI"),
}
_MISLEADING = ("AX T2 FLAIR", "t2_tse_tra", "DWI_b1000", "Ax T1 SE")
_STUDY_DESCRIPTIONS = ("MRI BRAIN WO CONTRAST", "MR Schaedel nativ", "MRI HEAD", "Brain SVD protocol", "NEURO^HEAD")


def generate(rng: np.random.Generator, case_id: str, label: str, size: str) -> Study:
    """One cmb-svd study of subtype ``label`` at ``size`` (``small`` or ``full``)."""
    subject = plan_subject(rng, label, size)
    grid = subject.grid
    out = render(_scene(subject), grid, subsamples=2)
    values = out["signal"] * bias_field(rng, grid, strength=float(rng.uniform(0.08, 0.2)))
    values = rician(rng, values, subject.noise * subject.signal["wm"])
    pixels = to_stored(values)
    mask = _microbleed_mask(out["mb"], out["mb_idw"], len(subject.microbleeds))
    truth = _truth(subject, mask)
    style = subject.identity.scanner.style
    series = Series(
        key="swi",
        kind="SWI",
        modality="MR",
        grid=grid,
        pixels=pixels,
        description=pick_description(rng, _DESCRIPTIONS, style, _MISLEADING),
        image_type=subject.image_type,
        window=_swi_window(pixels),
        attributes=subject.attributes,
        body_part="HEAD" if rng.random() < 0.8 else "BRAIN",
    )
    return Study(
        task=TASK_NAME,
        case_id=case_id,
        label=label,
        labels={c: int(c == label) for c in CLASSES},
        identity=subject.identity,
        study_description=_STUDY_DESCRIPTIONS[int(rng.integers(len(_STUDY_DESCRIPTIONS)))],
        series=[series],
        masks={MASK: ("swi", mask)},
        mask_contrast={MASK: "darker"},
        truth=truth,
    )


def _swi_window(pixels: np.ndarray) -> tuple[float, float]:
    """The display window an SWI arrives with: brain in the grey range, veins and bleeds black."""
    head = pixels[pixels > 0.12 * np.percentile(pixels, 99)]
    ref = float(np.percentile(head, 75)) if head.size else 1.0  # about the white matter
    return float(round(0.85 * ref)), float(round(max(1.1 * ref, 1.0)))


def _truth(subject: Subject, mask: np.ndarray) -> dict:
    """``truth.json``: each microbleed with its mask id, the counts, the mimics, siderosis and WMH."""
    g = subject.grid
    voxel = g.pixel_spacing[0] * g.pixel_spacing[1] * g.slice_spacing
    lesions = []
    for i, b in enumerate(subject.microbleeds, start=1):
        idx = np.argwhere(mask == i)
        if len(idx):
            centroid = subject.voxel_centres(idx.mean(axis=0))[0]
        else:
            centroid = subject.to_patient(b.centre)[0]
        lesions.append({
            "id": i,
            "type": "microbleed",
            "location_class": b.location_class,
            "region": b.region,
            "lobe": lobe_of(b.region) if b.location_class == "lobar" else None,
            "centroid_lps": [round(float(v), 2) for v in centroid],
            "volume_mm3": round(float(len(idx) * voxel), 2),
            "voxels": int(len(idx)),
            "apparent_diameter_mm": round(2 * b.r_app, 2),
            "true_diameter_mm": round(2 * b.r_true, 2),
        })
    counts = {c: sum(b.location_class == c for b in subject.microbleeds) for c in ("lobar", "deep", "infratentorial")}
    where = subject.to_patient(np.array([m["template_lps"] for m in subject.mimic_list]))
    mimics = [
        {"type": m["type"], "location": m["location"], "centroid_lps": [round(float(v), 1) for v in pos],
         "in_mask": False}
        for m, pos in zip(subject.mimic_list, where)
    ]
    sid = subject.siderosis
    return {
        "subtype": subject.label,
        "lesions": lesions,
        "microbleed_counts": {**counts, "total": len(lesions)},
        "mimics": mimics,
        "superficial_siderosis": {"present": sid is not None, **({
            "region": sid["region"], "lobe": lobe_of(sid["region"]),
            "centroid_lps": [round(float(v), 1) for v in subject.to_patient(sid["centre"])[0]],
            "radius_mm": round(sid["radius"], 1)} if sid else {})},
        "white_matter_hyperintensity": {k: round(v, 3) for k, v in subject.wmh_patterns.items()},
        "slice_labels": [int(len(np.unique(s)) - 1) for s in mask],
        "blooming_factor": round(subject.bloom, 3),
        "mask_rule": "voxels whose microbleed darkening (apparent, blooming extent) is at least 35%",
    }


def baseline(study_dir: Path) -> float:
    """Microbleed burden in mm3 from the mask: what a count/volume reading of the SWI gives."""
    img = read_mask(study_dir, MASK)
    spacing = np.prod(img.GetSpacing())
    return float((sitk.GetArrayViewFromImage(img) > 0).sum() * spacing)


TASK = TaskSpec(
    name=TASK_NAME,
    classes=CLASSES,
    generate=generate,
    summary="Brain SWI with microbleeds (one mask id each) and mimics; class = SVD subtype "
    "(arteriolosclerosis / CAA / CADASIL), told by microbleed distribution and WMH pattern, not count",
    baseline=baseline,
    baseline_positive="caa",
)
