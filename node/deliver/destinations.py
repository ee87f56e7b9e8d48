"""Destinations of the deliver stage: the values they exchange with the outbox, C-STORE SCU and
folder (the HTTP kinds, STOW-RS and Orthanc REST, are :mod:`neuroread.node.deliver.http_destinations`).

See :mod:`neuroread.node.deliver` for the contract and each kind's outcome mapping; a new kind
implements :class:`Destination` and is listed in :data:`neuroread.node.deliver.from_config.DESTINATION_TYPES`.
"""
from __future__ import annotations

import difflib
import logging
import os
import socket
import ssl
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import MISSING, dataclass, field, fields
from io import BytesIO
from pathlib import Path
from typing import Any, ClassVar, Literal, Protocol

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, evt
from pynetdicom.association import Association
from pynetdicom.status import STATUS_SUCCESS, STATUS_WARNING, code_to_category  # the categories code_to_category names

from neuroread.node.spool import InvalidUIDError, Writer, atomic_write, make_dirs, validate_uid, write_all

logger = logging.getLogger(__name__)

TEMP_PREFIX = ".outgoing-"


# -- values passed between the outbox and destinations --------------------------------------------
@dataclass(frozen=True)
class OutboxItem:
    """One object for one destination, as a destination sees it (and :meth:`Outbox.status` shows)."""

    id: int
    destination: str
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    study_uid: str
    series_uid: str
    path: Path
    state: str = "pending"
    attempts: int = 0
    next_attempt_at: float = 0.0
    sent_at: float | None = None
    status_code: int | None = None
    last_error: str | None = None


@dataclass(frozen=True)
class Outcome:
    """What a destination did with one item: ``sent``, ``rejected`` or ``retry``."""

    sop_instance_uid: str
    result: Literal["sent", "rejected", "retry"]
    status_code: int | None = None
    comment: str = ""


class Destination(Protocol):
    """What the outbox needs of a destination (the extension point for new kinds)."""

    name: str

    def send(self, items: Sequence[OutboxItem]) -> list[Outcome]:
        """One :class:`Outcome` per item; never raises for a peer or I/O fault."""


# -- validation helpers ----------------------------------------------------------------------------
def _check_name(value: object, field: str) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= 64 or value != value.strip():
        raise ValueError(f"{field} must be a non-empty string of at most 64 characters, got {value!r}")
    return value


def _check_ae_title(value: object, field: str) -> str:
    if not isinstance(value, str) or not 0 < len(value.strip()) <= 16 or "\\" in value \
            or any(ord(c) < 32 for c in value):
        raise ValueError(f"{field} must be an AE title of 1-16 characters, got {value!r}")
    return value.strip()


def _check_positive(value: object, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"{field} must be a number > 0, got {value!r}")
    return float(value)


def _unknown_keys(cfg: Mapping[str, Any], allowed: Iterable[str], where: str) -> None:
    allowed = list(allowed)
    for key in cfg:
        if key not in allowed:
            near = difflib.get_close_matches(str(key), allowed, n=1)
            hint = f"; did you mean {near[0]!r}?" if near else f"; allowed: {', '.join(sorted(allowed))}"
            raise ValueError(f"{where}.{key}: unknown key{hint}")


def _from_dict(cls: type, cfg: object, where: str, skip: tuple[str, ...] = ()) -> Any:
    if not isinstance(cfg, Mapping):
        raise ValueError(f"{where} must be a mapping, got {type(cfg).__name__}")
    names = [f.name for f in fields(cls) if f.name not in skip]
    _unknown_keys({k: v for k, v in cfg.items() if k != "type"}, names, where)
    try:
        return cls(**{k: v for k, v in cfg.items() if k != "type"})
    except TypeError as exc:  # a required key missing
        missing = [f.name for f in fields(cls) if f.name not in cfg and f.name not in skip
                   and f.default is MISSING and f.default_factory is MISSING]
        raise ValueError(f"{where}: missing key {', '.join(missing) or '?'} ({exc})") from exc
    except ValueError as exc:
        raise ValueError(f"{where}.{exc}") from exc


