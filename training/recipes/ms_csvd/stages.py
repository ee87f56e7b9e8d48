"""The transfer attention network's training stages for :func:`neuroread.training.loop.run_stages`.

The paper transfers an ImageNet backbone and trains the whole network end to end with focal
loss. No ImageNet weights exist for the demo's small backbone, and none can be fetched here, so
transfer comes from a proxy task labelled from phantoms instead:

1. **proxy** (:func:`proxy_stage`, when ``pretrain_epochs`` > 0): on every brain slice of the
   proxy studies (phantoms of other seeds in the demo, ``Settings.pretrain_data``) the backbone
   with a linear layer on its average-pooled features learns whether the slice holds a
   white-matter lesion, and, where the studies have lesion masks, the backbone with the two
   attention modules learns which cells of the last feature maps hold one: the spatial
   attention's map (before its sigmoid) is trained as the lesion-cell detector. Binary
   cross-entropy, positives weighted by their rarity (up to 10); left-right flips; Adam with a
   one-cycle learning rate. The task knows lesions, not diseases: both classes' lesions are
   "lesion". The linear layer is then dropped; backbone and attention modules are kept, so the
   attention starts where lesions are and the diagnosis training may move it.

   With its own studies (``pretrain_data``) the stage does not depend on the training records,
   so within one process its outcome is kept (:data:`_PROXY_RESULTS`: the network's state and
   torch's random state after it, keyed by the settings that shape it and a digest of the
   freshly built network) and every later fit that would repeat it (the folds of a
   cross-validation, the final fit) starts from it instead: the same weights, in minutes less.
2. **network** (:func:`network_stage`): the whole network end to end on the diagnosis, focal
   loss with α from the training class frequencies; each step ``batch_size`` series, each a
   random subset of ``bag_slices`` of its brain slices in slice order (the network reads all of
   them at inference), flipped left-right at random; Adam with the backbone at ``backbone_lr``
   when it was pre-trained (or loaded from ImageNet), cosine decay.
"""
from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from neuroread.models.ms_csvd.network import TransferAttentionNet, class_alpha, focal_loss
from neuroread.training.datasets import StudyRecord
from neuroread.training.loop import Stage

from .data import SeriesStack, load_all, read_records
from .settings import Settings

log = logging.getLogger(__name__)

POS_WEIGHT_CAP = 10.0
# key -> (state dict, torch RNG state, what was learnt) after the proxy stage on pretrain_data
_PROXY_RESULTS: dict[tuple, tuple[dict[str, torch.Tensor], torch.Tensor, frozenset[str]]] = {}


