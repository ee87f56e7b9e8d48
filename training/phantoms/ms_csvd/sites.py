"""Where each lesion type may sit: candidate sites and distance maps from the template.

Everything here is in template space (MNI152 2009 + Neuromorphometrics labels, LPS mm) and
derived once per process from package data.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from .. import anatomy


@dataclass(frozen=True)
class _Sites:
    """Where each lesion type may sit, derived once from the template (LPS mm, template space).

    Lesions are drawn on the template's own 1 mm lattice (integer LPS millimetres), so the
    maps they need (``gm``, ``wm``, ``dist_lv``, ``dist_ctx``) are read there by slicing.
    """

    template: anatomy.BrainTemplate
    gm: np.ndarray  # on the template's 1 mm lattice (template.t1 grid)
    wm: np.ndarray
    dist_lv: np.ndarray  # mm from the lateral ventricles (0 inside)
    dist_ctx: np.ndarray  # mm from the cortical grey matter (0 inside)
    periventricular: np.ndarray  # (N, 3) white matter 1-3 mm off the ventricle body walls
    pv_normals: np.ndarray  # (N, 3) unit vectors away from the ventricles
    callosal: np.ndarray
    callosal_normals: np.ndarray
    juxtacortical: np.ndarray
    deep: np.ndarray
    brainstem: np.ndarray  # pons surface
    peduncle: np.ndarray  # cerebellar white matter next to the brainstem
    nuclei: dict[str, np.ndarray]  # basal_ganglia / thalamus / deep_white_matter sites for lacunes
    horn_tips: dict[str, np.ndarray]  # "frontal_left" … "occipital_right"
    ventricle_centres: list[np.ndarray]  # left, right lateral ventricle centroids
    ventricle_boxes: dict[str, tuple[np.ndarray, np.ndarray]]  # side -> (lo, hi) mm

    def read(self, array: np.ndarray, lo: np.ndarray, shape: tuple[int, ...], cval: float = 0.0) -> np.ndarray:
        """Values of a lattice map over the box of ``shape`` whose first point is ``lo`` (mm)."""
        inv = np.linalg.inv(self.template.t1.affine)
        out_idx, valid = [], []
        for axis in range(3):
            coords = lo[axis] + np.arange(shape[axis])
            idx = np.rint(inv[axis, axis] * coords + inv[axis, 3]).astype(int)
            ok = (idx >= 0) & (idx < array.shape[axis])
            out_idx.append(np.clip(idx, 0, array.shape[axis] - 1))
            valid.append(ok)
        out = array[np.ix_(*out_idx)]
        inside = valid[0][:, None, None] & valid[1][None, :, None] & valid[2][None, None, :]
        return np.where(inside, out, np.float32(cval)).astype(np.float32)


def _to_lattice(t: anatomy.BrainTemplate, atlas_map: np.ndarray, order: int, cval: float) -> np.ndarray:
    """An atlas-grid map resampled onto the template's 1 mm lattice (both grids are axis-aligned)."""
    m = np.linalg.inv(t.labels.affine) @ t.t1.affine
    return ndimage.affine_transform(atlas_map, np.diag(m[:3, :3]), m[:3, 3], output_shape=t.t1.array.shape,
                                    order=order, mode="constant", cval=cval)


