"""The training loop every model shares, driven by its recipe.

A model's **recipe** (:class:`Recipe`, one module per model in :mod:`neuroread.training.recipes`)
says what is particular to it: its network presets, how to build the network, its training
**stages** (each an optimizer, a number of epochs, the batches of an epoch and the loss of a
batch: e.g. DrCT2 pre-trains its encoder on slices, then trains the rest on vectors encoded
once), how to wrap a trained network as the model the node runs (so evaluation goes through
the same ``predict``), and its demo plan. This module does the rest, the same for every model:

- :func:`deterministic`: seeded, deterministic algorithms, a fixed thread count, all restored
  afterwards, so on one CPU the same data, settings and seed give bit-identical weights;
- :func:`run_stages`: the epochs of each stage with progress bars, loss history and logging;
- :func:`fit`: a network trained on some records; on validation records, the per-label
  thresholds that maximise F1 are chosen (:mod:`neuroread.training.thresholds`) and stored, and
  a recipe with a ``tune(net, validation, settings, progress=...)`` method first sets its own
  operating points there (e.g. a detector's score threshold, kept in the network's configuration),
  and one with a ``measure(net, records, settings)`` method adds its own metrics wherever the
  card's are measured (e.g. the joint localiser's error in mm);
- :func:`train`: cross-validation (``folds >= 2``: mean metrics over the folds, then a final
  network trained on every record with a validation fifth for the thresholds) or one held-out
  fifth (``folds == 1``), optionally scored on an extra held-out set (fresh phantoms), and the
  checkpoint written with its card: the command and settings that made it, the data, the
  metrics and how they were obtained, the thresholds.

Every evaluation runs the recipe's model through :func:`neuroread.training.evaluate.evaluate`:
the card's metrics are what the node would produce.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from tqdm import tqdm

from neuroread.models import Model, ModelSpec
from neuroread.models.checkpoint import save_checkpoint
from neuroread.training.datasets import StudyRecord
from neuroread.training.evaluate import collect, metrics
from neuroread.training.folds import holdout_split, kfold_splits
from neuroread.training.thresholds import choose_thresholds

log = logging.getLogger(__name__)


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


@dataclass
class Stage:
    """One phase of training: ``epochs`` passes over ``batches(epoch)``, each batch's
    ``loss(batch)`` (a dict of scalar tensors whose ``"total"`` carries the gradient, with the
    batch's size as ``"n"``) minimised by ``optimizer`` (with ``scheduler`` stepped per batch
    when given). ``start`` runs before the first epoch (e.g. encode slices with a frozen
    encoder), ``finish`` after the last (e.g. freeze what was trained)."""

    name: str
    epochs: int
    optimizer: Callable[[], torch.optim.Optimizer]
    batches: Callable[[int], Iterable[Any]]
    loss: Callable[[Any], dict[str, torch.Tensor]]
    start: Callable[[], None] = lambda: None
    finish: Callable[[], None] = lambda: None
    scheduler: Callable[[torch.optim.Optimizer, int], Any] | None = None
    steps_per_epoch: Callable[[], int] | None = None


def run_stages(stages: Sequence[Stage], *, progress: bool = True, desc: str = "train") -> list[dict[str, float]]:
    """Run each stage's epochs; returns one row per epoch (stage, epoch, mean loss parts)."""
    history: list[dict[str, float]] = []
    for stage in stages:
        if stage.epochs < 1:
            continue
        stage.start()
        optimizer = stage.optimizer()
        scheduler = None
        if stage.scheduler is not None:
            steps = stage.steps_per_epoch() if stage.steps_per_epoch else None
            scheduler = stage.scheduler(optimizer, stage.epochs * steps if steps else stage.epochs)
        bar = tqdm(range(stage.epochs), desc=f"{desc}: {stage.name}", unit="epoch", disable=None if progress else True)
        for epoch in bar:
            sums: dict[str, float] = {}
            count = 0
            for batch in tqdm(stage.batches(epoch), desc=f"epoch {epoch + 1}", unit="batch", leave=False,
                              disable=None if progress else True):
                parts = stage.loss(batch)
                n = int(parts.pop("n", 1))
                optimizer.zero_grad(set_to_none=True)
                parts["total"].backward()
                optimizer.step()
                if scheduler is not None:
                    scheduler.step()
                for key, value in parts.items():
                    sums[key] = sums.get(key, 0.0) + float(value.detach()) * n
                count += n
            row = {"stage": stage.name, "epoch": epoch + 1, **{k: v / max(count, 1) for k, v in sums.items()}}
            history.append(row)
            bar.set_postfix(loss=f"{row.get('total', float('nan')):.4f}")
            log.info("%s %s epoch %d/%d: loss %.4f", desc, stage.name, epoch + 1, stage.epochs,
                     row.get("total", float("nan")), extra={"stage": stage.name, "epoch": epoch + 1})
        stage.finish()
    return history


