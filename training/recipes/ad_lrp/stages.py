"""The Alzheimer's network's training stage for :func:`neuroread.training.loop.run_stages`, and
the relevance measurements on its card.

**network** (:func:`network_stage`): every training series registered to the MNI grid once
(:func:`.data.load_all`); each step ``batch_size`` of them, each shifted by up to ``shift``
voxels along each axis (zeros fill in) and mirrored left-right at random; cross-entropy, AdamW,
cosine decay. When it ends, the LRP relevance for AD of every **training control** is measured
per atlas region and the mean density per region becomes the network's
``reference_density`` (:class:`~neuroread.models.ad_lrp.config.ADConfig`): the relevance gain's
denominator, saved in the checkpoint's configuration and so on its card.

:func:`measure` (the card's own metrics, on held-out phantoms): where the relevance lands
against the regions the generator changed, how little relevance controls carry, and how much
of the AD logit the relevance keeps (conservation).
"""
from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from neuroread.models.ad_lrp import regions as region_analysis
from neuroread.models.ad_lrp.model import AD
from neuroread.models.ad_lrp.network import AlzheimerNet
from neuroread.models.ad_lrp.preprocess import grid_atlas
from neuroread.models.atlas import load_atlas
from neuroread.models.explain import LRP
from neuroread.training.datasets import StudyRecord
from neuroread.training.loop import Stage

from .data import Sample, load_all
from .settings import Settings

log = logging.getLogger(__name__)
LRP_BATCH = 8
TOP = 5


def _workers(settings: Settings) -> int:
    return settings.threads or 1


def relevance_of(net: AlzheimerNet, samples: Sequence[Sample]) -> tuple[np.ndarray, np.ndarray]:
    """(LRP relevance for AD [n, *grid], AD logits [n]) of ``samples`` with the network's composite."""
    maps, logits = [], []
    net.eval()
    with torch.inference_mode():
        for begin in range(0, len(samples), LRP_BATCH):
            x = torch.stack([s.image.float() for s in samples[begin:begin + LRP_BATCH]])
            logits.append(net(x)[:, AD].double().numpy())
    with LRP(net, net.config.composite) as lrp:
        for begin in range(0, len(samples), LRP_BATCH):
            x = torch.stack([s.image.float() for s in samples[begin:begin + LRP_BATCH]])
            maps.append(lrp(x, AD)[:, 0].numpy())
    shape = net.config.grid_shape
    return (np.concatenate(maps) if maps else np.zeros((0, *shape), np.float32),
            np.concatenate(logits) if logits else np.zeros(0))


def reference_density(net: AlzheimerNet, controls: Sequence[Sample]) -> dict[int, float]:
    """The controls' mean relevance density per atlas region (:func:`.regions.reference_densities`)."""
    labels, _ = grid_atlas(net.config.step)
    names = load_atlas().names
    relevance, _ = relevance_of(net, controls)
    return region_analysis.reference_densities([region_analysis.measure(r, labels, names) for r in relevance])


def _shifted(x: torch.Tensor, shift: tuple[int, int, int]) -> torch.Tensor:
    """``x [1, D, H, W]`` moved by ``shift`` voxels per axis, zeros coming in."""
    pad = []
    for s in reversed(shift):
        pad += [max(s, 0), max(-s, 0)]
    moved = F.pad(x, pad)
    d, h, w = x.shape[1:]
    starts = [max(-s, 0) for s in shift]
    return moved[:, starts[0]:starts[0] + d, starts[1]:starts[1] + h, starts[2]:starts[2] + w]


