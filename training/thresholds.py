"""Operating points: one threshold per label, chosen on validation data (never on the held-out set).

:func:`choose_thresholds` picks, per label, the threshold that maximises F1 on the validation
studies' probabilities. The candidates are the midpoints between consecutive distinct
probabilities (so a threshold never sits exactly on a validation score, where the smallest
change of a weight would flip a call), halfway below the lowest and above the highest (call
every study, or none), plus 0.5; ties go to the candidate closest to 0.5, and
a label without any positive validation study keeps 0.5 (nothing to choose from). The result is
clipped to [``low``, ``high``] so that a small validation set cannot make a label always or
never present. The thresholds are stored in the model card; the node applies them unless the
configuration overrides them.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike


def best_f1_threshold(probabilities: ArrayLike, targets: ArrayLike, *, low: float = 0.05, high: float = 0.95) -> float:
    """The threshold maximising F1 of ``probabilities >= t`` against 0/1 ``targets`` (see the module docstring)."""
    p = np.asarray(probabilities, float).ravel()
    y = np.asarray(targets).ravel().astype(bool)
    if p.shape != y.shape or p.size == 0:
        raise ValueError(f"best_f1_threshold: {p.size} probabilities for {y.size} targets (need the same, > 0)")
    if not 0.0 < low <= 0.5 <= high < 1.0:
        raise ValueError(f"best_f1_threshold: need 0 < low <= 0.5 <= high < 1, got {low}, {high}")
    if not y.any():
        return 0.5
    values = np.unique(p)
    candidates = np.concatenate([(values[:-1] + values[1:]) / 2, [values[0] / 2, (values[-1] + 1) / 2, 0.5]])
    candidates = np.clip(candidates, low, high)
    best_t, best_f1 = 0.5, -1.0
    for t in sorted(set(candidates.tolist()), key=lambda c: abs(c - 0.5)):  # ties: closest to 0.5 wins
        called = p >= t
        tp = int((called & y).sum())
        f1 = 2 * tp / (int(called.sum()) + int(y.sum()))
        if f1 > best_f1 + 1e-12:
            best_t, best_f1 = float(t), f1
    return best_t


def choose_thresholds(probabilities: ArrayLike, targets: ArrayLike, labels: Sequence[str], *,
                      low: float = 0.05, high: float = 0.95) -> dict[str, float]:
    """Per label (columns of ``probabilities`` and ``targets``, both ``[n_studies, n_labels]``), the
    threshold of :func:`best_f1_threshold`."""
    p = np.asarray(probabilities, float)
    y = np.asarray(targets)
    if p.ndim != 2 or p.shape != y.shape or p.shape[1] != len(labels):
        raise ValueError(f"choose_thresholds: probabilities {p.shape} and targets {y.shape} must both be "
                         f"[studies, {len(labels)}]")
    return {name: best_f1_threshold(p[:, j], y[:, j], low=low, high=high) for j, name in enumerate(labels)}
