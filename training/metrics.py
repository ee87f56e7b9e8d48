"""Evaluation metrics shared by all models: multi-label and multi-class classification, key-slice
selection (lesion detection: :mod:`neuroread.training.detection`).

Classification (:func:`classification_metrics`): per-label precision, recall, F1 and ROC AUC
with scikit-learn, and their macro averages (the unweighted mean over labels, the paper's
"Macro-F1"). A label is called present when its probability is ``>= threshold``, the same rule
as :class:`neuroread.models.result.Finding`. A value that is undefined on the data (precision of a
label never predicted, recall or AUC of a label with no positive study, AUC of a label
with no negative one) is NaN, never a made-up 0 or 1; the macro averages leave it out,
and the result names the labels concerned.

Key slices (:func:`key_slice_tasks`): the three interpretive tasks of DrCT2 (Wang et al.,
Medical Physics 2022, section IV and Algorithm 1), on studies whose sampled slices carry
lesion labels. Per study the slices are ranked by score (slice attention), highest first;
**ties go to the lower slice index** (a stable sort), so the result never depends on
the sort's whims. With ``h`` the number of lesion slices among the sampled ones:

- *easy* (``h >= 5``): score = lesion slices among the top 5, divided by 5;
- *difficult* (``1 <= h <= 5``): score = 1 if the top 5 hold any lesion slice, else 0;
- *comprehensive* (``h >= 1``): score = lesion slices among the top ``h``, divided by ``h``;

each task's accuracy is the mean score over its own studies (the paper's ``Sum / n_scan``,
given as a fraction, not a percentage). A study with exactly five lesion slices belongs to
both *easy* and *difficult*; a study without lesion slices belongs to none. The paper's
Table 5 bears this out on RSNA: easy 6,529 + difficult 1,759 = 8,288 studies, more than
the 7,855 positive ones (comprehensive), and far fewer than the 21,540 in all.

Multi-class outcomes (:func:`multiclass_metrics`, :func:`weighted_multiclass_metrics`): the
decided class is the most probable one; "weighted" averages weigh each class by its number of
true studies (scikit-learn's ``average="weighted"``), and the weighted one-vs-rest AUC weighs the
AUC of each class present by the same. Confidence intervals are bootstrap percentile intervals:
studies resampled with replacement (``numpy.random.default_rng(seed)``, so the same seed gives
the same interval), the 2.5th and 97.5th percentiles of the metric over the resamples, an AUC
resample that lost a class of the data left out.

Lesion detection is in :mod:`neuroread.training.detection`.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike
from scipy.stats import rankdata
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
    roc_auc_score,
)

logger = logging.getLogger(__name__)

# Algorithm 1's m_select for the easy and difficult tasks.
KEY_SLICES = 5


def _finite(values: dict[str, float], prefix: str) -> dict[str, float]:
    """``values`` keyed ``prefix.label``, undefined (NaN) ones left out."""
    return {f"{prefix}.{name}": value for name, value in values.items() if not math.isnan(value)}


def _mean_defined(values: Sequence[float]) -> float:
    """Mean of the values that are not NaN; NaN when none is."""
    defined = [v for v in values if not math.isnan(v)]
    return float(np.mean(defined)) if defined else math.nan


def _binary_matrix(values: ArrayLike, name: str, shape: tuple[int, int]) -> np.ndarray:
    """``values`` as a bool array of ``shape``, refusing anything but 0/1."""
    array = np.asarray(values)
    if array.shape != shape:
        raise ValueError(f"{name} must have shape {shape}, got {array.shape}")
    if not np.isin(array, (0, 1)).all():
        raise ValueError(f"{name} must hold only 0/1 (or booleans), got values {np.unique(array)[:10]}")
    return array.astype(bool)


@dataclass(frozen=True)
class ClassificationMetrics:
    """Multi-label classification results on ``n_studies`` studies.

    Per-label dicts are keyed by label name; NaN marks a value undefined on these data (see
    the module docstring), and ``undefined`` lists, per metric, the labels where it is.
    Macro values are the mean over the labels where the metric is defined.
    """

    labels: tuple[str, ...]
    n_studies: int
    thresholds: dict[str, float]
    support: dict[str, int]
    precision: dict[str, float]
    recall: dict[str, float]
    f1: dict[str, float]
    auc: dict[str, float]
    precision_macro: float
    recall_macro: float
    f1_macro: float
    auc_macro: float
    undefined: dict[str, tuple[str, ...]]

    def to_dict(self) -> dict[str, float]:
        """Flat ``name -> value`` for :attr:`neuroread.models.spec.ModelCard.metrics`.

        Keys: ``n_studies``, ``precision_macro``, ``recall_macro``, ``f1_macro``, ``auc_macro``,
        and per label ``threshold.<label>``, ``support.<label>``, ``precision.<label>``,
        ``recall.<label>``, ``f1.<label>``, ``auc.<label>``. Undefined values are left out
        (JSON has no NaN): a missing key means "undefined on the evaluation data".
        """
        macro = {
            "precision_macro": self.precision_macro,
            "recall_macro": self.recall_macro,
            "f1_macro": self.f1_macro,
            "auc_macro": self.auc_macro,
        }
        out: dict[str, float] = {"n_studies": float(self.n_studies)}
        out.update({key: value for key, value in macro.items() if not math.isnan(value)})
        out.update({f"threshold.{name}": value for name, value in self.thresholds.items()})
        out.update({f"support.{name}": float(count) for name, count in self.support.items()})
        per_label = {"precision": self.precision, "recall": self.recall, "f1": self.f1, "auc": self.auc}
        for prefix, values in per_label.items():
            out.update(_finite(values, prefix))
        return out


def classification_metrics(
    probabilities: ArrayLike,
    targets: ArrayLike,
    labels: Sequence[str],
    thresholds: float | Sequence[float] = 0.5,
) -> ClassificationMetrics:
    """Precision, recall, F1 and ROC AUC per label and macro-averaged.

    ``probabilities``: [n_studies, n_labels] in [0, 1]; ``targets``: the same shape, 0/1;
    ``labels``: the column names; ``thresholds``: one for all labels or one per label, a
    label being predicted present when its probability is ``>= threshold``.
    F1 is computed per label and then averaged (as scikit-learn's ``average="macro"``), so
    the macro F1 is not the harmonic mean of the macro precision and recall; the paper's
    Table 2 (P 94.29 %, R 94.10 %, F1 0.9370) is consistent with this reading.
    """
    labels = tuple(labels)
    if not labels or len(set(labels)) != len(labels):
        raise ValueError(f"labels must be distinct and non-empty, got {labels}")
    probs = np.asarray(probabilities, dtype=np.float64)
    if probs.ndim != 2 or probs.shape[1] != len(labels) or probs.shape[0] == 0:
        raise ValueError(f"probabilities must have shape [n_studies >= 1, {len(labels)}], got {probs.shape}")
    if not np.isfinite(probs).all() or probs.min() < 0.0 or probs.max() > 1.0:
        raise ValueError("probabilities must be finite and in [0, 1]")
    truth = _binary_matrix(targets, "targets", probs.shape)
    cuts = np.asarray(thresholds, dtype=np.float64)
    if cuts.ndim == 0:
        cuts = np.full(len(labels), float(cuts))
    if cuts.shape != (len(labels),) or not ((cuts >= 0.0) & (cuts <= 1.0)).all():
        raise ValueError(f"thresholds must be one value or {len(labels)} values in [0, 1], got {thresholds}")
    predicted = probs >= cuts

    precision, recall, f1, auc, support = {}, {}, {}, {}, {}
    for j, name in enumerate(labels):
        # One label at a time with labels=[True]: the positive class is scored even when the
        # column holds one class only (a one-column matrix would be read as a binary problem).
        p, r, f, s = precision_recall_fscore_support(
            truth[:, j], predicted[:, j], labels=[True], average=None, zero_division=np.nan
        )
        precision[name], recall[name], f1[name], support[name] = float(p[0]), float(r[0]), float(f[0]), int(s[0])
        # ROC AUC needs both classes among the targets; scikit-learn would warn and give NaN.
        auc[name] = float(roc_auc_score(truth[:, j], probs[:, j])) if 0 < support[name] < len(truth) else math.nan

    undefined = {
        metric: tuple(name for name in labels if math.isnan(values[name]))
        for metric, values in (("precision", precision), ("recall", recall), ("f1", f1), ("auc", auc))
    }
    if undefined["auc"]:
        logger.warning(
            "ROC AUC undefined for %s: a single class among %d studies",
            ", ".join(undefined["auc"]), len(truth), extra={"labels": undefined["auc"]},
        )
    return ClassificationMetrics(
        labels=labels,
        n_studies=len(truth),
        thresholds={name: float(c) for name, c in zip(labels, cuts)},
        support=support,
        precision=precision,
        recall=recall,
        f1=f1,
        auc=auc,
        precision_macro=_mean_defined(list(precision.values())),
        recall_macro=_mean_defined(list(recall.values())),
        f1_macro=_mean_defined(list(f1.values())),
        auc_macro=_mean_defined(list(auc.values())),
        undefined=undefined,
    )


def _study_arrays(scores: ArrayLike, slice_labels: ArrayLike, index: int) -> tuple[np.ndarray, np.ndarray]:
    """One study's slice scores (finite floats) and lesion labels (bool), checked against each other."""
    s = np.asarray(scores, dtype=np.float64)
    lesion = np.asarray(slice_labels)
    if s.ndim != 1 or s.size == 0 or lesion.shape != s.shape:
        raise ValueError(
            f"study {index}: scores and slice_labels must be 1-D and of the same non-zero length, "
            f"got {s.shape} and {lesion.shape}"
        )
    if not np.isfinite(s).all():
        raise ValueError(f"study {index}: slice scores must be finite")
    if not np.isin(lesion, (0, 1)).all():
        raise ValueError(f"study {index}: slice_labels must hold only 0/1 (or booleans)")
    return s, lesion.astype(bool)


def _studies(scores: Sequence[ArrayLike], slice_labels: Sequence[ArrayLike]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Every study's checked (scores, lesion labels), refusing lists of different lengths."""
    if len(scores) != len(slice_labels):
        raise ValueError(f"{len(scores)} studies of slice scores but {len(slice_labels)} of slice labels")
    return [_study_arrays(s, lb, i) for i, (s, lb) in enumerate(zip(scores, slice_labels))]


def ranked_slices(scores: np.ndarray) -> np.ndarray:
    """Slice indices by descending score, ties to the lower index (Algorithm 1's ``Sort``)."""
    return np.argsort(-scores, kind="stable")


def top_k_lesion_fraction(scores: Sequence[ArrayLike], slice_labels: Sequence[ArrayLike], k: int = KEY_SLICES) -> float:
    """Fraction of the top-``k`` slices that hold a lesion, over the studies that have one.

    ``scores[i]`` and ``slice_labels[i]`` are study i's per-slice scores and lesion labels
    (lists of 1-D arrays, or 2-D arrays when every study has as many slices). The top-k
    slices of all studies with at least one lesion slice are pooled (studies with fewer than
    ``k`` slices give all theirs); studies without a lesion slice cannot score and are left
    out. NaN when no study has a lesion slice. Unlike the easy task, a study with fewer than
    ``k`` lesion slices cannot reach 1, so this measures where the attention sits overall.
    """
    return _top_k_fraction(_studies(scores, slice_labels), k)


def _top_k_fraction(studies: list[tuple[np.ndarray, np.ndarray]], k: int) -> float:
    """:func:`top_k_lesion_fraction` on studies already checked by :func:`_studies`."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    hits = picked = 0
    for s, lesion in studies:
        if lesion.any():
            top = ranked_slices(s)[:k]
            hits += int(lesion[top].sum())
            picked += len(top)
    return hits / picked if picked else math.nan


@dataclass(frozen=True)
class KeySliceResult:
    """The three key-slice tasks of Algorithm 1: accuracy in [0, 1] and number of studies each.

    An accuracy is NaN when its task has no study. ``n_without_lesion`` studies had no lesion
    slice and took part in no task. ``top5_lesion_fraction`` is
    :func:`top_k_lesion_fraction` with k = 5 on the same studies.
    """

    easy: float
    difficult: float
    comprehensive: float
    n_easy: int
    n_difficult: int
    n_comprehensive: int
    n_studies: int
    n_without_lesion: int
    top5_lesion_fraction: float

    def to_dict(self) -> dict[str, float]:
        """Flat ``name -> value`` for :attr:`neuroread.models.spec.ModelCard.metrics`, keys prefixed
        ``key_slice.``; an undefined (NaN) accuracy is left out, its ``.n`` count (0) stays."""
        out = {
            "key_slice.easy": self.easy,
            "key_slice.difficult": self.difficult,
            "key_slice.comprehensive": self.comprehensive,
            "key_slice.top5_lesion_fraction": self.top5_lesion_fraction,
            "key_slice.easy.n": float(self.n_easy),
            "key_slice.difficult.n": float(self.n_difficult),
            "key_slice.comprehensive.n": float(self.n_comprehensive),
            "key_slice.n_studies": float(self.n_studies),
            "key_slice.n_without_lesion": float(self.n_without_lesion),
        }
        return {key: value for key, value in out.items() if not math.isnan(value)}


def key_slice_tasks(scores: Sequence[ArrayLike], slice_labels: Sequence[ArrayLike]) -> KeySliceResult:
    """The paper's easy, difficult and comprehensive key-slice tasks (Algorithm 1).

    ``scores[i]``: study i's score per sampled slice (slice attention, or any score where
    higher means "more likely a key slice"); ``slice_labels[i]``: whether each of those
    slices shows a lesion (the paper's "key slice"; pass the ``any`` column for its setting,
    or one label's column for a per-label view). Lists of 1-D arrays, or 2-D arrays when
    all studies have the same number of slices. Task membership, scoring and the tie rule
    are in the module docstring.
    """
    easy: list[float] = []
    difficult: list[float] = []
    comprehensive: list[float] = []
    studies = _studies(scores, slice_labels)
    for s, lesion in studies:
        h = int(lesion.sum())
        if h == 0:
            continue
        order = ranked_slices(s)
        in_top5 = int(lesion[order[:KEY_SLICES]].sum())  # Algorithm 1, lines 9-13: D_i over T_i
        if h >= KEY_SLICES:
            easy.append(in_top5 / KEY_SLICES)  # line 14: Score_i = D_i / 5
        if h <= KEY_SLICES:
            difficult.append(1.0 if in_top5 > 0 else 0.0)  # lines 18-19: T_i contains key slices
        comprehensive.append(int(lesion[order[:h]].sum()) / h)  # line 28: m_select = h

    def accuracy(task: list[float]) -> float:  # line 31: Sum / n_scan, over the task's own studies
        return float(np.mean(task)) if task else math.nan

    return KeySliceResult(
        easy=accuracy(easy),
        difficult=accuracy(difficult),
        comprehensive=accuracy(comprehensive),
        n_easy=len(easy),
        n_difficult=len(difficult),
        n_comprehensive=len(comprehensive),
        n_studies=len(studies),
        n_without_lesion=len(studies) - len(comprehensive),
        top5_lesion_fraction=_top_k_fraction(studies, KEY_SLICES),
    )


def _multiclass_inputs(probabilities: ArrayLike, truth: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """``probabilities`` as float [n_studies >= 1, n_classes >= 2] and ``truth`` as class indices, checked."""
    probs = np.asarray(probabilities, dtype=np.float64)
    y = np.asarray(truth, dtype=np.int64)
    if probs.ndim != 2 or y.ndim != 1 or probs.shape[0] != len(y) or probs.shape[0] == 0 or probs.shape[1] < 2:
        raise ValueError(f"probabilities must be [n_studies >= 1, n_classes >= 2] with one truth per study, "
                         f"got {probs.shape} and {y.shape}")
    if y.min() < 0 or y.max() >= probs.shape[1]:
        raise ValueError(f"truth must hold class indices in [0, {probs.shape[1]}), got {np.unique(y)}")
    if not np.isfinite(probs).all():
        raise ValueError("probabilities must be finite")
    return probs, y


def multiclass_metrics(probabilities: ArrayLike, truth: Sequence[int]) -> dict[str, float]:
    """Metrics of a multi-class outcome: ``probabilities`` [n_studies, n_classes] (rows sum to 1),
    ``truth`` the true class index per study. The decided class is the most probable one (as
    :class:`neuroread.models.Classification` decides). Returns ``accuracy``,
    ``balanced_accuracy`` (mean recall over the classes present), ``f1_weighted``, ``auc``
    (one-vs-rest, macro over the classes present; for two classes the plain ROC AUC of the
    second class) and ``n_studies``; a value undefined on the data (AUC with one class) is left out.
    """
    probs, y = _multiclass_inputs(probabilities, truth)
    decided = probs.argmax(axis=1)
    out = {"n_studies": float(len(y)), "accuracy": float(accuracy_score(y, decided)),
           "balanced_accuracy": float(balanced_accuracy_score(y, decided)),
           "f1_weighted": float(f1_score(y, decided, average="weighted", zero_division=0))}
    present = np.unique(y)
    if len(present) >= 2:
        if probs.shape[1] == 2:
            out["auc"] = float(roc_auc_score(y, probs[:, 1]))
        else:
            aucs = [roc_auc_score(y == k, probs[:, k]) for k in present]
            out["auc"] = float(np.mean(aucs))
    return out


# --- multi-class outcomes: weighted averages with bootstrap intervals -------------------------------

BOOTSTRAP_RESAMPLES = 1000
CONFIDENCE = 0.95
WEIGHTED_METRICS = ("accuracy", "auc_weighted", "precision_weighted", "f1_weighted")


def _resampled(probs: np.ndarray, y: np.ndarray, decided: np.ndarray, index: np.ndarray) -> dict[str, np.ndarray]:
    """:data:`WEIGHTED_METRICS` of every resample at once: ``index`` [n_resamples, n] picks each
    resample's studies. The same definitions as scikit-learn's (tests hold them to it), vectorised:
    scikit-learn one resample at a time takes seconds for a thousand. AUC is NaN in a resample
    without every class of ``y`` (one-vs-rest needs both sides), and NaN for all when ``y`` has one."""
    n_boot, n = index.shape
    k = probs.shape[1]
    yb, db = y[index], decided[index]
    cells = (np.arange(n_boot)[:, None] * k + yb) * k + db
    cm = np.bincount(cells.ravel(), minlength=n_boot * k * k).reshape(n_boot, k, k).astype(np.float64)
    tp = cm[:, np.arange(k), np.arange(k)]
    support, called = cm.sum(axis=2), cm.sum(axis=1)
    precision = np.divide(tp, called, out=np.zeros_like(tp), where=called > 0)  # zero_division=0
    f1 = np.divide(2 * tp, support + called, out=np.zeros_like(tp), where=support + called > 0)
    present = np.unique(y)
    auc = np.full(n_boot, np.nan)
    if len(present) >= 2:
        auc[:] = 0.0
        for c in present:  # Mann-Whitney: AUC = (rank sum of the positives - n+(n+ + 1)/2) / (n+ n-), ties halved
            ranks = rankdata(probs[index, c], axis=1)
            pos = yb == c
            n_pos = pos.sum(axis=1)
            with np.errstate(divide="ignore", invalid="ignore"):
                auc += ((ranks * pos).sum(axis=1) - n_pos * (n_pos + 1) / 2) / (n_pos * (n - n_pos)) * n_pos
        auc /= n
        auc[~(support[:, present] > 0).all(axis=1)] = np.nan
    return {"accuracy": tp.sum(axis=1) / n, "auc_weighted": auc,
            "precision_weighted": (precision * support).sum(axis=1) / n, "f1_weighted": (f1 * support).sum(axis=1) / n}


def weighted_multiclass_metrics(probabilities: ArrayLike, truth: Sequence[int], *,
                                classes: Sequence[str] | None = None, n_boot: int = BOOTSTRAP_RESAMPLES,
                                seed: int = 0) -> dict[str, float]:
    """A multi-class outcome as its paper reports it: weighted averages, the confusion matrix and
    bootstrap 95 % intervals.

    ``probabilities`` [n_studies, n_classes], ``truth`` the true class index per study; the decided
    class is the most probable. Returns ``n_studies``, ``accuracy``, ``auc_weighted`` (one-vs-rest
    ROC AUC of each class present, weighted by its true studies; left out with one class),
    ``precision_weighted`` and ``f1_weighted`` (per class, weighted the same; a class never
    decided has precision 0, as scikit-learn's ``zero_division=0``), ``confusion.<true>.<decided>``
    (study counts; ``classes`` names the classes, else their indices), and for each of the four
    metrics ``<metric>.ci_low`` / ``<metric>.ci_high``: the percentile interval over ``n_boot``
    resamples of the studies drawn with ``numpy.random.default_rng(seed)`` (an AUC resample missing
    a class of the data is skipped; an interval without any valid resample is left out).
    """
    probs, y = _multiclass_inputs(probabilities, truth)
    n, k = probs.shape
    names = [str(i) for i in range(k)] if classes is None else [str(c) for c in classes]
    if len(names) != k or len(set(names)) != k:
        raise ValueError(f"classes must be {k} distinct names, one per probability column, got {classes}")
    if isinstance(n_boot, bool) or not isinstance(n_boot, (int, np.integer)) or n_boot < 0:
        raise ValueError(f"n_boot must be a non-negative integer, got {n_boot!r}")
    decided = probs.argmax(axis=1)
    every = np.arange(k)
    precision, _, f1, _ = precision_recall_fscore_support(y, decided, labels=every, average="weighted",
                                                          zero_division=0)
    out = {"n_studies": float(n), "accuracy": float(accuracy_score(y, decided)),
           "precision_weighted": float(precision), "f1_weighted": float(f1)}
    present, support = np.unique(y, return_counts=True)
    if len(present) >= 2:
        aucs = [roc_auc_score(y == c, probs[:, c]) for c in present]
        out["auc_weighted"] = float(np.average(aucs, weights=support))
    matrix = confusion_matrix(y, decided, labels=every)
    out.update({f"confusion.{names[t]}.{names[d]}": float(matrix[t, d]) for t in every for d in every})
    if n_boot:
        index = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))
        tail = 100 * (1 - CONFIDENCE) / 2
        for name, values in _resampled(probs, y, decided, index).items():
            values = values[~np.isnan(values)]
            if name in out and values.size:
                low, high = np.percentile(values, [tail, 100 - tail])
                out[f"{name}.ci_low"], out[f"{name}.ci_high"] = float(low), float(high)
            if name == "auc_weighted" and values.size < n_boot:
                logger.debug("AUC bootstrap: %d of %d resamples missed a class and were skipped",
                             n_boot - values.size, n_boot)
    return out
