"""HTTP destinations of the deliver stage: STOW-RS (DICOMweb) and Orthanc's REST API.

See :mod:`neuroread.node.deliver` for the contract and each kind's outcome mapping; the shared
session, authentication and URL handling are :mod:`neuroread.node.intake.dicomweb`'s.
"""
from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import quote

import pydicom
import requests
from dicomweb_client import DICOMwebClient
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from neuroread.node.http import HttpAuth, check_url, describe_failure, excerpt, http_session, http_status

from .destinations import OutboxItem, Outcome, _check_name, _check_positive, _from_dict, _log_summary

logger = logging.getLogger(__name__)


# -- ---------------------------------------------------
# How an OrthancDestination calls Orthanc: (method, path, body) -> (HTTP status, response body),
# raising OSError when Orthanc cannot be reached; body is a DICOM file (bytes) or JSON (str).
RestCall = Callable[[str, str, bytes | str], tuple[int, bytes]]

_RETRY_4XX = frozenset({401, 403, 404, 407, 408, 425, 429})  # fixed by the operator, or by waiting


def _retryable(status: int) -> bool:
    """HTTP statuses after which the same request may well succeed later: nothing is wrong with
    the object (server errors, redirects, credentials, a wrong URL path, rate limits)."""
    return status >= 500 or 300 <= status < 400 or status in _RETRY_4XX


def _http_problem(what: str, status: int, body: bytes, auth: HttpAuth) -> str:
    if status in (401, 403):
        return (f"{what}: HTTP {http_status(status)}: the server refused {auth.describe()}; fix the "
                f"destination's credentials (the objects wait, nothing is lost)")
    detail = excerpt(body)
    return f"{what}: HTTP {http_status(status)}" + (f": {detail}" if detail else "")


@dataclass(frozen=True)
class _HttpPeer:
    """What the HTTP destinations share: where, how to authenticate, TLS and the timeout.

    Auth: ``username`` + ``password`` (or ``password_env``: the name of an environment variable
    holding it) for HTTP basic, or ``token`` (or ``token_env``) for a bearer token, or nothing.
    https: ``ca_file`` (a PEM bundle to trust), or ``verify: false`` (no certificate check).
    """

    name: str
    url: str
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    password_env: str | None = None
    token: str | None = field(default=None, repr=False)
    token_env: str | None = None
    ca_file: str | None = None
    verify: bool = True
    timeout: float = 60.0

    def __post_init__(self) -> None:
        _check_name(self.name, "name")
        object.__setattr__(self, "url", self._checked_url())
        self.auth()  # one scheme, and its environment variables set
        if self.ca_file is not None:
            if not isinstance(self.ca_file, (str, os.PathLike)) or not Path(self.ca_file).is_file():
                raise ValueError(f"ca_file must name an existing file, got {self.ca_file!r}")
            object.__setattr__(self, "ca_file", os.fspath(self.ca_file))
        if not isinstance(self.verify, bool):
            raise ValueError(f"verify must be true or false, got {self.verify!r}")
        if self.ca_file is not None and not self.verify:
            raise ValueError("verify: false turns certificate checks off; it cannot go with ca_file")
        object.__setattr__(self, "timeout", _check_positive(self.timeout, "timeout"))

    def _checked_url(self) -> str:
        return check_url(self.url, "url")

    def auth(self) -> HttpAuth:
        """The credentials, ``*_env`` variables read now (a rotated secret is picked up)."""
        return HttpAuth.from_keys(username=self.username, password=self.password, password_env=self.password_env,
                                  token=self.token, token_env=self.token_env)

    def session(self, auth: HttpAuth) -> requests.Session:
        """A new HTTP session with ``auth`` and this peer's TLS settings (the caller closes it)."""
        return http_session(auth, ca_file=self.ca_file, verify=self.verify)