class Recipe(Protocol):
    """What a model's training needs to say (see the module docstring)."""

    model: str
    presets: tuple[str, ...]

    def spec(self) -> ModelSpec: ...

    def settings(self, preset: str, **overrides: Any) -> Any: ...

    def build(self, settings: Any) -> torch.nn.Module: ...

    def stages(self, net: torch.nn.Module, records: Sequence[StudyRecord], settings: Any) -> list[Stage]: ...

    def as_model(self, net: torch.nn.Module, settings: Any, card: Any) -> Model: ...

    def checkpoint_config(self, net: torch.nn.Module, settings: Any) -> dict[str, Any]: ...

    def outputs(self) -> tuple[str, ...]: ...

    def describe(self, settings: Any) -> str: ...

    def strata(self, records: Sequence[StudyRecord]) -> np.ndarray: ...


@dataclass
class Trained:
    """A network from :func:`fit`, its thresholds (chosen on validation records, else 0.5 each),
    the validation metrics at those thresholds (empty without validation records), the loss
    history and the time it took."""

    net: torch.nn.Module
    settings: Any
    thresholds: dict[str, float]
    validation: dict[str, float]
    history: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0


def model_of(recipe: Recipe, net: torch.nn.Module, settings: Any) -> Model:
    """The recipe's model around a trained ``net`` (for evaluation through its ``predict``)."""
    from neuroread.models import ModelCard

    return recipe.as_model(net, settings, ModelCard({}, "0" * 64, "(in training)", demo=True))


def fit(recipe: Recipe, settings: Any, records: Sequence[StudyRecord], validation: Sequence[StudyRecord] = (), *,
        progress: bool = True, desc: str = "train", score_validation: bool = True) -> Trained:
    """Train a fresh network on ``records``; on ``validation`` choose the thresholds and score.

    ``score_validation=False`` leaves the validation metrics out when nothing reads them (a
    held-out set gives the card's): the validation records then serve only the thresholds (and
    the recipe's ``tune``), and a model without labels is not run on them a second time.
    Deterministic given the records, the settings and their seed (:func:`deterministic`).
    """
    if not records:
        raise ValueError(f"{desc}: no training records")
    started = time.perf_counter()
    with deterministic(settings.seed, settings.threads):
        net = recipe.build(settings)
        history = run_stages(recipe.stages(net, records, settings), progress=progress, desc=desc)
        net.eval()
        labels = [lb.name for lb in recipe.spec().labels]
        thresholds = {name: 0.5 for name in labels}
        scores: dict[str, float] = {}
        if validation and hasattr(recipe, "tune"):  # a recipe's own operating points (e.g. a detection threshold)
            recipe.tune(net, validation, settings, progress=progress)
        if validation and (labels or score_validation):
            col = collect(model_of(recipe, net, settings), validation, progress=progress, desc=f"{desc}: validate")
            if labels and col.probabilities:
                thresholds = choose_thresholds(np.stack(col.probabilities), np.stack(col.targets), labels)
                col.thresholds = [np.array([thresholds[n] for n in labels])] * len(col.thresholds)
            scores = metrics(col) if score_validation else {}
    seconds = time.perf_counter() - started
    if scores:
        log.info("%s: validation %s (%.0f s)", desc, summary(scores), seconds)
    return Trained(net, settings, thresholds, scores, history, seconds)


def summary(m: Mapping[str, float]) -> str:
    """The headline numbers of a metrics dict, one line."""
    keys = ("f1_macro", "auc_macro", "key_slice.difficult", "key_slice.top5_lesion_fraction", "pointing.hit_rate")
    parts = [f"{k} {m[k]:.3f}" for k in keys if k in m]
    parts += [f"{k} {v:.3f}" for k, v in m.items() if k.endswith((".balanced_accuracy", ".auc"))]
    return ", ".join(parts) + (f" on {int(m['n_studies'])} series" if "n_studies" in m else "")


def _measure(recipe: Recipe, net: torch.nn.Module, records: Sequence[StudyRecord], settings: Any) -> dict[str, float]:
    """A recipe's own measurements of ``net`` on ``records`` (e.g. axspa-sij's localiser error),
    where it has a ``measure`` method: what the model's outputs alone cannot show."""
    return dict(recipe.measure(net, records, settings)) if hasattr(recipe, "measure") and records else {}


def _scores(recipe: Recipe, trained: Trained, records: Sequence[StudyRecord], *, progress: bool,
            desc: str) -> dict[str, float]:
    """The card's metrics of a trained network on ``records`` at its thresholds, with the recipe's own."""
    out = metrics(collect(model_of(recipe, trained.net, trained.settings), records, thresholds=trained.thresholds,
                          progress=progress, desc=desc))
    return {**out, **_measure(recipe, trained.net, records, trained.settings)}


@dataclass(frozen=True)
class TrainReport:
    """What :func:`train` wrote: the checkpoint, its SHA-256, the card's metrics and thresholds."""

    path: Path
    sha256: str
    metrics: dict[str, float]
    thresholds: dict[str, float]
    training_data: str
    folds: tuple[dict[str, float], ...] = ()
    seconds: float = 0.0
    history: tuple[dict[str, float], ...] = ()


