"""Alzheimer's disease versus normal ageing on a 3D T1 (MPRAGE-like) brain MRI (ad-lrp).

Anatomy: the template head warped per subject (size, shape, head pitch/roll/yaw, position in
the field of view), acquired sagittally or axially as 3D inversion-prepared gradient echo
(Siemens MPRAGE, GE BRAVO, Philips 3D TFE headers), with T1 tissue contrast, partial volume
over the slice, bias field and Rician noise. Ages 60-90 in both classes.

Atrophy is shape, not intensity: a smooth displacement field in template space moves the
boundaries of Neuromorphometrics regions. Each region gets a *depth* in mm: a positive depth
pulls the region's boundary in by about that much (it shrinks), a negative one pushes it out
(ventricles enlarge). The CSF spaces beside each temporal lobe (temporal horn, choroidal
fissure, ambient cistern, temporal sulci) enlarge with the atrophy, so that CSF, not white
matter, fills what the grey matter loses. Each region's blurred outline gives a unit velocity
field; the depths weight them into one velocity, and exponentiating it (scaling and squaring)
gives a diffeomorphic pull-back displacement, so the brain never folds. The skull, scalp and
extra-axial shells stay put; only the brain is sampled through the displacement
(``head_tissues(..., q_brain=...)``), and the CSF gap under the skull widens instead.

- Controls (``cn``): normal ageing. Global mild atrophy and sulcal widening growing with age
  (``head.random_head``), ventricular enlargement with age and a wide personal spread, mild
  hippocampal and temporal volume loss.
- Alzheimer's (``ad``): the same ageing plus the AD pattern, scaled by severity (MMSE-like)
  and by age: hippocampus, entorhinal cortex, amygdala, parahippocampal gyrus, temporal pole,
  inferior and middle temporal gyri shrink, the temporal horns (inferior lateral ventricles)
  balloon and the lateral ventricles widen, often asymmetrically.

Global measures (brain volume fraction, CSF or ventricle volume) overlap between the classes
because normal ageing varies; the medial temporal pattern separates them.

Truth: class, age, MMSE, severity, and per atlas region the depth applied, the relative
volume change it makes in template space, and the voxels counted on the series grid with and
without the AD displacement (and without any regional change); the mask ``regions`` is the
label map of those regions on the series grid (ids are atlas ids).
"""
from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage
from scipy.spatial.transform import Rotation

from .acquisition import bias_field, mix, mr_attributes, mr_window, rician, tissue_signal, to_stored
from .anatomy import BrainTemplate, Volume, load_template
from .baseline import read_series
from .geometry import Grid, SubjectWarp, render
from .head import head_tissues, random_head
from .identity import make_identity, pick_description
from .registry import TaskSpec
from .study import Series, Study

CLASSES = ("ad", "cn")

# Regions whose boundaries move, with the depth (mm) each gets at full AD severity (positive:
# shrinks) and at the far end of normal ageing (age 90, average person). Names without a side
# are taken on both sides.
_AD_DEPTH = {
    "Hippocampus": 1.7,
    "Amygdala": 1.5,
    "Ent_entorhinal_area": 1.5,
    "PHG_parahippocampal_gyrus": 1.1,
    "TMP_temporal_pole": 1.0,
    "ITG_inferior_temporal_gyrus": 0.8,
    "MTG_middle_temporal_gyrus": 0.7,
    "Inf_Lat_Vent": -1.6,
    "Lateral_Ventricle": -0.6,
    "temporal_CSF": -1.2,
}
_AGEING_DEPTH = {
    "Hippocampus": 0.45,
    "Amygdala": 0.3,
    "Ent_entorhinal_area": 0.3,
    "PHG_parahippocampal_gyrus": 0.25,
    "TMP_temporal_pole": 0.2,
    "ITG_inferior_temporal_gyrus": 0.15,
    "MTG_middle_temporal_gyrus": 0.15,
    "Inf_Lat_Vent": -0.6,
    "Lateral_Ventricle": -1.8,
    "3rd_Ventricle": -0.9,
    "temporal_CSF": -0.3,
}
MEDIAL_TEMPORAL = ("Hippocampus", "Amygdala", "Ent_entorhinal_area", "PHG_parahippocampal_gyrus")
LATERAL_TEMPORAL = ("TMP_temporal_pole", "ITG_inferior_temporal_gyrus", "MTG_middle_temporal_gyrus")
_VENTRICLE_PARTS = ("Inf_Lat_Vent", "Lateral_Ventricle", "3rd_Ventricle")
_CSF_FIELDS = ("Left_temporal_CSF", "Right_temporal_CSF")
_CSF_REACH_MM = 8.0  # CSF this close to a temporal region counts as its CSF space
_SIGMA_MM = 3.0  # blur of the depth map: how far from a boundary the tissue moves with it
_SQUARINGS = 3  # scaling and squaring steps (velocity / 8: under 1 mm a step)
_FIELD_STEP = 2  # the displacement lives on every 2nd atlas voxel (3 mm)


