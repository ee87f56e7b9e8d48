"""Training the head-CT hemorrhage network (DrCT2) from :class:`~neuroread.training.datasets.StudyRecord`\\ s.

The paper's recipe (Wang et al., Medical Physics 2022, section VI.A.1): fixed-length
sampling with the unsampled slices as extra training series (:class:`~neuroread.training.datasets.SeriesDataset`
with ``augment``), Adam with 0.0005 for the primary and fusion networks and 0.0003 for the
APS network (:func:`~neuroread.models.ct_hemorrhage.network.make_optimizer`), the loss of eq. 11-13
(:func:`~neuroread.models.ct_hemorrhage.network.drct2_loss`), 100 epochs, k-fold cross-validation
(k = 10 for CQ500, 5 for RSNA) and the macro-F1 as the main metric.

- :func:`train_once`: one model from training records (its encoder first pre-trained on the
  per-slice labels when asked, and trained on vectors encoded once when frozen:
  :mod:`neuroread.training.encoder`), evaluated on validation records:
  classification metrics of the fusion probabilities and, on records with per-slice labels,
  the paper's three key-slice tasks and the top-5 lesion fraction from the slice attention
  (:func:`evaluate`).
- :func:`cross_validate`: :func:`train_once` on each fold of :func:`~neuroread.training.folds.kfold_splits`
  (stratified on the ``any`` label, patients kept whole); per-fold and mean metrics.
- :func:`train`: metrics from cross-validation (the final model is then trained on every
  record) or from one held-out fifth (the model is the one trained on the rest), written
  with :func:`neuroread.models.checkpoint.save_checkpoint` with its model card.

**Determinism.** Everything runs under :func:`deterministic`: torch's global generator
seeded (and restored afterwards), deterministic algorithms on, a seeded DataLoader generator
with ``num_workers=0`` and augmentation sets shuffled by the seed, so on the CPU the same
records, configuration and seed give bit-identical weights. (On a GPU, operations without
a deterministic implementation warn instead of failing.)
"""
from __future__ import annotations

import difflib
import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from neuroread.models import ModelRegistry
from neuroread.models.checkpoint import save_checkpoint
from neuroread.models.ct_hemorrhage.model import ENTRIES, paper_config
from neuroread.models.ct_hemorrhage.network import (
    DrCT2,
    DrCT2Config,
    DrCT2Loss,
    DrCT2Output,
    drct2_loss,
    make_optimizer,
)
from neuroread.training.datasets import SeriesDataset, StudyRecord, collate
from neuroread.training.encoder import encode_records, load_slices, pretrain_encoder
from neuroread.training.folds import Split, holdout_split, kfold_splits
from neuroread.training.metrics import ClassificationMetrics, KeySliceResult, classification_metrics, key_slice_tasks

log = logging.getLogger(__name__)

PRESETS = ("paper", "demo")
# Encoder pre-training epochs on per-slice labels by preset: the demo encoder has no ImageNet
# weights to start from (DrCT2Config.demo); three epochs over ~5,000 phantom slices take about 4
# minutes on 2 CPU cores and gave the held-out numbers in neuroread.training.demo (four: 15 minutes in all).
PRETRAIN_EPOCHS = {"demo": 3}


def trainable() -> ModelRegistry:
    """The models this module trains (the head-CT hemorrhage ones), by name."""
    return ModelRegistry(ENTRIES)


