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