def region_names() -> list[str]:
    """The atlas regions this task changes and reports, in a fixed order."""
    names = []
    for part in (*MEDIAL_TEMPORAL, *LATERAL_TEMPORAL, *_VENTRICLE_PARTS):
        names += [part] if part.startswith("3rd") else [f"Left_{part}", f"Right_{part}"]
    return names


def _group(name: str) -> str:
    part = name.split("_", 1)[1] if name.startswith(("Left_", "Right_")) else name
    if part in MEDIAL_TEMPORAL:
        return "medial_temporal"
    if part in LATERAL_TEMPORAL:
        return "lateral_temporal"
    return "ventricle"


def field_names() -> list[str]:
    """Everything a depth can be given to: the atlas regions and the temporal CSF spaces."""
    return [*region_names(), *_CSF_FIELDS]


@dataclasses.dataclass(frozen=True)
class _Lattice:
    """Where displacement fields live: a crop of the atlas around the changed regions."""

    labels: np.ndarray  # atlas ids on the crop (1.5 mm)
    affine: np.ndarray  # crop index -> LPS
    field_affine: np.ndarray  # field lattice index (every _FIELD_STEP atlas voxel) -> LPS
    unit_fields: dict[str, np.ndarray]  # name -> (3, *field shape) velocity per mm of depth
    region_index: dict[int, np.ndarray]  # atlas id -> (3, n) its voxels in field-lattice index units


def _unit_field(occupancy: np.ndarray, a_inv: np.ndarray) -> np.ndarray:
    """Velocity that pulls the boundary of ``occupancy`` (crop lattice) in by 1 mm per mm of depth."""
    phi = ndimage.gaussian_filter(occupancy.astype(np.float32), _SIGMA_MM / 1.5, mode="constant")
    grad = np.einsum("ji,j...->i...", a_inv, np.stack(np.gradient(phi)))  # d(phi)/d(LPS)
    field = -grad[:, ::_FIELD_STEP, ::_FIELD_STEP, ::_FIELD_STEP]
    # One mm of depth moves the boundary by about one mm, thin or thick.
    return (field / np.sqrt((field**2).sum(axis=0)).max()).astype(np.float32)


@functools.lru_cache(maxsize=1)
def _lattice() -> _Lattice:
    """Per-region unit velocity fields (cached per process; built from the templates only)."""
    template = load_template()
    ids = template.ids(*region_names())
    atlas = template.labels
    idx = np.argwhere(np.isin(atlas.array, ids))
    margin = int(np.ceil(4 * _SIGMA_MM / 1.5))
    lo = np.maximum(idx.min(axis=0) - margin, 0)
    hi = np.minimum(idx.max(axis=0) + margin + 1, atlas.array.shape)
    labels = atlas.array[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
    affine = atlas.affine.copy()
    affine[:3, 3] = atlas.affine[:3, :3] @ lo + atlas.affine[:3, 3]
    a_inv = np.linalg.inv(affine[:3, :3])
    fields = {name: _unit_field(labels == rid, a_inv) for name, rid in zip(region_names(), ids)}
    # The CSF spaces beside each temporal lobe (temporal horn, choroidal fissure, ambient
    # cistern, temporal sulci): enlarging them lets CSF, not white matter, fill what is lost.
    tissue = _template()
    pts = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float32) for n in labels.shape], indexing="ij"), axis=-1)
    pts = pts @ affine[:3, :3].T.astype(np.float32) + affine[:3, 3].astype(np.float32)
    csf = np.clip(tissue.brain.sample(pts) - tissue.gm.sample(pts) - tissue.wm.sample(pts), 0.0, 1.0)
    for side in ("Left", "Right"):
        lobe = np.isin(labels, template.ids(*[f"{side}_{p}" for p in (*MEDIAL_TEMPORAL, *LATERAL_TEMPORAL)]))
        dist = ndimage.distance_transform_edt(~lobe, sampling=1.5)
        near = np.clip((_CSF_REACH_MM - dist) / 4.0, 0.0, 1.0)
        fields[f"{side}_temporal_CSF"] = _unit_field(csf * near, a_inv)
    field_affine = affine @ np.diag([_FIELD_STEP] * 3 + [1.0])
    region_index = {rid: (np.argwhere(labels == rid).T / _FIELD_STEP).astype(np.float32) for rid in ids}
    return _Lattice(labels=labels, affine=affine, field_affine=field_affine, unit_fields=fields, region_index=region_index)


