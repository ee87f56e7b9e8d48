"""FLAIR input for the transfer attention network: the slices through the brain, normalised and
resized, shared by training and the node.

**Slices through the brain** (:func:`brain_slices`). The head is the voxels brighter than a
fifth of the series' 99th percentile (FLAIR nulls fluid and air; grey and white matter, scalp
fat and lesions are above it). A slice goes through the brain when its head section is at least
:data:`MIN_SECTION_CM2` and at least :data:`SECTION_SHARE` of the series' largest: the vertex
and the skull base below the cerebellum (small sections, little brain) are left out. A series
needs :data:`MIN_BRAIN_SLICES` such slices (3 cm of brain at 5 mm): fewer raise
:class:`UnusableSeries`, whose message says how many it has and why.

**Intensities**: FLAIR has no units, so each series is scaled from its own histogram: the 1st
percentile of the head voxels of its brain slices to 0 and the 99th to 1
(:class:`~neuroread.models.transforms.PercentileScale`), lesions brighter than that kept up to
:data:`CEILING` rather than cut at 1.

**Geometry**: each slice padded to a square and resized to the network's ``input_size``
(:class:`~neuroread.models.transforms.SquareResize`); its record takes the maps back onto the
slice's own grid. More brain slices than the network's ``max_slices`` are sampled uniformly.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..result import SeriesVolume
from ..transforms import PercentileScale, SquareRecord, SquareResize

HEAD_FRACTION = 0.2      # of the 99th percentile: the head's voxels
MIN_SECTION_CM2 = 100.0  # an adult cerebrum's axial section is 150-300 cm² with the scalp
SECTION_SHARE = 0.6      # of the largest section in the series
MIN_BRAIN_SLICES = 6
CEILING = 2.0


class UnusableSeries(ValueError):
    """A series this model cannot read (too few slices through the brain, no signal)."""


@dataclass(frozen=True)
class Prepared:
    """One series as network input: ``images [S, 3, size, size]`` float32, ``slices`` the series'
    slice indices they are (ascending), ``record`` how each slice was padded and resized, and
    ``brain`` every slice index that goes through the brain (``slices`` is all of them or a
    uniform sample when there are more than ``max_slices``)."""

    images: torch.Tensor
    slices: np.ndarray
    record: SquareRecord
    brain: np.ndarray


def head_mask(array: np.ndarray) -> np.ndarray:
    """Voxels of the head: brighter than :data:`HEAD_FRACTION` of the 99th percentile."""
    a = np.asarray(array, np.float32)
    top = float(np.percentile(a, 99))
    if not np.isfinite(top) or top <= 0:
        raise UnusableSeries("the series has no signal (its 99th percentile is not above 0)")
    return a > HEAD_FRACTION * top


def brain_slices(volume: SeriesVolume, min_slices: int = MIN_BRAIN_SLICES,
                 head: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(indices of the slices through the brain, the head section of every slice in cm²); raises
    :class:`UnusableSeries` when fewer than ``min_slices`` (see the module docstring). ``head``:
    the volume's :func:`head_mask` when the caller has it already."""
    head = head_mask(volume.array) if head is None else head
    pixel_cm2 = float(volume.spacing[0] * volume.spacing[1]) / 100.0
    sections = head.sum(axis=(1, 2)) * pixel_cm2
    needed = max(MIN_SECTION_CM2, SECTION_SHARE * float(sections.max(initial=0.0)))
    brain = np.flatnonzero(sections >= needed)
    if len(brain) < min_slices:
        raise UnusableSeries(
            f"only {len(brain)} of its {len(sections)} slices go through the brain (head section >= {needed:.0f} cm²: "
            f"{MIN_SECTION_CM2:g} cm² and {SECTION_SHARE:.0%} of its largest, {sections.max(initial=0.0):.0f} cm²); "
            f"ms-csvd needs at least {min_slices} axial FLAIR slices through the brain")
    return brain, sections


def sample(indices: np.ndarray, m: int) -> np.ndarray:
    """At most ``m`` of ``indices``, uniformly spread (all of them when there are no more than ``m``)."""
    indices = np.asarray(indices, np.int64)
    if len(indices) <= m:
        return indices
    return indices[np.unique(np.round(np.linspace(0, len(indices) - 1, m)).astype(np.int64))]


def normalise(array: np.ndarray, slices: np.ndarray, head: np.ndarray | None = None) -> np.ndarray:
    """The volume's intensities scaled on the head voxels of ``slices`` (1st → 0, 99th → 1), in
    [0, :data:`CEILING`], float32. ``head``: the volume's :func:`head_mask`, if at hand."""
    head = head_mask(array) if head is None else head
    scaled, _ = PercentileScale(1.0, 99.0, clip=False).forward(np.asarray(array, np.float32)[slices], head[slices])
    return np.clip(scaled, 0.0, CEILING).astype(np.float32)


def to_input(array: np.ndarray, slices: np.ndarray, size: int,
             head: np.ndarray | None = None) -> tuple[torch.Tensor, SquareRecord]:
    """``slices`` of a volume as network input ``[len(slices), 3, size, size]`` (the grey slice on
    three channels) and the resize record."""
    grey = torch.from_numpy(normalise(array, slices, head))[:, None]
    out, record = SquareResize(size).forward(grey)
    return out.expand(-1, 3, -1, -1).contiguous(), record


def prepare(volume: SeriesVolume, size: int, max_slices: int | None, min_slices: int = MIN_BRAIN_SLICES) -> Prepared:
    """A FLAIR series → :class:`Prepared` (raises :class:`UnusableSeries` when it has too few brain
    slices); ``max_slices=None`` keeps every brain slice (training reads them all)."""
    head = head_mask(volume.array)  # once: the brain slices and the intensity scale both read it
    brain, _ = brain_slices(volume, min_slices, head)
    chosen = brain if max_slices is None else sample(brain, max_slices)
    images, record = to_input(volume.array, chosen, size, head)
    return Prepared(images, chosen, record, brain)
