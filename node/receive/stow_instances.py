"""STOW-RS per instance (PS3.18 §10.5): each part of a request checked against the path's study
and what the node stores, stored through the spool, and the response dataset that lists each
instance as referenced (stored) or failed with its Failure Reason. The HTTP side (peers,
credentials, limits, reading the body) is :mod:`.stow`'s.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from enum import IntEnum
from io import BytesIO

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import DeflatedExplicitVRLittleEndian
from pynetdicom import AllStoragePresentationContexts

from neuroread.node.malformed import MAX_SEQUENCE_DEPTH, PARSE_ERRORS, sequence_too_deep, truncated_element
from neuroread.node.redact import describe_error
from neuroread.node.spool import InvalidUIDError, Spool, validate_uid

from .dimse import TRANSFER_SYNTAXES
from .multipart import Part

DICOM = "application/dicom"
STORAGE_SOP_CLASSES = frozenset(str(cx.abstract_syntax) for cx in AllStoragePresentationContexts)
_PIXEL_TAGS = (0x7FE00010, 0x7FE00008, 0x7FE00009)  # Pixel Data, Float and Double Float Pixel Data
_UNPRINTABLE = re.compile(r'[^\x20-\x7e]|["\\]')


class FailureReason(IntEnum):
    """Failure Reason (0008,1197) values this receiver answers (PS3.18 Table I.2-2)."""

    PROCESSING_FAILURE = 0x0110
    SOP_CLASS_NOT_SUPPORTED = 0x0122
    OUT_OF_RESOURCES = 0xA700
    DATASET_DOES_NOT_MATCH = 0xA900
    CANNOT_UNDERSTAND = 0xC000
    TRANSFER_SYNTAX_NOT_SUPPORTED = 0xC122


@dataclass
class Instance:
    """One part of a request: either valid (``failure is None``) or failed with a reason."""

    part: int  # 1-based
    data: memoryview | bytes = b""  # the PS3.10 file as received
    header: Dataset | None = None
    sop_class_uid: str = ""
    sop_instance_uid: str = ""
    study_uid: str = ""
    series_uid: str = ""
    transfer_syntax_uid: str = ""
    failure: FailureReason | None = None
    why: str = ""
    outcome: str = ""  # the spool's, once stored

    def fail(self, reason: FailureReason, why: str) -> "Instance":
        self.failure, self.why, self.data, self.header = reason, why, b"", None
        return self


def quote(text: str, limit: int = 200) -> str:
    """``text`` made safe for a quoted header value (printable ASCII, no quotes), shortened."""
    return _UNPRINTABLE.sub("?", text)[:limit]


def uid_or_empty(value: str) -> str:
    """``value`` if it is a valid UID (so it may be echoed in the response), else ``""``."""
    try:
        return validate_uid(value, "UID")
    except InvalidUIDError:
        return ""


def check_part(number: int, part: Part, study_uid: str | None, spool: Spool) -> Instance:
    """Check one body part (see the module docstring); ``study_uid``: the one in the path.

    A part without a Content-Type is taken as ``application/dicom``, the request's ``type``.
    """
    inst = Instance(number)
    if part.headers.get("Content-Type") is not None and part.headers.get_content_type() != DICOM:
        return inst.fail(FailureReason.CANNOT_UNDERSTAND,
                         f"part Content-Type {quote(part.headers.get_content_type(), 80)} is not {DICOM}")
    data = part.content
    if not data:
        return inst.fail(FailureReason.CANNOT_UNDERSTAND, "empty part")
    try:
        ds = dcmread(BytesIO(data))  # no force: a PS3.10 file (preamble, DICM, file meta) is required
        deflated = str(ds.file_meta.get("TransferSyntaxUID", "")) == DeflatedExplicitVRLittleEndian
        truncated = truncated_element(ds, None if deflated else len(data))
        too_deep = sequence_too_deep(ds)
        meta = ds.file_meta
        uids = {kw: ds.get(kw) for kw in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")}
        meta_uids = (meta.get("TransferSyntaxUID"), meta.get("MediaStorageSOPClassUID"),
                     meta.get("MediaStorageSOPInstanceUID"))
    except InvalidDicomError:
        return inst.fail(FailureReason.CANNOT_UNDERSTAND, "not a DICOM PS3.10 file (no preamble and 'DICM' prefix)")
    except PARSE_ERRORS as exc:
        return inst.fail(FailureReason.CANNOT_UNDERSTAND,
                         f"not a readable DICOM PS3.10 file ({describe_error(exc)})")
    if truncated:
        return inst.fail(FailureReason.CANNOT_UNDERSTAND, f"data set truncated: {truncated}")
    if too_deep:
        return inst.fail(FailureReason.CANNOT_UNDERSTAND, f"sequences nested deeper than {MAX_SEQUENCE_DEPTH} levels")
    inst.sop_class_uid, inst.sop_instance_uid, inst.study_uid, inst.series_uid = (str(v or "") for v in uids.values())
    missing = [kw for kw, v in uids.items() if not v]
    if missing:
        return inst.fail(FailureReason.CANNOT_UNDERSTAND, f"data set lacks {', '.join(missing)}")
    ts, meta_class, meta_instance = (None if v is None else str(v) for v in meta_uids)
    try:
        validate_uid(inst.sop_class_uid, "SOPClassUID")
        validate_uid(ts, "TransferSyntaxUID")
        spool.path_for(inst.study_uid, inst.series_uid, inst.sop_instance_uid)
    except InvalidUIDError as exc:
        return inst.fail(FailureReason.CANNOT_UNDERSTAND, str(exc))
    inst.transfer_syntax_uid = ts
    if ts not in TRANSFER_SYNTAXES:
        return inst.fail(FailureReason.TRANSFER_SYNTAX_NOT_SUPPORTED, f"transfer syntax {ts} is not accepted")
    if inst.sop_class_uid not in STORAGE_SOP_CLASSES:
        return inst.fail(FailureReason.SOP_CLASS_NOT_SUPPORTED,
                         f"SOP class {inst.sop_class_uid} is not a storage SOP class")
    if meta_class is not None and meta_class != inst.sop_class_uid:
        return inst.fail(FailureReason.DATASET_DOES_NOT_MATCH,
                         f"file meta SOP class {quote(meta_class, 64)} differs from the data set's "
                         f"{inst.sop_class_uid}")
    if meta_instance is not None and meta_instance != inst.sop_instance_uid:
        return inst.fail(FailureReason.CANNOT_UNDERSTAND, f"file meta SOP instance {quote(meta_instance, 64)} "
                                                          f"differs from the data set's {inst.sop_instance_uid}")
    if study_uid is not None and inst.study_uid != study_uid:
        return inst.fail(FailureReason.DATASET_DOES_NOT_MATCH,
                         f"instance of study {inst.study_uid}, not of {study_uid} named in the path")
    for tag in _PIXEL_TAGS:  # the header handed on needs no pixels; the bytes are stored whole
        ds.pop(tag, None)
    inst.data, inst.header = data, ds
    return inst


def response(instances: list[Instance]) -> Dataset:
    """The Store Instances Response (PS3.18 §10.5.3): stored ones referenced, the others failed."""
    stored, failed = [], []
    for inst in instances:
        item = Dataset()
        item.ReferencedSOPClassUID = uid_or_empty(inst.sop_class_uid)
        item.ReferencedSOPInstanceUID = uid_or_empty(inst.sop_instance_uid)
        if inst.failure is None:
            stored.append(item)
        else:
            item.FailureReason = int(inst.failure)
            failed.append(item)
    ds = Dataset()
    if stored:
        ds.ReferencedSOPSequence = stored
    if failed:
        ds.FailedSOPSequence = failed
    return ds