def _exponentiate(velocity: np.ndarray) -> np.ndarray:
    """Displacement of the flow of a stationary ``velocity`` (field lattice) after unit time."""
    lat = _lattice()
    u = velocity / np.float32(2**_SQUARINGS)
    grid_idx = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float32) for n in velocity.shape[1:]], indexing="ij"))
    to_idx = np.linalg.inv(lat.field_affine[:3, :3]).astype(np.float32)
    for _ in range(_SQUARINGS):  # u <- u + u(x + u)
        at = grid_idx + np.einsum("ij,j...->i...", to_idx, u)
        u = u + np.stack([ndimage.map_coordinates(c, at, order=1, mode="nearest", prefilter=False) for c in u])
    return u


def _jacobian_det(u: np.ndarray) -> np.ndarray:
    """Jacobian determinant of ``x -> x + u(x)`` on the field lattice."""
    diag = np.diag(_lattice().field_affine[:3, :3])
    jac = np.empty((*u.shape[1:], 3, 3), np.float32)
    for i in range(3):
        grads = np.gradient(u[i], *np.abs(diag))
        for j in range(3):
            jac[..., i, j] = grads[j] * np.sign(diag[j]) + (1.0 if i == j else 0.0)
    return np.linalg.det(jac)


class RegionalDisplacement:
    """A diffeomorphic pull-back displacement (template space) from per-region depths (mm).

    Calling it with template points ``q`` (shape (..., 3)) returns ``dq``: the subject's brain
    at ``q`` shows the template at ``q + dq``. A positive depth pulls the region's free
    boundary in by about that many mm (the region shrinks); a negative one pushes it out.
    """

    def __init__(self, depth_by_name: dict[str, float]) -> None:
        lat = _lattice()
        known = set(field_names())
        self.depth_by_name = dict(depth_by_name)
        shape = next(iter(lat.unit_fields.values())).shape
        velocity = np.zeros(shape, np.float32)
        for name, depth in self.depth_by_name.items():
            if name not in known:
                raise ValueError(f"region {name!r} has no displacement field; known: {', '.join(field_names())}")
            velocity += np.float32(depth) * lat.unit_fields[name]
        self._velocity = velocity
        self._inv = np.linalg.inv(lat.field_affine)
        self.field = _exponentiate(velocity)

    def __call__(self, q: np.ndarray) -> np.ndarray:
        flat = q.reshape(-1, 3)
        idx = flat @ self._inv[:3, :3].T.astype(np.float32) + self._inv[:3, 3].astype(np.float32)
        inside = np.all((idx > -1.0) & (idx < np.array(self.field.shape[1:], np.float32)), axis=1)
        out = np.zeros(flat.shape, np.float32)
        if inside.any():
            at = idx[inside].T
            for axis, c in enumerate(self.field):
                out[inside, axis] = ndimage.map_coordinates(c, at, order=1, mode="constant", cval=0.0, prefilter=False)
        return out.reshape(q.shape)

    def min_jacobian(self) -> float:
        """Smallest Jacobian determinant of ``q -> q + dq`` (> 0: the brain does not fold)."""
        return float(_jacobian_det(self.field).min())

    def volume_change(self) -> dict[str, float]:
        """Relative volume change of each region in template space (before the subject warp).

        The subject's region is the preimage of the template's; its volume is the integral,
        over the template region, of the Jacobian of the inverse map (the flow of -velocity).
        """
        lat = _lattice()
        det = _jacobian_det(_exponentiate(-self._velocity))
        out = {}
        for name, rid in zip(region_names(), load_template().ids(*region_names())):
            at = lat.region_index[rid]
            out[name] = float(ndimage.map_coordinates(det, at, order=1, mode="nearest", prefilter=False).mean() - 1.0)
        return out


