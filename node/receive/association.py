"""The DICOM upper layer of the receive stage: associations on blocking sockets, one thread each.

:class:`AssociationServer` accepts TCP (or TLS) connections, negotiates each association and
hands every complete DIMSE request to its :class:`Acceptor` (in the node, the
:class:`~neuroread.node.receive.dimse.StorageSCP`), then sends the answer.

Why not pynetdicom's own server
    pynetdicom runs two polling threads per association: the DUL reactor sleeps 1 ms whenever it
    has nothing to do and the association reactor sleeps 1 ms on every loop. For a sender that
    waits for each C-STORE-RSP before the next instance (dcmtk's ``storescu``, most PACS), those
    sleeps sit on the critical path of every instance. Measured on the 2-core development machine
    with a 300-slice 512×512 CT (``python -m neuroread.bench_ingest``): a pynetdicom SCP whose handler
    does nothing takes 160-185 instances/s, and with a durable write in the handler 105-117/s,
    which is only what Orthanc reaches while writing and indexing.

What is pynetdicom's here and what is ours
    Everything that is protocol comes from pynetdicom: PDU encoding and decoding
    (:mod:`pynetdicom.pdu`), presentation-context and role negotiation
    (:func:`pynetdicom.presentation.negotiate_as_acceptor`), DIMSE command sets and their
    fragmentation (:mod:`pynetdicom.dimse_messages`), data set decoding
    (:func:`pynetdicom.dsutils.decode`). This module is only the loop: read one PDU, act on it,
    answer; a thread blocks in ``recv`` instead of polling.

Behaviour (PS3.8)
    * A-ASSOCIATE-RQ within ``acse_timeout`` of the connection (TLS handshake included), or the
      connection is closed. Protocol version other than 1: A-ASSOCIATE-RJ (permanent,
      service-provider ACSE, protocol version not supported); application context other than
      DICOM's: (permanent, service-user, application context name not supported); more
      associations than ``max_associations``: (transient, service-provider presentation, local
      limit exceeded); then the acceptor's own checks (:meth:`Acceptor.vet`).
    * Presentation contexts: each proposed one is accepted with the first of its transfer
      syntaxes we support, or rejected (abstract syntax / transfer syntaxes not supported).
      SCP/SCU role selection is answered as pynetdicom answers it; user identity, extended and
      asynchronous-operations negotiation are not answered (the defaults apply: one operation
      at a time).
    * P-DATA on a context that was not accepted, a PDU out of place, a PDU longer than
      :data:`MAX_PDU` (which we announce as our maximum): A-ABORT (service-provider, with the
      matching reason), logged.
    * C-ECHO-RQ answered with success; C-STORE-RQ answered with the acceptor's status (packed by
      :func:`neuroread.node.receive.pdu.c_store_rsp`), or 0x0110 (processing failure) if the acceptor raised;
      any other DIMSE request answered with status 0x0211 (unrecognised operation). A PDU or a
      command set that cannot be decoded: A-ABORT.
    * A-RELEASE-RQ: A-RELEASE-RP, then the connection is closed. Silence longer than
      ``network_timeout`` between messages (``dimse_timeout`` inside one): A-ABORT.
"""
from __future__ import annotations

import logging
import socket
import ssl
import struct
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from io import BytesIO
from typing import Protocol

from pydicom.dataset import Dataset
from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION
from pynetdicom.dimse_messages import C_ECHO_RSP, C_STORE_RSP, DIMSEMessage
from pynetdicom.dimse_primitives import C_ECHO, C_STORE
from pynetdicom.dsutils import decode, encode
from pynetdicom.pdu import A_ABORT_RQ, A_ASSOCIATE_AC, A_ASSOCIATE_RJ, A_ASSOCIATE_RQ, A_RELEASE_RP, P_DATA_TF
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    A_P_ABORT,
    ImplementationClassUIDNotification,
    ImplementationVersionNameNotification,
    MaximumLengthNotification,
    SCP_SCU_RoleSelectionNegotiation,
)
from pynetdicom.presentation import PresentationContext, negotiate_as_acceptor

