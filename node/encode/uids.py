"""Deterministic UIDs for result objects (DESIGN.md, "Results as DICOM").

A UID is ``2.25.`` followed by the decimal value of a UUID version 5 (name based, SHA-1)
computed from the sorted input Series Instance UIDs, the model's name and version, the
identity of what decided (the weights' SHA-256 and the effective thresholds,
:meth:`neuroread.models.weights.Weights.identity`), the object kind, a part ("series",
"instance", "tracking"…) and an index. The same inputs through the same model version, weights
and thresholds always give the same UIDs, so a redelivered job replaces rather than duplicates
its objects in the PACS; new weights or thresholds write new objects beside the old ones.
"""
from __future__ import annotations

import re
import uuid
from dataclasses import dataclass

# Fixed namespace of neuroread's result UIDs; never change it (all UIDs would change).
NAMESPACE = uuid.UUID("5b0c4f62-4e0e-5d83-9f0a-6e6575726f72")
_UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")


def derive_uid(series_uids: tuple[str, ...] | list[str], model: str, version: str,
               kind: str, part: str, index: int = 0, identity: str = "") -> str:
    """``2.25.<uuid5>`` of (sorted ``series_uids``, model, version, identity, kind, part, index)."""
    if not series_uids:
        raise ValueError("derive_uid: series_uids must not be empty")
    for uid in series_uids:
        if not _UID.match(uid) or len(uid) > 64:
            raise ValueError(f"derive_uid: series_uids holds an invalid UID {uid!r}")
    if index < 0:
        raise ValueError(f"derive_uid: index must be >= 0, got {index}")
    name = "|".join(["neuroread-result", ",".join(sorted(set(series_uids))), model, version, identity, kind, part,
                     str(index)])
    return f"2.25.{uuid.uuid5(NAMESPACE, name).int}"


@dataclass(frozen=True)
class UidFactory:
    """UIDs for one job's results: ``factory.series("sr")``, ``factory.instance("seg", 0)``.

    ``identity``: the weights' SHA-256 and the effective thresholds (``<sha256>|any=0.5,...``)."""

    series_uids: tuple[str, ...]
    model: str
    version: str
    identity: str = ""

    def __post_init__(self) -> None:
        if not self.series_uids:
            raise ValueError("UidFactory.series_uids must not be empty")
        if not self.model or not self.version:
            raise ValueError("UidFactory.model and UidFactory.version must not be empty")

    def _uid(self, kind: str, part: str, index: int) -> str:
        return derive_uid(self.series_uids, self.model, self.version, kind, part, index, self.identity)

    def series(self, kind: str) -> str:
        return self._uid(kind, "series", 0)

    def instance(self, kind: str, index: int = 0) -> str:
        return self._uid(kind, "instance", index)

    def other(self, kind: str, part: str, index: int = 0) -> str:
        """UIDs inside objects: tracking UIDs, device observer UIDs…"""
        return self._uid(kind, part, index)
