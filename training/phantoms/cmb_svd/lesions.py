"""cmb-svd lesions: microbleeds by subtype pattern, CAA's superficial siderosis, white-matter disease."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage

from ..anatomy import CEREBELLUM, BrainTemplate
from ..geometry import smooth_field
from .sites import _direction, _region_name, _Sites, _surface_points

if TYPE_CHECKING:
    from .subject import Subject


@dataclass
class Microbleed:
    """One microbleed: a hemosiderin core that blooms on SWI."""

    centre: np.ndarray  # template LPS
    r_true: float  # hemosiderin core (mm)
    r_app: float  # apparent (blooming) radius: darkening falls to half here
    location_class: str  # lobar | deep | infratentorial
    region: str
    depth: float  # darkening at the core, 0..1


_DEEP_WEIGHT = {
    "arteriolosclerosis": {"Putamen": 0.35, "Thalamus_Proper": 0.35, "Caudate": 0.15, "Pallidum": 0.15},
    "cadasil": {"Putamen": 0.2, "Thalamus_Proper": 0.6, "Caudate": 0.1, "Pallidum": 0.1},
}
# Share of the non-index microbleeds by location class.
_MIX = {
    "arteriolosclerosis": {"deep": 0.55, "infratentorial": 0.2, "lobar": 0.25},
    "cadasil": {"deep": 0.55, "infratentorial": 0.15, "lobar": 0.3},
    "caa": {"lobar": 1.0},
}
# White-matter hyperintensity: weight of each pattern map (ranges drawn per subject).
_WMH = {
    "arteriolosclerosis": {"periventricular": (0.45, 1.1), "deep": (0.3, 0.85)},
    "caa": {"periventricular": (0.0, 0.6), "posterior": (0.2, 0.8)},
    "cadasil": {
        "periventricular": (0.7, 1.1),
        "deep": (0.5, 0.9),
        "anterior_temporal": (0.9, 1.2),
        "external_capsule": (0.9, 1.2),
    },
}
_WMH_NOISE = (0.1, 0.08)  # amplitude of the coarse and fine patchiness of white-matter disease
_WMH_THRESHOLD = 0.5


def _modulation(rng: np.random.Generator, label: str, sites: _Sites, age: float) -> tuple[np.ndarray, dict[str, float]]:
    """Signal multiplier on the padded atlas grid: iron, drop-out and white-matter hyperintensity."""
    shape = sites.iron.shape
    weights = {k: float(rng.uniform(*r)) for k, r in _WMH[label].items()}
    score = np.zeros(shape, np.float32)
    for k, w in weights.items():
        score += w * sites.wmh_maps[k]
    # Patchy lesions: smooth noise at two scales, sampled only where a pattern is present.
    where = np.nonzero(score > 0.05)
    idx = np.stack(where).astype(np.float32)
    noise = np.zeros(len(where[0]), np.float32)
    for factor, amp in ((4.0, _WMH_NOISE[0]), (2.0, _WMH_NOISE[1])):
        field_ = smooth_field(rng, tuple(int(s // factor) + 2 for s in shape), 1.0)
        noise += amp * ndimage.map_coordinates(field_, idx / factor, order=1, mode="nearest")
    wmh = np.zeros(shape, np.float32)
    wmh[where] = 1.0 / (1.0 + np.exp(-(score[where] + noise - _WMH_THRESHOLD) / 0.06))
    ageing = float(np.clip((age - 40) / 50, 0, 1))
    mult = 1.0 - float(rng.uniform(0.12, 0.2) + 0.12 * ageing) * sites.iron
    mult -= float(rng.uniform(0.1, 0.3)) * sites.dropout["frontal"]
    mult -= float(rng.uniform(0.1, 0.3)) * sites.dropout["temporal"]
    mult = np.clip(mult, 0.05, 1.0) * (1.0 + float(rng.uniform(0.1, 0.16)) * wmh)
    return mult.astype(np.float32), weights


def _siderosis(rng: np.random.Generator, t: BrainTemplate, sites: _Sites) -> dict | None:
    """CAA's superficial siderosis, in some subjects: a patch of dark lining of the cortical sulci."""
    if rng.random() >= 0.45:
        return None
    azim = rng.uniform(195, 345) if rng.random() < 0.7 else rng.uniform(15, 165)  # mostly posterior
    c = _surface_points(t, _direction(np.array([rng.uniform(15, 55)]), np.array([azim])), -4.0)[0]
    return {"centre": c, "radius": float(rng.uniform(14, 24)), "depth": float(rng.uniform(0.7, 0.9)),
            "region": _region_name(sites, t, c)}


