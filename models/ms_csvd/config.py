"""The transfer attention network's architecture as a value: :class:`TANConfig`, paper and demo presets.

A checkpoint's card carries :meth:`TANConfig.to_dict`, so the network a file was trained as is
rebuilt from the file alone (:mod:`neuroread.models.ms_csvd.network` builds it).
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..checkpoint import config_from_dict, config_to_dict

PAPER = ("Improving the classification of multiple sclerosis and cerebral small vessel disease with interpretable "
         "transfer attention neural network (abstract): pre-trained CNN, two attention modules, focal loss")
BLOCKS = ("basic", "bottleneck")
RESNET50 = dict(block="bottleneck", layers=(3, 4, 6, 3), widths=(64, 128, 256, 512), strides=(1, 2, 2, 2))


@dataclass(frozen=True)
class TANConfig:
    """The architecture of a transfer attention network (:class:`~neuroread.models.ms_csvd.network.TransferAttentionNet`).

    The backbone is torchvision's ResNet (``block`` ``"basic"`` or ``"bottleneck"``, ``layers``
    blocks per stage, ``widths`` the stages' base widths, ``strides`` the stages' strides; a
    bottleneck stage outputs 4× its width). With ResNet-50's values (:data:`RESNET50`) the
    module names are torchvision's, so an ImageNet ``resnet50`` state dict loads as it is.
    ``input_size`` is the side of each slice fed to it. ``attention`` adds the two attention
    modules (channel, then spatial: CBAM) and the attention-weighted slice pooling; without them
    (the paper's comparison) each slice is average-pooled and the slices are averaged.
    ``reduction`` is the channel attention's bottleneck ratio (CBAM: 16), ``spatial_kernel`` the
    spatial attention's convolution size (CBAM: 7), ``pool_hidden`` the width of the slice
    pooling's scoring layer, ``max_slices`` the most brain slices one series contributes
    (uniformly sampled beyond it), ``dropout`` the rate before the classifier.
    """

    n_classes: int = 2
    block: str = "bottleneck"
    layers: tuple[int, int, int, int] = (3, 4, 6, 3)
    widths: tuple[int, int, int, int] = (64, 128, 256, 512)
    strides: tuple[int, int, int, int] = (1, 2, 2, 2)
    input_size: int = 224
    attention: bool = True
    reduction: int = 16
    spatial_kernel: int = 7
    pool_hidden: int = 128
    max_slices: int = 32
    dropout: float = 0.25
    name: str = "custom"

    def __post_init__(self) -> None:
        for key in ("n_classes", "input_size", "reduction", "pool_hidden", "max_slices"):
            value = getattr(self, key)
            if not _is_int(value) or value < 1:
                raise ValueError(f"TANConfig.{key} must be a positive integer, got {value!r}")
        if self.n_classes < 2:
            raise ValueError(f"TANConfig.n_classes must be at least 2, got {self.n_classes}")
        if self.block not in BLOCKS:
            raise ValueError(f"TANConfig.block must be one of {BLOCKS}, got {self.block!r}")
        for key in ("layers", "widths", "strides"):
            value = getattr(self, key)
            if not (isinstance(value, tuple) and len(value) == 4 and all(_is_int(v) and v >= 1 for v in value)):
                raise ValueError(f"TANConfig.{key} must be four positive integers, got {value!r}")
        if any(s not in (1, 2) for s in self.strides):
            raise ValueError(f"TANConfig.strides must be 1 or 2 each, got {self.strides!r}")
        if not _is_int(self.spatial_kernel) or self.spatial_kernel < 1 or self.spatial_kernel % 2 == 0:
            raise ValueError(f"TANConfig.spatial_kernel must be a positive odd integer, got {self.spatial_kernel!r}")
        if not isinstance(self.attention, bool):
            raise ValueError(f"TANConfig.attention must be true or false, got {self.attention!r}")
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)) or not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"TANConfig.dropout must be in [0, 1), got {self.dropout!r}")
        if self.input_size % self.stride:
            raise ValueError(f"TANConfig.input_size must be a multiple of the backbone's stride {self.stride}, "
                             f"got {self.input_size}")
        if not isinstance(self.name, str) or not self.name.strip():
            raise ValueError(f"TANConfig.name must be a non-empty string, got {self.name!r}")

    @property
    def stride(self) -> int:
        """How many input pixels one cell of the last feature maps spans (stem 4 × the stages' strides)."""
        out = 4
        for s in self.strides:
            out *= s
        return out

    @property
    def features(self) -> int:
        """Channels of the backbone's last feature maps (bottleneck stages: 4 × their width)."""
        return self.widths[-1] * (4 if self.block == "bottleneck" else 1)

    @property
    def grid(self) -> int:
        """Side of the last feature maps (and of the spatial attention map) for one input slice."""
        return self.input_size // self.stride

    @property
    def is_resnet50(self) -> bool:
        return all(getattr(self, k) == v for k, v in RESNET50.items())

    @classmethod
    def paper(cls) -> TANConfig:
        """The paper configuration: ImageNet ResNet-50 at 224 px, CBAM after its last stage.

        The abstract names "a pre-trained convolutional neural network" and two attention
        modules; ResNet-50 is the issue's (and the field's usual) choice. Not given and chosen
        here: CBAM's reduction 16 and 7×7 spatial kernel, slice pooling with a 128-wide scoring
        layer, dropout 0.25, up to 32 brain slices per series.
        """
        return cls(name="paper")

    @classmethod
    def demo(cls) -> TANConfig:
        """A network for demo weights trained on this CPU from phantoms (under 5 MB).

        torchvision's ResNet-18 layout (basic blocks, two per stage) at narrow widths (16, 32,
        48, 64), on 160 px slices, with its last two stages at stride 1 so the attention map is
        20×20 (8 px a cell, about 11.5 mm on a phantom) rather than ResNet's 5×5; CBAM's
        reduction 4 (16 would leave 4 hidden units for 64 channels), 24 brain slices at most.
        Measured here (2 cores, a training step with its backward pass, at 128 px): 4.4 ms a
        slice, against 12.9 ms at a quarter of ResNet-18's widths (16, 32, 64, 128) with the same
        strides. At 128 px (16×16 maps, 14 mm cells) the attention's peak fell on a lesion in 68 %
        of the held-out key slices that hold one, missing by a median 7 mm; at 160 px in 83 %.
        """
        return cls(block="basic", layers=(2, 2, 2, 2), widths=(16, 32, 48, 64), strides=(1, 2, 1, 1),
                   input_size=160, reduction=4, pool_hidden=64, max_slices=24, name="demo")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields (tuples as lists), plus the paper; :meth:`from_dict` reads it back."""
        return config_to_dict(self, PAPER)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TANConfig:
        """The configuration :meth:`to_dict` wrote; its ``paper`` note is skipped, unknown keys refused by name."""
        return config_from_dict(cls, data)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
