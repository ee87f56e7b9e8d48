"""Seeded fuzzing of the C-STORE path of ``neuroread serve`` (a real subprocess, real SCUs).

308 mutants of a valid phantom head CT slice, 44 of each kind in :data:`KINDS` (required
attributes deleted, invalid values per VR, truncated data sets, sizes that do not match the
pixel bytes, sequences nested 100-1000 levels deep, random bytes in a sequence, bad UIDs), each
made by a :class:`random.Random` seeded with (:data:`SEED`, kind, index), so a failure names a
mutant that the next run makes again. Each mutant is a Part 10 file whose meta gives the request
(SOP class and instance UID, transfer syntax) and whose data set bytes are sent as they are:
pynetdicom sends them unparsed (``STORE_SEND_CHUNKED_DATASET``) over few associations, with its
UID check on the request turned off (a 65-character SOP Instance UID must reach the node), and
dcmtk ``storescu`` sends the subset it can read (:func:`storescu_can_read`) in one association.

The campaign (:func:`campaign`) runs once per module; each test then checks one promise:
every mutant answered in time with a status the node defines (never 0x0110) and the status its
documentation gives for that fault; at most :data:`LOG_LINES_PER_REFUSAL` log lines per refusal,
no traceback and no element value (every invalid text carries :data:`MARK`); nothing written
outside the node's
spool and data folders; and C-ECHO, a clean SIGTERM restart and a valid study processed to
``done`` afterwards.
"""
from __future__ import annotations

import os
import random
import re
import struct
import subprocess
import time
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pydicom
import pytest
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.tag import Tag
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE
from pynetdicom import _config as pynetdicom_config

from neuroread.node.receive.dimse import StoreStatus
from neuroread.node.spool.store import TEMP_PREFIX
from support.node_process import (
    AET,
    REPO,
    SCU_AET,
    ServeNode,
    copy_series,
    statuses,
    storescu,
    tail,
    uids,
    wait_done,
    wait_for,
)

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore:Invalid value for VR")]  # on purpose

SEED = 20240801
PER_KIND = 44
KINDS = ("deleted", "invalid-value", "truncated", "size-mismatch", "deep-sequence", "garbage-sequence", "bad-uid")
# In every invalid text value and bad UID the fuzz makes: must never reach the log or a path.
MARK = "ZQFUZZ"
# Literal invalid values without room for MARK, which must not reach the log either.
LOGGED_NEVER = (MARK, "1950-01-12", "nan?")
KNOWN = frozenset(StoreStatus)
PROCESSING_FAILURE = 0x0110
DIMSE_TIMEOUT_S = 20.0   # the SCU's bound on each answer
LOG_LINES_PER_REFUSAL = 2   # the node's line, and pydicom's warning about the value (redacted)
TRACEBACK = "Traceback (most recent call last)"
UID_ATTRIBUTES = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")
_EXPLICIT_32 = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
_ITEM, _ITEM_END, _SEQ_END = 0xE000FFFE, 0xE00DFFFE, 0xE0DDFFFE  # (FFFE,E000) etc. as LE uint32
_UNDEFINED = 0xFFFFFFFF


# -- encoding ------------------------------------------------------------------------------------
def raw(keyword_or_tag: str | int, vr: str, value: bytes, length: int | None = None) -> RawDataElement:
    """An element pydicom writes exactly as given, unchecked. Of ``length`` only 0xFFFFFFFF
    (undefined) counts: pydicom writes a defined length as ``len(value)``."""
    return RawDataElement(Tag(keyword_or_tag), vr, len(value) if length is None else length, value, 0, False, True)


def encode(ds: Dataset) -> bytes:
    """``ds`` as explicit VR little endian data set bytes."""
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, False
    write_dataset(fp, ds)
    return fp.getvalue()


def _meta_element(element: int, vr: bytes, value: bytes) -> bytes:
    if len(value) % 2:
        value += b"\x00" if vr == b"UI" else b" "
    if vr == b"OB":
        return struct.pack("<HH2sHI", 2, element, vr, 0, len(value)) + value
    return struct.pack("<HH2sH", 2, element, vr, len(value)) + value