@dataclass(frozen=True)
class TrainConfig:
    """How to train: the paper's settings by default (100 epochs, batch 32, its learning rates).

    ``model`` is the registered model the weights are for; it fixes the label set, in order
    (``ct-hemorrhage``: RSNA's six, ``ct-hemorrhage-cq500``: CQ500's nine), and every record
    must carry exactly these labels. ``network`` is a preset name (``"paper"``: the model's
    :func:`~neuroread.models.ct_hemorrhage.model.paper_config`, m = 28 or 32 as the paper pairs them;
    ``"demo"``: :meth:`DrCT2Config.demo`) or a :meth:`DrCT2Config.to_dict`-style dict
    (``n_labels`` may be left out: it follows the labels). ``augment`` adds the series built
    from unsampled slices to every epoch. ``threads`` sets torch's CPU threads while training
    (``None``: torch's default). ``backbone_weights`` is a local torchvision VGG16 file (needed
    by a frozen backbone such as the paper's). ``pretrain_epochs`` > 0 first trains the encoder
    on the records' per-slice labels for that many epochs with Adam at ``pretrain_lr``
    (:func:`~neuroread.training.encoder.pretrain_encoder`; in place of ImageNet weights, or on top of
    them); ``None`` takes the preset's (:data:`PRETRAIN_EPOCHS`: 3 for ``"demo"``, else 0).
    ``device`` is a torch device (``"cuda"`` trains on a GPU).

    With a frozen encoder every slice is encoded once and the epochs train the rest of the
    network on those vectors (:mod:`neuroread.training.encoder`); otherwise each step runs the whole network.
    """

    model: str = "ct-hemorrhage"
    epochs: int = 100
    batch_size: int = 32
    seed: int = 0
    threads: int | None = None
    augment: bool = True
    network: str | Mapping[str, Any] = "paper"
    primary_lr: float = 5e-4
    aps_lr: float = 3e-4
    backbone_weights: Path | None = None
    pretrain_epochs: int | None = None
    pretrain_lr: float = 1e-3
    device: str = "cpu"

    def __post_init__(self) -> None:
        trainable().spec(self.model)  # an unknown name raises with the known ones
        for key in ("epochs", "batch_size"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"TrainConfig.{key} must be a positive integer, got {value!r}")
        if self.pretrain_epochs is None:
            preset = self.network if isinstance(self.network, str) else ""
            object.__setattr__(self, "pretrain_epochs", PRETRAIN_EPOCHS.get(preset, 0))
        for key in ("seed", "pretrain_epochs"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"TrainConfig.{key} must be a non-negative integer, got {value!r}")
        if self.threads is not None and (isinstance(self.threads, bool) or not isinstance(self.threads, int)
                                         or self.threads < 1):
            raise ValueError(f"TrainConfig.threads must be a positive integer or None, got {self.threads!r}")
        for key in ("primary_lr", "aps_lr", "pretrain_lr"):
            value = getattr(self, key)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
                raise ValueError(f"TrainConfig.{key} must be a positive learning rate, got {value!r}")
        if isinstance(self.network, str) and self.network not in PRESETS:
            close = difflib.get_close_matches(self.network, PRESETS, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"TrainConfig.network: unknown preset {self.network!r}{hint}; "
                             f"presets: {', '.join(PRESETS)}, or a DrCT2Config dict")
        if self.backbone_weights is not None:
            object.__setattr__(self, "backbone_weights", Path(self.backbone_weights))
        net = self.network_config()  # refuses a bad dict, naming the key
        if net.freeze_backbone and self.backbone_weights is None and not self.pretrain_epochs:
            raise ValueError(
                f"TrainConfig.backbone_weights: the {net.name!r} network freezes its VGG backbone, which "
                "only makes sense once it has learnt something: give the local path of torchvision's vgg16 "
                "ImageNet file (CLI: --backbone-weights FILE), or pre-train it on per-slice labels "
                "(TrainConfig.pretrain_epochs > 0, CLI: --pretrain-epochs N)")
        try:
            torch.device(self.device)
        except RuntimeError as err:  # what torch raises for an unknown device string
            raise ValueError(f"TrainConfig.device: {self.device!r} is not a torch device ({err})") from err

    @property
    def labels(self) -> tuple[str, ...]:
        """The model's label names, in its order (the dataset readers' keys)."""
        return tuple(lb.name for lb in trainable().spec(self.model).labels)

    def network_config(self) -> DrCT2Config:
        """The network this configuration trains."""
        n = len(self.labels)
        if self.network == "paper":
            return paper_config(trainable().spec(self.model))
        if self.network == "demo":
            return DrCT2Config.demo(n)
        data = dict(self.network)
        if data.setdefault("n_labels", n) != n:
            raise ValueError(f"TrainConfig.network: n_labels={data['n_labels']} but {self.model} has {n} labels")
        return DrCT2Config.from_dict(data)

    def describe(self) -> str:
        """One line for the model card: the settings that shaped the weights."""
        net = self.network_config()
        encoder = "ImageNet VGG weights" if self.backbone_weights is not None else "initialised as torchvision does"
        if self.pretrain_epochs:
            encoder += (f", pre-trained {self.pretrain_epochs} epochs on the per-slice labels (Adam lr "
                        f"{self.pretrain_lr:g})")
        encoder += ", then frozen" if net.freeze_backbone else ", trained with the network"
        return (f"encoder {encoder}; {self.epochs} epochs, batch {self.batch_size}, seed {self.seed}, Adam lr "
                f"{self.primary_lr:g} (primary, fusion) / {self.aps_lr:g} (APS), augmentation from unsampled "
                f"slices {'on' if self.augment else 'off'}")


