"""The receive stage: a DICOM SCP (C-ECHO, C-STORE) that hands instances to the spool.

:class:`StorageSCP` is the policy (who may associate, what a data set must hold, which status
answers what); :class:`neuroread.node.receive.association.AssociationServer` is the network loop it runs on
(pynetdicom's PDU, negotiation and DIMSE code, without pynetdicom's polling reactors: that
module's docstring says why and what was measured).

Negotiation
    Every storage SOP class pynetdicom knows (``AllStoragePresentationContexts``: CT, MR,
    Enhanced CT/MR, PET, US, SC, SR, SEG, …) plus Verification, each with the transfer
    syntaxes in :data:`TRANSFER_SYNTAXES` (implicit/explicit VR little endian, deflated,
    JPEG baseline/extended/lossless, JPEG-LS, JPEG 2000, HTJ2K, RLE). Data sets are stored as
    received, never transcoded. A SOP class outside that list (a private one, say) gets its
    presentation context rejected ("abstract syntax not supported"); if no context is left the
    peer cannot send anything on the association (pynetdicom's SCU then aborts it).
    Verification is accepted with implicit and explicit VR little endian.

Who may associate (checked on the A-ASSOCIATE-RQ, before any negotiation)
    * ``peers``: an allow-list of :class:`Peer` (calling AE title and/or address or network);
      ``None`` (the default, for one-machine use) accepts any peer. A peer not on the list
      gets A-ASSOCIATE-RJ *rejected-permanent, service-user, calling AE title not recognised*.
    * the called AE title must equal ``ae_title`` unless ``require_called_ae=False``;
      otherwise A-ASSOCIATE-RJ *rejected-permanent, service-user, called AE title not recognised*.
    * at most ``max_associations`` at once; one more gets *rejected-transient,
      service-provider (presentation), local limit exceeded*.
    Each rejection is logged at WARNING with the AE titles and the address (no patient data).

C-STORE statuses (:class:`StoreStatus`)
    Success only after :meth:`neuroread.node.spool.store.Spool.store` has returned (the instance is durable).
    ``0xA700`` disk full, ``0xA701`` another storage I/O error, ``0xA900`` data set's SOP Class
    UID differs from the request's, ``0xC000`` data set cannot be parsed, ``0xC001`` a required
    UID (SOP class/instance, study, series) is missing, ``0xC002`` a UID is not a valid DICOM UID
    (e.g. path characters; nothing is written), ``0xC003`` the data set's SOP Instance UID
    differs from the request's, ``0xC004`` the series is already held under another study
    (nothing is written; see :mod:`neuroread.node.spool.store`). Sequences nested deeper than
    :data:`MAX_SEQUENCE_DEPTH` and every other failure to parse answer ``0xC000``. Failures
    carry an Error Comment saying why and give one log line, which names attributes and UIDs,
    never other element values.

Nagle
    The accepted socket gets ``TCP_NODELAY`` so that a small C-STORE-RSP is never held back
    waiting for the peer's delayed ACK (dcmtk's ``storescu`` needs ``TCP_NODELAY=1`` in its
    environment for the same reason on its side).
"""
from __future__ import annotations

import ipaddress
import logging
import ssl
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import IntEnum
from io import BytesIO

from pydicom.dataset import Dataset
from pydicom.uid import (
    HTJ2K,
    JPEG2000,
    JPEG2000MC,
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    HTJ2KLossless,
    HTJ2KLosslessRPCL,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEG2000MCLossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)
from pynetdicom import AllStoragePresentationContexts
from pynetdicom.dsutils import decode
from pynetdicom.presentation import PresentationContext, build_context
from pynetdicom.sop_class import Verification

from neuroread.node.malformed import MAX_SEQUENCE_DEPTH, PARSE_ERRORS, sequence_too_deep, truncated_element
from neuroread.node.redact import describe_error
from neuroread.node.spool import InvalidUIDError, SeriesStudyConflictError, Spool, SpoolFullError, describe_uid

from .association import Association, AssociationServer, Rejection
from .pdu import file_meta

logger = logging.getLogger(__name__)

TRANSFER_SYNTAXES: tuple[str, ...] = (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    JPEG2000Lossless,
    JPEG2000,
    JPEG2000MCLossless,
    JPEG2000MC,
    HTJ2KLossless,
    HTJ2KLosslessRPCL,
    HTJ2K,
    RLELossless,
)

PREAMBLE = b"\x00" * 128 + b"DICM"

