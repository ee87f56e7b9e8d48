"""The microbleed network's training for :func:`neuroread.training.loop.run_stages`, and its
operating point.

1. **detector** (:func:`detector_stage`): torchvision's Mask R-CNN losses on crops of the
   training slices (:class:`~.settings.Settings` says how many and which); the crops hold a
   microbleed of their slice at a random place, or come from slices without one (veins,
   calcifications, flow voids and the skull base are there), flipped left-right at random, with
   a gain of ±10 %. A crop is seen at the model's own pixel size (the transform never resizes).
2. **subtype** (:func:`subtype_stage`): the MIL on bags of each training study's *annotated*
   microbleeds, encoded as at inference (the trained detector's box-head representation and box
   score on the microbleed's largest slice; location class from the atlas after registering the
   study; size; template position) with the study's context. Bags of annotated microbleeds
   rather than of detections: detecting every training study would cost minutes of CPU per
   epoch's worth of studies, and a detector at its operating point finds most of them; random
   dropping of microbleeds (and of whole bags) stands in for what it misses.
3. **false-positive filter and operating point** (:func:`tune`, after the stages, on the
   validation studies): boosted trees over every candidate's features
   (:mod:`neuroread.models.cmb_svd.candidates`) learn which are microbleeds; the probability
   threshold of the highest lesion recall at no more than ``max_fp_per_scan`` false positives per
   scan, chosen on out-of-fold probabilities, is kept in the network's configuration and the
   trees in its state dict (so both are in the checkpoint).
"""
from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from tqdm import tqdm

from neuroread.models.atlas import location_class, register
from neuroread.models.cmb_svd.candidates import CandidateFilter
from neuroread.models.cmb_svd.context import count_features, signal_features
from neuroread.models.cmb_svd.merge import Microbleed3D
from neuroread.models.cmb_svd.model import MicrobleedModel, instance_features
from neuroread.models.cmb_svd.network import MicrobleedNet
from neuroread.models.cmb_svd.preprocess import CENTRE, SCALE, prepare
from neuroread.models.spec import ModelCard
from neuroread.training.datasets import StudyRecord
from neuroread.training.detection import recall_at_fp
from neuroread.training.loop import Stage

from .data import DetectionStudy, lesion_ids, load_all
from .settings import Settings

log = logging.getLogger(__name__)

MARGIN = 16  # px: a positive crop keeps its microbleed's centre this far from its edge