def part10(data: bytes, sop_class: str, sop_instance: str) -> bytes:
    """A Part 10 file: its meta names the request (any UID, unchecked), then ``data`` as it is."""
    body = b"".join((_meta_element(0x0001, b"OB", b"\x00\x01"),
                     _meta_element(0x0002, b"UI", sop_class.encode("latin-1")),
                     _meta_element(0x0003, b"UI", sop_instance.encode("latin-1")),
                     _meta_element(0x0010, b"UI", ExplicitVRLittleEndian.encode()),
                     _meta_element(0x0012, b"UI", b"1.2.826.0.1.3680043.8.498.1")))
    return b"\x00" * 128 + b"DICM" + _meta_element(0x0000, b"UL", struct.pack("<I", len(body))) + body + data


def element_spans(data: bytes) -> list[tuple[int, int, int, int]]:
    """(tag, start, header length, end) of each top-level element of explicit VR LE ``data``
    (defined lengths only)."""
    spans, pos = [], 0
    while pos < len(data):
        group, element, vr = struct.unpack_from("<HH2s", data, pos)
        if vr in _EXPLICIT_32:
            (length,), header = struct.unpack_from("<I", data, pos + 8), 12
        else:
            (length,), header = struct.unpack_from("<H", data, pos + 6), 8
        if length == _UNDEFINED:
            raise ValueError(f"({group:04X},{element:04X}) has an undefined length: not in the phantom")
        spans.append(((group << 16) | element, pos, header, pos + header + length))
        pos += header + length
    return spans


def nested_sequence(tag: int, undefined: list[bool]) -> tuple[bytes, int]:
    """The value of sequence ``tag`` nesting itself ``len(undefined)`` levels (one item per level,
    the innermost holding a Referenced SOP Class UID); (value bytes, length field). Level ``i``'s
    sequence and item use undefined lengths where ``undefined[i]``. Built bottom-up, no recursion."""
    leaf = struct.pack("<HH2sH", 0x0008, 0x1150, b"UI", 26) + b"1.2.840.10008.5.1.4.1.1.2\x00"
    content = leaf
    value, length = b"", 0
    for level in reversed(range(len(undefined))):
        if undefined[level]:
            item = struct.pack("<II", _ITEM, _UNDEFINED) + content + struct.pack("<II", _ITEM_END, 0)
            value, length = item, _UNDEFINED
        else:
            item = struct.pack("<II", _ITEM, len(content)) + content
            value, length = item, len(item)
        if level:  # the sequence element holding this item is the parent item's content
            header = struct.pack("<HH2sHI", tag >> 16, tag & 0xFFFF, b"SQ", 0, length)
            content = header + value + (struct.pack("<II", _SEQ_END, 0) if length == _UNDEFINED else b"")
    return value, length


# -- mutants -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Mutant:
    """One fuzzed instance: ``path`` is the Part 10 file sent (its meta names the request)."""

    kind: str
    index: int
    detail: str
    request_uid: str
    path: Path
    expected: frozenset[int] | None = None  # what the node's documentation answers; None: any known status

    def __str__(self) -> str:
        return f"{self.kind}#{self.index} ({self.detail})"


_DELETED = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "Modality", "Rows",
            "Columns", "BitsAllocated", "SamplesPerPixel", "PhotometricInterpretation", "PixelRepresentation",
            "PixelData", "ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "all but the UIDs")

_INVALID: tuple[tuple[str, str, bytes], ...] = (
    ("StudyDate", "DA", b"1950-01-12"),
    ("PatientBirthDate", "DA", f"1950{MARK}".encode()),
    ("StudyTime", "TM", b"xx"),
    ("SeriesTime", "TM", f"25:61{MARK}".encode()),
    ("SeriesNumber", "IS", b"abc"),
    ("InstanceNumber", "IS", f"1.5{MARK}".encode()),
    ("AcquisitionNumber", "IS", b"99999999999999999999"),
    ("SliceThickness", "DS", b"nan?"),
    ("KVP", "DS", f"1e999{MARK}".encode()),
    ("ImagePositionPatient", "DS", b"1\\2"),
    ("FrameOfReferenceUID", "UI", f"1.2.{MARK}.3".encode()),
    ("PatientAge", "AS", f"69 years {MARK}".encode()),
    ("Modality", "CS", b"ct"),
    ("BodyPartExamined", "CS", f"HEAD AND NECK {MARK} FAR TOO LONG".encode()),
    ("PatientName", "PN", f"{MARK}^a^b^c^d^e^f^g".encode()),
    ("ReferringPhysicianName", "PN", f"A=B=C=D={MARK}".encode()),
    ("InstitutionName", "LO", (MARK + "x" * 80).encode()),
    ("StudyDescription", "LO", f"{MARK}\x1b$B\xff\xfe\x00".encode("latin-1")),
    ("StationName", "SH", f"{MARK}-STATION-NAME-TOO-LONG".encode()),
    ("Rows", "US", b"\x80\x00\x00"),
    ("Columns", "US", b"\x80"),
    ("BitsAllocated", "US", b"\x10\x00\x10\x00\x10\x00"),
    ("PixelRepresentation", "US", b""),
    ("SmallestImagePixelValue", "SS", b"\x01\x02\x03"),
)

