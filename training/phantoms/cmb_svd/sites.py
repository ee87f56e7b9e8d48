"""Template space for cmb-svd: the candidate microbleed sites and static maps, and surface geometry.

Everything here derives from the template alone (MNI, LPS): cortico-subcortical junction
points and deep/infratentorial interiors where microbleeds may go, white-matter disease
pattern maps, physiological iron, susceptibility drop-out and the lateral-ventricle walls.
They are immutable and cached per process, like the template itself.
"""
from __future__ import annotations

import functools
import logging
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from ..anatomy import BRAINSTEM, CEREBELLUM, CEREBRAL_WM, DEEP_GREY, BrainTemplate, Volume, load_template

logger = logging.getLogger(__name__)

_MNI = np.array([-1.0, -1.0, 1.0])  # MNI (RAS) <-> template LPS

_LOBES = {
    "frontal": ("AOrG", "FRP", "FO", "GRe", "LOrG", "MFC", "MFG", "MOrG", "MPrG", "MSFG", "OpIFG",
                "OrIFG", "POrG", "PrG", "SCA", "SFG", "SMC", "TrIFG", "CO"),
    "parietal": ("AnG", "MPoG", "PCu", "PO", "PoG", "SMG", "SPL"),
    "temporal": ("FuG", "ITG", "MTG", "PP", "PT", "STG", "TMP", "TTG"),
    "occipital": ("Calc", "Cun", "IOG", "LiG", "MOG", "OCP", "OFuG", "SOG"),
    "insular": ("AIns", "PIns"),
    "limbic": ("ACgG", "MCgG", "PCgG", "PHG", "Ent"),
}
_CAA_LOBE_WEIGHT = {"occipital": 2.2, "parietal": 1.8, "temporal": 1.2, "frontal": 0.8, "insular": 0.3, "limbic": 0.4}


def _lps(*mni: float) -> np.ndarray:
    return np.asarray(mni, float) * _MNI


def lobe_of(region: str) -> str | None:
    """The lobe of a Neuromorphometrics cortical label (``Left_SFG_superior_frontal_gyrus``)."""
    parts = region.split("_")
    abbr = parts[1] if len(parts) > 1 else ""
    for lobe, names in _LOBES.items():
        if abbr in names:
            return lobe
    return None


_PAD = 10  # atlas voxels of margin around the atlas grid (room for sinuses and the skull)


@dataclass(frozen=True)
class _Sites:
    """Candidate microbleed sites and static maps on the padded atlas grid (template LPS)."""

    affine: np.ndarray  # padded atlas grid: index -> template LPS
    lobar: np.ndarray  # (N, 3) cortico-subcortical junction points
    lobar_region: np.ndarray  # (N,) label id of the nearest cortical region
    lobar_caa_weight: np.ndarray  # (N,) probabilities favouring the posterior lobes
    deep: dict[str, np.ndarray]  # region name -> interior points
    infratentorial: dict[str, np.ndarray]
    wmh_maps: dict[str, np.ndarray]  # pattern -> 0..1 propensity
    iron: np.ndarray  # relative iron load 0..1
    dropout: dict[str, np.ndarray]  # susceptibility drop-out shapes 0..1
    cortical_nearest: Volume  # label id of the nearest cortical region
    ventricle_surface: dict[str, np.ndarray]  # side -> lateral-ventricle body wall points
    trigone: dict[str, np.ndarray]  # side -> atrium centre
    near_head: np.ndarray  # bool on the envelope grid: within 35 mm of the brain envelope (head + warp)
    names: dict[int, str]

    def inside_head(self, q: np.ndarray) -> np.ndarray:
        """True where template points may hold head tissue (cheap nearest lookup)."""
        inv = load_template().envelope._inverse
        idx = np.rint(q @ inv[:3, :3].T.astype(np.float32) + inv[:3, 3].astype(np.float32)).astype(np.int32)
        shape = np.array(self.near_head.shape)
        valid = np.all((idx >= 0) & (idx < shape), axis=-1)
        out = np.zeros(q.shape[:-1], bool)
        v = idx[valid]
        out[valid] = self.near_head[v[:, 0], v[:, 1], v[:, 2]]
        return out


def _points(affine: np.ndarray, mask: np.ndarray) -> np.ndarray:
    return np.argwhere(mask) @ affine[:3, :3].T + affine[:3, 3]


def _ellipsoid_map(affine: np.ndarray, shape, centre_mni, radii) -> tuple[tuple[slice, ...], np.ndarray]:
    """An ellipsoid's 0..1 occupancy in a local box of the grid (slices, values)."""
    inv = np.linalg.inv(affine)
    c = inv[:3, :3] @ _lps(*centre_mni) + inv[:3, 3]
    half = np.abs(inv[:3, :3]) @ (np.asarray(radii) * 1.6)
    a = np.clip(np.floor(c - half).astype(int), 0, shape)
    b = np.clip(np.ceil(c + half).astype(int) + 1, 0, shape)
    sl = tuple(slice(int(i), int(j)) for i, j in zip(a, b))
    idx = np.stack(np.meshgrid(*[np.arange(i, j) for i, j in zip(a, b)], indexing="ij"), -1)
    pts = idx @ affine[:3, :3].T + affine[:3, 3]
    k = np.sqrt((((pts - _lps(*centre_mni)) / np.asarray(radii)) ** 2).sum(-1))
    return sl, np.clip(1.5 - k, 0.0, 1.0).astype(np.float32)


