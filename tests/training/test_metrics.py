"""neuroread.training.metrics against values worked out by hand (the arithmetic is in the comments)."""
from __future__ import annotations

import math

import numpy as np
import pytest

from neuroread.training.metrics import (
    classification_metrics,
    key_slice_tasks,
    ranked_slices,
    top_k_lesion_fraction,
)

# Six studies, three labels. Thresholds 0.5, 0.3, 0.5; present means probability >= threshold.
LABELS = ("a", "b", "c")
PROBS = np.array(
    [
        # a     b     c
        [0.9, 0.35, 0.6],
        [0.6, 0.31, 0.1],
        [0.4, 0.10, 0.1],
        [0.7, 0.20, 0.1],
        [0.2, 0.25, 0.1],
        [0.1, 0.80, 0.1],
    ]
)
TARGETS = np.array(
    [
        [1, 1, 0],
        [1, 0, 0],
        [1, 0, 0],
        [0, 0, 0],
        [0, 0, 0],
        [0, 1, 0],
    ]
)


def test_classification_metrics_by_hand() -> None:
    m = classification_metrics(PROBS, TARGETS, LABELS, thresholds=(0.5, 0.3, 0.5))
    # a: predicted [1,1,0,1,0,0] vs truth [1,1,1,0,0,0]: TP 2, FP 1, FN 1
    #    precision 2/3, recall 2/3, F1 = 2*2/(2*2+1+1) = 2/3.
    #    AUC: positives {.9,.6,.4} vs negatives {.7,.2,.1}; pairs won: .9 beats 3, .6 beats 2,
    #    .4 beats 2 -> 7 of 9.
    assert m.precision["a"] == pytest.approx(2 / 3)
    assert m.recall["a"] == pytest.approx(2 / 3)
    assert m.f1["a"] == pytest.approx(2 / 3)
    assert m.auc["a"] == pytest.approx(7 / 9)
    # b (threshold .3): predicted [1,1,0,0,0,1] vs truth [1,0,0,0,0,1]: TP 2, FP 1, FN 0
    #    precision 2/3, recall 1, F1 = 2*2/(2*2+1+0) = 4/5. AUC: positives {.35,.8} beat all
    #    negatives {.31,.1,.2,.25} -> 8 of 8.
    assert m.precision["b"] == pytest.approx(2 / 3)
    assert m.recall["b"] == 1.0
    assert m.f1["b"] == pytest.approx(4 / 5)
    assert m.auc["b"] == 1.0
    # c: no positive study; predicted [1,0,0,0,0,0]: TP 0, FP 1, FN 0
    #    precision 0/1 = 0, recall 0/0 undefined, F1 = 0/(0+1+0) = 0, AUC undefined.
    assert m.precision["c"] == 0.0
    assert math.isnan(m.recall["c"])
    assert m.f1["c"] == 0.0
    assert math.isnan(m.auc["c"])
    # Macro over the labels where defined:
    #    precision (2/3 + 2/3 + 0)/3 = 4/9; recall (2/3 + 1)/2 = 5/6 (c left out);
    #    F1 (2/3 + 4/5 + 0)/3 = 22/45; AUC (7/9 + 1)/2 = 8/9.
    assert m.precision_macro == pytest.approx(4 / 9)
    assert m.recall_macro == pytest.approx(5 / 6)
    assert m.f1_macro == pytest.approx(22 / 45)
    assert m.auc_macro == pytest.approx(8 / 9)
    assert m.support == {"a": 3, "b": 2, "c": 0}
    assert m.undefined == {"precision": (), "recall": ("c",), "f1": (), "auc": ("c",)}
    assert m.n_studies == 6


def test_to_dict_is_flat_and_leaves_out_undefined() -> None:
    d = classification_metrics(PROBS, TARGETS, LABELS, thresholds=(0.5, 0.3, 0.5)).to_dict()
    assert d["f1_macro"] == pytest.approx(22 / 45)
    assert d["auc.a"] == pytest.approx(7 / 9)
    assert d["threshold.b"] == 0.3
    assert d["support.c"] == 0.0
    assert d["n_studies"] == 6.0
    assert "auc.c" not in d and "recall.c" not in d
    assert "precision.c" in d  # defined (0 of 1 predicted), so kept
    assert all(isinstance(v, float) and not math.isnan(v) for v in d.values())


