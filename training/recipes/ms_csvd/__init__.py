"""Training the FLAIR transfer attention network (MS vs cSVD): the recipe the shared loop runs.

The paper gives an ImageNet backbone, two attention modules, end-to-end training with focal
loss against the class imbalance and 5-fold cross-validation (balanced accuracy, AUC). Its
stages (proxy pre-training where no ImageNet weights stand in, then end to end) are in
:mod:`.stages`, the data in :mod:`.data`, the settings and presets in :mod:`.settings`.
``neuroread train ms-csvd --folds 5`` runs the cross-validation; the paper's comparison without
attention modules is ``--set 'network={"attention": false}'``.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from neuroread.models import ModelCard, ModelSpec
from neuroread.models.ms_csvd.model import CLASSES, ENTRY, MSCSVDModel
from neuroread.models.ms_csvd.network import TransferAttentionNet
from neuroread.training.datasets import StudyRecord
from neuroread.training.demo import DemoPlan

from . import data, stages
from .settings import PRESETS, Settings

__all__ = ["DEMO_PLAN", "RECIPE", "Recipe", "Settings"]


@dataclass(frozen=True)
class Recipe:
    """The transfer attention network's training (``ms-csvd``)."""

    model: str = "ms-csvd"
    presets: tuple[str, ...] = PRESETS
    formats: tuple[str, ...] = data.FORMATS
    demo_plan: DemoPlan | None = None
    settings_class: type = Settings

    def spec(self) -> ModelSpec:
        return ENTRY.spec

    def settings(self, preset: str = "paper", **overrides: Any) -> Settings:
        """Settings of ``preset`` (``paper`` or ``demo``) with ``overrides`` (:class:`Settings` fields)."""
        return Settings(model=self.model, network=overrides.pop("network", preset), **overrides)

    def build(self, settings: Settings) -> TransferAttentionNet:
        return TransferAttentionNet(settings.network_config(), backbone_weights=settings.backbone_weights).to(
            settings.device)

    def stages(self, net: TransferAttentionNet, records: Sequence[StudyRecord], settings: Settings, *,
               progress: bool = True):
        return stages.stages(net, records, settings, progress=progress)

    def as_model(self, net: TransferAttentionNet, settings: Settings, card: ModelCard) -> MSCSVDModel:
        return MSCSVDModel.from_network(net.eval(), card, device=settings.device)

    def checkpoint_config(self, net: TransferAttentionNet, settings: Settings) -> dict[str, Any]:
        return net.config.to_dict()

    def outputs(self) -> tuple[str, ...]:
        return CLASSES

    def describe(self, settings: Settings) -> str:
        return settings.describe()

    def strata(self, records: Sequence[StudyRecord]) -> np.ndarray:
        """Stratum per record for the splits: its class."""
        return np.array([int(np.argmax(r.labels)) for r in records], np.int64)

    def read_records(self, path: Path, fmt: str, *, labels_csv: Path | None = None,
                     progress: bool = True) -> tuple[list[StudyRecord], str]:
        if labels_csv:
            raise ValueError("--labels-csv does not apply to ms-csvd (phantoms and manifests carry their labels)")
        return data.read_records(path, fmt, progress=progress)


# Sized for at most 15 minutes of `neuroread train-demo ms-csvd` on a 2-core CPU (see the card).
DEMO_PLAN = DemoPlan(
    task="ms-csvd", studies=256, phantom_seed=20230301, heldout_studies=128, heldout_seed=20230917,
    proxy_studies=128, proxy_seed=20230505,
    settings={"epochs": 30, "batch_size": 8, "bag_slices": 8, "seed": 0, "threads": 2, "pretrain_epochs": 10},
)
RECIPE = Recipe(demo_plan=DEMO_PLAN)
