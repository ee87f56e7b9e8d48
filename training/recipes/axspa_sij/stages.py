"""The sacroiliac network's training stages for :func:`neuroread.training.loop.run_stages`.

1. **localiser** (:func:`localiser_stage`): the joint localiser on the T1's overview of every
   study with joint positions (phantom truth boxes, a manifest's ``joints.json``): the mean L1
   distance in mm between the expected and the true joint centres, Adam with cosine decay. Or,
   with ``localiser_weights``, a trained localiser copied in (no stage).
2. **msfanet** (:func:`network_stage`): both series on the crop around the joints (the truth's
   centre, as the paper's radiologist ROI; the localiser's where a study has none), each step
   a random shift of up to ``shift_mm`` and a left-right flip; the hybrid loss (the network's
   :class:`~neuroread.models.axspa_sij.network.HybridLoss`, whose log-variances travel in the
   checkpoint) or the Fuse branch's cross-entropy; Adam at the paper's lr and weight decay
   (none on the loss weights), cosine decay. Where the studies have lesion masks (phantoms:
   every lesion on the T1) and ``lesion_weight`` > 0, **deep supervision** adds, weighted by it,
   a binary cross-entropy of the network's lesion head (one 1×1×1 convolution read on each
   branch's last features, :attr:`~neuroread.models.axspa_sij.model.SacroiliacNet.lesion`) against
   "a lesion of this kind in this cell", one channel per kind of
   :data:`~neuroread.models.axspa_sij.model.LESION_KINDS` (bone-marrow oedema, erosion, fat
   metaplasia, sclerosis, osteophyte: the typed mask max-pooled to the feature grid; each
   kind's cells weighted by their rarity, at most 10; lesions of a kind the mask does not say
   are left out). With one label per study, 204 studies did not teach the 3D network from
   scratch where the evidence is; what tells the classes apart on phantoms is which kinds of
   lesion a study has and how many (counting them by their truth types separates the
   held-out classes completely; oedema alone gives an AUC of 0.86), and the typed masks teach
   exactly that. The paper trains on
   the labels alone (its ablation here is ``lesion_weight: 0``); without ``MSFAConfig.evidence``
   the node never runs the head; with it, every branch's decision reads the head's soft counts.

:func:`measure` gives the card what ``evaluate`` cannot see: the localiser's error against
the truth and how often the crop holds both truth boxes, and the learned loss weights.
"""
from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from neuroread.models.axspa_sij.localiser import index_distance_mm, locate
from neuroread.models.axspa_sij.model import LESION_KINDS, SacroiliacNet
from neuroread.models.axspa_sij.preprocess import crop_grid
from neuroread.models.checkpoint import load_checkpoint
from neuroread.training.datasets import StudyRecord
from neuroread.training.loop import Stage

from .data import SIJStudy, load_all, random_crops, truth_joints
from .settings import Settings

log = logging.getLogger(__name__)

POS_WEIGHT_CAP = 10.0  # a lesion cell's weight in the deep supervision, at most