@functools.lru_cache(maxsize=1)
def _sites() -> _Sites:
    t = load_template()
    lab = np.pad(t.labels.array, _PAD)
    affine = t.labels.affine.copy()
    affine[:3, 3] -= affine[:3, :3] @ np.full(3, _PAD)
    shape = lab.shape
    names = {v: k for k, v in t.label_ids.items()}
    axes = [affine[k, k] * np.arange(shape[k], dtype=np.float32) + affine[k, 3] for k in range(3)]  # LPS
    all_pts = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1)
    gm = t.gm.sample(all_pts)
    wm = t.wm.sample(all_pts)
    z_mni = all_pts[..., 2]
    y_mni = -all_pts[..., 1]

    cortical = lab >= 100
    _, nearest = ndimage.distance_transform_edt(~cortical, return_indices=True)
    cortical_nearest = lab[tuple(nearest)].astype(np.int16)
    cerebral_wm = np.isin(lab, t.ids(*CEREBRAL_WM))
    # Cortico-subcortical junction: deep cortex touching white matter, or juxtacortical white matter.
    junction = (cortical & (wm > 0.25) & (gm > 0.3)) | (cerebral_wm & (gm > 0.35))
    junction &= gm + wm > 0.85
    lobar = _points(affine, junction)
    lobar_region = cortical_nearest[junction]
    lobes = {i: lobe_of(names.get(int(i), "")) or "" for i in np.unique(lobar_region)}
    weight = np.array([_CAA_LOBE_WEIGHT.get(lobes[i], 0.3) for i in lobar_region.tolist()])

    def interior(region: str) -> np.ndarray:
        m = ndimage.binary_erosion(np.isin(lab, t.ids(region)))
        return _points(affine, m & (gm + wm > 0.7))

    deep = {name: interior(name) for name in DEEP_GREY}
    infra = {name: interior(name) for name in BRAINSTEM + CEREBELLUM}
    wmh_maps = _wmh_maps(t, lab, float(abs(affine[0, 0])), wm, cerebral_wm, y_mni, z_mni)
    vent_wall, trigone = _ventricles(t, lab, affine, y_mni, z_mni)
    logger.debug("cmb-svd sites built", extra={"lobar_sites": len(lobar)})
    return _Sites(
        affine, lobar, lobar_region, weight / weight.sum(), deep, infra, wmh_maps, _iron(t, lab, affine),
        _dropout(axes), Volume(cortical_nearest, affine), vent_wall, trigone, t.envelope.array <= 35.0, names,
    )


def _wmh_maps(t: BrainTemplate, lab: np.ndarray, step: float, wm: np.ndarray, cerebral_wm: np.ndarray,
              y_mni: np.ndarray, z_mni: np.ndarray) -> dict[str, np.ndarray]:
    """The 0..1 propensity of each white-matter hyperintensity pattern on the padded atlas grid."""

    def dist(*regions: str) -> np.ndarray:
        return ndimage.distance_transform_edt(~np.isin(lab, t.ids(*regions))) * step

    d_vent = dist("Left_Lateral_Ventricle", "Right_Lateral_Ventricle")
    wm_soft = np.clip((wm - 0.35) / 0.4, 0.0, 1.0) * cerebral_wm
    peri = np.exp(-np.maximum(d_vent - 1.0, 0.0) / 5.0) * wm_soft
    deep_wm = 0.6 * np.exp(-(((d_vent - 16.0) / 8.0) ** 2)) * np.clip((z_mni - 5.0) / 15.0, 0.0, 1.0) * wm_soft
    posterior = peri * np.clip(-(y_mni + 20.0) / 25.0, 0.0, 1.0)
    d_tmp = dist("Left_TMP_temporal_pole", "Right_TMP_temporal_pole")
    temporal_wm = np.clip((wm - 0.12) / 0.25, 0.0, 1.0)  # the pole's white matter is thin (and labelled with it)
    anterior_temporal = np.exp(-d_tmp / 8.0) * np.clip((y_mni + 10.0) / 10.0, 0.0, 1.0) * (z_mni < 2) * temporal_wm
    d_put = dist("Left_Putamen", "Right_Putamen")
    d_ins = dist(*(f"{side}_{part}" for side in ("Left", "Right")
                   for part in ("AIns_anterior_insula", "PIns_posterior_insula")))
    external = (
        np.exp(-np.maximum(d_put - 1.0, 0.0) / 2.5)
        * np.exp(-np.maximum(d_ins - 3.0, 0.0) / 3.0)
        * np.clip((wm - 0.2) / 0.3, 0.0, 1.0)
        * (d_put > 0)
    )
    wmh_maps = {
        "periventricular": peri,
        "deep": deep_wm,
        "posterior": posterior,
        "anterior_temporal": anterior_temporal,
        "external_capsule": external,
    }
    wmh_maps = {k: ndimage.gaussian_filter(v.astype(np.float32), 0.8) for k, v in wmh_maps.items()}
    for k in ("anterior_temporal", "external_capsule"):  # CADASIL's signature: full strength at the core
        wmh_maps[k] = np.clip(wmh_maps[k] / (0.8 * wmh_maps[k].max()), 0.0, 1.0)
    return wmh_maps


