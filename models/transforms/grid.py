"""3-D geometry with SimpleITK: :func:`to_sitk` and :func:`from_sitk`, :class:`VoxelGrid` (a
grid without voxels), :func:`resample_onto` (a second series, a mask file or any array with a
grid onto a reference grid), :func:`check_same_frame` and :class:`ResampleToSpacing` (record
:class:`SpacingRecord`).

Conventions as in :mod:`neuroread.models.transforms`.
"""
from __future__ import annotations

import difflib
import math
from dataclasses import dataclass
from typing import Any, Union

import numpy as np
import SimpleITK as sitk

from ..result import SeriesVolume
from ._checks import _finite, _integer, _points

INTERPOLATORS: tuple[str, ...] = ("linear", "nearest", "bspline")
_SITK_INTERPOLATORS = {"linear": sitk.sitkLinear, "nearest": sitk.sitkNearestNeighbor, "bspline": sitk.sitkBSpline}


def _triple(value: Any, what: str) -> tuple[float, float, float]:
    try:
        items = tuple(value)
    except TypeError:
        raise ValueError(f"{what} must be 3 finite numbers, got {value!r}") from None
    if len(items) != 3:
        raise ValueError(f"{what} must be 3 finite numbers, got {value!r}")
    return tuple(_finite(v, what) for v in items)  # type: ignore[return-value]


def _interpolator(name: Any, what: str) -> int:
    if name not in _SITK_INTERPOLATORS:
        close = difflib.get_close_matches(str(name), INTERPOLATORS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"{what} must be one of {', '.join(INTERPOLATORS)}, got {name!r}{hint}")
    return _SITK_INTERPOLATORS[name]


@dataclass(frozen=True)
class VoxelGrid:
    """A voxel grid without voxels.

    ``shape`` (slices, rows, columns); ``spacing`` (column, row, slice) mm; ``origin`` the LPS
    mm of voxel (0, 0, 0)'s centre; ``direction`` the 3x3 direction matrix row by row (9
    numbers, as SimpleITK's ``GetDirection`` gives it), non-singular.
    """

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...]

    def __post_init__(self) -> None:
        shape = tuple(self.shape)
        if len(shape) != 3:
            raise ValueError(f"VoxelGrid.shape must be (slices, rows, columns), got {self.shape!r}")
        object.__setattr__(self, "shape", tuple(_integer(n, 1, "VoxelGrid.shape") for n in shape))
        spacing = _triple(self.spacing, "VoxelGrid.spacing")
        if min(spacing) <= 0:
            raise ValueError(f"VoxelGrid.spacing must be positive, got {self.spacing!r}")
        object.__setattr__(self, "spacing", spacing)
        object.__setattr__(self, "origin", _triple(self.origin, "VoxelGrid.origin"))
        d = np.asarray(self.direction, float)
        if d.size != 9 or not np.all(np.isfinite(d)) or abs(np.linalg.det(d.reshape(3, 3))) < 1e-6:
            raise ValueError(f"VoxelGrid.direction must be a non-singular 3x3 matrix (9 finite numbers), "
                             f"got {self.direction!r}")
        object.__setattr__(self, "direction", tuple(float(v) for v in d.ravel()))

    @classmethod
    def of(cls, thing: SeriesVolume | sitk.Image | VoxelGrid) -> VoxelGrid:
        """The grid of a volume, a 3-D SimpleITK image, or a grid."""
        if isinstance(thing, VoxelGrid):
            return thing
        if isinstance(thing, SeriesVolume):
            return cls(thing.array.shape, thing.spacing, thing.origin, np.asarray(thing.direction, float).ravel())
        if isinstance(thing, sitk.Image):
            if thing.GetDimension() != 3:
                raise ValueError(f"VoxelGrid.of: a 3-D image is needed, got {thing.GetDimension()}-D")
            return cls(thing.GetSize()[::-1], thing.GetSpacing(), thing.GetOrigin(), thing.GetDirection())
        raise TypeError(f"VoxelGrid.of: expected a SeriesVolume, a SimpleITK image or a VoxelGrid, "
                        f"got {type(thing).__name__}")

    @property
    def matrix(self) -> np.ndarray:
        """The direction as a 3x3 float64 matrix (columns: column, row, slice axes in LPS)."""
        return np.asarray(self.direction, float).reshape(3, 3)

    def index_to_lps(self, index_zyx: Any) -> np.ndarray:
        """Continuous (slice, row, column) indices ``[..., 3]`` → LPS mm ``[..., 3]``."""
        ijk = _points(index_zyx, 3, "VoxelGrid.index_to_lps")[..., ::-1] * self.spacing
        return np.asarray(self.origin) + ijk @ self.matrix.T

    def lps_to_index(self, points: Any) -> np.ndarray:
        """LPS mm ``[..., 3]`` → continuous (slice, row, column) indices ``[..., 3]``."""
        d = _points(points, 3, "VoxelGrid.lps_to_index") - self.origin
        return (np.linalg.solve(self.matrix, d.reshape(-1, 3).T).T / self.spacing)[:, ::-1].reshape(d.shape)

    def to_sitk(self, array: np.ndarray) -> sitk.Image:
        """A SimpleITK image of ``array`` (this grid's shape, a real dtype; bool is stored as uint8,
        float16 as float32) on this grid."""
        a = np.asarray(array)
        if a.shape != self.shape:
            raise ValueError(f"array shape {a.shape} is not the grid's {self.shape}")
        if a.dtype.kind not in "biuf":
            raise ValueError(f"array dtype must be boolean, integer or float, got {a.dtype}")
        if a.dtype == bool or a.dtype == np.float16:
            a = a.astype(np.uint8 if a.dtype == bool else np.float32)
        image = sitk.GetImageFromArray(a, isVector=False)
        image.SetSpacing(self.spacing)
        image.SetOrigin(self.origin)
        image.SetDirection(self.direction)
        return image


