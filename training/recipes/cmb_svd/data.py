"""The microbleed network's inputs from study records.

:func:`load_study` reads a record once into a :class:`DetectionStudy`: its slices on the
detector's canvas (through :func:`neuroread.models.cmb_svd.preprocess.prepare`, so training and
the node read a series the same way) in float16, its lesion id map on the canvas (one id per
microbleed, nearest neighbour) and which slices hold a microbleed or the head.
:func:`lesions_of` gives the annotated microbleeds of a record on its own grid (the subtype
MIL's training bags).

:func:`read_records`: the dataset formats ``neuroread train cmb-svd`` reads (phantoms, manifest).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from neuroread.models.cmb_svd.config import CMBConfig
from neuroread.models.cmb_svd.model import CLASSES
from neuroread.models.cmb_svd.preprocess import Prepared, prepare
from neuroread.models.result import SeriesVolume
from neuroread.training.datasets import StudyRecord, read_manifest, read_phantoms

FORMATS = ("phantoms", "manifest")
HEAD_LEVEL = -1.0  # canvas values above this (a quarter of the white matter's signal) are head
DARK_LEVEL = -0.6  # a dark spot's centre is below this (under 0.5 of the white matter's signal)
TISSUE_LEVEL = -0.2  # ... and the 15 px around it are mostly tissue (not skull, air or the head's edge)
SPOTS_PER_STUDY = 300


@dataclass(frozen=True)
class DetectionStudy:
    """One record on the canvas: ``canvas [n, S, S]`` float16, ``ids [n, S, S]`` uint8 lesion ids,
    ``positives`` the slices with a microbleed, ``head`` the slices through the head with the
    (row, column) bounds of the head on each, ``spots [m, 3]`` (slice, row, column) dark spots
    away from every annotated microbleed (:func:`dark_spots`), ``label`` the class index."""

    canvas: torch.Tensor
    ids: np.ndarray
    positives: np.ndarray
    head: dict[int, tuple[int, int, int, int]]
    spots: np.ndarray
    label: int


def dark_spots(canvas: np.ndarray, ids: np.ndarray, seed: int) -> np.ndarray:
    """Candidate mimics: local minima of the smoothed slices darker than :data:`DARK_LEVEL` amid
    tissue, more than 4 px from any annotated microbleed; at most :data:`SPOTS_PER_STUDY`, drawn
    with ``seed``. What a microbleed detector must learn to refuse is there: veins in
    cross-section, calcifications, flow voids, iron, the skull base's drop-out. (The classic
    candidate screening of microbleed pipelines, used here to choose hard negative crops.)"""
    from scipy import ndimage

    found = []
    near = ndimage.binary_dilation(ids > 0, iterations=4) if ids.any() else np.zeros(ids.shape, bool)
    for k, plane in enumerate(np.asarray(canvas, np.float32)):
        smooth = ndimage.gaussian_filter(plane, 1.0)
        spots = (smooth <= ndimage.minimum_filter(smooth, size=7)) & (smooth < DARK_LEVEL)
        spots &= ndimage.uniform_filter(plane, 15) > TISSUE_LEVEL
        spots &= ~near[k]
        found += [(k, r, c) for r, c in np.argwhere(spots)]
    found = np.array(found, np.int64).reshape(-1, 3)
    if len(found) > SPOTS_PER_STUDY:
        found = found[np.sort(np.random.default_rng(seed).choice(len(found), SPOTS_PER_STUDY, replace=False))]
    return found


def _check(record: StudyRecord) -> None:
    if record.label_names != CLASSES:
        raise ValueError(f"record {record.study_id}: labels {record.label_names}, cmb-svd trains on {CLASSES}")
    if record.labels.sum() != 1:
        raise ValueError(f"record {record.study_id}: exactly one subtype must be 1, got {record.labels}")


def lesion_ids(record: StudyRecord, volume: SeriesVolume) -> np.ndarray:
    """The record's lesion id map on ``volume``'s grid (0 background); ValueError without a mask."""
    ids = record.load_mask(volume)
    if ids is None:
        raise ValueError(f"record {record.study_id} has no lesion mask; the microbleed detector trains on "
                         "masks with one id per microbleed")
    if ids.max() > 255:
        raise ValueError(f"record {record.study_id}: {int(ids.max())} lesion ids; at most 255 per series")
    return ids.astype(np.uint8)


def load_study(record: StudyRecord, config: CMBConfig) -> DetectionStudy:
    """Read ``record`` once (see the module docstring)."""
    _check(record)
    volume, _ = record.load()
    prep: Prepared = prepare(volume, config.pixel_mm, config.input_size)
    ids = prep.to_canvas(lesion_ids(record, volume))
    positives = np.flatnonzero(ids.reshape(len(ids), -1).max(axis=1) > 0)
    head = {}
    for k, plane in enumerate(prep.canvas):
        rows, cols = np.flatnonzero((plane > HEAD_LEVEL).any(axis=1)), np.flatnonzero((plane > HEAD_LEVEL).any(axis=0))
        if len(rows) > 8 and len(cols) > 8:
            head[k] = (int(rows[0]), int(rows[-1]), int(cols[0]), int(cols[-1]))
    seed = int.from_bytes(record.study_id.encode()[-4:].rjust(4, b"0"), "little")
    return DetectionStudy(torch.from_numpy(prep.canvas).to(torch.float16), ids, positives, head,
                          dark_spots(prep.canvas, ids, seed), int(np.argmax(record.labels)))


def load_all(records: Sequence[StudyRecord], config: CMBConfig, *, progress: bool = True,
             desc: str = "load series") -> list[DetectionStudy]:
    return [load_study(r, config) for r in tqdm(records, desc=desc, unit="series", leave=False,
                                                 disable=None if progress else True)]


def read_records(data: Path, fmt: str, *, progress: bool = True) -> tuple[list[StudyRecord], str]:
    """The records of ``data`` laid out as ``fmt`` (:data:`FORMATS`), one-hot over the subtypes,
    and a line saying where they come from. Phantoms bring their microbleed masks (one id each)."""
    data = Path(data)
    if not data.exists():
        raise FileNotFoundError(f"--data {data} does not exist")
    if fmt not in FORMATS:
        raise ValueError(f"unknown data format {fmt!r} for cmb-svd; formats: {', '.join(FORMATS)}")
    if fmt == "phantoms":
        return read_phantoms(data, CLASSES, series="swi", mask="microbleeds"), f"neuroread phantoms under {data}"
    return read_manifest(data, CLASSES), f"manifest {data}"