def test_threshold_is_inclusive_and_scalar_applies_to_all_labels() -> None:
    probs = np.array([[0.5, 0.5], [0.49, 0.2]])
    targets = np.array([[1, 1], [0, 0]])
    m = classification_metrics(probs, targets, ("x", "y"), thresholds=0.5)
    # 0.5 >= 0.5 is present, 0.49 is not: both labels TP 1, FP 0, FN 0 -> all 1.
    assert m.f1 == {"x": 1.0, "y": 1.0}
    assert m.thresholds == {"x": 0.5, "y": 0.5}
    # At 0.6 nothing is predicted: precision 0/0 undefined, recall 0/1 = 0, F1 0/(0+0+1) = 0.
    m = classification_metrics(probs, targets, ("x", "y"), thresholds=0.6)
    assert math.isnan(m.precision["x"]) and m.recall["x"] == 0.0 and m.f1["x"] == 0.0
    assert math.isnan(m.precision_macro) and m.undefined["precision"] == ("x", "y")


def test_auc_with_a_tie() -> None:
    # positives {.5, .9} vs negatives {.5, .2}: .5 ties .5 (counts 1/2), .5 beats .2, .9 beats
    # both -> (0.5 + 1 + 2) / 4 = 0.875.
    m = classification_metrics([[0.5], [0.5], [0.2], [0.9]], [[0], [1], [0], [1]], ("x",))
    assert m.auc["x"] == pytest.approx(0.875)


def test_one_class_labels_give_undefined_auc_not_an_error(caplog: pytest.LogCaptureFixture) -> None:
    # "all" is positive in every study, "none" in none: no AUC for either, a warning names both.
    probs = np.array([[0.9, 0.8, 0.2], [0.7, 0.1, 0.3], [0.6, 0.4, 0.9]])
    targets = np.array([[1, 1, 0], [1, 0, 0], [1, 0, 0]])
    with caplog.at_level("WARNING", logger="neuroread.training.metrics"):
        m = classification_metrics(probs, targets, ("all", "x", "none"), thresholds=0.5)
    assert math.isnan(m.auc["all"]) and math.isnan(m.auc["none"])
    assert m.auc["x"] == 1.0  # positive .8 beats negatives .1 and .4
    assert m.auc_macro == 1.0
    assert m.undefined["auc"] == ("all", "none")
    assert m.recall["all"] == 1.0  # the other metrics stay defined: TP 3 of 3
    assert "all, none" in caplog.text


def test_every_label_one_class() -> None:
    m = classification_metrics([[0.9], [0.8]], [[1], [1]], ("any",))
    # TP 2, FP 0, FN 0: precision, recall, F1 all 1; AUC undefined, so is its macro.
    assert (m.precision["any"], m.recall["any"], m.f1["any"]) == (1.0, 1.0, 1.0)
    assert math.isnan(m.auc["any"]) and math.isnan(m.auc_macro)
    assert "auc_macro" not in m.to_dict()


@pytest.mark.parametrize(
    ("probs", "targets", "labels", "thresholds", "message"),
    [
        ([[0.5, 0.5]], [[1, 0]], ("a",), 0.5, "shape"),
        ([[0.5, 1.5]], [[1, 0]], ("a", "b"), 0.5, r"\[0, 1\]"),
        ([[0.5, 0.5]], [[1, 2]], ("a", "b"), 0.5, "0/1"),
        ([[0.5, 0.5]], [[1, 0]], ("a", "a"), 0.5, "distinct"),
        ([[0.5, 0.5]], [[1, 0]], ("a", "b"), (0.5, 0.5, 0.5), "thresholds"),
        ([[0.5, 0.5]], [[1, 0, 0]], ("a", "b"), 0.5, "targets"),
    ],
)
def test_classification_metrics_refuses_bad_input(probs, targets, labels, thresholds, message) -> None:
    with pytest.raises(ValueError, match=message):
        classification_metrics(probs, targets, labels, thresholds)


