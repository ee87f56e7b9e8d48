"""Lesion detection metrics, as detection papers report them.

Lesion detection (:func:`detection_metrics`, :func:`recall_at_fp`), per scan: predicted lesions
(boolean masks) against a truth instance map (0 background, one integer id per lesion). Every
(truth, prediction) pair sharing at least one voxel is a candidate; pairs are taken by IoU,
highest first (ties: lower truth id, then earlier prediction), a pair being kept when neither
its truth lesion nor its prediction is matched yet. So a prediction spanning two lesions matches
the one it overlaps best, and the other can still be matched by another prediction. A truth
lesion matched is detected; a prediction left unmatched is a false positive.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from .metrics import _mean_defined


@dataclass(frozen=True, eq=False)  # arrays inside: compare what they measure, not the objects
class LesionScan:
    """One scan's predicted lesions and truth lesions as flat voxel indices on the scan's grid:
    a few bytes per lesion voxel rather than whole volumes (what evaluation keeps per record).

    ``predicted``: per predicted lesion its sorted voxel indices; ``scores``: one per predicted
    lesion (e.g. its probability), or ``None``; ``truth_index``: the sorted indices of the truth
    voxels; ``truth_id``: the lesion id (>= 1) of each. Build with :meth:`from_masks`.
    """

    shape: tuple[int, ...]
    predicted: tuple[np.ndarray, ...]
    truth_index: np.ndarray
    truth_id: np.ndarray
    scores: tuple[float, ...] | None = None

    @classmethod
    def from_masks(cls, predicted: Sequence[ArrayLike], truth_ids: ArrayLike,
                   scores: Sequence[float] | None = None) -> LesionScan:
        """From boolean masks, one per predicted lesion, and the truth instance map (0 background,
        one integer id per lesion), all of one shape; ``scores`` one finite value per prediction."""
        truth = np.asarray(truth_ids)
        if truth.ndim == 0 or truth.size == 0:
            raise ValueError(f"truth_ids must be a non-empty array, got shape {truth.shape}")
        if not np.issubdtype(truth.dtype, np.integer):
            if not (np.isfinite(truth).all() and (truth == np.round(truth)).all()):
                raise ValueError(f"truth_ids must hold integer lesion ids, got {truth.dtype} values "
                                 f"{np.unique(truth)[:10]}")
        flat = truth.ravel()
        truth_index = np.flatnonzero(flat)
        truth_id = flat[truth_index].astype(np.int64)
        if truth_id.size and truth_id.min() < 0:
            raise ValueError(f"truth_ids must be >= 0 (0 background), got {np.unique(truth_id[truth_id < 0])}")
        masks = []
        for i, m in enumerate(predicted):
            mask = np.asarray(m)
            if mask.shape != truth.shape:
                raise ValueError(f"predicted lesion {i}: mask shape {mask.shape} is not the truth's {truth.shape}")
            index = np.flatnonzero(mask.astype(bool, copy=False).ravel())
            if not index.size:
                raise ValueError(f"predicted lesion {i}: the mask is empty")
            masks.append(index)
        if scores is not None:
            scores = tuple(float(v) for v in scores)
            if len(scores) != len(masks) or not all(math.isfinite(v) for v in scores):
                raise ValueError(f"scores must be {len(masks)} finite values, one per predicted lesion, got {scores}")
        return cls(truth.shape, tuple(masks), truth_index, truth_id, scores)

    @property
    def truth_sizes(self) -> dict[int, int]:
        """Voxels per truth lesion id."""
        ids, counts = np.unique(self.truth_id, return_counts=True)
        return dict(zip(ids.tolist(), counts.tolist()))

    def overlaps(self) -> list[tuple[float, float, int, int]]:
        """Every (IoU, Dice, truth id, prediction index) of a truth lesion and a prediction sharing
        a voxel, in matching order: IoU highest first, then lower truth id, then earlier prediction."""
        sizes = self.truth_sizes
        pairs = []
        for j, voxels in enumerate(self.predicted):
            if not self.truth_index.size:
                break
            at = np.minimum(np.searchsorted(self.truth_index, voxels), self.truth_index.size - 1)
            ids, shared = np.unique(self.truth_id[at[self.truth_index[at] == voxels]], return_counts=True)
            for t, inter in zip(ids.tolist(), shared.tolist()):
                both = voxels.size + sizes[t]
                pairs.append((inter / (both - inter), 2 * inter / both, t, j))
        return sorted(pairs, key=lambda p: (-p[0], p[2], p[3]))

    def union_dice(self) -> float:
        """Dice of all predictions together against all truth lesions together; NaN when both are empty."""
        union = np.unique(np.concatenate(self.predicted)) if self.predicted else np.empty(0, np.int64)
        total = union.size + self.truth_index.size
        return 2 * int(np.isin(union, self.truth_index, assume_unique=True).sum()) / total if total else math.nan


def _match(pairs: Sequence[tuple[float, float, int, int]], kept: set[int] | None = None
           ) -> list[tuple[float, float, int, int]]:
    """The one-to-one matches of :meth:`LesionScan.overlaps`'s pairs (already in order), greedy;
    ``kept``: the predictions taking part (all when ``None``)."""
    truths: set[int] = set()
    preds: set[int] = set()
    out = []
    for pair in pairs:
        _, _, t, j = pair
        if t in truths or j in preds or (kept is not None and j not in kept):
            continue
        truths.add(t)
        preds.add(j)
        out.append(pair)
    return out


def _lesion_scan(scan: LesionScan | tuple, with_scores: bool = False) -> LesionScan:
    if isinstance(scan, LesionScan):
        if with_scores and scan.scores is None:
            raise ValueError("recall_at_fp needs a score per predicted lesion; a LesionScan came without")
        return scan
    if with_scores:
        predicted, scores, truth = scan
        return LesionScan.from_masks(predicted, truth, scores)
    predicted, truth = scan
    return LesionScan.from_masks(predicted, truth)


def detection_metrics(scans: Iterable[LesionScan | tuple[Sequence[ArrayLike], ArrayLike]]) -> dict[str, float]:
    """Per-lesion detection over ``scans``: each ``(predicted masks, truth id map)`` or a
    :class:`LesionScan`; matching as in the module docstring.

    Returns ``n_scans``, ``n_lesions`` (truth), ``n_predicted``, ``n_matched``,
    ``n_false_positives``; ``recall`` = matched / truth lesions, pooled over the scans;
    ``recall_per_scan_mean``: the mean over scans with a truth lesion of their own recall;
    ``fp_per_scan`` = unmatched predictions / scans; ``iou`` / ``dice`` and ``iou_sd`` /
    ``dice_sd``: mean and (population) standard deviation over the matched truth lesions of the
    pair's IoU and Dice; ``dice_scan``: the mean over scans with a truth or predicted voxel of the
    Dice of all predictions against all truth lesions. A value undefined on the data (no truth
    lesion, no match, no scan) is left out.
    """
    n_scans = n_lesions = n_predicted = 0
    matched: list[tuple[float, float, int, int]] = []
    per_scan_recall: list[float] = []
    scan_dice: list[float] = []
    for scan in scans:
        scan = _lesion_scan(scan)
        found = _match(scan.overlaps())
        n_truth = len(scan.truth_sizes)
        n_scans += 1
        n_lesions += n_truth
        n_predicted += len(scan.predicted)
        matched += found
        if n_truth:
            per_scan_recall.append(len(found) / n_truth)
        scan_dice.append(scan.union_dice())
    iou = np.array([m[0] for m in matched])
    dice = np.array([m[1] for m in matched])
    out = {"n_scans": float(n_scans), "n_lesions": float(n_lesions), "n_predicted": float(n_predicted),
           "n_matched": float(len(matched)), "n_false_positives": float(n_predicted - len(matched)),
           "recall": len(matched) / n_lesions if n_lesions else math.nan,
           "recall_per_scan_mean": _mean_defined(per_scan_recall),
           "fp_per_scan": (n_predicted - len(matched)) / n_scans if n_scans else math.nan,
           "iou": float(iou.mean()) if iou.size else math.nan, "iou_sd": float(iou.std()) if iou.size else math.nan,
           "dice": float(dice.mean()) if dice.size else math.nan,
           "dice_sd": float(dice.std()) if dice.size else math.nan,
           "dice_scan": _mean_defined(scan_dice)}
    return {k: float(v) for k, v in out.items() if not math.isnan(v)}


def recall_at_fp(scans: Iterable[LesionScan | tuple[Sequence[ArrayLike], Sequence[float], ArrayLike]],
                 max_fp_per_scan: float) -> dict[str, float]:
    """The best lesion recall at a score threshold that keeps false positives per scan within
    ``max_fp_per_scan`` (a point of the FROC curve).

    ``scans``: each ``(predicted masks, their scores, truth id map)`` or a :class:`LesionScan`
    with scores. For every candidate threshold (each distinct score, predictions kept when their
    score is ``>=`` it, and "keep none") the lesions are matched anew as in
    :func:`detection_metrics`; among the thresholds with false positives / scans ``<=
    max_fp_per_scan``, the one of highest recall wins, on a tie the higher threshold. Returns
    ``recall``, ``fp_per_scan`` and ``threshold`` there (``threshold`` left out when keeping no
    prediction is best), with ``n_scans`` and ``n_lesions``; without a truth lesion only the counts.
    """
    if isinstance(max_fp_per_scan, bool) or not isinstance(max_fp_per_scan, (int, float)) \
            or not max_fp_per_scan >= 0 or math.isinf(max_fp_per_scan):
        raise ValueError(f"max_fp_per_scan must be a finite number >= 0, got {max_fp_per_scan!r}")
    # Per scan: its own score levels (ascending) and, for each number of levels kept (0 .. all),
    # the matches and false positives. A global threshold keeps the levels >= it in every scan.
    per_scan: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    n_lesions = 0
    for scan in scans:
        scan = _lesion_scan(scan, with_scores=True)
        scores = np.array(scan.scores, dtype=np.float64)
        levels = np.unique(scores)
        pairs = scan.overlaps()
        hits, fps = [0], [0]
        for level in levels[::-1]:
            kept = set(np.flatnonzero(scores >= level).tolist())
            hits.append(len(_match(pairs, kept)))
            fps.append(len(kept) - hits[-1])
        per_scan.append((levels, np.array(hits), np.array(fps)))
        n_lesions += len(scan.truth_sizes)
    n_scans = len(per_scan)
    out = {"n_scans": float(n_scans), "n_lesions": float(n_lesions)}
    if not n_lesions:
        return out
    candidates = np.unique(np.concatenate([levels for levels, _, _ in per_scan]))[::-1]
    best = (0.0, 0.0, math.inf)  # recall, fp per scan, threshold: keeping nothing
    for threshold in candidates:
        hits = fps = 0
        for levels, scan_hits, scan_fps in per_scan:
            kept = levels.size - int(np.searchsorted(levels, threshold, side="left"))
            hits += int(scan_hits[kept])
            fps += int(scan_fps[kept])
        if fps / n_scans <= max_fp_per_scan and hits / n_lesions > best[0]:
            best = (hits / n_lesions, fps / n_scans, float(threshold))
    out.update({"recall": best[0], "fp_per_scan": best[1]})
    if math.isfinite(best[2]):
        out["threshold"] = best[2]
    return out
