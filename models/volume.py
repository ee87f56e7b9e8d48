"""A DICOM series read into the models' input, a :class:`~neuroread.models.SeriesVolume`.

:func:`load_series` reads the instances of one series exactly as they were received
(any transfer syntax pydicom and its pylibjpeg plugins decode), checks that they form one
regular volume, and returns it in SimpleITK's convention: slices sorted along the normal of
ImageOrientationPatient (ascending), ``spacing`` as (column, row, slice), modality values
(RescaleSlope/Intercept applied: HU for CT). Enhanced (multi-frame) CT/MR instances are read
through highdicom's ``Image.get_volume``. A series that is not one volume raises
:class:`SeriesError` naming the problem and the UIDs involved: several series, no pixel data,
mixed sizes, mixed orientations, duplicate or missing slices (the gap is named), gantry tilt
or shear beyond ``max_tilt_deg``, an undecodable transfer syntax, too few slices.

The reader is shared by the node (its infer stage) and training (datasets read phantoms the way
the node reads what it receives), so it lives with the model contract, where both may import it.
"""
from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_modality_lut, get_decoder

from .result import SeriesVolume

log = logging.getLogger(__name__)

# The package that decodes each family of compressed syntaxes (named in decode errors).
_PLUGIN_HINT = {
    "1.2.840.10008.1.2.4.5": "pylibjpeg-libjpeg (JPEG)",
    "1.2.840.10008.1.2.4.8": "pyjpegls or pylibjpeg-libjpeg (JPEG-LS)",
    "1.2.840.10008.1.2.4.9": "pylibjpeg-openjpeg (JPEG 2000)",
    "1.2.840.10008.1.2.4.20": "pylibjpeg-openjpeg (HTJ2K)",
    "1.2.840.10008.1.2.5": "pylibjpeg-rle (RLE)",
}
_ORIENTATION_TOL = 1e-4     # max difference of direction cosines between slices
_POSITION_TOL = 1e-3        # mm: slices closer than this along the normal are duplicates
_ATTRS = ("Modality", "StudyInstanceUID", "FrameOfReferenceUID", "SeriesDescription",
          "BodyPartExamined", "Manufacturer", "PatientPosition")


class SeriesError(ValueError):
    """A series that cannot become one volume; the message names the problem and the UIDs."""


@dataclass(frozen=True)
class _Plane:
    """One slice's header facts: where it came from and where it lies."""

    uid: str            # SOP Instance UID (multi-frame: "uid frame n" in messages)
    label: str
    iop: np.ndarray     # 6 direction cosines
    ipp: np.ndarray     # position of its first voxel, LPS mm
    pixel_spacing: tuple[float, float]  # (row spacing, column spacing)


def load_series(paths: Sequence[Path], *, min_slices: int = 1, max_tilt_deg: float = 0.5,
                spacing_tol: float = 0.1) -> SeriesVolume:
    """Read one series into a volume (see the module docstring for the convention).

    ``paths``: the series' files in any order. ``min_slices``: fewer slices is an error.
    ``max_tilt_deg``: largest angle accepted between the stacking direction and the slice
    normal (gantry tilt, shear); a tilted series within it gets the unsheared geometry of
    its slice normal, as ITK reads it. ``spacing_tol``: a step between neighbours differing
    from the median step by more than this fraction of it is a missing (or extra) slice.
    """
    if min_slices < 1:
        raise ValueError(f"load_series: min_slices must be >= 1, got {min_slices}")
    if not paths:
        raise SeriesError("empty series: no files given")
    datasets = [_read(Path(p)) for p in paths]
    series_uid = _one_series(datasets)
    for ds in datasets:
        if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
            raise SeriesError(f"series {series_uid}: instance {ds.get('SOPInstanceUID', '?')} "
                              f"({getattr(ds.get('SOPClassUID'), 'name', '?')}) has no pixel data")
    _same(datasets, series_uid, lambda ds: (int(ds.Rows), int(ds.Columns)), "sizes (rows, columns)")
    multi = [ds for ds in datasets if int(ds.get("NumberOfFrames", 1) or 1) > 1 or "PerFrameFunctionalGroupsSequence" in ds]
    if multi:
        if len(datasets) != 1:
            raise SeriesError(f"series {series_uid}: {len(multi)} multi-frame among {len(datasets)} instances "
                              f"({', '.join(ds.SOPInstanceUID for ds in multi)}); one multi-frame instance "
                              "per series is supported")
        volume = _multi_frame(datasets[0], series_uid, min_slices, max_tilt_deg, spacing_tol)
    else:
        volume = _single_frames(datasets, series_uid, min_slices, max_tilt_deg, spacing_tol)
    log.debug("loaded series %s: %d slices %s, spacing %s", series_uid, volume.array.shape[0],
             volume.array.shape[1:], tuple(round(s, 3) for s in volume.spacing))
    return volume


