"""neuroread.training.folds: complete, disjoint, grouped, stratified and reproducible splits."""
from __future__ import annotations

import numpy as np
import pytest

from neuroread.training.folds import Split, holdout_split, kfold_splits

# 60 studies of 30 patients, two consecutive studies each. Patients 0..11 are positive on
# both studies, patient 12 on its first only: 25 positive studies (~42 %), all at the front,
# so a split that neither shuffles nor stratifies would put them all in the first folds.
GROUPS = np.repeat(np.arange(30), 2)
ANY = np.zeros(60, dtype=int)
ANY[:25] = 1


def _check_partition(folds: list[Split], n: int) -> None:
    tests = [i for fold in folds for i in fold.test]
    assert sorted(tests) == list(range(n)), "every study is in exactly one test fold"
    for fold in folds:
        assert sorted(fold.train + fold.test) == list(range(n))
        assert not set(fold.train) & set(fold.test)


def test_stratified_kfold_partitions_and_balances() -> None:
    folds = kfold_splits(ANY, n_splits=5, seed=7)
    assert len(folds) == 5
    _check_partition(folds, 60)
    # 25 positives over 5 folds of 12: exactly 5 per fold when stratified.
    assert [int(ANY[list(f.test)].sum()) for f in folds] == [5, 5, 5, 5, 5]
    assert [len(f.test) for f in folds] == [12] * 5


def test_grouped_kfold_keeps_patients_whole() -> None:
    folds = kfold_splits(ANY, n_splits=5, seed=7, groups=GROUPS)
    _check_partition(folds, 60)
    for fold in folds:
        assert not set(GROUPS[list(fold.train)]) & set(GROUPS[list(fold.test)]), "a patient on both sides"
    test_patients = sorted(p for fold in folds for p in set(GROUPS[list(fold.test)]))
    assert test_patients == list(range(30)), "every patient in exactly one test fold"
    # Roughly balanced: each fold's positive share within 0.1 of the overall 25/60.
    shares = [ANY[list(f.test)].mean() for f in folds]
    assert all(abs(s - 25 / 60) <= 0.1 for s in shares), shares


def test_splits_are_deterministic_with_a_seed() -> None:
    a = kfold_splits(ANY, 5, seed=3, groups=GROUPS)
    assert a == kfold_splits(ANY, 5, seed=3, groups=GROUPS)
    assert a != kfold_splits(ANY, 5, seed=4, groups=GROUPS)
    assert kfold_splits(ANY, 4, seed=3) == kfold_splits(ANY, 4, seed=3)
    assert kfold_splits(ANY, 4, seed=3) != kfold_splits(ANY, 4, seed=4)


def test_holdout_split() -> None:
    split = holdout_split(ANY, seed=11, groups=GROUPS)
    assert split == kfold_splits(ANY, 5, seed=11, groups=GROUPS)[0]
    assert sorted(split.train + split.test) == list(range(60))
    assert 10 <= len(split.test) <= 14  # about 1/5 of 60
    assert not set(GROUPS[list(split.train)]) & set(GROUPS[list(split.test)])
    # Cross-validation inside the training part, mapped back to study indices.
    train = np.asarray(split.train)
    inner = kfold_splits(ANY[train], 4, seed=11, groups=GROUPS[train])
    assert sorted(int(i) for f in inner for i in train[list(f.test)]) == list(split.train)


def test_split_refuses_overlap() -> None:
    with pytest.raises(ValueError, match=r"\[2\] are in both"):
        Split(train=(0, 1, 2), test=(2, 3))


@pytest.mark.parametrize(
    ("strata", "n_splits", "groups", "message"),
    [
        (np.zeros((4, 2)), 2, None, "1-D"),
        (ANY, 1, None, "at least 2"),
        (ANY[:3], 4, None, "more than the 3 studies"),
        (ANY[:6], 4, [0, 0, 1, 1, 2, 2], "more than the 3 patients"),
        (ANY, 5, GROUPS[:10], "one patient id per study"),
    ],
)
def test_kfold_refuses_bad_input(strata, n_splits, groups, message) -> None:
    with pytest.raises(ValueError, match=message):
        kfold_splits(strata, n_splits, seed=0, groups=groups)