@contextmanager
def deterministic(seed: int, threads: int | None = None) -> Iterator[None]:
    """Seed torch's global generator, switch on deterministic algorithms and set the thread
    count for the block; the generator's state, the switch and the threads are restored after,
    so callers (and other tests in the process) find torch as they left it."""
    previous = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
                torch.get_num_threads())
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        torch.use_deterministic_algorithms(True, warn_only=True)
        if threads is not None:
            torch.set_num_threads(threads)
        try:
            yield
        finally:
            torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])
            torch.set_num_threads(previous[2])


def lesion_column(label_names: Sequence[str], values: np.ndarray) -> np.ndarray:
    """The "any lesion" column of a label matrix ``[..., n_labels]``: the ``any`` label when the
    list has it (the paper's key-slice setting), else whether any label is positive."""
    if "any" in label_names:
        return values[..., list(label_names).index("any")]
    return values.max(axis=-1)


def _strata(records: Sequence[StudyRecord]) -> tuple[np.ndarray, np.ndarray]:
    """Stratum (any lesion) and group (patient) per record, for the fold splitters."""
    strata = np.array([lesion_column(r.label_names, r.labels) for r in records], np.int64)
    return strata, np.array([r.group for r in records])


def _progress(progress: bool) -> bool | None:
    """tqdm's ``disable``: off when asked, else on only when stderr is a terminal."""
    return None if progress else True


