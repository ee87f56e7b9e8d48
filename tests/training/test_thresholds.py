"""neuroread.training.thresholds on hand-made probabilities whose best F1 threshold is worked out
in the comments (candidates: midpoints between consecutive distinct probabilities, plus 0.5;
F1 = 2 TP / (called + positives))."""
from __future__ import annotations

import pytest

from neuroread.training.thresholds import best_f1_threshold, choose_thresholds


def test_best_threshold_by_hand() -> None:
    # sorted: 0.1(-) 0.35(+) 0.4(-) 0.8(+); candidates 0.225, 0.375, 0.6, 0.5
    # 0.225: calls 0.35, 0.4, 0.8 -> TP 2, F1 4/5;  0.375: 0.4, 0.8 -> 2/4;  0.6 and 0.5: 0.8 -> 2/3
    assert best_f1_threshold([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.225)


def test_ties_go_to_the_candidate_closest_to_one_half() -> None:
    # descending 0.9(+) 0.8(-) 0.7(-) 0.6(+) 0.55(-); two positives.
    # 0.575: 4 called, TP 2 -> 4/6;  0.65: 3 called, TP 1 -> 2/5;  0.75: 2/4;  0.85: 1 called, TP 1 -> 2/3;
    # 0.5: all 5, TP 2 -> 4/7.  Tie 0.575 / 0.85 at 2/3: 0.575 is closer to 0.5 (and the smaller one).
    assert best_f1_threshold([0.9, 0.8, 0.7, 0.6, 0.55], [1, 0, 0, 1, 0]) == pytest.approx(0.575)
    # The same below 0.5: 0.45(+) 0.4(-) 0.3(-) 0.2(+) 0.1(-).  0.15: 4 called, TP 2 -> 2/3;  0.25: 2/5;
    # 0.35: 2/4;  0.425: 1 called, TP 1 -> 2/3;  0.5: nothing called -> 0.  Tie 0.15 / 0.425: 0.425 (the larger).
    assert best_f1_threshold([0.45, 0.4, 0.3, 0.2, 0.1], [1, 0, 0, 1, 0]) == pytest.approx(0.425)
    # 0.1(-) 0.3(-) 0.9(+): 0.2 -> 2/3; 0.6 and 0.5 -> 1.0: 0.5 itself wins the tie
    assert best_f1_threshold([0.1, 0.3, 0.9], [0, 0, 1]) == 0.5


def test_no_positive_keeps_one_half() -> None:
    assert best_f1_threshold([0.1, 0.7, 0.9], [0, 0, 0]) == 0.5


def test_threshold_is_clipped_to_low_and_high() -> None:
    # 0.1(-) 0.2(+) 0.3(+): 0.15 -> F1 1.0, 0.25 -> 2/3, 0.5 -> 0
    assert best_f1_threshold([0.1, 0.2, 0.3], [0, 1, 1]) == pytest.approx(0.15)
    # with low 0.25 the candidate 0.15 becomes 0.25 (calls only 0.3: 2/3), and that is the best left
    assert best_f1_threshold([0.1, 0.2, 0.3], [0, 1, 1], low=0.25) == pytest.approx(0.25)
    # 0.6(-) 0.9(+): 0.75 -> 1.0, 0.5 -> 2/3; high 0.7 moves 0.75 to 0.7 (still calls only 0.9)
    assert best_f1_threshold([0.6, 0.9], [0, 1]) == pytest.approx(0.75)
    assert best_f1_threshold([0.6, 0.9], [0, 1], high=0.7) == pytest.approx(0.7)
    # whatever the data, the result stays in [low, high]
    assert 0.05 <= best_f1_threshold([0.001, 0.002], [0, 1]) <= 0.95
    assert 0.05 <= best_f1_threshold([0.998, 0.999], [0, 1]) <= 0.95


@pytest.mark.parametrize(("probs", "targets", "kwargs", "message"), [
    ([0.1, 0.2], [1], {}, "2 probabilities for 1 targets"),
    ([], [], {}, "0 probabilities for 0 targets"),
    ([0.1], [1], {"low": 0.6}, "need 0 < low <= 0.5 <= high < 1"),
    ([0.1], [1], {"high": 1.0}, "need 0 < low <= 0.5 <= high < 1"),
])
def test_best_threshold_refuses_bad_input(probs, targets, kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        best_f1_threshold(probs, targets, **kwargs)


def test_choose_thresholds_per_label() -> None:
    probs = [[0.1, 0.6], [0.4, 0.9], [0.35, 0.1], [0.8, 0.2]]
    targets = [[0, 0], [0, 1], [1, 0], [1, 0]]
    # column a is test_best_threshold_by_hand's; column b: 0.1(-) 0.2(-) 0.6(-) 0.9(+) -> 0.75 (F1 1.0)
    chosen = choose_thresholds(probs, targets, ["a", "b"])
    assert chosen == {"a": pytest.approx(0.225), "b": pytest.approx(0.75)}
    assert choose_thresholds(probs, [[0, 0]] * 4, ["a", "b"]) == {"a": 0.5, "b": 0.5}
    with pytest.raises(ValueError, match=r"must both be \[studies, 3\]"):
        choose_thresholds(probs, targets, ["a", "b", "c"])


def test_the_threshold_is_the_middle_of_the_best_f1_plateau():
    # positives at 0.62, 0.7, 0.9; negatives at 0.1, 0.2, 0.3, 0.65: any cut in (0.3, 0.62] calls all
    # three positives and no negative below 0.62 (F1 6/7 with the 0.65 false positive, or 1.0 above 0.65
    # missing one: F1 0.8); the plateau within 0.02 of the best is the one at F1 6/7.
    p = [0.1, 0.2, 0.3, 0.62, 0.65, 0.7, 0.9]
    y = [0, 0, 0, 1, 0, 1, 1]
    t = best_f1_threshold(p, y)
    assert 0.3 < t <= 0.62
    assert best_f1_threshold(p, y, tolerance=0.0) == 0.5  # 0.46 and 0.5 tie: the one closer to 0.5
    # candidates and their F1: 0.025 and 0.075 -> 0.6, 0.15 -> 0.75, 0.25 -> 0.571, 0.35 -> 0.667,
    # 0.45 and 0.5 -> 0.8, 0.65 -> 0.5, 0.9 -> 0: the middle of those within the tolerance of the best
    p2 = [0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.8]
    y2 = [0, 0, 1, 0, 0, 1, 1]
    assert best_f1_threshold(p2, y2, tolerance=0.0) == 0.5              # {0.45, 0.5}: the one closer to 0.5
    assert best_f1_threshold(p2, y2, tolerance=0.1) == pytest.approx(0.45)   # {0.15, 0.45, 0.5}: the median
    assert best_f1_threshold(p2, y2, tolerance=0.2) == pytest.approx(0.35)   # six: the two middle, closer to 0.5
    with pytest.raises(ValueError, match="tolerance"):
        best_f1_threshold(p2, y2, tolerance=1.0)
