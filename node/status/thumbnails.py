"""Small PNG pictures of a job's Secondary Capture results, for the status page.

A thumbnail is asked for by job id and SOP Instance UID, both checked first (digits; a valid
DICOM UID, :func:`neuroread.node.spool.validate_uid`). No path is ever built from them: the file
is the one the outbox recorded for that job and instance (:meth:`Outbox.status`), and it must lie
inside the outbox folder. Only Secondary Capture objects (SOP classes ``1.2.840.10008.5.1.4.1.1.7``
and ``….7.1``–``….7.4``) are drawn; the first frame of a multi-frame one. Their UIDs are
deterministic and an outbox file is never rewritten, so a picture made once stays right: it is
kept in memory (the last :data:`CACHE_SIZE`).
"""
from __future__ import annotations

import io
import logging
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image

from neuroread.node.deliver import Outbox
from neuroread.node.malformed import PARSE_ERRORS
from neuroread.node.redact import describe_error
from neuroread.node.spool import InvalidUIDError, validate_uid

logger = logging.getLogger(__name__)

SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
SIZE = 160  # the longer side, in pixels
CACHE_SIZE = 512
MAX_JOB_ID_DIGITS = 18


class ThumbnailError(Exception):
    """No picture: ``status`` 400 (a malformed job id or UID), 404 (no such SC result of that
    job) or 500 (its file cannot be read or drawn); the message names which."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def is_secondary_capture(sop_class_uid: str) -> bool:
    """Secondary Capture Image Storage or one of its multi-frame kinds (``….7.1``–``….7.4``)."""
    return sop_class_uid == SECONDARY_CAPTURE or sop_class_uid.startswith(SECONDARY_CAPTURE + ".")


def render_png(path: Path, size: int = SIZE) -> bytes:
    """The first frame of the image at ``path`` as a PNG, its longer side at most ``size`` pixels
    (RGB as is; grey levels stretched from the minimum to the maximum, MONOCHROME1 inverted)."""
    ds = pydicom.dcmread(path)
    pixels = ds.pixel_array
    if int(ds.get("NumberOfFrames", 1) or 1) > 1:
        pixels = pixels[0]
    if pixels.ndim == 3:  # colour: pydicom gives RGB (YBR converted)
        picture = Image.fromarray(np.ascontiguousarray(pixels, dtype=np.uint8), "RGB")
    else:
        grey = pixels.astype(np.float64)
        low, high = float(grey.min()), float(grey.max())
        grey = (grey - low) / (high - low) * 255.0 if high > low else np.zeros_like(grey)
        if ds.get("PhotometricInterpretation") == "MONOCHROME1":
            grey = 255.0 - grey
        picture = Image.fromarray(grey.astype(np.uint8), "L")
    picture.thumbnail((size, size))
    out = io.BytesIO()
    picture.save(out, "PNG", optimize=True)
    return out.getvalue()


class Thumbnails:
    """PNG thumbnails of the SC results in ``outbox`` (see the module docstring)."""

    def __init__(self, outbox: Outbox, *, size: int = SIZE, cache_size: int = CACHE_SIZE) -> None:
        if not isinstance(outbox, Outbox):
            raise ValueError(f"Thumbnails.outbox must be an Outbox, got {type(outbox).__name__}")
        for name, value in (("size", size), ("cache_size", cache_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"Thumbnails.{name} must be an int >= 1, got {value!r}")
        self.outbox, self.size, self.cache_size = outbox, size, cache_size
        self.folder = Path(outbox.folder).resolve()
        self._cache: OrderedDict[tuple[int, str], bytes] = OrderedDict()
        self._lock = threading.Lock()

    def png(self, job_id: str, sop_instance_uid: str) -> bytes:
        """The thumbnail of ``job_id``'s SC result ``sop_instance_uid`` (both as they come in a
        URL); :class:`ThumbnailError` when there is none."""
        if not (job_id.isascii() and job_id.isdigit()) or len(job_id) > MAX_JOB_ID_DIGITS:
            raise ThumbnailError(400, "the job id must be a number")
        try:
            uid = validate_uid(sop_instance_uid, "SOP Instance UID")
        except InvalidUIDError as exc:
            raise ThumbnailError(400, str(exc)) from exc
        key = (int(job_id), uid)
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        item = next((i for i in self.outbox.status(str(key[0]))
                     if i.sop_instance_uid == uid and is_secondary_capture(i.sop_class_uid)), None)
        if item is None:
            raise ThumbnailError(404, f"job {key[0]} has no Secondary Capture result {uid}")
        path = Path(item.path).resolve()
        if not path.is_relative_to(self.folder):
            logger.error("thumbnail: job %d's SC %s is recorded at a path outside the outbox folder", key[0], uid)
            raise ThumbnailError(404, f"job {key[0]} has no Secondary Capture result {uid} in the outbox")
        try:
            png = render_png(path, self.size)
        except PARSE_ERRORS + (AttributeError, RuntimeError) as exc:  # pixel decoders raise RuntimeError too
            logger.warning("thumbnail of job %d's SC %s: %s", key[0], uid, describe_error(exc))
            raise ThumbnailError(500, f"job {key[0]}'s SC {uid} cannot be drawn: {describe_error(exc)}") from exc
        with self._lock:
            self._cache[key] = png
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return png