def describe_data(records: Sequence[StudyRecord], source: str) -> str:
    """The card's data description: where the records come from, how many series and patients,
    and the study-level prevalence of each label."""
    labels = np.stack([r.labels for r in records])
    prevalence = ", ".join(f"{name} {int(n)}" for name, n in zip(records[0].label_names, labels.sum(axis=0)))
    with_slices = sum(r.slice_labels is not None for r in records)
    return (f"{source}: {len(records)} series of {len({r.group for r in records})} patients; positive series "
            f"per label: {prevalence}; {with_slices} series with per-slice labels")


def _split(recipe: Recipe, records: Sequence[StudyRecord], seed: int) -> tuple[list, list]:
    strata = recipe.strata(records)
    groups = np.array([r.group for r in records])
    per_class = {int(c): len(set(groups[strata == c])) for c in np.unique(strata)}
    if len(per_class) < 2 or min(per_class.values()) < 5:
        said = ", ".join(f"{n} of class {c}" for c, n in sorted(per_class.items()))
        raise ValueError(f"a validation fifth needs at least 5 patients of each class (stratum) of the split, "
                         f"got {said}; give more data (or train with folds >= 2 on more series)")
    split = holdout_split(strata, seed, groups)
    return [records[i] for i in split.train], [records[i] for i in split.test]


def train(recipe: Recipe, settings: Any, records: Sequence[StudyRecord], out: Path, *, source: str, folds: int = 5,
          demo: bool = False, heldout: Sequence[StudyRecord] = (), heldout_source: str = "",
          command: str = "", progress: bool = True, half: bool = False) -> TrainReport:
    """Train, measure and write a checkpoint to ``out`` (see the module docstring).

    The saved network is trained on four fifths of ``records`` (of all of them but a validation
    fifth with ``folds >= 2``), its thresholds chosen on the remaining fifth. Metrics: with
    ``heldout`` records, on them (e.g. fresh phantoms of another seed); else the mean over
    ``folds``-fold cross-validation (``folds >= 2``) or the validation fifth's (``folds == 1``,
    where thresholds and metrics then share the fifth: the card says so).
    """
    if isinstance(folds, bool) or not isinstance(folds, int) or folds < 1:
        raise ValueError(f"folds must be a positive integer (1: one held-out fifth), got {folds!r}")
    if not records:
        raise ValueError("train: no records")
    started = time.perf_counter()
    per_fold: list[dict[str, float]] = []
    if folds >= 2:
        strata = recipe.strata(records)
        for i, split in enumerate(kfold_splits(strata, folds, settings.seed, np.array([r.group for r in records])),
                                  start=1):
            train_part = [records[j] for j in split.train]
            inner_train, inner_val = _split(recipe, train_part, settings.seed)
            fold = fit(recipe, settings, inner_train, inner_val, progress=progress, desc=f"fold {i}/{folds}",
                       score_validation=False)  # a fold is scored on its test part
            per_fold.append(_scores(recipe, fold, [records[j] for j in split.test], progress=progress,
                                    desc=f"fold {i}/{folds}: test"))
    train_part, validation = _split(recipe, records, settings.seed)
    final = fit(recipe, settings, train_part, validation, progress=progress, desc="train",
                score_validation=not heldout and not per_fold)
    if heldout:
        scores = _scores(recipe, final, heldout, progress=progress, desc="held-out")
        how = (f"Metrics: {len(heldout)} held-out series never seen in training or threshold choice "
               f"({heldout_source or 'held-out set'})")
    elif per_fold:
        keys = list(dict.fromkeys(k for d in per_fold for k in d))
        scores = {k: float(np.mean([d[k] for d in per_fold if k in d])) for k in keys}
        scores["cv.folds"] = float(folds)
        how = (f"Metrics: mean over {folds}-fold cross-validation (seed {settings.seed}, stratified, patients kept "
               "whole; thresholds chosen inside each fold)")
    else:
        scores = {**final.validation, **_measure(recipe, final.net, validation, settings)}
        how = (f"Metrics: the validation fifth ({len(validation)} series), the same series the thresholds were "
               "chosen on (optimistic; give held-out data or folds >= 2 for an unbiased figure)")
    thresholds = final.thresholds
    training_data = (f"{describe_data(records, source)}. Training: {recipe.describe(settings)}; weights trained on "
                     f"{len(train_part)} series, thresholds chosen on a validation fifth of {len(validation)} "
                     f"(max F1 per label). {how}." + (f" Command: {command}." if command else ""))
    config = recipe.checkpoint_config(final.net, settings)
    sha256 = save_checkpoint(out, model=recipe.model, config=config, labels=recipe.outputs(),
                             state_dict=final.net.state_dict(), architecture=config, training_data=training_data,
                             demo=demo, metrics=scores, thresholds=thresholds, half=half)
    seconds = time.perf_counter() - started
    log.info("wrote %s (sha256 %s) in %.0f s: %s", out, sha256, seconds, summary(scores))
    return TrainReport(Path(out), sha256, scores, thresholds, training_data, tuple(per_fold), seconds,
                       tuple(final.history))
