"""The microbleed network's architecture as a value: :class:`CMBConfig`, paper and demo presets.

A checkpoint's card carries :meth:`CMBConfig.to_dict`, so the network a file was trained as is
rebuilt from the file alone (:mod:`neuroread.models.cmb_svd.network` builds it).
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..backbones import BLOCKS
from ..checkpoint import config_from_dict, config_to_dict

PAPER = ("Deep learning based on susceptibility-weighted MR sequence for detecting cerebral microbleeds and "
         "classifying cerebral small vessel disease (abstract): Mask R-CNN detection, multi-instance learning subtype")


@dataclass(frozen=True)
class CMBConfig:
    """The architecture of a :class:`~neuroread.models.cmb_svd.network.MicrobleedNet`.

    **Detector** (torchvision's Mask R-CNN): a ResNet trunk (``block``, ``layers``, ``widths``,
    ``strides`` as :class:`~neuroread.models.backbones.ResNetTrunk`) with torchvision's feature
    pyramid on the stages ``fpn_stages`` (1 = the stride-4 stage small lesions need) plus its
    max-pool level, ``fpn_channels`` wide; one anchor size per pyramid level
    (``anchor_sizes``, in pixels, times each of ``anchor_octaves``; square anchors: microbleeds
    are round); box head of two ``representation``-wide layers on 7×7 RoIAlign; mask head of
    ``mask_layers`` 3×3 convolutions on 14×14 RoIAlign. Slices arrive at ``pixel_mm`` per pixel
    on an ``input_size`` square canvas (the transform's ``min_size`` and ``max_size``, so it
    never resizes), three channels: the slice and its two neighbours (2.5D). At test time the
    RPN keeps ``rpn_pre_nms_test`` / ``rpn_post_nms_test`` proposals per level / image, and the
    heads at most ``detections_per_slice`` detections above ``score_floor``; the merged 3D
    candidates go through the false-positive filter (:mod:`.candidates`), and one is reported
    as a microbleed when its probability is ``detection_threshold`` or more (the operating
    point training chooses on its validation studies; without a fitted filter the probability
    is the best detection's score).

    **Subtype** (attention-based multiple-instance learning): each microbleed is encoded from
    its box-head representation (with ``mil_roi_features``), location class, size, template
    position and detector score into ``mil_hidden`` features; gated attention pools them; a
    linear layer on the pooled vector and the whole scan's standardised context (regional
    white-matter signal and counts per location class) gives one logit per subtype
    (``n_classes``).
    """

    n_classes: int = 3
    block: str = "bottleneck"
    layers: tuple[int, int, int, int] = (3, 4, 6, 3)
    widths: tuple[int, int, int, int] = (64, 128, 256, 512)
    strides: tuple[int, int, int, int] = (1, 2, 2, 2)
    fpn_stages: tuple[int, ...] = (1, 2, 3, 4)
    fpn_channels: int = 256
    anchor_sizes: tuple[int, ...] = (4, 8, 16, 32, 64)
    anchor_octaves: tuple[float, ...] = (1.0, 1.5)
    representation: int = 1024
    mask_layers: tuple[int, ...] = (256, 256, 256, 256)
    pixel_mm: float = 0.8
    input_size: int = 288
    rpn_pre_nms_test: int = 300
    rpn_post_nms_test: int = 100
    detections_per_slice: int = 20
    score_floor: float = 0.05
    detection_threshold: float = 0.5
    mil_hidden: int = 64
    mil_roi_features: bool = True
    dropout: float = 0.25
    name: str = "custom"

    def __post_init__(self) -> None:
        for key in ("n_classes", "fpn_channels", "representation", "input_size", "rpn_pre_nms_test",
                    "rpn_post_nms_test", "detections_per_slice", "mil_hidden"):
            value = getattr(self, key)
            if not _is_int(value) or value < 1:
                raise ValueError(f"CMBConfig.{key} must be a positive integer, got {value!r}")
        if self.block not in BLOCKS:
            raise ValueError(f"CMBConfig.block must be one of {BLOCKS}, got {self.block!r}")
        for key in ("layers", "widths", "strides"):
            value = getattr(self, key)
            if not (isinstance(value, tuple) and len(value) == 4 and all(_is_int(v) and v >= 1 for v in value)):
                raise ValueError(f"CMBConfig.{key} must be four positive integers, got {value!r}")
        stages = self.fpn_stages
        if not (isinstance(stages, tuple) and stages and list(stages) == sorted(set(stages))
                and all(_is_int(s) and 1 <= s <= 4 for s in stages)):
            raise ValueError(f"CMBConfig.fpn_stages must be distinct ascending stage numbers 1-4, got {stages!r}")
        if len(self.anchor_sizes) != len(stages) + 1 or not all(_is_int(s) and s >= 1 for s in self.anchor_sizes):
            raise ValueError(f"CMBConfig.anchor_sizes must be one positive size per pyramid level "
                             f"({len(stages) + 1}: the stages {stages} and the max-pool level), got {self.anchor_sizes!r}")
        if not self.anchor_octaves or not all(isinstance(o, (int, float)) and o > 0 for o in self.anchor_octaves):
            raise ValueError(f"CMBConfig.anchor_octaves must be positive numbers, got {self.anchor_octaves!r}")
        if not self.mask_layers or not all(_is_int(w) and w >= 1 for w in self.mask_layers):
            raise ValueError(f"CMBConfig.mask_layers must be positive widths, got {self.mask_layers!r}")
        if isinstance(self.pixel_mm, bool) or not isinstance(self.pixel_mm, (int, float)) or not 0.2 <= self.pixel_mm <= 3:
            raise ValueError(f"CMBConfig.pixel_mm must be in [0.2, 3] mm, got {self.pixel_mm!r}")
        if self.input_size % 32:
            raise ValueError(f"CMBConfig.input_size must be a multiple of 32, got {self.input_size}")
        for key in ("score_floor", "detection_threshold"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < value < 1.0:
                raise ValueError(f"CMBConfig.{key} must be in (0, 1), got {value!r}")
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)) or not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"CMBConfig.dropout must be in [0, 1), got {self.dropout!r}")
        if not isinstance(self.mil_roi_features, bool):
            raise ValueError(f"CMBConfig.mil_roi_features must be true or false, got {self.mil_roi_features!r}")
        if not isinstance(self.name, str) or not self.name.strip():
            raise ValueError(f"CMBConfig.name must be a non-empty string, got {self.name!r}")

    @property
    def instance_width(self) -> int:
        """Features per microbleed the MIL reads: the representation (if used) and the geometry."""
        from .network import GEOMETRY

        return (self.representation if self.mil_roi_features else 0) + len(GEOMETRY)

    @property
    def feature_widths(self) -> tuple[int, ...]:
        """Channels out of each pyramid stage (bottleneck stages: 4 × their width)."""
        factor = 4 if self.block == "bottleneck" else 1
        return tuple(self.widths[s - 1] * factor for s in self.fpn_stages)

    @classmethod
    def paper(cls) -> CMBConfig:
        """The paper configuration: Mask R-CNN with torchvision's ResNet-50-FPN and its head sizes
        (1024-wide box head, four 256-wide mask convolutions). Not in the abstract, chosen here:
        anchors of 4-64 px (96 px at the largest octave) instead of torchvision's 32-512 (a
        microbleed is 2-10 mm), 0.8 mm pixels on a 288 px canvas (230 mm), 2.5D input."""
        return cls(name="paper")

    @classmethod
    def demo(cls) -> CMBConfig:
        """A detector for demo weights trained on this CPU from phantoms (under 5 MB).

        ResNet-18's layout (basic blocks, two per stage) at narrow widths (16, 32, 64, 96), the
        pyramid on stages 1-3 (strides 4, 8, 16) plus max-pool (32) at 48 channels, anchors 4, 8,
        16 and 32 px; a 128-wide box head (the two fully connected layers dominate the count:
        48 × 7 × 7 × 128) and two 48-wide mask convolutions; a 32-wide MIL on each microbleed's
        geometry without its box-head representation: on the demo's 102 training bags the 128
        representation features overfit (held-out weighted AUC 0.80 with them, 0.85 without,
        measured with the first MIL on the held-out phantoms' annotated microbleeds; see the model card).
        """
        return cls(block="basic", layers=(2, 2, 2, 2), widths=(16, 32, 64, 96), strides=(1, 2, 2, 2),
                   fpn_stages=(1, 2, 3), fpn_channels=48, anchor_sizes=(4, 8, 16, 32), representation=128,
                   mask_layers=(48, 48), mil_hidden=32, mil_roi_features=False, name="demo")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields (tuples as lists), plus the paper; :meth:`from_dict` reads it back."""
        return config_to_dict(self, PAPER)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CMBConfig:
        """The configuration :meth:`to_dict` wrote; its ``paper`` note is skipped, unknown keys refused by name."""
        return config_from_dict(cls, data)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
