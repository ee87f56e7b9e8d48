"""The phantom tasks by name, and making a whole set of studies."""
from __future__ import annotations

import csv
import difflib
import hashlib
import importlib
import logging
import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from .study import Study

logger = logging.getLogger(__name__)

SIZES = ("small", "full")

# name -> module defining TASK; imported on first use so that one task's cost is not paid by all.
_TASK_MODULES = {
    "ct-hemorrhage": "neuroread.training.phantoms.ct_hemorrhage",
    "ms-csvd": "neuroread.training.phantoms.ms_csvd",
    "cmb-svd": "neuroread.training.phantoms.cmb_svd",
    "axspa-sij": "neuroread.training.phantoms.axspa_sij",
    "ad-lrp": "neuroread.training.phantoms.ad_lrp",
}


@dataclass(frozen=True)
class TaskSpec:
    """A phantom task: its study classes and the function that makes one study.

    ``generate(rng, case_id, label, size)`` returns a :class:`Study` of class ``label``
    (one of ``classes``) at ``size`` (``small`` or ``full``), using only ``rng`` for chance.

    ``baseline(study_dir) -> float`` is a deliberately simple detector computed from the
    written files (an intensity threshold count, a lesion-voxel count…); the tests show it
    falls clearly short of separating ``baseline_positive`` from the other classes, which is
    what makes the task worth a model.
    """

    name: str
    classes: tuple[str, ...]
    generate: Callable[[np.random.Generator, str, str, str], Study]
    summary: str
    baseline: Callable[[Path], float]
    baseline_positive: str

    def __post_init__(self) -> None:
        if not self.classes or len(set(self.classes)) != len(self.classes):
            raise ValueError(f"TaskSpec.classes must be distinct and non-empty, got {self.classes}")
        if self.baseline_positive not in self.classes:
            raise ValueError(f"TaskSpec.baseline_positive {self.baseline_positive!r} is not one of {self.classes}")


def task_names() -> list[str]:
    return list(_TASK_MODULES)


def get_task(name: str) -> TaskSpec:
    """The task called ``name``; an unknown name raises with the closest known ones."""
    if name not in _TASK_MODULES:
        close = difflib.get_close_matches(name, _TASK_MODULES, n=2)
        hint = f" Did you mean {' or '.join(close)}?" if close else ""
        raise ValueError(f"unknown phantom task {name!r}; known: {', '.join(_TASK_MODULES)}.{hint}")
    return importlib.import_module(_TASK_MODULES[name]).TASK


def parse_balance(text: str | None, classes: tuple[str, ...]) -> dict[str, float]:
    """``"ms=0.3,csvd=0.7"`` → weights per class (normalised); None → equal weights."""
    if not text:
        return {c: 1.0 / len(classes) for c in classes}
    weights: dict[str, float] = {}
    for part in text.split(","):
        name, sep, value = part.partition("=")
        name = name.strip()
        if not sep:
            raise ValueError(f"balance entry {part!r} must look like CLASS=WEIGHT")
        if name not in classes:
            raise ValueError(f"balance names unknown class {name!r}; this task's classes: {', '.join(classes)}")
        try:
            weights[name] = float(value)
        except ValueError:
            raise ValueError(f"balance weight for {name!r} is not a number: {value!r}") from None
        if weights[name] < 0:
            raise ValueError(f"balance weight for {name!r} must be >= 0, got {weights[name]}")
    total = sum(weights.values())
    if total <= 0:
        raise ValueError("balance weights must not all be zero")
    return {c: weights.get(c, 0.0) / total for c in classes}


def allocate(classes: tuple[str, ...], weights: dict[str, float], n: int, seed: int) -> list[str]:
    """Exactly ``round(n * weight)`` studies per class (largest remainder), in a seeded order."""
    exact = np.array([weights[c] * n for c in classes])
    counts = np.floor(exact).astype(int)
    for i in np.argsort(-(exact - counts), kind="stable")[: n - counts.sum()]:
        counts[i] += 1
    labels = [c for c, k in zip(classes, counts) for _ in range(k)]
    order = np.random.default_rng([seed, 0xBA1]).permutation(n)
    return [labels[i] for i in order]


def _task_key(task: str) -> int:
    return int.from_bytes(hashlib.sha256(task.encode()).digest()[:4], "little")


def study_rng(task: str, seed: int, index: int) -> np.random.Generator:
    """The random generator of one study: independent of how many studies the set has."""
    return np.random.default_rng([seed, _task_key(task), index])


def case_id(task: str, seed: int, index: int) -> str:
    return f"{task}-s{seed}-{index:04d}"


def make_study(task: str, seed: int, index: int, label: str, size: str) -> Study:
    """One study of a set, exactly as :func:`generate_set` makes it."""
    spec = get_task(task)
    if label not in spec.classes:
        raise ValueError(f"label {label!r} is not a class of {task}: {', '.join(spec.classes)}")
    if size not in SIZES:
        raise ValueError(f"size must be one of {', '.join(SIZES)}, got {size!r}")
    return spec.generate(study_rng(task, seed, index), case_id(task, seed, index), label, size)


def _make_and_write(args: tuple[str, int, int, str, str, str]) -> dict:
    from .writer import write_study

    task, seed, index, label, size, out = args
    return write_study(make_study(task, seed, index, label, size), Path(out))


def generate_set(
    task: str,
    n: int,
    seed: int,
    out: Path,
    size: str = "small",
    balance: str | None = None,
    workers: int | None = None,
    progress: bool = True,
) -> Path:
    """Write ``n`` studies of ``task`` under ``out`` with a ``manifest.csv``; returns its path."""
    spec = get_task(task)
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    if size not in SIZES:
        raise ValueError(f"size must be one of {', '.join(SIZES)}, got {size!r}")
    labels = allocate(spec.classes, parse_balance(balance, spec.classes), n, seed)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    jobs = [(task, seed, i, labels[i], size, str(out)) for i in range(n)]
    workers = max(1, min(workers or os.cpu_count() or 1, n))
    bar = tqdm(total=n, desc=f"{task} ({size})", unit="study", disable=not progress)
    rows: list[dict] = []
    if workers == 1:
        for job in jobs:
            rows.append(_make_and_write(job))
            bar.update()
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            for row in pool.map(_make_and_write, jobs):
                rows.append(row)
                bar.update()
    bar.close()
    manifest = out / "manifest.csv"
    fields = list(dict.fromkeys(k for row in rows for k in row))
    with open(manifest, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=[*fields, "size", "seed"], lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({**row, "size": size, "seed": seed})
    logger.debug("wrote %d %s studies of %s to %s", n, size, task, out)
    return manifest
