"""Acquisition grids, subject warps and rendering with partial volume.

A :class:`Grid` is an acquired series' voxel geometry in DICOM patient coordinates (LPS, mm):
its slices, in-plane pixel spacing, orientation and slice thickness. A :class:`SubjectWarp`
maps patient coordinates to template coordinates: head position and tilt, per-axis size,
and a smooth random deformation, so that no two subjects share their anatomy.

:func:`render` evaluates a *scene* (a function from points to named fractions) on a grid,
averaging sub-samples across the slice thickness, which gives the partial-volume effect
of thick slices.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk
from scipy import ndimage
from scipy.spatial.transform import Rotation

Scene = Callable[[np.ndarray], dict[str, np.ndarray]]


@dataclass(frozen=True)
class Grid:
    """Voxel geometry of one series.

    Arrays on this grid have shape ``(slices, rows, columns)``. ``row_dir`` is DICOM's first
    ImageOrientationPatient vector (direction of increasing column index), ``col_dir`` the
    second (increasing row index); slices advance along ``slice_dir`` by ``slice_spacing``.
    """

    shape: tuple[int, int, int]
    pixel_spacing: tuple[float, float]  # (between rows, between columns), as DICOM orders it
    slice_spacing: float
    thickness: float
    origin: np.ndarray  # LPS centre of voxel (0, 0, 0)
    row_dir: np.ndarray
    col_dir: np.ndarray
    slice_dir: np.ndarray = field(default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if len(self.shape) != 3 or min(self.shape) < 1:
            raise ValueError(f"Grid.shape must be three positive sizes, got {self.shape}")
        if min(self.pixel_spacing) <= 0 or self.slice_spacing <= 0 or self.thickness <= 0:
            raise ValueError("Grid spacings and thickness must be positive")
        row = np.asarray(self.row_dir, float)
        col = np.asarray(self.col_dir, float)
        row /= np.linalg.norm(row)
        col = col - row * (col @ row)  # keep the orientation orthonormal
        col /= np.linalg.norm(col)
        normal = np.cross(row, col) if self.slice_dir is None else np.asarray(self.slice_dir, float)
        normal /= np.linalg.norm(normal)
        object.__setattr__(self, "row_dir", row)
        object.__setattr__(self, "col_dir", col)
        object.__setattr__(self, "slice_dir", normal)
        object.__setattr__(self, "origin", np.asarray(self.origin, float))

    @classmethod
    def centred(
        cls,
        centre: np.ndarray,
        shape: tuple[int, int, int],
        pixel_spacing: tuple[float, float],
        slice_spacing: float,
        thickness: float,
        rotation: np.ndarray,
        base: str = "axial",
    ) -> "Grid":
        """A grid whose centre is ``centre``, oriented as ``base`` turned by ``rotation``.

        ``base`` is axial (rows left→right, columns anterior→posterior, slices foot→head),
        coronal (slices anterior→posterior) or sagittal (slices right→left).
        """
        bases = {
            "axial": ([1, 0, 0], [0, 1, 0]),
            "coronal": ([1, 0, 0], [0, 0, -1]),
            "sagittal": ([0, 1, 0], [0, 0, -1]),
        }
        if base not in bases:
            raise ValueError(f"base must be one of {sorted(bases)}, got {base!r}")
        row = rotation @ np.asarray(bases[base][0], float)
        col = rotation @ np.asarray(bases[base][1], float)
        normal = np.cross(row, col)
        nz, ny, nx = shape
        half = (
            row * pixel_spacing[1] * (nx - 1) / 2
            + col * pixel_spacing[0] * (ny - 1) / 2
            + normal * slice_spacing * (nz - 1) / 2
        )
        return cls(shape, pixel_spacing, slice_spacing, thickness, np.asarray(centre) - half, row, col)

    @property
    def orientation(self) -> list[float]:
        """ImageOrientationPatient."""
        return [*map(float, self.row_dir), *map(float, self.col_dir)]

    def position(self, k: int) -> np.ndarray:
        """ImagePositionPatient of slice ``k``."""
        return self.origin + self.slice_dir * self.slice_spacing * k

    def index_to_lps(self, index: np.ndarray) -> np.ndarray:
        """LPS mm of continuous (slice, row, column) indices, shape (..., 3)."""
        idx = np.asarray(index, float)
        return (
            self.origin
            + idx[..., 0:1] * self.slice_spacing * self.slice_dir
            + idx[..., 1:2] * self.pixel_spacing[0] * self.col_dir
            + idx[..., 2:3] * self.pixel_spacing[1] * self.row_dir
        )

    def lps_to_index(self, points: np.ndarray) -> np.ndarray:
        """Continuous (slice, row, column) indices of LPS points, shape (..., 3)."""
        d = np.asarray(points, float) - self.origin
        return np.stack(
            [d @ self.slice_dir / self.slice_spacing, d @ self.col_dir / self.pixel_spacing[0], d @ self.row_dir / self.pixel_spacing[1]],
            axis=-1,
        )

    def slice_points(self, k: float) -> np.ndarray:
        """LPS centres of the pixels of (possibly fractional) slice ``k``, shape (rows, cols, 3)."""
        ny, nx = self.shape[1:]
        r = np.arange(ny, dtype=np.float32)[:, None, None] * self.pixel_spacing[0]
        c = np.arange(nx, dtype=np.float32)[None, :, None] * self.pixel_spacing[1]
        base = (self.origin + self.slice_dir * self.slice_spacing * k).astype(np.float32)
        return base + c * self.row_dir.astype(np.float32) + r * self.col_dir.astype(np.float32)

    def direction_matrix(self) -> np.ndarray:
        """Columns: index axes (column, row, slice) in LPS, as ITK orders them."""
        return np.stack([self.row_dir, self.col_dir, self.slice_dir], axis=1)

    def to_sitk(self, array: np.ndarray) -> sitk.Image:
        """An ITK image of an array on this grid (for masks written as NIfTI)."""
        if array.shape != self.shape:
            raise ValueError(f"array shape {array.shape} does not match grid {self.shape}")
        img = sitk.GetImageFromArray(array)
        img.SetOrigin(tuple(map(float, self.origin)))
        img.SetSpacing((float(self.pixel_spacing[1]), float(self.pixel_spacing[0]), float(self.slice_spacing)))
        img.SetDirection(tuple(map(float, self.direction_matrix().ravel())))
        return img


def render(scene: Scene, grid: Grid, subsamples: int = 3) -> dict[str, np.ndarray]:
    """Evaluate ``scene`` on every voxel of ``grid`` with partial volume across the slice.

    Each slice is sampled at ``subsamples`` positions spread over its thickness; the scene's
    fractions are averaged. Returns float32 arrays of the grid's shape, one per scene key.
    """
    if subsamples < 1:
        raise ValueError(f"subsamples must be >= 1, got {subsamples}")
    offsets = (np.arange(subsamples) + 0.5) / subsamples - 0.5
    offsets = offsets * grid.thickness / grid.slice_spacing
    out: dict[str, np.ndarray] = {}
    for k in range(grid.shape[0]):
        pts = np.stack([grid.slice_points(k + o) for o in offsets])
        fractions = scene(pts)
        for name, value in fractions.items():
            if name not in out:
                out[name] = np.zeros(grid.shape, np.float32)
            out[name][k] = np.asarray(value, np.float32).mean(axis=0)
    return out


class SubjectWarp:
    """Patient (LPS, mm) → template (LPS, mm) for one random subject.

    The subject's head is the template scaled per axis (``scale``), deformed by a smooth
    random displacement (``warp_mm`` typical amplitude, control points every ~40 mm), turned
    by ``angles_deg`` (pitch about left-right, roll about anterior-posterior, yaw about the
    vertical axis) and placed at ``centre`` in the scanner. ``extra`` displacements (template
    space, e.g. regional atrophy) are added after the random one.
    """

    def __init__(
        self,
        rng: np.random.Generator,
        centre: np.ndarray,
        angles_deg: tuple[float, float, float] = (0.0, 0.0, 0.0),
        scale: tuple[float, float, float] = (1.0, 1.0, 1.0),
        warp_mm: float = 3.0,
        template_centre: np.ndarray | None = None,
    ) -> None:
        self.centre = np.asarray(centre, float)
        self.rotation = Rotation.from_euler("xyz", angles_deg, degrees=True).as_matrix()
        self.scale = np.asarray(scale, float)
        self.template_centre = np.zeros(3) if template_centre is None else np.asarray(template_centre, float)
        # Smooth displacement: random values on a coarse lattice (every 40 mm over the
        # template's bounding box), spline-interpolated once onto an 8 mm lattice that is then
        # sampled linearly, which keeps warping cheap for millions of points.
        self._lo = np.array([-100.0, -140.0, -80.0], np.float32)
        coarse_step, n = 40.0, 7
        coarse = rng.normal(0.0, warp_mm, size=(3, n, n, n)).astype(np.float32)
        self._step = 8.0
        m = int((n - 1) * coarse_step / self._step) + 1
        fine = np.stack(np.meshgrid(*[np.arange(m, dtype=np.float32) * self._step / coarse_step] * 3, indexing="ij"))
        self._field = np.stack(
            [ndimage.map_coordinates(c, fine.reshape(3, -1), order=3, mode="nearest").reshape(m, m, m) for c in coarse]
        )
        self.extra: list[Callable[[np.ndarray], np.ndarray]] = []

    def affine_only(self, points: np.ndarray) -> np.ndarray:
        """Template coordinates of patient points, without the nonlinear part."""
        local = (points - self.centre) @ self.rotation  # R^T (p - c)
        return local / self.scale + self.template_centre

    def __call__(self, points: np.ndarray) -> np.ndarray:
        q = self.affine_only(points).astype(np.float32)
        idx = ((q.reshape(-1, 3) - self._lo) / self._step).T
        for axis in range(3):
            q[..., axis] += ndimage.map_coordinates(
                self._field[axis], idx, order=1, mode="nearest", prefilter=False
            ).reshape(q.shape[:-1])
        for fn in self.extra:
            q = q + fn(q)
        return q

    def to_patient(self, template_points: np.ndarray) -> np.ndarray:
        """Approximate inverse (affine part only): where a template point sits in the scanner."""
        local = (np.asarray(template_points, float) - self.template_centre) * self.scale
        return local @ self.rotation.T + self.centre


def smooth_field(rng: np.random.Generator, shape: tuple[int, ...], sigma: float) -> np.ndarray:
    """A smooth random field with zero mean and unit standard deviation (deterministic by rng)."""
    noise = rng.standard_normal(shape).astype(np.float32)
    field_ = ndimage.gaussian_filter(noise, sigma, mode="wrap")
    std = float(field_.std()) or 1.0
    return (field_ - field_.mean()) / std


def soft_inside(signed_distance: np.ndarray, edge_mm: float = 0.5) -> np.ndarray:
    """0..1 occupancy from a signed distance (negative inside), smooth over ~``edge_mm``."""
    return 1.0 / (1.0 + np.exp(np.clip(signed_distance / max(edge_mm, 1e-3), -40, 40)))


def ellipsoid_distance(points: np.ndarray, centre: np.ndarray, radii: np.ndarray, axes: np.ndarray | None = None) -> np.ndarray:
    """Approximate signed distance (mm) to an ellipsoid, negative inside.

    ``axes`` (3×3, columns) orients the ellipsoid; identity when omitted. Accurate near the
    surface, which is where partial volume needs it.
    """
    d = points - np.asarray(centre, np.float32)
    if axes is not None:
        d = d @ np.asarray(axes, np.float32)
    radii = np.asarray(radii, np.float32)
    k = np.sqrt(np.sum((d / radii) ** 2, axis=-1))
    return (k - 1.0) * float(radii.min())