def to_sitk(volume: SeriesVolume) -> sitk.Image:
    """The volume as a SimpleITK image: array (slices, rows, columns) is ITK's (z, y, x), with
    the volume's spacing, origin and direction (bool arrays become uint8, float16 float32)."""
    if not isinstance(volume, SeriesVolume):
        raise TypeError(f"to_sitk: expected a SeriesVolume, got {type(volume).__name__}")
    return VoxelGrid.of(volume).to_sitk(volume.array)


def from_sitk(image: sitk.Image) -> np.ndarray:
    """A copy of a SimpleITK image's voxels: (z, y, x), i.e. (slices, rows, columns) for 3-D,
    in the image's pixel type."""
    return sitk.GetArrayFromImage(image)


Moving = Union[SeriesVolume, sitk.Image, tuple]  # tuple: (np.ndarray, SeriesVolume | VoxelGrid | sitk.Image)


def _moving_image(moving: Moving) -> tuple[sitk.Image, np.dtype | None]:
    """(the image to resample, the numpy dtype nearest-neighbour output should have or None)."""
    if isinstance(moving, SeriesVolume):
        return to_sitk(moving), moving.array.dtype
    if isinstance(moving, sitk.Image):
        if moving.GetDimension() != 3 or moving.GetNumberOfComponentsPerPixel() != 1:
            raise ValueError(f"resample_onto: the moving image must be 3-D and scalar, got {moving.GetDimension()}-D "
                             f"with {moving.GetNumberOfComponentsPerPixel()} components")
        return moving, None
    if isinstance(moving, tuple) and len(moving) == 2:
        array = np.asarray(moving[0])
        return VoxelGrid.of(moving[1]).to_sitk(array), array.dtype
    raise TypeError("resample_onto: moving must be a SeriesVolume, a SimpleITK image or (array, grid), got "
                    f"{type(moving).__name__}")


def _grid_of_moving(moving: Moving) -> VoxelGrid:
    return VoxelGrid.of(moving[1] if isinstance(moving, tuple) else moving)


