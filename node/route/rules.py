"""Routing: which model, and which of its input slots, a series goes to, and where results go.

A route is built from a plain mapping (as the YAML configuration gives it) and validated
when built; an invalid one raises ``ValueError`` naming the route and the key::

    name: flair-ms
    priority: 10                 # lower is tried first; equal priorities keep their order
    match:                       # a condition tree
      all:
        - modality: MR           # a scalar: exact value (strings ignore case and outer spaces)
        - sequence: [FLAIR]      # a list: any of these values
        - any:
            - BodyPartExamined: [HEAD, BRAIN]
            - SeriesDescription: {regex: "(?i)brain|head"}   # re.search on the text
        - slices: {min: 20}      # numeric range, {min: a}, {max: b} or both (inclusive)
    model: ms-csvd
    slot: flair
    destinations: [pacs, archive-folder]

A condition is a mapping: ``all: [...]`` (AND), ``any: [...]`` (OR), or field names, each
with a value spec; several keys in one mapping are ANDed. A field is a DICOM keyword read
from the series' representative instance (a multi-valued attribute matches when one of its
values does) or one of :data:`DERIVED_FIELDS`. The operators in a mapping spec are
``equals``, ``in``, ``regex``, ``min`` and ``max``.

:func:`match_series` tries every route and returns a :class:`RouteDecision`: the matching
routes in priority order, or an unrouted outcome that says which routes were tried and why
each failed; :func:`explain` renders either as text. :func:`default_routes` turns a
:class:`~neuroread.models.spec.ModelSpec`'s input slots into routes, so a model routes with no YAML.
"""
from __future__ import annotations

import difflib
import logging
import re
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import pydicom
from pydicom.datadict import dictionary_VR, keyword_dict
from pydicom.dataset import Dataset

from neuroread.models.spec import ModelSpec
from neuroread.node.assemble import read_header_or_none, series_consensus

from .mr_sequence import SequenceClass, classify, image_component

logger = logging.getLogger(__name__)

DERIVED_FIELDS = {
    "modality": "Modality, upper-case",
    "sequence": "MR sequence class (neuroread.node.route.mr_sequence): T1, T2, FLAIR, STIR, T2FS, SWI, DWI, PD, UNKNOWN",
    "sequence_basis": "what the sequence class rests on: parameters, sequence name, description, none",
    "image_component": "MAGNITUDE, PHASE or PROJECTION (minIP/MIP), from ImageType and Enhanced MR attributes, never the description",
    "body_part": "BodyPartExamined, upper-case",
    "instances": "number of instances received for the series",
    "slices": "instances times frames per instance (NumberOfFrames, 1 when absent)",
}
OPERATORS = ("equals", "in", "regex", "min", "max")
ROUTE_KEYS = ("name", "priority", "match", "model", "slot", "destinations")
DEFAULT_PRIORITY = 100
SPEC_PRIORITY = 1000  # default routes from model specs come after configured ones