@functools.lru_cache(maxsize=1)
def _template() -> BrainTemplate:
    """The template with the atlas's ventricles as CSF (the MNI average blurs the temporal horns).

    Cached per process: derived from package data only.
    """
    template = load_template()
    ids = template.ids(
        "Left_Lateral_Ventricle", "Right_Lateral_Ventricle", "Left_Inf_Lat_Vent", "Right_Inf_Lat_Vent",
        "3rd_Ventricle", "4th_Ventricle",
    )
    # Only the box around the ventricles (in template voxels) needs resampling.
    atlas_idx = np.argwhere(np.isin(template.labels.array, ids))
    corners = np.array([atlas_idx.min(axis=0), atlas_idx.max(axis=0)])
    lps = corners @ template.labels.affine[:3, :3].T + template.labels.affine[:3, 3]
    inv = np.linalg.inv(template.gm.affine)
    box = lps @ inv[:3, :3].T + inv[:3, 3]
    lo = np.maximum(np.floor(box.min(axis=0)).astype(int) - 6, 0)
    hi = np.minimum(np.ceil(box.max(axis=0)).astype(int) + 7, template.gm.array.shape)
    idx = np.stack(np.meshgrid(*[np.arange(a, b, dtype=np.float32) for a, b in zip(lo, hi)], indexing="ij"), axis=-1)
    pts = idx @ template.gm.affine[:3, :3].T.astype(np.float32) + template.gm.affine[:3, 3].astype(np.float32)
    vent = np.isin(template.labels.sample(pts, order=0), ids).astype(np.float32)
    keep = np.ones(template.gm.array.shape, np.float32)
    keep[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]] = 1.0 - ndimage.gaussian_filter(vent, 0.8, mode="nearest")
    return dataclasses.replace(
        template,
        gm=Volume(template.gm.array * keep, template.gm.affine),
        wm=Volume(template.wm.array * keep, template.wm.affine),
    )


_DESCRIPTIONS = {
    "sagittal": {
        "siemens": ("t1_mprage_sag_p2_iso", "t1_mprage_sag", "MPRAGE SAG", "t1_mpr_sag_iso_ADNI"),
        "ge": ("Sag 3D BRAVO", "SAG T1 BRAVO", "3D T1 SAG FSPGR", "Sag MPRAGE"),
        "philips": ("T1W_3D_TFE sag", "sT1W_3D_TFE", "3D T1 TFE SAG", "T1 3D SAG"),
    },
    "axial": {
        "siemens": ("t1_mprage_tra_iso", "t1_mprage_tra_p2", "MPRAGE TRA"),
        "ge": ("AX 3D BRAVO", "Ax T1 BRAVO", "AX 3D T1 FSPGR"),
        "philips": ("T1W_3D_TFE tra", "3D T1 TFE AX", "sT1W_3D_TFE tra"),
    },
}
_MISLEADING = ("t2_tse_tra", "localizer", "MPR cor", "FLAIR 3D", "DWI")
_STUDY_DESCRIPTIONS = {
    "siemens": ("MRT Schaedel nativ", "Neuro^Kopf", "MR HEAD"),
    "ge": ("MRI BRAIN WO CONTRAST", "MR BRAIN ROUTINE", "BRAIN DEMENTIA PROTOCOL"),
    "philips": ("MR Brain", "Hersenen", "Brain memory clinic"),
}
_TEMPLATE_CENTRE = np.array([0.0, 17.0, 10.0])  # template LPS: the head's centre


def _side_depths(
    table: dict[str, float], factor: float, side_factor: dict[str, float], rng: np.random.Generator, jitter: float
) -> dict[str, float]:
    """Depth per field name from a table by part name, scaled per side and jittered per region."""
    out = {}
    for name in field_names():
        side, _, part = name.partition("_")
        if name.startswith("3rd"):
            side, part = "", name
        if part in table:
            out[name] = float(table[part] * factor * side_factor.get(side, 1.0) * rng.uniform(1.0 - jitter, 1.0 + jitter))
    return out