def _iron(t: BrainTemplate, lab: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Relative physiological iron load (0..1) of the deep nuclei on the padded atlas grid."""
    iron = np.zeros(lab.shape, np.float32)
    for regions, load in (
        (("Left_Pallidum", "Right_Pallidum"), 1.0),
        (("Left_Putamen", "Right_Putamen"), 0.3),
        (("Left_Caudate", "Right_Caudate"), 0.15),
        (("Left_Thalamus_Proper", "Right_Thalamus_Proper"), 0.06),
    ):
        iron = np.maximum(iron, load * np.isin(lab, t.ids(*regions)))
    for sx in (-1, 1):
        for centre, radii, load in (
            ((5 * sx, -20, -9), (3.5, 3.5, 3.5), 0.9),  # red nucleus
            ((11 * sx, -18, -12), (3.0, 6.0, 2.5), 0.85),  # substantia nigra
            ((14 * sx, -57, -33), (5.0, 8.0, 5.0), 0.75),  # dentate nucleus
        ):
            sl, occ = _ellipsoid_map(affine, lab.shape, centre, radii)
            iron[sl] = np.maximum(iron[sl], load * occ)
    return ndimage.gaussian_filter(iron, 0.8)


def _dropout(axes: list[np.ndarray]) -> dict[str, np.ndarray]:
    """Susceptibility drop-out at the air-bone interfaces: frontal/sphenoid sinuses, mastoids, petrous bones."""

    def bump(c, s):  # an isotropic Gaussian is separable: one factor per axis
        f = [np.exp(-((axes[k] - _lps(*c)[k]) ** 2) / (2 * s * s)) for k in range(3)]
        return (f[0][:, None, None] * f[1][None, :, None] * f[2][None, None, :]).astype(np.float32)

    return {
        "frontal": bump((0, 40, -32), 14.0),
        "temporal": bump((-42, -28, -44), 10.0) + bump((42, -28, -44), 10.0),
    }


def _ventricles(t: BrainTemplate, lab: np.ndarray, affine: np.ndarray, y_mni: np.ndarray,
                z_mni: np.ndarray) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Per side: the lateral ventricle's body wall points and its atrium (trigone) centre."""
    vent_wall, trigone = {}, {}
    for side, name in (("left", "Left_Lateral_Ventricle"), ("right", "Right_Lateral_Ventricle")):
        m = lab == t.label_ids[name]
        wall = m & ~ndimage.binary_erosion(m) & (z_mni > 8) & (z_mni < 28) & (y_mni > -40) & (y_mni < 18)
        vent_wall[side] = _points(affine, wall)
        trigone[side] = _points(affine, m & (y_mni > -45) & (y_mni < -30)).mean(axis=0)
    return vent_wall, trigone


def _surface_points(t: BrainTemplate, directions: np.ndarray, offset: float) -> np.ndarray:
    """Where rays from the mid-brain cross the brain envelope at signed distance ``offset`` mm."""
    origin = _lps(0, -18, 12)
    r = np.arange(110.0, 10.0, -0.5)
    pts = origin + directions[:, None, :] * r[None, :, None]
    d = t.envelope.sample(pts, order=1, cval=1e3)
    first = np.argmax(d <= offset, axis=1)  # first (outermost) radius inside the offset surface
    return origin + directions * r[first][:, None]


def _direction(elev_deg: np.ndarray, azim_deg: np.ndarray) -> np.ndarray:
    """Unit vectors (template LPS) from elevation above the axial plane and MNI azimuth."""
    e, a = np.radians(elev_deg), np.radians(azim_deg)
    mni = np.stack([np.cos(e) * np.cos(a), np.cos(e) * np.sin(a), np.sin(e)], axis=-1)
    return mni * _MNI


def _region_name(sites: _Sites, t: BrainTemplate, q: np.ndarray) -> str:
    """The cortical region at (or nearest to) template point ``q``."""
    lid = int(t.labels.sample(q[None], order=0)[0])
    if lid < 100:
        lid = int(sites.cortical_nearest.sample(q[None], order=0)[0])
    return sites.names.get(lid, "unlabelled")
