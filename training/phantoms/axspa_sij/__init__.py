"""Sacroiliac-joint MR for axial spondyloarthritis (MSFANet's task: HLA-B27-negative axSpA).

One study, two coronal-oblique series of the sacroiliac joints on one frame of reference but
on different grids (matrix, pixel spacing, slice thickness, count and offset): a T1 turbo
spin echo and a fat-suppressed fluid-sensitive series (STIR, or T2 SPAIR on some studies).
Slices are parallel to the long axis of the sacrum: a coronal grid turned about the
left-right axis by the subject's sacral tilt (plus a few degrees of planning error).

The anatomy is parametric (:mod:`.pelvis`, rendered to tissue fractions by :mod:`.tissues`);
classes ``axspa`` and ``non_axspa`` (normal, degenerative change, osteitis condensans ilii)
differ by their lesions (:mod:`.lesions`). This module acquires the study: grids, images,
headers, masks, truth, and the task's baseline.

Masks (one id per lesion, ids shared by both series): ``<kind>_t1`` and ``<kind>_fs`` for
kind in bme, erosion, sclerosis, fat, osteophyte, and ``lesions_t1``/``lesions_fs`` of every
kind together. Labels: one-hot over ``axspa`` and ``non_axspa``; per-slice labels on the T1
(the slices with a lesion of the axSpA pattern). Truth: the class and its subtype, sex and
age, every lesion (kind, side, bone, joint quadrant, centroid and volume on both grids),
the joint ROI box of each side in LPS and in voxel indices of each series, per-slice ids.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy.spatial.transform import Rotation

from .. import acquisition
from ..baseline import load_truth, read_series
from ..geometry import Grid, SubjectWarp, render
from ..identity import make_identity, pick_description
from ..registry import TaskSpec
from ..study import Series, Study
from .lesions import KINDS, SUBTYPES, Lesion, make_lesions
from .pelvis import Pelvis, random_pelvis
from .tissues import _anatomy, _Texture

CLASSES = ("axspa", "non_axspa")
# Which way each lesion kind differs from its surroundings on each series (osteophytes are
# bone beside soft tissue: no single direction).
MASK_CONTRAST = {
    "bme_t1": "darker", "bme_fs": "brighter",
    "erosion_fs": "brighter",
    "sclerosis_t1": "darker", "sclerosis_fs": "darker",
    "fat_t1": "brighter", "fat_fs": "darker",
}
_TEMPLATE_CENTRE = np.array([20.0, -20.0, 40.0])  # puts the sacral frame inside SubjectWarp's lattice

# Relative signal per tissue (fluid ~1). Marrow is a mix of its fat and water components.
SIGNAL = {
    "T1": {"fat": 1.0, "mfat": 0.98, "mwater": 0.32, "muscle": 0.33, "cortex": 0.03, "cartilage": 0.40,
           "ligament": 0.14, "disc": 0.30, "nerve": 0.36, "csf": 0.12, "bowel": 0.30, "gas": 0.0,
           "artery": 0.05, "vein": 0.22, "edema": 0.22, "sclerosis": 0.06, "erosion": 0.22, "air": 0.0},
    "STIR": {"fat": 0.05, "mfat": 0.04, "mwater": 0.34, "muscle": 0.20, "cortex": 0.03, "cartilage": 0.36,
             "ligament": 0.12, "disc": 0.55, "nerve": 0.50, "csf": 1.0, "bowel": 0.55, "gas": 0.0,
             "artery": 0.05, "vein": 0.50, "edema": 0.88, "sclerosis": 0.05, "erosion": 0.80, "air": 0.0},
    "T2_SPAIR": {"fat": 0.07, "mfat": 0.05, "mwater": 0.30, "muscle": 0.15, "cortex": 0.03, "cartilage": 0.32,
                 "ligament": 0.10, "disc": 0.60, "nerve": 0.45, "csf": 1.0, "bowel": 0.60, "gas": 0.0,
                 "artery": 0.05, "vein": 0.45, "edema": 0.82, "sclerosis": 0.05, "erosion": 0.78, "air": 0.0},
}

_DESCRIPTIONS = {
    "T1_TSE": {
        "siemens": ("t1_tse_cor_obl", "t1_tse_cor_SIG", "T1 TSE COR OBL", "t1_tse_cor_p2"),
        "ge": ("COR OBL T1 FSE", "OBL COR T1", "Cor T1 SIJ"),
        "philips": ("T1W_TSE_COR_OBL", "T1W_TSE cor SIJ", "sT1W_TSE_COR"),
    },
    "STIR": {
        "siemens": ("tirm_cor_obl", "stir_tse_cor_obl", "t2_tirm_cor_SIG", "TIRM COR OBL"),
        "ge": ("COR OBL STIR", "OBL COR STIR FSE", "Cor STIR SIJ"),
        "philips": ("STIR_TSE_COR_OBL", "STIR cor SIJ", "sSTIR_COR"),
    },
    "T2_SPAIR": {
        "siemens": ("t2_tse_spair_cor_obl", "t2_tse_fs_cor", "T2 SPAIR COR OBL"),
        "ge": ("COR OBL T2 FS", "OBL COR T2 FSE FS", "Cor T2 FS SIJ"),
        "philips": ("T2W_SPAIR_COR_OBL", "T2W_TSE_SPAIR cor", "sT2W_SPAIR_COR"),
    },
}
_MISLEADING = {"T1_TSE": ("SIJ cor obl", "ISG", "cor 2", "t2_tse_cor"), "STIR": ("SIJ cor obl", "ISG", "T1 cor"),
               "T2_SPAIR": ("SIJ cor obl", "ISG", "T1 cor")}
_STUDY_DESCRIPTIONS = {
    "siemens": ("MRT ISG nativ", "MR Sacroiliac joints", "MRI SIJ"),
    "ge": ("MRI SACROILIAC JOINTS WO", "MR SI JOINTS", "MRI PELVIS SIJ"),
    "philips": ("MR SIG", "SI-joints", "MRI sacroiliac joints"),
}
_COILS = {"siemens": "Body_18;SP", "ge": "GEM PA", "philips": "dS Torso"}


# --------------------------------------------------------------------------- acquisition

def _grids(rng: np.random.Generator, size: str, centre: np.ndarray, tilt: float) -> tuple[Grid, Grid]:
    """The T1 and fat-suppressed grids: one orientation, different matrices, slices and offsets."""
    rot = Rotation.from_euler("x", tilt, degrees=True).as_matrix()
    normal = rot @ np.array([0.0, 1.0, 0.0])
    if size == "full":
        fov = rng.uniform(230, 270)
        cols1 = int(rng.choice([320, 352, 384]))
        cols2 = int(rng.choice([288, 320]))
        aspect = rng.uniform(0.75, 0.9)
        th1 = float(rng.choice([3.0, 3.5, 4.0]))
        th2 = float(rng.choice([3.0, 3.5, 4.0]))
        cover = rng.uniform(58, 72)
        n_lim, row_lim = (12, 20), (256, 320)
    elif size == "small":
        fov = rng.uniform(200, 240)
        cols1 = int(rng.choice([96, 112, 128]))
        cols2 = int(rng.choice([80, 96, 112]))
        aspect = rng.uniform(0.75, 0.9)
        th1 = float(rng.choice([5.0, 5.5]))
        th2 = float(rng.choice([5.0, 6.0]))
        cover = rng.uniform(55, 65)
        n_lim, row_lim = (8, 12), (56, 112)
    else:
        raise ValueError(f"size must be small or full, got {size!r}")
    grids = []
    for cols, th, shift in ((cols1, th1, 0.0), (cols2, th2, rng.uniform(-0.5, 0.5))):
        px = round(float(fov * rng.uniform(0.97, 1.03) / cols), 4)
        rows = int(np.clip(round(cols * aspect / 8) * 8, *row_lim))
        spacing = round(th * float(rng.choice([1.0, 1.1, 1.2])), 2)
        nz = int(np.clip(round(cover / spacing), *n_lim))
        c = centre + normal * shift * spacing + rot @ np.array([rng.uniform(-4, 4), 0.0, rng.uniform(-4, 4)])
        grids.append(Grid.centred(c, (nz, rows, cols), (px, px), spacing, th, rot, base="coronal"))
    return grids[0], grids[1]


def _scene(pel: Pelvis, lesions: list[Lesion], warp: SubjectWarp, tex: _Texture):
    tc = _TEMPLATE_CENTRE.astype(np.float32)

    def scene(points: np.ndarray) -> dict[str, np.ndarray]:
        return _anatomy(warp(points) - tc, pel, lesions, tex)

    return scene


def _image(rng: np.random.Generator, fr: dict[str, np.ndarray], grid: Grid, contrast: str) -> np.ndarray:
    signal = {k: float(v * (1.0 + rng.uniform(-0.05, 0.05))) for k, v in SIGNAL[contrast].items()}
    signal["vein"] *= float(rng.uniform(0.6, 1.5))  # slow venous flow: from dark to bright
    image = acquisition.mix(fr, signal)
    if contrast == "T2_SPAIR":  # fat suppression fails towards the edges of the field of view
        nx = grid.shape[2]
        x = np.abs(np.linspace(-1.0, 1.0, nx, dtype=np.float32))
        fail = np.clip((x - 0.7) / 0.3, 0.0, 1.0)[None, None, :] * np.float32(rng.uniform(0.0, 0.6))
        image = image + (fr.get("fat", 0.0) + fr.get("mfat", 0.0)) * fail
    image = image * acquisition.bias_field(rng, grid, float(rng.uniform(0.1, 0.25)))
    sigma = float(rng.uniform(0.018, 0.03) if contrast == "T1" else rng.uniform(0.022, 0.04))
    return acquisition.rician(rng, image, sigma)


def _roi_boxes(joint: dict[str, np.ndarray], grid: Grid, grids: dict[str, Grid], margin: float = 12.0) -> dict:
    """Per side: an oriented box around the cartilaginous joint (+ margin), in LPS and per series."""
    out = {}
    for side, frac in joint.items():
        idx = np.argwhere(frac >= 0.25)
        if idx.size == 0:
            idx = np.argwhere(frac >= 0.5 * frac.max())
        lo, hi = idx.min(axis=0).astype(float), idx.max(axis=0).astype(float)
        pad = np.array([0.5, margin / grid.pixel_spacing[0], margin / grid.pixel_spacing[1]])
        lo, hi = lo - pad, hi + pad
        corners = np.array([[a, b, c] for a in (lo[0], hi[0]) for b in (lo[1], hi[1]) for c in (lo[2], hi[2])])
        lps = grid.index_to_lps(corners)
        per_series = {}
        for key, g in grids.items():
            ci = g.lps_to_index(lps)
            i0 = np.clip(np.floor(ci.min(axis=0) + 0.5), 0, np.array(g.shape) - 1).astype(int)
            i1 = np.clip(np.ceil(ci.max(axis=0) - 0.5), 0, np.array(g.shape) - 1).astype(int)
            per_series[key] = {"index_min": i0.tolist(), "index_max": i1.tolist()}
        out[side] = {
            "lps_corners": np.round(lps, 2).tolist(),
            "lps_centre": np.round(lps.mean(axis=0), 2).tolist(),
            "lps_min": np.round(lps.min(axis=0), 2).tolist(),
            "lps_max": np.round(lps.max(axis=0), 2).tolist(),
            "series": per_series,
        }
    return out


def _lesion_masks(lesions: list[Lesion], fr: dict[str, np.ndarray], shape: tuple[int, int, int]) -> dict[str, np.ndarray]:
    masks = {kind: np.zeros(shape, np.uint8) for kind in KINDS}
    for les in lesions:
        o = fr.get(f"_les{les.id}")
        if o is None or float(o.max()) <= 0.05:
            continue
        m = o >= 0.5 if float(o.max()) >= 0.5 else o >= 0.6 * float(o.max())
        target = masks[les.kind]
        target[m & (target == 0)] = les.id
    return masks


def _location(les: Lesion, pel: Pelvis) -> dict:
    frac = (les.centre[2] - pel.z_lo) / max(pel.z_hi - pel.z_lo, 1.0)
    level = "upper" if frac > 0.5 else "lower"
    front, back = -pel.h_l(les.centre[2]), pel.y_cart(les.centre[2])
    part = "anterior" if les.centre[1] < (front + back) / 2 else "posterior"
    return {"side": "left" if les.side > 0 else "right", "bone": les.bone, "level": level, "part": part,
            "quadrant": f"{level}_{les.bone}" if les.bone != "bridging" else f"{level}_anterior_margin"}


def _age_sex(rng: np.random.Generator, subtype: str) -> tuple[tuple[int, int], str | None]:
    if subtype == "axspa":
        return (18, 48), None
    if subtype == "oci":
        return (22, 45), "F" if rng.random() < 0.92 else None
    if subtype == "degenerative":
        return (45, 80), None
    return (18, 70), None


def generate(rng: np.random.Generator, case_id: str, label: str, size: str, subtype: str | None = None) -> Study:
    """One sacroiliac MR study of class ``label`` (axspa or non_axspa) at ``size``.

    ``subtype`` (normal, degenerative or oci for non_axspa) is drawn when not given
    (35/35/30 %).
    """
    if label not in CLASSES:
        raise ValueError(f"label must be one of {CLASSES}, got {label!r}")
    if size not in ("small", "full"):
        raise ValueError(f"size must be small or full, got {size!r}")
    if label == "axspa":
        drawn = "axspa"
    else:
        drawn = str(rng.choice(SUBTYPES["non_axspa"], p=[0.35, 0.35, 0.30]))
    if subtype is not None and subtype not in SUBTYPES[label]:
        raise ValueError(f"subtype {subtype!r} is not one of {label}'s: {', '.join(SUBTYPES[label])}")
    subtype = subtype or drawn
    ages, want_sex = _age_sex(rng, subtype)
    ident = make_identity(rng, "MR", ages)
    while want_sex is not None and ident.sex != want_sex:
        ident = make_identity(rng, "MR", ages)
    pel = random_pelvis(rng, ident.sex, ident.age_years, subtype == "degenerative")
    lesions = make_lesions(rng, pel, subtype)
    tex = _Texture(rng)

    centre = np.array([rng.uniform(-10, 10), rng.uniform(-15, 15), rng.uniform(-20, 20)])
    sx = rng.uniform(0.92, 1.08) * (1.04 if ident.sex == "F" else 1.0)
    warp = SubjectWarp(rng, centre, angles_deg=(pel.tilt, rng.uniform(-3, 3), rng.uniform(-4, 4)),
                       scale=(sx, rng.uniform(0.92, 1.08), rng.uniform(0.92, 1.08)),
                       warp_mm=float(rng.uniform(2.0, 4.0)), template_centre=_TEMPLATE_CENTRE)
    y_mid = 0.5 * (-pel.h_l(0.0) + pel.y_cart(pel.z_hi)) + rng.uniform(-4, 4)
    z_mid = 0.5 * (pel.z_top + pel.z_bot) + rng.uniform(-5, 10)
    stack_centre = warp.to_patient(np.array([0.0, y_mid, z_mid]) + _TEMPLATE_CENTRE)
    g_t1, g_fs = _grids(rng, size, stack_centre, pel.tilt + rng.uniform(-4, 4))
    grids = {"t1": g_t1, "fs": g_fs}
    fs_seq = "STIR" if rng.random() < 0.65 else "T2_SPAIR"

    scene = _scene(pel, lesions, warp, tex)
    sub = 3 if size == "full" else 2
    frs = {key: render(scene, g, sub) for key, g in grids.items()}

    scanner = ident.scanner
    body_part = "PELVIS" if rng.random() < 0.6 else "SSPINE"
    protocol = str(rng.choice(["SIJ", "ISG", "Sacroiliac joints", "SI joints axSpA protocol"]))
    series = []
    for key, seq, contrast in (("t1", "T1_TSE", "T1"), ("fs", fs_seq, fs_seq)):
        g = grids[key]
        image = _image(rng, frs[key], g, contrast)
        pixels = acquisition.to_stored(image)
        attrs, image_type = acquisition.mr_attributes(rng, seq, scanner, g)
        attrs["ReceiveCoilName"] = _COILS[scanner.style]
        attrs["PercentPhaseFieldOfView"] = round(100.0 * g.shape[1] / g.shape[2], 1)
        series.append(Series(
            key=key, kind="T1" if key == "t1" else ("STIR" if seq == "STIR" else "T2FS"), modality="MR", grid=g,
            pixels=pixels, description=pick_description(rng, _DESCRIPTIONS[seq], scanner.style, _MISLEADING[seq]),
            image_type=image_type, window=acquisition.mr_window(pixels), attributes=attrs, body_part=body_part, patient_position="FFS",
            protocol=protocol,
        ))

    masks, lesion_truth = {}, {les.id: {} for les in lesions}
    per_slice = {}
    for key, g in grids.items():
        km = _lesion_masks(lesions, frs[key], g.shape)
        vox = g.pixel_spacing[0] * g.pixel_spacing[1] * g.slice_spacing
        for kind, arr in km.items():
            masks[f"{kind}_{key}"] = (key, arr)
        masks[f"lesions_{key}"] = (key, np.maximum.reduce(list(km.values())))  # every kind, the same ids
        ids_per_slice = [[] for _ in range(g.shape[0])]
        for les in lesions:
            m = km[les.kind] == les.id
            if not m.any():
                lesion_truth[les.id][key] = {"voxels": 0}
                continue
            idx = np.argwhere(m)
            lesion_truth[les.id][key] = {
                "voxels": int(m.sum()), "volume_mm3": round(float(m.sum() * vox), 1),
                "centroid_lps": np.round(g.index_to_lps(idx.mean(axis=0)), 2).tolist(),
                "slices": sorted({int(k) for k in idx[:, 0]}),
            }
            for k in lesion_truth[les.id][key]["slices"]:
                ids_per_slice[k].append(les.id)
        per_slice[key] = ids_per_slice
    lesions_out = []
    for les in lesions:
        t1 = lesion_truth[les.id]["t1"]
        lesions_out.append({
            "id": les.id, "type": les.kind, "pattern": les.pattern, **_location(les, pel),
            "location": f"{'left' if les.side > 0 else 'right'}_{les.bone}",
            "strength": round(les.strength, 3),
            "centroid_lps": t1.get("centroid_lps"), "volume_mm3": t1.get("volume_mm3", 0.0),
            "series": lesion_truth[les.id],
        })
    joint = {"left": frs["t1"]["_jl"], "right": frs["t1"]["_jr"]}
    rois = _roi_boxes(joint, g_t1, grids)

    contrast = {k: v for k, v in MASK_CONTRAST.items() if masks[k][1].any()}
    return Study(
        task="axspa-sij", case_id=case_id, label=label, labels={c: int(label == c) for c in CLASSES}, identity=ident,
        study_description=pick_description(rng, _STUDY_DESCRIPTIONS, scanner.style, p_misleading=0.0),
        series=series, masks=masks, mask_contrast=contrast,
        truth={
            "diagnosis": subtype,
            "sex": ident.sex,
            "age": ident.age_years,
            "fat_suppression": fs_seq,
            "sacral_tilt_deg": round(pel.tilt, 1),
            "joint_roi": rois,
            "lesions": lesions_out,
            "per_slice_lesion_ids": per_slice,
            # On the T1: the slices that show axSpA (a lesion of its pattern); none show "non_axspa".
            "per_slice_labels": {
                "axspa": [int(any(les.pattern == "axspa" for les in lesions if les.id in ids)) for ids in per_slice["t1"]],
                "non_axspa": [0] * g_t1.shape[0],
            },
        },
    )


# --------------------------------------------------------------------------- baseline

def baseline(study_dir: Path) -> float:
    """Naive detector: share of bright voxels on the fat-suppressed series inside both joint
    ROI boxes (brighter than 2.2 × the box's median)."""
    truth = load_truth(study_dir)
    img = sitk.GetArrayFromImage(read_series(study_dir, "fs")).astype(np.float32)
    bright = total = 0
    for side in truth["joint_roi"].values():
        (k0, r0, c0), (k1, r1, c1) = side["series"]["fs"]["index_min"], side["series"]["fs"]["index_max"]
        box = img[k0:k1 + 1, r0:r1 + 1, c0:c1 + 1]
        bright += int((box > 2.2 * float(np.median(box))).sum())
        total += box.size
    return bright / max(total, 1)


TASK = TaskSpec(
    name="axspa-sij",
    classes=CLASSES,
    generate=generate,
    summary="sacroiliac MR (coronal-oblique T1 + STIR/T2-SPAIR): axSpA (BME, erosions, sclerosis, fat "
            "metaplasia) vs normal, degenerative change and osteitis condensans ilii",
    baseline=baseline,
    baseline_positive="axspa",
)
