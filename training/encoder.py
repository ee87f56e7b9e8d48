"""The encoder's own training on labelled slices, and training DrCT2 on vectors encoded once.

The paper freezes a VGG16 pre-trained on ImageNet: the encoder is learnt elsewhere, from far
more images than the hemorrhage data holds, and the hemorrhage training only fits what comes
after it. No ImageNet weights exist for a narrower encoder (the demo configuration), and trained
end to end from scratch on a few hundred phantom series it did not learn (held-out macro-F1
0.13). So the encoder's pre-training happens here instead, on the data's per-slice labels
(RSNA's labels are per image; the phantoms and manifests may carry them too):

- :func:`pretrain_encoder`: the encoder plus a linear layer on its pooled vector learn every
  label of every labelled slice (binary cross-entropy, positives weighted by how rare they are,
  left-right flips); the linear layer is then dropped. About 24 times as many examples as
  series, each with its lesion in view.
- Frozen afterwards (or frozen from the start with ImageNet weights, the paper's setting), the
  encoder gives each slice the same vector in every epoch, so :func:`encode_records` runs it
  once per slice (at the input size and zoomed) and the DrCT2 training only runs
  :meth:`~neuroread.models.ct_hemorrhage.network.DrCT2.decode` per step: minutes instead of hours on a
  CPU, the same model (a test checks decode against forward).

Memory: :func:`encode_records` reads one record at a time and keeps only its vectors (2 × 512
floats per slice with VGG16: about 120 KB per 30-slice series, 2.4 GB for RSNA's 20,000).
Pre-training needs every labelled slice at hand: :func:`load_slices` keeps them in memory,
windowed at the network's input size (about 200 KB per slice at 128 px, 600 KB at 224 px), which
suits the phantoms and small datasets; pre-training on all of RSNA this way does not fit in RAM.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from neuroread.models.ct_hemorrhage.network import DrCT2
from neuroread.models.ct_hemorrhage.preprocess import to_input
from neuroread.training.datasets import StudyRecord

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SliceStack:
    """Every slice of one record as network input, ``images`` float32 ``[n, 3, S, S]`` in
    [0, 1], and their labels ``[n, n_labels]`` (``None`` when the record has no per-slice labels)."""

    images: torch.Tensor
    slice_labels: np.ndarray | None


def _stack(record: StudyRecord, size: int) -> SliceStack:
    volume, slice_labels = record.load()
    return SliceStack(to_input(volume.array, np.arange(volume.array.shape[0]), size), slice_labels)


def load_slices(records: Sequence[StudyRecord], size: int, *, progress: bool = True,
                desc: str = "load slices") -> list[SliceStack]:
    """Read each record once (:meth:`StudyRecord.load`) and window all its slices at ``size``."""
    return [_stack(record, size)
            for record in tqdm(records, desc=desc, unit="series", leave=False, disable=None if progress else True)]


def pretrain_encoder(model: DrCT2, stacks: Sequence[SliceStack], *, epochs: int, lr: float, batch_size: int = 32,
                     seed: int = 0, device: str = "cpu", progress: bool = True,
                     desc: str = "pre-train encoder") -> list[float]:
    """Train ``model.backbone`` on the labelled slices of ``stacks``; return the mean loss per epoch.

    Runs under the caller's torch seed (:func:`neuroread.training.train.deterministic`); ``seed`` draws
    the slice order and the flips. The backbone is left in eval mode, with gradients only if
    the configuration does not freeze it.
    """
    labelled = [s for s in stacks if s.slice_labels is not None]
    if not labelled:
        raise ValueError("pretrain_epochs > 0 needs per-slice labels, and no training record has them "
                         "(phantoms and RSNA carry them; a manifest may give a slice_labels CSV per study)")
    images = torch.cat([s.images for s in labelled])
    targets = torch.from_numpy(np.concatenate([s.slice_labels for s in labelled]).astype(np.float32))
    positives = targets.sum(0)
    pos_weight = ((len(targets) - positives) / positives.clamp_min(1)).clamp(1.0, 20.0).to(device)
    backbone = model.backbone
    classifier = nn.Linear(model.config.features, targets.shape[1]).to(device)
    optimizer = torch.optim.Adam([*backbone.parameters(), *classifier.parameters()], lr=lr)
    generator = torch.Generator().manual_seed(seed)
    mean, std = model.mean, model.std
    backbone.requires_grad_(True)
    backbone.train()
    losses: list[float] = []
    log.info("%s: %d labelled slices of %d series, %d epochs, batch %d, Adam lr %g", desc, len(images),
             len(labelled), epochs, batch_size, lr)
    try:
        bar = tqdm(range(epochs), desc=desc, unit="epoch", disable=None if progress else True)
        for epoch in bar:
            order = torch.randperm(len(images), generator=generator)
            flips = torch.rand(len(order), generator=generator) < 0.5
            total = 0.0
            for start in tqdm(range(0, len(order), batch_size), desc=f"epoch {epoch + 1}", unit="batch",
                              leave=False, disable=None if progress else True):
                index = order[start:start + batch_size]
                x = images[index].to(device)
                flip = flips[start:start + batch_size].to(device)
                x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
                vectors = F.adaptive_max_pool2d(backbone((x - mean) / std), 1).flatten(1)
                loss = F.binary_cross_entropy_with_logits(classifier(vectors), targets[index].to(device),
                                                          pos_weight=pos_weight)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total += float(loss.detach()) * len(index)
            losses.append(total / len(images))
            bar.set_postfix(loss=f"{losses[-1]:.4f}")
            log.info("%s epoch %d/%d: loss %.4f", desc, epoch + 1, epochs, losses[-1],
                     extra={"epoch": epoch + 1, "loss": losses[-1]})
    finally:
        backbone.eval()
        backbone.requires_grad_(not model.config.freeze_backbone)
    return losses


@torch.no_grad()
def encode_records(model: DrCT2, records: Sequence[StudyRecord], *, stacks: Sequence[SliceStack] | None = None,
                   batch_size: int = 32, device: str = "cpu", progress: bool = True,
                   desc: str = "encode slices") -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per record, the frozen encoder's vectors of every slice: ([n, C], [n, C] zoomed), for
    :meth:`DrCT2.decode`. The slices come from ``stacks`` (same order as ``records``) when
    given, else each record is read and windowed in turn and its images dropped once encoded."""
    if not model.config.freeze_backbone:
        raise ValueError("encode_records needs a frozen encoder: a trained one changes its vectors every step")
    if stacks is not None and len(stacks) != len(records):
        raise ValueError(f"encode_records: {len(stacks)} slice stacks for {len(records)} records")
    model.backbone.eval()
    out = []
    for i, record in enumerate(tqdm(records, desc=desc, unit="series", leave=False,
                                    disable=None if progress else True)):
        images = (stacks[i] if stacks is not None else _stack(record, model.config.input_size)).images
        parts = [model.encode_slices(images[j:j + batch_size].to(device)) for j in range(0, len(images), batch_size)]
        out.append((torch.cat([p[0] for p in parts]).cpu(), torch.cat([p[1] for p in parts]).cpu()))
    return out