def test_ranked_slices_breaks_ties_by_lower_index() -> None:
    assert ranked_slices(np.array([0.2, 0.5, 0.5, 0.1, 0.5])).tolist() == [1, 2, 4, 0, 3]


def _lesions(n: int, where: set[int]) -> np.ndarray:
    return np.array([i in where for i in range(n)])


def _scores_ranking(n: int, order: list[int]) -> np.ndarray:
    """Scores that rank ``order`` first (in that order), the rest after them by index."""
    s = np.zeros(n)
    for rank, i in enumerate(order):
        s[i] = 1.0 - rank / 100
    return s


# Five studies of 10 sampled slices each.
STUDIES = [
    # A: lesions 2..7 (h = 6) -> easy and comprehensive.
    #    top 5 = 3,4,5,0,9 -> 3 lesions -> easy 3/5; top 6 adds 6 -> 4 lesions -> comprehensive 4/6.
    (_scores_ranking(10, [3, 4, 5, 0, 9, 6]), _lesions(10, {2, 3, 4, 5, 6, 7})),
    # B: lesions 1,2,3,4,8 (h = 5) -> easy, difficult and comprehensive.
    #    top 5 = 1,2,3,4,8, all lesions -> easy 5/5, difficult hit, comprehensive 5/5.
    (_scores_ranking(10, [1, 2, 3, 4, 8]), _lesions(10, {1, 2, 3, 4, 8})),
    # C: lesion 9 only (h = 1), all scores tied -> top 5 by the tie rule = 0..4 -> no lesion:
    #    difficult miss, comprehensive (top 1 = slice 0) 0/1. A tie rule favouring higher
    #    indices would have picked slice 9.
    (np.full(10, 0.1), _lesions(10, {9})),
    # D: lesion 4 (h = 1), slice 0 highest, others tied -> top 5 = 0,1,2,3,4 -> difficult hit;
    #    comprehensive top 1 = slice 0 -> 0/1.
    (np.array([0.9] + [0.1] * 9), _lesions(10, {4})),
    # E: no lesion -> no task.
    (np.linspace(0, 1, 10), _lesions(10, set())),
]


def test_key_slice_tasks_by_hand() -> None:
    r = key_slice_tasks([s for s, _ in STUDIES], [lb for _, lb in STUDIES])
    assert (r.n_easy, r.n_difficult, r.n_comprehensive) == (2, 3, 4)
    assert (r.n_studies, r.n_without_lesion) == (5, 1)
    assert r.easy == pytest.approx((3 / 5 + 1) / 2)  # A, B -> 0.8
    assert r.difficult == pytest.approx((1 + 0 + 1) / 3)  # B, C, D
    assert r.comprehensive == pytest.approx((4 / 6 + 1 + 0 + 0) / 4)  # A, B, C, D -> 5/12
    # Lesion slices among the top 5 of A..D: 3 + 5 + 0 + 1 = 9 of 20.
    assert r.top5_lesion_fraction == pytest.approx(9 / 20)
    d = r.to_dict()
    assert d["key_slice.easy"] == pytest.approx(0.8)
    assert d["key_slice.difficult.n"] == 3.0
    assert d["key_slice.n_without_lesion"] == 1.0


def test_key_slice_task_without_studies_is_undefined() -> None:
    # Only B-like studies with h = 6 (easy and comprehensive) and none with h <= 5.
    scores = np.array([_scores_ranking(8, [0, 1, 2, 3, 4, 5])])  # 2-D input: one row per study
    lesions = np.array([_lesions(8, {0, 1, 2, 3, 6, 7})])
    r = key_slice_tasks(scores, lesions)
    # top 5 = 0..4 -> lesions 0,1,2,3 -> easy 4/5; top 6 = 0..5 -> 4/6.
    assert r.easy == pytest.approx(4 / 5) and r.comprehensive == pytest.approx(4 / 6)
    assert math.isnan(r.difficult) and r.n_difficult == 0
    d = r.to_dict()
    assert "key_slice.difficult" not in d and d["key_slice.difficult.n"] == 0.0


