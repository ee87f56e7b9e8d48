"""What a model declares about itself: its inputs, its outcomes and its card.

These are plain, validated values. They know nothing of networks, queues or DICOM writing:
the node turns a :class:`Code` into a coded concept, a :class:`ModelCard` into the SR's
algorithm identification, an :class:`InputSlot` into a routing rule.

**Outcomes** come in two kinds, and a model declares one or more of them:

- :class:`MultiLabel`: independent findings (any hemorrhage, IPH, SAH…), each a
  :class:`Label` with its own probability and threshold; any number may be present at once;
- :class:`MultiClass`: one distribution over exclusive classes (MS or cSVD; aSVD, CAA or
  CADASIL), each a :class:`ClassLabel`; exactly one class is decided, the most probable.

Units are UCUM codes (:data:`UCUM_MM3` and friends); measurements, table columns and
slice scores carry one, so nothing reaches a report without its unit.
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any, Union

MODALITIES = ("CT", "MR")
# Sequence classes the node's MR classifier assigns (from acquisition parameters).
MR_SEQUENCES = ("T1", "T2", "FLAIR", "STIR", "SWI", "DWI", "PD", "T2FS")
# What part of an acquisition a series shows, as the node reads it from ImageType and friends
# (neuroread.node.route.mr_sequence.image_component): an SWI package holds all three.
IMAGE_COMPONENTS = ("MAGNITUDE", "PHASE", "PROJECTION")
EXPLANATION_KINDS = ("attention", "lesion_map", "gradcam", "lrp", "guided_backprop", "mask", "instance_weight")
_NAME = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")
_VERSION = re.compile(r"^\d+\.\d+\.\d+$")


@dataclass(frozen=True)
class Code:
    """A coded concept: ``value`` in ``scheme`` (``SCT`` for SNOMED CT, ``DCM``, ``UCUM``, ``99NEUROREAD``)."""

    value: str
    scheme: str
    meaning: str

    def __post_init__(self) -> None:
        for name in ("value", "scheme", "meaning"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise ValueError(f"Code.{name} must be a non-empty string, got {getattr(self, name)!r}")
        if len(self.meaning) > 64:
            raise ValueError(f"Code.meaning must fit DICOM's 64 characters: {self.meaning!r}")


# Units (UCUM, as DICOM's CID 7181 writes them).
UCUM_MM = Code("mm", "UCUM", "millimeter")
UCUM_MM2 = Code("mm2", "UCUM", "square millimeter")
UCUM_MM3 = Code("mm3", "UCUM", "cubic millimeter")
UCUM_ML = Code("ml", "UCUM", "milliliter")
UCUM_PROBABILITY = Code("{probability}", "UCUM", "probability")
UCUM_RATIO = Code("1", "UCUM", "no units")
UCUM_PER_MM3 = Code("/mm3", "UCUM", "per cubic millimeter")
UCUM_COUNT = Code("{count}", "UCUM", "count")


def is_unit(code: Code) -> bool:
    """Whether ``code`` is a UCUM unit."""
    return isinstance(code, Code) and code.scheme == "UCUM"


def _check_identifier(value: str, what: str) -> None:
    if not isinstance(value, str) or not value.isidentifier():
        raise ValueError(f"{what} must be an identifier, got {value!r}")


@dataclass(frozen=True)
class Label:
    """One finding of a multi-label outcome: its code and the threshold that makes it present."""

    name: str
    code: Code
    threshold: float = 0.5

    def __post_init__(self) -> None:
        _check_identifier(self.name, "Label.name")
        if isinstance(self.threshold, bool) or not isinstance(self.threshold, (int, float)) \
                or not 0.0 < self.threshold < 1.0:
            raise ValueError(f"Label {self.name!r}: threshold must be in (0, 1), got {self.threshold}")


@dataclass(frozen=True)
class ClassLabel:
    """One class of a multi-class outcome (e.g. ``ms`` coded as multiple sclerosis)."""

    name: str
    code: Code

    def __post_init__(self) -> None:
        _check_identifier(self.name, "ClassLabel.name")


@dataclass(frozen=True)
class MultiLabel:
    """Independent findings: one probability and one threshold per :class:`Label`."""

    labels: tuple[Label, ...]
    name: str = "findings"

    def __post_init__(self) -> None:
        _check_identifier(self.name, "MultiLabel.name")
        if not self.labels:
            raise ValueError(f"MultiLabel {self.name!r}: needs at least one label")


@dataclass(frozen=True)
class MultiClass:
    """Exclusive classes: one distribution over ``classes`` and exactly one decided class (the
    most probable). ``concept`` names what is decided (e.g. SCT 439401001 "Diagnosis")."""

    name: str
    concept: Code
    classes: tuple[ClassLabel, ...]

    def __post_init__(self) -> None:
        _check_identifier(self.name, "MultiClass.name")
        if len(self.classes) < 2:
            raise ValueError(f"MultiClass {self.name!r}: needs at least two classes, got {len(self.classes)}")

    def class_label(self, name: str) -> ClassLabel:
        for c in self.classes:
            if c.name == name:
                return c
        raise KeyError(f"outcome {self.name!r} has no class {name!r}; classes: {[c.name for c in self.classes]}")


Outcome = Union[MultiLabel, MultiClass]


@dataclass(frozen=True)
class InputSlot:
    """One series a model needs, with the default rule that finds it in a study.

    ``sequences`` (MR only) are classes from :data:`MR_SEQUENCES`; a series fills the slot
    when its modality matches, its sequence class is one of them (if given), its body part is
    one of ``body_parts`` (if given), it has at least ``min_slices`` slices and its image
    component is one of ``image_components`` (if given; from :data:`IMAGE_COMPONENTS`): an SWI
    slot takes ``("MAGNITUDE",)`` so that the phase images and minimum intensity projections a
    site sends with the SWI magnitude are not routed to it.
    ``same_frame_of_reference_as`` names an earlier slot whose series must share this one's
    Frame of Reference UID (e.g. a STIR resampled onto the T1 of the same study without a
    registration); a study where they differ does not fill the slot pair.
    """

    name: str
    modality: str
    sequences: tuple[str, ...] = ()
    body_parts: tuple[str, ...] = ()
    min_slices: int = 1
    description: str = ""
    same_frame_of_reference_as: str | None = None
    image_components: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _check_identifier(self.name, "InputSlot.name")
        if self.modality not in MODALITIES:
            raise ValueError(f"InputSlot {self.name!r}: modality must be one of {MODALITIES}, got {self.modality!r}")
        unknown = set(self.sequences) - set(MR_SEQUENCES)
        if unknown:
            raise ValueError(f"InputSlot {self.name!r}: unknown sequence classes {sorted(unknown)}; known: {MR_SEQUENCES}")
        if self.sequences and self.modality != "MR":
            raise ValueError(f"InputSlot {self.name!r}: sequences apply to MR only")
        if not isinstance(self.image_components, tuple):
            raise ValueError(f"InputSlot {self.name!r}: image_components must be a tuple such as ('MAGNITUDE',), "
                             f"got {self.image_components!r}")
        unknown = [c for c in self.image_components if c not in IMAGE_COMPONENTS]
        if unknown:
            raise ValueError(f"InputSlot {self.name!r}: unknown image components {unknown}; known: {IMAGE_COMPONENTS}")
        if self.min_slices < 1:
            raise ValueError(f"InputSlot {self.name!r}: min_slices must be >= 1, got {self.min_slices}")
        if self.same_frame_of_reference_as == self.name:
            raise ValueError(f"InputSlot {self.name!r}: same_frame_of_reference_as names the slot itself")


@dataclass(frozen=True)
class ModelCard:
    """Where a set of weights comes from and how it did (feeds the SR's algorithm identification).

    ``demo`` is true for weights trained on synthetic phantoms: every output says so.
    ``thresholds`` (label → threshold) are the operating points chosen with the weights (on a
    validation split); they replace the spec's defaults unless the configuration overrides them.
    """

    architecture: dict[str, Any]
    weights_sha256: str
    training_data: str
    demo: bool
    metrics: dict[str, float] = field(default_factory=dict)
    thresholds: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[0-9a-f]{64}", self.weights_sha256):
            raise ValueError(f"ModelCard.weights_sha256 must be 64 hex digits, got {self.weights_sha256!r}")
        if not self.training_data:
            raise ValueError("ModelCard.training_data must describe the training data")
        for label, value in self.thresholds.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < value < 1.0:
                raise ValueError(f"ModelCard.thresholds[{label!r}] must be in (0, 1), got {value!r}")


@dataclass(frozen=True)
class ModelSpec:
    """A model's identity and contract: name, version, input slots, outcomes, explanations."""

    name: str
    version: str
    summary: str
    slots: tuple[InputSlot, ...]
    outcomes: tuple[Outcome, ...]
    explanations: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.match(self.name):
            raise ValueError(f"ModelSpec.name must be lower-case words joined by '-', got {self.name!r}")
        if not isinstance(self.version, str) or not _VERSION.match(self.version):
            raise ValueError(f"ModelSpec {self.name}: version must be MAJOR.MINOR.PATCH, got {self.version!r}")
        if not self.slots:
            raise ValueError(f"ModelSpec {self.name}: needs at least one input slot")
        if not self.outcomes:
            raise ValueError(f"ModelSpec {self.name}: needs at least one outcome (MultiLabel or MultiClass)")
        bad = [type(o).__name__ for o in self.outcomes if not isinstance(o, (MultiLabel, MultiClass))]
        if bad:
            raise ValueError(f"ModelSpec {self.name}: outcomes must be MultiLabel or MultiClass, got {bad}")
        slot_names = [s.name for s in self.slots]
        names = {
            "slot": slot_names,
            "outcome": [o.name for o in self.outcomes],
            # labels and classes share one namespace: thresholds and heatmaps name them
            "label or class": [lb.name for lb in self.labels] + [c.name for o in self.multi_class for c in o.classes],
        }
        for what, values in names.items():
            if len(set(values)) != len(values):
                raise ValueError(f"ModelSpec {self.name}: duplicate {what} names {values}")
        for i, slot in enumerate(self.slots):
            ref = slot.same_frame_of_reference_as
            if ref is not None and ref not in slot_names[:i]:
                raise ValueError(f"ModelSpec {self.name}: slot {slot.name!r} is tied to {ref!r}, which is not an "
                                 f"earlier slot ({slot_names[:i]})")
        unknown = set(self.explanations) - set(EXPLANATION_KINDS)
        if unknown:
            raise ValueError(f"ModelSpec {self.name}: unknown explanation kinds {sorted(unknown)}")

    @property
    def labels(self) -> tuple[Label, ...]:
        """Every label of the multi-label outcomes, in declaration order (the ones with thresholds)."""
        return tuple(lb for o in self.outcomes if isinstance(o, MultiLabel) for lb in o.labels)

    @property
    def multi_class(self) -> tuple[MultiClass, ...]:
        return tuple(o for o in self.outcomes if isinstance(o, MultiClass))

    @property
    def targets(self) -> tuple[str, ...]:
        """Every label and class name: what a heatmap may explain."""
        return tuple(lb.name for lb in self.labels) + tuple(c.name for o in self.multi_class for c in o.classes)

    def label(self, name: str) -> Label:
        for lb in self.labels:
            if lb.name == name:
                return lb
        raise KeyError(f"{self.name} has no label {name!r}; labels: {[lb.name for lb in self.labels]}")

    def outcome(self, name: str) -> Outcome:
        for o in self.outcomes:
            if o.name == name:
                return o
        raise KeyError(f"{self.name} has no outcome {name!r}; outcomes: {[o.name for o in self.outcomes]}")

    def slot(self, name: str) -> InputSlot:
        for s in self.slots:
            if s.name == name:
                return s
        raise KeyError(f"{self.name} has no input slot {name!r}; slots: {[s.name for s in self.slots]}")

    def with_thresholds(self, thresholds: dict[str, float]) -> ModelSpec:
        """This spec with the thresholds of the labels in ``thresholds`` replaced (unknown labels raise)."""
        known = [lb.name for lb in self.labels]
        unknown = sorted(set(thresholds) - set(known))
        if unknown:
            raise ValueError(f"model {self.name}: thresholds for unknown labels {unknown}; labels: {known}")
        outcomes = tuple(
            dataclasses.replace(o, labels=tuple(
                dataclasses.replace(lb, threshold=float(thresholds[lb.name])) if lb.name in thresholds else lb
                for lb in o.labels)) if isinstance(o, MultiLabel) else o
            for o in self.outcomes)
        return dataclasses.replace(self, outcomes=outcomes)

    def thresholds_text(self) -> str:
        """The effective thresholds as one canonical string (``any=0.5,iph=0.42``; empty without labels):
        part of the result UIDs and the job key."""
        return ",".join(f"{lb.name}={lb.threshold:.6g}" for lb in self.labels)
