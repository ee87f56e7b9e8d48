"""What goes into a model and what comes out: plain data shared by all models.

A model receives one :class:`SeriesVolume` per input slot (voxels in modality units on the
series' own grid, with the UIDs of the instances that make each slice) and returns a
:class:`ModelResult`:

- ``findings``: one :class:`Finding` per label of each multi-label outcome;
- ``classifications``: one :class:`Classification` per multi-class outcome (a distribution
  over its classes and the one decided class);
- ``key_slices``: :class:`KeySlice` references to source instances, ranked;
- ``slice_scores``: :class:`SliceScores`, a coded score per slice (e.g. slice attention);
- ``heatmaps``: :class:`Heatmap` float maps on an input's grid, tied to the label or class
  (and branch) they explain, with their kind, sign and value range;
- ``lesions``: :class:`Lesion` masks with coded location, centroid and measurements
  (:class:`Measurement`: concept, value, UCUM unit), tracking id and MIL instance weight;
- ``tables``: :class:`Table` with coded rows and coded columns with units;
- ``card``: the :class:`~neuroread.models.spec.ModelCard` of the weights that made it.

The node encodes it as DICOM (every field reaches an object; a test checks it); nothing here
knows how. Every constructor refuses what is malformed, naming the field.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .spec import EXPLANATION_KINDS, Code, ModelCard, ModelSpec, MultiClass, is_unit


def _finite(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)) \
            or not math.isfinite(float(value)):
        raise ValueError(f"{what} must be a finite number, got {value!r}")
    return float(value)


def _probability(value: Any, what: str) -> None:
    if not 0.0 <= _finite(value, what) <= 1.0:
        raise ValueError(f"{what} must be in [0, 1], got {value}")


@dataclass(frozen=True)
class SeriesVolume:
    """One series as a volume: ``array`` (slices, rows, columns) in modality units (HU for CT).

    Geometry follows DICOM: ``origin`` is the centre of voxel (0, 0, 0) in LPS mm,
    ``direction`` has the row, column and slice unit vectors as columns, ``spacing`` is
    (column, row, slice) spacing in mm as ITK orders it. ``sop_instance_uids[k]`` made slice k.
    ``frame_of_reference_uid`` is the series' Frame of Reference UID ("" when unknown).
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

    @property
    def frame_of_reference_uid(self) -> str:
        return str(self.attributes.get("FrameOfReferenceUID", ""))

    def index_to_lps(self, index_zyx: np.ndarray) -> np.ndarray:
        """Continuous voxel indices ``[..., (slice, row, column)]`` → LPS mm ``[..., 3]``."""
        zyx = np.asarray(index_zyx, float)
        ijk = zyx[..., ::-1] * np.asarray(self.spacing, float)
        return np.asarray(self.origin, float) + ijk @ np.asarray(self.direction, float).T


@dataclass(frozen=True)
class Measurement:
    """A coded quantity: ``concept`` (e.g. SCT Volume), ``value`` and its UCUM ``unit``."""

    concept: Code
    value: float
    unit: Code

    def __post_init__(self) -> None:
        _finite(self.value, f"Measurement {self.concept.meaning!r}: value")
        if not is_unit(self.unit):
            raise ValueError(f"Measurement {self.concept.meaning!r}: unit must be a UCUM code, got {self.unit}")


@dataclass(frozen=True)
class Finding:
    """A label's outcome: its probability against its threshold."""

    label: str
    code: Code
    probability: float
    threshold: float

    def __post_init__(self) -> None:
        _probability(self.probability, f"Finding {self.label!r}: probability")

    @property
    def present(self) -> bool:
        return self.probability >= self.threshold


@dataclass(frozen=True)
class ClassProbability:
    """One class of a :class:`Classification` and its probability."""

    name: str
    code: Code
    probability: float

    def __post_init__(self) -> None:
        _probability(self.probability, f"class {self.name!r}: probability")