from .pdu import c_store_rsp

logger = logging.getLogger(__name__)

APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"
MAX_PDU = 4 * 1024 * 1024  # the largest P-DATA-TF we accept, announced in the A-ASSOCIATE-AC
MAX_ASSOCIATE_RQ = 1024 * 1024  # an A-ASSOCIATE-RQ with hundreds of contexts is ~100 KiB
# Decoded A-ASSOCIATE-RQs kept with our answer, by their bytes (see _Proposal): at most this many,
# each at most this long (storescu's 128 contexts: ~9.6 KB), so at most 2 MiB.
CACHED_PROPOSALS = 32
MAX_CACHED_ASSOCIATE_RQ = 64 * 1024

# PDU types (PS3.8 9.3)
_ASSOCIATE_RQ, _P_DATA, _RELEASE_RQ, _ABORT = 0x01, 0x04, 0x05, 0x07
_KNOWN_PDU_TYPES = {0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07}
# A-ABORT provider reasons (PS3.8 9.3.8)
_UNRECOGNISED_PDU, _UNEXPECTED_PDU, _INVALID_PARAMETER = 0x01, 0x02, 0x06
# DIMSE (PS3.7 9.3, 9.1.5)
_C_STORE_RQ, _C_ECHO_RQ = 0x0001, 0x0030
_NO_DATA_SET = 0x0101
_UNRECOGNISED_OPERATION = 0x0211
_PROCESSING_FAILURE = 0x0110
# what pynetdicom's and pydicom's decoders raise on malformed bytes
_DECODE_ERRORS = (ValueError, TypeError, KeyError, IndexError, EOFError, OSError, NotImplementedError,
                  struct.error, UnicodeDecodeError, AttributeError)

Rejection = tuple[int, int, int]  # A-ASSOCIATE-RJ (result, source, diagnostic)
REJECT_PROTOCOL_VERSION: Rejection = (0x01, 0x02, 0x02)
REJECT_APPLICATION_CONTEXT: Rejection = (0x01, 0x01, 0x02)
REJECT_LOCAL_LIMIT: Rejection = (0x02, 0x03, 0x02)


class PeerGone(Exception):
    """The peer closed the connection or aborted the association."""


class ProtocolError(Exception):
    """The peer broke the protocol; ``reason`` is the A-ABORT provider reason we send."""

    def __init__(self, message: str, reason: int) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass
class Association:
    """One association as the acceptor sees it (what :class:`Acceptor` methods receive)."""

    calling_ae: str
    called_ae: str
    address: str
    port: int
    sock: socket.socket
    contexts: dict[int, PresentationContext] = field(default_factory=dict)  # accepted, by ID
    rejected: list[PresentationContext] = field(default_factory=list)
    max_send_pdu: int = 0  # the peer's maximum PDU length (0: no limit)
    stored: int = 0  # instances the acceptor counted as stored
    released: bool = False


_Answer = tuple[dict[int, PresentationContext], list[PresentationContext], bytes]


@dataclass(frozen=True)
class _Proposal:
    """An A-ASSOCIATE-RQ as decoded, and our answer to it (None when it is refused outright).

    A sender proposes the same bytes every time it associates (storescu: 128 presentation
    contexts), and decoding them with pynetdicom (``A_ASSOCIATE_RQ.decode`` + ``to_primitive``,
    ~7 ms on the 2-core development machine) then negotiating and encoding the A-ASSOCIATE-AC
    (~3 ms) holds the interpreter lock for ~10 ms per association, which the associations already
    open wait for. So both are done once per distinct proposal and kept by the request's bytes
    (the answer depends on nothing else: our contexts are fixed for the server's life); threads
    that receive the same bytes while they are being decoded wait for that result. Who may
    associate (:meth:`Acceptor.vet`) and the association limit are still checked every time.
    """

    calling_ae: str
    called_ae: str
    max_send_pdu: int
    refusal: tuple[Rejection, str] | None  # protocol version or application context not ours
    answer: _Answer | None  # accepted contexts by ID, the rejected ones, the encoded A-ASSOCIATE-AC


