"""Strict writing, tolerant copying: the source attributes results copy, checked before encoding.

Every result keeps the source study, so highdicom copies the root attributes of the Patient and
Study information entities of the source's IOD (Patient, Clinical Trial Subject, General Study,
Patient Study, Clinical Trial Study modules) from a source instance into each object, and then
writes them strictly: one value a sender got wrong (a PatientBirthDate of ``1950-01-12``, an
over-long Accession Number) would fail the whole job and no results would go out.

:func:`withhold_invalid` checks exactly those attributes (the list comes from highdicom's own
module tables, so it is what highdicom will copy) on a source data set, in place:

* a value that is not valid for its VR (pydicom's validators; DA, DT and TM must also convert
  to dates and times, as highdicom converts them) is **emptied** when the attribute is Type 2
  (the IOD then still holds it, with no value), **removed** when it is Type 1C or 3;
  a sequence with an invalid value in any item is emptied or removed likewise;
* a Type 1 attribute is never touched: an invalid one makes the encoding (or dciodvfy) fail and
  the job fails with the attribute's name as its reason.

Each change is returned as a :class:`Withheld` that names the attribute by keyword and tag and
says what was wrong in words, never with the value; the node writes them to the job's audit
trail. The data set's pixel data and every attribute outside those modules are left alone.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import lru_cache

import pydicom
from highdicom._standard_utils import get_iod_module_map, get_module_attribute_map, get_sop_class_iod_map
from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.tag import Tag
from pydicom.valuerep import DA, DT, TM, VALIDATORS

COPIED_ENTITIES = ("Patient", "Study")
# Used for a source whose SOP class highdicom's tables do not know: the mandatory modules.
_FALLBACK_MODULES = ("patient", "general-study")
_TEMPORAL = {"DA": DA, "DT": DT, "TM": TM}
_MAX_DEPTH = 8  # items of the copied sequences checked this deep (the modules nest 2-3 levels)


@dataclass(frozen=True)
class Withheld:
    """One copied attribute whose source value was left out of the results (value not kept)."""

    keyword: str
    tag: str  # "(0010,0030)"
    action: str  # "emptied" | "removed" | "filled from the series"
    problem: str

    def as_dict(self) -> dict[str, str]:
        return asdict(self)

    def __str__(self) -> str:
        return f"{self.keyword} {self.tag} {self.action}: {self.problem}"


@lru_cache(maxsize=64)
def copied_attributes(sop_class_uid: str) -> tuple[tuple[str, str], ...]:
    """(keyword, type) of the root attributes highdicom copies from a source of this SOP class."""
    iods, modules, attributes = get_sop_class_iod_map(), get_iod_module_map(), get_module_attribute_map()
    iod = iods.get(str(sop_class_uid))
    keys = ([m["key"] for m in modules[iod] if m["ie"] in COPIED_ENTITIES] if iod in modules
            else list(_FALLBACK_MODULES))
    out: dict[str, str] = {}
    for key in keys:
        for item in attributes.get(key, []):
            if not item["path"]:
                out.setdefault(str(item["keyword"]), str(item["type"]))
    return tuple(out.items())


def _tag_text(keyword: str) -> str:
    tag = Tag(tag_for_keyword(keyword))
    return f"({tag.group:04X},{tag.element:04X})"


def _value_problem(vr: str, value: object) -> str | None:
    """Why one value is not valid for ``vr`` (None when it is), in words without the value."""
    if value is None or value == "":
        return None
    if vr in _TEMPORAL and isinstance(value, str):
        try:
            _TEMPORAL[vr](value)
        except (ValueError, TypeError, OverflowError):
            return f"not a valid {vr} value"
    validator = VALIDATORS.get(vr)
    if validator is None:
        return None
    # PersonName, DSfloat/DSdecimal and IS objects as the text they were read from: pydicom's
    # validators take text, and refuse a DSfloat('82.0') itself as "cannot be assigned"
    ok, _ = validator(vr, str(value) if vr in ("PN", "DS", "IS") else value)
    return None if ok else f"not a valid {vr} value"


def _element_problem(ds: Dataset, keyword: str, depth: int = 0) -> str | None:
    try:
        elem = ds[keyword]
        vr, value = elem.VR, elem.value
    except (ValueError, TypeError, KeyError, IndexError, OverflowError, UnicodeDecodeError, OSError) as exc:
        return f"cannot be read ({type(exc).__name__})"
    if vr == "SQ":
        if depth >= _MAX_DEPTH:
            return None
        for number, item in enumerate(value or [], 1):
            for tag in list(item.keys()):
                sub_keyword = pydicom.datadict.keyword_for_tag(tag)
                if not sub_keyword:
                    continue  # private or unknown: highdicom writes it as it came
                problem = _element_problem(item, sub_keyword, depth + 1)
                if problem:
                    return f"item {number}: {sub_keyword} {_tag_text(sub_keyword)} {problem}"
        return None
    values = value if isinstance(value, (MultiValue, list, tuple)) else [value]
    for v in values:
        problem = _value_problem(vr, v)
        if problem:
            return problem
    return None


def withhold_invalid(ds: Dataset) -> list[Withheld]:
    """Empty or remove, in ``ds``, each copied attribute whose value is not valid (module docstring)."""
    withheld = []
    for keyword, attr_type in copied_attributes(str(ds.get("SOPClassUID", ""))):
        if keyword not in ds:
            continue
        problem = _element_problem(ds, keyword)
        if problem is None or attr_type == "1":
            continue
        tag = Tag(tag_for_keyword(keyword))
        if attr_type == "2":
            vr = ds.get_item(tag).VR or pydicom.datadict.dictionary_VR(tag)
            ds[tag] = pydicom.DataElement(tag, vr, [] if vr == "SQ" else None)
            action = "emptied"
        else:
            del ds[tag]
            action = "removed"
        withheld.append(Withheld(keyword, _tag_text(keyword), action, problem))
    return withheld


# Series-level attributes the encoders read from a source instance (a Parametric Map takes its
# source's Modality): all instances of a series carry the same value.
SERIES_LEVEL = ("Modality",)


def fill_series_level(datasets: list[Dataset]) -> list[Withheld]:
    """Give every instance of one series the series-level attributes (:data:`SERIES_LEVEL`) that
    some instances lack or leave empty, with the value most instances carry (routing decided on
    the same agreement, :func:`neuroread.node.assemble.consensus.series_consensus`). Returns one :class:`Withheld`
    (action ``"filled from the series"``) per attribute filled; nothing when none is missing."""
    out = []
    for keyword in SERIES_LEVEL:
        values = [str(ds.get(keyword, "") or "").strip() for ds in datasets]
        present = [v for v in values if v]
        missing = [ds for ds, v in zip(datasets, values) if not v]
        if not present or not missing:
            continue
        agreed = max(set(present), key=lambda v: (present.count(v), -present.index(v)))
        for ds in missing:
            setattr(ds, keyword, agreed)
        out.append(Withheld(keyword, _tag_text(keyword), "filled from the series",
                            f"missing or empty in {len(missing)} of {len(datasets)} instances"))
    return out


def withhold_invalid_all(datasets: list[Dataset]) -> list[Withheld]:
    """:func:`withhold_invalid` on every data set; each distinct change once, in order."""
    seen: dict[tuple[str, str, str], Withheld] = {}
    for ds in datasets:
        for w in withhold_invalid(ds):
            seen.setdefault((w.keyword, w.action, w.problem), w)
    return list(seen.values())
