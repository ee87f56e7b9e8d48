"""Multiple sclerosis vs cerebral small vessel disease on axial 2D T2-FLAIR.

Both diseases make bright white-matter lesions on FLAIR, in overlapping numbers and volumes;
what tells them apart is where the lesions sit and what shape they have:

- **ms** (ages 20-60): ovoid periventricular lesions whose long axis runs radially away
  from the lateral ventricles (Dawson's fingers), juxtacortical lesions touching the cortex,
  infratentorial lesions (pons, cerebellar peduncles, cerebellar white matter), lesions at
  the callososeptal interface, a few non-specific deep white-matter lesions, in some older
  patients thin frontal caps (non-specific, as in normal ageing).
- **csvd** (ages 50-88): symmetric periventricular caps at the frontal and occipital horns,
  smooth bands lining the ventricle bodies, deep white-matter hyperintensities graded by
  Fazekas (1 punctate foci, 2 beginning confluence, 3 large confluent areas, sparing the
  subcortical U-fibres), lacunes (3-15 mm fluid cavities with a bright gliotic rim in the
  basal ganglia, thalamus and deep white matter), atrophy with wider sulci and ventricles.

Lesions are built in template space (MNI152 2009 + Neuromorphometrics labels) on a 1 mm
lattice: each lesion is an occupancy map over a small box. A subject's warp maps patient
points to template points, where the scene reads the tissue fractions and the lesion
occupancies, so lesions follow the subject's anatomy and get partial volume from the
thick slices like everything else.

Lesion count and volume overlap between the classes (heavy MS against mild cSVD), so the
baseline, the bright-lesion volume, falls short; the location and shape patterns do not.

Masks: ``lesions`` (hyperintense lesions, brighter) and ``lacunes`` (fluid cavities,
darker), both on the FLAIR grid, one id per lesion, ids 1..n unique across the two masks;
lesions that leave no voxel on the grid (partial volume below 40 %) are counted in
``subvisible_lesions`` and left out.

The package: ``sites`` (candidate lesion sites and distance maps in the template),
``lesions`` (lesion shapes), ``disease`` (each class's lesion pattern), ``field`` (all of
a subject's lesions painted on one lattice box), ``scene`` (the FLAIR grid and what the
renderer samples); this module assembles the study.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from .. import acquisition, anatomy, head, identity  # noqa: F401  (anatomy: the tests reach it through the package)
from ..baseline import read_mask
from ..geometry import SubjectWarp, render
from ..registry import TaskSpec
from ..study import Series, Study
from .disease import CSVD_TYPES, MS_TYPES, _draw_disease
from .field import _paint
from .lesions import _volume  # noqa: F401  (the tests measure lesions with it)
from .scene import _BRAIN_CENTRE, _grid, _scene, _ventricle_widening
from .sites import _sites

logger = logging.getLogger(__name__)

NAME = "ms-csvd"
CLASSES = ("ms", "csvd")
MASK_CONTRAST = {"lesions": "brighter", "lacunes": "darker"}

_DESCRIPTIONS = {
    "siemens": ("t2_tirm_tra_dark-fluid", "t2_tirm_tra_dark-fluid_4mm", "t2_flair_tra_p2", "FLAIR_tra"),
    "ge": ("Ax T2 FLAIR", "AX FLAIR", "Ax T2 FLAIR fs", "AX T2 FLAIR 5mm"),
    "philips": ("T2W_FLAIR", "FLAIR_tra", "sT2W_FLAIR_TRA", "T2W_FLAIR_SENSE"),
}
_MISLEADING = ("t2_tse_tra", "Ax T2 FSE", "T1W_SE_TRA", "DWI_tra", "survey")
_STUDY_DESCRIPTIONS = ("MRI BRAIN WO CONTRAST", "MR HEAD W/O", "Brain^Routine", "NEURO^BRAIN", "MRT Schaedel nativ", "")
_MASK_FRACTION = 0.4  # a voxel belongs to a lesion's mask when the lesion fills this much of it


def _flair_window(stored: np.ndarray) -> tuple[float, float]:
    """A FLAIR window from black to the brightest tissue, so that lesions stand out of the
    cortex instead of sharing its white (the histogram window saturates both)."""
    top = float(np.percentile(stored, 99.9)) or 1.0
    return float(round(top / 2)), float(round(top))


def generate(rng: np.random.Generator, case_id: str, label: str, size: str) -> Study:
    """One FLAIR study of class ``label`` (``ms`` or ``csvd``) at ``size`` (``small``/``full``)."""
    if label not in CLASSES:
        raise ValueError(f"label must be one of {CLASSES}, got {label!r}")
    if size not in ("small", "full"):
        raise ValueError(f"size must be small or full, got {size!r}")
    s = _sites()
    t = s.template
    ms = label == "ms"
    ident = identity.make_identity(rng, "MR", (20, 60) if ms else (50, 88))
    age = ident.age_years
    disease = _draw_disease(rng, s, label, age)
    lesions, atrophy = disease.lesions, disease.atrophy
    params = head.random_head(rng, age, atrophy)
    field_ = _paint(lesions, s)

    warp = SubjectWarp(
        rng,
        centre=rng.normal(0.0, [3.0, 5.0, 5.0]),
        angles_deg=tuple(rng.normal(0.0, [7.0, 3.0, 3.0])),
        scale=tuple(rng.uniform(0.92, 1.08, 3)),
        warp_mm=float(rng.uniform(2.0, 3.5)),
        template_centre=_BRAIN_CENTRE,
    )
    widening = 0.04 + 0.3 * atrophy
    warp.extra.append(_ventricle_widening(s.ventricle_centres, widening))
    grid = _grid(rng, warp, size)

    signal = acquisition.tissue_signal(rng, "FLAIR", jitter=0.06)
    # Thin full-size slices need three sub-samples; two keep the small ones fast.
    fr = render(_scene(t, params, field_, warp), grid, subsamples=3 if size == "full" else 2)
    clean = acquisition.mix(fr, signal) + fr["lesion_sig"] * np.float32(signal["wm"])
    image = clean * acquisition.bias_field(rng, grid, float(rng.uniform(0.08, 0.2)))
    image = acquisition.rician(rng, image, float(rng.uniform(0.02, 0.045)) * signal["wm"])
    pixels = acquisition.to_stored(image)

    # A voxel is in a lesion's mask when the lesion fills enough of it to show: brighter than
    # white matter (a cap's voxel half full of ventricular fluid is not), or fluid-dark.
    wm = np.float32(signal["wm"])
    shows_bright = (fr["bright"] >= _MASK_FRACTION) & (clean >= 1.25 * wm)
    shows_fluid = (fr["cavity"] >= _MASK_FRACTION) & (clean <= 0.7 * wm)
    lesion_mask = np.where(shows_bright, np.rint(fr["bright_id"]), 0).astype(np.uint16)
    lacune_mask = np.where(shows_fluid, np.rint(fr["cavity_id"]), 0).astype(np.uint16)

    attrs, image_type = acquisition.mr_attributes(rng, "FLAIR", ident.scanner, grid)
    description = identity.pick_description(rng, _DESCRIPTIONS, ident.scanner.style, _MISLEADING)
    series = Series(
        key="flair",
        kind="FLAIR",
        modality="MR",
        grid=grid,
        pixels=pixels,
        description=description,
        image_type=image_type,
        window=_flair_window(pixels),
        attributes=attrs,
        body_part="HEAD",
        protocol=description or "FLAIR",
    )

    # Lesions too small or too thin for this grid leave no mask; the others are numbered 1..n.
    voxel_mm3 = grid.pixel_spacing[0] * grid.pixel_spacing[1] * grid.slice_spacing
    scale_det = float(np.prod(warp.scale))
    renumber = np.zeros(len(lesions) + 1, np.uint16)
    lesion_rows = []
    names = {v: k for k, v in t.label_ids.items()}
    for i, les in enumerate(lesions, start=1):
        mask = lacune_mask if les.cavity is not None else lesion_mask
        idx = np.argwhere(mask == i)
        if not len(idx):
            continue
        renumber[i] = len(lesion_rows) + 1
        region = int(t.labels.sample(np.asarray(les.centre, np.float32)[None], order=0)[0])
        lesion_rows.append({
            "id": int(renumber[i]),
            "mask": les.mask,
            "type": les.type,
            "location": les.location,
            "region": names.get(region, "unlabelled"),
            "side": "midline" if abs(les.centre[0]) < 3 else ("left" if les.centre[0] > 0 else "right"),
            "centroid_lps": [round(float(v), 2) for v in grid.index_to_lps(idx).mean(axis=0)],
            "volume_mm3": round(len(idx) * voxel_mm3, 1),
            "true_volume_mm3": round(les.volume_mm3 * scale_det, 1),
            "slices": sorted({int(k) for k in idx[:, 0]}),
            "flair_level": round(les.level, 3),
            **les.extra,
        })
    lesion_mask = renumber[lesion_mask]
    lacune_mask = renumber[lacune_mask]
    nz = grid.shape[0]
    per_slice_ids = [sorted({int(v) for v in np.unique(lesion_mask[k]) if v} | {int(v) for v in np.unique(lacune_mask[k]) if v})
                     for k in range(nz)]
    shown = [int(bool(ids)) for ids in per_slice_ids]
    bright_rows = [r for r in lesion_rows if r["mask"] == "lesions"]
    truth = {
        "class": label,
        "age": age,
        "atrophy": round(atrophy, 3),
        "ventricle_widening": round(widening, 3),
        "fazekas": disease.grade,
        "fazekas_periventricular": disease.pv_grade,
        "ms_burden": None if disease.burden is None else round(disease.burden, 3),
        "lesions": lesion_rows,
        "lesion_count": len(lesion_rows),
        "bright_lesion_count": len(bright_rows),
        "lacune_count": len(lesion_rows) - len(bright_rows),
        "subvisible_lesions": len(lesions) - len(lesion_rows),
        "lesion_volume_mm3": round(sum(r["volume_mm3"] for r in bright_rows), 1),
        "lesion_true_volume_mm3": round(sum(les.volume_mm3 for les in lesions if les.cavity is None) * scale_det, 1),
        "counts_by_type": {k: sum(r["type"] == k for r in lesion_rows) for k in (MS_TYPES if ms else CSVD_TYPES)},
        "slice_lesion_ids": per_slice_ids,
        "per_slice_labels": {c: shown if c == label else [0] * nz for c in CLASSES},
    }
    logger.debug("ms-csvd study made", extra={"case_id": case_id, "label": label, "lesions": len(lesion_rows),
                                                "shape": grid.shape})
    return Study(
        task=NAME,
        case_id=case_id,
        label=label,
        labels={c: int(c == label) for c in CLASSES},
        identity=ident,
        study_description=_STUDY_DESCRIPTIONS[int(rng.integers(len(_STUDY_DESCRIPTIONS)))],
        series=[series],
        masks={"lesions": ("flair", lesion_mask), "lacunes": ("flair", lacune_mask)},
        mask_contrast=dict(MASK_CONTRAST),
        truth=truth,
    )


def baseline(study_dir: Path) -> float:
    """Total volume (mm³) of the bright-lesion mask: the lesion load, blind to where lesions sit."""
    import SimpleITK as sitk

    img = read_mask(study_dir, "lesions")
    voxel = float(np.prod(img.GetSpacing()))
    return float(np.count_nonzero(sitk.GetArrayViewFromImage(img))) * voxel


TASK = TaskSpec(
    name=NAME,
    classes=CLASSES,
    generate=generate,
    summary="axial T2-FLAIR: multiple sclerosis vs cerebral small vessel disease (lesion pattern, Fazekas, lacunes)",
    baseline=baseline,
    baseline_positive="csvd",
)