class Acceptor(Protocol):
    """What the server asks of its owner (:class:`~neuroread.node.receive.dimse.StorageSCP` implements it)."""

    def vet(self, assoc: Association) -> tuple[Rejection, str] | None:
        """A rejection for this association request and why, or None to go on negotiating."""

    def rejected(self, assoc: Association, rejection: Rejection, why: str) -> None:
        """Called after an A-ASSOCIATE-RJ was sent (for logging)."""

    def accepted(self, assoc: Association) -> None:
        """Called after the A-ASSOCIATE-AC was sent."""

    def finished(self, assoc: Association) -> None:
        """Called once the association is over (``assoc.released`` says how)."""

    def c_store(self, assoc: Association, context: PresentationContext, request: Dataset,
                data: bytes) -> Dataset | int:
        """Handle one C-STORE-RQ: the status (an int, or a Dataset with Status and comments)."""


def _recv_into(sock: socket.socket, view: memoryview) -> None:
    """Fill ``view`` from the socket."""
    got, n = 0, len(view)
    while got < n:
        k = sock.recv_into(view[got:], n - got)
        if k == 0:
            raise PeerGone("connection closed by the peer")
        got += k


def _read_pdu(sock: socket.socket, limit: int) -> tuple[int, bytearray]:
    """One PDU: its type and its bytes (header included), read into one buffer."""
    head = bytearray(6)
    _recv_into(sock, memoryview(head))
    pdu_type, length = head[0], struct.unpack_from(">I", head, 2)[0]
    if pdu_type not in _KNOWN_PDU_TYPES:
        raise ProtocolError(f"unrecognised PDU type 0x{pdu_type:02x}", _UNRECOGNISED_PDU)
    if length > limit:
        raise ProtocolError(f"PDU of {length} bytes is over the {limit}-byte maximum", _INVALID_PARAMETER)
    pdu = bytearray(6 + length)
    pdu[:6] = head
    _recv_into(sock, memoryview(pdu)[6:])
    return pdu_type, pdu


def _pdvs(pdu: bytearray):
    """The presentation data values of a P-DATA-TF PDU: (context ID, control byte, fragment)."""
    view, end, at = memoryview(pdu), len(pdu), 6
    while at < end:
        if at + 6 > end:
            raise ProtocolError("P-DATA-TF item header cut short", _INVALID_PARAMETER)
        length = struct.unpack_from(">I", pdu, at)[0]
        if length < 2 or at + 4 + length > end:
            raise ProtocolError(f"P-DATA-TF item of length {length} does not fit its PDU", _INVALID_PARAMETER)
        yield pdu[at + 4], pdu[at + 5], view[at + 6:at + 4 + length]
        at += 4 + length


