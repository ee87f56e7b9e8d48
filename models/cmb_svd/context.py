"""The whole scan's context for the subtype: regional white-matter signal and microbleed counts.

The small-vessel-disease subtypes differ beyond their microbleeds: CADASIL's white-matter
disease reaches the anterior temporal poles and the external capsules, arteriolosclerosis'
lies periventricular and deep, CAA's is mild and posterior. White-matter hyperintensity is
mildly bright on SWI magnitude, so the mean signal of a white-matter region, against the median
of all cerebral white matter, measures it. The series is resampled onto the atlas grid through
its registration (:meth:`neuroread.models.atlas.Registration.sample_on_template`, 3 mm) and
the regions are fixed template-space masks (:func:`regions`), built once per process:

- ``periventricular``: cerebral white matter within 8 mm of the lateral ventricles;
- ``deep``: white matter 8-25 mm from the ventricles and more than 5 mm from the cortex;
- ``anterior_temporal``: the temporal poles' white matter (within 9 mm of the pole's cortex,
  in front of MNI y = -10 and below z = 2, not cortex);
- ``external_capsule``: between the putamen and the insula (within 4.5 mm of the one and 6 mm
  of the other, neither cortex nor putamen);
- ``frontal`` (MNI y > 20) and ``posterior`` (y < -55) subcortical white matter;
- ``deep_grey``: basal ganglia and thalami (their iron darkens them), ``cortex``.

Each feature is the region's 75th percentile over the white matter's median, minus one, on the
voxels the series covers (a region it does not cover reads 0; a series covering less than
:data:`MIN_COVERED` of the white matter is refused). Beside them,
``log(1 + n)`` of the microbleeds per location class and in all: with no microbleed at all
these context features alone decide the subtype (the MIL's bag is empty).
"""
from __future__ import annotations

import functools

import numpy as np
from scipy import ndimage

from ..atlas import LOCATION_CLASSES, Registration, load_atlas
from ..result import SeriesVolume

STEP = 2  # atlas voxels (1.5 mm) per context voxel
MIN_COVERED = 0.05  # share of the template's white matter a series must cover
REGIONS = ("periventricular", "deep", "anterior_temporal", "external_capsule", "frontal", "posterior", "deep_grey",
           "cortex")
CONTEXT_FEATURES = tuple(f"signal_{r}" for r in REGIONS) + tuple(f"count_{c}" for c in LOCATION_CLASSES) + ("count_all",)


@functools.lru_cache(maxsize=1)
def regions() -> dict[str, np.ndarray]:
    """Boolean masks of :data:`REGIONS` and ``white_matter`` on the atlas grid every :data:`STEP` voxels."""
    atlas = load_atlas()
    lab = atlas.labels[::STEP, ::STEP, ::STEP]
    names = atlas.names
    ids = {n: i for i, n in names.items()}
    mm = float(np.linalg.norm(atlas.affine[:3, 0])) * STEP
    points = atlas.grid_points(STEP)
    y, z = -points[..., 1], points[..., 2]  # MNI (RAS) from template LPS
    wm = np.isin(lab, [ids["Left_Cerebral_White_Matter"], ids["Right_Cerebral_White_Matter"]])
    ventricles = np.isin(lab, [ids["Left_Lateral_Ventricle"], ids["Right_Lateral_Ventricle"]])
    putamen = np.isin(lab, [ids["Left_Putamen"], ids["Right_Putamen"]])
    cortex = lab >= 100
    deep_grey = np.isin(lab, [ids[f"{s}_{p}"] for s in ("Left", "Right")
                              for p in ("Caudate", "Putamen", "Pallidum", "Thalamus_Proper")])
    from_vent = ndimage.distance_transform_edt(~ventricles) * mm
    from_cortex = ndimage.distance_transform_edt(~cortex) * mm
    from_putamen = ndimage.distance_transform_edt(~putamen) * mm
    from_pole = ndimage.distance_transform_edt(~np.isin(lab, [i for n, i in ids.items() if "_TMP_" in n])) * mm
    from_insula = ndimage.distance_transform_edt(~np.isin(lab, [i for n, i in ids.items() if "Ins_" in n])) * mm
    return {
        "white_matter": wm,
        "periventricular": wm & (from_vent <= 8),
        "deep": wm & (from_vent > 8) & (from_vent <= 25) & (from_cortex > 5),
        "anterior_temporal": (from_pole <= 9) & (y > -10) & (z < 2) & ~cortex | (wm & (from_pole <= 6)),
        "external_capsule": (from_putamen > 0) & (from_putamen <= 4.5) & (from_insula <= 6) & ~cortex,
        "frontal": wm & (y > 20) & (from_vent > 8),
        "posterior": wm & (y < -55) & (from_vent > 8),
        "deep_grey": deep_grey,
        "cortex": cortex,
    }


def signal_features(volume: SeriesVolume, registration: Registration) -> np.ndarray:
    """The regional signal features of one scan (the first :data:`REGIONS` of :data:`CONTEXT_FEATURES`)."""
    values = registration.sample_on_template(volume, STEP)
    masks = regions()
    covered = values > 0  # a series that covers part of the brain (a slab) reads the regions it covers
    white = values[masks["white_matter"] & covered]
    if white.size < MIN_COVERED * masks["white_matter"].sum():
        raise ValueError(f"the series covers {white.size / masks['white_matter'].sum():.0%} of the brain's white matter "
                         f"after registration; cmb-svd needs at least {MIN_COVERED:.0%}")
    reference = float(np.median(white))
    return np.array([float(np.percentile(values[masks[r] & covered], 75)) / reference - 1.0
                     if (masks[r] & covered).any() else 0.0 for r in REGIONS], np.float32)


def count_features(location_classes: list[str]) -> np.ndarray:
    """``log(1 + n)`` of the microbleeds per location class and in all (the rest of :data:`CONTEXT_FEATURES`)."""
    counts = [float(np.log1p(sum(c == k for c in location_classes))) for k in LOCATION_CLASSES]
    return np.array(counts + [float(np.log1p(len(location_classes)))], np.float32)


def scan_context(volume: SeriesVolume, registration: Registration, location_classes: list[str]) -> np.ndarray:
    """The :data:`CONTEXT_FEATURES` of one scan (module docstring), float32."""
    return np.concatenate([signal_features(volume, registration), count_features(location_classes)])
