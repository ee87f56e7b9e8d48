"""How the transfer attention network is trained: :class:`Settings` and the presets."""
from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from neuroread.models.ms_csvd.config import TANConfig
from neuroread.models.ms_csvd.model import CLASSES

PRESETS = ("paper", "demo")


@dataclass(frozen=True)
class Settings:
    """How to train (the demo's values where the paper gives none; it gives none but focal loss).

    ``network``: a preset (``"paper"``: :meth:`TANConfig.paper`, ``"demo"``: :meth:`TANConfig.demo`)
    or a dict of :class:`TANConfig` fields that override the demo's (the paper's with
    ``preset: paper`` in it); ``{attention: false}`` gives the paper's comparison without
    attention modules. ``backbone_weights``: a local torchvision ResNet file
    (the paper's ImageNet ResNet-50). ``pretrain_epochs`` > 0 first trains the backbone on the
    proxy task (:mod:`.stages`) at ``pretrain_lr`` in batches of ``pretrain_batch`` slices, on
    the phantom or manifest folder ``pretrain_data`` (its studies' per-slice lesion labels and
    lesion masks; ``None``: the training records themselves); ``None`` takes the preset's (demo 6,
    paper 0: ImageNet stands in). Then ``epochs`` of end-to-end training on the diagnosis:
    ``batch_size`` series per step, each a random ``bag_slices`` of its brain slices (all at
    inference), left-right flips, Adam at ``lr`` (``backbone_lr`` for a backbone that was
    pre-trained), cosine decay, focal loss with ``gamma`` and α from the class frequencies
    (``alpha: false``: no α). ``threads``: torch CPU threads; ``device``: a torch device.
    """

    model: str = "ms-csvd"
    network: str | Mapping[str, Any] = "paper"
    epochs: int = 30
    batch_size: int = 8
    bag_slices: int = 8
    lr: float = 1e-3
    backbone_lr: float = 3e-4
    weight_decay: float = 1e-4
    gamma: float = 2.0
    alpha: bool = True
    seed: int = 0
    threads: int | None = None
    backbone_weights: Path | None = None
    pretrain_epochs: int | None = None
    pretrain_lr: float = 3e-3
    pretrain_batch: int = 32
    pretrain_data: Path | None = None
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.model != "ms-csvd":
            raise ValueError(f"Settings.model: this recipe trains ms-csvd, got {self.model!r}")
        if self.pretrain_epochs is None:
            object.__setattr__(self, "pretrain_epochs", 6 if self.network == "demo" else 0)
        for key in ("epochs", "batch_size", "bag_slices", "pretrain_batch"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"Settings.{key} must be a positive integer, got {value!r}")
        for key in ("seed", "pretrain_epochs"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"Settings.{key} must be a non-negative integer, got {value!r}")
        if self.batch_size < 2:
            raise ValueError("Settings.batch_size must be at least 2 (batch normalisation over series)")
        if self.threads is not None and (isinstance(self.threads, bool) or not isinstance(self.threads, int)
                                         or self.threads < 1):
            raise ValueError(f"Settings.threads must be a positive integer or None, got {self.threads!r}")
        for key in ("lr", "backbone_lr", "pretrain_lr"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"Settings.{key} must be a positive learning rate, got {value!r}")
        for key in ("weight_decay", "gamma"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"Settings.{key} must be a number >= 0, got {value!r}")
        if not isinstance(self.alpha, bool):
            raise ValueError(f"Settings.alpha must be true or false, got {self.alpha!r}")
        if isinstance(self.network, str) and self.network not in PRESETS:
            close = difflib.get_close_matches(self.network, PRESETS, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"Settings.network: unknown preset {self.network!r}{hint}; presets: "
                             f"{', '.join(PRESETS)}, or a TANConfig dict")
        for key in ("backbone_weights", "pretrain_data"):
            if getattr(self, key) is not None:
                object.__setattr__(self, key, Path(getattr(self, key)))
        if self.pretrain_data is not None and not self.pretrain_data.is_dir():
            raise ValueError(f"Settings.pretrain_data: {self.pretrain_data} is not a folder of studies")
        self.network_config()  # refuses a bad dict, naming the key
        try:
            torch.device(self.device)
        except RuntimeError as err:
            raise ValueError(f"Settings.device: {self.device!r} is not a torch device ({err})") from err

    @property
    def labels(self) -> tuple[str, ...]:
        return CLASSES

    def network_config(self) -> TANConfig:
        if self.network == "paper":
            return TANConfig.paper()
        if self.network == "demo":
            return TANConfig.demo()
        data = dict(self.network)
        base = TANConfig.demo().to_dict() if data.pop("preset", "demo") == "demo" else TANConfig.paper().to_dict()
        base.pop("paper")
        return TANConfig.from_dict({**base, **data})

    def describe(self) -> str:
        """One line for the model card: the settings that shaped the weights."""
        net = self.network_config()
        backbone = ("ImageNet ResNet weights" if self.backbone_weights is not None else "initialised as torchvision does")
        if self.pretrain_epochs:
            source = f"phantoms under {self.pretrain_data.name}" if self.pretrain_data else "the training series"
            backbone += (f", pre-trained {self.pretrain_epochs} epochs on the proxy task (per-slice lesion presence "
                         f"and lesion cells, {source}; Adam one-cycle lr {self.pretrain_lr:g}, batch {self.pretrain_batch})")
        attention = "channel + spatial attention (CBAM), attention-weighted slice pooling" if net.attention else \
            "no attention modules (average pooling of cells and slices)"
        return (f"{net.name} network ({net.block} ResNet {list(net.layers)} widths {list(net.widths)}, "
                f"{net.input_size} px, {attention}); backbone {backbone}; {self.epochs} epochs end to end, "
                f"{self.batch_size} series a step of {self.bag_slices} random brain slices each, Adam lr {self.lr:g} "
                f"(backbone {self.backbone_lr if self.pretrain_epochs or self.backbone_weights else self.lr:g}), "
                f"cosine decay, weight decay {self.weight_decay:g}, focal loss gamma {self.gamma:g}"
                f"{' with alpha from the class frequencies' if self.alpha else ''}, seed {self.seed}")