@dataclass(frozen=True)
class Classification:
    """A multi-class outcome: a distribution over exclusive classes and the decided one.

    ``probabilities`` sum to 1 (within 1e-3); ``decided`` is the most probable class (the first
    of a tie), so exactly one class is decided and no two exclusive classes are ever both called.
    """

    outcome: str
    concept: Code
    probabilities: tuple[ClassProbability, ...]
    decided: str

    def __post_init__(self) -> None:
        names = [c.name for c in self.probabilities]
        if len(names) < 2 or len(set(names)) != len(names):
            raise ValueError(f"Classification {self.outcome!r}: needs two or more distinct classes, got {names}")
        total = sum(c.probability for c in self.probabilities)
        if abs(total - 1.0) > 1e-3:
            raise ValueError(f"Classification {self.outcome!r}: probabilities sum to {total:.6f}, not 1")
        best = max(self.probabilities, key=lambda c: c.probability)  # max keeps the first of a tie
        if self.decided != best.name:
            raise ValueError(f"Classification {self.outcome!r}: decided class {self.decided!r} is not the most "
                             f"probable one ({best.name!r}, {best.probability:.3f})")

    @property
    def decided_class(self) -> ClassProbability:
        return next(c for c in self.probabilities if c.name == self.decided)

    @classmethod
    def of(cls, outcome: MultiClass, probabilities: Any) -> Classification:
        """The classification of ``outcome`` from one probability per class (in the outcome's order)."""
        p = [float(v) for v in np.asarray(probabilities, float).ravel()]
        if len(p) != len(outcome.classes):
            raise ValueError(f"Classification {outcome.name!r}: {len(p)} probabilities for "
                             f"{len(outcome.classes)} classes")
        items = tuple(ClassProbability(c.name, c.code, v) for c, v in zip(outcome.classes, p))
        return cls(outcome.name, outcome.concept, items, max(items, key=lambda c: c.probability).name)


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
        _finite(self.score, "KeySlice.score")


@dataclass(frozen=True)
class SliceScores:
    """A coded score per slice of an input series (e.g. DrCT2's slice attention), one value per
    slice index in ``slice_indices`` (distinct, ascending), in ``unit``."""

    series_instance_uid: str
    concept: Code
    slice_indices: tuple[int, ...]
    scores: tuple[float, ...]
    unit: Code

    def __post_init__(self) -> None:
        idx = list(self.slice_indices)
        if not idx or len(idx) != len(self.scores):
            raise ValueError(f"SliceScores {self.concept.meaning!r}: {len(idx)} slice indices for "
                             f"{len(self.scores)} scores (one each, at least one)")
        if idx != sorted(set(idx)) or idx[0] < 0:
            raise ValueError(f"SliceScores {self.concept.meaning!r}: slice indices must be distinct, ascending and "
                             f">= 0, got {idx}")
        for s in self.scores:
            _finite(s, f"SliceScores {self.concept.meaning!r}: score")
        if not is_unit(self.unit):
            raise ValueError(f"SliceScores {self.concept.meaning!r}: unit must be a UCUM code, got {self.unit}")


@dataclass(frozen=True)
class Heatmap:
    """A float map on an input series' own grid (same shape as its array), explaining one label
    or class (``explains``) of the model, from one ``branch`` of the network ("" for the whole).

    ``signed``: values may be negative (LRP relevance); else they are >= 0 (attention,
    Grad-CAM after its ReLU). ``value_range`` is the range the values are read against (e.g.
    (0, 1) for attention normalised per slice, (-r, r) for relevance), containing every value;
    viewers window the map with it, so it is never stretched to its own min and max.
    """

    series_instance_uid: str
    kind: str
    array: np.ndarray
    explains: str
    value_range: tuple[float, float]
    signed: bool = False
    branch: str = ""
    description: str = ""

    def __post_init__(self) -> None:
        if self.kind not in EXPLANATION_KINDS:
            raise ValueError(f"Heatmap.kind must be one of {EXPLANATION_KINDS}, got {self.kind!r}")
        if self.array.ndim != 3 or not np.issubdtype(self.array.dtype, np.floating):
            raise ValueError(f"Heatmap.array must be a 3D float array, got {self.array.dtype} {self.array.shape}")
        if not np.all(np.isfinite(self.array)):
            raise ValueError("Heatmap.array must be finite")
        if not isinstance(self.explains, str) or not self.explains:
            raise ValueError("Heatmap.explains must name the label or class the map explains")
        low, high = (_finite(v, "Heatmap.value_range") for v in self.value_range)
        if not low < high:
            raise ValueError(f"Heatmap.value_range must be (low, high) with low < high, got {self.value_range}")
        lo, hi = float(self.array.min(initial=0.0)), float(self.array.max(initial=0.0))
        span = (high - low) * 1e-6
        if lo < low - span or hi > high + span:
            raise ValueError(f"Heatmap ({self.kind} of {self.explains!r}): values {lo:.4g}..{hi:.4g} outside its "
                             f"value_range {self.value_range}")
        if not self.signed and (low < 0 or lo < 0):
            raise ValueError(f"Heatmap ({self.kind} of {self.explains!r}): unsigned, but its range or values are "
                             "negative (set signed=True for relevance)")