# A-ASSOCIATE-RJ (result, source, diagnostic), PS3.8 9.3.4
_RJ_CALLING_AE = (0x01, 0x01, 0x03)
_RJ_CALLED_AE = (0x01, 0x01, 0x07)


class StoreStatus(IntEnum):
    """The C-STORE response statuses this SCP answers (PS3.4 B.2.3; 0xC0xx are ours)."""

    SUCCESS = 0x0000
    OUT_OF_RESOURCES = 0xA700
    OUT_OF_RESOURCES_IO_ERROR = 0xA701
    DATASET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
    CANNOT_UNDERSTAND = 0xC000
    CANNOT_UNDERSTAND_MISSING_UID = 0xC001
    CANNOT_UNDERSTAND_INVALID_UID = 0xC002
    CANNOT_UNDERSTAND_INSTANCE_MISMATCH = 0xC003
    CANNOT_UNDERSTAND_SERIES_IN_OTHER_STUDY = 0xC004


@dataclass(frozen=True)
class Peer:
    """One allowed peer: a calling AE title and/or an address (IP, or network like 10.0.0.0/8).

    ``None`` for either means any. ``Peer("PACS", "10.1.2.3")`` allows PACS from that host only.
    """

    ae_title: str | None = None
    address: str | None = None

    def __post_init__(self) -> None:
        if self.ae_title is not None:
            if not isinstance(self.ae_title, str) or not 0 < len(self.ae_title.strip()) <= 16:
                raise ValueError(f"Peer.ae_title must be 1-16 characters, got {self.ae_title!r}")
            if "\\" in self.ae_title or any(ord(c) < 32 for c in self.ae_title):
                raise ValueError(f"Peer.ae_title contains a forbidden character: {self.ae_title!r}")
        if self.address is not None:
            try:
                ipaddress.ip_network(self.address, strict=False)
            except ValueError as exc:
                raise ValueError(f"Peer.address must be an IP address or network, got {self.address!r}") from exc

    def matches(self, ae_title: str, address: str) -> bool:
        if self.ae_title is not None and ae_title.strip() != self.ae_title.strip():
            return False
        if self.address is None:
            return True
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        net = ipaddress.ip_network(self.address, strict=False)
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return ip.version == net.version and ip in net


def _check_ae_title(value: object, field: str) -> str:
    if not isinstance(value, str) or not 0 < len(value.strip()) <= 16 or "\\" in value:
        raise ValueError(f"{field} must be 1-16 characters without '\\', got {value!r}")
    return value.strip()


def _failure(status: StoreStatus, comment: str) -> Dataset:
    rsp = Dataset()
    rsp.Status = int(status)
    rsp.ErrorComment = comment[:64]
    return rsp