def _subject(rng: np.random.Generator, label: str, age: int) -> dict:
    """Ageing, severity and the regional depths (mm) of one subject."""
    ageing = float(np.clip((age - 60) / 30.0, 0.0, 1.0))
    reserve = float(rng.uniform(0.4, 1.6))  # how hard normal ageing hits this person
    f_age = (0.35 + 0.85 * ageing) * reserve
    age_sides = {"Left": float(rng.uniform(0.9, 1.1)), "Right": float(rng.uniform(0.9, 1.1))}
    depth_age = _side_depths(_AGEING_DEPTH, f_age, age_sides, rng, 0.1)
    if label == "ad":
        severity = float(rng.uniform(0.2, 1.0))
        f_ad = (0.5 + 0.5 * severity) * (0.85 + 0.3 * ageing)
        dominant = "Left" if rng.random() < 0.6 else "Right"
        other = "Right" if dominant == "Left" else "Left"
        ad_sides = {dominant: float(rng.uniform(1.0, 1.2)), other: float(rng.uniform(0.75, 1.0))}
        depth_ad = _side_depths(_AD_DEPTH, f_ad, ad_sides, rng, 0.15)
        mmse = int(np.clip(round(28.5 - 15.0 * severity + rng.normal(0, 1.5)), 8, 27))
        atrophy = float(np.clip(0.3 * ageing * reserve + 0.15 * severity + rng.uniform(0.0, 0.1), 0.0, 1.0))
    else:
        severity, depth_ad = 0.0, {}
        mmse = int(np.clip(round(29.3 - 1.5 * ageing + rng.normal(0, 0.8)), 26, 30))
        atrophy = float(np.clip(0.3 * ageing * reserve + rng.uniform(0.0, 0.1), 0.0, 1.0))
    return {
        "ageing": ageing, "reserve": reserve, "severity": severity, "mmse": mmse, "atrophy": atrophy,
        "depth_ageing": depth_age, "depth_ad": depth_ad,
    }


def _grid(rng: np.random.Generator, size: str, warp: SubjectWarp, head_angles: np.ndarray) -> tuple[Grid, str, int]:
    """The acquisition: sagittal or axial 3D slab around the head, roughly aligned to it."""
    orientation = "sagittal" if rng.random() < 0.65 else "axial"
    follow = float(rng.uniform(0.0, 0.8))  # how well the technologist aligned the slab to the head
    angles = head_angles * follow + rng.normal(0.0, 1.5, 3)
    rot = Rotation.from_euler("xyz", angles, degrees=True).as_matrix()
    centre = warp.to_patient(_TEMPLATE_CENTRE + np.array([0.0, 0.0, 2.0]))
    if size == "full":
        if orientation == "sagittal":
            nz, spacing = [(176, 1.0), (192, 1.0), (160, 1.2), (144, 1.2)][int(rng.integers(4))]
            rows, cols = (256, 256) if rng.random() < 0.6 else (256, 240)
        else:
            nz, spacing = [(176, 1.0), (184, 1.0), (160, 1.2)][int(rng.integers(3))]
            rows, cols = 256, 256
        pix, subsamples = 1.0, 1  # 1 mm slices: partial volume across them is negligible
    else:
        pix = float(rng.choice([2.9, 3.0, 3.1]))
        rows = cols = 80
        nz = int(rng.integers(54, 59)) if orientation == "sagittal" else int(rng.integers(58, 63))
        spacing, subsamples = pix, 2
    # Where the technologist put the slab: off-centre in plane more than across it.
    probe = Grid.centred(centre, (nz, rows, cols), (pix, pix), spacing, spacing, rot, base=orientation)
    centre = centre + probe.row_dir * rng.normal(0, 5.0) + probe.col_dir * rng.normal(0, 5.0)
    centre = centre + probe.slice_dir * rng.normal(0, 1.5)
    grid = Grid.centred(centre, (nz, rows, cols), (pix, pix), spacing, spacing, rot, base=orientation)
    return grid, orientation, subsamples


