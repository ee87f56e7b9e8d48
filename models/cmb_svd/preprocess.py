"""SWI input for the microbleed detector, shared by training and the node.

**Canvas** (:func:`canvas_grid`): every slice is resampled (linear, SimpleITK) onto a square
grid of the network's ``input_size`` pixels at ``pixel_mm`` in the slice's own plane, centred
on the slice's centre, the slices kept as they are. A detector then sees every series at one
scale whatever its matrix and field of view; a field of view larger than the canvas
(``input_size × pixel_mm``, 230 mm in both presets) loses its edge, which holds no brain in a
head SWI. :meth:`Prepared.to_source` takes a canvas map back onto the series' grid.

**Intensities**: SWI magnitude has no units, so each series is scaled by its own white matter:
the head is the voxels above :data:`HEAD_FRACTION` of the 99th percentile, and its 75th
percentile (the white matter, the largest bright tissue) goes to 1; values are clipped to
[0, :data:`CEILING`] and centred (``(x - 0.75) / 0.4``) for the network.

**2.5D**: slice ``k``'s input is slices ``k - 1``, ``k`` and ``k + 1`` as three channels (the
first and last slices repeat themselves).

A series needs at least :data:`MIN_SLICES` slices (a 3D SWI has 60 or more); fewer, or a series
without signal, raise :class:`UnusableSeries` with the reason.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..result import SeriesVolume
from ..transforms import VoxelGrid, resample_onto

HEAD_FRACTION = 0.12
REFERENCE_PERCENTILE = 75.0
CEILING = 2.0
CENTRE, SCALE = 0.75, 0.4
MIN_SLICES = 16


class UnusableSeries(ValueError):
    """A series this model cannot read (too few slices, no signal)."""


def canvas_grid(source: VoxelGrid, pixel_mm: float, size: int) -> VoxelGrid:
    """The canvas grid of ``source``: ``size`` × ``size`` pixels of ``pixel_mm`` on each of its
    slices, centred on the slice's centre, same direction and slice positions."""
    rows, cols = source.shape[1], source.shape[2]
    centre = source.index_to_lps(np.array([0.0, (rows - 1) / 2, (cols - 1) / 2]))
    half = (size - 1) / 2 * pixel_mm
    origin = centre - source.matrix[:, 0] * half - source.matrix[:, 1] * half
    return VoxelGrid((source.shape[0], size, size), (pixel_mm, pixel_mm, source.spacing[2]), tuple(origin),
                     source.direction)


def normalise(array: np.ndarray) -> np.ndarray:
    """The series scaled by its white matter (module docstring), float32 in [0, CEILING]."""
    a = np.asarray(array, np.float32)
    top = float(np.percentile(a, 99))
    if not np.isfinite(top) or top <= 0:
        raise UnusableSeries("the series has no signal (its 99th percentile is not above 0)")
    ref = float(np.percentile(a[a > HEAD_FRACTION * top], REFERENCE_PERCENTILE))
    return np.clip(a / max(ref, 1e-6), 0.0, CEILING)


@dataclass(frozen=True)
class Prepared:
    """One series on the canvas: ``canvas [n, S, S]`` float32 (normalised and centred),
    ``grid`` the canvas grid, ``source`` the series' grid, ``scaled`` the series on its own grid
    scaled by its white matter (:func:`normalise`)."""

    canvas: np.ndarray
    grid: VoxelGrid
    source: VoxelGrid
    scaled: np.ndarray

    def inputs(self, slices: np.ndarray | list[int]) -> torch.Tensor:
        """2.5D inputs ``[len(slices), 3, S, S]`` of the canvas slices ``slices``."""
        last = self.canvas.shape[0] - 1
        idx = np.asarray(slices, np.int64)
        stack = np.stack([self.canvas[np.clip(idx + d, 0, last)] for d in (-1, 0, 1)], axis=1)
        return torch.from_numpy(np.ascontiguousarray(stack, np.float32))

    def to_source(self, maps: np.ndarray, interpolator: str = "linear") -> np.ndarray:
        """Maps on the canvas (``canvas.shape``) → on the series' grid."""
        return resample_onto((np.asarray(maps), self.grid), self.source, interpolator=interpolator)

    def plane_to_source(self, plane: np.ndarray) -> np.ndarray:
        """One canvas slice's map ``[S, S]`` → the same slice of the series ``[rows, columns]``
        (linear; the canvas and the series share their slice planes, so this is a 2D scaling)."""
        from scipy import ndimage

        rows, cols = self.source.shape[1:]
        size, pixel = self.grid.shape[1], self.grid.spacing[0]
        half = (size - 1) / 2 * pixel
        col_mm, row_mm = self.source.spacing[0], self.source.spacing[1]
        offset = ((half - (rows - 1) / 2 * row_mm) / pixel, (half - (cols - 1) / 2 * col_mm) / pixel)
        return ndimage.affine_transform(np.asarray(plane, np.float32), (row_mm / pixel, col_mm / pixel), offset,
                                        output_shape=(rows, cols), order=1, mode="constant", cval=0.0)

    def to_canvas(self, maps: np.ndarray, interpolator: str = "nearest") -> np.ndarray:
        """Maps on the series' grid (e.g. a lesion label map) → on the canvas."""
        return resample_onto((np.asarray(maps), self.source), self.grid, interpolator=interpolator)


def prepare(volume: SeriesVolume, pixel_mm: float, size: int) -> Prepared:
    """An SWI series → :class:`Prepared` (raises :class:`UnusableSeries`, see the module docstring)."""
    n = volume.array.shape[0]
    if n < MIN_SLICES:
        raise UnusableSeries(f"it has {n} slices; cmb-svd needs at least {MIN_SLICES} axial SWI slices "
                             "(a 3D susceptibility-weighted acquisition)")
    source = VoxelGrid.of(volume)
    grid = canvas_grid(source, pixel_mm, size)
    scaled = normalise(volume.array)
    canvas = resample_onto((scaled, source), grid, interpolator="linear")
    return Prepared(((canvas - CENTRE) / SCALE).astype(np.float32), grid, source, scaled)