def test_key_slice_tasks_on_no_studies() -> None:
    r = key_slice_tasks([], [])
    assert (r.n_studies, r.n_easy, r.n_difficult, r.n_comprehensive) == (0, 0, 0, 0)
    assert math.isnan(r.easy) and math.isnan(r.top5_lesion_fraction)


def test_top_k_lesion_fraction() -> None:
    # Study 1: 3 slices, lesion 0, scores rank 2,1,0 -> all 3 taken for k = 5 -> 1 of 3.
    # Study 2: 6 slices, lesions 4,5, ranked 5,0,1,2,3 (then 4) -> 1 of 5.
    # Study 3: no lesion, left out.  Pooled: 2 of 8.
    scores = [np.array([0.1, 0.2, 0.3]), np.array([0.5, 0.4, 0.3, 0.2, 0.1, 0.9]), np.array([0.3, 0.2])]
    lesions = [_lesions(3, {0}), _lesions(6, {4, 5}), _lesions(2, set())]
    assert top_k_lesion_fraction(scores, lesions) == pytest.approx(2 / 8)
    # k = 1: study 1 takes slice 2 (no), study 2 takes slice 5 (yes) -> 1 of 2.
    assert top_k_lesion_fraction(scores, lesions, k=1) == pytest.approx(1 / 2)


@pytest.mark.parametrize(
    ("scores", "labels", "message"),
    [
        ([np.zeros(3)], [np.zeros(4)], "same non-zero length"),
        ([np.array([0.1, np.nan])], [np.array([0, 1])], "finite"),
        ([np.zeros(2)], [np.array([0, 2])], "0/1"),
        ([np.zeros(2)], [], "1 studies of slice scores but 0"),
    ],
)
def test_key_slice_tasks_refuse_bad_input(scores, labels, message) -> None:
    with pytest.raises(ValueError, match=message):
        key_slice_tasks(scores, labels)


# --- multi-class outcomes -----------------------------------------------------------------------

def test_multiclass_metrics_by_hand() -> None:
    from neuroread.training.metrics import multiclass_metrics

    probs = np.array([
        [0.7, 0.2, 0.1],  # truth 0, decided 0
        [0.2, 0.5, 0.3],  # truth 1, decided 1
        [0.1, 0.6, 0.3],  # truth 2, decided 1 (wrong)
        [0.1, 0.1, 0.8],  # truth 2, decided 2
    ])
    m = multiclass_metrics(probs, [0, 1, 2, 2])
    assert m["n_studies"] == 4.0
    assert m["accuracy"] == pytest.approx(3 / 4)
    # recalls: class 0 1/1, class 1 1/1, class 2 1/2
    assert m["balanced_accuracy"] == pytest.approx((1 + 1 + 0.5) / 3)
    # F1: class 0 1 (support 1), class 1 P 1/2 R 1 -> 2/3 (support 1), class 2 P 1 R 1/2 -> 2/3 (support 2)
    assert m["f1_weighted"] == pytest.approx((1 + 2 / 3 + 2 * 2 / 3) / 4)
    # one-vs-rest AUC: class 0: its one study scores highest -> 1; class 1: 0.5 beats 0.2 and 0.1, loses to
    # 0.6 -> 2/3; class 2: positives 0.3, 0.8 against 0.1, 0.3 -> (1 + 0.5 + 1 + 1) / 4
    assert m["auc"] == pytest.approx((1 + 2 / 3 + 3.5 / 4) / 3)


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
def test_multiclass_metrics_two_classes_and_one_class() -> None:
    from neuroread.training.metrics import multiclass_metrics

    # two classes: the plain ROC AUC of the second class's probability; positives 0.6, 0.8 against
    # negatives 0.3, 0.7 -> pairs won (1 + 0 + 1 + 1) / 4. Decided: 0, 1, 1 (wrong), 1 -> accuracy 3/4.
    probs = np.array([[0.7, 0.3], [0.4, 0.6], [0.3, 0.7], [0.2, 0.8]])
    m = multiclass_metrics(probs, [0, 1, 0, 1])
    assert m["auc"] == pytest.approx(3 / 4)
    assert m["accuracy"] == pytest.approx(3 / 4)
    # one class present (both truly 1, decided 0 and 1): AUC undefined, left out; recall of class 1 is 1/2
    only = multiclass_metrics(probs[:2], [1, 1])
    assert "auc" not in only and only["accuracy"] == pytest.approx(1 / 2) and only["balanced_accuracy"] == 0.5