def _stow_reply(body: bytes) -> Dataset | None:
    """The STOW-RS response data set (DICOM JSON), or None when the body is not one."""
    try:
        data = json.loads(body) if body.strip() else None
    except ValueError:
        return None
    if not isinstance(data, Mapping):
        return None
    try:
        return Dataset.from_json(dict(data))
    except (ValueError, TypeError, KeyError):
        return None


def stow_outcomes(items: Sequence[OutboxItem], response: requests.Response,
                  auth: HttpAuth | None = None) -> list[Outcome]:
    """Each item's outcome from a STOW-RS response (PS3.18 10.5.3), as in :mod:`neuroread.node.deliver`.

    An instance in the Failed SOP Sequence (0008,1198) is rejected with its Failure Reason, one
    in the Referenced SOP Sequence (0008,1199) is sent (its Warning Reason kept), whatever the
    HTTP status. An instance in neither follows the status: 200 sent; 202 (some failed, this
    one not said) retry; 401/403 (credentials), 404, 408, 429, 3xx, 5xx retry; other 4xx
    (400, 409, 413, 415…) rejected. ``status_code`` is the HTTP status.
    """
    status, auth = response.status_code, auth or HttpAuth()
    reply = _stow_reply(response.content or b"")
    failed: dict[str, int | None] = {}
    referenced: dict[str, int | None] = {}
    if reply is not None:
        for item in reply.get("FailedSOPSequence", []):
            failed[str(item.get("ReferencedSOPInstanceUID", ""))] = item.get("FailureReason")
        for item in reply.get("ReferencedSOPSequence", []):
            referenced[str(item.get("ReferencedSOPInstanceUID", ""))] = item.get("WarningReason")
    what = f"STOW-RS to {response.url or 'the server'}"
    outcomes = []
    for item in items:
        uid = item.sop_instance_uid
        if uid in failed:
            reason = failed[uid]
            why = f"failure reason 0x{int(reason):04X}" if reason is not None else "failed, no reason given"
            outcomes.append(Outcome(uid, "rejected", status, f"{what}: HTTP {http_status(status)}: {why}"))
        elif uid in referenced:
            warning = referenced[uid]
            note = f"warning 0x{int(warning):04X}" if warning is not None else ""
            outcomes.append(Outcome(uid, "sent", status, note))
        elif status == 200:
            outcomes.append(Outcome(uid, "sent", status))
        elif status == 202:
            outcomes.append(Outcome(uid, "retry", status,
                                    f"{what}: HTTP {http_status(status)}: this instance is not in the reply"))
        elif _retryable(status):
            outcomes.append(Outcome(uid, "retry", status, _http_problem(what, status, response.content or b"", auth)))
        else:
            body = b"" if reply is not None else response.content or b""  # a DICOM reply is no message
            outcomes.append(Outcome(uid, "rejected", status, _http_problem(what, status, body, auth)))
    return outcomes