@dataclass(frozen=True)
class Lesion:
    """One lesion: a boolean mask on an input series' grid, its finding code, where it is and
    what it measures.

    ``location``: a coded site (e.g. SCT "Lobar" / a Neuromorphometrics region), ``None`` when
    the model does not say; ``centroid_lps``: its centre in patient coordinates (mm);
    ``measurements``: coded values with units beyond the volume; ``probability``: the
    detector's confidence; ``instance_weight``: its weight in a multiple-instance decision
    (MIL attention); ``tracking_id``: a stable human-readable id (default ``lesion N``).
    """

    series_instance_uid: str
    label: str
    code: Code
    mask: np.ndarray
    volume_mm3: float
    centroid_lps: tuple[float, float, float]
    location: Code | None = None
    measurements: tuple[Measurement, ...] = ()
    probability: float | None = None
    instance_weight: float | None = None
    tracking_id: str = ""

    def __post_init__(self) -> None:
        if self.mask.ndim != 3 or self.mask.dtype != bool:
            raise ValueError(f"Lesion.mask must be a 3D boolean array, got {self.mask.dtype} {self.mask.shape}")
        if not self.mask.any():
            raise ValueError(f"Lesion {self.label!r}: mask is empty")
        if _finite(self.volume_mm3, f"Lesion {self.label!r}: volume_mm3") <= 0:
            raise ValueError(f"Lesion {self.label!r}: volume must be positive, got {self.volume_mm3}")
        if len(self.centroid_lps) != 3:
            raise ValueError(f"Lesion {self.label!r}: centroid_lps must be (x, y, z), got {self.centroid_lps}")
        for v in self.centroid_lps:
            _finite(v, f"Lesion {self.label!r}: centroid_lps")
        if self.location is not None and not isinstance(self.location, Code):
            raise ValueError(f"Lesion {self.label!r}: location must be a Code (coded site), got {self.location!r}")
        for m in self.measurements:
            if not isinstance(m, Measurement):
                raise ValueError(f"Lesion {self.label!r}: measurements must be Measurement, got {type(m).__name__}")
        if self.probability is not None:
            _probability(self.probability, f"Lesion {self.label!r}: probability")
        if self.instance_weight is not None:
            _finite(self.instance_weight, f"Lesion {self.label!r}: instance_weight")
        if len(self.tracking_id) > 64:
            raise ValueError(f"Lesion {self.label!r}: tracking_id must fit 64 characters")

    def name(self, index: int) -> str:
        """How the objects name the lesion at ``index`` of its result (SEG segment, SR tracking
        id, text report): its own tracking id, else ``lesion N <label>``, within 64 characters."""
        return (self.tracking_id or f"lesion {index + 1} {self.label}")[:64]


@dataclass(frozen=True)
class Column:
    """A table column: its name, coded concept and UCUM unit."""

    name: str
    concept: Code
    unit: Code

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("Column.name must not be empty")
        if not is_unit(self.unit):
            raise ValueError(f"Column {self.name!r}: unit must be a UCUM code, got {self.unit}")


@dataclass(frozen=True)
class TableRow:
    """A coded row (e.g. an atlas region) with one finite value per column, and optionally where
    it is: ``mask``, a 3D boolean array on the grid of input series ``series_instance_uid`` (the
    region on the patient's own series). A row with a place is drawn on its image in the
    Measurement Report (its outline on the slice where it is largest, its values as the group's
    measurements)."""

    code: Code
    values: tuple[float, ...]
    mask: np.ndarray | None = field(default=None, compare=False, repr=False)
    series_instance_uid: str = ""

    def __post_init__(self) -> None:
        for v in self.values:
            _finite(v, f"TableRow {self.code.meaning!r}: value")
        if self.mask is not None:
            if self.mask.ndim != 3 or self.mask.dtype != bool or not self.mask.any():
                raise ValueError(f"TableRow {self.code.meaning!r}: mask must be a non-empty 3D boolean array, got "
                                 f"{self.mask.dtype} {self.mask.shape}")
            if not self.series_instance_uid:
                raise ValueError(f"TableRow {self.code.meaning!r}: a mask needs the series_instance_uid of its grid")


