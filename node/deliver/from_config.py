"""The destination kinds by their YAML ``type`` and the one factory that builds them."""
from __future__ import annotations

import difflib
from collections.abc import Mapping
from types import MappingProxyType

from .destinations import Destination, DicomDestination, FolderDestination
from .http_destinations import OrthancDestination, StowRsDestination

DESTINATION_TYPES: Mapping[str, type] = MappingProxyType({
    "dicom": DicomDestination, "folder": FolderDestination, "stowrs": StowRsDestination, "orthanc": OrthancDestination})


def destination_from_dict(cfg: object, where: str = "destination") -> Destination:
    """A destination from its YAML mapping; ``ValueError`` names the key and the problem."""
    if not isinstance(cfg, Mapping):
        raise ValueError(f"{where} must be a mapping, got {type(cfg).__name__}")
    kind = cfg.get("type")
    if kind not in DESTINATION_TYPES:
        near = difflib.get_close_matches(str(kind), list(DESTINATION_TYPES), n=1)
        hint = f"; did you mean {near[0]!r}?" if near else ""
        raise ValueError(f"{where}.type: {kind!r} is not a destination type "
                         f"(one of {', '.join(DESTINATION_TYPES)}){hint}")
    return DESTINATION_TYPES[kind].from_dict(cfg, where)
