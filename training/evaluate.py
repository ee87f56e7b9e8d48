"""Any model, any dataset: run ``predict`` on every record as the node would, and score what comes out.

:func:`evaluate` takes a loaded model (anything that honours :class:`neuroread.models.Model`)
and :class:`~neuroread.training.datasets.StudyRecord`\\ s, runs the model on each record's
volume, checks each result against the contract, and measures, from the result's typed fields
alone (so every model gets the same measurements for the same kind of output):

- **findings** (multi-label outcomes) against the study labels: per-label precision, recall,
  F1 at the result's thresholds and ROC AUC, and their macro means (``f1.<label>``,
  ``f1_macro``…, :func:`~neuroread.training.metrics.classification_metrics`);
- **classifications** (multi-class outcomes) against the one-hot study labels: accuracy,
  balanced accuracy, one-vs-rest macro AUC, weighted F1 (``<outcome>.balanced_accuracy``…), and
  as their papers report them the weighted one-vs-rest AUC and weighted precision
  (``<outcome>.auc_weighted``, ``<outcome>.precision_weighted``), the confusion matrix
  (``<outcome>.confusion.<true class>.<decided class>``, study counts) and bootstrap 95 %
  intervals of accuracy and the weighted metrics (``<outcome>.<metric>.ci_low`` / ``.ci_high``,
  fixed seed: the same data give the same interval,
  :func:`~neuroread.training.metrics.weighted_multiclass_metrics`);
- **slice scores** against per-slice labels: the paper's key-slice tasks on the scored slices
  (``key_slice.easy`` / ``difficult`` / ``comprehensive``);
- **key slices** against per-slice labels: the fraction of the key slices of positive studies
  that hold a lesion (``key_slice.top5_lesion_fraction`` for five key slices);
- **heatmaps** against lesion masks, on the key slices that hold a lesion: the pointing game
  (the map's peak inside a lesion or within ``tolerance_mm``; ``pointing.hit_rate``), the map's
  mass inside the lesions (``pointing.mass_in_lesion``) and, beside it, the lesions' share of
  the slice's soft tissue (``pointing.lesion_share``: what a map spread evenly would score); for
  the main map (the first one explaining the first label or decided class, as the overlays
  show it) and, as ``pointing.<kind>.*``, for every kind of whole-network map (a branch's map,
  such as axspa-sij's Grad-CAM of its T1 branch, as ``pointing.<kind>.<branch>.*``);
- **lesions** against the record's lesion instance mask (one id per lesion), on every record
  with a mask once the model has returned a lesion: per-lesion recall, false positives per scan,
  IoU and Dice of the matched lesions (mean and SD) and the per-scan Dice of all lesions together
  (``detection.recall``, ``detection.fp_per_scan``, ``detection.dice``…,
  :func:`~neuroread.training.detection.detection_metrics`). A model that returned no lesion on any
  record gets none of these keys: the spec does not say whether a model detects lesions, and
  a model that does not (a classifier) must not be scored as one that missed every lesion.

The metrics are a flat ``name → value`` dict, the format of the model card's ``metrics``.
``neuroread evaluate MODEL --data DIR`` writes them for any dataset.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage
from tqdm import tqdm

from neuroread.models import Heatmap, Lesion, Model, ModelResult, SeriesVolume
from neuroread.training.datasets import StudyRecord
from neuroread.training.detection import LesionScan, detection_metrics
from neuroread.training.metrics import (
    classification_metrics,
    key_slice_tasks,
    multiclass_metrics,
    weighted_multiclass_metrics,
)

log = logging.getLogger(__name__)

POINTING_TOLERANCE_MM = 5.0
BOOTSTRAP_SEED = 0  # the multi-class intervals' resamples: fixed, so a card's metrics are reproducible


@dataclass
class Collected:
    """What :func:`collect` gathered per record, for the metrics and for threshold choice."""

    labels: list[str]
    probabilities: list[np.ndarray] = field(default_factory=list)   # per record, one per label
    targets: list[np.ndarray] = field(default_factory=list)         # per record, study labels
    thresholds: list[np.ndarray] = field(default_factory=list)
    classes: dict[str, tuple[list[np.ndarray], list[int]]] = field(default_factory=dict)
    class_names: dict[str, tuple[str, ...]] = field(default_factory=dict)   # by outcome, in order
    slice_scores: list[np.ndarray] = field(default_factory=list)    # positive and negative studies
    slice_truth: list[np.ndarray] = field(default_factory=list)
    key_hits: list[int] = field(default_factory=list)               # per positive study: key slices with a lesion
    key_counts: list[int] = field(default_factory=list)
    pointing: dict[str, list[bool]] = field(default_factory=dict)   # by map kind; "" the main map
    mass_in: dict[str, list[float]] = field(default_factory=dict)
    share: list[float] = field(default_factory=list)
    lesion_scans: list[LesionScan] = field(default_factory=list)    # predicted lesions beside the truth mask


def _pointing_maps(result: ModelResult, series_uid: str) -> dict[str, Heatmap]:
    """The maps the pointing game reads, by kind ("" for the main one, the map the overlays show):
    of the series, each kind's first in :meth:`ModelResult.ranked_heatmaps`, whole-network maps
    as ``<kind>`` and a branch's as ``<kind>.<branch>`` (e.g. axspa-sij's ``gradcam.t1``)."""
    ranked = result.ranked_heatmaps(series_uid)
    whole = [h for h in ranked if not h.branch]
    out: dict[str, Heatmap] = {"": whole[0]} if whole else {}
    for h in ranked:
        out.setdefault(f"{h.kind}.{h.branch}" if h.branch else h.kind, h)
    return out


def _soft_tissue(volume: SeriesVolume) -> np.ndarray:
    """Where a map could point: CT between -100 and 100 HU (brain, blood, soft tissue), MR above
    the 10th percentile of the volume."""
    a = volume.array
    if volume.modality == "CT":
        return (a > -100) & (a < 100)
    return a > np.percentile(a, 10)


def _pointing(col: Collected, maps: dict[str, Heatmap], volume: SeriesVolume, lesion: np.ndarray,
              slices: Sequence[int], tolerance_mm: float) -> None:
    row_mm, col_mm = volume.spacing[1], volume.spacing[0]
    tissue = _soft_tissue(volume)
    for k in slices:
        mask = lesion[k]
        if not mask.any():
            continue
        col.share.append(float(mask.sum() / max((tissue[k] | mask).sum(), 1)))
        dist = None
        for kind, heat in maps.items():
            plane = heat.array[k]
            hits, mass = col.pointing.setdefault(kind, []), col.mass_in.setdefault(kind, [])
            if float(np.abs(plane).max()) <= 0:  # an empty map points nowhere and has no mass to place
                hits.append(False)
                continue
            r, c = np.unravel_index(int(np.argmax(plane)), plane.shape)
            if not mask[r, c] and dist is None:
                dist = ndimage.distance_transform_edt(~mask, sampling=(row_mm, col_mm))
            hits.append(bool(mask[r, c] or dist[r, c] <= tolerance_mm))
            positive = np.clip(plane, 0, None)
            mass.append(float(positive[mask].sum() / max(positive.sum(), 1e-12)))


def collect(model: Model, records: Sequence[StudyRecord], *, thresholds: Mapping[str, float] | None = None,
            slot: str | None = None, progress: bool = True, tolerance_mm: float = POINTING_TOLERANCE_MM,
            desc: str = "evaluate") -> Collected:
    """Run ``model.predict`` on each record and gather outputs beside the truth. The record's
    series fills ``slot`` (default: the spec's first) and its other series their slots
    (:attr:`StudyRecord.other_series`); the truth (per-slice labels, masks) is the first's.

    ``thresholds`` (label → threshold) decide the findings instead of the spec's defaults, as
    the node's runner applies the effective thresholds (the weights' card, the configuration).

    Lesions: each record with a mask becomes a :class:`LesionScan` once the model has returned a
    lesion; the records with a mask seen before that (where the model returned none) are read
    again at the end for their truth alone, so a model that never returns a lesion costs nothing."""
    spec = model.spec
    slot = slot or spec.slots[0].name
    labels = [lb.name for lb in spec.labels]
    col = Collected(labels)
    before_first_lesion: list[StudyRecord] = []  # records with a mask, gathered once a lesion shows
    for record in tqdm(records, desc=desc, unit="series", leave=False, disable=None if progress else True):
        volume, slice_labels = record.load()
        inputs = {slot: volume, **record.load_others()}
        absent = [s.name for s in spec.slots if s.name not in inputs]
        if absent:
            raise ValueError(f"record {record.study_id} has series for slot(s) {sorted(inputs)}; {spec.name} also "
                             f"needs {absent} (read the dataset with one series per slot)")
        result = model.predict(inputs)
        result.check(spec, inputs)
        names = list(record.label_names)
        wanted = list(labels) + [c.name for o in spec.multi_class for c in o.classes]
        missing = [n for n in wanted if n not in names]
        if missing and (labels or not any(n in names for n in wanted)):
            raise ValueError(f"record {record.study_id} has labels {names}; {spec.name} needs {wanted} "
                             f"(missing {missing})")
        if labels:
            by_label = {f.label: f for f in result.findings}
            col.probabilities.append(np.array([by_label[n].probability for n in labels]))
            col.thresholds.append(np.array([(thresholds or {}).get(n, by_label[n].threshold) for n in labels]))
            col.targets.append(np.array([record.labels[names.index(n)] for n in labels]))
        for c in result.classifications:
            outcome = spec.outcome(c.outcome)
            truth = [record.labels[names.index(k.name)] if k.name in names else 0 for k in outcome.classes]
            probs, idx = col.classes.setdefault(c.outcome, ([], []))
            col.class_names.setdefault(c.outcome, tuple(k.name for k in outcome.classes))
            probs.append(np.array([p.probability for p in c.probabilities]))
            idx.append(int(np.argmax(truth)) if any(truth) else -1)
        lesion_map = None  # the record's lesion mask on the volume's grid, read at most once
        lesions = [les for les in result.lesions if les.series_instance_uid == volume.series_instance_uid]
        if record.mask is not None and (lesions or col.lesion_scans):
            lesion_map = record.load_mask(volume)
            col.lesion_scans.append(_lesion_scan(lesions, lesion_map))
        elif record.mask is not None:
            before_first_lesion.append(record)
        if slice_labels is None:
            continue
        lesion_slices = slice_labels.max(axis=1) > 0  # any label of the record on that slice
        for s in result.slice_scores:
            if s.series_instance_uid == volume.series_instance_uid:
                col.slice_scores.append(np.array(s.scores))
                col.slice_truth.append(lesion_slices[list(s.slice_indices)].astype(np.int64))
        keys = sorted((k for k in result.key_slices if k.series_instance_uid == volume.series_instance_uid),
                      key=lambda k: k.rank)
        if lesion_slices.any() and keys:
            col.key_hits.append(int(sum(lesion_slices[k.slice_index] for k in keys)))
            col.key_counts.append(len(keys))
            maps = _pointing_maps(result, volume.series_instance_uid)
            if maps and lesion_map is None:
                lesion_map = record.load_mask(volume)
            if maps and lesion_map is not None:
                _pointing(col, maps, volume, lesion_map > 0, [k.slice_index for k in keys], tolerance_mm)
    if col.lesion_scans:
        for record in before_first_lesion:
            volume, _ = record.load()
            col.lesion_scans.append(_lesion_scan([], record.load_mask(volume)))
    return col


def _lesion_scan(lesions: Sequence[Lesion], truth: np.ndarray) -> LesionScan:
    """A record's predicted lesions beside its truth mask; scored by probability when every lesion has one."""
    scores = [les.probability for les in lesions]
    return LesionScan.from_masks([les.mask for les in lesions], truth,
                                 None if None in scores else scores)


