"""Lesion shapes: one lesion as an occupancy map over a small box of the 1 mm template lattice.

Ovoids (MS lesions, punctate WMH), periventricular caps and bands, confluent deep WMH and
lacunes, and a lesion's volume in the parenchyma.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..geometry import ellipsoid_distance, smooth_field, soft_inside
from .sites import _Sites


@dataclass
class _Lesion:
    """One lesion as occupancy over a box of the 1 mm template lattice (LPS mm, integers)."""

    type: str
    location: str
    centre: np.ndarray
    lo: np.ndarray  # lattice coordinates (mm) of the box's first point
    bright: np.ndarray  # hyperintense tissue occupancy 0..1 (a lacune's gliotic rim included)
    cavity: np.ndarray | None = None  # fluid occupancy (lacunes)
    level: float = 1.8  # FLAIR signal of the lesion relative to white matter
    volume_mm3: float = 0.0
    extra: dict = field(default_factory=dict)

    @property
    def mask(self) -> str:
        return "lacunes" if self.cavity is not None else "lesions"

    @property
    def occupancy(self) -> np.ndarray:
        """What the lesion itself fills: its tissue, or a lacune's fluid."""
        return self.bright if self.cavity is None else self.cavity


def _box(centre: np.ndarray, half: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
    """Lattice origin and points (shape (nx, ny, nz, 3), LPS mm) of a box around ``centre``."""
    lo = np.floor(np.asarray(centre) - half).astype(int)
    hi = np.ceil(np.asarray(centre) + half).astype(int)
    axes = [np.arange(a, b + 1, dtype=np.float32) for a, b in zip(lo, hi)]
    return lo, np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1)


