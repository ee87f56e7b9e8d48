"""How the Alzheimer's 3D CNN is trained: :class:`Settings` and the presets."""
from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from neuroread.models.ad_lrp.config import ADConfig
from neuroread.models.ad_lrp.model import CLASSES

PRESETS = ("paper", "demo")


@dataclass(frozen=True)
class Settings:
    """How to train (the paper gives none of these; the field's usual choices).

    ``network``: a preset (``"paper"``: :meth:`ADConfig.paper`, 1.5 mm; ``"demo"``:
    :meth:`ADConfig.demo`, 3 mm) or a dict of :class:`ADConfig` fields over the demo's (the
    paper's with ``preset: paper`` in it). ``epochs`` of ``batch_size`` series a step, Adam at
    ``lr`` with ``weight_decay`` (decoupled, AdamW) and cosine decay, cross-entropy; each series
    shifted by up to ``shift`` voxels of the grid along each axis and mirrored left-right at
    random (``flip``). ``threads``: torch CPU threads; ``device``: a torch device.
    """

    model: str = "ad-lrp"
    network: str | Mapping[str, Any] = "paper"
    epochs: int = 80
    batch_size: int = 8
    lr: float = 1e-3
    weight_decay: float = 1e-4
    shift: int = 2
    flip: bool = True
    seed: int = 0
    threads: int | None = None
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.model != "ad-lrp":
            raise ValueError(f"Settings.model: this recipe trains ad-lrp, got {self.model!r}")
        for key in ("epochs", "batch_size"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"Settings.{key} must be a positive integer, got {value!r}")
        if self.batch_size < 2:
            raise ValueError("Settings.batch_size must be at least 2 (batch normalisation over series)")
        for key in ("seed", "shift"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"Settings.{key} must be a non-negative integer, got {value!r}")
        if self.threads is not None and (isinstance(self.threads, bool) or not isinstance(self.threads, int)
                                         or self.threads < 1):
            raise ValueError(f"Settings.threads must be a positive integer or None, got {self.threads!r}")
        if isinstance(self.lr, bool) or not isinstance(self.lr, (int, float)) or not self.lr > 0:
            raise ValueError(f"Settings.lr must be a positive learning rate, got {self.lr!r}")
        if isinstance(self.weight_decay, bool) or not isinstance(self.weight_decay, (int, float)) \
                or self.weight_decay < 0:
            raise ValueError(f"Settings.weight_decay must be a number >= 0, got {self.weight_decay!r}")
        if not isinstance(self.flip, bool):
            raise ValueError(f"Settings.flip must be true or false, got {self.flip!r}")
        if isinstance(self.network, str) and self.network not in PRESETS:
            close = difflib.get_close_matches(self.network, PRESETS, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"Settings.network: unknown preset {self.network!r}{hint}; presets: "
                             f"{', '.join(PRESETS)}, or an ADConfig dict")
        self.network_config()  # refuses a bad dict, naming the key
        try:
            torch.device(self.device)
        except RuntimeError as err:
            raise ValueError(f"Settings.device: {self.device!r} is not a torch device ({err})") from err

    @property
    def labels(self) -> tuple[str, ...]:
        return CLASSES

    def network_config(self) -> ADConfig:
        if self.network == "paper":
            return ADConfig.paper()
        if self.network == "demo":
            return ADConfig.demo()
        data = dict(self.network)
        base = ADConfig.demo().to_dict() if data.pop("preset", "demo") == "demo" else ADConfig.paper().to_dict()
        base.pop("paper")
        return ADConfig.from_dict({**base, **data})

    def describe(self) -> str:
        """One line for the model card: the settings that shaped the weights."""
        net = self.network_config()
        return (f"{net.name} network ({len(net.widths)} blocks of 3x3x3 convolution, batch norm, ReLU and max pooling, "
                f"widths {list(net.widths)}, fully connected {net.hidden}, dropout {net.dropout:g}) on the MNI grid at "
                f"{net.voxel_mm:g} mm after an affine registration; {self.epochs} epochs, {self.batch_size} series a "
                f"step, AdamW lr {self.lr:g}, weight decay {self.weight_decay:g}, cosine decay, cross-entropy, shifts "
                f"up to {self.shift} voxels{', left-right mirroring' if self.flip else ''}, seed {self.seed}; "
                f"LRP {net.composite} with batch norm merged")
