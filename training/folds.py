"""Cross-validation and held-out splits over studies: indices into the caller's study list.

Splits are stratified on one study-level class per study, in practice the ``any`` label
(any lesion), so every fold holds about the same share of positive studies. scikit-learn
has no multi-label (iterative) stratification (its stratified splitters refuse a label
matrix), so the rarer labels are balanced only as far as ``any`` carries them; with as few
positives of a label as folds, a fold may lack it and its AUC there is undefined (see
:mod:`neuroread.training.metrics`).

With ``groups`` (a patient id per study) no patient has studies on both sides of a split:
scikit-learn's ``StratifiedGroupKFold``, which keeps groups whole and balances the strata
as well as whole groups allow. Without, ``StratifiedKFold``. Both shuffle with ``seed``:
the same inputs and seed give the same splits, on every machine.

Nothing here touches data: callers index their own study lists with the returned indices.
To cross-validate inside a held-out split, split the training part and map back:
``np.asarray(outer.train)[inner.test]``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold


@dataclass(frozen=True)
class Split:
    """One split: sorted indices of the training and of the test studies, disjoint."""

    train: tuple[int, ...]
    test: tuple[int, ...]

    def __post_init__(self) -> None:
        if not self.test:
            raise ValueError("Split.test must hold at least one study")
        overlap = set(self.train) & set(self.test)
        if overlap:
            raise ValueError(f"Split: studies {sorted(overlap)[:10]} are in both train and test")


def kfold_splits(strata: ArrayLike, n_splits: int, seed: int, groups: ArrayLike | None = None) -> list[Split]:
    """``n_splits`` folds over the studies; fold i tests on its part and trains on the others.

    ``strata``: one class per study (the ``any`` label, 0/1); ``groups``: optionally one
    patient id per study, kept on one side of every split. Every study is in exactly one
    test part. Raises ``ValueError`` when there are fewer studies (or patients) than folds.
    """
    y = np.asarray(strata)
    if y.ndim != 1 or y.size == 0:
        raise ValueError(f"strata must be 1-D with one class per study (e.g. the 'any' label), got shape {y.shape}")
    if n_splits < 2:
        raise ValueError(f"n_splits must be at least 2, got {n_splits}")
    placeholder = np.zeros((y.size, 1))  # scikit-learn's splitters want an X; only its length matters
    if groups is None:
        if n_splits > y.size:
            raise ValueError(f"n_splits={n_splits} is more than the {y.size} studies")
        splits = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed).split(placeholder, y)
    else:
        g = np.asarray(groups)
        if g.shape != y.shape:
            raise ValueError(f"groups must hold one patient id per study ({y.size}), got shape {g.shape}")
        n_groups = len(np.unique(g))
        if n_splits > n_groups:
            raise ValueError(f"n_splits={n_splits} is more than the {n_groups} patients (groups)")
        splits = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed).split(placeholder, y, g)
    return [Split(train=tuple(sorted(map(int, train))), test=tuple(sorted(map(int, test)))) for train, test in splits]


def holdout_split(strata: ArrayLike, seed: int, groups: ArrayLike | None = None, n_parts: int = 5) -> Split:
    """A held-out test split of about ``1 / n_parts`` of the studies, stratified and grouped.

    It is the first fold of :func:`kfold_splits` with ``n_parts`` folds, so held-out and
    cross-validation splits follow one rule (a test share of 1/5 by default).
    """
    return kfold_splits(strata, n_parts, seed, groups)[0]