@pytest.mark.parametrize(("probs", "truth", "message"), [
    (np.zeros((2, 1)), [0, 0], "n_classes >= 2"),
    (np.full((2, 2), 0.5), [0], "one truth per study"),
    (np.full((2, 2), 0.5), [0, 2], r"class indices in \[0, 2\)"),
])
def test_multiclass_metrics_refuses_bad_input(probs, truth, message) -> None:
    from neuroread.training.metrics import multiclass_metrics

    with pytest.raises(ValueError, match=message):
        multiclass_metrics(probs, truth)


# --- multi-class outcomes: weighted averages and bootstrap intervals ------------------------------

HAND_PROBS = np.array([
    [0.7, 0.2, 0.1],  # truth 0, decided 0
    [0.2, 0.5, 0.3],  # truth 1, decided 1
    [0.1, 0.6, 0.3],  # truth 2, decided 1 (wrong)
    [0.1, 0.1, 0.8],  # truth 2, decided 2
])
HAND_TRUTH = [0, 1, 2, 2]


def test_weighted_multiclass_metrics_by_hand() -> None:
    from neuroread.training.metrics import weighted_multiclass_metrics

    m = weighted_multiclass_metrics(HAND_PROBS, HAND_TRUTH, classes=("a", "b", "c"), n_boot=0)
    assert m["n_studies"] == 4.0
    assert m["accuracy"] == pytest.approx(3 / 4)
    # precision: class a 1/1, class b 1/2 (decided twice, right once), class c 1/1; weights = supports 1, 1, 2
    assert m["precision_weighted"] == pytest.approx((1 + 1 / 2 + 2 * 1) / 4)
    # F1: a 1, b 2/3, c 2/3 (see test_multiclass_metrics_by_hand)
    assert m["f1_weighted"] == pytest.approx((1 + 2 / 3 + 2 * 2 / 3) / 4)
    # one-vs-rest AUC: a 1, b 2/3, c 3.5/4; weighted by supports 1, 1, 2
    assert m["auc_weighted"] == pytest.approx((1 + 2 / 3 + 2 * 3.5 / 4) / 4)
    # confusion: rows the truth, columns the decided class
    expected = {("a", "a"): 1, ("b", "b"): 1, ("c", "b"): 1, ("c", "c"): 1}
    for t in "abc":
        for d in "abc":
            assert m[f"confusion.{t}.{d}"] == expected.get((t, d), 0), (t, d)
    assert not any(k.endswith((".ci_low", ".ci_high")) for k in m)  # n_boot=0: no intervals
    # without names the classes are their indices
    assert weighted_multiclass_metrics(HAND_PROBS, HAND_TRUTH, n_boot=0)["confusion.2.1"] == 1.0


def test_resampled_metrics_are_scikit_learns() -> None:
    """The vectorised bootstrap computes what scikit-learn computes, resample by resample (with ties)."""
    from sklearn.metrics import accuracy_score, precision_recall_fscore_support, roc_auc_score

    from neuroread.training.metrics import _resampled

    rng = np.random.default_rng(3)
    probs = rng.multinomial(10, [0.3, 0.3, 0.4], size=30) / 10  # tenths summing to 1: many ties
    truth = rng.integers(0, 3, size=30)
    decided = probs.argmax(axis=1)
    index = rng.integers(0, 30, size=(25, 30))
    got = _resampled(probs, truth, decided, index)
    for b, idx in enumerate(index):
        y, p, d = truth[idx], probs[idx], decided[idx]
        precision, _, f1, _ = precision_recall_fscore_support(y, d, labels=[0, 1, 2], average="weighted",
                                                              zero_division=0)
        assert got["accuracy"][b] == pytest.approx(accuracy_score(y, d))
        assert got["precision_weighted"][b] == pytest.approx(precision)
        assert got["f1_weighted"][b] == pytest.approx(f1)
        if len(np.unique(y)) == 3:
            auc = roc_auc_score(y, p, multi_class="ovr", average="weighted")
            assert got["auc_weighted"][b] == pytest.approx(auc)
        else:
            assert math.isnan(got["auc_weighted"][b])