def _suggest(name: str, options: Iterable[str]) -> str:
    options = list(options)
    folded = [o for o in options if o.lower() == name.lower()]
    close = folded or difflib.get_close_matches(name, options, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _check_field(name: object) -> str:
    if not isinstance(name, str) or not name:
        raise ValueError(f"field names must be non-empty strings, got {name!r}")
    if name in DERIVED_FIELDS:
        return name
    if name in keyword_dict:
        if dictionary_VR(keyword_dict[name]) == "SQ":
            raise ValueError(f"field {name!r} is a sequence attribute; match one of its items' keywords instead")
        return name
    hint = _suggest(name, [*DERIVED_FIELDS, *keyword_dict])
    raise ValueError(f"unknown field {name!r}: neither a DICOM keyword nor one of {', '.join(DERIVED_FIELDS)}{hint}")


def _check_scalar(value: object, where: str) -> str | int | float:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ValueError(f"{where}: value must be a string or a number, got {value!r}")
    return value


# ---------------------------------------------------------------- the facts a route reads
@dataclass(frozen=True)
class SeriesFacts:
    """A series as routes see it: one representative instance's header and the instance count."""

    dataset: Dataset
    instances: int
    sequence: SequenceClass | None  # None for a series that is not MR

    def __post_init__(self) -> None:
        if isinstance(self.instances, bool) or not isinstance(self.instances, int) or self.instances < 1:
            raise ValueError(f"SeriesFacts.instances must be a positive integer, got {self.instances!r}")

    @classmethod
    def from_dataset(cls, ds: Dataset, instances: int,
                     classifier: Callable[[Dataset], SequenceClass] = classify) -> "SeriesFacts":
        modality = str(ds.get("Modality", "") or "").upper()
        return cls(ds, instances, classifier(ds) if modality == "MR" else None)

    @property
    def series_instance_uid(self) -> str:
        return str(self.dataset.get("SeriesInstanceUID", "") or "")

    def values(self, name: str) -> tuple:
        """The field's values (empty when absent or empty)."""
        ds = self.dataset
        if name == "modality":
            raw = str(ds.get("Modality", "") or "").upper()
        elif name == "body_part":
            raw = str(ds.get("BodyPartExamined", "") or "").strip().upper()
        elif name == "sequence":
            raw = self.sequence.sequence if self.sequence else ""
        elif name == "sequence_basis":
            raw = self.sequence.basis if self.sequence else ""
        elif name == "image_component":
            raw = image_component(ds)
        elif name == "instances":
            return (self.instances,)
        elif name == "slices":
            frames = ds.get("NumberOfFrames", 1) or 1
            return (self.instances * int(frames),)
        else:
            raw = ds[name].value if name in ds else None
        if raw is None or raw == "":
            return ()
        if isinstance(raw, (str, int, float, bytes)):
            return (raw,)
        if isinstance(raw, pydicom.valuerep.PersonName):
            return (str(raw),)
        return tuple(v for v in raw if v is not None and v != "")


# ---------------------------------------------------------------- conditions
@dataclass(frozen=True)
class Check:
    """The outcome of a condition on a series: whether it holds and why, in words."""

    ok: bool
    reasons: tuple[str, ...]


def _number(value: object) -> float | None:
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


def _same(item: object, wanted: str | int | float) -> bool:
    if isinstance(wanted, str):
        return str(item).strip().upper() == wanted.strip().upper()
    number = _number(item)
    return number is not None and number == float(wanted)


def _show(values: tuple) -> str:
    return "\\".join(str(v) for v in values)


@dataclass(frozen=True)
class Leaf:
    """One test on one field: ``op`` is equals, in, regex or range (``values`` = (min, max))."""

    field: str
    op: str
    values: tuple

    def __post_init__(self) -> None:
        _check_field(self.field)
        if self.op not in ("equals", "in", "regex", "range"):
            raise ValueError(f"{self.field}: unknown operator {self.op!r}{_suggest(self.op, OPERATORS)}")
        if self.op == "regex":
            if len(self.values) != 1 or not isinstance(self.values[0], str):
                raise ValueError(f"{self.field}: regex takes one pattern string, got {self.values!r}")
            try:
                re.compile(self.values[0])
            except re.error as exc:
                raise ValueError(f"{self.field}: invalid regex {self.values[0]!r}: {exc}") from None
        elif self.op == "range":
            lo, hi = self.values
            for bound, key in ((lo, "min"), (hi, "max")):
                if bound is not None and (isinstance(bound, bool) or not isinstance(bound, (int, float))):
                    raise ValueError(f"{self.field}: {key} must be a number, got {bound!r}")
            if lo is None and hi is None:
                raise ValueError(f"{self.field}: a range needs min, max or both")
            if lo is not None and hi is not None and lo > hi:
                raise ValueError(f"{self.field}: min {lo} is greater than max {hi}")
        else:
            if not self.values:
                raise ValueError(f"{self.field}: needs at least one value")
            for v in self.values:
                _check_scalar(v, self.field)

    def describe(self) -> str:
        if self.op == "equals":
            return f"{self.field} = {self.values[0]!r}"
        if self.op == "in":
            return f"{self.field} in {list(self.values)!r}"
        if self.op == "regex":
            return f"{self.field} ~ /{self.values[0]}/"
        lo, hi = self.values
        return f"{self.field} in {self._interval()}"

    def _interval(self) -> str:
        lo, hi = self.values
        return f"[{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}]"

    def check(self, facts: SeriesFacts) -> Check:
        found = facts.values(self.field)
        if not found:
            return Check(False, (f"{self.field} is absent, wanted {self.describe()}",))
        shown = _show(found)
        if self.op in ("equals", "in"):
            ok = any(_same(item, v) for item in found for v in self.values)
            wanted = repr(self.values[0]) if self.op == "equals" else f"one of {list(self.values)!r}"
            return Check(ok, (f"{self.field} is {shown!r}" + ("" if ok else f", not {wanted}"),))
        if self.op == "regex":
            pattern = re.compile(self.values[0])
            ok = any(pattern.search(str(item)) for item in (*found, shown))
            return Check(ok, (f"{self.field} {shown!r} {'matches' if ok else 'does not match'} /{self.values[0]}/",))
        lo, hi = self.values
        numbers = [n for n in (_number(item) for item in found) if n is not None]
        if not numbers:
            return Check(False, (f"{self.field} is {shown!r}, not a number",))
        ok = any((lo is None or n >= lo) and (hi is None or n <= hi) for n in numbers)
        return Check(ok, (f"{self.field} {shown} {'is' if ok else 'is not'} within {self._interval()}",))


@dataclass(frozen=True)
class AllOf:
    """AND: every child holds."""

    children: tuple["Condition", ...]

    def __post_init__(self) -> None:
        if not self.children:
            raise ValueError("all: needs at least one condition")

    def check(self, facts: SeriesFacts) -> Check:
        results = [c.check(facts) for c in self.children]
        failed = [r for r in results if not r.ok]
        chosen = failed if failed else results
        return Check(not failed, tuple(reason for r in chosen for reason in r.reasons))

    def describe(self) -> str:
        return "(" + " AND ".join(c.describe() for c in self.children) + ")"


@dataclass(frozen=True)
class AnyOf:
    """OR: at least one child holds."""

    children: tuple["Condition", ...]

    def __post_init__(self) -> None:
        if not self.children:
            raise ValueError("any: needs at least one condition")

    def check(self, facts: SeriesFacts) -> Check:
        results = [c.check(facts) for c in self.children]
        for r in results:
            if r.ok:
                return r
        return Check(False, ("none of: " + " | ".join("; ".join(r.reasons) for r in results),))

    def describe(self) -> str:
        return "(" + " OR ".join(c.describe() for c in self.children) + ")"


Condition = Union[Leaf, AllOf, AnyOf]


def parse_condition(data: object, where: str = "match") -> Condition:
    """A condition tree from plain data; errors name the key's path, e.g. ``match.all[1].sequence``."""
    if not isinstance(data, Mapping) or not data:
        raise ValueError(f"{where}: a condition must be a non-empty mapping, got {data!r}")
    parts: list[Condition] = []
    for key, value in data.items():
        at = f"{where}.{key}"
        if key in ("all", "any"):
            if not isinstance(value, list) or not value:
                raise ValueError(f"{at}: must be a non-empty list of conditions, got {value!r}")
            children = tuple(parse_condition(item, f"{at}[{i}]") for i, item in enumerate(value))
            parts.append(AllOf(children) if key == "all" else AnyOf(children))
            continue
        try:
            field = _check_field(key)
        except ValueError as exc:
            raise ValueError(f"{at}: {exc}") from None
        parts.append(_parse_leaf(field, value, at))
    return parts[0] if len(parts) == 1 else AllOf(tuple(parts))


def _leaf(field: str, op: str, values: tuple, at: str) -> Leaf:
    """A :class:`Leaf`, its error (which starts with the field) re-said at the key's path."""
    try:
        return Leaf(field, op, values)
    except ValueError as exc:
        message = str(exc).removeprefix(f"{field}: ")
        raise ValueError(f"{at}: {message}") from None


def _parse_leaf(field: str, spec: object, at: str) -> Leaf:
    if isinstance(spec, list):
        if not spec:
            raise ValueError(f"{at}: an empty list matches nothing")
        return _leaf(field, "in", tuple(_check_scalar(v, at) for v in spec), at)
    if not isinstance(spec, Mapping):
        if spec is None:
            raise ValueError(f"{at}: no value given")
        return _leaf(field, "equals", (_check_scalar(spec, at),), at)
    for op in spec:
        if op not in OPERATORS:
            raise ValueError(f"{at}: unknown operator {op!r}{_suggest(str(op), OPERATORS)}")
    ops = set(spec)
    if not ops:
        raise ValueError(f"{at}: an empty mapping; give one of {', '.join(OPERATORS)}")
    if ops <= {"min", "max"}:
        return _leaf(field, "range", (spec.get("min"), spec.get("max")), at)
    if len(ops) > 1:
        raise ValueError(f"{at}: one operator per field ({sorted(ops)} given); combine several with all:")
    (op,) = ops
    value = spec[op]
    if op == "in":
        if not isinstance(value, list):
            raise ValueError(f"{at}.in: must be a list, got {value!r}")
        return _parse_leaf(field, value, f"{at}.in")
    if op == "regex" and not isinstance(value, str):
        raise ValueError(f"{at}.regex: must be a pattern string, got {value!r}")
    return _leaf(field, op, (value if op == "regex" else _check_scalar(value, f"{at}.{op}"),), at)


# ---------------------------------------------------------------- routes
@dataclass(frozen=True)
class Route:
    """A rule: series matching ``match`` fill ``slot`` of ``model``; results go to ``destinations``."""

    name: str
    model: str
    slot: str
    match: Condition
    destinations: tuple[str, ...] = ()
    priority: int = DEFAULT_PRIORITY

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise ValueError(f"Route.name must be a non-empty string, got {self.name!r}")
        prefix = f"route {self.name!r}"
        if not isinstance(self.model, str) or not self.model:
            raise ValueError(f"{prefix}: model must be a model name, got {self.model!r}")
        if not isinstance(self.slot, str) or not self.slot.isidentifier():
            raise ValueError(f"{prefix}: slot must be an input slot name, got {self.slot!r}")
        if not isinstance(self.match, (Leaf, AllOf, AnyOf)):
            raise ValueError(f"{prefix}: match must be a condition, got {type(self.match).__name__}")
        if not isinstance(self.destinations, tuple) or not all(isinstance(d, str) and d for d in self.destinations):
            raise ValueError(f"{prefix}: destinations must be a list of names, got {self.destinations!r}")
        if len(set(self.destinations)) != len(self.destinations):
            raise ValueError(f"{prefix}: destinations named twice: {list(self.destinations)}")
        if isinstance(self.priority, bool) or not isinstance(self.priority, int):
            raise ValueError(f"{prefix}: priority must be an integer, got {self.priority!r}")

    @classmethod
    def from_dict(cls, data: object, where: str = "route") -> "Route":
        """A route from plain data (one item of the configuration's ``routes`` list)."""
        if not isinstance(data, Mapping):
            raise ValueError(f"{where}: must be a mapping, got {data!r}")
        name = data.get("name")
        prefix = f"route {name!r}" if isinstance(name, str) and name else where
        for key in data:
            if key not in ROUTE_KEYS:
                raise ValueError(f"{prefix}: unknown key {key!r}{_suggest(str(key), ROUTE_KEYS)}")
        for key in ("name", "match", "model", "slot"):
            if key not in data:
                raise ValueError(f"{prefix}: missing key {key!r}")
        destinations = data.get("destinations", [])
        if not isinstance(destinations, list):
            raise ValueError(f"{prefix}: destinations must be a list of names, got {destinations!r}")
        try:
            match = parse_condition(data["match"])
        except ValueError as exc:
            raise ValueError(f"{prefix}: {exc}") from None
        return cls(name=name, model=data["model"], slot=data["slot"], match=match,
                   destinations=tuple(destinations), priority=data.get("priority", DEFAULT_PRIORITY))


def load_routes(items: object, specs: Mapping[str, ModelSpec] | None = None,
                destinations: Collection[str] | None = None) -> tuple[Route, ...]:
    """Routes from the configuration's list, sorted by priority (stable: order breaks ties).

    With ``specs`` (model name -> spec), each route's model and slot must exist; with
    ``destinations``, each destination a route names must be one of them.
    """
    if not isinstance(items, list):
        raise ValueError(f"routes must be a list, got {type(items).__name__}")
    routes = [Route.from_dict(item, f"routes[{i}]") for i, item in enumerate(items)]
    check_routes(routes, specs, destinations)
    return tuple(sorted(routes, key=lambda r: r.priority))


def check_routes(routes: Iterable[Route], specs: Mapping[str, ModelSpec] | None = None,
                 destinations: Collection[str] | None = None) -> None:
    """Names unique; models, slots and destinations known (when the known ones are given)."""
    seen: set[str] = set()
    for route in routes:
        prefix = f"route {route.name!r}"
        if route.name in seen:
            raise ValueError(f"{prefix}: the name is used by another route")
        seen.add(route.name)
        if specs is not None:
            if route.model not in specs:
                raise ValueError(f"{prefix}: unknown model {route.model!r}{_suggest(route.model, specs)}; "
                                 f"known: {', '.join(sorted(specs)) or 'none'}")
            slots = [s.name for s in specs[route.model].slots]
            if route.slot not in slots:
                raise ValueError(f"{prefix}: model {route.model!r} has no slot {route.slot!r}"
                                 f"{_suggest(route.slot, slots)}; its slots: {', '.join(slots)}")
        if destinations is not None:
            for d in route.destinations:
                if d not in destinations:
                    raise ValueError(f"{prefix}: unknown destination {d!r}{_suggest(d, destinations)}; "
                                     f"known: {', '.join(sorted(destinations)) or 'none'}")


def default_routes(spec: ModelSpec, destinations: Iterable[str] = (), priority: int = SPEC_PRIORITY) -> tuple[Route, ...]:
    """One route per input slot of ``spec``, from the slot's modality, sequences, body parts,
    min_slices and image components."""
    routes = []
    for slot in spec.slots:
        leaves = [Leaf("modality", "equals", (slot.modality,))]
        if slot.sequences:
            leaves.append(Leaf("sequence", "in", slot.sequences))
        if slot.body_parts:
            leaves.append(Leaf("body_part", "in", slot.body_parts))
        if slot.image_components:
            leaves.append(Leaf("image_component", "in", slot.image_components))
        leaves.append(Leaf("slices", "range", (slot.min_slices, None)))
        routes.append(Route(f"{spec.name}/{slot.name}", spec.name, slot.name, AllOf(tuple(leaves)),
                            tuple(destinations), priority))
    return tuple(routes)


# ---------------------------------------------------------------- matching
@dataclass(frozen=True)
class Attempt:
    """One route tried on a series."""

    route: Route
    matched: bool
    reasons: tuple[str, ...]


@dataclass(frozen=True)
class RouteDecision:
    """Every route tried on one series, in priority order, and the sequence class it was given."""

    series_instance_uid: str
    modality: str
    instances: int
    sequence: SequenceClass | None
    attempts: tuple[Attempt, ...]

    @property
    def matched(self) -> tuple[Route, ...]:
        return tuple(a.route for a in self.attempts if a.matched)

    @property
    def routed(self) -> bool:
        return bool(self.matched)

    @property
    def assignments(self) -> tuple[Route, ...]:
        """The first matching route per (model, slot); later ones for the same slot are shadowed."""
        out: dict[tuple[str, str], Route] = {}
        for route in self.matched:
            out.setdefault((route.model, route.slot), route)
        return tuple(out.values())

    @property
    def reason(self) -> str:
        """Why the series is unrouted ('' when it is routed)."""
        if self.routed:
            return ""
        if not self.attempts:
            return "no routes are configured"
        tried = "; ".join(f"{a.route.name!r}: {'; '.join(a.reasons)}" for a in self.attempts)
        return f"no route matched ({len(self.attempts)} tried): {tried}"


def match_series(ds: Dataset, instances: int, routes: Iterable[Route],
                 classifier: Callable[[Dataset], SequenceClass] = classify) -> RouteDecision:
    """Try ``routes`` (sorted here by priority, stable) on the series of ``ds`` with ``instances`` instances."""
    facts = SeriesFacts.from_dataset(ds, instances, classifier)
    ordered = sorted(routes, key=lambda r: r.priority)
    attempts = []
    for route in ordered:
        result = route.match.check(facts)
        attempts.append(Attempt(route, result.ok, result.reasons))
    decision = RouteDecision(facts.series_instance_uid, str(ds.get("Modality", "") or ""), instances,
                             facts.sequence, tuple(attempts))
    if decision.routed:
        logger.info("series routed", extra={"series_uid": decision.series_instance_uid, "instances": instances,
                                            "routes": [r.name for r in decision.matched]})
    else:
        logger.info("series unrouted", extra={"series_uid": decision.series_instance_uid, "instances": instances,
                                              "tried": len(attempts)})
    return decision


def explain(decision: RouteDecision) -> str:
    """Human-readable text: the series, its sequence class and why, each route tried and why."""
    lines = [f"series {decision.series_instance_uid or '(no SeriesInstanceUID)'}: "
             f"{decision.modality or 'no modality'}, {decision.instances} instance(s)"]
    seq = decision.sequence
    if seq is not None:
        lines.append(f"sequence: {seq.sequence} (from {seq.basis})")
        lines.extend(f"  - {r}" for r in seq.reasons)
    lines.append(f"routes tried, by priority: {len(decision.attempts)}")
    for a in decision.attempts:
        r = a.route
        dest = ", ".join(r.destinations) or "default destinations"
        lines.append(f"  [{'MATCH' if a.matched else 'no'}] {r.name} (priority {r.priority}) -> {r.model}.{r.slot}, to {dest}")
        lines.append(f"      rule: {r.match.describe()}")
        lines.extend(f"      - {reason}" for reason in a.reasons)
    if decision.routed:
        for r in decision.assignments:
            lines.append(f"result: routed to {r.model} slot {r.slot} by {r.name!r}, "
                         f"destinations: {', '.join(r.destinations) or 'default'}")
    else:
        lines.append(f"result: UNROUTED: {decision.reason}")
    return "\n".join(lines)


def read_series_headers(path: Path) -> list[tuple[Dataset, int]]:
    """Per series under ``path`` (a file or a folder, searched recursively): the header routing
    reads (:func:`series_consensus` of its instances' headers, without pixels) and its number of
    distinct instances. Files that are not DICOM are skipped (and logged)."""
    path = Path(path)
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    series: dict[str, dict[str, Dataset]] = {}
    for f in files:
        ds = read_header_or_none(f)
        if ds is None:
            logger.debug("not DICOM, skipped", extra={"file": str(f)})
            continue
        if "SeriesInstanceUID" not in ds:
            continue
        series.setdefault(str(ds.SeriesInstanceUID), {})[str(ds.get("SOPInstanceUID", f))] = ds
    out = []
    for uid, instances in series.items():
        consensus = series_consensus(instances[k] for k in sorted(instances))
        if consensus.header is not None:
            out.append((consensus.header, len(instances)))
    return out


def explain_path(path: Path, routes: Iterable[Route],
                 classifier: Callable[[Dataset], SequenceClass] = classify) -> str:
    """:func:`explain` for every series found under ``path`` (what ``neuroread route explain PATH`` prints)."""
    routes = tuple(routes)
    found = read_series_headers(path)
    if not found:
        return f"no DICOM series found under {path}"
    return "\n\n".join(explain(match_series(ds, n, routes, classifier)) for ds, n in found)