@dataclass(frozen=True)
class Table:
    """A small coded table (e.g. relevance per atlas region): ``concept`` says what it is,
    ``columns`` are coded with units, ``rows`` are coded."""

    name: str
    concept: Code
    columns: tuple[Column, ...]
    rows: tuple[TableRow, ...]

    def __post_init__(self) -> None:
        if not self.columns:
            raise ValueError(f"Table {self.name!r}: needs at least one column")
        for i, row in enumerate(self.rows):
            if len(row.values) != len(self.columns):
                raise ValueError(f"Table {self.name!r}: row {i} has {len(row.values)} values for "
                                 f"{len(self.columns)} columns")
        codes = [(r.code.scheme, r.code.value) for r in self.rows]
        if len(set(codes)) != len(codes):
            raise ValueError(f"Table {self.name!r}: rows must have distinct codes")


@dataclass(frozen=True)
class ModelResult:
    """Everything one run of a model produced, with the card of the weights that made it."""

    model: str
    version: str
    card: ModelCard
    findings: tuple[Finding, ...] = ()
    classifications: tuple[Classification, ...] = ()
    key_slices: tuple[KeySlice, ...] = ()
    slice_scores: tuple[SliceScores, ...] = ()
    heatmaps: tuple[Heatmap, ...] = ()
    lesions: tuple[Lesion, ...] = ()
    tables: tuple[Table, ...] = ()

    def main_targets(self) -> list[str]:
        """What the result says first, in order: the decided class of each classification, then the
        present findings by probability, then the other findings by probability."""
        findings = sorted(self.findings, key=lambda f: (not f.present, -f.probability))
        return [c.decided for c in self.classifications] + [f.label for f in findings]

    def ranked_heatmaps(self, series_uid: str) -> list[Heatmap]:
        """The heatmaps of ``series_uid``, the one to show first first: by the earliest of
        :meth:`main_targets` they explain, whole-network maps before branch maps, then in the
        model's order. The overlays draw the first; evaluation plays the pointing game on it."""
        order = {t: i for i, t in enumerate(self.main_targets())}
        maps = [h for h in self.heatmaps if h.series_instance_uid == series_uid]
        return sorted(maps, key=lambda h: (order.get(h.explains, len(order)), bool(h.branch)))

    def check(self, spec: ModelSpec, inputs: dict[str, SeriesVolume]) -> None:
        """Raise ``ValueError`` naming the problem if this result breaks ``spec``'s contract.

        One finding per label with the spec's code and threshold; one classification per
        multi-class outcome with its classes in order; heatmaps explaining a label or class
        of the spec; heatmaps, lesions, slice scores and key slices on an input's grid and
        instances; key slices ranked 1..n.
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
        outcomes = {o.name: o for o in spec.multi_class}
        if sorted(c.outcome for c in self.classifications) != sorted(outcomes):
            raise ValueError(f"{spec.name}: classifications {[c.outcome for c in self.classifications]} do not match "
                             f"multi-class outcomes {sorted(outcomes)}")
        for c in self.classifications:
            o = outcomes[c.outcome]
            if c.concept != o.concept or [(p.name, p.code) for p in c.probabilities] != \
                    [(k.name, k.code) for k in o.classes]:
                raise ValueError(f"{spec.name}: classification {c.outcome!r} does not list the outcome's classes "
                                 "with their codes, in order")
        targets = spec.targets
        by_uid = {v.series_instance_uid: v for v in inputs.values()}
        for h in self.heatmaps:
            if h.explains not in targets:
                raise ValueError(f"{spec.name}: heatmap {h.kind} explains {h.explains!r}, not a label or class "
                                 f"({', '.join(targets)})")
            _same_grid(by_uid, h.series_instance_uid, h.array.shape, f"heatmap {h.kind}")
        for les in self.lesions:
            _same_grid(by_uid, les.series_instance_uid, les.mask.shape, f"lesion {les.label}")
        for table in self.tables:
            for row in table.rows:
                if row.mask is not None:
                    _same_grid(by_uid, row.series_instance_uid, row.mask.shape,
                               f"table {table.name} row {row.code.meaning!r}")
        for s in self.slice_scores:
            vol = by_uid.get(s.series_instance_uid)
            if vol is None or s.slice_indices[-1] >= vol.array.shape[0]:
                raise ValueError(f"{spec.name}: slice scores {s.concept.meaning!r} name slices outside an input series")
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