def test_bootstrap_intervals_hold_the_estimate_and_follow_the_seed() -> None:
    import time

    from neuroread.training.metrics import WEIGHTED_METRICS, weighted_multiclass_metrics

    rng = np.random.default_rng(0)
    truth = rng.integers(0, 3, size=100)
    logits = rng.normal(size=(100, 3)) + 1.5 * np.eye(3)[truth]
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    started = time.perf_counter()
    m = weighted_multiclass_metrics(probs, truth, seed=1)  # 1000 resamples of 100 studies
    assert time.perf_counter() - started < 2.0
    for name in WEIGHTED_METRICS:
        assert m[f"{name}.ci_low"] <= m[name] <= m[f"{name}.ci_high"], name
        assert m[f"{name}.ci_low"] < m[f"{name}.ci_high"], name
    assert weighted_multiclass_metrics(probs, truth, seed=1) == m
    other = weighted_multiclass_metrics(probs, truth, seed=2)  # other resamples: other intervals, same estimates
    intervals = [k for k in m if k.endswith((".ci_low", ".ci_high"))]
    assert len(intervals) == 8 and [other[k] for k in intervals] != [m[k] for k in intervals]
    assert all(other[k] == m[k] for k in m if k not in intervals)


def test_perfect_predictions_have_intervals_at_one() -> None:
    from neuroread.training.metrics import weighted_multiclass_metrics

    truth = np.array([0, 1, 2, 0, 1, 2, 2])
    m = weighted_multiclass_metrics(np.eye(3)[truth] * 0.8 + 0.2 / 3, truth, n_boot=200)
    for name in ("accuracy", "auc_weighted", "precision_weighted", "f1_weighted"):
        assert (m[name], m[f"{name}.ci_low"], m[f"{name}.ci_high"]) == (1.0, 1.0, 1.0), name


def test_weighted_auc_with_one_class_is_left_out_and_bad_input_refused() -> None:
    from neuroread.training.metrics import weighted_multiclass_metrics

    m = weighted_multiclass_metrics(HAND_PROBS[:2], [1, 1], n_boot=50)
    assert "auc_weighted" not in m and "auc_weighted.ci_low" not in m
    assert m["accuracy"] == 0.5 and "accuracy.ci_low" in m
    with pytest.raises(ValueError, match="3 distinct names"):
        weighted_multiclass_metrics(HAND_PROBS, HAND_TRUTH, classes=("a", "b"))
    with pytest.raises(ValueError, match="n_boot"):
        weighted_multiclass_metrics(HAND_PROBS, HAND_TRUTH, n_boot=-1)
    with pytest.raises(ValueError, match="one truth per study"):
        weighted_multiclass_metrics(HAND_PROBS, [0, 1])


# --- lesion detection -----------------------------------------------------------------------------

SHAPE = (2, 3, 4)  # 24 voxels; the scans are drawn along the flat (C-order) index


def _ids(*lesions: tuple[int, int, int]) -> np.ndarray:
    """A truth instance map: each (id, first, last) fills flat voxels first..last with id."""
    flat = np.zeros(24, np.int16)
    for lesion_id, first, last in lesions:
        flat[first:last + 1] = lesion_id
    return flat.reshape(SHAPE)


def _mask(first: int, last: int) -> np.ndarray:
    flat = np.zeros(24, bool)
    flat[first:last + 1] = True
    return flat.reshape(SHAPE)


