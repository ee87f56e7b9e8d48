"""Reading a written phantom study back, and the yardstick for simple baselines.

A task is only worth a model if a naive detector cannot solve it. Each task names one
(``TaskSpec.baseline``); :func:`best_threshold_accuracy` gives that detector the best
possible threshold in hindsight, so a value clearly below 1 means the task is not trivial.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import SimpleITK as sitk


def load_truth(study_dir: Path) -> dict:
    return json.loads((Path(study_dir) / "truth.json").read_text())


def read_series(study_dir: Path, key: str) -> sitk.Image:
    """The series ``key`` of a written study as one SimpleITK volume (modality values)."""
    truth = load_truth(study_dir)
    folder = Path(study_dir) / truth["series"][key]["folder"]
    reader = sitk.ImageSeriesReader()
    files = reader.GetGDCMSeriesFileNames(str(folder))
    if not files:
        raise FileNotFoundError(f"no DICOM series in {folder}")
    reader.SetFileNames(files)
    return reader.Execute()


def read_mask(study_dir: Path, name: str) -> sitk.Image:
    truth = load_truth(study_dir)
    return sitk.ReadImage(str(Path(study_dir) / truth["masks"][name]["file"]))


def best_threshold_accuracy(features: list[float], positive: list[bool]) -> float:
    """Balanced accuracy of the best single threshold on ``features`` (either direction)."""
    x = np.asarray(features, float)
    y = np.asarray(positive, bool)
    if y.all() or (~y).all():
        raise ValueError("need both positive and negative studies to score a baseline")
    best = 0.5
    for t in np.unique(x):
        pred = x >= t
        for p in (pred, ~pred):
            sens = (p & y).sum() / y.sum()
            spec = (~p & ~y).sum() / (~y).sum()
            best = max(best, 0.5 * (sens + spec))
    return float(best)
