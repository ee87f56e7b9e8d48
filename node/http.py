"""How neuroread talks HTTP to a DICOMweb or REST peer, in one place: URL checks, secrets from
the environment, authentication and sessions. Used by the STOW-RS receiver (its credentials),
the DICOMweb pull (:mod:`neuroread.node.intake`) and the deliver stage's ``stowrs`` and
``orthanc`` destinations.

:class:`HttpAuth`
    none, HTTP basic (``username`` + ``password``) or a bearer ``token``, exactly one scheme;
    secrets may come from environment variables (``password_env``, ``token_env``) so they need
    not sit in a YAML file or on a command line. Secrets never appear in a ``repr`` or message.
:func:`http_session`
    a :class:`requests.Session` built with :mod:`dicomweb_client.session_utils`, with the
    auth, a CA bundle for https (``ca_file``) or, when asked, no certificate check.
:func:`basic_user`
    the server side of HTTP basic: which configured user an ``Authorization`` header proves to
    be (the status page's login; the STOW-RS receiver checks the same way).
:class:`BackgroundHTTPServer`
    the standard library's threading HTTP server as the node's endpoints run it: bound without a
    DNS look-up, IPv6 by address, served from a daemon thread.
"""
from __future__ import annotations

import base64
import binascii
import hmac
import json
import os
import socket
import socketserver
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import requests
from dicomweb_client import session_utils


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


def basic_user(header: str | None, users: Mapping[str, str]) -> str | None:
    """The user name an ``Authorization: Basic …`` header value proves, else None.

    None when the header is missing, names another scheme, is not base64 of UTF-8
    ``user:password`` (RFC 7617), or names a user not in ``users`` (name -> password) or with
    another password. The password is compared with :func:`hmac.compare_digest`.
    """
    scheme, _, credentials = (header or "").strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        name, sep, password = base64.b64decode(credentials.strip(), validate=True).decode("utf-8").partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None
    expected = users.get(name)
    if not sep or expected is None or not hmac.compare_digest(password.encode(), expected.encode()):
        return None
    return name


class BackgroundHTTPServer(ThreadingHTTPServer):
    """A :class:`~http.server.ThreadingHTTPServer` bound to ``address`` at once (``OSError`` when
    it cannot be; port 0: a free one, :attr:`port`), one daemon thread per connection, an IPv6
    address family for an address with ``:``, and no reverse DNS look-up of the host at bind
    (:class:`~http.server.HTTPServer` calls ``socket.getfqdn``, which can stall a start on a
    machine without DNS). :meth:`serve_in_thread` serves, :meth:`close` stops."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler]) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self._thread: threading.Thread | None = None
        super().__init__(address, handler)

    def server_bind(self) -> None:
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = str(self.server_address[0]), int(self.server_address[1])

    @property
    def port(self) -> int:
        """The port bound (the one picked when asked for 0)."""
        return int(self.server_address[1])

    def serve_in_thread(self, name: str) -> None:
        """Serve from a daemon thread called ``name`` (it answers :meth:`close` within 0.2 s)."""
        if self._thread is not None:
            raise RuntimeError(f"{name}: already serving")
        self._thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.2}, name=name,
                                        daemon=True)
        self._thread.start()

    def close(self, wait_s: float = 10.0) -> None:
        """Stop accepting and close the socket; wait up to ``wait_s`` for the serving thread
        (requests in progress go on in their own threads)."""
        if self._thread is not None:
            self.shutdown()
        self.server_close()
        if self._thread is not None:
            self._thread.join(wait_s)
            self._thread = None


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
