"""What a model declares about itself: its inputs, its labels and its card.

These are plain, validated values. They know nothing of networks, queues or DICOM writing:
the node turns a :class:`Code` into a coded concept, a :class:`ModelCard` into the SR's
algorithm identification, an :class:`InputSlot` into a routing rule.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

MODALITIES = ("CT", "MR")
# Sequence classes the node's MR classifier assigns (from acquisition parameters).
MR_SEQUENCES = ("T1", "T2", "FLAIR", "STIR", "SWI", "DWI", "PD", "T2FS")
EXPLANATION_KINDS = ("attention", "gradcam", "lrp", "mask", "instance_weight")
_NAME = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")
_VERSION = re.compile(r"^\d+\.\d+\.\d+$")


@dataclass(frozen=True)
class Code:
    """A coded concept: ``value`` in ``scheme`` (``SCT`` for SNOMED CT, ``DCM``, ``99NEUROREAD``)."""

    value: str
    scheme: str
    meaning: str

    def __post_init__(self) -> None:
        for name in ("value", "scheme", "meaning"):
            if not getattr(self, name):
                raise ValueError(f"Code.{name} must not be empty")
        if len(self.meaning) > 64:
            raise ValueError(f"Code.meaning must fit DICOM's 64 characters: {self.meaning!r}")


@dataclass(frozen=True)
class Label:
    """One output of a model: a finding with its code and the threshold that makes it present."""

    name: str
    code: Code
    threshold: float = 0.5

    def __post_init__(self) -> None:
        if not self.name.isidentifier():
            raise ValueError(f"Label.name must be an identifier, got {self.name!r}")
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"Label {self.name!r}: threshold must be in (0, 1), got {self.threshold}")


@dataclass(frozen=True)
class InputSlot:
    """One series a model needs, with the default rule that finds it in a study.

    ``sequences`` (MR only) are classes from :data:`MR_SEQUENCES`; a series fills the slot
    when its modality matches, its sequence class is one of them (if given), its body part is
    one of ``body_parts`` (if given) and it has at least ``min_slices`` slices.
    """

    name: str
    modality: str
    sequences: tuple[str, ...] = ()
    body_parts: tuple[str, ...] = ()
    min_slices: int = 1
    description: str = ""

    def __post_init__(self) -> None:
        if not self.name.isidentifier():
            raise ValueError(f"InputSlot.name must be an identifier, got {self.name!r}")
        if self.modality not in MODALITIES:
            raise ValueError(f"InputSlot {self.name!r}: modality must be one of {MODALITIES}, got {self.modality!r}")
        unknown = set(self.sequences) - set(MR_SEQUENCES)
        if unknown:
            raise ValueError(f"InputSlot {self.name!r}: unknown sequence classes {sorted(unknown)}; known: {MR_SEQUENCES}")
        if self.sequences and self.modality != "MR":
            raise ValueError(f"InputSlot {self.name!r}: sequences apply to MR only")
        if self.min_slices < 1:
            raise ValueError(f"InputSlot {self.name!r}: min_slices must be >= 1, got {self.min_slices}")


@dataclass(frozen=True)
class ModelCard:
    """Where a set of weights comes from and how it did (feeds the SR's algorithm identification).

    ``demo`` is true for weights trained on synthetic phantoms: every output says so.
    """

    architecture: dict[str, Any]
    weights_sha256: str
    training_data: str
    demo: bool
    metrics: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[0-9a-f]{64}", self.weights_sha256):
            raise ValueError(f"ModelCard.weights_sha256 must be 64 hex digits, got {self.weights_sha256!r}")
        if not self.training_data:
            raise ValueError("ModelCard.training_data must describe the training data")


@dataclass(frozen=True)
class ModelSpec:
    """A model's identity and contract: name, version, input slots, labels, explanations."""

    name: str
    version: str
    summary: str
    slots: tuple[InputSlot, ...]
    labels: tuple[Label, ...]
    explanations: tuple[str, ...] = ()
    multi_label: bool = False

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise ValueError(f"ModelSpec.name must be lower-case words joined by '-', got {self.name!r}")
        if not _VERSION.match(self.version):
            raise ValueError(f"ModelSpec {self.name}: version must be MAJOR.MINOR.PATCH, got {self.version!r}")
        if not self.slots:
            raise ValueError(f"ModelSpec {self.name}: needs at least one input slot")
        if not self.labels:
            raise ValueError(f"ModelSpec {self.name}: needs at least one label")
        for what, names in (("slot", [s.name for s in self.slots]), ("label", [lb.name for lb in self.labels])):
            if len(set(names)) != len(names):
                raise ValueError(f"ModelSpec {self.name}: duplicate {what} names {names}")
        unknown = set(self.explanations) - set(EXPLANATION_KINDS)
        if unknown:
            raise ValueError(f"ModelSpec {self.name}: unknown explanation kinds {sorted(unknown)}")

    def label(self, name: str) -> Label:
        for lb in self.labels:
            if lb.name == name:
                return lb
        raise KeyError(f"{self.name} has no label {name!r}; labels: {[lb.name for lb in self.labels]}")
