"""Training the SWI microbleed detector and subtype MIL (cmb-svd): the recipe the shared loop runs.

The paper gives a Mask R-CNN for the microbleeds and a multi-instance learning network for the
subtype; the stages (detector, subtype, operating point) are in :mod:`.stages`, the data in
:mod:`.data`, the settings and presets in :mod:`.settings`. ``neuroread train cmb-svd --folds 5``
runs a cross-validation; held-out metrics are the paper's: per-lesion recall, false positives
per scan, IoU and Dice of the detected microbleeds, weighted AUC, precision and F1 of the
subtype with bootstrap intervals.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from neuroread.models import ModelCard, ModelSpec
from neuroread.models.cmb_svd.context import CONTEXT_FEATURES
from neuroread.models.cmb_svd.model import CLASSES, ENTRY, MicrobleedModel
from neuroread.models.cmb_svd.network import MicrobleedNet
from neuroread.training.datasets import StudyRecord
from neuroread.training.demo import DemoPlan

from . import data, stages
from .settings import PRESETS, Settings

__all__ = ["DEMO_PLAN", "RECIPE", "Recipe", "Settings"]


@dataclass(frozen=True)
class Recipe:
    """The microbleed network's training (``cmb-svd``)."""

    model: str = "cmb-svd"
    presets: tuple[str, ...] = PRESETS
    formats: tuple[str, ...] = data.FORMATS
    demo_plan: DemoPlan | None = None
    settings_class: type = Settings

    def spec(self) -> ModelSpec:
        return ENTRY.spec

    def settings(self, preset: str = "paper", **overrides: Any) -> Settings:
        """Settings of ``preset`` (``paper`` or ``demo``) with ``overrides`` (:class:`Settings` fields)."""
        return Settings(model=self.model, network=overrides.pop("network", preset), **overrides)

    def build(self, settings: Settings) -> MicrobleedNet:
        return MicrobleedNet(settings.network_config(), len(CONTEXT_FEATURES)).to(settings.device)

    def stages(self, net: MicrobleedNet, records: Sequence[StudyRecord], settings: Settings, *,
               progress: bool = True):
        return stages.stages(net, records, settings, progress=progress)

    def tune(self, net: MicrobleedNet, validation: Sequence[StudyRecord], settings: Settings, *,
             progress: bool = True) -> dict[str, float]:
        """The detection operating point on the validation studies (:func:`.stages.tune`)."""
        return stages.tune(net, validation, settings, progress=progress)

    def as_model(self, net: MicrobleedNet, settings: Settings, card: ModelCard) -> MicrobleedModel:
        return MicrobleedModel.from_network(net.eval(), card, device=settings.device)

    def checkpoint_config(self, net: MicrobleedNet, settings: Settings) -> dict[str, Any]:
        return net.config.to_dict()

    def outputs(self) -> tuple[str, ...]:
        return CLASSES

    def describe(self, settings: Settings) -> str:
        return settings.describe()

    def strata(self, records: Sequence[StudyRecord]) -> np.ndarray:
        """Stratum per record for the splits: its subtype."""
        return np.array([int(np.argmax(r.labels)) for r in records], np.int64)

    def read_records(self, path: Path, fmt: str, *, labels_csv: Path | None = None,
                     progress: bool = True) -> tuple[list[StudyRecord], str]:
        if labels_csv:
            raise ValueError("--labels-csv does not apply to cmb-svd (phantoms and manifests carry their labels)")
        return data.read_records(path, fmt, progress=progress)


# Sized for about 15 minutes of `neuroread train-demo cmb-svd` on a 2-core CPU (see the card).
DEMO_PLAN = DemoPlan(
    task="cmb-svd", studies=128, phantom_seed=20230401, size="full", heldout_studies=64, heldout_seed=20231011,
    settings={"epochs": 5, "batch_size": 8, "seed": 0, "threads": 2},
)
RECIPE = Recipe(demo_plan=DEMO_PLAN)