def _train_items(batch: Sequence[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Batch for training: per-slice labels are not used, so records with and without them mix."""
    x, y, _ = collate([(x, y, None) for x, y, _ in batch])
    return x, y


def _eval_items(batch: Sequence[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]
                ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor | None]]:
    """Batch for evaluation: per-slice labels kept per item (some records may lack them)."""
    x, y, _ = collate([(x, y, None) for x, y, _ in batch])
    return x, y, [s for _, _, s in batch]


def _check_records(records: Sequence[StudyRecord], config: TrainConfig, what: str) -> None:
    if not records:
        raise ValueError(f"{what}: no records")
    wrong = sorted({r.label_names for r in records if r.label_names != config.labels})
    if wrong:
        raise ValueError(f"{what}: records carry labels {wrong[0]}, the configuration names {config.labels}")


def train_step(model: DrCT2, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor) -> DrCT2Loss:
    """One gradient step on a batch (``x`` [B, m, 3, S, S], ``y`` [B, L]); returns the loss parts,
    detached. The output (with its conv maps) is dropped before returning."""
    return _step(optimizer, model(x), y)


def _step(optimizer: torch.optim.Optimizer, output: DrCT2Output, y: torch.Tensor) -> DrCT2Loss:
    loss = drct2_loss(output, y)
    del output
    optimizer.zero_grad(set_to_none=True)
    loss.total.backward()
    optimizer.step()
    return DrCT2Loss(*(part.detach() for part in loss))


_Steps = Callable[[DrCT2, torch.optim.Optimizer], Iterator[tuple[DrCT2Loss, int]]]


def _image_batches(loader: DataLoader, config: TrainConfig) -> _Steps:
    """One epoch of steps on image batches (the whole network runs each step)."""
    def steps(model: DrCT2, optimizer: torch.optim.Optimizer) -> Iterator[tuple[DrCT2Loss, int]]:
        for x, y in loader:
            yield train_step(model, optimizer, x.to(config.device), y.to(config.device)), len(x)
    return steps


def _encoded_batches(dataset: SeriesDataset, encoded: Sequence[tuple[torch.Tensor, torch.Tensor]],
                     config: TrainConfig) -> _Steps:
    """One epoch of steps on the dataset's items built from vectors encoded once (frozen encoder):
    the same items, shuffled by a generator seeded like the image loader's."""
    generator = torch.Generator().manual_seed(config.seed)
    labels = [torch.from_numpy(r.labels.copy()) for r in dataset.records]

    def steps(model: DrCT2, optimizer: torch.optim.Optimizer) -> Iterator[tuple[DrCT2Loss, int]]:
        order = torch.randperm(len(dataset.items), generator=generator).tolist()
        for start in range(0, len(order), config.batch_size):
            items = [dataset.items[k] for k in order[start:start + config.batch_size]]
            index = [torch.from_numpy(idx) for _, idx in items]
            vectors = torch.stack([encoded[i][0][j] for (i, _), j in zip(items, index)]).to(config.device)
            zoomed = torch.stack([encoded[i][1][j] for (i, _), j in zip(items, index)]).to(config.device)
            y = torch.stack([labels[i] for i, _ in items]).to(config.device)
            yield _step(optimizer, model.decode(vectors, zoomed), y), len(items)
    return steps


@dataclass(frozen=True)
class Evaluation:
    """Metrics of a model on some records: classification from the fusion probabilities, and
    the key-slice tasks from the slice attention on the records with per-slice labels (``None``
    when none has them)."""

    classification: ClassificationMetrics
    key_slices: KeySliceResult | None

    def to_dict(self) -> dict[str, float]:
        """Flat ``name -> value`` for the model card (keys of both metrics' ``to_dict``)."""
        out = self.classification.to_dict()
        if self.key_slices is not None:
            out.update(self.key_slices.to_dict())
        return out

    def summary(self) -> str:
        """One line of the headline numbers (macro metrics, key-slice tasks), for logs and the CLI."""
        c = self.classification
        text = (f"macro P {c.precision_macro:.3f} R {c.recall_macro:.3f} F1 {c.f1_macro:.3f} "
                f"AUC {c.auc_macro:.3f} on {c.n_studies} series")
        if self.key_slices is not None:
            k = self.key_slices
            text += (f"; key slices easy {k.easy:.3f} (n={k.n_easy}) difficult {k.difficult:.3f} "
                     f"(n={k.n_difficult}) comprehensive {k.comprehensive:.3f}, top-5 lesion fraction "
                     f"{k.top5_lesion_fraction:.3f}")
        return text


@torch.inference_mode()
def evaluate(model: DrCT2, records: Sequence[StudyRecord], *, batch_size: int = 8, device: str = "cpu",
             progress: bool = True, desc: str = "evaluate") -> Evaluation:
    """Run ``model`` (in eval mode) on the base sampling of each record and score it."""
    cfg = model.config
    dataset = SeriesDataset(records, cfg.slices, cfg.input_size, augment=False)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0, collate_fn=_eval_items)
    was_training = model.training
    model.eval()
    probabilities, targets, scores, lesions = [], [], [], []
    try:
        for x, y, slices in tqdm(loader, desc=desc, unit="batch", leave=False, disable=_progress(progress)):
            output = model(x.to(device))
            probabilities.append(output.probabilities.cpu().numpy())
            attention = output.slice_attention.cpu().numpy()
            del output  # its conv maps are the largest tensors of the pass
            targets.append(y.numpy())
            for row, s in zip(attention, slices):
                if s is not None:
                    scores.append(row)
                    lesions.append(lesion_column(dataset.label_names, s.numpy()))
    finally:
        model.train(was_training)
    classification = classification_metrics(np.concatenate(probabilities), np.concatenate(targets),
                                            dataset.label_names)
    return Evaluation(classification, key_slice_tasks(scores, lesions) if scores else None)


@dataclass(frozen=True)
class TrainedModel:
    """A trained network, its validation metrics (``None`` without validation records) and the
    mean loss parts per epoch (``total``, ``primary``, ``aps``, ``fusion``)."""

    model: DrCT2
    network: DrCT2Config
    evaluation: Evaluation | None
    history: tuple[dict[str, float], ...]
    seconds: float


def train_once(records_train: Sequence[StudyRecord], records_val: Sequence[StudyRecord] | None,
               config: TrainConfig, *, progress: bool = True, desc: str = "train") -> TrainedModel:
    """Train a fresh network on ``records_train`` and evaluate it on ``records_val`` (if any).

    Deterministic given the records, ``config`` and its seed (see the module docstring).
    """
    _check_records(records_train, config, "training records")
    if records_val:
        _check_records(records_val, config, "validation records")
    network = config.network_config()
    started = time.perf_counter()
    with deterministic(config.seed, config.threads):
        model = DrCT2(network, backbone_weights=config.backbone_weights).to(config.device)
        dataset = SeriesDataset(records_train, network.slices, network.input_size, augment=config.augment,
                                seed=config.seed)
        stacks = None
        if config.pretrain_epochs:
            stacks = load_slices(records_train, network.input_size, progress=progress, desc=f"{desc}: load slices")
            pretrain_encoder(model, stacks, epochs=config.pretrain_epochs, lr=config.pretrain_lr, seed=config.seed,
                             device=config.device, progress=progress, desc=f"{desc}: pre-train encoder")
        optimizer = make_optimizer(model, config.primary_lr, config.aps_lr)
        log.info("%s: %d series (%d with augmentation), %s", desc, len(records_train), len(dataset),
                 config.describe(), extra={"series": len(records_train), "items": len(dataset)})
        if network.freeze_backbone:
            encoded = encode_records(model, records_train, stacks=stacks, device=config.device, progress=progress,
                                     desc=f"{desc}: encode slices")
            del stacks  # the images are no longer needed, only their vectors
            steps = _encoded_batches(dataset, encoded, config)
        else:
            loader = DataLoader(dataset, batch_size=config.batch_size, shuffle=True, num_workers=0,
                                generator=torch.Generator().manual_seed(config.seed), collate_fn=_train_items)
            steps = _image_batches(loader, config)
        history = []
        model.train()
        epochs = tqdm(range(config.epochs), desc=desc, unit="epoch", disable=_progress(progress))
        for epoch in epochs:
            sums = np.zeros(4)
            for loss, n in tqdm(steps(model, optimizer), desc=f"epoch {epoch + 1}", unit="batch", leave=False,
                                disable=_progress(progress)):
                sums += np.array([float(part) for part in loss]) * n
            means = dict(zip(DrCT2Loss._fields, (sums / len(dataset)).tolist()))
            history.append(means)
            epochs.set_postfix(loss=f"{means['total']:.4f}")
            log.info("%s epoch %d/%d: loss %.4f", desc, epoch + 1, config.epochs, means["total"],
                     extra={"epoch": epoch + 1, **means})
        evaluation = (evaluate(model, records_val, batch_size=config.batch_size, device=config.device,
                               progress=progress, desc=f"{desc}: validate") if records_val else None)
    seconds = time.perf_counter() - started
    if evaluation is not None:
        log.info("%s: %s (%.0f s)", desc, evaluation.summary(), seconds)
    return TrainedModel(model.eval(), network, evaluation, tuple(history), seconds)


@dataclass(frozen=True)
class CrossValidation:
    """Per-fold evaluations of :func:`cross_validate`, with the splits (indices into the records)."""

    splits: tuple[Split, ...]
    folds: tuple[Evaluation, ...]

    def mean(self) -> dict[str, float]:
        """Each metric averaged over the folds where it is defined (a fold leaves an undefined
        metric out of its ``to_dict``); counts (``n_studies``, ``support.*``, ``*.n``) are
        therefore per-fold means. Adds ``cv.folds``."""
        per_fold = [fold.to_dict() for fold in self.folds]
        keys = list(dict.fromkeys(k for d in per_fold for k in d))
        out = {k: float(np.mean([d[k] for d in per_fold if k in d])) for k in keys}
        out["cv.folds"] = float(len(self.folds))
        return out


def cross_validate(records: Sequence[StudyRecord], k: int, config: TrainConfig, *,
                   progress: bool = True) -> CrossValidation:
    """Train and evaluate on each of ``k`` folds (:func:`~neuroread.training.folds.kfold_splits`, seeded by
    ``config.seed``, stratified on the lesion label, patients (``StudyRecord.group``) kept whole)."""
    strata, groups = _strata(records)
    splits = kfold_splits(strata, k, config.seed, groups)
    folds = []
    for i, split in enumerate(splits, start=1):
        trained = train_once([records[j] for j in split.train], [records[j] for j in split.test], config,
                             progress=progress, desc=f"fold {i}/{k}")
        folds.append(trained.evaluation)
    return CrossValidation(tuple(splits), tuple(folds))


def describe_data(records: Sequence[StudyRecord], source: str) -> str:
    """The model card's data description: where the records come from, how many series and
    patients, and the study-level prevalence of each label."""
    labels = np.stack([r.labels for r in records])
    prevalence = ", ".join(f"{name} {int(n)}" for name, n in zip(records[0].label_names, labels.sum(axis=0)))
    with_slices = sum(r.slice_labels is not None for r in records)
    return (f"{source}: {len(records)} series of {len({r.group for r in records})} patients; positive series "
            f"per label: {prevalence}; {with_slices} series with per-slice labels")


@dataclass(frozen=True)
class TrainReport:
    """What :func:`train` wrote: the checkpoint, its SHA-256, the card's metrics and how they were
    obtained (a cross-validation, or the evaluation on the held-out split)."""

    path: Path
    sha256: str
    metrics: dict[str, float]
    training_data: str
    cross_validation: CrossValidation | None = None
    holdout: Evaluation | None = None
    seconds: float = 0.0
    history: tuple[dict[str, float], ...] = field(default=())


def train(records: Sequence[StudyRecord], config: TrainConfig, out: Path, *, source: str, folds: int = 5,
          demo: bool = False, progress: bool = True) -> TrainReport:
    """Train, measure and write a checkpoint to ``out``.

    ``folds >= 2``: ``folds``-fold cross-validation gives the card's metrics (means over the
    folds), then the saved model is trained on every record. ``folds == 1``: one held-out
    fifth (:func:`~neuroread.training.folds.holdout_split`) gives the metrics and the saved model is
    the one trained on the other four fifths. ``source`` says where the records come from
    (e.g. ``"RSNA stage_2_train.csv + /data/rsna"``); the card's ``training_data`` adds the
    counts, prevalences, training settings and how the metrics were obtained.
    """
    if isinstance(folds, bool) or not isinstance(folds, int) or folds < 1:
        raise ValueError(f"folds must be a positive integer (1: one held-out fifth), got {folds!r}")
    _check_records(records, config, "records")
    started = time.perf_counter()
    data = describe_data(records, source)
    cv: CrossValidation | None = None
    holdout: Evaluation | None = None
    if folds >= 2:
        cv = cross_validate(records, folds, config, progress=progress)
        final = train_once(records, None, config, progress=progress, desc="final model")
        metrics = cv.mean()
        per_fold = ", ".join(f"{e.classification.f1_macro:.3f}" for e in cv.folds)
        how = (f"Metrics: mean over {folds}-fold cross-validation (seed {config.seed}, stratified on the lesion "
               f"label, patients kept whole; macro-F1 per fold {per_fold}); weights trained on all series")
    else:
        strata, groups = _strata(records)
        if len(set(groups)) < 5:
            raise ValueError(f"a held-out fifth needs series of at least 5 patients, got {len(set(groups))}; "
                             "cross-validate instead (folds >= 2)")
        split = holdout_split(strata, config.seed, groups)
        final = train_once([records[j] for j in split.train], [records[j] for j in split.test], config,
                           progress=progress, desc="train")
        holdout = final.evaluation
        metrics = holdout.to_dict()
        how = (f"Metrics: held-out {len(split.test)} series (holdout_split seed {config.seed}, stratified on the "
               f"lesion label, patients kept whole); weights trained on the other {len(split.train)}")
    training_data = f"{data}. Training: {config.describe()}. {how}."
    architecture = final.network.to_dict()
    sha256 = save_checkpoint(out, model=config.model, config=final.network.to_dict(), labels=config.labels,
                             state_dict=final.model.state_dict(), architecture=architecture,
                             training_data=training_data, demo=demo, metrics=metrics)
    seconds = time.perf_counter() - started
    log.info("wrote %s (sha256 %s) in %.0f s", out, sha256, seconds, extra={"sha256": sha256})
    return TrainReport(Path(out), sha256, metrics, training_data, cv, holdout, seconds, final.history)
