"""What a series' instances agree on: the header routing reads.

Routing used to read the instance with the lowest SOP Instance UID, so one odd instance (one
without Modality, say) decided a whole series. :func:`series_consensus` reads every instance's
header instead, ignores the unreadable ones, and takes for each attribute the value most
instances carry; instances that disagree on Modality or SOP Class make a series that cannot be
routed, with the counts as its reason.
"""
from __future__ import annotations

import copy
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset

from neuroread.node.malformed import PARSE_ERRORS

# Attributes whose values must agree across a series' instances for it to be routed at all.
AGREEMENT_KEYWORDS = ("Modality", "SOPClassUID")
# Attributes that differ per instance by design: the representative instance's own value is kept.
_PER_INSTANCE = frozenset({"SOPInstanceUID", "InstanceNumber", "ImagePositionPatient", "SliceLocation",
                           "AcquisitionTime", "ContentTime", "AcquisitionDateTime", "InstanceCreationTime",
                           "WindowCenter", "WindowWidth", "LargestImagePixelValue", "SmallestImagePixelValue",
                           "TriggerTime", "ImageComments"})


def _value_key(elem: pydicom.DataElement) -> object:
    value = elem.value
    if isinstance(value, (list, tuple, pydicom.multival.MultiValue)):
        return tuple(str(v) for v in value)
    return str(value) if value is not None else None


@dataclass(frozen=True)
class SeriesConsensus:
    """What a series' instances agree on: the header routing reads, and what stands in the way.

    ``header`` is the series' representative instance (the lowest SOP Instance UID among the
    readable ones that carry the agreed Modality and SOP class) with each top-level, non-sequence
    attribute set to the value most instances carry (ties keep the representative's own value;
    attributes that differ per instance by design keep it too); ``disagreements`` lists the
    :data:`AGREEMENT_KEYWORDS` on which readable instances carry different values, with the
    counts; ``unreadable`` counts the instances whose header could not be read (ignored).
    """

    header: Dataset | None
    readable: int
    unreadable: int
    disagreements: tuple[str, ...] = ()

    @property
    def problem(self) -> str:
        """Why the series cannot be routed ("" when it can)."""
        if self.header is None:
            return f"none of its {self.unreadable} instances has a readable header"
        if self.disagreements:
            return "its instances disagree on " + "; ".join(self.disagreements)
        return ""


def _without_pixels(ds: Dataset) -> Dataset:
    """A deep copy of ``ds`` without its pixel data (group 7FE0): headers are all routing reads,
    and the sources a job has loaded whole need not be copied with their pixels."""
    out = Dataset()
    for tag in ds.keys():
        if tag.group == 0x7FE0:
            continue
        try:
            out[tag] = copy.deepcopy(ds[tag])
        except PARSE_ERRORS:
            continue  # an element that cannot be read is not routed on
    return out


def series_consensus(headers: Iterable[Dataset | None]) -> SeriesConsensus:
    """The :class:`SeriesConsensus` of one series' instance headers (None: unreadable).

    The headers are expected sorted by SOP Instance UID (the first agreeing one is the
    representative); a value of an agreement attribute that is missing or empty is ignored,
    so one instance without Modality does not decide anything.
    """
    readable, unreadable = [], 0
    for ds in headers:
        if ds is None:
            unreadable += 1
        else:
            readable.append(ds)
    if not readable:
        return SeriesConsensus(None, 0, unreadable)
    disagreements, agreed = [], {}
    for keyword in AGREEMENT_KEYWORDS:
        counts = Counter(str(v).strip() for ds in readable if (v := ds.get(keyword)) not in (None, ""))
        if len(counts) > 1:
            disagreements.append(f"{keyword} (" + ", ".join(f"{v} ×{n}" for v, n in counts.most_common()) + ")")
        if counts:
            agreed[keyword] = counts.most_common(1)[0][0]
    representative = next((ds for ds in readable
                           if all(str(ds.get(k, "")).strip() == v for k, v in agreed.items())), readable[0])
    header = _without_pixels(representative)
    if len(readable) > 1:
        votes: dict[int, Counter] = {}
        elements: dict[tuple[int, object], pydicom.DataElement] = {}
        for ds in readable:
            for tag in list(ds.keys()):
                if tag.is_private or tag.group == 2:
                    continue
                try:
                    elem = ds[tag]
                    key = _value_key(elem)
                except PARSE_ERRORS:
                    continue  # an element that cannot be read has no vote
                if elem.VR == "SQ" or elem.keyword in _PER_INSTANCE:
                    continue
                votes.setdefault(int(elem.tag), Counter())[key] += 1
                elements.setdefault((int(elem.tag), key), elem)
        for tag, counter in votes.items():
            (best, n), own = counter.most_common(1)[0], _value_key(header[tag]) if tag in header else None
            if best != own and n > (counter[own] if own is not None else 0) and (own is not None or n * 2 > len(readable)):
                header[tag] = copy.deepcopy(elements[(tag, best)])
    for keyword, value in agreed.items():
        setattr(header, keyword, value)
    return SeriesConsensus(header, len(readable), unreadable, tuple(disagreements))


def read_header_or_none(path: Path) -> Dataset | None:
    """One instance's header without pixels; None when it cannot be read (any parse error)."""
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        ds.get("Modality"), ds.get("SOPClassUID")  # values parsed here, not later
        return ds
    except PARSE_ERRORS:
        return None