# -- files -----------------------------------------------------------------------------------------
def _layout(root: Path, study: str, series: str, sop: str) -> Path:
    """``root/study/series/sop.dcm`` after checking each UID (no path characters can pass)."""
    return root / validate_uid(study, "StudyInstanceUID") / validate_uid(series, "SeriesInstanceUID") \
        / f"{validate_uid(sop, 'SOPInstanceUID')}.dcm"


def write_file(root: Path, target: Path, data: bytes, *, fsync: bool = True, writer: Writer = write_all) -> None:
    """``target`` (below ``root``) written durably, its new folders included (neuroread.node.spool.atomic)."""
    make_dirs(target.parent, root, fsync=fsync)
    atomic_write(target, data, fsync=fsync, writer=writer, temp_prefix=TEMP_PREFIX, temp_suffix=".tmp")


def _log_summary(name: str, outcomes: Sequence[Outcome], started: float) -> None:
    logger.info("destination %s: %d sent, %d rejected, %d to retry in %.2f s", name,
                *(sum(o.result == r for o in outcomes) for r in ("sent", "rejected", "retry")),
                time.monotonic() - started, extra={"destination": name})


def _part10(ds: Dataset) -> bytes:
    buf = BytesIO()
    pydicom.dcmwrite(buf, ds, enforce_file_format=True)
    return buf.getvalue()


# -- destinations ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class TlsSettings:
    """DICOM-TLS for a ``dicom`` destination: the CA to trust, optionally our own certificate."""

    ca_file: str
    cert_file: str | None = None
    key_file: str | None = None
    check_hostname: bool = False

    def __post_init__(self) -> None:
        for name in ("ca_file", "cert_file", "key_file"):
            value = getattr(self, name)
            if value is None and name != "ca_file":
                continue
            if not isinstance(value, (str, os.PathLike)) or not Path(value).is_file():
                raise ValueError(f"{name} must name an existing file, got {value!r}")
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file: cert_file and key_file go together")
        if not isinstance(self.check_hostname, bool):
            raise ValueError(f"check_hostname must be true or false, got {self.check_hostname!r}")

    def context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(self.ca_file))
        ctx.check_hostname = self.check_hostname
        if self.cert_file is not None:
            ctx.load_cert_chain(str(self.cert_file), str(self.key_file))
        return ctx


def _set_nodelay(event: evt.Event) -> None:
    sock = event.assoc.dul.socket.socket if event.assoc.dul.socket else None
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _not_established(assoc: Association, connected: bool, host: str, port: int) -> str:
    if not connected:
        return f"cannot connect to {host}:{port} (refused, unreachable or timed out)"
    if assoc.is_rejected:
        rj = assoc.acceptor.primitive
        return (f"association rejected by {host}:{port} (result {rj.result}, source {rj.result_source}, "
                f"reason {rj.diagnostic})")
    if assoc.is_aborted:
        return f"association aborted by {host}:{port}"
    return f"association with {host}:{port} not established (timeout)"


