"""Head-CT input for DrCT2: fixed-length slice sampling and CT windows, shared by training and the node.

The paper (Wang et al., Medical Physics 2022, section VI.A.1) samples every series to a fixed
number m of slices (32 for CQ500, 28 for RSNA) and uses "the unsampled data ... to generate a
new CT set for data enhancement"; it feeds 224×224 slices with three channels to an ImageNet
VGG16. It does not name its CT windows, so the three channels are the usual head-CT windows
of the RSNA challenge solutions (Radiopaedia's head presets):

=========  ==========  =========  =================================
channel    centre HU   width HU   shows
=========  ==========  =========  =================================
brain      40          80         parenchyma, acute blood (~60 HU)
subdural   80          200        thin extra-axial collections next to bone
bone       600         2800       calvarium, fractures
=========  ==========  =========  =================================

Each window maps ``[centre - width/2, centre + width/2]`` linearly to ``[0, 1]`` and clips.

**Sampling** (:func:`sample_indices`), for a series of n slices and m wanted:

- n >= m: the slices are cut into m contiguous runs as equal as possible (slice j belongs to
  run ``j * m // n``, so runs have ``n // m`` or ``n // m + 1`` slices) and the middle slice of
  each run is taken (the lower middle for an even run). n == m gives every slice once.
- n < m: output position i takes slice ``(2i + 1) * n // (2m)``, so every slice is repeated
  ``m // n`` or ``m // n + 1`` times, in order, the extra repeats spread evenly.

**Augmentation** (:func:`augmentation_sets`): the slices the base sampling left out build
further m-slice sets with the same coverage: set k takes, in every run, the k-th of that run's
unsampled slices (cycling when a run has fewer, keeping the run's base slice when it has none).
There are ``max run length - 1`` such sets; together they use every unsampled slice, and when
n >= 2m every run has an unsampled slice, so each set is disjoint from the base sampling. A
random generator shuffles which unsampled slices go together (deterministic given its seed).

Resizing is bilinear with antialiasing (``torch.nn.functional.interpolate``, deterministic on
CPU) after padding a non-square slice to a square with 0 (air in every window), so anatomy
keeps its aspect ratio.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..transforms import SquareRecord, SquareResize


@dataclass(frozen=True)
class Window:
    """A CT display window: HU ``centre`` and ``width`` (> 0)."""

    name: str
    centre: float
    width: float

    def __post_init__(self) -> None:
        if not self.width > 0:
            raise ValueError(f"Window {self.name!r}: width must be > 0, got {self.width}")


BRAIN = Window("brain", 40.0, 80.0)
SUBDURAL = Window("subdural", 80.0, 200.0)
BONE = Window("bone", 600.0, 2800.0)
WINDOWS: tuple[Window, ...] = (BRAIN, SUBDURAL, BONE)


def apply_windows(slices_hu: np.ndarray, windows: Sequence[Window] = WINDOWS) -> torch.Tensor:
    """HU slices ``[n, rows, cols]`` (any real dtype) → float32 ``[n, len(windows), rows, cols]`` in [0, 1]."""
    hu = torch.from_numpy(np.ascontiguousarray(slices_hu, dtype=np.float32))
    if hu.ndim != 3:
        raise ValueError(f"apply_windows: expected HU slices [n, rows, cols], got shape {tuple(hu.shape)}")
    if not windows:
        raise ValueError("apply_windows: no windows given")
    channels = [((hu - (w.centre - w.width / 2)) / w.width).clamp_(0.0, 1.0) for w in windows]
    return torch.stack(channels, dim=1)


def resize_square(images: torch.Tensor, size: int) -> torch.Tensor:
    """Images ``[n, c, rows, cols]`` → ``[n, c, size, size]``: zero-padded to a centred square
    (aspect ratio kept), then bilinear with antialiasing (:class:`~neuroread.models.transforms.SquareResize`,
    whose record maps the explanation maps back: :func:`square_record`)."""
    if images.ndim != 4:
        raise ValueError(f"resize_square: expected [n, c, rows, cols], got shape {tuple(images.shape)}")
    if size < 1:
        raise ValueError(f"resize_square: size must be >= 1, got {size}")
    out, _ = SquareResize(size).forward(images)
    return out.contiguous()


def square_record(rows: int, cols: int, size: int) -> SquareRecord:
    """How :func:`resize_square` maps slices of ``rows`` x ``cols`` to ``size`` x ``size`` (its
    ``inverse`` puts a map back onto the slice's own grid)."""
    return SquareResize(size).forward(torch.zeros(1, 1, rows, cols))[1]


def _check_counts(n: int, m: int) -> None:
    if n < 1:
        raise ValueError(f"a series needs at least one slice, got n={n}")
    if m < 1:
        raise ValueError(f"the number of sampled slices m must be >= 1, got m={m}")


def _runs(n: int, m: int) -> list[np.ndarray]:
    """For n >= m: the m contiguous runs of slice indices (slice j is in run j * m // n)."""
    run_of = np.arange(n) * m // n
    return [np.flatnonzero(run_of == i) for i in range(m)]


def sample_indices(n: int, m: int) -> np.ndarray:
    """The m slice indices (int64, non-decreasing) uniformly sampled from n slices (module docstring)."""
    _check_counts(n, m)
    if n < m:
        return (2 * np.arange(m, dtype=np.int64) + 1) * n // (2 * m)
    return np.array([run[(len(run) - 1) // 2] for run in _runs(n, m)], np.int64)


def augmentation_sets(n: int, m: int, rng: np.random.Generator | None = None) -> list[np.ndarray]:
    """The extra m-slice index sets built from the slices :func:`sample_indices` left out.

    Returns ``max run length - 1`` sets (none when n <= m), each ascending, one slice per run
    (see the module docstring). ``rng`` shuffles the unsampled slices within each run before
    they are dealt to the sets; ``None`` deals them in order.
    """
    _check_counts(n, m)
    if n <= m:
        return []
    runs = _runs(n, m)
    base = sample_indices(n, m)
    spare = []
    for run, chosen in zip(runs, base):
        rest = run[run != chosen]
        spare.append(rng.permutation(rest) if rng is not None and len(rest) > 1 else rest)
    count = max(len(rest) for rest in spare)
    return [np.array([rest[k % len(rest)] if len(rest) else chosen for rest, chosen in zip(spare, base)], np.int64)
            for k in range(count)]


def to_input(volume_hu: np.ndarray, indices: Sequence[int] | np.ndarray, size: int,
             windows: Sequence[Window] = WINDOWS) -> torch.Tensor:
    """The slices ``indices`` of a HU volume ``[slices, rows, cols]`` as the network's input
    ``[len(indices), len(windows), size, size]``, float32 in [0, 1]."""
    volume = np.asarray(volume_hu)
    if volume.ndim != 3:
        raise ValueError(f"expected a HU volume [slices, rows, cols], got shape {volume.shape}")
    idx = np.asarray(indices, np.int64)
    if idx.ndim != 1 or idx.size == 0:
        raise ValueError(f"indices must be a non-empty 1-D sequence, got shape {idx.shape}")
    if idx.min() < 0 or idx.max() >= volume.shape[0]:
        raise ValueError(f"slice indices {idx.min()}..{idx.max()} outside a volume of {volume.shape[0]} slices")
    return resize_square(apply_windows(volume[idx], windows), size)


def prepare(volume_hu: np.ndarray, m: int, size: int,
            windows: Sequence[Window] = WINDOWS) -> tuple[torch.Tensor, np.ndarray]:
    """Inference input of one series: (tensor ``[m, 3, size, size]`` float32 in [0, 1], the m
    sampled slice indices into ``volume_hu``). ``volume_hu``: ``[slices, rows, cols]`` in HU
    (RescaleSlope/Intercept applied, e.g. :func:`neuroread.node.infer.runner.load_series`' array)."""
    volume = np.asarray(volume_hu)
    if volume.ndim != 3:
        raise ValueError(f"expected a HU volume [slices, rows, cols], got shape {volume.shape}")
    indices = sample_indices(volume.shape[0], m)
    return to_input(volume, indices, size, windows), indices
