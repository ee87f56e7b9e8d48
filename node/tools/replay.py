"""Replay: send DICOM files to a DICOM node (``neuroread replay PATH --to HOST:PORT``).

Test studies go to the node the way a PACS sends them: one association per batch of up to
128 (SOP class, transfer syntax) pairs, files sent as stored (no transcoding), with
TCP_NODELAY on the socket (the association comes from the deliver stage's DICOM
destination, which sets it), a progress bar and a per-status summary.
"""
from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from pydicom.errors import InvalidDicomError
from pynetdicom.status import code_to_category
from tqdm import tqdm

from neuroread.node.deliver import DicomDestination

logger = logging.getLogger(__name__)
_MAX_CONTEXTS = 128  # DICOM's limit on presentation contexts in one association


@dataclass(frozen=True)
class ReplayFile:
    path: Path
    sop_class_uid: str
    transfer_syntax_uid: str


@dataclass
class ReplayReport:
    sent: int = 0
    failed: list[tuple[Path, str]] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    statuses: Counter = field(default_factory=Counter)


def find_files(paths: Iterable[Path]) -> tuple[list[ReplayFile], list[tuple[Path, str]]]:
    """The DICOM files under ``paths`` (files or folders), and the files that are not DICOM."""
    found, skipped = [], []
    for root in paths:
        root = Path(root)
        if not root.exists():
            raise FileNotFoundError(f"no such file or folder: {root}")
        for f in sorted([root] if root.is_file() else (p for p in root.rglob("*") if p.is_file())):
            try:
                ds = pydicom.dcmread(f, stop_before_pixels=True, specific_tags=["SOPClassUID"])
                found.append(ReplayFile(f, str(ds.file_meta.MediaStorageSOPClassUID),
                                        str(ds.file_meta.TransferSyntaxUID)))
            except (InvalidDicomError, AttributeError, OSError) as exc:
                skipped.append((f, f"not a DICOM Part 10 file ({type(exc).__name__})"))
    return found, skipped


def _batches(files: list[ReplayFile]) -> list[list[ReplayFile]]:
    batches: list[list[ReplayFile]] = [[]]
    pairs: set[tuple[str, str]] = set()
    for f in files:
        pair = (f.sop_class_uid, f.transfer_syntax_uid)
        if pair not in pairs and len(pairs) == _MAX_CONTEXTS:
            batches.append([])
            pairs = set()
        pairs.add(pair)
        batches[-1].append(f)
    return [b for b in batches if b]


def replay(paths: Iterable[Path], host: str, port: int, called_ae: str = "NEUROREAD",
           calling_ae: str = "NEUROREAD_SCU", progress: bool = True) -> ReplayReport:
    """Send every DICOM file under ``paths`` to ``host:port``; returns what happened to each."""
    files, skipped = find_files(paths)
    report = ReplayReport(skipped=skipped)
    dest = DicomDestination(name="replay", host=host, port=port, called_ae=called_ae, calling_ae=calling_ae)
    bar = tqdm(total=len(files), unit="file", desc=f"replay to {host}:{port}", disable=not progress)
    for batch in _batches(files):
        contexts: dict[str, list[str]] = {}
        for f in batch:
            syntaxes = contexts.setdefault(f.sop_class_uid, [])
            if f.transfer_syntax_uid not in syntaxes:
                syntaxes.append(f.transfer_syntax_uid)
        assoc = dest.associate(contexts)
        if not assoc.is_established:
            reason = "association rejected" if assoc.is_rejected else "association not established"
            report.failed.extend((f.path, f"{reason} by {host}:{port}") for f in batch)
            bar.update(len(batch))
            continue
        try:
            for f in batch:
                try:
                    status = assoc.send_c_store(f.path)
                except ValueError as exc:  # the peer accepted no context for this file's syntax
                    report.failed.append((f.path, str(exc)))
                    bar.update()
                    continue
                code = int(status.Status) if status and "Status" in status else None
                category = code_to_category(code) if code is not None else "No response"
                report.statuses[category] += 1
                if category in ("Success", "Warning"):
                    report.sent += 1
                else:
                    report.failed.append((f.path, f"{category} (0x{code:04X})" if code is not None else category))
                bar.update()
        finally:
            assoc.release()
    bar.close()
    logger.info("replayed %d files: %d sent, %d failed, %d skipped", len(files), report.sent,
                len(report.failed), len(report.skipped))
    return report