# Scan 1: truth lesions 1 (voxels 0-3), 2 (6-7), 3 (10-11), 4 (18-19, missed).
#   P0 (1-3) on lesion 1: shared 3, IoU 3/4, Dice 6/7.
#   P1 (6-10) spans lesions 2 and 3: with 2 shared 2, IoU 2/5, Dice 4/7; with 3 shared 1, IoU 1/(5+2-1) = 1/6.
#   P2 (11-16) on lesion 3: shared 1, IoU 1/(6+2-1) = 1/7, Dice 2/8.
#   P3 (22-23): no overlap, a false positive.
#   Greedy by IoU: 3/4 (1, P0), 2/5 (2, P1), 1/6 (3, P1: P1 taken, skipped), 1/7 (3, P2). Lesion 3 goes to P2
#   although P1 overlaps it better, because P1 matched lesion 2 first; lesion 4 is missed.
#   Union Dice: truth 10 voxels, predictions 3 + 5 + 6 + 2 = 16, shared 3 + 2 + 1 + 1 = 7 -> 14/26.
SCAN_1 = ([_mask(1, 3), _mask(6, 10), _mask(11, 16), _mask(22, 23)], _ids((1, 0, 3), (2, 6, 7), (3, 10, 11),
                                                                         (4, 18, 19)))
# Scan 2: one lesion (id 5: ids need not be 1..n) found exactly: IoU 1, Dice 1, union Dice 1.
SCAN_2 = ([_mask(4, 5)], _ids((5, 4, 5)))
# Scan 3: nothing to find, nothing found (counts as a scan for false positives, not for the Dice).
SCAN_3 = ([], _ids())
# Scan 4: nothing to find, one false positive: union Dice 0 / 1 = 0.
SCAN_4 = ([_mask(3, 3)], _ids())

MATCHED_IOU = [3 / 4, 2 / 5, 1 / 7, 1.0]
MATCHED_DICE = [6 / 7, 4 / 7, 2 / 8, 1.0]


def test_detection_metrics_by_hand() -> None:
    from neuroread.training.detection import detection_metrics

    m = detection_metrics([SCAN_1, SCAN_2, SCAN_3, SCAN_4])
    assert (m["n_scans"], m["n_lesions"], m["n_predicted"], m["n_matched"], m["n_false_positives"]) == (4, 5, 6, 4, 2)
    assert m["recall"] == pytest.approx(4 / 5)
    assert m["recall_per_scan_mean"] == pytest.approx((3 / 4 + 1) / 2)  # scans 1 and 2 have lesions
    assert m["fp_per_scan"] == pytest.approx(2 / 4)
    assert m["iou"] == pytest.approx(np.mean(MATCHED_IOU))
    assert m["dice"] == pytest.approx(np.mean(MATCHED_DICE))
    assert m["iou_sd"] == pytest.approx(np.std(MATCHED_IOU))
    assert m["dice_sd"] == pytest.approx(np.std(MATCHED_DICE))
    assert m["dice_scan"] == pytest.approx((14 / 26 + 1 + 0) / 3)  # scan 3 has no voxel of either


def test_detection_metrics_from_lesion_scans_and_float_ids() -> None:
    from neuroread.training.detection import LesionScan, detection_metrics

    scans = [LesionScan.from_masks(p, t.astype(np.float32)) for p, t in (SCAN_1, SCAN_2, SCAN_3, SCAN_4)]
    assert detection_metrics(scans) == detection_metrics([SCAN_1, SCAN_2, SCAN_3, SCAN_4])
    pairs = scans[0].overlaps()
    assert [(t, j) for _, _, t, j in pairs] == [(1, 0), (2, 1), (3, 1), (3, 2)]
    assert [iou for iou, _, _, _ in pairs] == pytest.approx([3 / 4, 2 / 5, 1 / 6, 1 / 7])


