"""The model contract: specs, results and the registry (see DESIGN.md, "The model contract").

``models`` never imports ``node``: a model knows nothing of networks, queues or DICOM writing.
"""
from .registry import Model, ModelEntry, ModelRegistry, default_registry
from .result import SLICE_ATTENTION_TABLE, Finding, Heatmap, KeySlice, Lesion, ModelResult, SeriesVolume, Table
from .spec import Code, InputSlot, Label, ModelCard, ModelSpec

__all__ = [
    "Code", "Finding", "Heatmap", "InputSlot", "KeySlice", "Label", "Lesion", "Model", "ModelCard",
    "ModelEntry", "ModelRegistry", "ModelResult", "ModelSpec", "SLICE_ATTENTION_TABLE", "SeriesVolume", "Table",
    "default_registry",
]