@dataclass(frozen=True)
class DicomDestination:
    """A C-STORE SCU destination (see the module docstring).

    YAML: ``{type: dicom, name: pacs, host: 10.0.0.5, port: 104, called_ae: PACS,
    calling_ae: NEUROREAD, tls: {ca_file: ca.pem}}`` (timeouts in seconds, optional).
    """

    type: ClassVar[str] = "dicom"
    name: str
    host: str
    port: int
    called_ae: str
    calling_ae: str = "NEUROREAD"
    tls: TlsSettings | None = None
    connect_timeout: float = 10.0
    acse_timeout: float = 30.0
    dimse_timeout: float = 60.0
    network_timeout: float = 60.0

    def __post_init__(self) -> None:
        _check_name(self.name, "name")
        if not isinstance(self.host, str) or not self.host.strip():
            raise ValueError(f"host must be a host name or address, got {self.host!r}")
        if isinstance(self.port, bool) or not isinstance(self.port, int) or not 0 < self.port <= 65535:
            raise ValueError(f"port must be 1-65535, got {self.port!r}")
        object.__setattr__(self, "called_ae", _check_ae_title(self.called_ae, "called_ae"))
        object.__setattr__(self, "calling_ae", _check_ae_title(self.calling_ae, "calling_ae"))
        if isinstance(self.tls, Mapping):
            object.__setattr__(self, "tls", _from_dict(TlsSettings, self.tls, "tls"))
        elif self.tls is not None and not isinstance(self.tls, TlsSettings):
            raise ValueError(f"tls must be a mapping (ca_file, cert_file, key_file, check_hostname), got {self.tls!r}")
        for name in ("connect_timeout", "acse_timeout", "dimse_timeout", "network_timeout"):
            object.__setattr__(self, name, _check_positive(getattr(self, name), name))

    @classmethod
    def from_dict(cls, cfg: Mapping[str, Any], where: str = "destination") -> "DicomDestination":
        return _from_dict(cls, cfg, where)

    def associate(self, contexts: Mapping[str, Sequence[str]]) -> Association:
        """An association proposing ``{sop_class_uid: [transfer syntaxes]}``, TCP_NODELAY set.

        The caller checks ``is_established`` and releases it.
        """
        return self._associate(contexts)[0]

    def _associate(self, contexts: Mapping[str, Sequence[str]]) -> tuple[Association, bool]:
        """The association, and whether the TCP connection was made at all."""
        ae = AE(ae_title=self.calling_ae)
        ae.connection_timeout = self.connect_timeout
        ae.acse_timeout, ae.dimse_timeout, ae.network_timeout = \
            self.acse_timeout, self.dimse_timeout, self.network_timeout
        for sop_class, syntaxes in contexts.items():
            ae.add_requested_context(sop_class, list(syntaxes))
        tls = (self.tls.context(), self.host if self.tls.check_hostname else None) if self.tls else None
        connected = threading.Event()

        def on_open(event: evt.Event) -> None:
            _set_nodelay(event)
            connected.set()

        assoc = ae.associate(self.host, self.port, ae_title=self.called_ae, tls_args=tls,
                             evt_handlers=[(evt.EVT_CONN_OPEN, on_open)])
        return assoc, connected.is_set()

    @staticmethod
    def contexts_for(items: Sequence[OutboxItem]) -> dict[str, list[str]]:
        """Exactly the batch's SOP classes, each in its objects' syntaxes + explicit/implicit VR LE."""
        out: dict[str, list[str]] = {}
        for item in items:
            syntaxes = out.setdefault(item.sop_class_uid, [])
            for ts in (item.transfer_syntax_uid, ExplicitVRLittleEndian, ImplicitVRLittleEndian):
                if ts not in syntaxes:
                    syntaxes.append(ts)
        return out

    def send(self, items: Sequence[OutboxItem]) -> list[Outcome]:
        if not items:
            return []
        started = time.monotonic()
        try:
            assoc, connected = self._associate(self.contexts_for(items))
        except (OSError, ssl.SSLError) as exc:  # e.g. a TLS context that cannot be built
            return [Outcome(i.sop_instance_uid, "retry", None, f"cannot associate: {exc}") for i in items]
        if not assoc.is_established:
            why = _not_established(assoc, connected, self.host, self.port)
            logger.warning("destination %s: %s; %d objects wait for a retry", self.name, why, len(items),
                           extra={"destination": self.name})
            return [Outcome(i.sop_instance_uid, "retry", None, why) for i in items]
        outcomes: list[Outcome] = []
        try:
            for item in items:
                if not assoc.is_established:
                    break
                outcomes.append(self._store(assoc, item))
                if outcomes[-1].result == "retry":
                    break
        finally:
            if assoc.is_established:
                assoc.release()
        lost = "association ended before this object was sent"
        outcomes += [Outcome(i.sop_instance_uid, "retry", None, lost) for i in items[len(outcomes):]]
        _log_summary(self.name, outcomes, started)
        return outcomes

    def _store(self, assoc: Association, item: OutboxItem) -> Outcome:
        uid = item.sop_instance_uid
        try:
            ds = pydicom.dcmread(item.path)
        except (OSError, InvalidDicomError) as exc:
            return Outcome(uid, "rejected", None, f"outbox file unreadable: {exc}")
        try:
            rsp = assoc.send_c_store(ds)
        except ValueError as exc:  # no accepted presentation context for this SOP class / syntax
            return Outcome(uid, "rejected", None, f"not accepted by the peer: {exc}")
        except RuntimeError as exc:  # association gone
            return Outcome(uid, "retry", None, f"association lost: {exc}")
        status = rsp.get("Status") if rsp is not None else None
        if status is None:
            return Outcome(uid, "retry", None, "no C-STORE response (timeout or abort)")
        status = int(status)
        comment = str(rsp.get("ErrorComment", "") or "")
        category = code_to_category(status)
        if category == STATUS_SUCCESS:
            return Outcome(uid, "sent", status, "")
        if category == STATUS_WARNING:
            logger.warning("destination %s: C-STORE of %s succeeded with warning 0x%04X %s", self.name,
                           uid, status, comment, extra={"destination": self.name, "sop_instance_uid": uid})
            return Outcome(uid, "sent", status, f"warning 0x{status:04X} {comment}".strip())
        logger.warning("destination %s rejected %s: %s 0x%04X %s", self.name, uid, category, status,
                       comment, extra={"destination": self.name, "sop_instance_uid": uid})
        return Outcome(uid, "rejected", status, f"{category.lower()} 0x{status:04X} {comment}".strip())