def _read(path: Path) -> pydicom.Dataset:
    try:
        # Large values (pixel data) are read when first used, one slice at a time.
        return pydicom.dcmread(path, defer_size="64 KB")
    except (InvalidDicomError, OSError, EOFError) as exc:
        raise SeriesError(f"{path.name}: not a readable DICOM file ({exc})") from exc


def _one_series(datasets: list[pydicom.Dataset]) -> str:
    counts = Counter(str(ds.get("SeriesInstanceUID", "")) for ds in datasets)
    if len(counts) > 1:
        listed = ", ".join(f"{uid or '(none)'} ({n} instances)" for uid, n in counts.most_common())
        raise SeriesError(f"several series given, expected one: {listed}")
    uid = next(iter(counts))
    if not uid:
        raise SeriesError("instances have no SeriesInstanceUID")
    return uid


def _same(datasets: list[pydicom.Dataset], series_uid: str, key, what: str) -> None:
    groups: dict[object, list[str]] = {}
    for ds in datasets:
        try:
            value = key(ds)
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            raise SeriesError(f"series {series_uid}: instance {ds.get('SOPInstanceUID', '?')} lacks {what} ({exc})") from exc
        groups.setdefault(value, []).append(str(ds.get("SOPInstanceUID", "?")))
    if len(groups) > 1:
        raise SeriesError(f"series {series_uid}: mixed {what}: " + "; ".join(
            f"{value} in {len(uids)} instance(s) ({_some(uids)})" for value, uids in groups.items()))


def _some(uids: Sequence[str], n: int = 3) -> str:
    return ", ".join(uids[:n]) + (f", … ({len(uids) - n} more)" if len(uids) > n else "")


def _floats(value, n: int, what: str, where: str) -> np.ndarray:
    if value is None:
        raise SeriesError(f"{where}: no {what}")
    arr = np.asarray([float(v) for v in value], float)
    if arr.shape != (n,):
        raise SeriesError(f"{where}: {what} must have {n} values, got {list(value)}")
    return arr


def _plane(uid: str, label: str, iop, ipp, spacing) -> _Plane:
    where = f"instance {label}"
    return _Plane(uid, label, _floats(iop, 6, "ImageOrientationPatient", where),
                  _floats(ipp, 3, "ImagePositionPatient", where),
                  tuple(_floats(spacing, 2, "PixelSpacing", where)))