@dataclass(frozen=True)
class StowRsDestination(_HttpPeer):
    """STOW-RS to a DICOMweb server (dicomweb-client), one request per study and batch.

    YAML: ``{type: stowrs, name: web, url: https://pacs/dicom-web, username: neuro,
    password_env: PACS_PASSWORD, ca_file: ca.pem, timeout: 60, batch_size: 50}`` (or
    ``token_env: PACS_TOKEN`` for a bearer token). ``url`` is the DICOMweb root; each batch goes
    to ``<url>/studies/<StudyInstanceUID>``. Outcomes: :func:`stow_outcomes`; a server that cannot
    be reached (refused, timed out) leaves the objects to retry.
    """

    type: ClassVar[str] = "stowrs"
    batch_size: int = 50

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1, got {self.batch_size!r}")

    @classmethod
    def from_dict(cls, cfg: Mapping[str, Any], where: str = "destination") -> "StowRsDestination":
        return _from_dict(cls, cfg, where)

    def send(self, items: Sequence[OutboxItem]) -> list[Outcome]:
        if not items:
            return []
        started = time.monotonic()
        try:
            auth = self.auth()
            session = self.session(auth)
        except (ValueError, OSError) as exc:  # an unset *_env variable, a CA file gone
            return [Outcome(i.sop_instance_uid, "retry", None, f"cannot set up the HTTP session: {exc}") for i in items]
        replies: list[requests.Response] = []

        def keep(response: requests.Response, *args: Any, **kwargs: Any) -> requests.Response:
            replies.append(response)
            return response

        by_uid: dict[str, Outcome] = {}
        with session:
            client = DICOMwebClient(self.url, session=session, timeout=self.timeout, callback=keep)
            client.set_http_retry_params(retry=False)  # the outbox retries, with its back-off
            batches: dict[str, list[OutboxItem]] = {}
            for item in items:
                batches.setdefault(item.study_uid, []).append(item)
            todo = [(study, group[k:k + self.batch_size]) for study, group in batches.items()
                    for k in range(0, len(group), self.batch_size)]
            for n, (study, batch) in enumerate(todo):
                replies.clear()
                outcomes, stop = self._store(client, study, batch, replies, auth)
                by_uid.update((o.sop_instance_uid, o) for o in outcomes)
                if stop:  # unreachable or refusing us: the other batches would fare the same
                    why = f"not tried: {outcomes[-1].comment}"
                    for _, later in todo[n + 1:]:
                        by_uid.update((i.sop_instance_uid, Outcome(i.sop_instance_uid, "retry", None, why))
                                      for i in later)
                    break
        result = [by_uid[i.sop_instance_uid] for i in items]
        _log_summary(self.name, result, started)
        return result

    def _unsent(self, items: Sequence[OutboxItem], problem: str) -> list[Outcome]:
        why = f"STOW-RS to {self.url}: {problem}"
        logger.warning("destination %s: %s; %d objects wait for a retry", self.name, why, len(items),
                       extra={"destination": self.name})
        return [Outcome(i.sop_instance_uid, "retry", None, why) for i in items]

    def _store(self, client: DICOMwebClient, study: str, batch: Sequence[OutboxItem],
               replies: list[requests.Response], auth: HttpAuth) -> tuple[list[Outcome], bool]:
        """One STOW-RS request for ``batch``: its outcomes, and whether to stop trying this round."""
        unreadable, sendable, datasets = [], [], []
        for item in batch:
            try:
                datasets.append(pydicom.dcmread(item.path))
                sendable.append(item)
            except (OSError, InvalidDicomError) as exc:
                unreadable.append(Outcome(item.sop_instance_uid, "rejected", None, f"outbox file unreadable: {exc}"))
        if not datasets:
            return unreadable, False
        try:
            client.store_instances(datasets, study_instance_uid=study)
            response = replies[-1]
        except requests.HTTPError as exc:
            response = exc.response
        except (requests.ConnectionError, requests.Timeout) as exc:
            return unreadable + self._unsent(sendable, f"cannot reach it: {describe_failure(exc)}"), True
        except (ValueError, KeyError) as exc:  # JSON errors from requests are ValueErrors too
            if not replies:  # the request could not be built: it never will be
                return unreadable + [Outcome(i.sop_instance_uid, "rejected", None, f"STOW-RS request not built: {exc}")
                                     for i in sendable], False
            response = replies[-1]  # dicomweb-client could not read the reply; stow_outcomes reads what it can
        except requests.RequestException as exc:  # too many redirects, a broken stream…
            return unreadable + self._unsent(sendable, f"request failed: {type(exc).__name__}: {exc}"), True
        outcomes = stow_outcomes(sendable, response, auth)
        for o in outcomes:
            if o.result != "sent":
                logger.warning("destination %s: %s %s", self.name, o.sop_instance_uid, o.comment,
                               extra={"destination": self.name, "sop_instance_uid": o.sop_instance_uid})
        return unreadable + outcomes, response.status_code in (401, 403)


