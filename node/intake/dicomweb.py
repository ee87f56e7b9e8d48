"""DICOMweb client side: authenticated HTTP sessions, and pull mode (QIDO-RS + WADO-RS).

One place for how neuroread talks HTTP to a peer, shared by the pull code below and the
deliver stage's ``stowrs`` and ``orthanc`` destinations:

:class:`HttpAuth`
    none, HTTP basic (``username`` + ``password``) or a bearer ``token``, exactly one scheme;
    secrets may come from environment variables (``password_env``, ``token_env``) so they need
    not sit in a YAML file or on a command line. Secrets never appear in a ``repr`` or message.
:func:`http_session`
    a :class:`requests.Session` built with :mod:`dicomweb_client.session_utils`, with the
    auth, a CA bundle for https (``ca_file``) or, when asked, no certificate check.
:func:`pull_study` (``neuroread run --dicomweb URL --study UID``)
    finds the study's series with QIDO-RS, fetches each series' instances with WADO-RS
    (uncompressed explicit VR little endian, the default media type: the server transcodes)
    and writes them as part-10 files ``<folder>/<SeriesUID>/<SOPInstanceUID>.dcm`` (UIDs
    checked before they become paths, each file written atomically), with a progress bar.
    A study the server does not have, credentials it refuses and a server that cannot be
    reached each raise a :class:`DicomWebError` naming the URL and the HTTP status (UIDs,
    never patient data).
"""
from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from http import HTTPStatus
from io import BytesIO
from pathlib import Path
from urllib.parse import urlsplit

import pydicom
import requests
from dicomweb_client import DICOMwebClient, session_utils
from pydicom.errors import InvalidDicomError
from tqdm import tqdm

from neuroread.node.spool.atomic import atomic_write, make_dirs
from neuroread.node.spool.store import validate_uid

logger = logging.getLogger(__name__)

SERIES_INSTANCE_UID = "0020000E"
NUMBER_OF_SERIES_RELATED_INSTANCES = "00201209"


# -- URLs, auth and sessions -----------------------------------------------------------------------
def check_url(value: object, field: str) -> str:
    """``value`` if it is an http(s) URL with a host and no credentials in it, else ``ValueError``."""
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{field} must be an http(s) URL, got {value!r}")
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{field} must be an http(s) URL like http://host:8042/dicom-web, got {value!r}")
    if parts.username is not None or parts.password is not None:
        raise ValueError(f"{field}: put credentials in username/password or token, not in the URL")
    return value.rstrip("/")


def env_secret(name: object, field: str) -> str:
    """The secret in environment variable ``name`` (surrounding white space dropped); ``field``
    names the setting in the error (both sides use it: the HTTP destinations and the STOW-RS
    receiver)."""
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"{field} must name an environment variable, got {name!r}")
    value = os.environ.get(name, "").strip()
    if not value:
        raise ValueError(f"{field}: environment variable {name} is not set (or empty)")
    return value


class BearerAuth(requests.auth.AuthBase):
    """``Authorization: Bearer <token>`` on every request (requests drops it on a redirect to
    another host, as it does for basic auth)."""

    def __init__(self, token: str) -> None:
        self._token = token

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        request.headers["Authorization"] = f"Bearer {self._token}"
        return request

    def __repr__(self) -> str:
        return "BearerAuth(<token>)"


@dataclass(frozen=True)
class HttpAuth:
    """How to authenticate to an HTTP peer: nothing, basic, or a bearer token (one scheme)."""

    username: str | None = None
    password: str | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        for name in ("username", "password", "token"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value):
                raise ValueError(f"{name} must be a non-empty string")
        if self.token is not None and (self.username is not None or self.password is not None):
            raise ValueError("token: give either username + password (basic) or a token (bearer), not both")
        if (self.username is None) != (self.password is None):
            missing = "password (or password_env)" if self.password is None else "username"
            raise ValueError(f"{missing}: basic authentication needs both username and password")

    @classmethod
    def from_keys(cls, *, username: str | None = None, password: str | None = None,
                  password_env: str | None = None, token: str | None = None,
                  token_env: str | None = None) -> "HttpAuth":
        """The auth from configuration keys; ``*_env`` name environment variables read now."""
        if password is not None and password_env is not None:
            raise ValueError("password_env: give password or password_env, not both")
        if token is not None and token_env is not None:
            raise ValueError("token_env: give token or token_env, not both")
        if password_env is not None:
            password = env_secret(password_env, "password_env")
        if token_env is not None:
            token = env_secret(token_env, "token_env")
        return cls(username, password, token)

    @property
    def scheme(self) -> str:
        """``basic``, ``bearer`` or ``none``."""
        return "bearer" if self.token else "basic" if self.username else "none"

    def describe(self) -> str:
        """For messages: the scheme and user, never a secret."""
        return {"basic": f"basic auth as {self.username!r}", "bearer": "a bearer token",
                "none": "no credentials"}[self.scheme]


