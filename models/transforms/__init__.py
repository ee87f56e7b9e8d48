"""Transforms between a series' own grid and a network's input, recorded so maps can go back.

A model receives a :class:`~neuroread.models.SeriesVolume` on the series' grid and returns every
map on that grid (same shape as its ``array``). The transforms here change geometry or
intensities and record what they did; the record takes a map computed on the network's grid
back onto the source grid.

- :mod:`.planar`: in-plane geometry, per slice (:class:`SquareResize`, :class:`CropBox`).
- :mod:`.intensity`: intensities (:class:`Window`, :class:`Windows`, :class:`ZScore`,
  :class:`PercentileScale`).
- :mod:`.grid`: 3-D geometry with SimpleITK (:class:`VoxelGrid`, :func:`resample_onto`,
  :class:`ResampleToSpacing`, ...).

Conventions: arrays are (slices, rows, columns), SimpleITK's (z, y, x); ``spacing`` is (column,
row, slice) mm; a direction matrix has the row, column and slice unit vectors (the directions of
increasing column, row and slice index) as its columns, as ITK's does; points are LPS mm;
voxel centres are at integer indices. ``forward`` returns ``(output, record)`` where the output
depends on the data; records are frozen dataclasses of plain numbers. Slice sampling is
model-specific and stays with the models.
"""
from ._checks import Array as Array
from .grid import (
    INTERPOLATORS,
    ResampleToSpacing,
    SpacingRecord,
    VoxelGrid,
    check_same_frame,
    from_sitk,
    resample_onto,
    to_sitk,
)
from .grid import Moving as Moving
from .intensity import PercentileRecord, PercentileScale, Window, Windows, ZScore, ZScoreRecord
from .planar import CropBox, CropRecord, SquareRecord, SquareResize

__all__ = [
    "INTERPOLATORS", "CropBox", "CropRecord", "PercentileRecord", "PercentileScale", "ResampleToSpacing",
    "SpacingRecord", "SquareRecord", "SquareResize", "VoxelGrid", "Window", "Windows", "ZScore", "ZScoreRecord",
    "check_same_frame", "from_sitk", "resample_onto", "to_sitk",
]