def _frame(u: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Orthonormal columns with the first along ``u`` and a random twist about it."""
    u = np.asarray(u, float) / np.linalg.norm(u)
    v = np.cross(u, rng.normal(size=3))
    v /= np.linalg.norm(v)
    return np.stack([u, v, np.cross(u, v)], axis=1)


def _wobble(rng: np.random.Generator, p: np.ndarray, centre: np.ndarray, scale: float, amp: float) -> np.ndarray:
    """A smooth irregularity (mm) of a lesion's outline: a few random plane waves."""
    out = np.zeros(p.shape[:-1], np.float32)
    for _ in range(4):
        w = rng.normal(size=3)
        w *= 2 * np.pi / (scale * rng.uniform(1.5, 3.0) * np.linalg.norm(w))
        out += np.sin((p - np.float32(centre)) @ w.astype(np.float32) + np.float32(rng.uniform(0, 2 * np.pi)))
    return out * np.float32(amp / 2.0)


def _ovoid(rng, type_, location, centre, radii, axes, level, irregular=0.15) -> _Lesion:
    radii = np.asarray(radii, float)
    lo, p = _box(centre, radii.max() * (1 + irregular) + 2.5)
    d = ellipsoid_distance(p, centre, radii, axes) + _wobble(rng, p, centre, radii.min() * 2, irregular * radii.min())
    occ = soft_inside(d, 0.45).astype(np.float32)
    return _Lesion(type_, location, np.asarray(centre, float), lo, occ, level=float(level),
                   extra={"radii_mm": np.round(np.sort(radii)[::-1], 2).tolist()})


def _pick(rng: np.random.Generator, points: np.ndarray) -> np.ndarray:
    return points[int(rng.integers(len(points)))]


def _pv_lesion(rng, s: _Sites, type_: str, key: str, thickness: float, irregular: float,
               levels: tuple[float, float]) -> _Lesion:
    """A periventricular cap (hugging a horn tip) or band (lining a ventricle body's outer wall),
    ``thickness`` (mm) give or take 15 % per lesion, its FLAIR level drawn from ``levels``."""
    thickness = thickness * rng.uniform(0.85, 1.15)
    level = float(rng.uniform(*levels))
    if type_ == "periventricular_cap":
        centre = s.horn_tips[key]
        reach = 5.0 + 1.3 * thickness
        lo, p = _box(centre, reach + thickness + 3.0)
        r = np.linalg.norm(p - np.float32(centre), axis=-1)
        near = soft_inside(r - reach, 1.5)
        taper = np.clip(1.0 - r / (reach + 3.0), 0.2, 1.0)
    else:
        side = key.rsplit("_", 1)[-1]
        blo, bhi = s.ventricle_boxes[side]
        lo, p = _box((blo + bhi) / 2, (bhi - blo) / 2)
        y_front, y_back = s.horn_tips[f"frontal_{side}"][1], s.horn_tips[f"occipital_{side}"][1]
        y, z = p[..., 1], p[..., 2]
        # the bodies, between the caps' zones, above the temporal horns, on the outer side
        near = soft_inside(y_front + 16 - y, 2.0) * soft_inside(y - (y_back - 22), 2.0) * soft_inside(2.0 - z, 2.0)
        centre_x = (blo[0] + bhi[0]) / 2
        near = near * soft_inside(np.abs(centre_x) - 4.0 - np.abs(p[..., 0]), 2.0)
        taper = 1.0
        centre = np.array([centre_x, (y_front + y_back) / 2, 15.0])
    d_lv = s.read(s.dist_lv, lo, p.shape[:-1], cval=99.0)
    wob = _wobble(rng, p, centre, 5.0, irregular * thickness) if irregular > 0 else 0.0
    occ = soft_inside(d_lv - thickness * taper - wob, 0.6) * near
    return _Lesion(type_, "periventricular", np.asarray(centre, float), lo, occ.astype(np.float32), level=level,
                   extra={"site": key, "thickness_mm": round(float(thickness), 2)})


def _confluent(rng, s: _Sites, centre: np.ndarray, radii: np.ndarray) -> _Lesion:
    """A confluent deep WMH: a noisy blob that keeps to the white matter and spares the U-fibres."""
    lo, p = _box(centre, radii.max() + 5.0)
    shape = p.shape[:-1]
    noise = smooth_field(rng, shape, 2.5)
    d = ellipsoid_distance(p, centre, radii, _frame(rng.normal(size=3), rng)) + 3.0 * noise
    wm = np.clip((s.read(s.wm, lo, shape) - 0.35) / 0.35, 0.0, 1.0)
    spare = soft_inside(s.read(s.dist_ctx, lo, shape) - 4.0, 1.0)  # 1 within ~4 mm of the cortex
    occ = soft_inside(d, 0.8) * wm * (1.0 - spare)
    return _Lesion("deep_wmh_confluent", "deep_white_matter", np.asarray(centre, float), lo, occ.astype(np.float32),
                   level=float(rng.uniform(1.6, 2.2)), extra={"radii_mm": np.round(radii, 1).tolist()})


def _lacune(rng, s: _Sites) -> _Lesion:
    """A 3-15 mm fluid cavity along a perforating artery, with a thin bright gliotic rim."""
    location = str(rng.choice(["basal_ganglia", "thalamus", "deep_white_matter"], p=[0.5, 0.2, 0.3]))
    centre = _pick(rng, s.nuclei[location])
    r = rng.uniform(1.5, 5.5) if location != "thalamus" else rng.uniform(1.5, 4.0)
    radii = np.array([r * rng.uniform(1.0, 1.35), r, r * rng.uniform(0.8, 1.0)])
    axes = _frame(np.array([rng.normal(0, 0.3), rng.normal(0, 0.3), 1.0]), rng)
    lo, p = _box(centre, radii.max() + 4.0)
    d = ellipsoid_distance(p, centre, radii, axes) + _wobble(rng, p, centre, 2 * r, 0.12 * r)
    cavity = soft_inside(d, 0.4)
    rim_w = rng.uniform(1.0, 1.8)
    rim = np.clip(soft_inside(d - rim_w, 0.5) - cavity, 0.0, 1.0)
    return _Lesion("lacune", location, np.asarray(centre, float), lo, rim.astype(np.float32), cavity.astype(np.float32),
                   level=float(rng.uniform(1.4, 1.8)), extra={"radii_mm": np.round(radii, 2).tolist(), "rim_mm": round(float(rim_w), 2)})


def _volume(les: _Lesion, s: _Sites) -> float:
    """Template-space volume (mm³) of a lesion's tissue (bright part) or fluid (lacune), counted
    in the parenchyma only: a cap's occupancy inside the ventricle is no lesion."""
    occ = les.occupancy
    par = np.clip(s.read(s.gm, les.lo, occ.shape) + s.read(s.wm, les.lo, occ.shape), 0.0, 1.0)
    return float(np.sum(occ * par))
