"""How the microbleed network is trained: :class:`Settings` and the presets."""
from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from neuroread.models.cmb_svd.config import CMBConfig
from neuroread.models.cmb_svd.model import CLASSES

PRESETS = ("paper", "demo")


@dataclass(frozen=True)
class Settings:
    """How to train (the abstract gives no training details; these are the field's usual ones).

    ``network``: a preset (``"paper"``: :meth:`CMBConfig.paper`, ``"demo"``: :meth:`CMBConfig.demo`)
    or a dict of :class:`CMBConfig` fields over the demo's (the paper's with ``preset: paper``).

    **Detector**: ``epochs`` passes over the training slices that hold a microbleed, each step
    ``batch_size`` crops of ``crop`` px (a microbleed of the slice inside; a share
    ``negative_fraction`` of the crops from slices without one, where the veins and
    calcifications are), left-right flips and a gain of ±10 %; torchvision's Mask R-CNN losses
    (RPN objectness and boxes, box classification and regression, mask), AdamW at ``lr`` with
    one-cycle decay, ``weight_decay``.

    **False-positive filter and operating point** (on the validation studies, which the detector
    never saw): every candidate the detector and the anatomical screen give is labelled by its
    overlap with an annotated microbleed; ``filter_trees`` boosted trees of at most
    ``filter_leaves`` leaves, learning rate ``filter_lr`` (scikit-learn's
    ``HistGradientBoostingClassifier``) learn which are microbleeds (``filter_trees = 0``: no
    filter, the detector's score decides). The operating point is the probability threshold of
    the highest lesion recall with at most ``max_fp_per_scan`` false positives per scan, chosen on
    out-of-fold probabilities (four folds of the validation studies), so it is not set on
    candidates the filter was fitted to; the filter kept is then fitted on all of them.

    **Subtype MIL**: bags of the training studies' annotated microbleeds (the box head's
    representation on each one's largest slice, its atlas location class after registration, its
    size, template position and detector score) and the scan's context; ``mil_epochs`` of
    cross-entropy, bags of ``mil_batch`` studies, AdamW at ``mil_lr``; each epoch keeps each
    microbleed with probability ``instance_keep`` (missed detections), and empties a bag with
    probability ``empty_bags`` (the context alone must still decide).

    ``threads``: torch CPU threads; ``device``: a torch device.
    """

    model: str = "cmb-svd"
    network: str | Mapping[str, Any] = "paper"
    epochs: int = 6
    batch_size: int = 8
    crop: int = 160
    negative_fraction: float = 0.5
    lr: float = 2e-3
    weight_decay: float = 1e-4
    max_fp_per_scan: float = 1.0
    filter_trees: int = 200
    filter_leaves: int = 15
    filter_lr: float = 0.05
    mil_epochs: int = 80
    mil_batch: int = 16
    mil_lr: float = 3e-3
    instance_keep: float = 0.85
    empty_bags: float = 0.05
    seed: int = 0
    threads: int | None = None
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.model != "cmb-svd":
            raise ValueError(f"Settings.model: this recipe trains cmb-svd, got {self.model!r}")
        for key in ("epochs", "batch_size", "crop", "mil_epochs", "mil_batch"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"Settings.{key} must be a positive integer, got {value!r}")
        if self.batch_size < 2:
            raise ValueError("Settings.batch_size must be at least 2 (batch normalisation over crops)")
        if self.crop % 32:
            raise ValueError(f"Settings.crop must be a multiple of 32, got {self.crop}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"Settings.seed must be a non-negative integer, got {self.seed!r}")
        if self.threads is not None and (isinstance(self.threads, bool) or not isinstance(self.threads, int)
                                         or self.threads < 1):
            raise ValueError(f"Settings.threads must be a positive integer or None, got {self.threads!r}")
        for key, low in (("filter_trees", 0), ("filter_leaves", 2)):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"Settings.{key} must be an integer >= {low}, got {value!r}")
        for key in ("lr", "mil_lr", "filter_lr"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"Settings.{key} must be a positive learning rate, got {value!r}")
        for key in ("weight_decay", "max_fp_per_scan"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"Settings.{key} must be a number >= 0, got {value!r}")
        for key in ("negative_fraction", "instance_keep", "empty_bags"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
                raise ValueError(f"Settings.{key} must be in [0, 1], got {value!r}")
        if isinstance(self.network, str) and self.network not in PRESETS:
            close = difflib.get_close_matches(self.network, PRESETS, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"Settings.network: unknown preset {self.network!r}{hint}; presets: "
                             f"{', '.join(PRESETS)}, or a CMBConfig dict")
        config = self.network_config()  # refuses a bad dict, naming the key
        if self.crop > config.input_size:
            raise ValueError(f"Settings.crop {self.crop} is larger than the network's canvas {config.input_size}")
        try:
            torch.device(self.device)
        except RuntimeError as err:
            raise ValueError(f"Settings.device: {self.device!r} is not a torch device ({err})") from err

    @property
    def labels(self) -> tuple[str, ...]:
        return CLASSES

    def network_config(self) -> CMBConfig:
        if self.network == "paper":
            return CMBConfig.paper()
        if self.network == "demo":
            return CMBConfig.demo()
        data = dict(self.network)
        base = CMBConfig.demo().to_dict() if data.pop("preset", "demo") == "demo" else CMBConfig.paper().to_dict()
        base.pop("paper")
        return CMBConfig.from_dict({**base, **data})

    def describe(self) -> str:
        """One line for the model card: the settings that shaped the weights."""
        net = self.network_config()
        return (f"{net.name} network (Mask R-CNN, {net.block} ResNet {list(net.layers)} widths {list(net.widths)}, "
                f"FPN on stages {list(net.fpn_stages)} at {net.fpn_channels} channels, anchors {list(net.anchor_sizes)} "
                f"px, 2.5D {net.input_size} px canvas at {net.pixel_mm:g} mm); detector {self.epochs} epochs over the "
                f"slices with microbleeds, {self.batch_size} crops of {self.crop} px a step "
                f"({self.negative_fraction:.0%} from slices without), AdamW lr {self.lr:g} one-cycle, weight decay "
                f"{self.weight_decay:g}; " + (
                    f"false-positive filter of {self.filter_trees} boosted trees ({self.filter_leaves} leaves, lr "
                    f"{self.filter_lr:g}) on the validation candidates, " if self.filter_trees else
                    "no false-positive filter, ") +
                f"operating point at <= {self.max_fp_per_scan:g} false positives per scan on validation (out of "
                f"fold); subtype MIL {self.mil_epochs} epochs, bags of {self.mil_batch}, AdamW lr {self.mil_lr:g}, "
                f"instances kept with p {self.instance_keep:g}, empty bags p {self.empty_bags:g}; seed {self.seed}")