def _geometry(planes: list[_Plane], series_uid: str, min_slices: int, max_tilt_deg: float,
              spacing_tol: float) -> tuple[list[int], np.ndarray, float]:
    """Check the planes form one regular stack; returns (order, direction 3x3, slice spacing)."""
    ref = planes[0].iop
    odd = [p for p in planes if np.max(np.abs(p.iop - ref)) > _ORIENTATION_TOL]
    if odd:
        same = [p.label for p in planes if np.max(np.abs(p.iop - ref)) <= _ORIENTATION_TOL]
        raise SeriesError(
            f"series {series_uid}: mixed orientations: ImageOrientationPatient {np.round(ref, 4).tolist()} in "
            f"{len(same)} slice(s) ({_some(same)}) but {np.round(odd[0].iop, 4).tolist()} in {odd[0].label}"
            + (f" and {len(odd) - 1} more" if len(odd) > 1 else ""))
    row, col = ref[:3] / np.linalg.norm(ref[:3]), ref[3:] / np.linalg.norm(ref[3:])
    if abs(row @ col) > 1e-3:
        raise SeriesError(f"series {series_uid}: ImageOrientationPatient {ref.tolist()} is not orthogonal")
    normal = np.cross(row, col)
    direction = np.column_stack([row, col, normal])
    if len(set(p.pixel_spacing for p in planes)) > 1:
        raise SeriesError(f"series {series_uid}: mixed PixelSpacing " + ", ".join(
            f"{p.pixel_spacing} in {p.label}" for p in planes[:1] + [q for q in planes if q.pixel_spacing != planes[0].pixel_spacing][:1]))
    if len(planes) < min_slices:
        raise SeriesError(f"series {series_uid}: {len(planes)} slice(s) ({_some([p.label for p in planes])}); "
                          f"at least {min_slices} needed")
    depth = np.array([p.ipp @ normal for p in planes])
    order = [int(i) for i in np.argsort(depth, kind="stable")]
    if len(planes) == 1:
        return order, direction, 0.0
    steps = np.diff(depth[order])
    for k in np.flatnonzero(steps < _POSITION_TOL):
        a, b = planes[order[k]], planes[order[k + 1]]
        raise SeriesError(f"series {series_uid}: two slices at the same position {depth[order[k]]:.3f} mm "
                          f"along the normal: {a.label} and {b.label}")
    for k in range(len(order) - 1):
        a, b = planes[order[k]], planes[order[k + 1]]
        shift = b.ipp - a.ipp
        lateral = np.linalg.norm(shift - (shift @ normal) * normal)
        tilt = math.degrees(math.atan2(lateral, shift @ normal))
        if tilt > max_tilt_deg:
            raise SeriesError(f"series {series_uid}: gantry tilt or sheared slices: the stack between {a.label} "
                              f"and {b.label} leans {tilt:.2f} degrees from the slice normal "
                              f"(at most {max_tilt_deg:g} accepted)")
    step = float(np.median(steps))
    for k in np.flatnonzero(np.abs(steps - step) > spacing_tol * step):
        a, b = planes[order[k]], planes[order[k + 1]]
        what = "missing slice(s)" if steps[k] > step else "irregular spacing"
        missing = f", about {round(steps[k] / step) - 1} slice(s) missing" if steps[k] > step else ""
        raise SeriesError(f"series {series_uid}: {what}: gap of {steps[k]:.2f} mm between {a.label} "
                          f"(at {depth[order[k]]:.2f} mm) and {b.label} (at {depth[order[k + 1]]:.2f} mm) "
                          f"where the spacing is {step:.2f} mm{missing}")
    return order, direction, step


def _decode(ds: pydicom.Dataset, series_uid: str) -> np.ndarray:
    """Stored pixel values of one instance, or a SeriesError naming its syntax and saying
    whether a decoder is missing (with the plugin to install) or the data are corrupt."""
    ts = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    try:
        return ds.pixel_array
    except RuntimeError as exc:  # pydicom's decoders: NotImplementedError and plugin failures
        what = (f"series {series_uid}: cannot decode instance {ds.get('SOPInstanceUID', '?')}: "
                f"transfer syntax {getattr(ts, 'name', '?')} ({ts})")
        try:
            available = ts is not None and get_decoder(ts).is_available
        except NotImplementedError:  # a transfer syntax pydicom has no decoder for at all
            available = False
        if available:
            raise SeriesError(f"{what}: the pixel data are not valid for it (corrupt or truncated)") from exc
        hint = next((v for k, v in _PLUGIN_HINT.items() if str(ts).startswith(k)), None)
        raise SeriesError(f"{what}: " + (f"no working decoder, install {hint}" if hint else "no decoder is installed for it")
                          + f" (pydicom: {str(exc).strip()[:200]})") from exc


def _compact(values: np.ndarray) -> np.ndarray:
    """Integral modality values as int16/uint16/int32 (as ITK reads them), others as float32."""
    if np.all(np.isfinite(values)) and np.array_equal(values, np.round(values)):
        lo, hi = float(values.min(initial=0)), float(values.max(initial=0))
        for dtype in (np.int16, np.uint16, np.int32):
            info = np.iinfo(dtype)
            if info.min <= lo and hi <= info.max:
                return values.astype(dtype)
    return values.astype(np.float32)


