"""Malformed data sets: what pydicom raises for them, and the damage it reads without a word.

Every place that reads a data set someone else wrote (the SCP and the STOW-RS receiver, the
spool rescan at start-up, routing, the Orthanc intake) catches :data:`PARSE_ERRORS` and checks
:func:`truncated_element` and :func:`sequence_too_deep` the same way, so one odd instance has
the same defined outcome wherever it turns up.
"""
from __future__ import annotations

import struct
import zlib

from pydicom.datadict import dictionary_has_tag, dictionary_VR
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.errors import BytesLengthException, InvalidDicomError

# What a malformed data set can raise from pydicom's (lazy) decoding.
# (pydicom raises OSError "No tag to read" for an element that never ends, and RecursionError for
# sequences of undefined length nested a few hundred levels deep: it reads them recursively.)
PARSE_ERRORS = (InvalidDicomError, ValueError, TypeError, KeyError, IndexError, EOFError, OSError,
                 OverflowError, NotImplementedError, struct.error, zlib.error, UnicodeDecodeError,
                 RecursionError, BytesLengthException)
# Deeper sequence nesting than any IOD needs (the deepest standard ones, SR content trees and
# functional groups, stay well below 20) is refused before anything recurses over it.
MAX_SEQUENCE_DEPTH = 32
_UNDEFINED_LENGTH = 0xFFFFFFFF


def truncated_element(ds: Dataset, size: int | None = None) -> str | None:
    """The first sign that ``ds`` was cut short, in words, or None.

    pydicom reads a truncated stream without complaint: the last value just comes up short, and
    a cut inside an element's header (fewer than 8 of its bytes) is dropped silently, so a data
    set cut in the middle of its pixel data, or just before them, would otherwise be stored as if
    whole. So: a top-level value shorter than its declared length; and, given ``size`` (the
    bytes ``ds`` was read from, offsets counted from their start), bytes left after the last
    element's value (a defined-length last element only).
    """
    last = None
    for tag in ds.keys():
        raw = ds.get_item(tag)
        if isinstance(raw, RawDataElement) and raw.length != _UNDEFINED_LENGTH \
                and raw.value is not None and len(raw.value) < raw.length:
            return f"{raw.tag} holds {len(raw.value)} of {raw.length} bytes"
        last = raw
    if size is not None and isinstance(last, RawDataElement) and last.length != _UNDEFINED_LENGTH:
        left = size - (last.value_tell + last.length)
        if left > 0:
            return f"{left} bytes after the last element {last.tag}: an element header cut short"
    return None


def sequence_too_deep(ds: Dataset, limit: int = MAX_SEQUENCE_DEPTH) -> bool:
    """Whether ``ds`` nests sequences deeper than ``limit`` levels.

    Walks the sequences iteratively (no recursion over the input's depth) and parses only
    sequence elements; raises what pydicom raises for a sequence it cannot parse (one of
    :data:`PARSE_ERRORS`).
    """
    stack: list[tuple[Dataset, int]] = [(ds, 0)]
    while stack:
        current, depth = stack.pop()
        for tag in list(current.keys()):
            raw = current.get_item(tag)
            vr = raw.VR if raw.VR is not None else (dictionary_VR(tag) if dictionary_has_tag(tag) else None)
            if vr != "SQ":
                continue
            items = current[tag].value
            if items and depth + 1 > limit:
                return True
            stack.extend((item, depth + 1) for item in items)
    return False
