"""All of a subject's lesions painted on one box of the 1 mm template lattice, and sampling it."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from .. import anatomy
from .lesions import _Lesion, _volume
from .sites import _Sites


@dataclass(frozen=True)
class _LesionField:
    """All lesions painted on one box of the 1 mm lattice (template space)."""

    lo: np.ndarray
    hi: np.ndarray
    bright: anatomy.Volume  # occupancy of hyperintense tissue
    bright_sig: anatomy.Volume  # occupancy × level
    cavity: anatomy.Volume
    ids: anatomy.Volume  # owner lesion id (1-based), 0 none
    is_lacune: np.ndarray  # by id

    def sample(self, q: np.ndarray) -> dict[str, np.ndarray]:
        flat = q.reshape(-1, 3)
        inside = np.all((flat >= self.lo - 1) & (flat <= self.hi + 1), axis=1)
        out = {k: np.zeros(len(flat), np.float32) for k in ("bright", "bright_sig", "cavity")}
        ids = np.zeros(len(flat), np.int32)
        if inside.any():
            sub = flat[inside]
            for key in out:
                out[key][inside] = _sample_aligned(getattr(self, key), sub)
            ids[inside] = _sample_aligned(self.ids, sub, order=0)
        res = {k: v.reshape(q.shape[:-1]) for k, v in out.items()}
        res["ids"] = ids.reshape(q.shape[:-1])
        return res


def _sample_aligned(volume: anatomy.Volume, points: np.ndarray, order: int = 1, cval: float = 0.0) -> np.ndarray:
    """:meth:`anatomy.Volume.sample` for an axis-aligned affine, without the general matrix
    product (several times faster on millions of points)."""
    a = volume.affine
    flat = points.reshape(-1, 3)
    idx = np.empty((3, len(flat)), np.float32)
    for axis in range(3):
        np.multiply(flat[:, axis] - np.float32(a[axis, 3]), np.float32(1.0 / a[axis, axis]), out=idx[axis])
    out = ndimage.map_coordinates(volume.array, idx, order=order, mode="constant", cval=cval, prefilter=False)
    return out.reshape(points.shape[:-1])


def _paint(lesions: list[_Lesion], s: _Sites) -> _LesionField:
    """Paint the lesions (later ones over earlier ones where they hold more) and measure them."""
    if lesions:
        lo = np.min([les.lo for les in lesions], axis=0)
        shape = np.max([les.lo + np.array(les.bright.shape) for les in lesions], axis=0) - lo
    else:
        lo, shape = np.zeros(3, int), np.ones(3, int)
    bright, sig, cav, own = (np.zeros(shape, np.float32) for _ in range(4))
    ids = np.zeros(shape, np.int16)
    for i, les in enumerate(lesions, start=1):
        sl = tuple(slice(a, a + n) for a, n in zip(les.lo - lo, les.bright.shape))
        upd = les.bright > bright[sl]
        bright[sl] = np.where(upd, les.bright, bright[sl])
        sig[sl] = np.where(upd, les.bright * np.float32(les.level), sig[sl])
        mine = les.occupancy
        if les.cavity is not None:
            cav[sl] = np.maximum(cav[sl], les.cavity)
        take = (mine > own[sl]) & (mine > 0.02)
        own[sl] = np.where(take, mine, own[sl])
        ids[sl] = np.where(take, np.int16(i), ids[sl])
        les.volume_mm3 = _volume(les, s)
    affine = np.eye(4)
    affine[:3, 3] = lo
    return _LesionField(
        lo=lo.astype(np.float32),
        hi=(lo + shape - 1).astype(np.float32),
        bright=anatomy.Volume(bright, affine),
        bright_sig=anatomy.Volume(sig, affine),
        cavity=anatomy.Volume(cav, affine),
        ids=anatomy.Volume(ids, affine),
        is_lacune=np.array([False] + [les.cavity is not None for les in lesions]),
    )
