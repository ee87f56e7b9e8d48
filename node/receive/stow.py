"""The receive stage over HTTP: a DICOMweb STOW-RS endpoint (PS3.18 §10.5) into the spool.

:class:`StowReceiver` serves ``POST {base_path}/studies`` and
``POST {base_path}/studies/{StudyInstanceUID}`` on the standard library's
:class:`~http.server.ThreadingHTTPServer` (HTTPS when given an SSL context). Each instance is
handed on exactly as the C-STORE SCP hands it: through :meth:`neuroread.node.spool.store.Spool.store`, whose
``on_stored`` is the next stage.

What a request must be, checked in this order; the first failure answers at once, with a
short ``text/plain`` message naming the problem and ``Connection: close``. None of these reads
the body: the answer is sent, then what the client still sends is discarded, unread, for at
most 1 s and 4 MiB, so that a client busy sending sees the answer rather than a reset.

=====  ========================================================================================
403    a client address outside ``dicomweb.peers`` (when it lists any), before anything else.
401    no or wrong credentials (``dicomweb.users``/``users_env``: HTTP basic;
       ``dicomweb.tokens``/``tokens_env``: bearer; compared with :func:`hmac.compare_digest`),
       with ``WWW-Authenticate``.
404    a path other than the two above; ``405`` another method on them.
400    a Study Instance UID in the path that is not a valid UID.
503    ``dicomweb.max_requests`` uploads are being served already (``Retry-After``).
415    a Content-Type other than ``multipart/related; type="application/dicom"; boundary=…``
       (metadata + bulk data STOW, ``type="application/dicom+json"``, is not supported).
411    no Content-Length: a chunked body is refused rather than read up to the limit, so the
       limit is enforced before one byte of body is read (dicomweb-client, Orthanc and
       dcm4chee send a Content-Length).
413    Content-Length over ``dicomweb.max_body_mb``.
=====  ========================================================================================

Then, if the client sent ``Expect: 100-continue``, ``100 Continue`` (so a refused client never
sends its body), and the body is read whole and split into its parts by
:func:`split_multipart`. ``400`` when it ends before its Content-Length, has no closing
delimiter, holds no part, or breaks the RFC 2046 syntax; ``408`` when the client stops sending
for ``timeout`` seconds. Nothing is stored then.

Every part is then checked, all of them before any is stored ("nothing stored half"); a part
that fails is listed in the response's Failed SOP Sequence with its Failure Reason
(:class:`FailureReason`, PS3.18 Table I.2-2):

* ``0xC000`` cannot understand: a part whose Content-Type is not ``application/dicom``; data
  that is not a DICOM PS3.10 file (the ``application/dicom`` media type of PS3.18 §8.7.3 is a
  PS3.10 file: 128-byte preamble, ``DICM``, File Meta Information; a bare data set is refused,
  not guessed at); a truncated data
  set; a missing SOP Class/Instance, Study or Series Instance UID, or one that is not a valid
  UID (such a UID never becomes a path: :meth:`Spool.path_for` checks it); a File Meta SOP
  Instance UID that differs from the data set's;
* ``0xA900`` data set does not match: the File Meta SOP Class UID differs from the data set's,
  or the instance belongs to another study than the one in the path;
* ``0xC122`` a transfer syntax the node does not accept (the C-STORE SCP's
  :data:`~neuroread.node.receive.dimse.TRANSFER_SYNTAXES`); ``0x0122`` a SOP class that is not a storage SOP
  class pynetdicom knows (what the SCP negotiates).

The instances that pass are stored one by one, as received except for the preamble, which
is zeroed (a preamble can hide another file format, CVE-2019-11687). A duplicate is a success
(the spool makes it idempotent). A full disk, or another I/O error, stops the storing: the
rest are failed with ``0xA700`` (full) or ``0x0110`` (processing failure) and the answer is
``503`` with ``Retry-After``; what was stored before stays stored and is listed as stored
(it is durable, and sending it again is harmless).

The answer (``application/dicom+json``, a Store Instances Response built with pydicom's
``Dataset.to_json_dict``): Referenced SOP Sequence (0008,1199) for the stored instances and
Failed SOP Sequence (0008,1198) with Failure Reason (0008,1197) for the others; no Retrieve
URL, since the node serves no WADO-RS. ``200`` all stored, ``202`` some, ``409`` none,
``503`` storage failed. Each failure is also told in words in a ``Warning: 299`` header
field (as PS3.18 uses them), part number first. The answer is JSON whatever the ``Accept``.

The body is split by :func:`neuroread.node.receive.multipart.split_multipart` (why not the :mod:`email` parser:
see there). One request holds about its body's size in memory, so ``max_body_mb ×
max_requests`` bounds what an upload burst takes.

Logs: peer address, user (or token number), UIDs, counts and duration; never patient data.
"""
from __future__ import annotations