def network_stage(net: AlzheimerNet, records: Sequence[StudyRecord], settings: Settings, *,
                  progress: bool = True) -> Stage:
    """The network on the diagnosis, then the controls' reference densities (module docstring)."""
    config = net.config
    generator = torch.Generator().manual_seed(settings.seed + 2)
    samples: list[Sample] = []

    def start() -> None:
        samples[:] = load_all(records, config.step, workers=_workers(settings), progress=progress)
        counts = np.bincount([s.label for s in samples], minlength=config.n_classes)
        net.train()
        log.info("training on %d series (AD %d, control %d) at %g mm", len(samples), counts[AD], counts[1 - AD],
                 config.voxel_mm)

    def optimizer() -> torch.optim.Optimizer:
        return torch.optim.AdamW(net.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)

    def steps() -> int:
        return -(-len(samples) // settings.batch_size)

    def scheduler(opt: torch.optim.Optimizer, total: int):
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(total, 1))

    def batches(epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = torch.randperm(len(samples), generator=generator).tolist()
        for begin in range(0, len(order), settings.batch_size):
            chosen = [samples[i] for i in order[begin:begin + settings.batch_size]]
            if len(chosen) < 2:  # batch normalisation needs more than one series' worth of statistics
                continue
            images = []
            for s in chosen:
                x = s.image.float()
                if settings.shift:
                    moves = torch.randint(-settings.shift, settings.shift + 1, (3,), generator=generator).tolist()
                    x = _shifted(x, tuple(moves))
                if settings.flip and bool(torch.rand(1, generator=generator) < 0.5):
                    x = x.flip(1)  # the grid's first axis is left-right (MNI x)
                images.append(x)
            yield torch.stack(images), torch.tensor([s.label for s in chosen])

    def loss(batch) -> dict[str, torch.Tensor]:
        x, y = (t.to(settings.device) for t in batch)
        value = F.cross_entropy(net(x), y)
        return {"total": value, "ce": value, "n": torch.tensor(len(y))}

    def finish() -> None:
        controls = [s for s in samples if s.label != AD]
        net.eval()
        if controls:
            reference = reference_density(net, controls)
            net.config = dataclasses.replace(config, reference_ids=tuple(reference),
                                             reference_density=tuple(round(v, 9) for v in reference.values()))
            log.info("reference relevance densities from %d training controls, %d regions", len(controls),
                     len(reference))
        samples.clear()

    return Stage("network", settings.epochs, optimizer, batches, loss, start=start, finish=finish,
                 scheduler=scheduler, steps_per_epoch=steps)


def stages(net: AlzheimerNet, records: Sequence[StudyRecord], settings: Settings, *,
           progress: bool = True) -> list[Stage]:
    return [network_stage(net, records, settings, progress=progress)]


def measure(net: AlzheimerNet, records: Sequence[StudyRecord], settings: Settings) -> dict[str, float]:
    """Where the relevance is on ``records`` (module docstring):

    - ``regions.ad_top5_atrophied``: share of AD phantoms whose five regions of highest relevance
      gain hold at least one region the generator shrank; ``regions.ad_top5_changed``: the same
      with the regions it enlarged (ventricles) too; ``regions.ad_top5_atrophied_share``: the mean
      share of the five that it shrank; ``regions.ad_top1_atrophied``: share whose first region is one;
    - ``relevance.control_to_ad``: mean positive relevance (the evidence for AD) of a control over
      that of an AD series; ``relevance.mean_ad`` and ``relevance.mean_control``: the mean summed
      relevance of each class (which follows its AD logit);
    - ``lrp.conservation``: the mean of summed relevance over the AD logit (1 where every rule
      conserves and biases absorb nothing).
    """
    samples = load_all(records, net.config.step, workers=_workers(settings), progress=False,
                       desc="register series (measure)")
    if not samples:
        return {}
    relevance, logits = relevance_of(net, samples)
    labels, _ = grid_atlas(net.config.step)
    names = load_atlas().names
    reference = dict(zip(net.config.reference_ids, net.config.reference_density)) or None
    out: dict[str, float] = {}
    hits, changed_hits, shares, firsts = [], [], [], []
    for s, r in zip(samples, relevance):
        if s.label != AD or not s.atrophied:
            continue
        top = [t.id for t in region_analysis.ranked(region_analysis.measure(r, labels, names, reference), TOP,
                                                    net.config.min_region_voxels)]
        hits.append(any(t in s.atrophied for t in top))
        changed_hits.append(any(t in s.atrophied | s.enlarged for t in top))
        shares.append(sum(t in s.atrophied for t in top) / max(len(top), 1))
        firsts.append(bool(top) and top[0] in s.atrophied)
    if hits:
        out.update({"regions.ad_top5_atrophied": float(np.mean(hits)),
                    "regions.ad_top5_changed": float(np.mean(changed_hits)),
                    "regions.ad_top5_atrophied_share": float(np.mean(shares)),
                    "regions.ad_top1_atrophied": float(np.mean(firsts)), "regions.ad_series": float(len(hits))})
    is_ad = np.array([s.label == AD for s in samples])
    totals = relevance.reshape(len(samples), -1).sum(axis=1)
    positive = np.clip(relevance, 0.0, None).reshape(len(samples), -1).sum(axis=1)
    if is_ad.any() and (~is_ad).any():
        out["relevance.mean_ad"] = float(totals[is_ad].mean())
        out["relevance.mean_control"] = float(totals[~is_ad].mean())
        out["relevance.control_to_ad"] = float(positive[~is_ad].mean() / max(float(positive[is_ad].mean()), 1e-12))
    usable = np.abs(logits) > 1e-3
    if usable.any():
        out["lrp.conservation"] = float(np.mean(totals[usable] / logits[usable]))
    return out
