"""MSFANet's architecture as a value: :class:`MSFAConfig`, paper and demo presets.

A checkpoint's card carries :meth:`MSFAConfig.to_dict`, so the network a file was trained as is
rebuilt from the file alone (:mod:`neuroread.models.axspa_sij.network` builds it).
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..checkpoint import config_from_dict, config_to_dict

PAPER = ("Diagnosis of HLA-B27-negative axial spondyloarthritis with a 3D multi-sequence relation attention "
         "network (MSFANet) on sacroiliac T1WI and fat-suppressed MRI: shared module, T1/FS/Fuse branches, MSFA, "
         "hybrid loss, Grad-CAM")

FUSIONS = ("msfa", "concat")
# The sacroiliac lesions the ASAS definitions read (active: bone-marrow oedema; structural:
# erosion, fat metaplasia, sclerosis; and degenerative osteophytes), as typed masks name them:
# the channels of the lesion head (:class:`~neuroread.models.axspa_sij.network.MSFANet`).
LESION_KINDS = ("bme", "erosion", "fat", "sclerosis", "osteophyte")
POOLINGS = ("avg", "max", "avgmax")
SEQUENCES = (("t1", "fs"), ("t1",), ("fs",))
QUERIES = ("t1", "fs")


@dataclass(frozen=True)
class MSFAConfig:
    """The architecture of an :class:`~neuroread.models.axspa_sij.network.MSFANet`.

    The input is both sequences on one grid, ``input_shape`` (slices, rows, columns; the
    paper's 24 × 320 × 224) of ``voxel_mm`` (slice, row, column; the paper resamples every
    case to one resolution without saying which: 3 × 0.7 × 0.7 mm here, the usual sacroiliac
    protocol, so the crop spans 72 × 224 × 157 mm), intensities in [0, 1], stacked as two
    channels (T1, FS).

    - **Shallow shared module** (weights shared by the two sequences): a stem convolution
      (3×3×3, ``widths[0]`` channels, stride 1×2×2) and two residual blocks (each two 3×3×3
      convolutions with batch norm and ReLU, as the paper's), the first at stride 1×2×2 to
      ``widths[1]`` channels.
    - **Class-aware module**: a T1 branch and an FS branch of two residual blocks each, the
      first at stride 1×2×2 to ``widths[2]`` channels (1/8 in-plane, every slice kept: the
      paper keeps the 24 slices of its crop), and a Fuse branch of one residual block and two
      MSFA modules (see the network's docstring for how they are wired).
    - **MSFA**: ``Q`` from the first input, ``K`` and ``V`` from the second, by 1×1×1
      convolutions; ``attention_dim`` channels for ``Q`` and ``K`` (the paper's ``d``), ``V``
      as wide as the input; ``Z_f = α·softmax(Q Kᵀ/√d) V + Z_1`` with a learned ``α``.
      ``query``: the sequence whose features are ``Z_1`` (they query the other's, and carry the
      Fuse branch's residual path); the paper does not say which: ``"t1"`` (the structure
      asks where the lesions are) or ``"fs"`` (the lesions ask for their anatomy).
    - Each branch: global pooling (``pooling``: ``"avg"``, the paper's global average pooling;
      ``"max"``; or ``"avgmax"``, both concatenated), ``dropout``, a linear layer to
      ``n_classes`` logits; the Fuse branch's is the decision.
    - ``evidence`` (not in the paper): the network carries the **lesion head**, a 1×1×1
      convolution shared by the branches that reads each branch's last features as "a lesion
      of this kind in this cell", one channel per :data:`LESION_KINDS` (trained by deep
      supervision from typed lesion masks), and each branch's linear layer also reads its
      lesion evidence: per kind, ``log(1 + Σ sigmoid)`` over the cells (a soft count) and the
      largest sigmoid. ``False``: the paper's decision from the pooled features alone (the
      lesion head then lives beside the network, for training only).

    ``localiser_width``: the first width of the joint localiser
    (:class:`~neuroread.models.axspa_sij.localiser.JointLocaliser`) that travels in the same
    checkpoint.

    The paper's ablations are configurations: ``fusion="concat"`` fuses by concatenation and a
    1×1×1 convolution where the MSFA modules were (its Baseline); ``sequences=("t1",)`` or
    ``("fs",)`` feeds one sequence to both paths (its single-sequence models in the same
    framework).
    """

    n_classes: int = 2
    input_shape: tuple[int, int, int] = (24, 320, 224)
    voxel_mm: tuple[float, float, float] = (3.0, 0.7, 0.7)
    widths: tuple[int, int, int] = (16, 32, 64)
    attention_dim: int = 16
    dropout: float = 0.3
    fusion: str = "msfa"
    pooling: str = "avg"
    evidence: bool = False
    query: str = "t1"
    sequences: tuple[str, ...] = ("t1", "fs")
    localiser_width: int = 8
    name: str = "custom"

    def __post_init__(self) -> None:
        for key in ("n_classes", "attention_dim", "localiser_width"):
            value = getattr(self, key)
            if not _is_int(value) or value < 1:
                raise ValueError(f"MSFAConfig.{key} must be a positive integer, got {value!r}")
        if self.n_classes < 2:
            raise ValueError(f"MSFAConfig.n_classes must be at least 2, got {self.n_classes}")
        shape = self.input_shape
        if not (isinstance(shape, tuple) and len(shape) == 3 and all(_is_int(v) and v >= 1 for v in shape)):
            raise ValueError(f"MSFAConfig.input_shape must be three positive integers (slices, rows, columns), "
                             f"got {shape!r}")
        if shape[1] % 8 or shape[2] % 8:
            raise ValueError(f"MSFAConfig.input_shape: rows and columns must be multiples of 8 (three in-plane "
                             f"halvings), got {shape!r}")
        voxel = self.voxel_mm
        if not (isinstance(voxel, tuple) and len(voxel) == 3 and all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and 0.1 <= v <= 10 for v in voxel)):
            raise ValueError(f"MSFAConfig.voxel_mm must be three sizes in [0.1, 10] mm (slice, row, column), "
                             f"got {voxel!r}")
        if not (isinstance(self.widths, tuple) and len(self.widths) == 3
                and all(_is_int(v) and v >= 1 for v in self.widths)):
            raise ValueError(f"MSFAConfig.widths must be three positive integers, got {self.widths!r}")
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)) or not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"MSFAConfig.dropout must be in [0, 1), got {self.dropout!r}")
        if self.fusion not in FUSIONS:
            raise ValueError(f"MSFAConfig.fusion must be one of {FUSIONS}, got {self.fusion!r}")
        if self.pooling not in POOLINGS:
            raise ValueError(f"MSFAConfig.pooling must be one of {POOLINGS}, got {self.pooling!r}")
        if not isinstance(self.evidence, bool):
            raise ValueError(f"MSFAConfig.evidence must be true or false, got {self.evidence!r}")
        if self.query not in QUERIES:
            raise ValueError(f"MSFAConfig.query must be one of {QUERIES}, got {self.query!r}")
        if self.sequences not in SEQUENCES:
            raise ValueError(f"MSFAConfig.sequences must be one of {SEQUENCES}, got {self.sequences!r}")
        if not isinstance(self.name, str) or not self.name.strip():
            raise ValueError(f"MSFAConfig.name must be a non-empty string, got {self.name!r}")

    @property
    def tokens(self) -> int:
        """Tokens an MSFA attends over: every slice, 1/8 of the rows and of the columns."""
        d, h, w = self.input_shape
        return d * (h // 8) * (w // 8)

    @classmethod
    def paper(cls) -> MSFAConfig:
        """The paper's input (24 × 320 × 224). Channel widths are not in the paper; chosen here:
        16, 32, 64 (a 3D network trained on 375 patients on an 8 GB GPU), ``d`` = 16."""
        return cls(name="paper")

    @classmethod
    def demo(cls) -> MSFAConfig:
        """A network for demo weights trained on this CPU from phantoms (under 5 MB): the paper's
        field of view (72 × 224 × 168 mm) at 12 × 128 × 96 voxels of 6 × 1.75 × 1.75 mm (the
        small phantoms' resolution; a quarter of the paper's tokens per MSFA, which is most of a
        training step's time on a CPU), widths 8, 16, 32, ``d`` = 8."""
        return cls(input_shape=(12, 128, 96), voxel_mm=(6.0, 1.75, 1.75), widths=(8, 16, 32), attention_dim=8,
                   name="demo")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields (tuples as lists), plus the paper; :meth:`from_dict` reads it back."""
        return config_to_dict(self, PAPER)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MSFAConfig:
        """The configuration :meth:`to_dict` wrote; its ``paper`` note is skipped, unknown keys refused by name."""
        return config_from_dict(cls, data)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