def localiser_stage(net: SacroiliacNet, records: Sequence[StudyRecord], settings: Settings,
                    studies: list[SIJStudy], *, progress: bool = True) -> Stage:
    """The localiser's training (module docstring); reads the records into ``studies`` (which
    the network stage then uses) before its first epoch."""
    generator = torch.Generator().manual_seed(settings.seed + 1)
    data: dict[str, torch.Tensor] = {}

    def start() -> None:
        if not studies:
            studies.extend(load_all(records, net.config, settings.shift_mm, progress=progress))
        known = [s for s in studies if s.joints is not None]
        if not known:
            raise ValueError("the localiser needs studies with joint positions (phantoms' truth, a manifest's "
                             "joints.json); none has them: give localiser_weights instead")
        data["x"] = torch.stack([s.overview for s in known])
        data["y"] = torch.stack([s.joints for s in known])
        net.localiser.train()
        log.info("localiser: %d studies with joint positions", len(known))

    def steps() -> int:
        return -(-len(data["x"]) // settings.localiser_batch)

    def batches(epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = torch.randperm(len(data["x"]), generator=generator)
        for begin in range(0, len(order), settings.localiser_batch):
            index = order[begin:begin + settings.localiser_batch]
            if len(index) < 2:  # batch normalisation needs two
                continue
            yield data["x"][index].float().to(settings.device), data["y"][index].to(settings.device)

    def loss(batch: tuple[torch.Tensor, torch.Tensor]) -> dict[str, torch.Tensor]:
        x, y = batch
        distance = index_distance_mm(net.localiser(x), y)
        return {"total": distance.mean(), "n": torch.tensor(len(x))}

    def finish() -> None:
        net.localiser.eval()
        data.clear()

    return Stage("localiser", settings.localiser_epochs,
                 lambda: torch.optim.Adam(net.localiser.parameters(), lr=settings.localiser_lr),
                 batches, loss, start=start, finish=finish, steps_per_epoch=steps,
                 scheduler=lambda opt, total: torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(total, 1)))


def network_stage(net: SacroiliacNet, records: Sequence[StudyRecord], settings: Settings,
                  studies: list[SIJStudy], *, progress: bool = True) -> Stage:
    """MSFANet's training (module docstring)."""
    generator = torch.Generator().manual_seed(settings.seed + 2)
    shape = tuple(net.config.input_shape)
    data: dict[str, torch.Tensor] = {}

    def start() -> None:
        if not studies:  # the localiser was given, not trained: it centres the studies without truth
            studies.extend(load_all(records, net.config, settings.shift_mm, localiser=net.localiser.eval(),
                                    progress=progress))
        data["crops"] = torch.stack([s.crop for s in studies])
        data["labels"] = torch.tensor([s.label for s in studies])
        masked = [s.lesion is not None for s in studies]
        if settings.lesion_weight > 0 and any(masked):
            empty = torch.zeros(studies[0].crop.shape[1:], dtype=torch.uint8)
            data["lesion"] = torch.stack([s.lesion if s.lesion is not None else empty for s in studies])
            data["masked"] = torch.tensor(masked)
            kinds = data["lesion"][data["masked"]]
            share = torch.stack([(kinds == k + 1).float().mean() for k in range(len(LESION_KINDS))])
            data["pos_weight"] = ((1 - share) / share.clamp_min(1e-6)).clamp(1.0, POS_WEIGHT_CAP).view(1, -1, 1, 1, 1)
        net.loss.learned = settings.loss == "hybrid"
        net.msfa.train()
        log.info("MSFANet: %d studies (%d axspa)", len(studies), int((data["labels"] == 0).sum()))

    def steps() -> int:
        return -(-len(data["crops"]) // settings.batch_size)

    def optimizer() -> torch.optim.Optimizer:
        trained = list(net.msfa.parameters())
        if "lesion" in data and net.lesion_head is not None:  # beside the network, trained only when supervised
            trained += list(net.lesion_head.parameters())
        groups = [{"params": trained, "weight_decay": settings.weight_decay}]
        if settings.loss == "hybrid":
            groups.append({"params": list(net.loss.parameters()), "weight_decay": 0.0})
        return torch.optim.Adam(groups, lr=settings.lr)

    def batches(epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = torch.randperm(len(data["crops"]), generator=generator)
        for begin in range(0, len(order), settings.batch_size):
            index = order[begin:begin + settings.batch_size]
            if len(index) < 2:
                continue
            x, masks = random_crops(data["crops"][index], shape, generator, settings.flip, data.get("lesion")[index]
                                    if "lesion" in data else None)
            masked = data["masked"][index] if "lesion" in data else None
            yield x.to(settings.device), data["labels"][index].to(settings.device), masks, masked

    def loss(batch) -> dict[str, torch.Tensor]:
        x, y, masks, masked = batch
        features = net.msfa.features(x)
        parts = net.loss(net.msfa.classify(features), y)
        if masks is not None and bool(masked.any()):
            one_hot = torch.stack([masks == k + 1 for k in range(len(LESION_KINDS))], dim=1).float()
            cells = F.adaptive_max_pool3d(one_hot, features["fs"].shape[2:]).to(x.device)
            weight = masked.float().view(-1, 1, 1, 1, 1).expand_as(cells).to(x.device)
            lesion = sum(F.binary_cross_entropy_with_logits(net.lesion(features[b]), cells, weight=weight,
                                                            pos_weight=data["pos_weight"]) for b in features) / 3
            parts = {**parts, "total": parts["total"] + settings.lesion_weight * lesion, "lesion": lesion}
        return {**parts, "n": torch.tensor(len(x))}

    def finish() -> None:
        net.eval()
        data.clear()
        studies.clear()
        log.info("loss weights β: %s", ", ".join(f"{b} {w:.3f}" for b, w in net.loss.weights.items()))

    return Stage("msfanet", settings.epochs, optimizer, batches, loss, start=start, finish=finish,
                 steps_per_epoch=steps,
                 scheduler=lambda opt, total: torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(total, 1)))


def stages(net: SacroiliacNet, records: Sequence[StudyRecord], settings: Settings, *,
           progress: bool = True) -> list[Stage]:
    studies: list[SIJStudy] = []  # read once, shared by both stages
    out = []
    if settings.localiser_weights is not None:
        checkpoint = load_checkpoint(settings.localiser_weights, "axspa-sij")
        prefix = "localiser."
        state = {k[len(prefix):]: v for k, v in checkpoint.state_dict.items() if k.startswith(prefix)}
        if not state:
            raise ValueError(f"Settings.localiser_weights: {settings.localiser_weights} holds no localiser "
                             "(an axspa-sij checkpoint has one)")
        net.localiser.load_state_dict(state)
        net.localiser.eval()
    else:
        out.append(localiser_stage(net, records, settings, studies, progress=progress))
    out.append(network_stage(net, records, settings, studies, progress=progress))
    return out


def _inside(grid, corners: np.ndarray) -> bool:
    index = grid.lps_to_index(corners)
    return bool(((index >= -0.5) & (index <= np.array(grid.shape) - 0.5)).all())


@torch.no_grad()
def measure(net: SacroiliacNet, records: Sequence[StudyRecord], settings: Settings) -> dict[str, float]:
    """The localiser on ``records`` with joint positions: the distance in mm between each found
    and true joint centre (``localiser.error_mm.mean`` / ``.median`` / ``.p95`` over joints), the
    error of the crop's centre (``localiser.centre_error_mm.mean``), and on phantoms the
    fraction of studies whose crop holds both joints' truth boxes (``localiser.boxes_in_crop``);
    and the learned loss weights (``loss.beta.<branch>``)."""
    errors, centre_errors, inside = [], [], []
    for record in records:
        truth = truth_joints(record)
        if truth is None:
            continue
        (joints, boxes) = truth
        t1, _ = record.load()
        found = locate(net.localiser, t1, settings.device)
        errors += [float(np.linalg.norm(found.left - joints.left)), float(np.linalg.norm(found.right - joints.right))]
        centre_errors.append(float(np.linalg.norm(found.centre - joints.centre)))
        if boxes:
            grid = crop_grid(t1, found.centre, net.config)
            inside.append(all(_inside(grid, box.corners) for box in boxes.values()))
    out: dict[str, float] = {}
    if errors:
        out.update({"localiser.error_mm.mean": float(np.mean(errors)),
                    "localiser.error_mm.median": float(np.median(errors)),
                    "localiser.error_mm.p95": float(np.percentile(errors, 95)),
                    "localiser.centre_error_mm.mean": float(np.mean(centre_errors)),
                    "localiser.studies": float(len(centre_errors))})
    if inside:
        out["localiser.boxes_in_crop"] = float(np.mean(inside))
    if settings.loss == "hybrid":
        out.update({f"loss.beta.{b}": w for b, w in net.loss.weights.items()})
    return out