def _single_frames(datasets, series_uid, min_slices, max_tilt_deg, spacing_tol) -> SeriesVolume:
    planes = [_plane(str(ds.SOPInstanceUID), str(ds.SOPInstanceUID), ds.get("ImageOrientationPatient"),
                     ds.get("ImagePositionPatient"), ds.get("PixelSpacing")) for ds in datasets]
    order, direction, step = _geometry(planes, series_uid, min_slices, max_tilt_deg, spacing_tol)
    first = datasets[order[0]]
    if step == 0.0:
        step = float(first.get("SpacingBetweenSlices") or first.get("SliceThickness") or 1.0)
    values = np.empty((len(order), int(first.Rows), int(first.Columns)), np.float32)
    for k, i in enumerate(order):
        ds = datasets[i]
        if int(ds.get("SamplesPerPixel", 1)) != 1:
            raise SeriesError(f"series {series_uid}: instance {ds.SOPInstanceUID} is not monochrome "
                              f"({ds.get('PhotometricInterpretation')})")
        values[k] = apply_modality_lut(_decode(ds, series_uid), ds)
        del ds.PixelData  # free the encoded bytes once decoded
    row_sp, col_sp = planes[0].pixel_spacing
    return SeriesVolume(
        series_instance_uid=series_uid, array=_compact(values), spacing=(col_sp, row_sp, step),
        origin=tuple(float(v) for v in planes[order[0]].ipp), direction=direction,
        sop_instance_uids=tuple(planes[i].uid for i in order), modality=str(first.get("Modality", "")),
        attributes=_attributes(first))


def _frame_geometry(ds: pydicom.Dataset, n: int) -> list[_Plane]:
    shared = ds.get("SharedFunctionalGroupsSequence", [pydicom.Dataset()])[0]
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if per_frame is None or len(per_frame) != n:
        raise SeriesError(f"instance {ds.SOPInstanceUID}: {n} frames but "
                          f"{0 if per_frame is None else len(per_frame)} per-frame functional groups")

    def group(item, keyword, attr):
        for source in (item, shared):
            if keyword in source and len(source[keyword].value) and attr in source[keyword].value[0]:
                return source[keyword].value[0].get(attr)
        return None

    return [_plane(str(ds.SOPInstanceUID), f"{ds.SOPInstanceUID} frame {f + 1}",
                   group(item, "PlaneOrientationSequence", "ImageOrientationPatient"),
                   group(item, "PlanePositionSequence", "ImagePositionPatient"),
                   group(item, "PixelMeasuresSequence", "PixelSpacing")) for f, item in enumerate(per_frame)]


def _multi_frame(ds, series_uid, min_slices, max_tilt_deg, spacing_tol) -> SeriesVolume:
    n = int(ds.get("NumberOfFrames", 1) or 1)
    planes = _frame_geometry(ds, n)
    order, direction, _ = _geometry(planes, series_uid, min_slices, max_tilt_deg, spacing_tol)
    try:
        vol = hd.Image.from_dataset(ds, copy=False).get_volume(rtol=spacing_tol, perpendicular_tol=1.0)
    except (ValueError, RuntimeError) as exc:
        if isinstance(exc, RuntimeError):
            _decode(ds, series_uid)  # raises the clear error when decoding is what failed
        raise SeriesError(f"series {series_uid}: multi-frame instance {ds.SOPInstanceUID} is not one volume "
                          f"(highdicom: {exc})") from exc
    # highdicom's axes are (slice, row, column) with its own stacking sense; ITK's are
    # (column, row, slice) with slices ascending along the normal.
    array, slice_vec = vol.array, vol.direction[:, 0]
    origin = np.asarray(vol.position, float)
    if slice_vec @ direction[:, 2] < 0:
        origin = origin + (array.shape[0] - 1) * vol.spacing[0] * slice_vec
        array = array[::-1]
    return SeriesVolume(
        series_instance_uid=series_uid, array=_compact(np.ascontiguousarray(array)),
        spacing=(float(vol.spacing[2]), float(vol.spacing[1]), float(vol.spacing[0])),
        origin=tuple(float(v) for v in origin), direction=direction,
        sop_instance_uids=(str(ds.SOPInstanceUID),) * n, modality=str(ds.get("Modality", "")),
        attributes={**_attributes(ds), "frame_numbers": tuple(i + 1 for i in order)})


def _attributes(ds: pydicom.Dataset) -> dict[str, object]:
    return {k: str(ds.get(k)) for k in _ATTRS if ds.get(k) is not None}