def _proxy_key(net: TransferAttentionNet, settings: Settings) -> tuple | None:
    """What a proxy stage on its own studies depends on, or ``None`` when it trains on the records."""
    if settings.pretrain_data is None:
        return None
    digest = hashlib.sha256()
    for name, tensor in sorted(net.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return (str(settings.pretrain_data.resolve()), settings.pretrain_epochs, settings.pretrain_lr,
            settings.pretrain_batch, settings.seed, settings.device, digest.hexdigest())


def _pos_weight(targets: torch.Tensor) -> torch.Tensor:
    positives = float(targets.sum())
    return torch.tensor(min(POS_WEIGHT_CAP, max(1.0, (targets.numel() - positives) / max(positives, 1.0))))


def proxy_stage(net: TransferAttentionNet, records: Sequence[StudyRecord], settings: Settings, *,
                progress: bool = True, learnt: set[str] | None = None) -> Stage:
    """The backbone's pre-training on lesion presence (see the module docstring); adds to
    ``learnt`` what it trained (``"backbone"``, and ``"attention"`` when the studies had lesion
    masks for the attention modules to learn the cells from)."""
    learnt = set() if learnt is None else learnt
    config = net.config
    slice_head = nn.Linear(config.features, 1).to(settings.device)
    cells_learnt = net.spatial is not None  # the attention modules learn the lesion cells (no attention: no cells)
    generator = torch.Generator().manual_seed(settings.seed + 1)
    data: dict[str, torch.Tensor | None] = {}

    def start() -> None:
        source = records
        if settings.pretrain_data is not None:
            source, _ = read_records(settings.pretrain_data, "phantoms" if any(settings.pretrain_data.glob(
                "*/truth.json")) else "manifest", progress=progress)
        stacks = [s for s in load_all(source, config, progress=progress, desc="load proxy series")
                  if s.lesion is not None]
        if not stacks:
            raise ValueError("pretrain_epochs > 0 needs studies with per-slice labels or lesion masks (phantoms have "
                             "them); none of the proxy studies has")
        data["images"] = torch.cat([s.images for s in stacks])
        data["lesion"] = torch.cat([s.lesion for s in stacks]).float()
        with_cells = cells_learnt and all(s.cells is not None for s in stacks)
        learnt.update({"backbone", "attention"} if with_cells else {"backbone"})
        data["cells"] = torch.cat([s.cells for s in stacks]).float()[:, None] if with_cells else None
        net.train()
        log.info("proxy pre-training: %d brain slices of %d studies (%d with a lesion), lesion cells %s",
                 len(data["images"]), len(stacks), int(data["lesion"].sum()), "yes" if with_cells else "no")

    def optimizer() -> torch.optim.Optimizer:
        modules = [net.backbone, slice_head] + ([net.channel, net.spatial] if cells_learnt else [])
        return torch.optim.Adam([p for m in modules for p in m.parameters()], lr=settings.pretrain_lr)

    def steps() -> int:
        return -(-len(data["images"]) // settings.pretrain_batch)

    def scheduler(opt: torch.optim.Optimizer, total: int):
        return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=settings.pretrain_lr, total_steps=max(total, 1),
                                                   pct_start=0.15)

    def batches(epoch: int) -> Iterator[tuple[torch.Tensor, ...]]:
        n = len(data["images"])
        order = torch.randperm(n, generator=generator)
        flips = torch.rand(n, generator=generator) < 0.5
        for begin in range(0, n, settings.pretrain_batch):
            index = order[begin:begin + settings.pretrain_batch]
            flip = flips[begin:begin + settings.pretrain_batch].view(-1, 1, 1, 1)
            x = torch.where(flip, data["images"][index].flip(-1), data["images"][index])
            cells = data["cells"]
            c = None if cells is None else torch.where(flip, cells[index].flip(-1), cells[index])
            yield x, data["lesion"][index], c

    weights: dict[str, torch.Tensor] = {}

    def loss(batch) -> dict[str, torch.Tensor]:
        x, y, c = (None if t is None else t.to(settings.device) for t in batch)
        if not weights:
            weights["slice"] = _pos_weight(data["lesion"]).to(settings.device)
            if data["cells"] is not None:
                weights["cell"] = _pos_weight(data["cells"]).to(settings.device)
        maps = net.feature_maps(x.float())
        parts = {"slices": F.binary_cross_entropy_with_logits(slice_head(maps.mean((2, 3))).squeeze(1), y,
                                                              pos_weight=weights["slice"])}
        total = parts["slices"]
        if c is not None:
            cell_logits = net.spatial.logits(maps * net.channel(maps))
            parts["cells"] = F.binary_cross_entropy_with_logits(cell_logits, c, pos_weight=weights["cell"])
            total = total + parts["cells"]
        return {"total": total, **parts, "n": torch.tensor(len(x))}

    key = _proxy_key(net, settings)

    def finish() -> None:
        data.clear()
        if key is not None:
            _PROXY_RESULTS[key] = ({k: v.detach().clone() for k, v in net.state_dict().items()},
                                   torch.get_rng_state(), frozenset(learnt))

    return Stage("proxy", settings.pretrain_epochs or 0, optimizer, batches, loss, start=start, finish=finish,
                 scheduler=scheduler, steps_per_epoch=steps)


def network_stage(net: TransferAttentionNet, records: Sequence[StudyRecord], settings: Settings, *,
                  progress: bool = True, learnt: set[str] | None = None) -> Stage:
    """The whole network end to end on the diagnosis (see the module docstring); the parts in
    ``learnt`` (what the proxy stage trained) are fine-tuned at ``backbone_lr``."""
    learnt = set() if learnt is None else learnt
    config = net.config
    generator = torch.Generator().manual_seed(settings.seed + 2)
    stacks: list[SeriesStack] = []
    alpha: list[torch.Tensor | None] = [None]

    def start() -> None:
        stacks[:] = load_all(records, config, progress=progress)
        counts = np.bincount([s.label for s in stacks], minlength=config.n_classes)
        alpha[0] = class_alpha(counts).to(settings.device) if settings.alpha else None
        net.train()
        log.info("end-to-end training on %d series (per class %s), focal loss gamma %g, alpha %s", len(stacks),
                 counts.tolist(), settings.gamma, None if alpha[0] is None else [round(float(a), 3) for a in alpha[0]])

    def optimizer() -> torch.optim.Optimizer:
        # what the proxy task trained (backbone, and the attention modules when it learnt lesion cells) is
        # fine-tuned at the lower rate; what is new (slice pooling, classifier) learns at the full one
        pretrained = ([net.backbone] if "backbone" in learnt or settings.backbone_weights is not None else []) + \
            ([net.channel, net.spatial] if "attention" in learnt else [])
        slow = [p for m in pretrained for p in m.parameters()]
        ids = {id(p) for p in slow}
        rest = [p for p in net.parameters() if id(p) not in ids]
        return torch.optim.AdamW([{"params": slow, "lr": settings.backbone_lr}, {"params": rest, "lr": settings.lr}],
                                 weight_decay=settings.weight_decay)

    def steps() -> int:
        return -(-len(stacks) // settings.batch_size)

    def scheduler(opt: torch.optim.Optimizer, total: int):
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(total, 1))

    def batches(epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        order = torch.randperm(len(stacks), generator=generator).tolist()
        for begin in range(0, len(order), settings.batch_size):
            chosen = [stacks[i] for i in order[begin:begin + settings.batch_size]]
            if len(chosen) < 2:  # batch normalisation needs more than one series' worth of statistics
                continue
            bag = min(settings.bag_slices, max(len(s.images) for s in chosen))
            x = torch.zeros(len(chosen), bag, 1, config.input_size, config.input_size)
            mask = torch.zeros(len(chosen), bag, dtype=torch.bool)
            for b, s in enumerate(chosen):
                k = min(bag, len(s.images))
                pick = torch.randperm(len(s.images), generator=generator)[:k].sort().values
                images = s.images[pick].float()
                if bool(torch.rand(1, generator=generator) < 0.5):
                    images = images.flip(-1)
                x[b, :k], mask[b, :k] = images, True
            yield x, mask, torch.tensor([s.label for s in chosen])

    def loss(batch) -> dict[str, torch.Tensor]:
        x, mask, y = (t.to(settings.device) for t in batch)
        out = net(x.expand(-1, -1, 3, -1, -1), mask)
        value = focal_loss(out.logits, y, alpha[0], settings.gamma)
        return {"total": value, "focal": value, "n": torch.tensor(len(y))}

    def finish() -> None:
        stacks.clear()
        net.eval()

    return Stage("network", settings.epochs, optimizer, batches, loss, start=start, finish=finish,
                 scheduler=scheduler, steps_per_epoch=steps)


def stages(net: TransferAttentionNet, records: Sequence[StudyRecord], settings: Settings, *,
           progress: bool = True) -> list[Stage]:
    """Proxy pre-training (when asked), then the network end to end."""
    out, learnt = [], set()
    kept = _PROXY_RESULTS.get(_proxy_key(net, settings)) if settings.pretrain_epochs else None
    if kept is not None:  # this proxy stage already ran in this process: start where it ended
        state, rng, what = kept
        net.load_state_dict(state)
        torch.set_rng_state(rng)
        learnt.update(what)
        log.info("proxy pre-training: the same stage already ran in this process (same studies, settings and "
                 "initial network); starting from its result")
    elif settings.pretrain_epochs:
        out.append(proxy_stage(net, records, settings, progress=progress, learnt=learnt))
    out.append(network_stage(net, records, settings, progress=progress, learnt=learnt))
    return out
