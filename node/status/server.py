"""The status HTTP server: the page, the thumbnails and ``/metrics`` on the standard library's
:class:`~http.server.ThreadingHTTPServer`.

=========================================  ==================================================
``GET /``                                  the status page (:mod:`.page`), ``text/html``
``GET /thumbnail/<job id>/<SOP UID>.png``  a Secondary Capture result as a small PNG
                                           (:mod:`.thumbnails`); 400 for a malformed id or
                                           UID, 404 when the job has no such result
``GET /metrics``                           Prometheus text exposition (:mod:`.metrics`;
                                           OpenMetrics when the Accept header asks for it)
``GET /favicon.ico``                       204, no icon
=========================================  ==================================================

Other paths answer 404, other methods 405. With ``users`` or ``users_env`` configured, every
path needs HTTP basic credentials (:func:`neuroread.node.http.basic_user`; 401 with
``WWW-Authenticate: Basic realm="neuroread"``); without, the server is open, which the
configuration allows on a loopback address only. When the database cannot be read the page
and ``/metrics`` answer 503. Answers are never cached by the browser but thumbnails, whose
content never changes (deterministic UIDs); every answer closes its connection.

Logs: peer address, path and status (refusals at INFO, failures at ERROR), never patient data.
"""
from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Callable
from datetime import datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler

import sqlalchemy as sa

from neuroread.node.config import StatusConfig
from neuroread.node.deliver import Outbox
from neuroread.node.http import BackgroundHTTPServer, basic_user, env_secret
from neuroread.node.schema import utc_now

from .metrics import NodeMetrics
from .page import Snapshot, render, take_snapshot
from .thumbnails import ThumbnailError, Thumbnails

logger = logging.getLogger(__name__)

_THUMBNAIL = re.compile(r"/thumbnail/([^/]+)/([^/]+)\.png")
# The page loads nothing but its own thumbnails; it may not be framed.
_SECURITY_HEADERS = {"X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
                     "Content-Security-Policy": "default-src 'none'; img-src 'self'; style-src 'unsafe-inline'; "
                                                "frame-ancestors 'none'"}


class _Server(BackgroundHTTPServer):
    def __init__(self, address: tuple[str, int], status: "StatusServer") -> None:
        self.status = status
        super().__init__(address, _Handler)

    def handle_error(self, request: object, client_address: tuple[str, int]) -> None:
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, TimeoutError)):
            logger.info("status page: connection from %s dropped: %s", client_address[0], exc)
        else:
            logger.error("status page: connection from %s failed", client_address[0], exc_info=True)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    server_version = "neuroread-status"
    sys_version = ""
    timeout = 30
    error_content_type = "text/plain; charset=utf-8"
    error_message_format = "%(code)d %(message)s\n"

    def log_message(self, format: str, *args: object) -> None:
        logger.debug("status page %s: %s", self.client_address[0], format % args)

    def do_GET(self) -> None:
        status = self.server.status
        path = self.path.split("?", 1)[0]
        if not self._authorized():
            return
        if path in ("/", "/index.html"):
            self._database_answer(lambda: (render(status.snapshot()).encode("utf-8"), "text/html; charset=utf-8"))
        elif path == "/metrics":
            self._database_answer(lambda: status.metrics.exposition(self.headers.get("Accept")))
        elif match := _THUMBNAIL.fullmatch(path):
            try:
                png = status.thumbnails.png(match[1], match[2])
            except ThumbnailError as exc:
                self._text(exc.status, str(exc))
            except sa.exc.SQLAlchemyError as exc:
                self._database_error(exc)
            else:
                self._send(HTTPStatus.OK, png, "image/png", {"Cache-Control": "private, max-age=86400"})
        elif path == "/favicon.ico":  # what every browser asks for: nothing, rather than an error in its console
            self._send(HTTPStatus.NO_CONTENT, b"", "image/x-icon", {"Cache-Control": "max-age=86400"})
        else:
            self._text(HTTPStatus.NOT_FOUND, "no such page: the status page is /, the metrics /metrics")

    def _other(self) -> None:
        if self._authorized():
            self._text(HTTPStatus.METHOD_NOT_ALLOWED, f"{self.command} is not supported: the status page takes GET",
                       {"Allow": "GET"})

    do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = _other

    def _authorized(self) -> bool:
        """True when no login is configured or the request carries a configured user's; else 401 sent."""
        users = self.server.status._users
        if not users or basic_user(self.headers.get("Authorization"), users) is not None:
            return True
        told = "wrong" if self.headers.get("Authorization") else "no"
        logger.info("status page: %s credentials from %s for %s", told, self.client_address[0],
                    self.path.split("?", 1)[0][:80], extra={"peer_address": self.client_address[0]})
        self._text(HTTPStatus.UNAUTHORIZED, f"{told} credentials: log in (HTTP basic)",
                   {"WWW-Authenticate": 'Basic realm="neuroread", charset="UTF-8"'})
        return False

    def _database_answer(self, make: Callable[[], tuple[bytes, str]]) -> None:
        try:
            body, content_type = make()
        except sa.exc.SQLAlchemyError as exc:
            self._database_error(exc)
        else:
            self._send(HTTPStatus.OK, body, content_type, {"Cache-Control": "no-store"})

    def _database_error(self, exc: sa.exc.SQLAlchemyError) -> None:
        logger.error("status page: %s: database: %s", self.path.split("?", 1)[0][:80], type(exc).__name__)
        self._text(HTTPStatus.SERVICE_UNAVAILABLE, f"the node's database cannot be read ({type(exc).__name__})",
                   {"Retry-After": "10"})

    def _text(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        status = HTTPStatus(status)
        self._send(status, f"{int(status)} {status.phrase}: {message}\n".encode(), "text/plain; charset=utf-8",
                   {"Cache-Control": "no-store", **(headers or {})})

    def _send(self, status: HTTPStatus, body: bytes, content_type: str, headers: dict[str, str]) -> None:
        self.send_response(status)
        length = {} if status == HTTPStatus.NO_CONTENT else {"Content-Length": str(len(body))}
        for name, value in {"Content-Type": content_type, **length, **_SECURITY_HEADERS, **headers,
                            "Connection": "close"}.items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)