def _label_maps(grid: Grid, warp: SubjectWarp, fields: list[RegionalDisplacement | None], ids: list[int]) -> list[np.ndarray]:
    """Atlas labels of the changed regions at each voxel centre, through each field (None: none)."""
    atlas = load_template().labels
    lut = np.zeros(int(atlas.array.max()) + 1, np.uint8)
    lut[ids] = ids
    lat = _lattice()
    # Only points near the changed regions can carry their labels: the lattice box minus its margin.
    inv = np.linalg.inv(lat.affine)
    margin = np.ceil(4 * _SIGMA_MM / 1.5) - 4  # keep 6 mm for displacements
    upper = np.array(lat.labels.shape, np.float32) - margin
    out = [np.zeros(grid.shape, np.uint8) for _ in fields]
    for k in range(grid.shape[0]):
        q = warp(grid.slice_points(k)).reshape(-1, 3)
        idx = q @ inv[:3, :3].T.astype(np.float32) + inv[:3, 3].astype(np.float32)
        near = np.all((idx > margin) & (idx < upper), axis=1)
        if not near.any():
            continue
        qn = q[near]
        for i, field in enumerate(fields):
            at = qn if field is None else qn + field(qn)
            plane = np.zeros(q.shape[0], np.uint8)
            plane[near] = lut[atlas.sample(at, order=0)]
            out[i][k] = plane.reshape(grid.shape[1:])
    return out


def generate(rng: np.random.Generator, case_id: str, label: str, size: str) -> Study:
    """One 3D T1 study of class ``label`` (``ad`` or ``cn``) at ``size`` (small or full)."""
    if label not in CLASSES:
        raise ValueError(f"label must be one of {CLASSES}, got {label!r}")
    template = _template()
    identity = make_identity(rng, "MR", (60, 90))
    subject = _subject(rng, label, identity.age_years)
    head = random_head(rng, identity.age_years, subject["atrophy"])
    sex_scale = 0.97 if identity.sex == "F" else 1.0
    head_angles = np.array([rng.uniform(-15, 10), rng.uniform(-6, 6), rng.uniform(-6, 6)])
    warp = SubjectWarp(
        rng,
        centre=rng.normal(0.0, [3.0, 8.0, 10.0]),
        angles_deg=tuple(head_angles),
        scale=tuple(sex_scale * rng.uniform(0.93, 1.07) * rng.uniform(0.97, 1.03, 3)),
        warp_mm=float(rng.uniform(1.5, 3.0)),
        template_centre=_TEMPLATE_CENTRE,
    )
    ageing_field = RegionalDisplacement(subject["depth_ageing"])
    total = dict(subject["depth_ageing"])
    for name, depth in subject["depth_ad"].items():
        total[name] = total.get(name, 0.0) + depth
    field = RegionalDisplacement(total) if subject["depth_ad"] else ageing_field
    grid, orientation, subsamples = _grid(rng, size, warp, head_angles)

    def scene(p: np.ndarray) -> dict[str, np.ndarray]:
        q = warp(p)
        return head_tissues(template, q, head, q_brain=q + field(q))

    fractions = render(scene, grid, subsamples)
    signal = tissue_signal(rng, "T1", 0.06)
    signal["csf"] *= float(rng.uniform(0.5, 0.85))  # MPRAGE nulls CSF harder than spin echo
    image = mix(fractions, signal) * bias_field(rng, grid, float(rng.uniform(0.08, 0.2)))
    image = rician(rng, image, float(rng.uniform(0.015, 0.035)) * signal["wm"])
    pixels = to_stored(image)

    # Truth: the changed regions on the series grid, with and without the regional fields.
    names = region_names()
    ids = load_template().ids(*names)
    fields: list[RegionalDisplacement | None] = [field, None] + ([ageing_field] if field is not ageing_field else [])
    maps = _label_maps(grid, warp, fields, ids)
    regions_map, plain = maps[0], maps[1]
    without_ad = maps[2] if len(maps) > 2 else regions_map
    vox = grid.pixel_spacing[0] * grid.pixel_spacing[1] * grid.slice_spacing
    change_total = field.volume_change()
    change_age = ageing_field.volume_change() if field is not ageing_field else change_total
    counts = [np.bincount(m.ravel(), minlength=256) for m in (regions_map, plain, without_ad)]
    with np.errstate(invalid="ignore", divide="ignore"):  # a region cut off by the slab has none
        centroids = ndimage.center_of_mass(np.ones(grid.shape, np.uint8), regions_map, ids)
    regions = []
    for name, rid, centre in zip(names, ids, centroids):
        n_all, n_plain, n_age = (int(c[rid]) for c in counts)
        regions.append({
            "name": name,
            "id": rid,
            "group": _group(name),
            "depth_ageing_mm": round(subject["depth_ageing"].get(name, 0.0), 3),
            "depth_ad_mm": round(subject["depth_ad"].get(name, 0.0), 3),
            "applied_change": round((1.0 + change_total[name]) / (1.0 + change_age[name]) - 1.0, 4),
            "applied_change_total": round(change_total[name], 4),
            "voxels": n_all,
            "voxels_without_ad": n_age,
            "voxels_without_regional_change": n_plain,
            "measured_change": round(n_all / n_age - 1.0, 4) if n_age else None,
            "measured_change_total": round(n_all / n_plain - 1.0, 4) if n_plain else None,
            "volume_mm3": round(n_all * vox, 1),
            "centroid_lps": [round(float(v), 2) for v in grid.index_to_lps(centre)] if n_all else None,
        })

    scanner = identity.scanner
    description = pick_description(rng, _DESCRIPTIONS[orientation], scanner.style, _MISLEADING)
    attributes, image_type = mr_attributes(rng, "T1_MPRAGE", scanner, grid)
    series = Series(
        key="t1", kind="T1", modality="MR", grid=grid, pixels=pixels, description=description,
        image_type=image_type, window=mr_window(pixels), attributes=attributes, body_part="HEAD",
        protocol=description or "T1 3D",
    )
    return Study(
        task="ad-lrp", case_id=case_id, label=label, labels={name: int(label == name) for name in CLASSES}, identity=identity,
        study_description=pick_description(rng, _STUDY_DESCRIPTIONS, scanner.style, p_misleading=0.0),
        series=[series], masks={"regions": ("t1", regions_map)},
        truth={
            "diagnosis": label,
            "age": identity.age_years,
            "mmse": subject["mmse"],
            "severity": round(subject["severity"], 3),
            "global_atrophy": round(subject["atrophy"], 3),
            "ageing_reserve": round(subject["reserve"], 3),
            "orientation": orientation,
            "head_angles_deg": [round(float(a), 2) for a in head_angles],
            "temporal_csf_depth_mm": {
                side: {"ageing": round(subject["depth_ageing"].get(f"{side}_temporal_CSF", 0.0), 3),
                       "ad": round(subject["depth_ad"].get(f"{side}_temporal_CSF", 0.0), 3)}
                for side in ("Left", "Right")
            },
            "lesions": [],
            "regions": regions,
        },
    )