import base64
import binascii
import hmac
import ipaddress
import json
import logging
import socket
import socketserver
import ssl
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from email.message import Message
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from neuroread.node.config import DicomWebConfig
from neuroread.node.http import env_secret
from neuroread.node.spool import InvalidUIDError, SeriesStudyConflictError, Spool, SpoolFullError, validate_uid

from .dimse import PREAMBLE
from .multipart import BOUNDARY, MultipartError, Part, split_multipart
from .stow_instances import DICOM, FailureReason, check_part, quote, response, uid_or_empty

logger = logging.getLogger(__name__)

DICOM_JSON = "application/dicom+json"
_CHUNK = 1 << 20
_RETRY_AFTER_S = 30
_LINGER_S = 1.0  # after an early answer, how long unread body bytes are drained (see _linger)
_LINGER_BYTES = 4 << 20
_MAX_WARNINGS = 20


class _Refusal(Exception):
    """An answer given before the request is accepted (status, plain-text message, headers)."""

    def __init__(self, status: HTTPStatus, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], receiver: "StowReceiver") -> None:
        self.receiver = receiver
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        """Bind without :class:`~http.server.HTTPServer`'s reverse DNS look-up of the host
        (``socket.getfqdn``), which can stall the start on a machine without DNS."""
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)

    def handle_error(self, request: object, client_address: tuple[str, int]) -> None:
        """A connection that failed outside our answers (TLS handshake, peer gone): logged, not printed."""
        exc = sys.exc_info()[1]
        if isinstance(exc, (ssl.SSLError, ConnectionError, TimeoutError)):
            logger.info("STOW-RS connection from %s dropped: %s", client_address[0], exc)
        else:
            logger.error("STOW-RS connection from %s failed", client_address[0], exc_info=True)


