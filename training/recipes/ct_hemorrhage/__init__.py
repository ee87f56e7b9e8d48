"""Training the head-CT hemorrhage network (DrCT2): the recipe the shared loop runs.

The paper's recipe (Wang et al., Medical Physics 2022, section VI.A.1): fixed-length sampling
with the unsampled slices as extra training series, Adam with 0.0005 for the primary and fusion
networks and 0.0003 for the APS network, the loss of eq. 11-13, 100 epochs, k-fold
cross-validation (k = 10 for CQ500, 5 for RSNA) and the macro-F1 as the main metric
(:mod:`.settings`). Its stages (encoder pre-training where no ImageNet weights stand in, then the
rest of DrCT2 on vectors encoded once) are in :mod:`.stages`; its data in :mod:`.data`.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from neuroread.models import ModelCard, ModelSpec
from neuroread.models.ct_hemorrhage.model import HemorrhageModel
from neuroread.models.ct_hemorrhage.network import DrCT2
from neuroread.training.datasets import StudyRecord
from neuroread.training.demo import DemoPlan

from . import data, stages
from .settings import PRESETS, Settings, trainable

__all__ = ["RECIPE", "Recipe", "Settings"]


def lesion_column(label_names: Sequence[str], values: np.ndarray) -> np.ndarray:
    """The "any lesion" column of a label matrix ``[..., n_labels]``: the ``any`` label when the
    list has it (the paper's key-slice setting), else whether any label is positive."""
    if "any" in label_names:
        return values[..., list(label_names).index("any")]
    return values.max(axis=-1)


@dataclass(frozen=True)
class Recipe:
    """DrCT2's training for one of the head-CT models (``ct-hemorrhage`` or ``ct-hemorrhage-cq500``)."""

    model: str
    presets: tuple[str, ...] = PRESETS
    formats: tuple[str, ...] = data.FORMATS
    demo_plan: DemoPlan | None = None
    settings_class: type = Settings

    def spec(self) -> ModelSpec:
        return trainable().spec(self.model)

    def settings(self, preset: str = "paper", **overrides: Any) -> Settings:
        """Settings of ``preset`` (``paper`` or ``demo``) with ``overrides`` (:class:`Settings` fields)."""
        return Settings(model=self.model, network=overrides.pop("network", preset), **overrides)

    def build(self, settings: Settings) -> DrCT2:
        return DrCT2(settings.network_config(), backbone_weights=settings.backbone_weights).to(settings.device)

    def stages(self, net: DrCT2, records: Sequence[StudyRecord], settings: Settings, *, progress: bool = True):
        return stages.stages(net, records, settings, progress=progress)

    def as_model(self, net: DrCT2, settings: Settings, card: ModelCard) -> HemorrhageModel:
        return HemorrhageModel.from_network(self.spec(), net.eval(), card, device=settings.device)

    def checkpoint_config(self, net: DrCT2, settings: Settings) -> dict[str, Any]:
        return net.config.to_dict()

    def outputs(self) -> tuple[str, ...]:
        return tuple(lb.name for lb in self.spec().labels)

    def describe(self, settings: Settings) -> str:
        return settings.describe()

    def strata(self, records: Sequence[StudyRecord]) -> np.ndarray:
        """Stratum per record for the splits: any lesion."""
        return np.array([lesion_column(r.label_names, r.labels) for r in records], np.int64)

    def read_records(self, path: Path, fmt: str, *, labels_csv: Path | None = None,
                     progress: bool = True) -> tuple[list[StudyRecord], str]:
        return data.read_records(path, fmt, self.outputs(), labels_csv=labels_csv, progress=progress)


# Sized for at most 15 minutes of `neuroread train-demo ct-hemorrhage` on a 2-core CPU (see the card).
DEMO_PLAN = DemoPlan(
    task="ct-hemorrhage", studies=512, phantom_seed=20220601, heldout_studies=160, heldout_seed=20221107,
    settings={"epochs": 40, "batch_size": 8, "seed": 0, "threads": 2, "balance": True, "pretrain_epochs": 8,
              "negatives": 0.5},
)
RECIPE = Recipe("ct-hemorrhage", demo_plan=DEMO_PLAN)
RECIPE_CQ500 = Recipe("ct-hemorrhage-cq500", demo_plan=DEMO_PLAN)