def _crop(study: DetectionStudy, k: int, crop: int, generator: torch.Generator, positive: bool
          ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    size = study.canvas.shape[1]

    def uniform(low: int, high: int) -> int:
        return int(torch.randint(low, max(high, low) + 1, (1,), generator=generator))

    if positive == "spot":  # a dark spot near the middle: a hard negative
        r, c = int(k[1]), int(k[2])
        k = int(k[0])
        r0, c0 = r - uniform(crop // 4, 3 * crop // 4), c - uniform(crop // 4, 3 * crop // 4)
    elif positive:
        present = np.unique(study.ids[k])
        present = present[present > 0]
        lesion = int(present[uniform(0, len(present) - 1)])
        r, c = np.argwhere(study.ids[k] == lesion).mean(axis=0).astype(int)
        r0, c0 = r - uniform(MARGIN, crop - MARGIN), c - uniform(MARGIN, crop - MARGIN)
    else:
        top, bottom, left, right = study.head[k]
        r0, c0 = uniform(top, bottom) - crop // 2, uniform(left, right) - crop // 2
    r0, c0 = int(np.clip(r0, 0, size - crop)), int(np.clip(c0, 0, size - crop))
    last = study.canvas.shape[0] - 1
    image = torch.stack([study.canvas[min(max(k + d, 0), last), r0:r0 + crop, c0:c0 + crop] for d in (-1, 0, 1)]).float()
    ids = study.ids[k, r0:r0 + crop, c0:c0 + crop]
    if bool(torch.rand(1, generator=generator) < 0.5):
        image, ids = image.flip(-1), ids[:, ::-1]
    gain = 0.9 + 0.2 * float(torch.rand(1, generator=generator))
    image = ((image * SCALE + CENTRE) * gain - CENTRE) / SCALE
    boxes, masks = [], []
    for lesion in np.unique(ids[ids > 0]):
        m = ids == lesion
        rows, cols = np.flatnonzero(m.any(axis=1)), np.flatnonzero(m.any(axis=0))
        boxes.append([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1])
        masks.append(m)
    target = {
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        "labels": torch.ones(len(boxes), dtype=torch.int64),
        "masks": torch.from_numpy(np.stack(masks).astype(np.uint8)) if masks else torch.zeros(
            (0, crop, crop), dtype=torch.uint8),
    }
    return image, target


def detector_stage(net: MicrobleedNet, records: Sequence[StudyRecord], settings: Settings, *,
                   progress: bool = True) -> Stage:
    """Mask R-CNN on crops of the training slices (module docstring)."""
    config = net.config
    generator = torch.Generator().manual_seed(settings.seed + 1)
    studies: list[DetectionStudy] = []
    positives: list[tuple[int, int]] = []
    negatives: list[tuple[int, int]] = []
    spots: list[tuple[int, np.ndarray]] = []
    n_neg = int(round(settings.batch_size * settings.negative_fraction))
    n_pos = settings.batch_size - n_neg

    def start() -> None:
        studies[:] = load_all(records, config, progress=progress)
        positives[:] = [(i, int(k)) for i, s in enumerate(studies) for k in s.positives]
        negatives[:] = [(i, k) for i, s in enumerate(studies) for k in s.head if k not in set(s.positives.tolist())]
        spots[:] = [(i, spot) for i, s in enumerate(studies) for spot in s.spots]
        if not positives:
            raise ValueError("no training slice holds a microbleed: the detector has nothing to learn")
        net.train()
        log.info("detector training on %d series: %d slices with microbleeds, %d without, %d dark spots", len(studies),
                 len(positives), len(negatives), len(spots))

    def optimizer() -> torch.optim.Optimizer:
        return torch.optim.AdamW(net.detector.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)

    def steps() -> int:
        return -(-len(positives) // max(n_pos, 1))

    def scheduler(opt: torch.optim.Optimizer, total: int):
        return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=settings.lr, total_steps=max(total, 1), pct_start=0.1)

    def batches(epoch: int) -> Iterator[tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]]:
        order = torch.randperm(len(positives), generator=generator).tolist()
        for step in range(steps()):
            chosen = [(positives[order[(step * n_pos + j) % len(order)]], True) for j in range(n_pos)]
            for j in range(n_neg):  # half hard negatives (dark spots), half anywhere in the head
                if spots and (j % 2 == 0 or not negatives):
                    chosen.append((spots[int(torch.randint(len(spots), (1,), generator=generator))], "spot"))
                elif negatives:
                    chosen.append((negatives[int(torch.randint(len(negatives), (1,), generator=generator))], False))
            crops = [_crop(studies[i], k, settings.crop, generator, positive) for (i, k), positive in chosen]
            yield [c[0] for c in crops], [c[1] for c in crops]

    def loss(batch) -> dict[str, torch.Tensor]:
        images, targets = batch
        parts = net.detector([x.to(settings.device) for x in images],
                             [{k: v.to(settings.device) for k, v in t.items()} for t in targets])
        return {"total": sum(parts.values()), **parts, "n": torch.tensor(len(images))}

    def finish() -> None:
        studies.clear()
        net.eval()

    return Stage("detector", settings.epochs, optimizer, batches, loss, start=start, finish=finish,
                 scheduler=scheduler, steps_per_epoch=steps)


@dataclasses.dataclass(frozen=True)
class _Bag:
    instances: np.ndarray  # [m, config.instance_width]
    classes: list[str]
    signal: np.ndarray
    label: int


def annotated_bag(net: MicrobleedNet, record: StudyRecord) -> _Bag:
    """A training study's annotated microbleeds encoded as the model encodes its detections."""
    config = net.config
    volume, _ = record.load()
    ids = lesion_ids(record, volume)
    prep = prepare(volume, config.pixel_mm, config.input_size)
    canvas_ids = prep.to_canvas(ids)
    registration = register(volume)
    found: list[Microbleed3D] = []
    where: list[tuple[int, list[float]]] = []
    boxes = ndimage.find_objects(ids)
    for lesion in np.unique(ids[ids > 0]):
        box = boxes[int(lesion) - 1]
        mask = np.zeros(ids.shape, bool)
        mask[box] = ids[box] == lesion
        indices = np.argwhere(mask[box]) + [s.start for s in box]
        areas = (canvas_ids == lesion).sum(axis=(1, 2))
        best = int(np.argmax(areas)) if areas.max() > 0 else int(np.argmax(mask.sum(axis=(1, 2))))
        on_canvas = np.argwhere(canvas_ids[best] == lesion)
        if len(on_canvas):
            (r0, c0), (r1, c1) = on_canvas.min(axis=0), on_canvas.max(axis=0) + 1
        else:  # smaller than a canvas pixel: a box of three pixels around where it is
            r, c = prep.grid.lps_to_index(volume.index_to_lps(indices.mean(axis=0)))[1:]
            r0, c0, r1, c1 = r - 1.5, c - 1.5, r + 1.5, c + 1.5
        where.append((best, [float(c0), float(r0), float(c1), float(r1)]))
        found.append(Microbleed3D(mask, 0.0, np.zeros(0, np.float32), best, 1, indices))
    if found:
        slices = sorted({b for b, _ in where})
        boxes = [torch.tensor([box for b, box in where if b == k], dtype=torch.float32) for k in slices]
        with torch.no_grad():
            reps = net.representations(prep.inputs(slices).to(next(net.parameters()).device), boxes)
            scores = [F.softmax(net.detector.roi_heads.box_predictor(r)[0], dim=1)[:, 1] for r in reps]
        per_slice = {k: (r, s) for k, r, s in zip(slices, reps, scores)}
        taken = {k: 0 for k in slices}
        for i, (b, _) in enumerate(where):
            r, s = per_slice[b]
            j = taken[b]
            taken[b] += 1
            found[i] = dataclasses.replace(found[i], representation=r[j].cpu().numpy(), score=float(s[j]))
    centroids = np.array([volume.index_to_lps(m.centroid) for m in found]).reshape(-1, 3)
    template = registration.to_template(centroids) if found else np.zeros((0, 3))
    classes = location_class(template) if found else []
    features = instance_features(found, template, classes, float(np.prod(volume.spacing)), config)
    return _Bag(features, classes, signal_features(volume, registration), int(np.argmax(record.labels)))


def subtype_stage(net: MicrobleedNet, records: Sequence[StudyRecord], settings: Settings, *,
                  progress: bool = True) -> Stage:
    """The subtype MIL on bags of annotated microbleeds (module docstring)."""
    generator = torch.Generator().manual_seed(settings.seed + 2)
    bags: list[_Bag] = []

    def start() -> None:
        net.eval()
        bags[:] = [annotated_bag(net, r) for r in tqdm(records, desc="encode microbleeds", unit="series",
                                                        leave=False, disable=None if progress else True)]
        instances = [torch.from_numpy(b.instances) for b in bags if len(b.instances)]
        context = np.stack([np.concatenate([b.signal, count_features(b.classes)]) for b in bags])
        net.subtype.fit_scaling(torch.cat(instances) if instances else torch.zeros(0),
                                torch.from_numpy(context.astype(np.float32)))
        net.subtype.train()
        log.info("subtype MIL on %d bags (%d microbleeds)", len(bags), sum(len(b.classes) for b in bags))

    def optimizer() -> torch.optim.Optimizer:
        return torch.optim.AdamW(net.subtype.parameters(), lr=settings.mil_lr, weight_decay=settings.weight_decay)

    def steps() -> int:
        return -(-len(bags) // settings.mil_batch)

    def batches(epoch: int):
        order = torch.randperm(len(bags), generator=generator).tolist()
        for begin in range(0, len(order), settings.mil_batch):
            chosen = [bags[i] for i in order[begin:begin + settings.mil_batch]]
            instances, context = [], []
            for bag in chosen:
                keep = (torch.rand(len(bag.classes), generator=generator) < settings.instance_keep).numpy()
                if float(torch.rand(1, generator=generator)) < settings.empty_bags:
                    keep[:] = False
                instances.append(torch.from_numpy(bag.instances[keep]))
                kept = [c for c, k in zip(bag.classes, keep) if k]
                context.append(np.concatenate([bag.signal, count_features(kept)]))
            yield instances, torch.from_numpy(np.stack(context)), torch.tensor([b.label for b in chosen])

    def loss(batch) -> dict[str, torch.Tensor]:
        instances, context, y = batch
        out = net.subtype([x.to(settings.device) for x in instances], context.to(settings.device))
        value = F.cross_entropy(out.logits, y.to(settings.device))
        return {"total": value, "cross_entropy": value, "n": torch.tensor(len(y))}

    def finish() -> None:
        bags.clear()
        net.eval()

    return Stage("subtype", settings.mil_epochs, optimizer, batches, loss, start=start, finish=finish,
                 steps_per_epoch=steps)


def stages(net: MicrobleedNet, records: Sequence[StudyRecord], settings: Settings, *,
           progress: bool = True) -> list[Stage]:
    """The detector, then the subtype MIL on what it learnt."""
    return [detector_stage(net, records, settings, progress=progress),
            subtype_stage(net, records, settings, progress=progress)]


FOLDS = 4  # of the validation studies, for the out-of-fold probabilities the operating point is chosen on


def _trees(settings: Settings):
    from sklearn.ensemble import HistGradientBoostingClassifier  # training only: inference reads tensors

    return HistGradientBoostingClassifier(max_iter=settings.filter_trees, learning_rate=settings.filter_lr,
                                          max_leaf_nodes=settings.filter_leaves, early_stopping=False,
                                          random_state=settings.seed)


def filter_out_of_fold(x: np.ndarray, y: np.ndarray, scan_of: np.ndarray, settings: Settings) -> np.ndarray:
    """Each candidate's probability from trees fitted without its scan's fold (scan index modulo
    :data:`FOLDS`); a fold whose training part holds one kind only keeps the detector's score
    (feature 0)."""
    fold = np.asarray(scan_of) % FOLDS
    out = np.asarray(x[:, 0], float).copy()
    for k in range(FOLDS):
        test, train = fold == k, fold != k
        if test.any() and y[train].any() and not y[train].all():
            out[test] = _trees(settings).fit(x[train], y[train]).predict_proba(x[test])[:, 1]
    return out


def tune(net: MicrobleedNet, validation: Sequence[StudyRecord], settings: Settings, *, progress: bool = True
         ) -> dict[str, float]:
    """Fit the false-positive filter and choose the operating point on ``validation`` (module
    docstring); returns the FROC point (out of fold) with the filter's candidate counts."""
    floor = net.config.score_floor
    net.config = dataclasses.replace(net.config, detection_threshold=floor)
    net.candidates.load_state_dict(CandidateFilter().state_dict())  # unfitted: the detector's score passes
    model = MicrobleedModel.from_network(net, ModelCard({}, "0" * 64, "(operating point)", demo=True),
                                         device=settings.device)
    scans, features, labels, scan_of = [], [], [], []
    for i, record in enumerate(tqdm(validation, desc="candidates", unit="series", leave=False,
                                    disable=None if progress else True)):
        volume, _ = record.load()
        ids = lesion_ids(record, volume)
        found = model.candidates(volume)
        scans.append(([m.mask for m in found.microbleeds], found.probabilities, ids))
        features.append(found.features)
        labels += [bool((ids[m.mask] > 0).any()) for m in found.microbleeds]
        scan_of += [i] * len(found.microbleeds)
    x, y, scan_of = np.concatenate(features), np.array(labels, bool), np.array(scan_of)
    extra = {"candidates": float(len(y)), "candidates_true": float(y.sum())}
    if settings.filter_trees and y.any() and (~y).any():
        out_of_fold = filter_out_of_fold(x, y, scan_of, settings)
        start = 0
        for j, (masks, _, ids) in enumerate(scans):
            scans[j] = (masks, out_of_fold[start:start + len(masks)], ids)
            start += len(masks)
        net.candidates.load_sklearn(_trees(settings).fit(x, y))
    elif settings.filter_trees:
        log.warning("false-positive filter not fitted: the validation candidates are all of one kind (%d true of %d)",
                    int(y.sum()), len(y))
    point = recall_at_fp(scans, settings.max_fp_per_scan)
    threshold = float(np.clip(point.get("threshold", 0.99), 1e-6, 0.99))
    net.config = dataclasses.replace(net.config, detection_threshold=round(threshold, 6))
    log.info("operating point: %s >= %.4f (validation recall %.3f at %.2f false positives per scan, %s)",
             "filter probability" if net.candidates.fitted else "detection score", net.config.detection_threshold,
             point.get("recall", float("nan")), point.get("fp_per_scan", float("nan")),
             "out of fold" if net.candidates.fitted else "on the candidates")
    return {**point, **extra}
