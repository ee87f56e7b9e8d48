"""The Alzheimer's network's inputs from study records.

:func:`load_all` reads each record once into a :class:`Sample`: the T1 registered to the MNI
template and on the network's grid (through :func:`neuroread.models.ad_lrp.preprocess.prepare`,
so training and the node read a series the same way), its class, and for phantoms the atlas
regions their generator changed. Registration takes most of the time (about 0.6 s a series at
3 mm), so records are prepared in ``workers`` processes (each registration on one thread, so
the result does not depend on how many) and kept per process (:data:`_CACHE`): the folds of a
cross-validation, the final fit and the card's measurements read each series once.

:func:`read_records`: the dataset formats ``neuroread train ad-lrp`` reads (phantoms, manifest).
"""
from __future__ import annotations

import json
import multiprocessing
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from neuroread.models.ad_lrp.model import CLASSES
from neuroread.models.ad_lrp.preprocess import prepare
from neuroread.training.datasets import StudyRecord, read_manifest, read_phantoms

FORMATS = ("phantoms", "manifest")


@dataclass(frozen=True)
class Sample:
    """One record on the grid: ``image [1, *grid]`` float16 (0 outside the brain), ``label`` its
    class index, ``atrophied`` / ``enlarged`` the atlas ids the phantom generator shrank
    (hippocampus, temporal lobe) or enlarged (ventricles) for AD (empty for controls and for
    records without a phantom truth)."""

    study_id: str
    image: torch.Tensor
    label: int
    atrophied: frozenset[int]
    enlarged: frozenset[int]


_CACHE: dict[tuple, Sample] = {}


def _key(record: StudyRecord, step: int) -> tuple:
    return (record.study_id, tuple(str(p) for p in record.files), step)


def changed_regions(record: StudyRecord) -> tuple[frozenset[int], frozenset[int]]:
    """(atrophied, enlarged): the atlas ids a phantom's generator shrank (positive
    ``depth_ad_mm`` in its truth) or enlarged (negative) for AD; empty for a record that is not
    a phantom."""
    truth_path = Path(record.files[0]).parents[1] / "truth.json" if record.files else None
    if truth_path is None or not truth_path.is_file():
        return frozenset(), frozenset()
    truth = json.loads(truth_path.read_text())
    if truth.get("case_id") != record.study_id:
        return frozenset(), frozenset()
    regions = truth.get("regions", [])
    return (frozenset(int(r["id"]) for r in regions if r.get("depth_ad_mm", 0) > 0),
            frozenset(int(r["id"]) for r in regions if r.get("depth_ad_mm", 0) < 0))


def _prepare(args: tuple[StudyRecord, int]) -> tuple[np.ndarray, int, tuple[frozenset[int], frozenset[int]]]:
    record, step = args
    if record.label_names != CLASSES:
        raise ValueError(f"record {record.study_id}: labels {record.label_names}, ad-lrp trains on {CLASSES}")
    if record.labels.sum() != 1:
        raise ValueError(f"record {record.study_id}: exactly one class must be 1 (AD or control), got {record.labels}")
    volume, _ = record.load()
    try:
        prep = prepare(volume, step)
    except ValueError as exc:
        raise ValueError(f"record {record.study_id}: {exc}") from exc
    return prep.image.numpy().astype(np.float16), int(np.argmax(record.labels)), changed_regions(record)


def load_all(records: Sequence[StudyRecord], step: int, *, workers: int = 1, progress: bool = True,
             desc: str = "register series") -> list[Sample]:
    """Every record prepared once per process (module docstring), in the records' order."""
    todo = [r for r in records if _key(r, step) not in _CACHE]
    if todo:
        jobs = [(r, step) for r in todo]
        bar = tqdm(total=len(jobs), desc=desc, unit="series", leave=False, disable=None if progress else True)
        if workers > 1 and len(jobs) > 1:
            with multiprocessing.get_context("fork").Pool(min(workers, len(jobs))) as pool:
                results = []
                for out in pool.imap(_prepare, jobs, chunksize=4):
                    results.append(out)
                    bar.update()
        else:
            results = []
            for job in jobs:
                results.append(_prepare(job))
                bar.update()
        bar.close()
        for record, (image, label, changed) in zip(todo, results):
            _CACHE[_key(record, step)] = Sample(record.study_id, torch.from_numpy(image), label, *changed)
    return [_CACHE[_key(r, step)] for r in records]


def read_records(data: Path, fmt: str, *, progress: bool = True) -> tuple[list[StudyRecord], str]:
    """The records of ``data`` laid out as ``fmt`` (:data:`FORMATS`), one-hot over AD and control,
    and a line saying where they come from."""
    data = Path(data)
    if not data.exists():
        raise FileNotFoundError(f"--data {data} does not exist")
    if fmt not in FORMATS:
        raise ValueError(f"unknown data format {fmt!r} for ad-lrp; formats: {', '.join(FORMATS)}")
    if fmt == "phantoms":
        return read_phantoms(data, CLASSES, series="t1", mask="regions"), f"neuroread phantoms under {data}"
    return read_manifest(data, CLASSES), f"manifest {data}"