def check_same_frame(a: SeriesVolume, b: SeriesVolume) -> None:
    """ValueError naming both series unless both have the same, non-empty Frame of Reference UID."""
    fa, fb = a.frame_of_reference_uid, b.frame_of_reference_uid
    if not fa or not fb:
        missing = " and ".join(v.series_instance_uid for v, f in ((a, fa), (b, fb)) if not f)
        raise ValueError(f"series {a.series_instance_uid} and {b.series_instance_uid}: no Frame of Reference UID on "
                         f"{missing}, so they cannot be assumed to share patient coordinates")
    if fa != fb:
        raise ValueError(f"series {a.series_instance_uid} (frame of reference {fa}) and series "
                         f"{b.series_instance_uid} (frame of reference {fb}) are in different frames of reference; "
                         "register them and pass the transform")


def resample_onto(moving: Moving, reference: SeriesVolume | VoxelGrid | sitk.Image, *,
                  interpolator: str = "linear", transform: sitk.Transform | None = None, default: float = 0.0,
                  extrapolate: bool = False, check_frame: bool = True, threads: int | None = None) -> np.ndarray:
    """``moving`` resampled onto ``reference``'s grid: an array of ``reference``'s shape
    (slices, rows, columns).

    ``moving``: a :class:`SeriesVolume`, a 3-D scalar SimpleITK image (e.g. a mask file read
    with ``sitk.ReadImage``), or ``(array, grid)`` with ``array`` on the grid of a volume, a
    :class:`VoxelGrid` or an image. ``interpolator``: ``"linear"`` and ``"bspline"`` (cubic; may
    overshoot the input's range) give float32, ``"nearest"`` keeps the input's dtype (use it
    for labels and masks). ``transform``: a SimpleITK transform from the reference's physical
    space to the moving one's (as ``sitk.Resample`` expects, e.g. a registration's result);
    without one both are assumed in one frame of reference, and when both grids are
    :class:`SeriesVolume` that is checked (:func:`check_same_frame`) unless ``check_frame`` is
    False. ``default``: the value where a reference voxel falls outside the moving image (more
    than half a voxel beyond its outer voxel centres), or with ``extrapolate`` the nearest voxel's
    value there. ``threads``: SimpleITK's threads for this call (None: its default).
    """
    method = _interpolator(interpolator, "resample_onto: interpolator")
    grid = VoxelGrid.of(reference)
    if transform is None:
        source = moving[1] if isinstance(moving, tuple) and len(moving) == 2 else moving
        if check_frame and isinstance(source, SeriesVolume) and isinstance(reference, SeriesVolume):
            check_same_frame(source, reference)
        transform = sitk.Transform(3, sitk.sitkIdentity)
    elif not isinstance(transform, sitk.Transform) or transform.GetDimension() != 3:
        raise ValueError(f"resample_onto: transform must be a 3-D SimpleITK Transform, got {transform!r}")
    image, dtype = _moving_image(moving)
    if isinstance(default, bool) or not isinstance(default, (int, float, np.integer, np.floating)):
        raise ValueError(f"resample_onto: default must be a number, got {default!r}")
    default = float(default)
    nearest = interpolator == "nearest"
    kind = (np.dtype(dtype) if dtype is not None else sitk.GetArrayViewFromImage(image).dtype) if nearest else None
    if kind is not None and kind.kind in "biu":
        low, high = (0, 1) if kind.kind == "b" else (np.iinfo(kind).min, np.iinfo(kind).max)
        if not (math.isfinite(default) and default.is_integer() and low <= default <= high):
            raise ValueError(f"resample_onto: default {default!r} is not a value of the moving image's dtype {kind}")
    f = sitk.ResampleImageFilter()
    f.SetSize([int(n) for n in grid.shape[::-1]])
    f.SetOutputSpacing(grid.spacing)
    f.SetOutputOrigin(grid.origin)
    f.SetOutputDirection(grid.direction)
    f.SetTransform(transform)
    f.SetInterpolator(method)
    f.SetDefaultPixelValue(default)
    f.SetOutputPixelType(image.GetPixelID() if nearest else sitk.sitkFloat32)
    f.SetUseNearestNeighborExtrapolator(bool(extrapolate))
    if threads is not None:
        f.SetNumberOfThreads(_integer(threads, 1, "resample_onto: threads"))
    out = sitk.GetArrayFromImage(f.Execute(image))
    if nearest and dtype is not None and out.dtype != dtype:
        out = out.astype(dtype)  # bool stored as uint8, float16 as float32
    return out


