"""Each disease's lesion pattern: which lesions a subject of either class gets, and where.

- ms: lesions in at least two of the four typical areas (periventricular with Dawson's
  fingers, juxtacortical, infratentorial, callosal), non-specific deep ones, sometimes thin
  frontal caps.
- csvd: symmetric caps and bands graded by periventricular Fazekas, deep WMH graded by deep
  Fazekas (punctate, then confluent), lacunes.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .lesions import _confluent, _frame, _lacune, _Lesion, _ovoid, _pick, _pv_lesion
from .sites import _Sites

# The lesion types each class shows (truth "type"; "location" is the coarser place class).
MS_TYPES = ("periventricular_ovoid", "juxtacortical", "infratentorial", "callosal", "deep_nonspecific", "periventricular_cap")
CSVD_TYPES = ("periventricular_cap", "periventricular_band", "deep_wmh_punctate", "deep_wmh_confluent", "lacune")


def _radial_site(rng, s: _Sites, sites: np.ndarray, normals: np.ndarray, long_r: float, along: float):
    """A lesion centre ``along * long_r`` out from the ventricle wall next to a random site, its
    far end kept in the white matter (at least 3 mm from the cortex); returns (centre, radial
    direction)."""
    for _ in range(50):
        i = int(rng.integers(len(sites)))
        wall = sites[i] - normals[i] * s.read(s.dist_lv, np.rint(sites[i]).astype(int), (1, 1, 1))[0, 0, 0]
        far = np.rint(wall + normals[i] * (long_r * (along + 1.0))).astype(int)
        if s.read(s.dist_ctx, far, (1, 1, 1))[0, 0, 0] >= 3.0 and s.read(s.wm, far, (1, 1, 1))[0, 0, 0] > 0.5:
            break
    return wall + normals[i] * (long_r * along), normals[i]


def _dawson_finger(rng, s: _Sites, long_r: float, short: float, along: float, irregular: float) -> _Lesion:
    """A periventricular ovoid whose long axis runs radially away from the ventricle wall."""
    centre, n = _radial_site(rng, s, s.periventricular, s.pv_normals, long_r, along)
    return _ovoid(rng, "periventricular_ovoid", "periventricular", centre, (long_r, short, short * rng.uniform(0.8, 1.2)),
                  _frame(n, rng), rng.uniform(1.7, 2.4), irregular)


def _ms_lesions(rng: np.random.Generator, s: _Sites, burden: float) -> list[_Lesion]:
    """MS: lesions in at least two of the four typical areas (dissemination in space), plus
    non-specific deep ones; ``burden`` (0..1) scales their number and size."""
    counts = {
        "periventricular_ovoid": rng.poisson(1.0 + 8.0 * burden) if rng.random() < 0.93 else 0,
        "juxtacortical": rng.poisson(0.5 + 4.0 * burden) if rng.random() < 0.75 else 0,
        "infratentorial": rng.poisson(0.8 + 2.0 * burden) if rng.random() < 0.6 else 0,
        "callosal": rng.poisson(0.6 + 1.5 * burden) if rng.random() < 0.5 else 0,
        "deep_nonspecific": rng.poisson(0.5 + 4.0 * burden),
    }
    typical = ("periventricular_ovoid", "juxtacortical", "infratentorial", "callosal")
    while sum(counts[k] > 0 for k in typical) < 2:
        counts[typical[int(rng.integers(4))]] += 1
    size = 0.85 + 1.4 * burden
    small = min(size, 1.4)
    out: list[_Lesion] = []
    # Advanced disease: large confluent periventricular lesions, still radial.
    for _ in range(rng.poisson(7.0 * (burden - 0.4)) if burden > 0.4 else 0):
        long_r, short = rng.uniform(7.0, 12.0), rng.uniform(3.5, 5.5)
        out.append(_dawson_finger(rng, s, long_r, short, 0.8, 0.25))
        out[-1].extra["confluent"] = True
    for _ in range(counts["periventricular_ovoid"]):
        short = rng.uniform(2.0, 3.2) * small
        long_r = max(rng.uniform(3.5, 7.0) * size, short * rng.uniform(1.6, 2.4))  # ovoid, not round
        out.append(_dawson_finger(rng, s, long_r, short, 0.85, 0.1))
    for _ in range(counts["juxtacortical"]):
        r = rng.uniform(2.5, 4.5) * small
        radii = (r * rng.uniform(1.0, 1.6), r, r * rng.uniform(0.85, 1.0))
        out.append(_ovoid(rng, "juxtacortical", "juxtacortical", _pick(rng, s.juxtacortical), radii,
                          _frame(rng.normal(size=3), rng), rng.uniform(1.7, 2.3), 0.2))
    for _ in range(counts["infratentorial"]):
        pons = rng.random() < 0.6
        r = rng.uniform(2.3, 3.6) * min(size, 1.2)
        out.append(_ovoid(rng, "infratentorial", "infratentorial", _pick(rng, s.brainstem if pons else s.peduncle),
                          (r * rng.uniform(1.0, 1.5), r, r), _frame(rng.normal(size=3), rng), rng.uniform(1.7, 2.3), 0.15))
        out[-1].extra["site"] = "pons" if pons else "cerebellar_peduncle"
    for _ in range(counts["callosal"]):
        long_r = rng.uniform(4.0, 6.5) * small
        centre, n = _radial_site(rng, s, s.callosal, s.callosal_normals, long_r, 0.8)
        out.append(_ovoid(rng, "callosal", "callosal", centre, (long_r, 2.3 * small, 2.6), _frame(n, rng),
                          rng.uniform(1.7, 2.3), 0.1))
    for _ in range(counts["deep_nonspecific"]):
        r = rng.uniform(1.5, 4.0) * size
        radii = (r * rng.uniform(1.0, 1.7), r, r * rng.uniform(0.8, 1.0))
        out.append(_ovoid(rng, "deep_nonspecific", "deep_white_matter", _pick(rng, s.deep), radii,
                          _frame(rng.normal(size=3), rng), rng.uniform(1.6, 2.3), 0.2))
    return out


def _maybe_paired(rng: np.random.Generator, points: np.ndarray, chance: float, jitter: float) -> list[np.ndarray]:
    """A random candidate site and, with ``chance``, the site nearest to its left-right mirror
    image (plus ``jitter`` mm): cSVD lesions tend to be symmetric."""
    p = _pick(rng, points)
    if rng.random() >= chance:
        return [p]
    target = np.array([-p[0], p[1], p[2]]) + rng.normal(0.0, jitter, 3)
    return [p, points[int(np.argmin(np.sum((points - target) ** 2, axis=1)))]]


def _csvd_lesions(rng: np.random.Generator, s: _Sites, grade: int, pv_grade: int) -> list[_Lesion]:
    """cSVD: symmetric caps and bands (periventricular grade), deep WMH (Fazekas grade), lacunes."""
    out: list[_Lesion] = []
    irregular = 0.35 if pv_grade == 3 else 0.1
    cap = rng.uniform(*{1: (2.5, 4.0), 2: (3.5, 5.5), 3: (5.0, 7.5)}[pv_grade])
    for key in ("frontal_left", "frontal_right", "occipital_left", "occipital_right"):
        if key.startswith("occipital") and rng.random() < 0.3:
            continue
        out.append(_pv_lesion(rng, s, "periventricular_cap", key, cap, irregular, (1.5, 2.0)))
    if pv_grade >= 2 or rng.random() < 0.5:
        band = rng.uniform(*{1: (0.8, 1.5), 2: (1.5, 2.5), 3: (2.5, 4.0)}[pv_grade])
        for side in ("left", "right"):
            out.append(_pv_lesion(rng, s, "periventricular_band", f"body_{side}", band, irregular, (1.45, 1.9)))

    n_foci = int({1: rng.integers(3, 14), 2: rng.integers(5, 15), 3: rng.integers(3, 10)}[grade])
    r_foci = {1: (1.5, 3.2), 2: (1.6, 3.5), 3: (1.6, 3.5)}[grade]
    placed = 0
    while placed < n_foci:
        for p in _maybe_paired(rng, s.deep, 0.6, 4.0):
            r = rng.uniform(*r_foci)
            out.append(_ovoid(rng, "deep_wmh_punctate", "deep_white_matter", p, (r, r, r * rng.uniform(0.8, 1.2)), None,
                              rng.uniform(1.5, 2.1), 0.1))
            placed += 1
    patches = {1: (0, 0, (0, 0)), 2: (1, 4, (4.0, 7.0)), 3: (1, 3, (7.0, 12.0))}[grade]
    for _ in range(int(rng.integers(patches[0], patches[1] + 1)) if grade > 1 else 0):
        for p in _maybe_paired(rng, s.deep, 0.7, 5.0):
            out.append(_confluent(rng, s, p, rng.uniform(*patches[2], 3)))
    n_lac = int({1: rng.choice([0, 0, 1]), 2: rng.integers(0, 4), 3: rng.integers(1, 6)}[grade])
    out.extend(_lacune(rng, s) for _ in range(n_lac))
    return out


@dataclass(frozen=True)
class _Disease:
    """One subject's disease: its lesions and the global signs that go with them."""

    lesions: list[_Lesion]
    atrophy: float  # 0..1, widens sulci, extra-axial CSF and ventricles
    burden: float | None = None  # MS lesion burden 0..1
    grade: int | None = None  # cSVD Fazekas grade of the deep white matter
    pv_grade: int | None = None  # cSVD Fazekas grade of the periventricular white matter


