"""DrCT2's architecture as a value: :class:`DrCT2Config`, the paper's and the demo presets.

A checkpoint's card carries :meth:`DrCT2Config.to_dict`, so the network a file was trained as is
rebuilt from the file alone (:mod:`neuroread.models.ct_hemorrhage.network` builds it).
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from torchvision.models.vgg import cfgs

from ..checkpoint import config_from_dict, config_to_dict

PAPER = "Wang, Fu, Li, Pei. Diagnosis after Zooming in (DrCT2). Medical Physics 2022, doi:10.1002/mp.15871"
VGG16_LAYOUT: tuple[int | str, ...] = tuple(cfgs["D"])
POOLINGS = ("flatten", "attention")


@dataclass(frozen=True)
class DrCT2Config:
    """The architecture of a DrCT2 network; a checkpoint's model card carries :meth:`to_dict`.

    ``slices`` is the number m of slices sampled per series (paper: 28 RSNA, 32 CQ500),
    ``key_slices`` the number m_key the APS network zooms in on (paper: 16), ``input_size`` the
    side of each slice (224) and ``zoom_size`` its side once zoomed (512). ``backbone`` is a
    torchvision VGG channel list (ints are 3×3 convolutions with ReLU, ``"M"`` a 2×2 max pool;
    the paper's is VGG16's, ``cfgs["D"]``). ``gru_hidden`` is the hidden size of each direction
    of both bidirectional GRUs, ``aps_fc`` the width of the APS network's fully connected layer
    after batch normalisation, ``head`` the widths of the first two of each head's three fully
    connected layers (the third has ``n_labels`` outputs), ``dropout`` the dropout rate after
    them. ``pooling`` is what the heads read: ``"flatten"`` (the weighted matrix flattened) or
    ``"attention"`` (its rows summed: the attention-weighted mean; see the module docstring).
    ``lesion_head`` adds the 1×1 lesion head of the module docstring (needs lesion masks to train).
    ``name`` says which configuration this is (``"paper"``, ``"demo"`` or another).
    """

    n_labels: int
    slices: int = 28
    key_slices: int = 16
    input_size: int = 224
    zoom_size: int = 512
    backbone: tuple[int | str, ...] = VGG16_LAYOUT
    backbone_batch_norm: bool = False
    freeze_backbone: bool = True
    gru_hidden: int = 256
    aps_fc: int = 512
    head: tuple[int, int] = (256, 128)
    dropout: float = 0.5
    pooling: str = "flatten"
    lesion_head: bool = False
    name: str = "custom"

    def __post_init__(self) -> None:
        for key in ("n_labels", "slices", "key_slices", "input_size", "zoom_size", "gru_hidden", "aps_fc"):
            value = getattr(self, key)
            if not _is_int(value) or value < 1:
                raise ValueError(f"DrCT2Config.{key} must be a positive integer, got {value!r}")
        for key in ("backbone_batch_norm", "freeze_backbone", "lesion_head"):
            if not isinstance(getattr(self, key), bool):
                raise ValueError(f"DrCT2Config.{key} must be true or false, got {getattr(self, key)!r}")
        if not isinstance(self.name, str) or not self.name.strip():
            raise ValueError(f"DrCT2Config.name must be a non-empty string, got {self.name!r}")
        # Batch normalisation in the APS network needs more than one value per feature in training.
        if not 2 <= self.key_slices <= self.slices:
            raise ValueError(f"DrCT2Config.key_slices must be in [2, slices={self.slices}], got {self.key_slices}")
        self._check_backbone()
        scale = 2 ** self.backbone.count("M")
        for key in ("input_size", "zoom_size"):
            if getattr(self, key) % scale:
                raise ValueError(
                    f"DrCT2Config.{key} must be a multiple of {scale} (the backbone halves it "
                    f"{self.backbone.count('M')} times and no max pool may drop a row), got {getattr(self, key)}"
                )
        if self.zoom_size < self.input_size:
            raise ValueError(f"DrCT2Config.zoom_size ({self.zoom_size}) must not be below input_size ({self.input_size})")
        if not (isinstance(self.head, tuple) and len(self.head) == 2 and all(_is_int(w) and w >= 1 for w in self.head)):
            raise ValueError(f"DrCT2Config.head must be two positive widths, got {self.head!r}")
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)) or not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"DrCT2Config.dropout must be in [0, 1), got {self.dropout!r}")
        if self.pooling not in POOLINGS:
            raise ValueError(f"DrCT2Config.pooling must be one of {POOLINGS}, got {self.pooling!r}")

    def _check_backbone(self) -> None:
        layout = self.backbone
        if not isinstance(layout, tuple) or not any(_is_int(c) for c in layout):
            raise ValueError(f"DrCT2Config.backbone must be a tuple of channel counts and 'M', got {layout!r}")
        bad = [c for c in layout if not (c == "M" or (_is_int(c) and c >= 1))]
        if bad:
            raise ValueError(f"DrCT2Config.backbone: entries must be positive channel counts or 'M', got {bad}")
        if layout[-1] != "M":
            raise ValueError(f"DrCT2Config.backbone must end with a max pool 'M' as VGG16's does, got {layout!r}")

    @property
    def features(self) -> int:
        """Width of one slice's feature vector: the channels of the last convolution (VGG16: 512)."""
        return [c for c in self.backbone if _is_int(c)][-1]

    @classmethod
    def paper(cls, n_labels: int, slices: int = 28) -> DrCT2Config:
        """The paper's configuration: frozen ImageNet VGG16, 224 zoomed to 512, 16 key slices.

        ``slices`` is 28 for RSNA-style series and 32 for CQ500-style ones. Not given by the
        paper and chosen here: GRU hidden size 256 per direction (so each step's output has
        VGG16's 512 dimensions), an APS fully connected layer of 512, heads of 256 and 128.
        """
        return cls(n_labels=n_labels, slices=slices, name="paper")

    @classmethod
    def demo(
        cls,
        n_labels: int,
        slices: int = 24,
        key_slices: int = 8,
        input_size: int = 128,
        zoom_size: int = 256,
        width_divisor: int = 8,
    ) -> DrCT2Config:
        """A smaller configuration for demo weights trained on this CPU from phantoms.

        The VGG16 layout with every channel count divided by ``width_divisor``, batch
        normalisation after each convolution (torchvision's VGG16-BN variant) and its fourth max
        pool left out, so that at 128 px the last feature maps (the spatial maps' grid) are 16×16
        (8 px per cell, 15 mm on a phantom) rather than 8×8; fewer slices (24, all of a small
        phantom's: the five key slices can then be any five) and a lower resolution (128 zoomed
        to 256: the paper's zoom-in, at about half the scale); heads on the attention-weighted
        mean of the slices (``pooling="attention"``, see the module docstring), and the lesion head.
        No ImageNet
        weights exist for this narrow encoder, so it is pre-trained on labelled phantom slices
        and their lesion masks in their place (:mod:`neuroread.training.recipes.ct_hemorrhage.stages`)
        and then frozen, as the paper freezes its ImageNet VGG16. Everything else is the paper's.

        (Trained end to end from scratch instead, on the same phantoms and CPU budget, it did not
        learn: held-out macro-F1 0.13, AUC 0.46.)
        """
        if not _is_int(width_divisor) or width_divisor < 1:
            raise ValueError(f"width_divisor must be a positive integer, got {width_divisor!r}")
        layout = [c if c == "M" else max(1, int(c) // width_divisor) for c in VGG16_LAYOUT]
        del layout[[i for i, c in enumerate(layout) if c == "M"][3]]  # the fourth max pool
        width = [c for c in layout if _is_int(c)][-1]
        return cls(
            n_labels=n_labels,
            slices=slices,
            key_slices=key_slices,
            input_size=input_size,
            zoom_size=zoom_size,
            backbone=tuple(layout),
            backbone_batch_norm=True,
            freeze_backbone=True,
            gru_hidden=max(1, width // 2),
            aps_fc=width,
            head=(width, max(1, width // 2)),
            pooling="attention",
            lesion_head=True,
            name="demo",
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields (tuples as lists), plus the paper; :meth:`from_dict` reads it back."""
        return config_to_dict(self, PAPER)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DrCT2Config:
        """The configuration :meth:`to_dict` wrote (e.g. read back from a model card); its ``paper`` note is skipped."""
        return config_from_dict(cls, data, required=("n_labels",))


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
