"""Both sequences of a sacroiliac study onto one crop around the joints, and maps back.

The paper (1.2): every case resampled to one resolution, intensities normalised to [0, 1], a
24 × 320 × 224 crop centred on the radiologist's region of interest of the sacroiliac joints.
Here:

- **The crop grid** (:func:`crop_grid`): the T1's orientation, the configuration's
  ``voxel_mm`` and ``input_shape``, centred on a point in patient coordinates (the joints'
  centre: from the localiser at inference, from the truth boxes in training).
- **The fat-suppressed series onto it**: in the T1's frame of reference (one Frame of
  Reference UID, the usual case within a study) by the scanner's coordinates alone; in
  another frame (a series re-acquired after the patient moved off the table), through a rigid
  registration to the T1 (:func:`register_rigid`: SimpleITK, Euler 3D, Mattes mutual
  information, one thread so the fit is the same every time).
- **Intensities** (:func:`unit_scale`): each series over its own 0.5th to 99.5th percentile
  of the voxels with signal, clipped to [0, 1], computed on the whole series so the crop's
  position does not change them.
- **Back** (:meth:`Prepared.to_series`): a map on the crop onto either series' own grid, so
  the Grad-CAM maps become Parametric Maps of the T1 and of the STIR.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from ..result import SeriesVolume
from ..transforms.grid import VoxelGrid, resample_onto
from .config import MSFAConfig

LOW, HIGH = 0.5, 99.5  # percentiles of the voxels with signal that become 0 and 1
SIGNAL = 0.05  # a voxel has signal above this share of the series' 99th percentile


def crop_grid(t1: SeriesVolume, centre_lps, config: MSFAConfig) -> VoxelGrid:
    """The network's input grid: ``config.input_shape`` voxels of ``config.voxel_mm`` in the
    T1's orientation, its centre at ``centre_lps``."""
    shape = tuple(int(n) for n in config.input_shape)
    spacing = tuple(float(v) for v in config.voxel_mm[::-1])  # (column, row, slice) as ITK orders them
    matrix = np.asarray(t1.direction, float).reshape(3, 3)
    half = (np.array(shape[::-1], float) - 1.0) / 2.0 * np.array(spacing)
    origin = np.asarray(centre_lps, float) - matrix @ half
    return VoxelGrid(shape, spacing, tuple(origin), tuple(matrix.ravel()))


def unit_scale(volume: SeriesVolume) -> tuple[float, float]:
    """The (low, high) intensities of ``volume`` that :func:`prepare` maps to 0 and 1."""
    a = np.asarray(volume.array, np.float32)
    top = float(np.percentile(a, 99))
    if not np.isfinite(top) or top <= 0:
        raise ValueError(f"series {volume.series_instance_uid} has no signal (its 99th percentile is not above 0)")
    signal = a[a > SIGNAL * top]
    low, high = (float(v) for v in np.percentile(signal, [LOW, HIGH]))
    return low, max(high, low + 1e-6)


def register_rigid(fixed: SeriesVolume, moving: SeriesVolume) -> sitk.Transform:
    """A rigid transform from ``fixed``'s patient space to ``moving``'s (as ``sitk.Resample``
    wants it), fitted by Mattes mutual information (any two MR contrasts), geometric centre
    initialisation, two levels (half and full resolution), one thread."""
    from ..transforms.grid import to_sitk

    f = sitk.Cast(to_sitk(fixed), sitk.sitkFloat32)
    m = sitk.Cast(to_sitk(moving), sitk.sitkFloat32)
    initial = sitk.CenteredTransformInitializer(f, m, sitk.Euler3DTransform(),
                                                sitk.CenteredTransformInitializerFilter.GEOMETRY)
    reg = sitk.ImageRegistrationMethod()
    reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    reg.SetMetricSamplingStrategy(reg.NONE)
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetOptimizerAsRegularStepGradientDescent(learningRate=2.0, minStep=1e-3, numberOfIterations=200,
                                                 relaxationFactor=0.5)
    reg.SetOptimizerScalesFromPhysicalShift()
    reg.SetShrinkFactorsPerLevel([2, 1])
    reg.SetSmoothingSigmasPerLevel([1.0, 0.0])
    reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    reg.SetInitialTransform(initial, inPlace=False)
    reg.SetNumberOfThreads(1)
    return reg.Execute(f, m)


@dataclass(frozen=True)
class Prepared:
    """One study on the crop: ``inputs [2, D, H, W]`` float32 in [0, 1] (T1, FS), the crop
    ``grid``, and ``fs_transform`` (crop/T1 patient space → the FS's; None in one frame of
    reference)."""

    inputs: np.ndarray
    grid: VoxelGrid
    fs_transform: sitk.Transform | None

    def to_series(self, crop_map: np.ndarray, series: SeriesVolume, *, fs: bool = False) -> np.ndarray:
        """A map on the crop (``grid.shape``) onto ``series``' own grid (0 outside the crop);
        ``fs=True`` when ``series`` is the fat-suppressed one."""
        transform = None
        if fs and self.fs_transform is not None:
            transform = self.fs_transform.GetInverse()
        return resample_onto((np.asarray(crop_map, np.float32), self.grid), series, transform=transform)


def prepare(t1: SeriesVolume, fs: SeriesVolume, centre_lps, config: MSFAConfig) -> Prepared:
    """Both series on the crop around ``centre_lps`` (module docstring)."""
    grid = crop_grid(t1, centre_lps, config)
    same = bool(t1.frame_of_reference_uid) and t1.frame_of_reference_uid == fs.frame_of_reference_uid
    transform = None if same else register_rigid(t1, fs)
    channels = []
    for volume, tf in ((t1, None), (fs, transform)):
        low, high = unit_scale(volume)
        values = resample_onto(volume, grid, transform=tf, check_frame=False)
        channels.append(np.clip((values - low) / (high - low), 0.0, 1.0))
    return Prepared(np.stack(channels).astype(np.float32), grid, transform)
