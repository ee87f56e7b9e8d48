"""The model contract: specs, results and the registry (see DESIGN.md, "The model contract").

``models`` never imports ``node``: a model knows nothing of networks, queues or DICOM writing.
Shared pieces every model uses live beside the contract and import torch only when used:
:mod:`.weights` (which weights, typed metadata, identity), :mod:`.runtime` (device and threads
per runner), :mod:`.transforms` (invertible geometry and intensity transforms),
:mod:`.explain` (explainers as context managers), :mod:`.volume` (series → volume).
"""
from .registry import Model, ModelEntry, ModelRegistry, default_registry
from .result import (
    Classification,
    ClassProbability,
    Column,
    Finding,
    Heatmap,
    KeySlice,
    Lesion,
    Measurement,
    ModelResult,
    SeriesVolume,
    SliceScores,
    Table,
    TableRow,
)
from .spec import (
    UCUM_COUNT,
    UCUM_MM,
    UCUM_MM2,
    UCUM_MM3,
    UCUM_PER_MM3,
    UCUM_PROBABILITY,
    UCUM_RATIO,
    ClassLabel,
    Code,
    InputSlot,
    Label,
    ModelCard,
    ModelSpec,
    MultiClass,
    MultiLabel,
    Outcome,
)

__all__ = [
    "ClassLabel", "ClassProbability", "Classification", "Code", "Column", "Finding", "Heatmap", "InputSlot",
    "KeySlice", "Label", "Lesion", "Measurement", "Model", "ModelCard", "ModelEntry", "ModelRegistry",
    "ModelResult", "ModelSpec", "MultiClass", "MultiLabel", "Outcome", "SeriesVolume", "SliceScores", "Table",
    "TableRow", "UCUM_COUNT", "UCUM_MM", "UCUM_MM2", "UCUM_MM3", "UCUM_PER_MM3", "UCUM_PROBABILITY", "UCUM_RATIO",
    "default_registry",
]