def test_detection_metrics_leave_undefined_values_out() -> None:
    from neuroread.training.detection import detection_metrics

    assert detection_metrics([]) == {"n_scans": 0.0, "n_lesions": 0.0, "n_predicted": 0.0, "n_matched": 0.0,
                                     "n_false_positives": 0.0}
    missed = detection_metrics([([], _ids((1, 0, 1)))])  # a lesion, no prediction: recall 0, no pair to measure
    assert missed["recall"] == 0.0 and missed["recall_per_scan_mean"] == 0.0 and missed["dice_scan"] == 0.0
    assert not {"iou", "dice", "iou_sd", "dice_sd"} & set(missed)
    clean = detection_metrics([SCAN_3])  # nothing anywhere: no recall, no Dice, no false positive
    assert clean["fp_per_scan"] == 0.0 and not {"recall", "recall_per_scan_mean", "dice_scan", "iou"} & set(clean)


def test_a_prediction_spanning_two_lesions_matches_the_better_one_only() -> None:
    from neuroread.training.detection import detection_metrics

    # P (0-6) over lesion 1 (0-1: IoU 2/7) and lesion 2 (3-6: IoU 4/7): it matches lesion 2; lesion 1 is missed
    m = detection_metrics([([_mask(0, 6)], _ids((1, 0, 1), (2, 3, 6)))])
    assert m["recall"] == 0.5 and m["n_false_positives"] == 0 and m["iou"] == pytest.approx(4 / 7)


@pytest.mark.parametrize(("predicted", "truth", "message"), [
    ([_mask(0, 1)[0]], _ids(), "mask shape"),
    ([np.zeros(SHAPE, bool)], _ids(), "empty"),
    ([], _ids((1, 0, 1)) - 2, ">= 0"),
    ([], _ids((1, 0, 1)) + 0.5, "integer lesion ids"),
])
def test_detection_metrics_refuse_bad_input(predicted, truth, message) -> None:
    from neuroread.training.detection import detection_metrics

    with pytest.raises(ValueError, match=message):
        detection_metrics([(predicted, truth)])


def test_recall_at_fp_by_hand() -> None:
    from neuroread.training.detection import LesionScan, recall_at_fp

    scans = [(SCAN_1[0], [0.9, 0.6, 0.3, 0.8], SCAN_1[1]), (SCAN_2[0], [0.7], SCAN_2[1]),
             (SCAN_3[0], [], SCAN_3[1]), (SCAN_4[0], [0.5], SCAN_4[1])]
    # Lowering the threshold over the scores, (matched, false positives) over 4 scans and 5 lesions:
    #   0.9: P0 of scan 1 (1, 0); 0.8: + scan 1's P3 (1, 1); 0.7: + scan 2's lesion (2, 1);
    #   0.6: + P1 on lesion 2 (3, 1); 0.5: + scan 4's false positive (3, 2); 0.3: + P2 on lesion 3 (4, 2).
    assert recall_at_fp(scans, 0) == {"n_scans": 4.0, "n_lesions": 5.0, "recall": 1 / 5, "fp_per_scan": 0.0,
                                      "threshold": 0.9}
    assert recall_at_fp(scans, 0.25) == {"n_scans": 4.0, "n_lesions": 5.0, "recall": 3 / 5, "fp_per_scan": 0.25,
                                         "threshold": 0.6}
    at_half = recall_at_fp([LesionScan.from_masks(p, t, s) for p, s, t in scans], 0.5)
    assert (at_half["recall"], at_half["fp_per_scan"], at_half["threshold"]) == (4 / 5, 0.5, 0.3)
    # a false positive scoring above every lesion: with no false positive allowed nothing is kept
    worst = recall_at_fp([(SCAN_1[0], [0.5, 0.5, 0.5, 0.9], SCAN_1[1])], 0)
    assert worst["recall"] == 0.0 and "threshold" not in worst
    assert recall_at_fp([(SCAN_4[0], [0.5], SCAN_4[1])], 1) == {"n_scans": 1.0, "n_lesions": 0.0}
    with pytest.raises(ValueError, match="max_fp_per_scan"):
        recall_at_fp(scans, -1)
    with pytest.raises(ValueError, match="needs a score"):
        recall_at_fp([LesionScan.from_masks(*SCAN_2)], 1)
    with pytest.raises(ValueError, match="one per predicted lesion"):
        recall_at_fp([(SCAN_2[0], [0.5, 0.6], SCAN_2[1])], 1)
