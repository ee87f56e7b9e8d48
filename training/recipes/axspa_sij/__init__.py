"""Training MSFANet and its joint localiser (axspa-sij): the recipe the shared loop runs.

The paper trains MSFANet on both sequences cropped around a radiologist's region of interest,
with the hybrid loss, Adam (lr 1e-4, weight decay 1e-4), batch 6, 4-fold cross-validation. A
node has no radiologist, so a joint localiser is trained first on the same studies' joint
positions. Stages in :mod:`.stages`, data in :mod:`.data`, settings and presets in
:mod:`.settings`. ``neuroread train axspa-sij --folds 4`` runs the paper's cross-validation; its
ablations are settings: ``--set 'network={"fusion": "concat"}'`` (no MSFA), ``--set loss=ce``,
``--set 'network={"sequences": ["t1"]}'`` (or ``["fs"]``).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from neuroread.models import ModelCard, ModelSpec
from neuroread.models.axspa_sij.model import CLASSES, ENTRY, AxSpAModel, SacroiliacNet
from neuroread.training.datasets import StudyRecord
from neuroread.training.demo import DemoPlan

from . import data, stages
from .settings import PRESETS, Settings

__all__ = ["DEMO_PLAN", "RECIPE", "Recipe", "Settings"]


@dataclass(frozen=True)
class Recipe:
    """MSFANet's training (``axspa-sij``)."""

    model: str = "axspa-sij"
    presets: tuple[str, ...] = PRESETS
    formats: tuple[str, ...] = data.FORMATS
    demo_plan: DemoPlan | None = None
    settings_class: type = Settings

    def spec(self) -> ModelSpec:
        return ENTRY.spec

    def settings(self, preset: str = "paper", **overrides: Any) -> Settings:
        """Settings of ``preset`` (``paper`` or ``demo``) with ``overrides`` (:class:`Settings` fields)."""
        return Settings(model=self.model, network=overrides.pop("network", preset), **overrides)

    def build(self, settings: Settings) -> SacroiliacNet:
        return SacroiliacNet(settings.network_config()).to(settings.device)

    def stages(self, net: SacroiliacNet, records: Sequence[StudyRecord], settings: Settings, *,
               progress: bool = True):
        return stages.stages(net, records, settings, progress=progress)

    def measure(self, net: SacroiliacNet, records: Sequence[StudyRecord], settings: Settings) -> dict[str, float]:
        """The localiser's error and the loss weights (:func:`.stages.measure`)."""
        return stages.measure(net, records, settings)

    def as_model(self, net: SacroiliacNet, settings: Settings, card: ModelCard) -> AxSpAModel:
        return AxSpAModel.from_network(net.eval(), card, device=settings.device)

    def checkpoint_config(self, net: SacroiliacNet, settings: Settings) -> dict[str, Any]:
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
            raise ValueError("--labels-csv does not apply to axspa-sij (phantoms and manifests carry their labels)")
        return data.read_records(path, fmt, progress=progress)


# Sized for at most 15 minutes of `neuroread train-demo axspa-sij` on a 2-core CPU (see the card).
DEMO_PLAN = DemoPlan(
    task="axspa-sij", studies=256, phantom_seed=20230601, heldout_studies=128, heldout_seed=20231107,
    settings={"epochs": 20, "batch_size": 6, "lr": 1e-3, "localiser_epochs": 15, "seed": 0, "threads": 2},
)
RECIPE = Recipe(demo_plan=DEMO_PLAN)