class AssociationServer:
    """Listens on ``(host, port)`` and serves associations for ``acceptor``; see the module."""

    def __init__(
        self,
        acceptor: Acceptor,
        *,
        ae_title: str,
        host: str,
        port: int,
        contexts: Sequence[PresentationContext],
        max_associations: int,
        ssl_context: ssl.SSLContext | None = None,
        acse_timeout: float = 30.0,
        dimse_timeout: float = 60.0,
        network_timeout: float = 60.0,
    ) -> None:
        self.acceptor, self.ae_title = acceptor, ae_title
        self.contexts = list(contexts)
        self.max_associations, self.ssl_context = max_associations, ssl_context
        self.acse_timeout, self.dimse_timeout, self.network_timeout = acse_timeout, dimse_timeout, network_timeout
        self._lock = threading.Lock()
        self._established: set[int] = set()  # id(Association) of accepted, not yet finished
        self._connections: dict[int, socket.socket] = {}  # thread ident -> its socket
        self._threads: set[threading.Thread] = set()
        self._proposals: OrderedDict[bytes, _Proposal] = OrderedDict()  # see _Proposal
        self._decoding: dict[bytes, threading.Event] = {}  # proposals being decoded, set when done
        self._stopping = threading.Event()
        self._listener = socket.create_server((host, port), backlog=64,
                                              family=socket.AF_INET6 if ":" in host else socket.AF_INET)
        self.address = self._listener.getsockname()[:2]
        self._thread = threading.Thread(target=self._accept_loop, name=f"scp-{ae_title}-accept", daemon=True)
        self._thread.start()

    def sockets(self) -> list[socket.socket]:
        """The sockets of the connections being served (for tests and diagnostics)."""
        with self._lock:
            return list(self._connections.values())

    def shutdown(self, timeout: float = 10.0) -> None:
        """Stop listening, abort the associations still open and wait for their threads."""
        self._stopping.set()
        try:
            self._listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # not connected: the close below wakes accept()
        self._listener.close()
        self._thread.join(timeout)
        for sock in self.sockets():
            try:
                sock.sendall(_abort_pdu(0x00, source=0x00))
            except OSError:
                pass
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        with self._lock:
            threads = list(self._threads)
        for thread in threads:
            thread.join(timeout)

    # -- connections ------------------------------------------------------------------------------
    def _accept_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                sock, address = self._listener.accept()
            except OSError:
                if self._stopping.is_set():
                    return
                logger.exception("accepting a connection failed")
                continue
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            thread = threading.Thread(target=self._serve, args=(sock, address), daemon=True,
                                      name=f"scp-{self.ae_title}-assoc-{address[0]}:{address[1]}")
            with self._lock:
                self._threads.add(thread)
            thread.start()

    def _serve(self, sock: socket.socket, address: tuple) -> None:
        key = threading.get_ident()
        with self._lock:
            self._connections[key] = sock
        assoc: Association | None = None
        try:
            sock.settimeout(self.acse_timeout)
            if self.ssl_context is not None:
                sock = self.ssl_context.wrap_socket(sock, server_side=True)
                with self._lock:
                    self._connections[key] = sock
            assoc = self._associate(sock, address)
            if assoc is not None:
                self._run(assoc)
        except (ssl.SSLError, PeerGone, TimeoutError, OSError) as exc:
            if not self._stopping.is_set():
                level = logging.INFO if isinstance(exc, PeerGone) else logging.WARNING
                logger.log(level, "connection from %s:%d ended: %s", address[0], address[1], exc or type(exc).__name__)
        except ProtocolError as exc:
            logger.warning("association from %s:%d aborted: %s", address[0], address[1], exc)
            self._abort(sock, exc.reason)
        except Exception:  # a bug must not take the server down; the peer gets an abort
            logger.exception("association from %s:%d failed", address[0], address[1])
            self._abort(sock, 0x00)
        finally:
            with self._lock:
                self._connections.pop(key, None)
                self._threads.discard(threading.current_thread())
                if assoc is not None and id(assoc) in self._established:
                    self._established.discard(id(assoc))
                    finished = True
                else:
                    finished = False
            if finished:
                self.acceptor.finished(assoc)
            try:
                sock.close()
            except OSError:
                pass

    def _abort(self, sock: socket.socket, reason: int) -> None:
        """Send A-ABORT, then wait (ARTIM, at most ``acse_timeout``) for the peer to close, reading
        and dropping what it still sends: closing with unread input would reset the connection
        and could destroy the A-ABORT before the peer reads it (PS3.8 state Sta13)."""
        try:
            sock.sendall(_abort_pdu(reason))
            sock.shutdown(socket.SHUT_WR)
            sock.settimeout(min(self.acse_timeout, 5.0))
            while sock.recv(65536):
                pass
        except OSError:
            pass  # the peer is gone or silent; the connection is closed next anyway

    # -- association establishment ----------------------------------------------------------------
    def _proposal(self, raw: bytearray) -> _Proposal:
        """The A-ASSOCIATE-RQ ``raw`` decoded and answered, once per distinct request: from the
        cache, or decoded here while other threads with the same bytes wait for the result
        (associations of one sender often arrive together)."""
        key = bytes(raw)
        cacheable = len(key) <= MAX_CACHED_ASSOCIATE_RQ
        while True:
            with self._lock:
                proposal = self._proposals.get(key)
                if proposal is not None:
                    self._proposals.move_to_end(key)
                    return proposal
                pending = self._decoding.get(key)
                if pending is None and cacheable:
                    self._decoding[key] = threading.Event()
            if pending is None:
                break
            pending.wait()  # then from the cache, or decode it here if that decoding failed
        proposal = None
        try:
            proposal = self._decode(key)
        finally:
            with self._lock:
                if proposal is not None and cacheable:
                    self._proposals[key] = proposal
                    while len(self._proposals) > CACHED_PROPOSALS:
                        self._proposals.popitem(last=False)
                done = self._decoding.pop(key, None) if cacheable else None
            if done is not None:
                done.set()
        return proposal

    def _decode(self, raw: bytes) -> _Proposal:
        rq_pdu = A_ASSOCIATE_RQ()
        try:
            rq_pdu.decode(raw)
            rq = rq_pdu.to_primitive()
        except _DECODE_ERRORS as exc:
            raise ProtocolError(f"A-ASSOCIATE-RQ cannot be decoded ({type(exc).__name__}: {exc})",
                                _INVALID_PARAMETER) from exc
        refusal = None
        if rq_pdu.protocol_version != 0x0001:
            refusal = REJECT_PROTOCOL_VERSION, f"protocol version {rq_pdu.protocol_version}"
        elif str(rq.application_context_name) != APPLICATION_CONTEXT:
            refusal = REJECT_APPLICATION_CONTEXT, f"application context {rq.application_context_name}"
        return _Proposal(calling_ae=str(rq.calling_ae_title).strip(), called_ae=str(rq.called_ae_title).strip(),
                         max_send_pdu=int(rq.maximum_length_received or 0), refusal=refusal,
                         answer=None if refusal else self._negotiate(rq))

    def _associate(self, sock: socket.socket, address: tuple) -> Association | None:
        pdu_type, raw = _read_pdu(sock, MAX_ASSOCIATE_RQ)
        if pdu_type != _ASSOCIATE_RQ:
            raise ProtocolError(f"expected A-ASSOCIATE-RQ, got PDU type 0x{pdu_type:02x}", _UNEXPECTED_PDU)
        proposal = self._proposal(raw)
        assoc = Association(calling_ae=proposal.calling_ae, called_ae=proposal.called_ae,
                            address=address[0], port=address[1], sock=sock, max_send_pdu=proposal.max_send_pdu)
        rejection, why = proposal.refusal or self.acceptor.vet(assoc) or (None, "")
        if rejection is None:
            with self._lock:
                if len(self._established) >= self.max_associations:
                    rejection, why = REJECT_LOCAL_LIMIT, f"more than {self.max_associations} associations"
                else:
                    self._established.add(id(assoc))
        if rejection is not None:
            sock.sendall(_reject_pdu(rejection))
            self.acceptor.rejected(assoc, rejection, why)
            return None
        accepted = False
        try:
            self._accept(assoc, proposal)
            accepted = True
        finally:
            if not accepted:  # negotiation failed: the slot is free again
                with self._lock:
                    self._established.discard(id(assoc))
        return assoc

    def _accept(self, assoc: Association, proposal: _Proposal) -> None:
        """Take the negotiated presentation contexts and send the A-ASSOCIATE-AC."""
        if proposal.answer is None:
            raise RuntimeError("an A-ASSOCIATE-RQ that is refused has no answer to send")
        contexts, rejected, ac = proposal.answer
        assoc.contexts, assoc.rejected = dict(contexts), list(rejected)
        assoc.sock.sendall(ac)
        self.acceptor.accepted(assoc)

    def _negotiate(self, rq: A_ASSOCIATE) -> _Answer:
        """The accepted contexts by ID, the rejected ones and the encoded A-ASSOCIATE-AC for ``rq``."""
        roles = {item.sop_class_uid: (item.scu_role, item.scp_role) for item in rq.user_information
                 if isinstance(item, SCP_SCU_RoleSelectionNegotiation)}
        results, role_items = negotiate_as_acceptor(rq.presentation_context_definition_list, self.contexts,
                                                    roles or None)
        ac = A_ASSOCIATE()
        ac.application_context_name = APPLICATION_CONTEXT
        ac.calling_ae_title, ac.called_ae_title = rq.calling_ae_title, rq.called_ae_title
        ac.result, ac.result_source = 0x00, 0x01
        ac.presentation_context_definition_results_list = results
        max_length = MaximumLengthNotification()
        max_length.maximum_length_received = MAX_PDU
        class_uid = ImplementationClassUIDNotification()
        class_uid.implementation_class_uid = PYNETDICOM_IMPLEMENTATION_UID
        version = ImplementationVersionNameNotification()
        version.implementation_version_name = PYNETDICOM_IMPLEMENTATION_VERSION
        ac.user_information = [max_length, class_uid, version, *role_items]
        ac_pdu = A_ASSOCIATE_AC()
        ac_pdu.from_primitive(ac)
        return ({cx.context_id: cx for cx in results if cx.result == 0x00},
                [cx for cx in results if cx.result != 0x00], ac_pdu.encode())

    # -- the association's life -------------------------------------------------------------------
    def _run(self, assoc: Association) -> None:
        sock = assoc.sock
        command = bytearray()
        data: list[memoryview] = []  # the data set's fragments, views into their PDUs: joined once
        request: Dataset | None = None
        context_id = 0
        current_timeout = None
        while True:
            timeout = self.dimse_timeout if (command or request is not None) else self.network_timeout
            if timeout != current_timeout:  # settimeout costs two system calls: only when it changes
                sock.settimeout(timeout)
                current_timeout = timeout
            try:
                pdu_type, raw = _read_pdu(sock, MAX_PDU + 6)
            except TimeoutError as exc:
                raise ProtocolError(f"nothing received for {timeout:g} s", 0x00) from exc
            if pdu_type == _RELEASE_RQ:
                if command or request is not None:
                    raise ProtocolError("A-RELEASE-RQ in the middle of a DIMSE message", _UNEXPECTED_PDU)
                sock.sendall(A_RELEASE_RP().encode())
                assoc.released = True
                return
            if pdu_type == _ABORT:
                raise PeerGone("the peer aborted the association")
            if pdu_type != _P_DATA:
                raise ProtocolError(f"unexpected PDU type 0x{pdu_type:02x} on an established association",
                                    _UNEXPECTED_PDU)
            for cx_id, control, fragment in _pdvs(raw):
                if cx_id not in assoc.contexts:
                    raise ProtocolError(f"P-DATA on presentation context {cx_id}, which was not accepted",
                                        _INVALID_PARAMETER)
                if control & 0x01:  # command fragment
                    if request is not None:
                        raise ProtocolError("a command fragment inside a data set", _UNEXPECTED_PDU)
                    context_id = cx_id
                    command += fragment
                    if not control & 0x02:
                        continue
                    try:
                        request = decode(BytesIO(bytes(command)), True, True)
                        request.get("CommandDataSetType")
                    except _DECODE_ERRORS as exc:
                        raise ProtocolError(f"DIMSE command set cannot be decoded ({type(exc).__name__})",
                                            _INVALID_PARAMETER) from exc
                    command.clear()
                    if request.get("CommandDataSetType", _NO_DATA_SET) != _NO_DATA_SET:
                        continue  # its data set follows
                    self._dispatch(assoc, context_id, request, b"")
                    request = None
                else:  # data set fragment
                    if request is None or cx_id != context_id:
                        raise ProtocolError("a data set fragment without its command", _UNEXPECTED_PDU)
                    data.append(fragment)
                    if control & 0x02:
                        self._dispatch(assoc, context_id, request, b"".join(data))
                        data.clear()
                        request = None

    def _dispatch(self, assoc: Association, context_id: int, request: Dataset, data: bytes) -> None:
        field_ = request.get("CommandField")
        context = assoc.contexts[context_id]
        if field_ == _C_STORE_RQ:
            try:
                status = self.acceptor.c_store(assoc, context, request, data)
            except Exception as exc:  # a bug, or a stage after the spool failing: the peer hears it
                logger.exception("C-STORE from %r: handling failed", assoc.calling_ae)
                status = Dataset()
                status.Status, status.ErrorComment = _PROCESSING_FAILURE, f"internal error: {type(exc).__name__}"
            code, comment = (int(status.Status), status.get("ErrorComment")) if isinstance(status, Dataset) \
                else (int(status), None)
            pdu = c_store_rsp(context_id, request.MessageID, request.AffectedSOPClassUID,
                              request.AffectedSOPInstanceUID, code, comment)
            if not assoc.max_send_pdu or len(pdu) - 6 <= assoc.max_send_pdu:
                assoc.sock.sendall(pdu)
                return
            rsp = C_STORE()  # a peer with a tiny maximum PDU: pynetdicom fragments the command
            rsp.AffectedSOPClassUID = request.AffectedSOPClassUID
            rsp.AffectedSOPInstanceUID = request.AffectedSOPInstanceUID
            rsp.Status, rsp.ErrorComment = code, comment
            message: DIMSEMessage = C_STORE_RSP()
        elif field_ == _C_ECHO_RQ:
            rsp, message = C_ECHO(), C_ECHO_RSP()
            rsp.AffectedSOPClassUID = request.get("AffectedSOPClassUID", context.abstract_syntax)
            rsp.Status = 0x0000
        else:
            logger.warning("DIMSE command 0x%04x from %r is not supported here; answered 0x0211",
                           field_ or 0, assoc.calling_ae)
            self._send_unrecognised(assoc, context_id, request)
            return
        rsp.MessageIDBeingRespondedTo = request.MessageID
        message.primitive_to_message(rsp)
        self._send_message(assoc, context_id, message)

    def _send_unrecognised(self, assoc: Association, context_id: int, request: Dataset) -> None:
        """The response to a request we do not serve: its command field with the response bit,
        status 0x0211 (pynetdicom has no message class for an arbitrary command field)."""
        body = Dataset()
        if "AffectedSOPClassUID" in request:
            body.AffectedSOPClassUID = request.AffectedSOPClassUID
        body.CommandField = (int(request.get("CommandField") or 0) | 0x8000) & 0xFFFF
        body.MessageIDBeingRespondedTo = request.get("MessageID", 0)
        body.CommandDataSetType = _NO_DATA_SET
        body.Status = _UNRECOGNISED_OPERATION
        command = Dataset()
        command.CommandGroupLength = len(encode(body, True, True))
        command.update(body)
        message = C_ECHO_RSP()  # only its fragmentation is used
        message.command_set, message.data_set = command, None
        self._send_message(assoc, context_id, message)

    @staticmethod
    def _send_message(assoc: Association, context_id: int, message: DIMSEMessage) -> None:
        out = []
        for p_data in message.encode_msg(context_id, assoc.max_send_pdu):
            pdu = P_DATA_TF()
            pdu.from_primitive(p_data)
            out.append(pdu.encode())
        assoc.sock.sendall(b"".join(out))


def _reject_pdu(rejection: Rejection) -> bytes:
    rj = A_ASSOCIATE()
    rj.result, rj.result_source, rj.diagnostic = rejection
    pdu = A_ASSOCIATE_RJ()
    pdu.from_primitive(rj)
    return pdu.encode()


def _abort_pdu(reason: int, source: int = 0x02) -> bytes:
    """A-ABORT: from the service provider with ``reason`` (source 2), or from us as the service
    user (source 0; the reason is then not significant)."""
    pdu = A_ABORT_RQ()
    if source == 0x02:
        primitive = A_P_ABORT()
        primitive.provider_reason = reason
        pdu.from_primitive(primitive)
    else:
        pdu.source, pdu.reason_diagnostic = source, 0x00
    return pdu.encode()