def metrics(col: Collected) -> dict[str, float]:
    """The flat metrics of :func:`collect`'s outputs (names in the module docstring); an
    undefined value is left out."""
    out: dict[str, float] = {}
    if col.labels and col.probabilities:
        thresholds = np.mean(np.stack(col.thresholds), axis=0)
        cm = classification_metrics(np.stack(col.probabilities), np.stack(col.targets), col.labels,
                                    thresholds=thresholds.tolist())
        out.update(cm.to_dict())
    for outcome, (probs, idx) in col.classes.items():
        keep = [i for i, t in enumerate(idx) if t >= 0]
        if keep:
            p, t = np.stack([probs[i] for i in keep]), [idx[i] for i in keep]
            out.update({f"{outcome}.{k}": v for k, v in multiclass_metrics(p, t).items()})
            weighted = weighted_multiclass_metrics(p, t, classes=col.class_names.get(outcome),
                                                   seed=BOOTSTRAP_SEED)
            for k, v in weighted.items():  # accuracy, f1_weighted, n_studies: the same values, already there
                out.setdefault(f"{outcome}.{k}", v)
    if col.slice_scores and any(t.any() for t in col.slice_truth):
        ks = key_slice_tasks(col.slice_scores, col.slice_truth)
        out.update({k: v for k, v in ks.to_dict().items() if k != "key_slice.top5_lesion_fraction"})
    if col.key_counts:
        out[f"key_slice.top{max(col.key_counts)}_lesion_fraction"] = sum(col.key_hits) / sum(col.key_counts)
        out["key_slice.positive_studies"] = float(len(col.key_counts))
    for kind, hits in col.pointing.items():
        prefix = f"pointing.{kind}." if kind else "pointing."
        out[prefix + "hit_rate"] = float(np.mean(hits))
        out[prefix + "mass_in_lesion"] = float(np.mean(col.mass_in[kind]))
    if col.share:
        out["pointing.n"] = float(len(col.share))
        out["pointing.lesion_share"] = float(np.mean(col.share))
    if col.lesion_scans:
        out.update({f"detection.{k}": v for k, v in detection_metrics(col.lesion_scans).items()})
    return {k: float(v) for k, v in out.items() if not (isinstance(v, float) and math.isnan(v))}


def evaluate(model: Model, records: Sequence[StudyRecord], *, thresholds: Mapping[str, float] | None = None,
             progress: bool = True, tolerance_mm: float = POINTING_TOLERANCE_MM, desc: str = "evaluate"
             ) -> dict[str, float]:
    """:func:`collect` then :func:`metrics`: the model card's metrics of ``model`` on ``records``."""
    return metrics(collect(model, records, thresholds=thresholds, progress=progress, tolerance_mm=tolerance_mm,
                           desc=desc))
