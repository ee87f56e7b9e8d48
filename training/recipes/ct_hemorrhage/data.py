"""DrCT2's inputs from study records: sampled series for the network, every slice for its encoder.

- :class:`SeriesDataset` yields ``(x [m, 3, size, size] float32 in [0, 1], study labels
  [n_labels] float32, per-slice labels of the sampled slices [m, n_labels] float32 or None)``
  through :mod:`neuroread.models.ct_hemorrhage.preprocess`; with ``augment=True`` each series also
  yields the sets built from its unsampled slices (the paper's data enhancement). Its items are
  ``(record index, slice indices)``, so a frozen encoder's vectors can stand in for the images.
  :func:`collate` batches such items (``None`` per-slice labels stay ``None``).
- :func:`load_slices` reads each record once into a :class:`SliceStack`: every slice windowed
  at the network's size, its labels, and, where the record has a lesion mask, one channel per
  label marking its lesions' pixels (``any`` marks every lesion), for the encoder's pre-training.
- :func:`read_records`: the dataset formats the ``train`` command reads (phantoms, a manifest,
  RSNA, CQ500), with this model's labels.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from neuroread.models.ct_hemorrhage.preprocess import WINDOWS, Window, augmentation_sets, sample_indices, to_input
from neuroread.training.datasets import StudyRecord, read_cq500, read_manifest, read_phantoms, read_rsna

FORMATS = ("phantoms", "manifest", "rsna", "cq500")


class SeriesDataset(Dataset):
    """Records as network inputs (see the module docstring).

    Items come per record in record order: the base sampling, then, with ``augment``, every
    set of unsampled slices (:func:`~neuroread.models.ct_hemorrhage.preprocess.augmentation_sets`,
    shuffled by a generator seeded with ``(seed, record index)``, so the same seed gives the
    same items). ``spacing_tol`` goes to :func:`neuroread.models.volume.load_series`.
    """

    def __init__(self, records: Sequence[StudyRecord], m: int, size: int, *, augment: bool = False,
                 seed: int = 0, windows: Sequence[Window] = WINDOWS, spacing_tol: float = 0.1) -> None:
        if not records:
            raise ValueError("SeriesDataset: no records")
        names = {r.label_names for r in records}
        if len(names) != 1:
            raise ValueError(f"SeriesDataset: records with different label lists: {sorted(names)}")
        if size < 1:
            raise ValueError(f"SeriesDataset: size must be >= 1, got {size}")
        self.records = list(records)
        self.label_names: tuple[str, ...] = records[0].label_names
        self.m, self.size, self.windows, self.spacing_tol = m, size, tuple(windows), spacing_tol
        self.items: list[tuple[int, np.ndarray]] = []
        for i, record in enumerate(self.records):
            self.items.append((i, sample_indices(record.n_slices, m)))
            if augment:
                rng = np.random.default_rng([seed, i])
                self.items.extend((i, idx) for idx in augmentation_sets(record.n_slices, m, rng))

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        i, indices = self.items[index]
        record = self.records[i]
        volume, slice_labels = record.load(self.spacing_tol)
        x = to_input(volume.array, indices, self.size, self.windows)
        s = None if slice_labels is None else torch.from_numpy(slice_labels[indices])
        return x, torch.from_numpy(record.labels.copy()), s


def collate(batch: Sequence[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Stack :class:`SeriesDataset` items: ``x [B, m, 3, H, W]``, ``y [B, n_labels]``,
    ``s [B, m, n_labels]`` or ``None`` when no item has per-slice labels (mixing raises)."""
    xs, ys, ss = zip(*batch)
    if any(s is None for s in ss) and not all(s is None for s in ss):
        raise ValueError("collate: a batch mixes items with and without per-slice labels")
    return torch.stack(xs), torch.stack(ys), None if ss[0] is None else torch.stack(ss)