class _Handler(BaseHTTPRequestHandler):
    """One connection, one request (every answer says ``Connection: close``)."""

    server: _Server
    protocol_version = "HTTP/1.1"  # for Expect: 100-continue; connections still close after one request
    server_version = "neuroread-STOW-RS"
    sys_version = ""
    error_content_type = "text/plain; charset=utf-8"
    error_message_format = "%(code)d %(message)s\n"

    def setup(self) -> None:
        receiver = self.server.receiver
        self.request.settimeout(receiver.timeout)
        self.timeout = receiver.timeout
        if receiver.ssl_context is not None:  # the TLS handshake runs here, in this connection's thread
            self.request = receiver.ssl_context.wrap_socket(self.request, server_side=True)
        super().setup()

    # -- http.server's own logging goes to ours --------------------------------------------------
    def log_message(self, format: str, *args: object) -> None:
        logger.debug("STOW-RS %s: %s", self.client_address[0], format % args)

    def handle_expect_100(self) -> bool:
        """Send 100 Continue only once the request is accepted (in :meth:`do_POST`)."""
        return True

    # -- methods ------------------------------------------------------------------------------
    def do_POST(self) -> None:
        started = time.monotonic()
        receiver = self.server.receiver
        try:
            self._check_peer()
            principal = self._authenticate()
            study_uid = self._route()
            with receiver._slot():
                boundary = self._check_content_type()
                length = self._check_length()
                if self.headers.get("Expect", "").lower() == "100-continue":
                    self.send_response_only(HTTPStatus.CONTINUE)
                    self.end_headers()
                parts = self._read_parts(length, boundary)
                self._store(parts, study_uid, principal, started)
        except _Refusal as refusal:
            logger.warning("STOW-RS from %s refused: %d %s", self.client_address[0], refusal.status,
                           refusal.message, extra={"peer_address": self.client_address[0]})
            self._send_text(refusal.status, refusal.message, refusal.headers)
            if refusal.status != HTTPStatus.REQUEST_TIMEOUT:
                self._linger()

    def _other_method(self) -> None:
        try:
            self._check_peer()
            self._authenticate()
            self._route()
            raise _Refusal(HTTPStatus.METHOD_NOT_ALLOWED, f"{self.command} is not supported here: STOW-RS takes POST",
                           {"Allow": "POST"})
        except _Refusal as refusal:
            self._send_text(refusal.status, refusal.message, refusal.headers)
            self._linger()

    do_GET = do_PUT = do_DELETE = do_PATCH = _other_method

    # -- the checks -----------------------------------------------------------------------------
    def _check_peer(self) -> None:
        """403 for an address outside ``dicomweb.peers`` (the allow-list of ``node.peers``, for HTTP)."""
        allowed = self.server.receiver.peers
        if allowed and not any(ipaddress.ip_address(self.client_address[0]) in net for net in allowed):
            raise _Refusal(HTTPStatus.FORBIDDEN, f"address {self.client_address[0]} is not among the allowed peers "
                           "(dicomweb.peers)")

    def _authenticate(self) -> str:
        """The authenticated principal (user name, ``token #n`` or ``anonymous``), else 401."""
        receiver = self.server.receiver
        if receiver.config.allow_anonymous:
            return "anonymous"
        users, tokens = receiver._credentials
        challenges = []
        if users:
            challenges.append('Basic realm="neuroread", charset="UTF-8"')
        if tokens:
            challenges.append('Bearer realm="neuroread"')
        header = self.headers.get("Authorization")
        if header is None:
            raise _Refusal(HTTPStatus.UNAUTHORIZED, "authentication required: send HTTP "
                           + " or ".join(c.split()[0].lower() for c in challenges) + " credentials",
                           {"WWW-Authenticate": ", ".join(challenges)})
        scheme, _, credentials = header.strip().partition(" ")
        credentials = credentials.strip()
        if scheme.lower() == "basic" and users:
            try:
                name, sep, password = base64.b64decode(credentials, validate=True).decode("utf-8").partition(":")
            except (binascii.Error, UnicodeDecodeError):
                name, sep, password = "", "", ""
            expected = users.get(name)
            if sep and expected is not None and hmac.compare_digest(password.encode(), expected.encode()):
                return name
        elif scheme.lower() == "bearer" and tokens:
            for i, token in enumerate(tokens, 1):
                if hmac.compare_digest(credentials.encode(), token.encode()):
                    return f"token #{i}"
        raise _Refusal(HTTPStatus.UNAUTHORIZED, f"wrong credentials ({quote(scheme, 20)} authorization refused)",
                       {"WWW-Authenticate": ", ".join(challenges)})

    def _route(self) -> str | None:
        """``None`` for ``…/studies``, the Study Instance UID for ``…/studies/{uid}``; else 404/400."""
        path = self.path.split("?", 1)[0]
        prefix = self.server.receiver.studies_path
        if path == prefix:
            return None
        head, _, uid = path.rpartition("/")
        if head != prefix or not uid:
            raise _Refusal(HTTPStatus.NOT_FOUND, f"no such resource: {quote(path)} (STOW-RS is {prefix})")
        try:
            return validate_uid(uid, "StudyInstanceUID in the path")
        except InvalidUIDError as exc:
            raise _Refusal(HTTPStatus.BAD_REQUEST, quote(str(exc))) from exc

    def _check_content_type(self) -> str:
        """The boundary of a ``multipart/related; type="application/dicom"`` body, else 415."""
        value = self.headers.get("Content-Type")
        if not value:
            raise _Refusal(HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
                           f'no Content-Type: expected multipart/related; type="{DICOM}"; boundary=...')
        header = Message()
        header["Content-Type"] = value
        media = header.get_content_type()
        kind = str(header.get_param("type", "")).split(";")[0].strip().lower()
        if media != "multipart/related" or kind != DICOM:
            raise _Refusal(HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
                           f'Content-Type {quote(value)} is not multipart/related; type="{DICOM}" '
                           "(instances must be sent as DICOM PS3.10 files)")
        boundary = header.get_boundary()
        if not boundary:
            raise _Refusal(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, "Content-Type has no boundary parameter")
        if not BOUNDARY.fullmatch(boundary):
            raise _Refusal(HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
                           f"boundary {quote(boundary, 80)!r} is not an RFC 2046 boundary "
                           "(1-70 of 0-9A-Za-z'()+_,-./:=? and space, not ending in a space)")
        return boundary

    def _check_length(self) -> int:
        limit = self.server.receiver.max_body_bytes
        raw = self.headers.get("Content-Length")
        if raw is None:
            raise _Refusal(HTTPStatus.LENGTH_REQUIRED, "Content-Length required (chunked bodies are not accepted)")
        if not raw.strip().isdigit():
            raise _Refusal(HTTPStatus.BAD_REQUEST, f"Content-Length {quote(raw, 40)!r} is not a number")
        length = int(raw)
        if length > limit:
            raise _Refusal(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                           f"body of {length} bytes is over the limit of {limit} bytes (dicomweb.max_body_mb)")
        return length

    def _read_parts(self, length: int, boundary: str) -> list[Part]:
        """Read the whole body and split it into parts; 400/408 (nothing stored) when it cannot be."""
        body = bytearray(length)
        view, got = memoryview(body), 0
        try:
            while got < length:
                n = self.rfile.readinto(view[got:got + _CHUNK])
                if not n:
                    raise _Refusal(HTTPStatus.BAD_REQUEST, f"body ended after {got} of {length} bytes (Content-Length)")
                got += n
        except TimeoutError as exc:
            raise _Refusal(HTTPStatus.REQUEST_TIMEOUT, f"no body bytes for {self.server.receiver.timeout:g} s "
                           f"after {got} of {length}") from exc
        finally:
            view.release()
        try:
            return split_multipart(body, boundary)
        except MultipartError as exc:
            raise _Refusal(HTTPStatus.BAD_REQUEST, f"malformed multipart body: {exc}") from exc

    # -- storing and answering -----------------------------------------------------------------
    def _store(self, parts: list[Part], study_uid: str | None, principal: str, started: float) -> None:
        receiver = self.server.receiver
        instances = [check_part(number, part, study_uid, receiver.spool) for number, part in enumerate(parts, 1)]
        storage_error: tuple[FailureReason, str] | None = None  # once set, nothing more is stored
        for inst in instances:
            if inst.failure is not None:
                continue
            if storage_error is not None:
                inst.fail(storage_error[0], f"not stored: {storage_error[1]}")
                continue
            try:
                record = receiver.spool.store(
                    b"".join((PREAMBLE, inst.data[len(PREAMBLE):])),  # the preamble zeroed
                    study_uid=inst.study_uid, series_uid=inst.series_uid, sop_instance_uid=inst.sop_instance_uid,
                    sop_class_uid=inst.sop_class_uid, transfer_syntax_uid=inst.transfer_syntax_uid, header=inst.header)
            except SeriesStudyConflictError as exc:
                logger.warning("STOW-RS: refused SOP instance %s: %s", inst.sop_instance_uid, exc)
                inst.fail(FailureReason.CANNOT_UNDERSTAND, str(exc))
            except SpoolFullError as exc:
                logger.error("STOW-RS: %s (SOP instance %s)", exc, inst.sop_instance_uid)
                storage_error = (FailureReason.OUT_OF_RESOURCES, "spool full")
                inst.fail(*storage_error)
            except OSError as exc:
                logger.error("STOW-RS: spool I/O error storing SOP instance %s: %s", inst.sop_instance_uid, exc)
                storage_error = (FailureReason.PROCESSING_FAILURE, f"spool I/O error: {exc.strerror}")
                inst.fail(*storage_error)
            else:
                inst.outcome, inst.data, inst.header = record.outcome, b"", None
        stored = [i for i in instances if i.failure is None]
        failed = [i for i in instances if i.failure is not None]
        if storage_error is not None:
            status = HTTPStatus.SERVICE_UNAVAILABLE
        elif not failed:
            status = HTTPStatus.OK
        elif stored:
            status = HTTPStatus.ACCEPTED
        else:
            status = HTTPStatus.CONFLICT
        warnings = [f'299 neuroread "part {i.part}: {quote(i.why)}"' for i in failed[:_MAX_WARNINGS]]
        if len(failed) > _MAX_WARNINGS:
            warnings.append(f'299 neuroread "{len(failed) - _MAX_WARNINGS} more parts failed"')
        headers = {"Retry-After": str(_RETRY_AFTER_S)} if storage_error is not None else {}
        body = json.dumps(response(instances).to_json_dict()).encode("utf-8")
        self._send(status, DICOM_JSON, body, headers, warnings)
        new = sum(i.outcome == "new" for i in stored)
        studies = sorted({i.study_uid for i in stored})
        logger.info("STOW-RS from %s (%s): %d parts, %d stored (%d new, %d again), %d failed, studies %s: "
                    "%d in %.2f s", self.client_address[0], principal, len(instances), len(stored), new,
                    len(stored) - new, len(failed), ", ".join(studies) or "-", status, time.monotonic() - started,
                    extra={"peer_address": self.client_address[0], "instances": len(stored), "failed": len(failed)})
        for inst in failed:
            logger.warning("STOW-RS from %s: part %d (SOP instance %s) failed, 0x%04X: %s", self.client_address[0],
                           inst.part, uid_or_empty(inst.sop_instance_uid) or "?", inst.failure, inst.why)

    def _send(self, status: HTTPStatus, content_type: str, body: bytes, headers: dict[str, str],
              warnings: Sequence[str] = ()) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in headers.items():
            self.send_header(name, value)
        for warning in warnings:
            self.send_header("Warning", warning)
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)
        self.wfile.flush()

    def _send_text(self, status: HTTPStatus, message: str, headers: dict[str, str]) -> None:
        self._send(status, "text/plain; charset=utf-8", f"{int(status)} {status.phrase}: {message}\n".encode(), headers)

    def _linger(self) -> None:
        """Close our side and drain (bounded) what the client still sends of a body we did not
        read, so that it gets our answer rather than a connection reset."""
        try:
            self.connection.shutdown(socket.SHUT_WR)
            self.connection.settimeout(_LINGER_S)
            deadline, drained = time.monotonic() + _LINGER_S, 0
            while time.monotonic() < deadline and drained < _LINGER_BYTES:
                chunk = self.connection.recv(65536)
                if not chunk:
                    break
                drained += len(chunk)
        except OSError:  # the client has gone already (or the drain timed out): nothing left to do
            pass


