"""How MSFANet and the joint localiser are trained: :class:`Settings` and the presets."""
from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from neuroread.models.axspa_sij.config import MSFAConfig
from neuroread.models.axspa_sij.model import CLASSES

PRESETS = ("paper", "demo")
LOSSES = ("hybrid", "ce")


def _positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


@dataclass(frozen=True)
class Settings:
    """How to train (the paper's values where it gives them).

    ``network``: a preset (``"paper"``: :meth:`MSFAConfig.paper`, ``"demo"``:
    :meth:`MSFAConfig.demo`) or a dict of :class:`MSFAConfig` fields over the demo's (the
    paper's with ``preset: paper`` in it). The paper's ablations: ``{fusion: concat}`` (no MSFA),
    ``{sequences: [t1]}`` / ``{sequences: [fs]}`` (one sequence), and ``loss: ce`` (the Fuse
    branch's cross-entropy alone instead of the hybrid loss).

    **Localiser** (first): ``localiser_epochs`` of the joint localiser on the studies with joint
    positions, L1 distance in mm, Adam at ``localiser_lr`` with cosine decay, ``localiser_batch``
    studies a step. ``localiser_weights``: an axspa-sij checkpoint whose localiser is taken as it
    is instead (the stage is skipped).

    **MSFANet**: ``epochs`` over the studies, ``batch_size`` a step (the paper's 6), Adam at
    ``lr`` with ``weight_decay`` (the paper's 1e-4 and 1e-4; the loss weights are not decayed),
    cosine decay; ``loss``: ``hybrid`` (the paper's L = β_f·L_f + β_1·L_1 + β_2·L_2 with learned
    β = exp(-s), s a log-variance: uncertainty weighting) or ``ce``. Each step sees the crop
    shifted by up to ``shift_mm`` in each direction (the localiser's error at inference) and,
    with ``flip``, mirrored left-right at random. ``lesion_weight``: the weight of the deep
    supervision by lesion masks where the studies have them (:mod:`.stages`; 0: labels alone,
    as the paper). ``threads``: torch CPU threads; ``device``: a
    torch device.
    """

    model: str = "axspa-sij"
    network: str | Mapping[str, Any] = "paper"
    loss: str = "hybrid"
    epochs: int = 40
    batch_size: int = 6
    lr: float = 1e-4
    weight_decay: float = 1e-4
    shift_mm: float = 8.0
    lesion_weight: float = 1.0
    flip: bool = True
    localiser_epochs: int = 30
    localiser_lr: float = 2e-3
    localiser_batch: int = 8
    localiser_weights: Path | None = None
    seed: int = 0
    threads: int | None = None
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.model != "axspa-sij":
            raise ValueError(f"Settings.model: this recipe trains axspa-sij, got {self.model!r}")
        for key in ("epochs", "batch_size", "localiser_batch"):
            if not _positive_int(getattr(self, key)):
                raise ValueError(f"Settings.{key} must be a positive integer, got {getattr(self, key)!r}")
        for key in ("seed", "localiser_epochs"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"Settings.{key} must be a non-negative integer, got {value!r}")
        if self.batch_size < 2:
            raise ValueError("Settings.batch_size must be at least 2 (batch normalisation over studies)")
        if self.threads is not None and not _positive_int(self.threads):
            raise ValueError(f"Settings.threads must be a positive integer or None, got {self.threads!r}")
        for key in ("lr", "localiser_lr"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"Settings.{key} must be a positive learning rate, got {value!r}")
        for key in ("weight_decay", "shift_mm", "lesion_weight"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"Settings.{key} must be a number >= 0, got {value!r}")
        if self.shift_mm > 40:
            raise ValueError(f"Settings.shift_mm must be at most 40 mm (the crop would leave the joints), "
                             f"got {self.shift_mm!r}")
        if not isinstance(self.flip, bool):
            raise ValueError(f"Settings.flip must be true or false, got {self.flip!r}")
        if self.loss not in LOSSES:
            close = difflib.get_close_matches(str(self.loss), LOSSES, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"Settings.loss: unknown loss {self.loss!r}{hint}; losses: {', '.join(LOSSES)}")
        if isinstance(self.network, str) and self.network not in PRESETS:
            close = difflib.get_close_matches(self.network, PRESETS, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"Settings.network: unknown preset {self.network!r}{hint}; presets: "
                             f"{', '.join(PRESETS)}, or an MSFAConfig dict")
        if self.localiser_weights is not None:
            object.__setattr__(self, "localiser_weights", Path(self.localiser_weights))
            if not self.localiser_weights.is_file():
                raise ValueError(f"Settings.localiser_weights: {self.localiser_weights} is not a file")
        self.network_config()  # refuses a bad dict, naming the key
        try:
            torch.device(self.device)
        except RuntimeError as err:
            raise ValueError(f"Settings.device: {self.device!r} is not a torch device ({err})") from err

    @property
    def labels(self) -> tuple[str, ...]:
        return CLASSES

    def network_config(self) -> MSFAConfig:
        if self.network == "paper":
            return MSFAConfig.paper()
        if self.network == "demo":
            return MSFAConfig.demo()
        data = dict(self.network)
        base = MSFAConfig.demo().to_dict() if data.pop("preset", "demo") == "demo" else MSFAConfig.paper().to_dict()
        base.pop("paper", None)
        if "name" not in data:
            base["name"] = "custom"
        return MSFAConfig.from_dict({**base, **data})

    def describe(self) -> str:
        """One line for the model card: the settings that shaped the weights."""
        net = self.network_config()
        fusion = (f"two MSFA modules, the {net.query.upper()} features querying" if net.fusion == "msfa"
                  else "concatenation instead of MSFA (ablation)")
        if net.evidence:
            fusion += ", each head also reading its branch's lesion evidence"
        sequences = " + ".join(net.sequences) if len(net.sequences) == 2 else f"{net.sequences[0]} only (ablation)"
        loss = ("hybrid loss, β = exp(-s) learned per branch (uncertainty weighting)" if self.loss == "hybrid"
                else "the Fuse branch's cross-entropy only (ablation)")
        localiser = (f"taken from {self.localiser_weights.name}" if self.localiser_weights else
                     f"{self.localiser_epochs} epochs, Adam lr {self.localiser_lr:g} cosine, batch {self.localiser_batch}, "
                     "L1 distance in mm to the truth joint centres")
        return (f"{net.name} MSFANet ({net.input_shape[0]}×{net.input_shape[1]}×{net.input_shape[2]} voxels of "
                f"{net.voxel_mm[0]:g}×{net.voxel_mm[1]:g}×{net.voxel_mm[2]:g} mm, widths {list(net.widths)}, d "
                f"{net.attention_dim}, {fusion}, {sequences}); localiser {localiser}; MSFANet {self.epochs} epochs, "
                f"batch {self.batch_size}, Adam lr {self.lr:g} cosine, weight decay {self.weight_decay:g}, {loss}, "
                f"crop shifted up to {self.shift_mm:g} mm{', left-right flips' if self.flip else ''}, "
                f"{f'deep supervision by lesion masks (weight {self.lesion_weight:g})' if self.lesion_weight else 'labels only'}"
                f", seed {self.seed}")