@dataclass(frozen=True)
class SliceStack:
    """Every slice of one record as network input: ``images`` float32 ``[n, 3, S, S]`` in [0, 1],
    their labels ``[n, n_labels]`` (``None`` without per-slice labels) and the lesion pixels per
    label, bool ``[n, n_labels, S, S]`` (``None`` without a lesion mask)."""

    images: torch.Tensor
    slice_labels: np.ndarray | None
    masks: torch.Tensor | None = None


def _label_masks(record: StudyRecord, volume, size: int) -> torch.Tensor | None:
    """Per label, the pixels of the record's lesions of that type (``any``: of every lesion), on the
    network's square grid (padded and resized as the images, nearest)."""
    ids = record.load_mask(volume)
    if ids is None:
        return None
    names = list(record.label_names)
    out = np.zeros((ids.shape[0], len(names), *ids.shape[1:]), bool)
    for lesion_id, kind in record.mask_types:
        hit = ids == lesion_id
        if kind in names:
            out[:, names.index(kind)] |= hit
        if "any" in names:
            out[:, names.index("any")] |= hit
    t = torch.from_numpy(out).float().flatten(0, 1)[:, None]  # [n * labels, 1, rows, cols]
    rows, cols = ids.shape[1:]
    side = max(rows, cols)
    top, left = (side - rows) // 2, (side - cols) // 2
    t = torch.nn.functional.pad(t, (left, side - cols - left, top, side - rows - top))
    if side != size:
        t = torch.nn.functional.interpolate(t, size=(size, size), mode="nearest")
    return (t[:, 0] > 0.5).view(ids.shape[0], len(names), size, size)


def stack(record: StudyRecord, size: int, *, masks: bool = True) -> SliceStack:
    """One record read once: every slice windowed at ``size``, its labels and (``masks``) lesion pixels."""
    volume, slice_labels = record.load()
    images = to_input(volume.array, np.arange(volume.array.shape[0]), size)
    return SliceStack(images, slice_labels, _label_masks(record, volume, size) if masks else None)


def load_slices(records: Sequence[StudyRecord], size: int, *, masks: bool = True, progress: bool = True,
                desc: str = "load slices") -> list[SliceStack]:
    """:func:`stack` for each record (about 200 KB per slice at 128 px: fits the phantoms and small
    datasets in memory; pre-training on all of RSNA this way does not)."""
    return [stack(record, size, masks=masks)
            for record in tqdm(records, desc=desc, unit="series", leave=False, disable=None if progress else True)]


def read_records(data: Path, fmt: str, labels: Sequence[str], *, labels_csv: Path | None = None,
                 progress: bool = True) -> tuple[list[StudyRecord], str]:
    """The records of ``data`` laid out as ``fmt`` (one of :data:`FORMATS`) with ``labels``, and a
    line saying where they come from."""
    data = Path(data)
    if not data.exists():
        raise FileNotFoundError(f"--data {data} does not exist")
    if fmt not in FORMATS:
        raise ValueError(f"unknown data format {fmt!r}; formats: {', '.join(FORMATS)}")
    if labels_csv and fmt not in ("rsna", "cq500"):
        raise ValueError(f"--labels-csv applies to --format rsna or cq500, not {fmt}")
    if fmt == "phantoms":
        return read_phantoms(data, labels, mask="hemorrhage"), f"neuroread phantoms under {data}"
    if fmt == "manifest":
        return read_manifest(data, labels), f"manifest {data}"
    if fmt == "rsna":
        if not labels_csv:
            raise ValueError("--format rsna needs --labels-csv (the challenge's ID,Label file, e.g. stage_2_train.csv)")
        return (read_rsna(Path(labels_csv), data, labels, progress=progress),
                f"RSNA Intracranial Hemorrhage layout: labels {labels_csv}, images {data}")
    csv_path = Path(labels_csv) if labels_csv else data / "reads.csv"
    if not csv_path.is_file():
        raise FileNotFoundError(f"--labels-csv {csv_path} does not exist (CQ500's reads.csv)")
    return (read_cq500(csv_path, data, labels, progress=progress),
            f"CQ500 layout: reads {csv_path}, studies {data}")
