"""DrCT2's training stages for :func:`neuroread.training.loop.run_stages`.

The paper freezes a VGG16 pre-trained on ImageNet: the encoder is learnt elsewhere, from far
more images than the hemorrhage data hold, and the hemorrhage training fits what comes after
it. No ImageNet weights exist for the narrower demo encoder, and trained end to end from
scratch on a few hundred phantom series it does not learn (held-out macro-F1 0.13). So:

1. **encoder** (:func:`encoder_stage`, when ``pretrain_epochs`` > 0): the encoder plus two
   small heads learn the labelled slices: a linear layer on its pooled vector (dropped
   afterwards) learns the slice's labels (binary cross-entropy, positives weighted by their
   rarity, up to 20), and, where the records carry lesion masks, a 1×1 convolution on its last
   feature maps learns which cells hold each label's lesions (the same loss per cell, weight
   ``mask_weight``, positives weighted up to 10); that convolution is the network's lesion
   head when its configuration has one (kept, frozen, read as an explanation), else dropped.
   Each epoch takes every slice with a lesion and a fresh random ``negatives`` share of the
   others (most slices are normal; seeing all of them each epoch costs time and teaches little
   more). Left-right flips; a one-cycle learning rate; bfloat16 autocast where the CPU runs it
   natively. The encoder is then frozen (batch-norm statistics included), as the paper freezes
   its VGG16.
2. **decoder**: with a frozen encoder every slice gets the same vector in every epoch, so
   :func:`decoder_stage` encodes each slice once (at the input size and zoomed) and trains the
   rest of DrCT2 on those vectors (:meth:`~neuroread.models.ct_hemorrhage.network.DrCT2.decode`,
   which a test checks against ``forward``): minutes instead of hours on a CPU. Series are drawn
   with label-balanced weights when ``balance`` is on. With an encoder that trains,
   :func:`image_stage` runs the whole network on images each step instead.
"""
from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from neuroread.models.ct_hemorrhage.network import DrCT2, drct2_loss, make_optimizer
from neuroread.training.datasets import StudyRecord
from neuroread.training.loop import Stage

from .data import SeriesDataset, SliceStack, collate, load_slices, stack
from .settings import Settings

log = logging.getLogger(__name__)

SLICE_POS_WEIGHT_CAP = 20.0
PIXEL_POS_WEIGHT_CAP = 10.0
BALANCE_CAP = 20.0


def _pos_weight(targets: torch.Tensor, cap: float, dims: tuple[int, ...]) -> torch.Tensor:
    positives = targets.sum(dims)
    total = targets.numel() / targets.shape[1]
    return ((total - positives) / positives.clamp_min(1)).clamp(1.0, cap)


class _EncoderData:
    """The labelled slices of the training records, loaded when the stage starts."""

    def __init__(self) -> None:
        self.stacks: list[SliceStack] = []
        self.images = self.targets = self.masks = self.positive = None


