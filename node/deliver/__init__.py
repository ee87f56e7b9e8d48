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
    ``stowrs``  :class:`StowRsDestination`, STOW-RS with dicomweb-client to a DICOMweb root
                (``url``): one request per study and ``batch_size`` objects, to
                ``<url>/studies/<StudyUID>``.
    ``orthanc`` :class:`OrthancDestination`, Orthanc's REST API: ``POST /instances`` per object,
                then, if configured, ``POST /modalities/{name}/store`` (``modalities``) and
                ``POST /dicom-web/servers/{name}/stow`` (``dicomweb_servers``) with the batch's
                Orthanc ids. Its ``rest`` callable replaces HTTP when the Orthanc plugin calls
                Orthanc in-process.
    The two HTTP kinds share ``username`` + ``password`` (HTTP basic) or ``token`` (bearer),
    each also as ``password_env`` / ``token_env`` (an environment variable's name, so secrets
    need not sit in the YAML), ``ca_file`` or ``verify: false`` for https, and ``timeout``;
    the session is :func:`neuroread.node.intake.dicomweb.http_session`.
    Extension point: a new kind is a frozen dataclass with ``name``, ``from_dict`` and
    ``send(items) -> list[Outcome]`` (the :class:`Destination` protocol), listed in
    :data:`DESTINATION_TYPES`.

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

    The HTTP kinds map HTTP the same way (``status_code`` holds the HTTP status):

    ==========================================  ==========  ===================================
    what happened                               state       then
    ==========================================  ==========  ===================================
    STOW-RS 200; an instance in the reply's     sent        a Warning Reason is kept
    Referenced SOP Sequence (any status);
    Orthanc 200 Success or AlreadyStored
    (and every forward done)
    STOW-RS: an instance in the Failed SOP      rejected    the Failure Reason is kept
    Sequence (0008,1198), any status
    other 4xx (400, 409, 413, 415…) for an      rejected    status and a short body excerpt
    instance the reply does not list;
    Orthanc: 4xx from ``POST /instances``, or
    200 with another Status
    401/403 (the credentials: the operator      retrying    the message says so; nothing is
    fixes them), 404 (a wrong URL path), 408,               lost while the operator fixes it
    429, 3xx, 5xx; STOW-RS 202 for an
    instance the reply does not list;
    connection refused, timeout, TLS failure;
    Orthanc: a forward that fails (the
    instance is stored; storing again is
    idempotent)
    ==========================================  ==========  ===================================

    :meth:`Outbox.status` is the audit trail of a job: where each output went and how.
    One process delivers at a time (a lock in the :class:`Outbox`); several node processes on
    one database would each need their own destinations.

:class:`Deliverer` runs :meth:`Outbox.deliver_due` in a thread; or the node's worker loop calls
it. Time is injected (``clock``, ``now``), so tests need no sleeps.
"""
from .destinations import Destination, DicomDestination, FolderDestination, OutboxItem, Outcome, TlsSettings, write_file
from .from_config import DESTINATION_TYPES, destination_from_dict
from .http_destinations import OrthancDestination, RestCall, StowRsDestination, stow_outcomes
from .outbox import STATES, Backoff, Deliverer, DeliveryReport, Outbox, State

__all__ = ["DESTINATION_TYPES", "STATES", "Backoff", "Deliverer", "DeliveryReport", "DicomDestination",
           "Destination", "FolderDestination", "OrthancDestination", "Outbox", "OutboxItem", "Outcome", "RestCall",
           "State", "StowRsDestination", "TlsSettings", "destination_from_dict", "stow_outcomes", "write_file"]