def http_session(auth: HttpAuth | None = None, *, ca_file: str | os.PathLike | None = None,
                 verify: bool = True) -> requests.Session:
    """A session with ``auth``, trusting ``ca_file`` for https (or nothing checked: ``verify=False``)."""
    auth = auth or HttpAuth()
    if ca_file is not None and not Path(ca_file).is_file():
        raise ValueError(f"ca_file {os.fspath(ca_file)!r} is not a file")
    if auth.scheme == "basic":
        session = session_utils.create_session_from_user_pass(auth.username, auth.password)
    elif auth.scheme == "bearer":
        session = session_utils.create_session_from_auth(BearerAuth(auth.token))
    else:
        session = session_utils.create_session()
    if ca_file is not None:
        session_utils.add_certs_to_session(session, ca_bundle=os.fspath(ca_file))
    elif not verify:
        session.verify = False
    return session


# -- describing failures (shared with the deliver stage) -------------------------------------------
def excerpt(body: bytes, limit: int = 200) -> str:
    """A short, one-line excerpt of an error body (Orthanc's JSON errors: their Details/Message)."""
    text = body[:4096].decode("utf-8", "replace")
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    if isinstance(data, Mapping) and isinstance(data.get("Details") or data.get("Message"), str):
        text = data.get("Details") or data.get("Message")
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit - 1] + "…"


def http_status(code: int) -> str:
    """``401 Unauthorized``: the code with its phrase."""
    try:
        return f"{code} {HTTPStatus(code).phrase}"
    except ValueError:
        return str(code)


def describe_failure(exc: requests.RequestException) -> str:
    """What went wrong below HTTP, short: refused, timed out, TLS, name not resolved…"""
    if isinstance(exc, requests.Timeout):
        return "no answer in time (timeout)"
    if isinstance(exc, requests.exceptions.SSLError):
        return "TLS handshake failed (certificate not trusted? see ca_file)"
    seen: Exception | None = exc
    while seen is not None:  # requests wraps urllib3, which wraps the socket error
        if isinstance(seen, ConnectionRefusedError):
            return "connection refused"
        if isinstance(seen, OSError) and seen.strerror:
            return seen.strerror
        seen = seen.__cause__ or seen.__context__
    return type(exc).__name__


# -- pull mode -------------------------------------------------------------------------------------
class DicomWebError(ConnectionError):
    """A DICOMweb server that could not be used: unreachable, refused the credentials, or answered
    with an error. ``url`` is the request's URL; ``status`` the HTTP status (None: no answer)."""

    def __init__(self, message: str, *, url: str, status: int | None = None) -> None:
        super().__init__(message)
        self.url, self.status = url, status


class StudyNotFoundError(DicomWebError):
    """The server answered, but has no series for the study."""


@contextmanager
def _http_errors(url: str, auth: HttpAuth, what: str, missing: str | None = None) -> Iterator[None]:
    """Turn requests' exceptions raised while doing ``what`` into :class:`DicomWebError`; with
    ``missing``, a 404 is a :class:`StudyNotFoundError` saying so."""
    try:
        yield
    except requests.HTTPError as exc:
        rsp = exc.response
        status, where = rsp.status_code, rsp.url or url
        if status in (401, 403):
            raise DicomWebError(f"{what}: HTTP {http_status(status)} from {where}: the server refused "
                                f"{auth.describe()}", url=where, status=status) from None
        if status == 404:
            error = StudyNotFoundError if missing else DicomWebError
            raise error(f"{missing or what}: HTTP {http_status(status)} from {where} (is {url} the DICOMweb root?)",
                        url=where, status=status) from None
        body = excerpt(rsp.content)
        raise DicomWebError(f"{what}: HTTP {http_status(status)} from {where}" + (f": {body}" if body else ""),
                            url=where, status=status) from None
    except (requests.ConnectionError, requests.Timeout) as exc:
        raise DicomWebError(f"{what}: cannot reach {url}: {describe_failure(exc)}", url=url) from None
    except (ValueError, InvalidDicomError) as exc:  # a reply dicomweb-client or pydicom cannot read
        raise DicomWebError(f"{what}: unreadable reply from {url}: {exc}", url=url) from None
    except requests.RequestException as exc:  # too many redirects, a broken chunked stream…
        raise DicomWebError(f"{what}: request to {url} failed: {type(exc).__name__}: {exc}", url=url) from None


