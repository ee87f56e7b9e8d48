"""The transfer attention network's inputs from study records.

:func:`load_series` reads each record once into a :class:`SeriesStack`: its brain slices as the
network sees them (through :func:`neuroread.models.ms_csvd.preprocess.prepare`'s own steps, so
training and the node read a series the same way), its class, and, where the record has them,
per-slice lesion presence and the lesion cells on the network's feature grid (the proxy task's
targets). Slices are kept grey in float16 (50 KB a slice at 160 px).

:func:`read_records`: the dataset formats ``neuroread train ms-csvd`` reads (phantoms, manifest).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from neuroread.models.ms_csvd.config import TANConfig
from neuroread.models.ms_csvd.model import CLASSES
from neuroread.models.ms_csvd.preprocess import prepare
from neuroread.models.transforms import SquareResize
from neuroread.training.datasets import StudyRecord, read_manifest, read_phantoms

FORMATS = ("phantoms", "manifest")


@dataclass(frozen=True)
class SeriesStack:
    """One record's brain slices: ``images [n, 1, S, S]`` float16 in [0, 2], ``label`` its class
    index, ``lesion [n]`` bool (a lesion on the slice) and ``cells [n, g, g]`` bool (a lesion in
    the feature cell), each ``None`` where the record has no per-slice labels or mask."""

    images: torch.Tensor
    label: int
    lesion: torch.Tensor | None
    cells: torch.Tensor | None


def load_series(record: StudyRecord, config: TANConfig) -> SeriesStack:
    """Read ``record`` once (see the module docstring)."""
    if record.label_names != CLASSES:
        raise ValueError(f"record {record.study_id}: labels {record.label_names}, ms-csvd trains on {CLASSES}")
    if record.labels.sum() != 1:
        raise ValueError(f"record {record.study_id}: exactly one class must be 1 (MS or cSVD), got {record.labels}")
    volume, slice_labels = record.load()
    prep = prepare(volume, config.input_size, None)  # every brain slice, as the node reads them
    brain, images = prep.brain, prep.images
    lesion = cells = None
    ids = record.load_mask(volume)
    if ids is not None:
        hit = torch.from_numpy((ids[brain] > 0).astype(np.float32))[:, None]
        hit, _ = SquareResize(config.input_size).forward(hit)
        cells = F.adaptive_max_pool2d(hit, config.grid)[:, 0] > 0.25  # a quarter of a pixel's area, at least
        lesion = torch.from_numpy(ids[brain].reshape(len(brain), -1).max(1) > 0)
    elif slice_labels is not None:
        lesion = torch.from_numpy(slice_labels[brain].max(1) > 0)
    return SeriesStack(images[:, :1].to(torch.float16), int(np.argmax(record.labels)), lesion, cells)


def load_all(records: Sequence[StudyRecord], config: TANConfig, *, progress: bool = True,
             desc: str = "load series") -> list[SeriesStack]:
    return [load_series(r, config) for r in tqdm(records, desc=desc, unit="series", leave=False,
                                                  disable=None if progress else True)]


def read_records(data: Path, fmt: str, *, progress: bool = True) -> tuple[list[StudyRecord], str]:
    """The records of ``data`` laid out as ``fmt`` (:data:`FORMATS`), one-hot over MS and cSVD,
    and a line saying where they come from. Phantoms bring their bright-lesion masks."""
    data = Path(data)
    if not data.exists():
        raise FileNotFoundError(f"--data {data} does not exist")
    if fmt not in FORMATS:
        raise ValueError(f"unknown data format {fmt!r} for ms-csvd; formats: {', '.join(FORMATS)}")
    if fmt == "phantoms":
        return read_phantoms(data, CLASSES, series="flair", mask="lesions"), f"neuroread phantoms under {data}"
    return read_manifest(data, CLASSES), f"manifest {data}"
