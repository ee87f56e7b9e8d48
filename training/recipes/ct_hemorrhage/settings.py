"""How DrCT2 is trained: :class:`Settings`, the paper's by default, and the demo preset."""
from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from neuroread.models import ModelRegistry, ModelSpec
from neuroread.models.ct_hemorrhage.model import ENTRIES, paper_config
from neuroread.models.ct_hemorrhage.network import DrCT2Config

PRESETS = ("paper", "demo")
PRECISIONS = ("auto", "fp32", "bf16")


def trainable() -> ModelRegistry:
    """The models this recipe trains (the head-CT hemorrhage ones), by name."""
    return ModelRegistry(ENTRIES)


def bf16_supported() -> bool:
    """Whether this CPU runs bfloat16 convolutions natively (oneDNN with AVX-512 BF16 or AMX):
    there mixed precision halves the encoder's training time; elsewhere it would be slower."""
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # an older or a CPU-less build
        return False


@dataclass(frozen=True)
class Settings:
    """How to train: the paper's settings by default (100 epochs, batch 32, its learning rates).

    ``model`` fixes the label set, in order (``ct-hemorrhage``: RSNA's six,
    ``ct-hemorrhage-cq500``: CQ500's nine). ``network`` is a preset (``"paper"``: the model's
    :func:`~neuroread.models.ct_hemorrhage.model.paper_config`; ``"demo"``:
    :meth:`DrCT2Config.demo`) or a :meth:`DrCT2Config.to_dict`-style dict (``n_labels`` may be
    left out). ``augment`` adds the series built from unsampled slices (the paper's data
    enhancement). ``balance`` draws training series with weights that give every label's
    positives as much weight as its negatives, up to 20 times (rare subtypes such as EDH are
    seen often). ``backbone_weights``: a local torchvision VGG16 file (for a frozen ImageNet
    backbone, the paper's). ``pretrain_epochs`` > 0 first trains the encoder on the labelled
    slices with Adam at ``pretrain_lr`` (one-cycle schedule) in batches of ``pretrain_batch``:
    per-slice labels, and, where the records carry lesion masks, the lesions' pixels with
    weight ``mask_weight`` (0: slice labels only); each epoch takes every slice with a lesion and
    a random ``negatives`` share of the others; ``None`` takes the preset's (demo 8, else 0).
    ``precision``: ``"bf16"`` runs the encoder's pre-training in bfloat16 autocast, ``"fp32"``
    does not, ``"auto"`` uses bf16 where the CPU runs it natively (:func:`bf16_supported`);
    inference is always float32. ``threads``: torch CPU threads while training; ``device``: a
    torch device (``"cuda"`` trains on a GPU).
    """

    model: str = "ct-hemorrhage"
    network: str | Mapping[str, Any] = "paper"
    epochs: int = 100
    batch_size: int = 32
    seed: int = 0
    threads: int | None = None
    augment: bool = True
    balance: bool = False
    primary_lr: float = 5e-4
    aps_lr: float = 3e-4
    backbone_weights: Path | None = None
    pretrain_epochs: int | None = None
    pretrain_lr: float = 3e-3
    pretrain_batch: int = 32
    mask_weight: float = 1.0
    negatives: float = 1.0
    precision: str = "auto"
    device: str = "cpu"

    def __post_init__(self) -> None:
        trainable().spec(self.model)  # an unknown name raises with the known ones
        for key in ("epochs", "batch_size", "pretrain_batch"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"Settings.{key} must be a positive integer, got {value!r}")
        if self.pretrain_epochs is None:
            preset = self.network if isinstance(self.network, str) else ""
            object.__setattr__(self, "pretrain_epochs", 8 if preset == "demo" else 0)
        for key in ("seed", "pretrain_epochs"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"Settings.{key} must be a non-negative integer, got {value!r}")
        if self.threads is not None and (isinstance(self.threads, bool) or not isinstance(self.threads, int)
                                         or self.threads < 1):
            raise ValueError(f"Settings.threads must be a positive integer or None, got {self.threads!r}")
        for key in ("primary_lr", "aps_lr", "pretrain_lr"):
            value = getattr(self, key)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
                raise ValueError(f"Settings.{key} must be a positive learning rate, got {value!r}")
        if isinstance(self.mask_weight, bool) or not isinstance(self.mask_weight, (int, float)) or self.mask_weight < 0:
            raise ValueError(f"Settings.mask_weight must be a number >= 0, got {self.mask_weight!r}")
        if isinstance(self.negatives, bool) or not isinstance(self.negatives, (int, float)) \
                or not 0 < self.negatives <= 1:
            raise ValueError(f"Settings.negatives must be in (0, 1], got {self.negatives!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"Settings.precision must be one of {PRECISIONS}, got {self.precision!r}")
        if isinstance(self.network, str) and self.network not in PRESETS:
            close = difflib.get_close_matches(self.network, PRESETS, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"Settings.network: unknown preset {self.network!r}{hint}; "
                             f"presets: {', '.join(PRESETS)}, or a DrCT2Config dict")
        if self.backbone_weights is not None:
            object.__setattr__(self, "backbone_weights", Path(self.backbone_weights))
        net = self.network_config()  # refuses a bad dict, naming the key
        if net.freeze_backbone and self.backbone_weights is None and not self.pretrain_epochs:
            raise ValueError(
                f"Settings.backbone_weights: the {net.name!r} network freezes its VGG backbone, which "
                "only makes sense once it has learnt something: give the local path of torchvision's vgg16 "
                "ImageNet file (CLI: --set backbone_weights=FILE), or pre-train it on per-slice labels "
                "(pretrain_epochs > 0, CLI: --set pretrain_epochs=N)")
        try:
            torch.device(self.device)
        except RuntimeError as err:  # what torch raises for an unknown device string
            raise ValueError(f"Settings.device: {self.device!r} is not a torch device ({err})") from err

    @property
    def spec(self) -> ModelSpec:
        return trainable().spec(self.model)

    @property
    def labels(self) -> tuple[str, ...]:
        """The model's label names, in its order (the dataset readers' keys)."""
        return tuple(lb.name for lb in self.spec.labels)

    @property
    def bf16(self) -> bool:
        """Whether the encoder's pre-training runs in bfloat16 autocast (``precision``)."""
        return self.precision == "bf16" or (self.precision == "auto" and bf16_supported()
                                            and torch.device(self.device).type == "cpu")

    def network_config(self) -> DrCT2Config:
        """The network these settings train."""
        n = len(self.labels)
        if self.network == "paper":
            return paper_config(self.spec)
        if self.network == "demo":
            return DrCT2Config.demo(n)
        data = dict(self.network)
        if data.setdefault("n_labels", n) != n:
            raise ValueError(f"Settings.network: n_labels={data['n_labels']} but {self.model} has {n} labels")
        return DrCT2Config.from_dict(data)

    def describe(self) -> str:
        """One line for the model card: the settings that shaped the weights."""
        net = self.network_config()
        encoder = "ImageNet VGG weights" if self.backbone_weights is not None else "initialised as torchvision does"
        if self.pretrain_epochs:
            what = "per-slice labels" + (f" and lesion masks (weight {self.mask_weight:g})" if self.mask_weight else "")
            what += f", every lesion slice and {self.negatives:.0%} of the others per epoch"
            encoder += (f", pre-trained {self.pretrain_epochs} epochs on {what} (Adam one-cycle lr {self.pretrain_lr:g}, "
                        f"batch {self.pretrain_batch}, {'bfloat16' if self.bf16 else 'float32'})")
        encoder += ", then frozen" if net.freeze_backbone else ", trained with the network"
        return (f"{net.name} network ({net.pooling} pooling, m={net.slices}, key slices {net.key_slices}, "
                f"{net.input_size} px zoomed to {net.zoom_size}); encoder {encoder}; {self.epochs} epochs, batch "
                f"{self.batch_size}, seed {self.seed}, Adam lr {self.primary_lr:g} (primary, fusion) / "
                f"{self.aps_lr:g} (APS), augmentation from unsampled slices {'on' if self.augment else 'off'}, "
                f"label-balanced sampling {'on' if self.balance else 'off'}")
