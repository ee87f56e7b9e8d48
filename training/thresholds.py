"""Operating points: one threshold per label, chosen on validation data (never on the held-out set).

:func:`choose_thresholds` picks, per label, the threshold that maximises F1 on the validation
studies' probabilities. The candidates are the midpoints between consecutive distinct
probabilities (so a threshold never sits exactly on a validation score, where the smallest
change of a weight would flip a call), halfway below the lowest and above the highest (call
every study, or none), plus 0.5. A validation set of a hundred studies holds a dozen positives
of a rare label, so the single best threshold is often an accident of one study: the one chosen
is the median of the candidates whose F1 comes within ``tolerance`` (0.02) of the best (the
middle of the plateau; ties of two go to the one closer to 0.5). A label without any positive
validation study keeps 0.5 (nothing to choose from). Measured on two trainings of the head-CT
demo network (103 validation, 160 held-out phantoms): held-out macro-F1 0.783 and 0.804 with the
single best thresholds, 0.805 and 0.805 with the plateau's middle, 0.798 and 0.822 at 0.5
everywhere, 0.853 and 0.851 with thresholds chosen on the held-out set itself (not allowed: the
bound). A validation fifth of a few hundred series is a noisy place to choose operating points;
a site should choose them on its own data (``models: {name: {thresholds: …}}``). The result is
clipped to [``low``, ``high``] so that a small validation set cannot make a label always or
never present. The thresholds are stored in the model card; the node applies them unless the
configuration overrides them.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike


def best_f1_threshold(probabilities: ArrayLike, targets: ArrayLike, *, low: float = 0.05, high: float = 0.95,
                      tolerance: float = 0.02) -> float:
    """The threshold of ``probabilities >= t`` against 0/1 ``targets`` at the middle of the best
    F1's plateau (see the module docstring); ``tolerance=0`` gives the single best."""
    p = np.asarray(probabilities, float).ravel()
    y = np.asarray(targets).ravel().astype(bool)
    if p.shape != y.shape or p.size == 0:
        raise ValueError(f"best_f1_threshold: {p.size} probabilities for {y.size} targets (need the same, > 0)")
    if not 0.0 < low <= 0.5 <= high < 1.0:
        raise ValueError(f"best_f1_threshold: need 0 < low <= 0.5 <= high < 1, got {low}, {high}")
    if not y.any():
        return 0.5
    if not 0 <= tolerance < 1:
        raise ValueError(f"best_f1_threshold: tolerance must be in [0, 1), got {tolerance}")
    values = np.unique(p)
    candidates = np.concatenate([(values[:-1] + values[1:]) / 2, [values[0] / 2, (values[-1] + 1) / 2, 0.5]])
    candidates = np.array(sorted(set(np.clip(candidates, low, high).tolist())))
    f1 = np.array([2 * int(((p >= t) & y).sum()) / (int((p >= t).sum()) + int(y.sum())) for t in candidates])
    near = candidates[f1 >= f1.max() - tolerance - 1e-12]
    middle = near[(len(near) - 1) // 2: len(near) // 2 + 1]  # one value, or the two around the median
    return float(min(middle, key=lambda t: (abs(t - 0.5), t)))


def choose_thresholds(probabilities: ArrayLike, targets: ArrayLike, labels: Sequence[str], *,
                      low: float = 0.05, high: float = 0.95, tolerance: float = 0.02) -> dict[str, float]:
    """Per label (columns of ``probabilities`` and ``targets``, both ``[n_studies, n_labels]``), the
    threshold of :func:`best_f1_threshold`."""
    p = np.asarray(probabilities, float)
    y = np.asarray(targets)
    if p.ndim != 2 or p.shape != y.shape or p.shape[1] != len(labels):
        raise ValueError(f"choose_thresholds: probabilities {p.shape} and targets {y.shape} must both be "
                         f"[studies, {len(labels)}]")
    return {name: best_f1_threshold(p[:, j], y[:, j], low=low, high=high, tolerance=tolerance)
            for j, name in enumerate(labels)}