class StatusServer:
    """The node's status page and ``/metrics`` (see the module docstring).

    Parameters
    ----------
    config:
        Listen address (``port`` 0 picks a free one: read :attr:`port` after :meth:`start`) and
        the login; ``users_env`` passwords are read from the environment now (``ValueError``
        naming the variable when one is unset).
    engine:
        The node's database (:attr:`neuroread.node.jobs.JobStore.engine`).
    outbox_folder:
        The outbox folder (``config.storage.outbox``): thumbnails are read only from inside it.
    metrics:
        The node's :class:`NodeMetrics` (the one its spool hook counts into); a new one when None.
        :meth:`start` starts its poller and :meth:`stop` stops it.
    node_name:
        Shown in the page's title (the node's AE title).
    clock:
        The current aware UTC time; tests pass their own.
    poll_s:
        How often the metrics poller looks for finished jobs.
    """

    def __init__(self, config: StatusConfig, engine: sa.Engine, *, outbox_folder: str | os.PathLike,
                 metrics: NodeMetrics | None = None, node_name: str = "neuroread",
                 clock: Callable[[], datetime] = utc_now, poll_s: float = 2.0) -> None:
        if not isinstance(config, StatusConfig):
            raise ValueError(f"StatusServer.config must be a StatusConfig, got {type(config).__name__}")
        if not isinstance(engine, sa.Engine):
            raise ValueError(f"StatusServer.engine must be an sqlalchemy Engine, got {type(engine).__name__}")
        if metrics is not None and not isinstance(metrics, NodeMetrics):
            raise ValueError(f"StatusServer.metrics must be a NodeMetrics, got {type(metrics).__name__}")
        if isinstance(poll_s, bool) or not isinstance(poll_s, (int, float)) or poll_s <= 0:
            raise ValueError(f"StatusServer.poll_s must be a positive number of seconds, got {poll_s!r}")
        self._users = {**config.users, **{name: env_secret(var, f"status.users_env.{name}")
                                          for name, var in config.users_env.items()}}
        self.config, self.engine, self.node_name, self.clock = config, engine, str(node_name), clock
        self.poll_s = float(poll_s)
        self.metrics = metrics if metrics is not None else NodeMetrics(engine, clock=clock)
        self.outbox = Outbox(engine, outbox_folder, [])  # read only: its status() of a job's results
        self.thumbnails = Thumbnails(self.outbox)
        self._server: _Server | None = None

    def snapshot(self) -> Snapshot:
        """What the page shows now."""
        return take_snapshot(self.engine, self.outbox, self.clock(), self.node_name)

    # -- life cycle -----------------------------------------------------------------------------
    def start(self) -> None:
        """Start the metrics poller, then serve (non-blocking). ``OSError`` if the port cannot be bound."""
        if self._server is not None:
            raise RuntimeError("StatusServer is already started")
        server = _Server((self.config.host, self.config.port), self)
        self.metrics.start(self.poll_s)
        self._server = server
        server.serve_in_thread("neuroread-status")
        logger.info("status page on %s (%s), metrics at %s/metrics", self.url,
                    f"login: {len(self._users)} users" if self._users else "no login", self.url.rstrip("/"))

    def stop(self, wait_s: float = 10.0) -> None:
        """Stop serving and stop the metrics poller."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close(wait_s)
        self.metrics.stop(wait_s)
        logger.info("status page stopped")

    @property
    def port(self) -> int:
        """The port listened on (the real one when configured with 0)."""
        return self.config.port if self._server is None else self._server.port

    @property
    def url(self) -> str:
        """The page's URL, e.g. ``http://127.0.0.1:8088/`` (an IPv6 host in brackets)."""
        host = f"[{self.config.host}]" if ":" in self.config.host else self.config.host
        return f"http://{host}:{self.port}/"

    def __enter__(self) -> "StatusServer":
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
