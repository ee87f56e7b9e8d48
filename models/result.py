"""What goes into a model and what comes out: plain data shared by all models.

A model receives one :class:`SeriesVolume` per input slot (voxels in modality units on the
series' own grid, with the UIDs of the instances that make each slice) and returns a
:class:`ModelResult`: findings, key slices, heatmaps and lesions on an input's grid, tables,
and the card of the weights that made it. The node encodes it as DICOM; nothing here knows
how.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .spec import EXPLANATION_KINDS, Code, ModelCard, ModelSpec


@dataclass(frozen=True)
class SeriesVolume:
    """One series as a volume: ``array`` (slices, rows, columns) in modality units (HU for CT).

    Geometry follows DICOM: ``origin`` is the centre of voxel (0, 0, 0) in LPS mm,
    ``direction`` has the row, column and slice unit vectors as columns, ``spacing`` is
    (column, row, slice) spacing in mm as ITK orders it. ``sop_instance_uids[k]`` made slice k.
    """

    series_instance_uid: str
    array: np.ndarray
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: np.ndarray
    sop_instance_uids: tuple[str, ...]
    modality: str
    attributes: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.array.ndim != 3:
            raise ValueError(f"SeriesVolume.array must be 3D (slices, rows, columns), got {self.array.shape}")
        if len(self.sop_instance_uids) != self.array.shape[0]:
            raise ValueError(
                f"SeriesVolume: {len(self.sop_instance_uids)} SOP instance UIDs for {self.array.shape[0]} slices"
            )
        if np.asarray(self.direction).shape != (3, 3):
            raise ValueError("SeriesVolume.direction must be 3x3")
        if min(self.spacing) <= 0:
            raise ValueError(f"SeriesVolume.spacing must be positive, got {self.spacing}")


@dataclass(frozen=True)
class Finding:
    """A label's outcome: its probability against its threshold."""

    label: str
    code: Code
    probability: float
    threshold: float

    def __post_init__(self) -> None:
        if not 0.0 <= self.probability <= 1.0 or np.isnan(self.probability):
            raise ValueError(f"Finding {self.label!r}: probability must be in [0, 1], got {self.probability}")

    @property
    def present(self) -> bool:
        return self.probability >= self.threshold


@dataclass(frozen=True)
class KeySlice:
    """A slice the model singled out, with its score and rank (1 = most important)."""

    series_instance_uid: str
    slice_index: int
    sop_instance_uid: str
    score: float
    rank: int

    def __post_init__(self) -> None:
        if self.rank < 1 or self.slice_index < 0:
            raise ValueError(f"KeySlice: rank must be >= 1 and slice_index >= 0, got {self.rank}, {self.slice_index}")


@dataclass(frozen=True)
class Heatmap:
    """A float map on an input series' own grid (same shape as its array)."""

    series_instance_uid: str
    kind: str
    array: np.ndarray
    description: str = ""

    def __post_init__(self) -> None:
        if self.kind not in EXPLANATION_KINDS:
            raise ValueError(f"Heatmap.kind must be one of {EXPLANATION_KINDS}, got {self.kind!r}")
        if self.array.ndim != 3 or not np.issubdtype(self.array.dtype, np.floating):
            raise ValueError(f"Heatmap.array must be a 3D float array, got {self.array.dtype} {self.array.shape}")
        if not np.all(np.isfinite(self.array)):
            raise ValueError("Heatmap.array must be finite")


@dataclass(frozen=True)
class Lesion:
    """One lesion: a boolean mask on an input series' grid, its label and its measurements."""

    series_instance_uid: str
    label: str
    code: Code
    mask: np.ndarray
    volume_mm3: float
    centroid_lps: tuple[float, float, float]
    location: str = ""
    score: float | None = None
    measurements: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.mask.ndim != 3 or self.mask.dtype != bool:
            raise ValueError(f"Lesion.mask must be a 3D boolean array, got {self.mask.dtype} {self.mask.shape}")
        if not self.mask.any():
            raise ValueError(f"Lesion {self.label!r}: mask is empty")
        if self.volume_mm3 <= 0:
            raise ValueError(f"Lesion {self.label!r}: volume must be positive, got {self.volume_mm3}")