_SIZES = ("Rows 129", "Rows 4096", "Rows 0", "Columns 65535", "Columns 1", "BitsAllocated 8",
          "BitsAllocated 32", "SamplesPerPixel 3", "NumberOfFrames 2", "PixelData short", "PixelData long",
          "PixelData odd")


def _resize(ds: Dataset, variant: str, rng: random.Random) -> None:
    """One of :data:`_SIZES`: an attribute that sizes the pixels changed, or the pixels resized."""
    keyword, how = variant.split()
    pixels = ds.PixelData
    if keyword != "PixelData":
        setattr(ds, keyword, int(how))
    elif how == "short":
        ds.PixelData = pixels[: 2 * rng.randrange(1, len(pixels) // 2)]
    elif how == "long":
        ds.PixelData = pixels + rng.randbytes(2 * rng.randrange(1, 4096))
    else:
        ds["PixelData"] = raw("PixelData", "OW", pixels[:-1])


_DEEP_TAGS = (0x00081140, 0x00082112, 0x0040A730)  # Referenced Image, Source Image, Content Sequence
_DEEP_LENGTHS = ("undefined lengths", "defined lengths", "mixed lengths")

_GARBAGE = ("defined length, random bytes", "undefined length, random bytes", "item of random length",
            "undefined-length item, random bytes", "length past the end", "item tag then nothing")

_BAD_UIDS: tuple[tuple[str, Callable[[random.Random], str]], ...] = (
    ("path", lambda rng: f"1.2.3/../../{MARK}"),
    ("dot-dot", lambda rng: f"../{MARK}"),
    ("absolute path", lambda rng: f"/tmp/{MARK}"),
    ("backslashes", lambda rng: f"1.2.3\\..\\{MARK}"),
    ("too long", lambda rng: "1." + "".join(rng.choice("123456789") for _ in range(rng.randrange(63, 200)))),
    ("leading zeros", lambda rng: f"1.2.0{rng.randrange(1, 99)}.4"),
    ("leading zero first", lambda rng: f"01.2.{rng.randrange(1, 999)}"),
    ("letters", lambda rng: f"1.2.{MARK}"),
    ("empty component", lambda rng: f"1..{rng.randrange(1, 999)}"),
    ("trailing dot", lambda rng: f"1.2.{rng.randrange(1, 999)}."),
    ("NUL inside", lambda rng: f"1.2\x00{MARK}"),
    ("hidden name", lambda rng: f".{MARK}"),
    ("url-encoded", lambda rng: f"%2e%2e%2f{MARK}"),
)
_BAD_UID_TARGETS = ("SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "SOPClassUID")


def _fuzz_uid(*parts: object) -> str:
    return generate_uid(entropy_srcs=[str(SEED), *map(str, parts)])


def make_mutant(kind: str, index: int, sources: list[Path], out: Path) -> Mutant:
    """Mutant ``index`` of ``kind``: its variant is ``index`` modulo the kind's variants (spread
    evenly), everything else (source slice, lengths, bytes) drawn from its own seeded RNG."""
    rng = random.Random(f"{SEED}-{kind}-{index}")
    ds = pydicom.dcmread(rng.choice(sources))
    ds.StudyInstanceUID = _fuzz_uid("study")
    ds.SeriesInstanceUID = _fuzz_uid("series", kind)
    request_uid = ds.SOPInstanceUID = _fuzz_uid("instance", kind, index)
    expected: frozenset[int] | None = None
    data: bytes | None = None

    if kind == "deleted":
        detail = _DELETED[index % len(_DELETED)]
        if detail == "all but the UIDs":
            for keyword in [e.keyword for e in ds if e.keyword not in UID_ATTRIBUTES]:
                delattr(ds, keyword)
        else:
            delattr(ds, detail)
            if detail in UID_ATTRIBUTES:
                expected = frozenset({StoreStatus.CANNOT_UNDERSTAND_MISSING_UID})
    elif kind == "invalid-value":
        keyword, vr, value = _INVALID[index % len(_INVALID)]
        ds[keyword] = raw(keyword, vr, value)
        detail = f"{vr} {keyword} = {value[:24]!r}"
    elif kind == "truncated":
        data = encode(ds)
        spans = element_spans(data)
        series_end = next(end for tag, _, _, end in spans if tag == 0x0020000E)
        pixels = next((start, end) for tag, start, _, end in spans if tag == 0x7FE00010)
        where = ("pixel value", "pixel value", "pixel value", "pixel element header", "element after the UIDs",
                 "element among the UIDs")[index % 6]
        if where == "pixel value":
            cut = rng.randrange(pixels[0] + 12 + 1, pixels[1])
        elif where == "pixel element header":
            cut = rng.randrange(pixels[0] + 1, pixels[0] + 12)
        else:
            after = where == "element after the UIDs"
            candidates = [(s, e) for tag, s, _, e in spans if tag != 0x7FE00010
                          and (s >= series_end if after else e <= series_end and tag > 0x00080018)]
            start, end = rng.choice(candidates)
            cut = rng.randrange(start + 1, end)
        tag, start, header, _ = next(span for span in spans if span[1] < cut < span[3])
        part = f"{cut - start} of the {header} header bytes" if cut - start < header else "in the value"
        data = data[:cut]
        detail = f"cut inside the {where}, ({tag >> 16:04X},{tag & 0xFFFF:04X}) {part}"
        expected = frozenset({StoreStatus.CANNOT_UNDERSTAND}) if where != "element among the UIDs" else \
            frozenset({StoreStatus.CANNOT_UNDERSTAND, StoreStatus.CANNOT_UNDERSTAND_MISSING_UID})
    elif kind == "size-mismatch":
        detail = _SIZES[index % len(_SIZES)]
        _resize(ds, detail, rng)
    elif kind == "deep-sequence":
        lengths = _DEEP_LENGTHS[index % len(_DEEP_LENGTHS)]
        tag = _DEEP_TAGS[(index // len(_DEEP_LENGTHS)) % len(_DEEP_TAGS)]
        depth = rng.randrange(100, 1001)
        undefined = [lengths == "undefined lengths" or (lengths == "mixed lengths" and rng.random() < 0.5)
                     for _ in range(depth)]
        value, length = nested_sequence(tag, undefined)
        ds[tag] = raw(tag, "SQ", value, length)
        detail = f"({tag >> 16:04X},{tag & 0xFFFF:04X}) nested {depth} levels, {lengths}"
        expected = frozenset({StoreStatus.CANNOT_UNDERSTAND})
    elif kind == "garbage-sequence":
        detail = _GARBAGE[index % len(_GARBAGE)]
        noise = rng.randbytes(rng.randrange(1, 4000))
        value, length = {
            "defined length, random bytes": (noise, None),
            "undefined length, random bytes": (noise, _UNDEFINED),
            "item of random length": (struct.pack("<II", _ITEM, rng.randrange(0, 2**32 - 1)) + noise, None),
            "undefined-length item, random bytes": (struct.pack("<II", _ITEM, _UNDEFINED) + noise, _UNDEFINED),
            "length past the end": (noise, 0x7FFFFFF0),
            "item tag then nothing": (struct.pack("<I", _ITEM), None),
        }[detail]
        tag = _DEEP_TAGS[index % len(_DEEP_TAGS)]
        ds[tag] = raw(tag, "SQ", value, None if length == 0x7FFFFFF0 else length)
        if length == 0x7FFFFFF0:  # pydicom writes a defined length as it is: patch the header
            data = encode(ds)
            header = struct.pack("<HH2sHI", tag >> 16, tag & 0xFFFF, b"SQ", 0, len(value))
            at = data.index(header)
            data = data[:at] + header[:8] + struct.pack("<I", length) + data[at + 12:]
        detail = f"({tag >> 16:04X},{tag & 0xFFFF:04X}) {detail}" + (f", {len(noise)} bytes" if noise in value else "")
    elif kind == "bad-uid":
        name, make = _BAD_UIDS[index % len(_BAD_UIDS)]
        target = _BAD_UID_TARGETS[(index // len(_BAD_UIDS)) % len(_BAD_UID_TARGETS)]
        bad = make(rng)
        ds[target] = raw(target, "UI", bad.encode("latin-1") + (b"\x00" if len(bad) % 2 else b""))
        detail = f"{target} {name} {bad[:40]!r}"
        expected = frozenset({StoreStatus.DATASET_DOES_NOT_MATCH_SOP_CLASS}) if target == "SOPClassUID" \
            else frozenset({StoreStatus.CANNOT_UNDERSTAND_INVALID_UID})
        if target == "SOPInstanceUID" and "\\" not in bad:
            request_uid = bad  # the request carries it too, or the node would only see a mismatch
        elif target == "SOPInstanceUID":  # a backslash splits values: no SCU can put it in a request
            expected = frozenset({StoreStatus.CANNOT_UNDERSTAND_INVALID_UID,
                                  StoreStatus.CANNOT_UNDERSTAND_INSTANCE_MISMATCH})
    else:
        raise ValueError(f"unknown mutation kind {kind!r}; one of {KINDS}")

    path = out / f"{kind}-{index:03d}.dcm"
    path.write_bytes(part10(encode(ds) if data is None else data, CTImageStorage, request_uid))
    return Mutant(kind, index, detail, request_uid, path, expected)


def storescu_can_read(mutant: Mutant) -> bool:
    """Whether dcmtk storescu sends this mutant (it parses each file first and needs its UIDs)."""
    if mutant.kind in ("deep-sequence", "garbage-sequence", "truncated"):
        return False
    return not (mutant.kind == "deleted" and mutant.detail in ("SOPClassUID", "SOPInstanceUID")) \
        and not (mutant.kind == "bad-uid" and mutant.detail.startswith(("SOPInstanceUID", "SOPClassUID")))


# -- sending -------------------------------------------------------------------------------------
@dataclass
class Answer:
    status: int | None   # None: no answer (time-out or aborted association)
    seconds: float
    comment: str = ""
    via: str = "pynetdicom"


def send_pynetdicom(port: int, mutants: list[Mutant]) -> dict[Mutant, Answer]:
    """Each mutant's data set bytes as they are, over as few associations as the node allows
    (a new one only after an abort); each answer bounded by :data:`DIMSE_TIMEOUT_S`."""
    ae = AE(ae_title=SCU_AET)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = DIMSE_TIMEOUT_S
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    answers: dict[Mutant, Answer] = {}
    assoc = None
    try:
        for mutant in mutants:
            if assoc is None or not assoc.is_established:
                assoc = ae.associate("127.0.0.1", port, ae_title=AET)
                if not assoc.is_established:
                    answers[mutant] = Answer(None, 0.0, "association not established")
                    continue
            start = time.monotonic()
            rsp = assoc.send_c_store(mutant.path)
            status = int(rsp.Status) if "Status" in rsp else None
            answers[mutant] = Answer(status, time.monotonic() - start, str(rsp.get("ErrorComment", "")))
            if sum(a.status is None for a in answers.values()) >= 3:
                break  # the node stopped answering: three time-outs are enough to say so
    finally:
        if assoc is not None and assoc.is_established:
            assoc.release()
    return answers


def send_storescu(port: int, mutants: list[Mutant]) -> tuple[dict[Mutant, Answer], str]:
    """The mutants through dcmtk storescu, one association, each answer bounded by its DIMSE
    time-out; (each mutant's answer, read from the output block of its file; storescu's output)."""
    start = time.monotonic()
    timeout = str(int(DIMSE_TIMEOUT_S))
    run = storescu(port, [m.path for m in mutants], "--no-halt", "-to", timeout, "-ta", timeout, "-td", timeout)
    per = (time.monotonic() - start) / max(len(mutants), 1)
    blocks = re.split(r"^I: Sending file: ", run.stdout + run.stderr, flags=re.MULTILINE)[1:]
    got = {block.split("\n", 1)[0].strip(): block for block in blocks}
    answers = {}
    for mutant in mutants:
        block = got.get(str(mutant.path), "")
        status = statuses(subprocess.CompletedProcess([], 0, block, ""))
        answers[mutant] = Answer(status[0] if len(status) == 1 else None, per,
                                 "" if block else "storescu did not send it", via="storescu")
    return answers, tail(run, 3000)


# -- the campaign --------------------------------------------------------------------------------
def tree(root: Path, skip: Callable[[Path], bool]) -> set[Path]:
    """Every path under ``root`` (files and folders), but not below one where ``skip``."""
    found: set[Path] = set()
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if not skip(Path(folder, d))]
        found.update(Path(folder, name) for name in [*dirs, *files])
    return found


_REPO_SKIP = {".git", ".venv", "__pycache__", ".pytest_cache", "neuroread.egg-info"}


@dataclass
class Campaign:
    node: ServeNode
    mutants: list[Mutant]
    answers: dict[Mutant, Answer]
    storescu_answers: dict[Mutant, Answer]
    storescu_output: str
    fuzz_log: str                 # what the node logged while the mutants arrived
    echo_after: bool
    new_paths: list[Path]         # created outside the node's data folder (and its own logs)
    named_paths: list[Path]       # anywhere checked, named with MARK
    seconds: float

    def table(self) -> str:
        """Statuses per mutation kind, as the SCUs saw them."""
        rows = []
        for kind in KINDS:
            seen = Counter("none" if a.status is None else f"0x{a.status:04X}"
                           for answers in (self.answers, self.storescu_answers)
                           for m, a in answers.items() if m.kind == kind)
            rows.append(f"{kind:18} " + ", ".join(f"{s} ×{n}" for s, n in sorted(seen.items())))
        return "\n".join(rows)


@pytest.fixture(scope="module")
def sources(phantom_sets) -> list[Path]:
    study = sorted(p.parent for p in phantom_sets["ct-hemorrhage"].glob("*/truth.json"))[0]
    return sorted((study / "S01").glob("*.dcm"))


@pytest.fixture(scope="module")
def campaign(tmp_path_factory, sources) -> Campaign:
    root = tmp_path_factory.mktemp("fuzz")
    out = root / "mutants"
    out.mkdir()
    with warnings.catch_warnings():  # pydicom warns about the values we break on purpose
        warnings.simplefilter("ignore")
        mutants = [make_mutant(kind, i, sources, out) for kind in KINDS for i in range(PER_KIND)]
    node = ServeNode(root / "node", destination_port=None, peers=[SCU_AET])
    data = node.data.resolve()
    base = tmp_path_factory.getbasetemp().resolve()
    own_logs = {(node.root / f"serve-{i}.log").resolve() for i in range(1, 4)}

    def watched() -> set[Path]:
        return (tree(base, lambda p: p.resolve() == data)
                | tree(REPO, lambda p: p.name in _REPO_SKIP)) - own_logs

    before = watched()
    node.start()
    log_start = len(node.log_text())
    start = time.monotonic()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(pynetdicom_config, "STORE_SEND_CHUNKED_DATASET", True)  # send the bytes unparsed
        mp.setitem(pynetdicom_config.VALIDATORS, "UI", lambda value: (True, ""))  # bad UIDs must reach the node
        answers = send_pynetdicom(node.port, mutants)
    subset = [m for m in mutants if storescu_can_read(m)][::3]
    storescu_answers, storescu_output = send_storescu(node.port, subset)
    seconds = time.monotonic() - start
    time.sleep(1.0)  # let the last log lines of the refusals land
    fuzz_log = node.log_text()[log_start:]
    echo_after = node.echo()
    after = watched()
    named = sorted(p for p in [*after, *tree(Path("/tmp"), lambda p: p.resolve() in (base, data)),
                               *Path("/").iterdir()] if MARK in p.name)
    result = Campaign(node, mutants, answers, storescu_answers, storescu_output, fuzz_log, echo_after,
                      sorted(after - before), named, seconds)
    yield result
    node.stop()
    print(node.log_tail())



def _listed(failures: list[str]) -> str:
    return "\n".join(failures[:60]) + (f"\n… {len(failures) - 60} more" if len(failures) > 60 else "")


# -- the promises ---------------------------------------------------------------------------------
def test_mutants_are_seeded_and_spread_evenly_over_the_kinds(campaign, sources, tmp_path):
    assert len(campaign.mutants) >= 300
    assert Counter(m.kind for m in campaign.mutants) == Counter({k: PER_KIND for k in KINDS})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        again = [make_mutant(m.kind, m.index, sources, tmp_path) for m in campaign.mutants[::37]]
    assert [a.path.read_bytes() for a in again] == [m.path.read_bytes() for m in campaign.mutants[::37]]
    assert campaign.storescu_answers and len(campaign.storescu_answers) >= 20


def test_every_mutant_answered_in_time_with_a_known_status_never_processing_failure(campaign):
    failures = []
    for via, answers in (("pynetdicom", campaign.answers), ("storescu", campaign.storescu_answers)):
        unsent = [m for m in campaign.mutants if via == "pynetdicom" and m not in answers]
        failures += [f"{m}: not sent, the node stopped answering before it" for m in unsent]
        for mutant, answer in answers.items():
            status = answer.status
            if status is None:
                failures.append(f"{mutant} via {via}: no answer ({answer.comment or 'time-out or abort'})")
            elif status == PROCESSING_FAILURE:
                failures.append(f"{mutant} via {via}: 0x0110 processing failure ({answer.comment})")
            elif status not in KNOWN:
                failures.append(f"{mutant} via {via}: 0x{status:04X} is not a StoreStatus ({answer.comment})")
            elif mutant.expected is not None and status not in mutant.expected:
                want = "/".join(f"0x{s:04X}" for s in sorted(mutant.expected))
                failures.append(f"{mutant} via {via}: 0x{status:04X} ({answer.comment}), documented {want}")
    slow = [f"{m}: {a.seconds:.1f} s" for m, a in campaign.answers.items() if a.seconds > DIMSE_TIMEOUT_S / 2]
    output = f"\nstorescu:\n{campaign.storescu_output}" if any("storescu" in f for f in failures) else ""
    assert not failures and not slow, _listed(failures + slow) + f"\n{campaign.table()}" + output


def test_refusals_logged_in_bounded_lines_without_values_or_tracebacks(campaign):
    log = campaign.fuzz_log
    lines = log.splitlines()
    problems = []
    if TRACEBACK in log:
        problems.append("a traceback:\n" + log[log.index(TRACEBACK) - 200:][:3000])
    leaked = [line for line in lines if any(v in line for v in LOGGED_NEVER)]
    problems += [f"an element value in the log: {line[:300]}" for line in leaked[:10]]
    answered = [*campaign.answers.items(), *campaign.storescu_answers.items()]
    for mutant in {m for m, a in answered if a.status not in (None, StoreStatus.SUCCESS)}:
        if re.fullmatch(r"[0-9.]{1,64}", mutant.request_uid):  # a UID that may be logged as it is
            mentions = sum(mutant.request_uid in line for line in lines)
            sends = sum(m is mutant for m, _ in answered)  # sent by pynetdicom and maybe storescu
            if mentions > LOG_LINES_PER_REFUSAL * sends:
                problems.append(f"{mutant}: {mentions} log lines name it, for {sends} refusals")
    if len(lines) > LOG_LINES_PER_REFUSAL * len(answered) + 20:
        problems.append(f"{len(lines)} log lines for {len(answered)} instances")
    assert not problems, _listed(problems)


def test_nothing_written_outside_the_spool_and_data_folders(campaign):
    assert not campaign.new_paths, "\n".join(map(str, campaign.new_paths[:40]))
    assert not campaign.named_paths, "\n".join(map(str, campaign.named_paths[:40]))
    spool = campaign.node.spool
    outside = [p for p in campaign.node.data.rglob("*") if MARK in p.name or ".." in p.name]
    assert not outside, outside
    stored = {p.stem for p in spool.rglob("*.dcm")}
    refused = {m.request_uid for m, a in campaign.answers.items() if a.status != StoreStatus.SUCCESS}
    assert not stored & refused, sorted(stored & refused)[:10]
    assert not list(spool.rglob(f"{TEMP_PREFIX}*"))


def test_node_answers_echo_restarts_cleanly_and_then_processes_a_valid_study(campaign, sources, tmp_path):
    node = campaign.node
    assert campaign.echo_after, node.log_tail()
    assert node.proc is not None and node.proc.poll() is None, node.log_tail()
    assert node.stop() == 0, node.log_tail()  # SIGTERM: a clean exit
    node.start()
    assert node.echo()

    def settled() -> bool:  # the fuzz series' jobs (if any) finished, nothing left waiting or running
        return all(j.state in ("done", "failed") for j in node.jobs())

    wait_for(settled, 60, "every job of the fuzz series done or failed", node)
    sent = copy_series(sources[:8], tmp_path / "valid")
    _, series, _ = uids(sent)
    run = storescu(node.port, sent)
    assert run.returncode == 0 and statuses(run) == [StoreStatus.SUCCESS] * len(sent), tail(run)
    wait_done(node, series, timeout=60)
    assert node.echo()
    assert TRACEBACK not in node.log_text(), node.log_tail(200)