@dataclass(frozen=True)
class SpacingRecord:
    """What :class:`ResampleToSpacing` did: ``source`` grid → ``target`` grid."""

    source: VoxelGrid
    target: VoxelGrid
    interpolator: str = "linear"

    def __post_init__(self) -> None:
        for name in ("source", "target"):
            if not isinstance(getattr(self, name), VoxelGrid):
                raise ValueError(f"SpacingRecord.{name} must be a VoxelGrid, got {getattr(self, name)!r}")
        _interpolator(self.interpolator, "SpacingRecord.interpolator")

    def inverse(self, maps: np.ndarray, *, interpolator: str = "linear", threads: int | None = None) -> np.ndarray:
        """A map on the target grid (``target.shape``, real dtype) → on the source grid
        (``source.shape``; float32, or the map's dtype with ``"nearest"``). Voxels at the edge
        take the nearest value rather than a default."""
        return resample_onto((np.asarray(maps), self.target), self.source, interpolator=interpolator,
                             extrapolate=True, threads=threads)


@dataclass(frozen=True)
class ResampleToSpacing:
    """A whole volume onto a grid of another spacing, same origin corner, direction and extent.

    ``spacing_mm``: one number (isotropic) or (column, row, slice) mm, positive. The target
    grid has ``round(n * spacing / spacing_mm)`` voxels per axis (at least 1) and its outer
    corner where the source's is (voxel centres move by half the change of spacing); voxels at
    the edge take the nearest value rather than a default. ``interpolator`` as in
    :func:`resample_onto`.
    """

    spacing_mm: float | tuple[float, float, float]
    interpolator: str = "linear"

    def __post_init__(self) -> None:
        if isinstance(self.spacing_mm, (int, float, np.integer, np.floating)) and not isinstance(self.spacing_mm, bool):
            spacing = (_finite(self.spacing_mm, "ResampleToSpacing.spacing_mm"),) * 3
        else:
            spacing = _triple(self.spacing_mm, "ResampleToSpacing.spacing_mm")
        if min(spacing) <= 0:
            raise ValueError(f"ResampleToSpacing.spacing_mm must be positive, got {self.spacing_mm!r}")
        object.__setattr__(self, "spacing_mm", spacing)
        _interpolator(self.interpolator, "ResampleToSpacing.interpolator")

    def target_grid(self, source: VoxelGrid) -> VoxelGrid:
        """The grid ``source`` is resampled onto."""
        old = np.asarray(source.spacing)
        new = np.asarray(self.spacing_mm)
        size_xyz = np.maximum(1, np.round(np.asarray(source.shape[::-1]) * old / new)).astype(int)
        origin = np.asarray(source.origin) + source.matrix @ ((new - old) / 2)
        return VoxelGrid(tuple(size_xyz[::-1]), tuple(new), tuple(origin), source.direction)

    def forward(self, volume: Moving, *, threads: int | None = None) -> tuple[np.ndarray, SpacingRecord]:
        """``volume`` (anything :func:`resample_onto` takes as moving) → (its voxels on the target
        grid, float32 or its dtype with ``"nearest"``; the record)."""
        source = _grid_of_moving(volume)
        record = SpacingRecord(source, self.target_grid(source), self.interpolator)
        return resample_onto(volume, record.target, interpolator=self.interpolator, extrapolate=True,
                             threads=threads), record


__all__ = [
    "INTERPOLATORS", "ResampleToSpacing", "SpacingRecord", "VoxelGrid", "check_same_frame", "from_sitk",
    "resample_onto", "to_sitk",
]