def encoder_stage(net: DrCT2, records: Sequence[StudyRecord], settings: Settings, data: _EncoderData,
                  *, progress: bool = True) -> Stage:
    """The encoder's pre-training (see the module docstring); fills ``data.stacks`` for the next stage."""
    config = net.config
    classes = len(records[0].label_names)
    slice_head = nn.Linear(config.features, classes).to(settings.device)
    mask_head = net.lesion if net.lesion is not None else nn.Conv2d(config.features, classes, 1).to(settings.device)
    generator = torch.Generator().manual_seed(settings.seed)
    pooled_side = config.input_size // 2 ** (config.backbone.count("M") - 1)

    def start() -> None:
        data.stacks = load_slices(records, config.input_size, masks=settings.mask_weight > 0, progress=progress,
                                  desc="load slices")
        labelled = [s for s in data.stacks if s.slice_labels is not None]
        if not labelled:
            raise ValueError("pretrain_epochs > 0 needs per-slice labels, and no training record has them "
                             "(phantoms and RSNA carry them; a manifest may give a slice_labels CSV per study)")
        data.images = torch.cat([s.images for s in labelled])
        data.targets = torch.from_numpy(np.concatenate([s.slice_labels for s in labelled]).astype(np.float32))
        with_masks = [s.masks is not None for s in labelled]
        if net.lesion is not None and not (settings.mask_weight > 0 and all(with_masks)):
            raise ValueError("the network has a lesion head (DrCT2Config.lesion_head), which learns from lesion masks: "
                             f"{sum(with_masks)} of {len(with_masks)} training series have one and mask_weight is "
                             f"{settings.mask_weight:g}; train a network without it (lesion_head: false) on this data")
        data.positive = torch.from_numpy(np.concatenate([s.slice_labels for s in labelled]).max(axis=1) > 0)
        if settings.mask_weight > 0 and all(with_masks):
            full = torch.cat([s.masks for s in labelled]).float()
            data.masks = F.adaptive_max_pool2d(full, pooled_side)  # does a cell hold any lesion pixel
        elif settings.mask_weight > 0 and any(with_masks):
            log.warning("encoder pre-training: only %d of %d series have lesion masks; using slice labels only",
                        sum(with_masks), len(with_masks))
        net.backbone.requires_grad_(True)
        net.backbone.train()
        mask_head.requires_grad_(True)
        log.info("encoder pre-training: %d labelled slices of %d series (%d with a lesion), masks %s, %s",
                 len(data.images), len(labelled), int(data.positive.sum()), "yes" if data.masks is not None else "no",
                 "bfloat16" if settings.bf16 else "float32")

    def optimizer() -> torch.optim.Optimizer:
        return torch.optim.Adam([*net.backbone.parameters(), *slice_head.parameters(), *mask_head.parameters()],
                                lr=settings.pretrain_lr)

    def chosen_count() -> int:
        positives = int(data.positive.sum())
        return positives + int(round(settings.negatives * (len(data.positive) - positives)))

    def steps() -> int:
        return -(-chosen_count() // settings.pretrain_batch)

    def scheduler(opt: torch.optim.Optimizer, total: int):
        return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=settings.pretrain_lr, total_steps=max(total, 1),
                                                   pct_start=0.15)

    def batches(epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]:
        negatives = torch.nonzero(~data.positive).flatten()
        keep = negatives[torch.randperm(len(negatives), generator=generator)[:chosen_count() - int(data.positive.sum())]]
        chosen = torch.cat([torch.nonzero(data.positive).flatten(), keep])
        order = chosen[torch.randperm(len(chosen), generator=generator)]
        flips = torch.rand(len(order), generator=generator) < 0.5
        for begin in range(0, len(order), settings.pretrain_batch):
            index = order[begin:begin + settings.pretrain_batch]
            flip = flips[begin:begin + settings.pretrain_batch].view(-1, 1, 1, 1)
            x = torch.where(flip, data.images[index].flip(-1), data.images[index])
            m = None if data.masks is None else torch.where(flip, data.masks[index].flip(-1), data.masks[index])
            yield x, data.targets[index], m

    slice_weight = mask_weight = None

    def loss(batch) -> dict[str, torch.Tensor]:
        nonlocal slice_weight, mask_weight
        x, y, m = (None if t is None else t.to(settings.device) for t in batch)
        if slice_weight is None:
            slice_weight = _pos_weight(data.targets, SLICE_POS_WEIGHT_CAP, (0,)).to(settings.device)
            if data.masks is not None:
                mask_weight = _pos_weight(data.masks, PIXEL_POS_WEIGHT_CAP, (0, 2, 3)).view(1, -1, 1, 1)
                mask_weight = mask_weight.to(settings.device)
        images = ((x - net.mean) / net.std).contiguous(memory_format=torch.channels_last)
        autocast = (torch.autocast("cpu", dtype=torch.bfloat16) if settings.bf16 else contextlib.nullcontext())
        with autocast:
            maps = net.backbone[:-1](images)
            vectors = F.adaptive_max_pool2d(net.backbone[-1](maps), 1).flatten(1)
            slice_logits = slice_head(vectors)
            mask_logits = mask_head(maps) if m is not None else None
        parts = {"slices": F.binary_cross_entropy_with_logits(slice_logits.float(), y, pos_weight=slice_weight)}
        total = parts["slices"]
        if mask_logits is not None:
            parts["masks"] = F.binary_cross_entropy_with_logits(mask_logits.float(), m, pos_weight=mask_weight)
            total = total + settings.mask_weight * parts["masks"]
        return {"total": total, **parts, "n": torch.tensor(len(x))}

    def finish() -> None:
        net.backbone.eval()
        net.backbone.requires_grad_(not config.freeze_backbone)
        net.backbone.to(memory_format=torch.contiguous_format)
        if net.lesion is not None:
            net.lesion.requires_grad_(False)
        data.images = data.targets = data.masks = data.positive = None

    net.backbone.to(memory_format=torch.channels_last)
    return Stage("encoder", settings.pretrain_epochs or 0, optimizer, batches, loss, start=start, finish=finish,
                 scheduler=scheduler, steps_per_epoch=steps)


