"""Slice detections merged into 3D microbleeds.

The detector sees one slice (with its neighbours) at a time; a microbleed of 5 mm on 1.5 mm
slices is found on three or four slices in a row. :func:`merge_detections` links two
detections when they lie on slices at most ``1 + gap`` apart and their masks overlap in the
plane or their centres are within ``link_mm`` (half a small microbleed's diameter by default),
and takes each connected group as one microbleed: the union of its masks, its best member's
score and representation, its voxel count as volume.

A group much longer through the slices than it is wide is a vessel seen end-on (a medullary
or cortical vein crossing the slices), not a microbleed, which is round: it is dropped when its
extent through the slices exceeds ``max_elongation`` times its largest in-plane diameter plus
one slice (:data:`MAX_ELONGATION`; a round microbleed spans about its diameter).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

GAP = 1
LINK_MM = 2.0
MAX_ELONGATION = 2.5


@dataclass(frozen=True)
class SliceDetection:
    """One detection on slice ``slice``: its in-plane boolean ``mask`` on the series' grid
    (rows, columns), ``score`` and the detector's ``representation`` of it."""

    slice: int
    mask: np.ndarray
    score: float
    representation: np.ndarray

    @property
    def centre(self) -> np.ndarray:
        return np.argwhere(self.mask).mean(axis=0)


@dataclass(frozen=True)
class Microbleed3D:
    """A merged microbleed: ``mask`` (slices, rows, columns) bool, ``score`` and
    ``representation`` of its best detection, ``best_slice`` where that detection is,
    ``members`` how many detections it merges."""

    mask: np.ndarray
    score: float
    representation: np.ndarray
    best_slice: int
    members: int
    known_indices: np.ndarray | None = field(default=None, repr=False, compare=False)

    @property
    def indices(self) -> np.ndarray:
        """``[voxels, 3]`` (slice, row, column) of the mask: ``known_indices`` when the maker gave
        them (a scan of the whole volume costs about 10 ms a microbleed), else computed once."""
        if self.known_indices is None:
            object.__setattr__(self, "known_indices", np.argwhere(self.mask))
        return self.known_indices

    @property
    def centroid(self) -> np.ndarray:
        """Mean (slice, row, column) index of the mask."""
        return self.indices.mean(axis=0)

    @property
    def voxels(self) -> int:
        return len(self.indices)

    @property
    def slices(self) -> np.ndarray:
        return np.unique(self.indices[:, 0])


def _find(parent: list[int], i: int) -> int:
    while parent[i] != i:
        parent[i] = parent[parent[i]]
        i = parent[i]
    return i


def merge_detections(detections: list[SliceDetection], shape: tuple[int, int, int],
                     spacing: tuple[float, float, float], *, gap: int = GAP, link_mm: float = LINK_MM,
                     max_elongation: float = MAX_ELONGATION) -> list[Microbleed3D]:
    """3D microbleeds from slice detections (module docstring), ordered by first slice, then row,
    then column of their centre. ``shape`` is the series' (slices, rows, columns), ``spacing``
    its (column, row, slice) spacing in mm as ITK orders it."""
    if any(d.mask.shape != tuple(shape[1:]) for d in detections):
        raise ValueError(f"every detection mask must be a slice of the series' grid {tuple(shape[1:])}")
    dets = sorted((d for d in detections if d.mask.any()), key=lambda d: d.slice)
    parent = list(range(len(dets)))
    pixel = np.array([spacing[1], spacing[0]], float)
    centres = [d.centre * pixel for d in dets]
    for i, a in enumerate(dets):
        for j in range(i + 1, len(dets)):
            b = dets[j]
            if b.slice == a.slice:
                continue
            if b.slice - a.slice > 1 + gap:
                break
            if np.linalg.norm(centres[i] - centres[j]) <= link_mm or (a.mask & b.mask).any():
                parent[_find(parent, i)] = _find(parent, j)
    groups: dict[int, list[int]] = {}
    for i in range(len(dets)):
        groups.setdefault(_find(parent, i), []).append(i)
    out = []
    for members in groups.values():
        mask = np.zeros(shape, bool)
        for i in members:
            mask[dets[i].slice] |= dets[i].mask
        indices = np.concatenate([np.column_stack([np.full(len(rc), k), rc]) for k in sorted({dets[i].slice for i in members})
                                  for rc in [np.argwhere(mask[k])]])
        best = max(members, key=lambda i: (dets[i].score, -dets[i].slice))
        first, last = min(dets[i].slice for i in members), max(dets[i].slice for i in members)
        extent = (last - first + 1) * spacing[2]
        diameter = max(2.0 * np.sqrt(dets[i].mask.sum() * pixel.prod() / np.pi) for i in members)
        if extent > max_elongation * diameter + spacing[2]:
            continue
        out.append(Microbleed3D(mask, float(dets[best].score), dets[best].representation, dets[best].slice,
                                len(members), indices))
    return sorted(out, key=lambda m: (int(m.slices[0]), *m.centroid[1:].round(3)))