class StowReceiver:
    """A STOW-RS endpoint storing into ``spool`` (see the module docstring).

    Parameters
    ----------
    spool:
        Where instances go (its ``on_stored`` is the hand-off, as for the C-STORE SCP).
    config:
        Listen address (``port`` 0 picks a free one, read it from :attr:`port` after
        :meth:`start`), base path, credentials and limits.
    ssl_context:
        A server-side :class:`ssl.SSLContext` (HTTPS); required when ``config.tls`` is set.
    timeout:
        Seconds a connection may stay silent (request headers or body) before it is dropped.
    """

    def __init__(self, spool: Spool, config: DicomWebConfig, *, ssl_context: ssl.SSLContext | None = None,
                 timeout: float = 60.0) -> None:
        if not isinstance(spool, Spool):
            raise ValueError(f"StowReceiver.spool must be a Spool, got {type(spool).__name__}")
        if not isinstance(config, DicomWebConfig):
            raise ValueError(f"StowReceiver.config must be a DicomWebConfig, got {type(config).__name__}")
        if ssl_context is not None and not isinstance(ssl_context, ssl.SSLContext):
            raise ValueError(f"StowReceiver.ssl_context must be an ssl.SSLContext, got {ssl_context!r}")
        if config.tls is not None and ssl_context is None:
            raise ValueError("StowReceiver: config.tls is set but no ssl_context was given (build one from "
                             "config.tls.cert/key/ca)")
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
            raise ValueError(f"StowReceiver.timeout must be a positive number of seconds, got {timeout!r}")
        users = {**config.users, **{name: env_secret(var, f"dicomweb.users_env.{name}")
                                    for name, var in config.users_env.items()}}
        tokens = config.tokens + tuple(env_secret(var, "dicomweb.tokens_env") for var in config.tokens_env)
        if not config.allow_anonymous and not users and not tokens:
            raise ValueError("StowReceiver: no users or tokens and allow_anonymous is false: nobody could store")
        self._credentials: tuple[dict[str, str], tuple[str, ...]] = (users, tokens)
        self.spool, self.config, self.ssl_context, self.timeout = spool, config, ssl_context, float(timeout)
        self.studies_path = config.base_path.rstrip("/") + "/studies"
        self.max_body_bytes = config.max_body_mb * 1024 * 1024
        self.peers = tuple(ipaddress.ip_network(p, strict=False) for p in config.peers)
        self._active = 0
        self._idle = threading.Condition()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @contextmanager
    def _slot(self) -> Iterator[None]:
        """One of ``config.max_requests`` upload slots for the duration; 503 when none is free."""
        with self._idle:
            if self._active >= self.config.max_requests:
                raise _Refusal(HTTPStatus.SERVICE_UNAVAILABLE,
                               f"busy: {self._active} uploads in progress (dicomweb.max_requests)",
                               {"Retry-After": str(_RETRY_AFTER_S)})
            self._active += 1
        try:
            yield
        finally:
            with self._idle:
                self._active -= 1
                self._idle.notify_all()

    # -- life cycle -----------------------------------------------------------------------------
    def start(self) -> None:
        """Start serving (non-blocking). Raises ``OSError`` if the port cannot be bound."""
        if self._server is not None:
            raise RuntimeError("StowReceiver is already started")
        self._server = _Server((self.config.host, self.config.port), self)
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="neuroread-stow", daemon=True)
        self._thread.start()
        scheme = "https" if self.ssl_context else "http"
        logger.info("STOW-RS receiver on %s://%s:%d%s", scheme, self.config.host, self.port, self.studies_path)
        if self.config.allow_anonymous:
            logger.warning("STOW-RS receiver on port %d accepts uploads WITHOUT AUTHENTICATION "
                           "(dicomweb.allow_anonymous: true): anyone who reaches it can store", self.port)

    def stop(self, wait_s: float = 10.0) -> None:
        """Stop accepting, then wait up to ``wait_s`` for uploads in progress to be answered."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if self._thread is not None:
            self._thread.join(wait_s)
            self._thread = None
        with self._idle:
            if not self._idle.wait_for(lambda: self._active == 0, timeout=wait_s):
                logger.warning("STOW-RS receiver stopped with %d uploads still in progress", self._active)
        logger.info("STOW-RS receiver stopped")

    @property
    def active_uploads(self) -> int:
        """Uploads being served now (each holds one of ``config.max_requests`` slots)."""
        with self._idle:
            return self._active

    @property
    def port(self) -> int:
        """The port listened on (the real one when configured with 0)."""
        if self._server is None:
            return self.config.port
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        """The DICOMweb base URL clients use (``…{base_path}``), e.g. for dicomweb-client."""
        scheme = "https" if self.ssl_context else "http"
        return f"{scheme}://{self.config.host}:{self.port}{self.config.base_path.rstrip('/')}"

    def __enter__(self) -> "StowReceiver":
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