@torch.no_grad()
def encode_records(net: DrCT2, records: Sequence[StudyRecord], *, stacks: Sequence[SliceStack] | None = None,
                   batch_size: int = 32, device: str = "cpu", progress: bool = True,
                   desc: str = "encode slices") -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per record, the frozen encoder's vectors of every slice: ([n, C], [n, C] zoomed), for
    :meth:`DrCT2.decode`. The slices come from ``stacks`` (same order as ``records``) when
    given, else each record is read and windowed in turn and its images dropped once encoded."""
    from tqdm import tqdm

    if not net.config.freeze_backbone:
        raise ValueError("encode_records needs a frozen encoder: a trained one changes its vectors every step")
    if stacks is not None and len(stacks) != len(records):
        raise ValueError(f"encode_records: {len(stacks)} slice stacks for {len(records)} records")
    net.backbone.eval()
    out = []
    for i, record in enumerate(tqdm(records, desc=desc, unit="series", leave=False,
                                    disable=None if progress else True)):
        images = (stacks[i] if stacks is not None else stack(record, net.config.input_size, masks=False)).images
        parts = [net.encode_slices(images[j:j + batch_size].to(device)) for j in range(0, len(images), batch_size)]
        out.append((torch.cat([p[0] for p in parts]).cpu(), torch.cat([p[1] for p in parts]).cpu()))
    return out


def _balance_weights(dataset: SeriesDataset) -> torch.Tensor:
    """Per item, the largest inverse prevalence among its series' positive labels (1 for a
    series without any), capped at :data:`BALANCE_CAP`: rare subtypes are drawn as often as common ones."""
    labels = np.stack([r.labels for r in dataset.records])
    prevalence = labels.mean(axis=0).clip(1e-6)
    per_record = [float(min(BALANCE_CAP, max([1.0] + [1.0 / prevalence[j] * 0.5 for j in np.flatnonzero(row)])))
                  for row in labels]
    return torch.tensor([per_record[i] for i, _ in dataset.items], dtype=torch.float64)


def decoder_stage(net: DrCT2, records: Sequence[StudyRecord], settings: Settings, data: _EncoderData,
                  *, progress: bool = True) -> Stage:
    """DrCT2 after a frozen encoder, trained on vectors encoded once (see the module docstring)."""
    config = net.config
    dataset = SeriesDataset(records, config.slices, config.input_size, augment=settings.augment, seed=settings.seed)
    generator = torch.Generator().manual_seed(settings.seed)
    labels = [torch.from_numpy(r.labels.copy()) for r in dataset.records]
    weights = _balance_weights(dataset) if settings.balance else None
    encoded: list[tuple[torch.Tensor, torch.Tensor]] = []

    def start() -> None:
        encoded[:] = encode_records(net, records, stacks=data.stacks or None, device=settings.device,
                                    progress=progress)
        data.stacks = []  # the images are no longer needed, only their vectors
        net.train()

    def batches(epoch: int) -> Iterator[list[tuple[int, np.ndarray]]]:
        if weights is not None:
            order = torch.multinomial(weights, len(dataset.items), replacement=True, generator=generator).tolist()
        else:
            order = torch.randperm(len(dataset.items), generator=generator).tolist()
        for begin in range(0, len(order), settings.batch_size):
            items = [dataset.items[k] for k in order[begin:begin + settings.batch_size]]
            if len(items) > 1:  # batch normalisation in the APS network needs two series
                yield items

    def loss(items) -> dict[str, torch.Tensor]:
        index = [torch.from_numpy(idx) for _, idx in items]
        vectors = torch.stack([encoded[i][0][j] for (i, _), j in zip(items, index)]).to(settings.device)
        zoomed = torch.stack([encoded[i][1][j] for (i, _), j in zip(items, index)]).to(settings.device)
        y = torch.stack([labels[i] for i, _ in items]).to(settings.device)
        parts = drct2_loss(net.decode(vectors, zoomed), y)
        return {**parts._asdict(), "n": torch.tensor(len(items))}

    return Stage("decoder", settings.epochs, lambda: make_optimizer(net, settings.primary_lr, settings.aps_lr),
                 batches, loss, start=start, finish=net.eval)


def image_stage(net: DrCT2, records: Sequence[StudyRecord], settings: Settings) -> Stage:
    """The whole network on image batches each step (an encoder that trains)."""
    config = net.config
    dataset = SeriesDataset(records, config.slices, config.input_size, augment=settings.augment, seed=settings.seed)
    loader = DataLoader(dataset, batch_size=settings.batch_size, shuffle=True, num_workers=0,
                        generator=torch.Generator().manual_seed(settings.seed),
                        collate_fn=lambda batch: collate([(x, y, None) for x, y, _ in batch])[:2])

    def loss(batch) -> dict[str, torch.Tensor]:
        x, y = (t.to(settings.device) for t in batch)
        parts = drct2_loss(net(x), y)
        return {**parts._asdict(), "n": torch.tensor(len(x))}

    return Stage("network", settings.epochs, lambda: make_optimizer(net, settings.primary_lr, settings.aps_lr),
                 lambda epoch: loader, loss, start=net.train, finish=net.eval)


def stages(net: DrCT2, records: Sequence[StudyRecord], settings: Settings, *, progress: bool = True) -> list[Stage]:
    """The stages for ``settings``: encoder pre-training (if asked), then the decoder on vectors
    (frozen encoder) or the whole network on images."""
    wrong = sorted({r.label_names for r in records if r.label_names != settings.labels})
    if wrong:
        raise ValueError(f"training records carry labels {wrong[0]}, the settings name {settings.labels}")
    data = _EncoderData()
    out = []
    if settings.pretrain_epochs:
        out.append(encoder_stage(net, records, settings, data, progress=progress))
    if net.config.freeze_backbone:
        out.append(decoder_stage(net, records, settings, data, progress=progress))
    else:
        out.append(image_stage(net, records, settings))
    return out