@dataclass(frozen=True)
class FolderDestination:
    """Files in a folder: ``<path>/<StudyUID>/<SeriesUID>/<SOPInstanceUID>.dcm``, written atomically.

    YAML: ``{type: folder, name: archive, path: /data/results}``. A write error (disk full,
    permissions) leaves no partial file and the object is retried later.
    """

    type: ClassVar[str] = "folder"
    name: str
    path: Path
    fsync: bool = True
    writer: Writer = field(default=write_all, repr=False, compare=False)  # injected by tests

    def __post_init__(self) -> None:
        _check_name(self.name, "name")
        if not isinstance(self.path, (str, os.PathLike)) or not str(self.path).strip():
            raise ValueError(f"path must be a folder path, got {self.path!r}")
        object.__setattr__(self, "path", Path(self.path))
        if self.path.exists() and not self.path.is_dir():
            raise ValueError(f"path {str(self.path)!r} exists and is not a folder")
        if not isinstance(self.fsync, bool):
            raise ValueError(f"fsync must be true or false, got {self.fsync!r}")

    @classmethod
    def from_dict(cls, cfg: Mapping[str, Any], where: str = "destination") -> "FolderDestination":
        return _from_dict(cls, cfg, where, skip=("writer",))

    def send(self, items: Sequence[OutboxItem]) -> list[Outcome]:
        outcomes = []
        for item in items:
            try:
                data = Path(item.path).read_bytes()
            except OSError as exc:
                outcomes.append(Outcome(item.sop_instance_uid, "rejected", None, f"outbox file unreadable: {exc}"))
                continue
            try:
                target = _layout(self.path, item.study_uid, item.series_uid, item.sop_instance_uid)
                write_file(self.path, target, data, fsync=self.fsync, writer=self.writer)
            except InvalidUIDError as exc:
                outcomes.append(Outcome(item.sop_instance_uid, "rejected", None, str(exc)))
            except OSError as exc:
                logger.warning("destination %s: cannot write %s: %s", self.name, item.sop_instance_uid, exc,
                               extra={"destination": self.name})
                outcomes.append(Outcome(item.sop_instance_uid, "retry", None, f"write failed: {exc}"))
            else:
                outcomes.append(Outcome(item.sop_instance_uid, "sent"))
        return outcomes