def _draw_disease(rng: np.random.Generator, s: _Sites, label: str, age: int) -> _Disease:
    """Lesions and atrophy for a subject of class ``label`` and ``age``."""
    ageing = float(np.clip((age - 50.0) / 35.0, 0.0, 1.0))
    if label == "ms":
        burden = float(rng.uniform(0.0, 1.0))
        atrophy = float(np.clip(rng.uniform(0.0, 0.25) + 0.25 * burden, 0.0, 0.9))
        lesions = _ms_lesions(rng, s, burden)
        if rng.random() < 0.15 + 0.25 * np.clip((age - 35.0) / 25.0, 0.0, 1.0):
            # thin frontal caps, non-specific (as in normal ageing): caps alone do not mean cSVD
            cap = rng.uniform(1.5, 2.8)
            for key in ("frontal_left", "frontal_right"):
                lesions.append(_pv_lesion(rng, s, "periventricular_cap", key, cap, 0.1, (1.4, 1.8)))
        return _Disease(lesions, atrophy, burden=burden)
    grade = int(rng.choice([1, 2, 3], p=[0.38, 0.34, 0.28]))
    pv_grade = int(np.clip(grade + rng.integers(-1, 2), 1, 3))
    atrophy = float(np.clip(rng.uniform(0.05, 0.35) + 0.12 * (grade - 1) + 0.2 * ageing, 0.0, 0.9))
    return _Disease(_csvd_lesions(rng, s, grade, pv_grade), atrophy, grade=grade, pv_grade=pv_grade)