@functools.lru_cache(maxsize=1)
def _sites() -> _Sites:
    """Candidate lesion sites from the atlas (about a second; cached per process).

    The cache holds one immutable object derived from package data, never configuration.
    """
    t = anatomy.load_template()
    aff = t.t1.affine
    if not np.allclose(np.abs(np.diag(aff[:3, :3])), 1.0) or not np.allclose(aff[:3, :3], np.diag(np.diag(aff[:3, :3]))):
        raise RuntimeError("ms-csvd lesions need the template on an axis-aligned 1 mm lattice")
    lab = t.labels.array
    la = t.labels.affine
    step = float(abs(la[0, 0]))
    idx = np.indices(lab.shape).reshape(3, -1).T
    pts = (idx @ la[:3, :3].T + la[:3, 3]).reshape(*lab.shape, 3).astype(np.float32)

    lv_left, lv_right = (np.isin(lab, t.ids(n)) for n in ("Left_Lateral_Ventricle", "Right_Lateral_Ventricle"))
    lv = lv_left | lv_right
    dist_lv = (ndimage.distance_transform_edt(~lv) * step).astype(np.float32)
    cortex = lab >= 100  # the Neuromorphometrics cortical parcels
    dist_ctx = (ndimage.distance_transform_edt(~cortex) * step).astype(np.float32)
    wm = t.wm.sample(pts, order=1)
    cerebral_wm = np.isin(lab, t.ids(*anatomy.CEREBRAL_WM)) & (wm > 0.5)

    # Outward normals of the ventricles: gradient of the smoothed distance, in LPS.
    grad = np.stack(np.gradient(ndimage.gaussian_filter(dist_lv, 1.0)), axis=-1) @ np.linalg.inv(la[:3, :3])
    grad /= np.linalg.norm(grad, axis=-1, keepdims=True) + 1e-6

    x, y, z = pts[..., 0], pts[..., 1], pts[..., 2]
    lv_pts = pts[lv]
    y_front, y_back = float(lv_pts[:, 1].min()), float(lv_pts[:, 1].max())
    # Periventricular MS sites: the walls of the bodies and atria (the horn tips are where
    # cSVD caps sit), not the corpus callosum (callosal sites are their own class).
    pv = cerebral_wm & (dist_lv > 0.5) & (dist_lv <= 3.2) & (y > y_front + 12) & (y < y_back - 22) & (z > 0)
    pv &= np.abs(x) > 8
    callosal = cerebral_wm & (np.abs(x) <= 9) & (dist_lv > 0.5) & (dist_lv <= 4.5) & (grad[..., 2] > 0.5)
    juxta = cerebral_wm & (dist_ctx > 1.0) & (dist_ctx <= 3.1) & (z > -20) & (dist_lv > 10)
    deep = cerebral_wm & (wm > 0.8) & (dist_ctx > 8) & (dist_lv > 6) & (z > 5) & (z < 55)

    stem = np.isin(lab, t.ids(*anatomy.BRAINSTEM))
    stem_depth = ndimage.distance_transform_edt(stem) * step
    pons = stem & (stem_depth > 1.0) & (stem_depth <= 4.5) & (z > -45) & (z < -18)
    cb_wm = np.isin(lab, t.ids("Left_Cerebellum_White_Matter", "Right_Cerebellum_White_Matter"))
    peduncle = cb_wm & (ndimage.distance_transform_edt(~stem) * step < 12) & (wm > 0.5)

    nuclei = {}
    for loc, names in (
        ("basal_ganglia", ("Left_Putamen", "Right_Putamen", "Left_Pallidum", "Right_Pallidum", "Left_Caudate", "Right_Caudate")),
        ("thalamus", ("Left_Thalamus_Proper", "Right_Thalamus_Proper")),
    ):
        region = np.isin(lab, t.ids(*names))
        nuclei[loc] = pts[region & (ndimage.distance_transform_edt(region) * step > 2.5)]
    nuclei["deep_white_matter"] = pts[cerebral_wm & (dist_ctx > 10) & (dist_lv > 4) & (z > 0) & (z < 40) & (wm > 0.85)]

    tips, boxes = {}, {}
    for side, mask in (("left", lv_left), ("right", lv_right)):
        p = pts[mask]
        tips[f"frontal_{side}"] = p[p[:, 1] < p[:, 1].min() + 4.0].mean(axis=0)
        upper = p[p[:, 2] > 0]  # the atrium's occipital horn, above the temporal horn
        tips[f"occipital_{side}"] = upper[upper[:, 1] > upper[:, 1].max() - 4.0].mean(axis=0)
        boxes[side] = (p.min(axis=0) - 8.0, p.max(axis=0) + 8.0)

    return _Sites(
        template=t,
        gm=t.gm.array,
        wm=t.wm.array,
        dist_lv=_to_lattice(t, dist_lv, 1, 99.0),
        dist_ctx=_to_lattice(t, dist_ctx, 1, 0.0),
        periventricular=pts[pv],
        pv_normals=grad[pv],
        callosal=pts[callosal],
        callosal_normals=grad[callosal],
        juxtacortical=pts[juxta],
        deep=pts[deep],
        brainstem=pts[pons],
        peduncle=pts[peduncle],
        nuclei=nuclei,
        horn_tips=tips,
        ventricle_centres=[pts[lv_left].mean(axis=0), pts[lv_right].mean(axis=0)],
        ventricle_boxes=boxes,
    )