SLICE_ATTENTION_TABLE = "slice attention"
"""A :class:`Table` of this name, with columns ``slice index``, ``SOP Instance UID`` and
``attention`` (one row per slice the model looked at), is drawn on the report page as the
attention of every slice, as DrCT2's Figure 2 does."""


@dataclass(frozen=True)
class Table:
    """A small table (e.g. relevance per atlas region): named columns, rows of values."""

    name: str
    columns: tuple[str, ...]
    rows: tuple[tuple[Any, ...], ...]

    def __post_init__(self) -> None:
        for i, row in enumerate(self.rows):
            if len(row) != len(self.columns):
                raise ValueError(f"Table {self.name!r}: row {i} has {len(row)} values for {len(self.columns)} columns")


@dataclass(frozen=True)
class ModelResult:
    """Everything one run of a model produced, with the card of the weights that made it."""

    model: str
    version: str
    findings: tuple[Finding, ...]
    card: ModelCard
    key_slices: tuple[KeySlice, ...] = ()
    heatmaps: tuple[Heatmap, ...] = ()
    lesions: tuple[Lesion, ...] = ()
    tables: tuple[Table, ...] = ()

    def check(self, spec: ModelSpec, inputs: dict[str, SeriesVolume]) -> None:
        """Raise ``ValueError`` naming the problem if this result breaks ``spec``'s contract.

        One finding per label with the spec's code and threshold; heatmaps and lesions on an
        input's grid; key slices naming an input's instances, ranked 1..n.
        """
        if (self.model, self.version) != (spec.name, spec.version):
            raise ValueError(f"result of {self.model} {self.version} checked against {spec.name} {spec.version}")
        names = [f.label for f in self.findings]
        expected = [lb.name for lb in spec.labels]
        if sorted(names) != sorted(expected):
            raise ValueError(f"{spec.name}: findings {names} do not match labels {expected}")
        for f in self.findings:
            lb = spec.label(f.label)
            if f.code != lb.code or f.threshold != lb.threshold:
                raise ValueError(f"{spec.name}: finding {f.label!r} has a code or threshold other than its label's")
        by_uid = {v.series_instance_uid: v for v in inputs.values()}
        for h in self.heatmaps:
            _same_grid(by_uid, h.series_instance_uid, h.array.shape, f"heatmap {h.kind}")
        for les in self.lesions:
            _same_grid(by_uid, les.series_instance_uid, les.mask.shape, f"lesion {les.label}")
        for ks in self.key_slices:
            vol = by_uid.get(ks.series_instance_uid)
            if vol is None or ks.slice_index >= len(vol.sop_instance_uids):
                raise ValueError(f"{spec.name}: key slice {ks.slice_index} is not a slice of an input series")
            if vol.sop_instance_uids[ks.slice_index] != ks.sop_instance_uid:
                raise ValueError(f"{spec.name}: key slice {ks.slice_index} names the wrong SOP instance")
        ranks = sorted(ks.rank for ks in self.key_slices)
        if ranks != list(range(1, len(ranks) + 1)):
            raise ValueError(f"{spec.name}: key slice ranks must be 1..n, got {ranks}")


def _same_grid(by_uid: dict[str, SeriesVolume], uid: str, shape: tuple[int, ...], what: str) -> None:
    vol = by_uid.get(uid)
    if vol is None:
        raise ValueError(f"{what} refers to series {uid}, which is not an input")
    if tuple(shape) != vol.array.shape:
        raise ValueError(f"{what}: shape {tuple(shape)} is not its series' grid {vol.array.shape}")