def _place(rng, ok, points: np.ndarray, weights: np.ndarray | None, r_app: float, tries: int = 200):
    for _ in range(tries):
        i = int(rng.choice(len(points), p=weights)) if weights is not None else int(rng.integers(len(points)))
        c = points[i] + rng.uniform(-0.75, 0.75, 3)
        if ok(c, r_app):
            return i, c
    return None


def _place_microbleeds(rng: np.random.Generator, subject: Subject, sites: _Sites, t: BrainTemplate) -> None:
    """Microbleeds by subtype pattern, apart from each other, the mimics and the siderosis."""
    label, grid, placed = subject.label, subject.grid, subject.microbleeds
    mimics, sid = subject.mimics, subject.siderosis
    diagonals = np.array([[1, 1, 1], [-1, -1, 1], [1, -1, -1], [-1, 1, -1]]) / np.sqrt(3)
    axes = np.concatenate([np.zeros((1, 3)), np.eye(3), -np.eye(3), diagonals])  # centre and 10 probes

    def ok(c: np.ndarray, r: float) -> bool:
        for b in placed:
            if np.linalg.norm(b.centre - c) < (b.r_app + r) * 1.6 + 3.0:
                return False
        probe = (c + axes * (r * 1.6 + 2.0)).astype(np.float32)
        if mimics.sample(probe).max() > 0.03:
            return False
        if sid is not None and np.linalg.norm(c - sid["centre"]) < sid["radius"] + 3 * r + 4:
            return False
        if t.gm.sample(probe[:1])[0] + t.wm.sample(probe[:1])[0] < 0.75:
            return False
        return subject.covers(c, 2 * r)

    min_d = max(2.0, 1.5 * grid.pixel_spacing[0])
    n = int(np.clip(np.round(np.exp(rng.uniform(0, np.log(25.5)))), 1, 25))
    for k in range(n):
        d_app = (max(min_d, 4.0) + rng.uniform(0, 4)) if k == 0 else min_d + (10 - min_d) * rng.beta(1.2, 4.0)
        r_app = d_app / 2
        if label == "caa":
            where = "lobar"
        elif k == 0:
            where = "deep" if rng.random() < 0.8 else "infratentorial"
        else:
            m = _MIX[label]
            where = str(rng.choice(list(m), p=list(m.values())))
        if where == "lobar":
            got = _place(rng, ok, sites.lobar, sites.lobar_caa_weight if label == "caa" else None, r_app)
            region = sites.names.get(int(sites.lobar_region[got[0]]), "") if got else ""
        elif where == "deep":
            w = _DEEP_WEIGHT[label]
            part = str(rng.choice(list(w), p=list(w.values())))
            region = f"{'Left' if rng.random() < 0.5 else 'Right'}_{part}"
            got = _place(rng, ok, sites.deep[region], None, r_app)
        else:
            r_app = min(r_app, 3.0)
            region = "Brain_Stem" if rng.random() < 0.6 else str(rng.choice(CEREBELLUM[:4]))
            got = _place(rng, ok, sites.infratentorial[region], None, r_app)
        if got is None:
            continue
        if region == "Brain_Stem":
            z = got[1][2]
            region = f"Brain_Stem ({'midbrain' if z > -14 else 'pons' if z > -40 else 'medulla'})"
        placed.append(Microbleed(got[1], r_app / subject.bloom, r_app, where, region, float(rng.uniform(0.82, 0.96))))