class StorageSCP:
    """A C-ECHO / C-STORE SCP that stores every instance in a :class:`~neuroread.node.spool.store.Spool`.

    Parameters
    ----------
    spool:
        Where instances go; its ``on_stored`` callback is the hand-off to the next stage.
    ae_title:
        Our AE title (1-16 characters).
    host, port:
        Where to listen; ``port=0`` picks a free port, read it from :attr:`port` after
        :meth:`start`.
    peers:
        Allowed peers, or ``None`` to accept any (the one-machine default).
    require_called_ae:
        Refuse an association whose called AE title is not ``ae_title``.
    max_associations:
        Concurrent associations accepted (>= 1).
    ssl_context:
        A server-side :class:`ssl.SSLContext` for DICOM-TLS, or ``None`` for plain TCP.
    transfer_syntaxes:
        Transfer syntaxes accepted for storage (default :data:`TRANSFER_SYNTAXES`).
    """

    def __init__(
        self,
        spool: Spool,
        *,
        ae_title: str = "NEUROREAD",
        host: str = "127.0.0.1",
        port: int = 11112,
        peers: Iterable[Peer] | None = None,
        require_called_ae: bool = True,
        max_associations: int = 10,
        ssl_context: ssl.SSLContext | None = None,
        transfer_syntaxes: Sequence[str] = TRANSFER_SYNTAXES,
        acse_timeout: float = 30.0,
        dimse_timeout: float = 60.0,
        network_timeout: float = 60.0,
    ) -> None:
        if not isinstance(spool, Spool):
            raise ValueError(f"StorageSCP.spool must be a Spool, got {type(spool).__name__}")
        self.ae_title = _check_ae_title(ae_title, "StorageSCP.ae_title")
        if not isinstance(port, int) or not 0 <= port <= 65535:
            raise ValueError(f"StorageSCP.port must be 0-65535, got {port!r}")
        if not isinstance(max_associations, int) or max_associations < 1:
            raise ValueError(f"StorageSCP.max_associations must be >= 1, got {max_associations!r}")
        if ssl_context is not None and not isinstance(ssl_context, ssl.SSLContext):
            raise ValueError(f"StorageSCP.ssl_context must be an ssl.SSLContext, got {ssl_context!r}")
        self.peers: tuple[Peer, ...] | None = None if peers is None else tuple(peers)
        if self.peers is not None:
            for p in self.peers:
                if not isinstance(p, Peer):
                    raise ValueError(f"StorageSCP.peers must hold Peer objects, got {p!r}")
        if not transfer_syntaxes:
            raise ValueError("StorageSCP.transfer_syntaxes must not be empty")
        self.spool = spool
        self.host = host
        self._port = port
        self.require_called_ae = bool(require_called_ae)
        self.max_associations = max_associations
        self.ssl_context = ssl_context
        self.transfer_syntaxes = tuple(transfer_syntaxes)
        self._timeouts = (acse_timeout, dimse_timeout, network_timeout)
        self._server: AssociationServer | None = None

    # -- life cycle -------------------------------------------------------------------------
    def _contexts(self) -> list[PresentationContext]:
        contexts = [build_context(cx.abstract_syntax, list(self.transfer_syntaxes))
                    for cx in AllStoragePresentationContexts]
        contexts.append(build_context(Verification, [ImplicitVRLittleEndian, ExplicitVRLittleEndian]))
        return contexts

    def start(self) -> None:
        """Start listening (non-blocking). Raises ``OSError`` if the port cannot be bound."""
        if self._server is not None:
            raise RuntimeError("StorageSCP is already started")
        acse, dimse, network = self._timeouts
        self._server = AssociationServer(
            self, ae_title=self.ae_title, host=self.host, port=self._port, contexts=self._contexts(),
            max_associations=self.max_associations, ssl_context=self.ssl_context,
            acse_timeout=acse, dimse_timeout=dimse, network_timeout=network)
        logger.info("SCP %s listening on %s:%d%s", self.ae_title, self.host, self.port,
                    " (TLS)" if self.ssl_context else "")

    def stop(self) -> None:
        """Stop listening and abort associations still open."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        logger.info("SCP %s stopped", self.ae_title)

    @property
    def port(self) -> int:
        """The port listened on (the real one when constructed with ``port=0``)."""
        if self._server is None:
            return self._port
        return int(self._server.address[1])

    @property
    def server(self) -> AssociationServer | None:
        """The running association server (None before :meth:`start`)."""
        return self._server

    def __enter__(self) -> "StorageSCP":
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- association events (the AssociationServer's Acceptor) -------------------------------
    def vet(self, assoc: Association) -> tuple[Rejection, str] | None:
        if self.peers is not None and not any(p.matches(assoc.calling_ae, assoc.address) for p in self.peers):
            return _RJ_CALLING_AE, "peer not in the allow-list"
        if self.require_called_ae and assoc.called_ae != self.ae_title:
            return _RJ_CALLED_AE, f"called AE title {assoc.called_ae!r} is not {self.ae_title!r}"
        return None

    def rejected(self, assoc: Association, rejection: Rejection, why: str) -> None:
        logger.warning("association rejected: %s (calling AE %r from %s:%d, called AE %r)",
                       why, assoc.calling_ae, assoc.address, assoc.port, assoc.called_ae,
                       extra={"calling_ae": assoc.calling_ae, "peer_address": assoc.address})

    def accepted(self, assoc: Association) -> None:
        logger.info("association accepted: calling AE %r from %s:%d, %d presentation contexts "
                    "accepted, %d rejected", assoc.calling_ae, assoc.address, assoc.port,
                    len(assoc.contexts), len(assoc.rejected),
                    extra={"calling_ae": assoc.calling_ae, "peer_address": assoc.address})

    def finished(self, assoc: Association) -> None:
        logger.info("association %s: calling AE %r from %s, %d instances stored",
                    "released" if assoc.released else "aborted", assoc.calling_ae, assoc.address,
                    assoc.stored, extra={"calling_ae": assoc.calling_ae, "instances": assoc.stored})

    # -- C-STORE ----------------------------------------------------------------------------
    def c_store(self, assoc: Association, context: PresentationContext, req: Dataset,
                data: bytes) -> Dataset | int:
        """Check one received data set and store it; the C-STORE status (see the module)."""
        calling = assoc.calling_ae
        syntax = UID(context.transfer_syntax[0])
        try:
            ds = decode(BytesIO(data), syntax.is_implicit_VR, syntax.is_little_endian, syntax.is_deflated)
            truncated = truncated_element(ds, None if syntax.is_deflated else len(data))
            too_deep = sequence_too_deep(ds)
            uids = {kw: ds.get(kw) for kw in
                    ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")}
        except PARSE_ERRORS as exc:
            logger.warning("C-STORE from %r: data set cannot be parsed (%s), request SOP instance %s",
                           calling, describe_error(exc) if not isinstance(exc, RecursionError)
                           else "sequences nested too deep to read", describe_uid(str(req.AffectedSOPInstanceUID)))
            return _failure(StoreStatus.CANNOT_UNDERSTAND, f"data set cannot be parsed: {type(exc).__name__}")
        if too_deep:
            logger.warning("C-STORE from %r: sequences nested deeper than %d levels (request SOP instance %s)",
                           calling, MAX_SEQUENCE_DEPTH, describe_uid(str(req.AffectedSOPInstanceUID)))
            return _failure(StoreStatus.CANNOT_UNDERSTAND, f"sequences nested deeper than {MAX_SEQUENCE_DEPTH}")
        if truncated:
            logger.warning("C-STORE from %r: data set truncated, %s (request SOP instance %s)",
                           calling, truncated, describe_uid(str(req.AffectedSOPInstanceUID)))
            return _failure(StoreStatus.CANNOT_UNDERSTAND, "data set truncated")
        missing = [kw for kw, v in uids.items() if not v]
        if missing:
            logger.warning("C-STORE from %r: data set lacks %s (request SOP instance %s)",
                           calling, ", ".join(missing), describe_uid(str(req.AffectedSOPInstanceUID)))
            return _failure(StoreStatus.CANNOT_UNDERSTAND_MISSING_UID, f"missing {', '.join(missing)}")
        uids = {kw: str(v) for kw, v in uids.items()}
        if uids["SOPClassUID"] != str(req.AffectedSOPClassUID):
            logger.warning("C-STORE from %r: data set SOP class %s, request says %s",
                           calling, describe_uid(uids["SOPClassUID"]), describe_uid(str(req.AffectedSOPClassUID)))
            return _failure(StoreStatus.DATASET_DOES_NOT_MATCH_SOP_CLASS,
                            "SOP Class UID differs from the request's")
        if uids["SOPInstanceUID"] != str(req.AffectedSOPInstanceUID):
            logger.warning("C-STORE from %r: data set SOP instance %s, request says %s",
                           calling, describe_uid(uids["SOPInstanceUID"]), describe_uid(str(req.AffectedSOPInstanceUID)))
            return _failure(StoreStatus.CANNOT_UNDERSTAND_INSTANCE_MISMATCH,
                            "SOP Instance UID differs from the request's")

        meta = file_meta(uids["SOPClassUID"], uids["SOPInstanceUID"], syntax, calling)
        try:
            self.spool.store(
                b"".join((PREAMBLE, meta, data)),
                study_uid=uids["StudyInstanceUID"],
                series_uid=uids["SeriesInstanceUID"],
                sop_instance_uid=uids["SOPInstanceUID"],
                sop_class_uid=uids["SOPClassUID"],
                transfer_syntax_uid=str(syntax),
                calling_ae=calling,
                header=ds,
            )
        except InvalidUIDError as exc:
            logger.warning("C-STORE from %r refused: %s", calling, exc)
            return _failure(StoreStatus.CANNOT_UNDERSTAND_INVALID_UID, str(exc))
        except SeriesStudyConflictError as exc:
            logger.warning("C-STORE from %r refused: %s (SOP instance %s)", calling, exc, uids["SOPInstanceUID"])
            return _failure(StoreStatus.CANNOT_UNDERSTAND_SERIES_IN_OTHER_STUDY, "series belongs to another study")
        except SpoolFullError as exc:
            logger.error("C-STORE from %r refused: %s", calling, exc)
            return _failure(StoreStatus.OUT_OF_RESOURCES, "spool full")
        except OSError as exc:
            logger.error("C-STORE from %r refused, spool I/O error: %s", calling, exc)
            return _failure(StoreStatus.OUT_OF_RESOURCES_IO_ERROR, f"spool I/O error: {exc.strerror}")
        assoc.stored += 1
        return StoreStatus.SUCCESS