@dataclass(frozen=True)
class OrthancDestination(_HttpPeer):
    """Orthanc's REST API: ``POST /instances`` for each object, then optional forwarding.

    YAML: ``{type: orthanc, name: orthanc, url: http://127.0.0.1:8042, username: neuro,
    password_env: ORTHANC_PASSWORD, modalities: [PACS], dicomweb_servers: [cloud]}``. After the
    batch is stored, each of ``modalities`` (Orthanc's DicomModalities) gets
    ``POST /modalities/{name}/store`` and each of ``dicomweb_servers`` (the DICOMweb plugin's
    servers) ``POST /dicom-web/servers/{name}/stow``, both ``{"Resources": [ids], "Synchronous":
    true}``; a forward that fails leaves the batch to retry (storing again answers AlreadyStored).

    ``rest``: how to call Orthanc (see :data:`RestCall`); None is HTTP to ``url`` with the auth.
    The Orthanc plugin passes an in-process call, and ``url`` is then only a label
    (e.g. ``orthanc://local``).
    """

    type: ClassVar[str] = "orthanc"
    modalities: tuple[str, ...] = ()
    dicomweb_servers: tuple[str, ...] = ()
    rest: RestCall | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.rest is not None and not callable(self.rest):
            raise ValueError(f"rest must be a callable (method, path, body) -> (status, body), got {self.rest!r}")
        super().__post_init__()
        for key in ("modalities", "dicomweb_servers"):
            value = getattr(self, key)
            if isinstance(value, str) or not isinstance(value, (list, tuple)) \
                    or not all(isinstance(v, str) and v.strip() == v and v for v in value):
                raise ValueError(f"{key} must be a list of names, got {value!r}")
            object.__setattr__(self, key, tuple(value))

    def _checked_url(self) -> str:
        if self.rest is not None:  # in-process: the URL only names the peer in messages
            if not isinstance(self.url, str) or not self.url.strip():
                raise ValueError(f"url must be a non-empty label with rest, got {self.url!r}")
            return self.url
        return check_url(self.url, "url")

    @classmethod
    def from_dict(cls, cfg: Mapping[str, Any], where: str = "destination") -> "OrthancDestination":
        return _from_dict(cls, cfg, where, skip=("rest",))

    def send(self, items: Sequence[OutboxItem]) -> list[Outcome]:
        if not items:
            return []
        started = time.monotonic()
        session = None
        try:
            auth = self.auth()
            if self.rest is None:
                session = self.session(auth)
        except (ValueError, OSError) as exc:
            return [Outcome(i.sop_instance_uid, "retry", None, f"cannot set up the HTTP session: {exc}") for i in items]
        call = self.rest if session is None else self._http_call(session)
        try:
            outcomes = self._send(call, items, auth)
        finally:
            if session is not None:
                session.close()
        _log_summary(self.name, outcomes, started)
        return outcomes

    def _http_call(self, session: requests.Session) -> RestCall:
        def call(method: str, path: str, body: bytes | str) -> tuple[int, bytes]:
            kind = "application/dicom" if isinstance(body, bytes) else "application/json"
            data = body if isinstance(body, bytes) else body.encode()
            rsp = session.request(method, self.url + path, data=data, headers={"Content-Type": kind},
                                  timeout=self.timeout)
            return rsp.status_code, rsp.content
        return call

    def _send(self, call: RestCall, items: Sequence[OutboxItem], auth: HttpAuth) -> list[Outcome]:
        outcomes: list[Outcome] = []
        stored: dict[str, str] = {}  # SOP Instance UID -> Orthanc instance id
        for n, item in enumerate(items):
            uid = item.sop_instance_uid
            try:
                data = Path(item.path).read_bytes()
            except OSError as exc:
                outcomes.append(Outcome(uid, "rejected", None, f"outbox file unreadable: {exc}"))
                continue
            try:
                status, body = call("POST", "/instances", data)
            except OSError as exc:  # requests' errors are OSErrors too
                why = f"Orthanc {self.url}: cannot reach it: {self._transport(exc)}"
                logger.warning("destination %s: %s; %d objects wait for a retry", self.name, why, len(items) - n,
                               extra={"destination": self.name})
                outcomes += [Outcome(i.sop_instance_uid, "retry", None, why) for i in items[n:]]
                return outcomes
            outcome, orthanc_id = self._stored(uid, status, body, auth)
            outcomes.append(outcome)
            if orthanc_id is not None:
                stored[uid] = orthanc_id
            if outcome.result == "retry":  # credentials, a wrong URL, a server error: the rest would fare the same
                outcomes += [Outcome(i.sop_instance_uid, "retry", None, f"not tried: {outcome.comment}")
                             for i in items[n + 1:]]
                break
        failures = self._forward(call, list(stored.values())) if stored else []
        if failures:
            why = "stored in Orthanc, but " + "; ".join(failures) + " (retried: storing again is idempotent)"
            logger.warning("destination %s: %s", self.name, why, extra={"destination": self.name})
            outcomes = [Outcome(o.sop_instance_uid, "retry", o.status_code, why) if o.sop_instance_uid in stored else o
                        for o in outcomes]
        return outcomes

    def _stored(self, uid: str, status: int, body: bytes, auth: HttpAuth) -> tuple[Outcome, str | None]:
        """The outcome of ``POST /instances``, and the Orthanc id when the instance is in Orthanc."""
        what = f"Orthanc {self.url} POST /instances"
        if status == 200:
            try:
                reply = json.loads(body)
            except ValueError:
                reply = None
            state = reply.get("Status") if isinstance(reply, Mapping) else None
            orthanc_id = reply.get("ID") if isinstance(reply, Mapping) else None
            if state in ("Success", "AlreadyStored") and isinstance(orthanc_id, str):
                return Outcome(uid, "sent", status, "" if state == "Success" else "already stored"), orthanc_id
            return Outcome(uid, "rejected", status, f"{what}: not stored (Status {state!r}): {excerpt(body)}"), None
        if _retryable(status):
            return Outcome(uid, "retry", status, _http_problem(what, status, body, auth)), None
        logger.warning("destination %s rejected %s: HTTP %s", self.name, uid, status,
                       extra={"destination": self.name, "sop_instance_uid": uid})
        return Outcome(uid, "rejected", status, _http_problem(what, status, body, auth)), None

    def _forward(self, call: RestCall, ids: list[str]) -> list[str]:
        """Send Orthanc instances ``ids`` on to each configured peer; what failed, said per peer."""
        body = json.dumps({"Resources": ids, "Synchronous": True})
        failures = []
        targets = [(f"modality {m}", f"/modalities/{quote(m, safe='')}/store") for m in self.modalities]
        targets += [(f"DICOMweb server {s}", f"/dicom-web/servers/{quote(s, safe='')}/stow")
                    for s in self.dicomweb_servers]
        for label, path in targets:
            try:
                status, reply = call("POST", path, body)
            except OSError as exc:
                failures.append(f"forward to {label} failed: {self._transport(exc)}")
                continue
            if status != 200:
                failures.append(f"forward to {label} failed: HTTP {http_status(status)}: {excerpt(reply)}")
                continue
            try:  # a modality store answers with its job summary
                failed = json.loads(reply).get("FailedInstancesCount", 0)
            except (ValueError, AttributeError):
                failed = 0  # a 200 without a summary: the synchronous forward went through
            if failed not in (0, "0"):
                failures.append(f"forward to {label}: {failed} of {len(ids)} instances failed")
        return failures

    @staticmethod
    def _transport(exc: OSError) -> str:
        return describe_failure(exc) if isinstance(exc, requests.RequestException) else str(exc)
