"""Spool: received instances on disk, written atomically (temp file, fsync, rename), UIDs checked
before they become paths, one study per series; and the quarantine for spool files that cannot
be used (:class:`Quarantine`); concurrent writers into one folder share its ``fsync``
(:class:`FolderSync`). :mod:`.atomic` holds the durable-file helpers other stages write
their own files with (the outbox, the DICOMweb pull).
"""
from .atomic import Writer, atomic_write, fsync_dir, make_dirs, write_all
from .group_sync import FolderSync
from .quarantine import Quarantine
from .store import (
                    InstanceRecord,
                    InvalidUIDError,
                    SeriesStudyConflictError,
                    Spool,
                    SpoolError,
                    SpoolFullError,
                    describe_uid,
                    validate_uid,
)

__all__ = [
    "FolderSync",
    "InstanceRecord",
    "InvalidUIDError",
    "Quarantine",
    "SeriesStudyConflictError",
    "Spool",
    "SpoolError",
    "SpoolFullError",
    "Writer",
    "atomic_write",
    "describe_uid",
    "fsync_dir",
    "make_dirs",
    "validate_uid",
    "write_all",
]
