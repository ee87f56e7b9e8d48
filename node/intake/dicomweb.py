"""DICOMweb pull mode (QIDO-RS + WADO-RS): a study fetched from a DICOMweb server into a folder.

Sessions and authentication are :mod:`neuroread.node.http`'s.

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

import logging
import os
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from io import BytesIO
from pathlib import Path

import pydicom
import requests
from dicomweb_client import DICOMwebClient
from pydicom.errors import InvalidDicomError
from tqdm import tqdm

from neuroread.node.http import HttpAuth, check_url, describe_failure, excerpt, http_session, http_status
from neuroread.node.spool import atomic_write, make_dirs, validate_uid

logger = logging.getLogger(__name__)

SERIES_INSTANCE_UID = "0020000E"
NUMBER_OF_SERIES_RELATED_INSTANCES = "00201209"


# -- URLs, auth and sessions -----------------------------------------------------------------------
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
