"""A 3D T1 onto the MNI template grid for the Alzheimer's network, and maps back onto the series.

- **Registration** (:func:`neuroread.models.atlas.register`): an affine fit of the MNI152 2009
  template to the series (SimpleITK, Mattes mutual information, a two-level pyramid), whatever
  the acquisition plane and head position; the transform is kept (:attr:`Prepared.registration`)
  so every map goes back onto the patient's own grid (:func:`to_series`).
- **Grid**: the Neuromorphometrics label grid (1.5 mm, MNI space) every ``step`` voxels
  (:func:`neuroread.models.atlas.template_grid`); the series is sampled there (linear).
- **Brain mask**: the atlas's labelled voxels, grown by one voxel of the grid so the CSF that
  fills what atrophy takes (sulci, temporal horns) is inside; outside it the input is 0.
- **Intensities**: zero mean, unit standard deviation over the brain mask
  (:class:`~neuroread.models.transforms.ZScore`): a T1 has no units, and the brain's own
  statistics take out the scanner's scale.

A series that is not a 3D T1 of the head raises :class:`UnusableSeries` with the reason: slices
more than :data:`MAX_SLICE_MM` apart (a 2D T1), a field of view that misses most of the brain,
or a registration that fails.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage

from ..atlas import Registration, load_atlas, register, template_grid
from ..result import SeriesVolume
from ..transforms import VoxelGrid, ZScore, resample_onto

MAX_SLICE_MM = 3.5
MIN_BRAIN_COVERED = 0.8  # share of the template's brain the series must reach


class UnusableSeries(ValueError):
    """A series this model cannot read (not a 3D T1 of the whole brain, or no registration)."""


@dataclass(frozen=True)
class Prepared:
    """One series on the template grid: ``image [1, *grid]`` float32 (0 outside the brain),
    the atlas ``labels`` and ``brain`` mask on the grid (indexed i, j, k as the atlas), the
    ``registration`` and the ``step``."""

    image: torch.Tensor
    labels: np.ndarray
    brain: np.ndarray
    registration: Registration
    step: int


@functools.lru_cache(maxsize=2)
def grid_atlas(step: int) -> tuple[np.ndarray, np.ndarray]:
    """(atlas ids, brain mask) on the grid of ``step`` (i, j, k), cached per process."""
    labels = load_atlas().labels[::step, ::step, ::step].copy()
    brain = ndimage.binary_dilation(labels > 0, iterations=1)
    labels.setflags(write=False)
    brain.setflags(write=False)
    return labels, brain


def prepare(volume: SeriesVolume, step: int, registration: Registration | None = None) -> Prepared:
    """``volume`` registered (unless ``registration`` is given), sampled on the grid, masked and
    normalised (module docstring). Raises :class:`UnusableSeries` naming the problem."""
    slice_mm = float(volume.spacing[2])
    if slice_mm > MAX_SLICE_MM:
        raise UnusableSeries(f"slices {slice_mm:.1f} mm apart: the model needs a 3D T1 (slices at most "
                             f"{MAX_SLICE_MM:g} mm apart), this looks like a 2D series")
    if registration is None:
        try:
            registration = register(volume, fine=True)
        except ValueError as exc:
            raise UnusableSeries(str(exc)) from exc
    labels, brain = grid_atlas(step)
    sampled = registration.sample_on_template(volume, step=step)
    covered = resample_onto((np.ones(volume.array.shape, np.uint8), VoxelGrid.of(volume)), template_grid(step),
                            interpolator="nearest", transform=registration.transform).transpose(2, 1, 0) > 0
    reached = float(covered[brain].mean())
    if reached < MIN_BRAIN_COVERED:
        raise UnusableSeries(f"the series covers {100 * reached:.0f} % of the brain (registered to the MNI template); "
                             f"the model needs at least {100 * MIN_BRAIN_COVERED:.0f} %")
    normalised, _ = ZScore().forward(sampled.astype(np.float32), brain & covered)
    image = np.where(brain, normalised, 0.0).astype(np.float32)
    return Prepared(torch.from_numpy(image)[None], labels, brain, registration, step)


def to_series(grid_map: np.ndarray, volume: SeriesVolume, prepared: Prepared, interpolator: str = "linear"
              ) -> np.ndarray:
    """A map on the template grid (i, j, k) resampled onto ``volume``'s own grid through the
    registration: of the series' shape, 0 where the grid does not reach; linear gives float32,
    ``"nearest"`` keeps the map's dtype (atlas labels)."""
    values = np.asarray(grid_map)
    values = np.ascontiguousarray((values if interpolator == "nearest" else values.astype(np.float32)).transpose(2, 1, 0))
    return resample_onto((values, template_grid(prepared.step)), volume, interpolator=interpolator,
                         transform=prepared.registration.transform.GetInverse())