def brain_fraction(volume: np.ndarray) -> float:
    """Brain parenchymal fraction of a T1 volume: brain tissue over the space inside its outline.

    Tissue is what is brighter than half the white matter; the brain is its largest
    component once thin bridges (to the diploe and scalp) are cut; its outline is that
    component closed over sulci and with holes (ventricles) filled.
    """
    img = volume.astype(np.float32)
    head = img > 0.1 * np.percentile(img, 99.5)
    bright = img[head]
    wm = float(np.median(bright[bright > np.percentile(bright, 60)]))
    tissue = img > 0.5 * wm
    core = ndimage.binary_erosion(tissue, iterations=1)
    labelled, n = ndimage.label(core)
    if n == 0:
        return 1.0
    largest = np.argmax(np.bincount(labelled.ravel())[1:]) + 1
    brain = ndimage.binary_dilation(labelled == largest, iterations=1) & tissue
    outline = ndimage.binary_fill_holes(ndimage.binary_closing(brain, iterations=3))
    return float(brain.sum() / max(int(outline.sum()), 1))


def baseline(study_dir: Path) -> float:
    """Naive detector: brain atrophy as one minus the brain parenchymal fraction of the T1."""
    return 1.0 - brain_fraction(sitk.GetArrayFromImage(read_series(study_dir, "t1")))


TASK = TaskSpec(
    name="ad-lrp",
    classes=CLASSES,
    generate=generate,
    summary="3D T1 brain MRI: Alzheimer's medial temporal and temporal atrophy, temporal horns enlarged, "
    "vs normal ageing; ages 60-90",
    baseline=baseline,
    baseline_positive="ad",
)
