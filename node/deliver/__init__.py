"""The deliver stage: destinations and a durable outbox with retries and back-off.

Destinations (built from plain dicts as YAML gives them: :func:`destination_from_dict`)
    ``dicom``   :class:`DicomDestination`, a C-STORE SCU (pynetdicom). It proposes exactly the
                SOP classes of the objects in the batch (Comprehensive 3D SR, KOS, SEG,
                Parametric Map, SC…), each in the object's own transfer syntax plus explicit and
                implicit VR little endian; one association per batch; ``TCP_NODELAY`` on its
                socket (so a C-STORE-RQ split over two PDUs never waits on the peer's delayed
                ACK); optional DICOM-TLS.
    ``folder``  :class:`FolderDestination`, ``<path>/<StudyUID>/<SeriesUID>/<SOPInstanceUID>.dcm``,
                each file written atomically (temporary file, fsync, rename, directory fsync).
    Extension point: a new kind (STOW-RS, Orthanc REST: planned, not built) is a frozen
    dataclass with ``name``, ``from_dict`` and ``send(items) -> list[Outcome]`` (the
    :class:`Destination` protocol), listed in :data:`DESTINATION_TYPES`.

The outbox (:class:`Outbox`), durable in SQL through SQLAlchemy (a SQLite file by default,
PostgreSQL by URL: portable types only, one unique constraint, no dialect-specific SQL)
    :meth:`Outbox.add` first writes each object once, atomically, to the outbox folder
    (same layout as the folder destination), then records one row per (destination, SOP
    Instance UID) in state ``pending``. Adding the same instance for the same destination again
    (a re-run job: UIDs are deterministic) adds no row, only the job's link to the existing row,
    and leaves the file already written as it is.
    :meth:`Outbox.deliver_due` sends every row due at ``now``, per destination, in batches (one
    association per batch), and records each object's outcome:

    ==========================================  ==========  ===================================
    what happened                               state       then
    ==========================================  ==========  ===================================
    DIMSE Success                               sent        done
    DIMSE Warning (0xB000, 0xB006, 0xB007…)     sent        the status and comment are kept
    DIMSE Failure (0xA7xx, 0xA9xx, 0xCxxx…),    rejected    kept with status and comment;
    SOP class or transfer syntax refused,                   never retried automatically
    outbox file unreadable                                  (:meth:`Outbox.requeue` does)
    connection refused, association rejected    retrying    next try after the back-off
    or aborted, timeout, no response, folder                ``min(cap, base * factor**(n-1))``
    write failed (disk full…)                               after the n-th attempt; never lost
    ==========================================  ==========  ===================================

    :meth:`Outbox.status` is the audit trail of a job: where each output went and how.
    One process delivers at a time (a lock in the :class:`Outbox`); several node processes on
    one database would each need their own destinations.

:class:`Deliverer` runs :meth:`Outbox.deliver_due` in a thread; or the node's worker loop calls
it. Time is injected (``clock``, ``now``), so tests need no sleeps.
"""
from .destinations import (DESTINATION_TYPES, PLANNED_TYPES, DicomDestination, Destination, FolderDestination,
                           Outcome, OutboxItem, TlsSettings, destination_from_dict, write_file)
from .outbox import STATES, Backoff, Deliverer, DeliveryReport, Outbox, State

__all__ = ["DESTINATION_TYPES", "PLANNED_TYPES", "STATES", "Backoff", "Deliverer", "DeliveryReport",
           "DicomDestination", "Destination", "FolderDestination", "Outbox", "OutboxItem", "Outcome", "State",
           "TlsSettings", "destination_from_dict", "write_file"]