def _value(item: Mapping, tag: str) -> object:
    values = item.get(tag, {}).get("Value") or [None]
    return values[0]


def pull_study(url: str, study_uid: str, folder: str | os.PathLike, *, auth: HttpAuth | None = None,
               ca_file: str | os.PathLike | None = None, verify: bool = True, timeout: float = 60.0,
               progress: bool = True) -> list[Path]:
    """Fetch every instance of study ``study_uid`` from the DICOMweb root ``url`` into ``folder``.

    QIDO-RS lists the study's series, WADO-RS retrieves each series; each instance becomes
    ``folder/<SeriesInstanceUID>/<SOPInstanceUID>.dcm`` (written atomically; an instance already
    there is overwritten with the same object). Returns the files written, in retrieval order.

    Raises :class:`StudyNotFoundError` when the server has no series for the study,
    :class:`DicomWebError` when it refuses the credentials (401/403), answers with another
    error, or cannot be reached; ``ValueError`` for a malformed URL or UID.
    """
    study = validate_uid(study_uid, "study UID")
    url = check_url(url, "DICOMweb URL")
    auth = auth or HttpAuth()
    root = Path(folder)
    started = time.monotonic()
    session = http_session(auth, ca_file=ca_file, verify=verify)
    with session:
        client = DICOMwebClient(url, session=session, timeout=timeout)
        client.set_http_retry_params(retry=False)  # its retries wait ~30 s on a refused connection
        with _http_errors(url, auth, f"QIDO-RS search for the series of study {study}", f"study {study} not found"):
            found = client.search_for_series(study, fields=["NumberOfSeriesRelatedInstances"])
        if not found:
            raise StudyNotFoundError(f"study {study} not found at {url} (QIDO-RS found no series)", url=url,
                                     status=200)
        series_uids = [validate_uid(_value(s, SERIES_INSTANCE_UID), "SeriesInstanceUID") for s in found]
        counts = [_value(s, NUMBER_OF_SERIES_RELATED_INSTANCES) for s in found]
        total = sum(int(c) for c in counts) if all(isinstance(c, (int, str)) and str(c).isdigit()
                                                    for c in counts) else None
        written: list[Path] = []
        with tqdm(total=total, unit="instance", desc=f"WADO-RS {len(series_uids)} series",
                  disable=not progress) as bar:
            for series in series_uids:
                with _http_errors(url, auth, f"WADO-RS retrieval of series {series} (study {study})"):
                    for ds in client.iter_series(study, series):
                        written.append(_write_instance(root, ds))
                        bar.update(1)
    if not written:
        raise StudyNotFoundError(f"study {study} at {url}: its {len(series_uids)} series returned no instances",
                                 url=url, status=200)
    logger.info("pulled study %s: %d instances of %d series from %s in %.1f s", study, len(written),
                len(series_uids), url, time.monotonic() - started)
    return written


def _write_instance(root: Path, ds: pydicom.Dataset) -> Path:
    series = validate_uid(str(ds.get("SeriesInstanceUID", "")), "SeriesInstanceUID")
    sop = validate_uid(str(ds.get("SOPInstanceUID", "")), "SOPInstanceUID")
    target = root / series / f"{sop}.dcm"
    buf = BytesIO()
    pydicom.dcmwrite(buf, ds, enforce_file_format=True)
    make_dirs(target.parent, root, fsync=False)
    atomic_write(target, buf.getvalue(), fsync=False)  # a temporary input copy: atomic, not durable
    return target
