"""Training the Alzheimer's 3D CNN (ad-lrp): the recipe the shared loop runs.

The paper's abstract gives a 3D CNN on structural MRI, explained by LRP with relevance per
brain area; the training is the field's usual: series registered to MNI space, cross-entropy,
cross-validation with AUC and balanced accuracy (``neuroread train ad-lrp --folds 5``). The
stage and the card's relevance measurements are in :mod:`.stages`, the data in :mod:`.data`, the
settings and presets in :mod:`.settings`.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from neuroread.models import ModelCard, ModelSpec
from neuroread.models.ad_lrp.model import CLASSES, ENTRY, ADModel
from neuroread.models.ad_lrp.network import AlzheimerNet
from neuroread.training.datasets import StudyRecord
from neuroread.training.demo import DemoPlan

from . import data, stages
from .settings import PRESETS, Settings

__all__ = ["DEMO_PLAN", "RECIPE", "Recipe", "Settings"]


@dataclass(frozen=True)
class Recipe:
    """The Alzheimer's 3D CNN's training (``ad-lrp``)."""

    model: str = "ad-lrp"
    presets: tuple[str, ...] = PRESETS
    formats: tuple[str, ...] = data.FORMATS
    demo_plan: DemoPlan | None = None
    settings_class: type = Settings

    def spec(self) -> ModelSpec:
        return ENTRY.spec

    def settings(self, preset: str = "paper", **overrides: Any) -> Settings:
        """Settings of ``preset`` (``paper`` or ``demo``) with ``overrides`` (:class:`Settings` fields)."""
        return Settings(model=self.model, network=overrides.pop("network", preset), **overrides)

    def build(self, settings: Settings) -> AlzheimerNet:
        return AlzheimerNet(settings.network_config()).to(settings.device)

    def stages(self, net: AlzheimerNet, records: Sequence[StudyRecord], settings: Settings, *, progress: bool = True):
        return stages.stages(net, records, settings, progress=progress)

    def measure(self, net: AlzheimerNet, records: Sequence[StudyRecord], settings: Settings) -> dict[str, float]:
        """Relevance against the phantoms' changed regions, in controls, and its conservation
        (:func:`.stages.measure`)."""
        return stages.measure(net, records, settings)

    def as_model(self, net: AlzheimerNet, settings: Settings, card: ModelCard) -> ADModel:
        return ADModel.from_network(net.eval(), card, device=settings.device)

    def checkpoint_config(self, net: AlzheimerNet, settings: Settings) -> dict[str, Any]:
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
            raise ValueError("--labels-csv does not apply to ad-lrp (phantoms and manifests carry their labels)")
        return data.read_records(path, fmt, progress=progress)


# Sized for at most 15 minutes of `neuroread train-demo ad-lrp` on a 2-core CPU (see the card).
DEMO_PLAN = DemoPlan(
    task="ad-lrp", studies=256, phantom_seed=20190318, heldout_studies=128, heldout_seed=20190827,
    settings={"epochs": 80, "batch_size": 8, "lr": 1e-3, "seed": 0, "threads": 2},
)
RECIPE = Recipe(demo_plan=DEMO_PLAN)
