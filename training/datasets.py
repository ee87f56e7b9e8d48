"""Training data: study records from four layouts.

A :class:`StudyRecord` is one series (with, for a model of several input slots, the study's
other series by slot: :attr:`StudyRecord.other_series`) with its study labels (0/1 per name of a configured
label list: a multi-label model's labels, or a multi-class model's classes one-hot) and, where
the source has them, per-slice labels keyed by SOP Instance UID and a lesion mask (a label map
in the series' physical space, one id per lesion, with each id's type where the source says).
Pixels are read only when asked (:meth:`StudyRecord.load`), by :func:`neuroread.models.volume.load_series` (the node's
own reader: same slice order, same HU), and per-slice labels are put in the volume's order
through the SOP Instance UIDs, so no reader has to guess the order the volume will have.

Readers (each returns a list of records, sorted by ``study_id``):

- :func:`read_phantoms`: a folder of studies written by :mod:`neuroread.training.phantoms` (one
  ``<case>/truth.json`` each); study and per-slice labels from the truth.
- :func:`read_manifest`: the generic manifest CSV, format in its docstring (lesion masks from
  other tools: their ids are typed :data:`UNTYPED_LESION`).
- :func:`read_rsna`: the RSNA Intracranial Hemorrhage Detection layout: ``stage_2_train.csv``
  (``ID,Label`` rows such as ``ID_12cadc6af_epidural,0``, one per image and subtype; the image
  id is the file's SOP Instance UID) and the folder of single-slice DICOM files. Images are
  grouped into series by SeriesInstanceUID from their headers and ordered along the slice
  normal by ImagePositionPatient; a series is positive for a label when any of its images is;
  per-image labels are kept as per-slice labels.
- :func:`read_cq500`: the CQ500 layout: ``reads.csv`` (``name,Category,R1:ICH,...,R3:MidlineShift``)
  and one folder per study (``CQ500CT0 CQ500CT0/Unknown Study/<series>/CT000000.dcm``). One record
  per CT series, each with its study's labels: the majority of the readers (at least 2 of 3),
  the gold standard of the CQ500 paper (Chilamkurthy et al., Lancet 2018). No per-slice labels.

Label keys: :data:`RSNA_LABELS` (six) and :data:`CQ500_LABELS` (nine, the phantoms' too);
:data:`RSNA_COLUMNS` and :data:`CQ500_COLUMNS` map the datasets' names to them (CQ500's
``CalvarialFracture``, not its broader ``Fracture``, is the paper's "calvarial fracture").

How a model turns records into network inputs is its training recipe's business
(:mod:`neuroread.training.recipes`).
"""
from __future__ import annotations

import csv
import json
import logging
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError
from tqdm import tqdm

from neuroread.models import ModelSpec, SeriesVolume
from neuroread.models.volume import load_series

if TYPE_CHECKING:
    import SimpleITK as sitk

log = logging.getLogger(__name__)

RSNA_LABELS: tuple[str, ...] = ("any", "iph", "ivh", "sdh", "edh", "sah")
CQ500_LABELS: tuple[str, ...] = RSNA_LABELS + ("fracture", "mass_effect", "midline_shift")
RSNA_COLUMNS: Mapping[str, str] = MappingProxyType({
    "any": "any", "intraparenchymal": "iph", "intraventricular": "ivh",
    "subdural": "sdh", "epidural": "edh", "subarachnoid": "sah",
})
CQ500_COLUMNS: Mapping[str, str] = MappingProxyType({
    "ICH": "any", "IPH": "iph", "IVH": "ivh", "SDH": "sdh", "EDH": "edh", "SAH": "sah",
    "CalvarialFracture": "fracture", "MassEffect": "mass_effect", "MidlineShift": "midline_shift",
})
UNTYPED_LESION = "lesion"
"""The type of a lesion id whose source does not say it (a manifest's mask): not a label name,
so the head-CT recipe counts such a lesion for ``any`` and for no subtype."""
_INTEGER_PIXELS = ("sitkUInt8", "sitkInt8", "sitkUInt16", "sitkInt16", "sitkUInt32", "sitkInt32",
                   "sitkUInt64", "sitkInt64")  # SimpleITK's names; it is imported only where masks are read
_HEADER_TAGS = ["SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID", "PatientID", "Modality",
                "SeriesDescription", "NumberOfFrames", "ImagePositionPatient", "ImageOrientationPatient"]


@dataclass(frozen=True)
class StudyRecord:
    """One series to learn from.

    ``files``: the series' DICOM files (read by :func:`neuroread.models.volume.load_series`); ``n_slices``:
    the slices they hold; ``label_names``/``labels``: study labels, float32 0/1, one per name;
    ``slice_uids``/``slice_labels``: optional per-slice labels ``[len(slice_uids), n_labels]``,
    row k for the slice whose SOP Instance UID is ``slice_uids[k]``; ``group``: what must not be
    split across folds (the patient where known); ``description``: SeriesDescription, if any;
    ``mask``: an optional label map (NIfTI or any SimpleITK image with its geometry) in the
    series' physical space, on its grid or any other (:meth:`load_mask` resamples), 0 outside
    lesions and one id per lesion, with ``mask_types`` giving each id's type (a label name, e.g.
    ``(1, "sdh")``, or :data:`UNTYPED_LESION` where the source does not say);
    ``mask_components``: the file marks every lesion 1 and its lesions are its connected
    components (26-connected, on the file's grid), numbered 1, 2, ... in the file's voxel order
    by :meth:`load_mask`, so touching lesions are one; ``other_series``: for a model of several
    input slots (e.g. axspa-sij's T1 and STIR), ``(slot, files)`` of the study's other series,
    in the spec's slot order after the first (whose series is ``files``; per-slice labels and the
    mask belong to it), read by :meth:`load_others`.
    """

    study_id: str
    files: tuple[Path, ...]
    n_slices: int
    label_names: tuple[str, ...]
    labels: np.ndarray
    slice_uids: tuple[str, ...] | None = None
    slice_labels: np.ndarray | None = None
    group: str = ""
    description: str = ""
    mask: Path | None = None
    mask_types: tuple[tuple[int, str], ...] = ()
    mask_components: bool = False
    other_series: tuple[tuple[str, tuple[Path, ...]], ...] = ()

    def __post_init__(self) -> None:
        where = f"StudyRecord {self.study_id!r}"
        if not self.files or self.n_slices < 1:
            raise ValueError(f"{where}: no files or slices ({len(self.files)} files, n_slices={self.n_slices})")
        if len(set(self.label_names)) != len(self.label_names) or not self.label_names:
            raise ValueError(f"{where}: label_names must be distinct and non-empty, got {self.label_names}")
        if self.labels.shape != (len(self.label_names),) or not np.isin(self.labels, (0, 1)).all():
            raise ValueError(f"{where}: labels must be 0/1 of shape ({len(self.label_names)},), got {self.labels}")
        if (self.slice_uids is None) != (self.slice_labels is None):
            raise ValueError(f"{where}: slice_uids and slice_labels go together")
        if self.slice_labels is not None:
            if self.slice_labels.shape != (len(self.slice_uids), len(self.label_names)):
                raise ValueError(f"{where}: slice_labels shape {self.slice_labels.shape} != "
                                 f"({len(self.slice_uids)}, {len(self.label_names)})")
            if not np.isin(self.slice_labels, (0, 1)).all():
                raise ValueError(f"{where}: slice_labels must be 0/1")
        if not self.group:
            object.__setattr__(self, "group", self.study_id)
        slots = [slot for slot, _ in self.other_series]
        if len(set(slots)) != len(slots) or any(not files for _, files in self.other_series):
            raise ValueError(f"{where}: other_series must name each slot once, each with files, got "
                             f"{[(slot, len(files)) for slot, files in self.other_series]}")

    def load(self, spacing_tol: float = 0.1) -> tuple[SeriesVolume, np.ndarray | None]:
        """The volume (``load_series``) and the per-slice labels in its slice order (or None)."""
        volume = load_series(self.files, spacing_tol=spacing_tol)
        if volume.array.shape[0] != self.n_slices:
            raise ValueError(f"study {self.study_id}: series {volume.series_instance_uid} has "
                             f"{volume.array.shape[0]} slices, the record says {self.n_slices}")
        if self.slice_labels is None:
            return volume, None
        row = {uid: k for k, uid in enumerate(self.slice_uids)}
        missing = [uid for uid in volume.sop_instance_uids if uid not in row]
        if missing or len(set(volume.sop_instance_uids)) != len(volume.sop_instance_uids):
            raise ValueError(f"study {self.study_id}: per-slice labels need one row per single-frame slice; "
                             f"{len(missing)} slice(s) without one (e.g. {missing[:2]})")
        return volume, self.slice_labels[[row[uid] for uid in volume.sop_instance_uids]]

    def load_others(self, spacing_tol: float = 0.1) -> dict[str, SeriesVolume]:
        """The study's other series by slot (empty for a one-series record)."""
        return {slot: load_series(files, spacing_tol=spacing_tol) for slot, files in self.other_series}

    def load_mask(self, volume: SeriesVolume) -> np.ndarray | None:
        """The lesion label map on ``volume``'s grid (same shape as its array; nearest-neighbour
        resampling through the physical space, so the file's grid and slice order do not matter;
        0 where the file does not reach), or ``None`` without a mask. With ``mask_components``
        the ids are the file's connected components (uint32)."""
        if self.mask is None:
            return None
        import SimpleITK as sitk

        from neuroread.models.transforms import resample_onto

        image = sitk.ReadImage(str(self.mask))
        if self.mask_components:
            image, _ = _components(image)
        return resample_onto(image, volume, interpolator="nearest")


def _components(image: sitk.Image) -> tuple[sitk.Image, int]:
    """(the connected components of ``image``'s non-zero voxels, 26-connected, numbered 1..n
    in voxel order; n)."""
    import SimpleITK as sitk

    f = sitk.ConnectedComponentImageFilter()
    f.SetFullyConnected(True)
    out = f.Execute(sitk.NotEqual(image, 0))
    return out, f.GetObjectCount()


def _check_labels(labels: Sequence[str], known: Iterable[str], source: str) -> tuple[str, ...]:
    known = tuple(known)
    unknown = [name for name in labels if name not in known]
    if unknown or not labels:
        raise ValueError(f"{source}: unknown label(s) {unknown or '(none given)'}; known: {', '.join(known)}")
    return tuple(labels)


def _binary(value: str, where: str) -> int:
    text = str(value).strip()
    if text not in ("0", "1", "0.0", "1.0"):
        raise ValueError(f"{where}: expected 0 or 1, got {value!r}")
    return int(float(text))


def _read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        rows = list(reader)
        return list(reader.fieldnames or []), rows


# --- phantoms ---------------------------------------------------------------------------------

def read_phantoms(folder: Path, labels: Sequence[str] = CQ500_LABELS, series: str | Mapping[str, str] = "ct",
                  mask: str | None = None) -> list[StudyRecord]:
    """Studies written by :func:`neuroread.training.phantoms.writer.write_study` under ``folder``
    (``<case>/truth.json``); ``series`` is the truth's series key, or for a model of several
    input slots a mapping slot → series key in the spec's slot order (e.g. ``{"t1": "t1", "fs":
    "fs"}``: the first is the record's own series, the others its :attr:`StudyRecord.other_series`);
    ``mask`` the truth's lesion mask on the first series (e.g. ``hemorrhage``; ``None``: the
    first mask on that series whose name is not ``mimics``), with each lesion id's type from the
    truth's lesion list."""
    studies = sorted(Path(folder).glob("*/truth.json"))
    if not studies:
        raise FileNotFoundError(f"no phantom studies (*/truth.json) under {folder}")
    slots = dict(series) if isinstance(series, Mapping) else {"": series}
    if not slots:
        raise ValueError("read_phantoms: series names no series")
    series = next(iter(slots.values()))
    records = []
    for truth_path in studies:
        truth = json.loads(truth_path.read_text())
        source = f"phantom {truth_path.parent.name}"
        names = _check_labels(labels, truth["labels"], source)
        absent = [key for key in slots.values() if key not in truth["series"]]
        if absent:
            raise ValueError(f"{source}: no series {', '.join(map(repr, absent))}; it has {', '.join(truth['series'])}")
        info = truth["series"][series]
        uids = tuple(info["sop_instance_uids"])
        per_slice = truth.get("per_slice_labels")
        slice_labels = None
        if per_slice is not None:
            _check_labels(names, per_slice, f"{source} per_slice_labels")
            slice_labels = np.array([per_slice[name] for name in names], np.float32).T
        masks = {k: v for k, v in truth.get("masks", {}).items() if v.get("series") == series}
        mask_name = mask if mask is not None else next((k for k in sorted(masks) if k != "mimics"), None)
        if mask is not None and mask not in masks:
            raise ValueError(f"{source}: no mask {mask!r} on series {series!r}; it has {', '.join(masks) or 'none'}")
        types = tuple((int(les["id"]), str(les["type"])) for les in truth.get("lesions", [])
                      if "id" in les and "type" in les)
        records.append(StudyRecord(
            study_id=truth["case_id"], files=_phantom_files(truth_path.parent, info),
            n_slices=len(uids), label_names=names,
            labels=np.array([truth["labels"][name] for name in names], np.float32),
            slice_uids=uids if slice_labels is not None else None, slice_labels=slice_labels,
            description=info.get("description", ""),
            mask=truth_path.parent / masks[mask_name]["file"] if mask_name else None,
            mask_types=types if mask_name else (),
            other_series=tuple((slot, _phantom_files(truth_path.parent, truth["series"][key]))
                               for slot, key in list(slots.items())[1:])))
    return records


def _phantom_files(study: Path, info: Mapping) -> tuple[Path, ...]:
    return tuple(sorted((study / info["folder"]).glob("*.dcm")))


# --- DICOM headers ----------------------------------------------------------------------------

@dataclass(frozen=True)
class _Header:
    path: Path
    sop_uid: str
    series_uid: str
    patient: str
    modality: str
    description: str
    frames: int
    depth: float  # position along the slice normal (ImagePositionPatient · normal), 0 if unknown


def _header(path: Path) -> _Header | None:
    """The header facts of one file, or None when it is not DICOM (truth.json, masks, notes)."""
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=_HEADER_TAGS)
    except InvalidDicomError:
        return None
    if "SeriesInstanceUID" not in ds or "SOPInstanceUID" not in ds:
        log.warning("skipping %s: no SeriesInstanceUID or SOPInstanceUID", path)
        return None
    depth = 0.0
    iop, ipp = ds.get("ImageOrientationPatient"), ds.get("ImagePositionPatient")
    if iop is not None and ipp is not None and len(iop) == 6 and len(ipp) == 3:
        normal = np.cross(np.asarray(iop[:3], float), np.asarray(iop[3:], float))
        depth = float(np.asarray(ipp, float) @ normal)
    return _Header(path, str(ds.SOPInstanceUID), str(ds.SeriesInstanceUID),
                   str(ds.get("PatientID") or ds.get("StudyInstanceUID") or ""), str(ds.get("Modality", "")),
                   str(ds.get("SeriesDescription", "")), int(ds.get("NumberOfFrames") or 1), depth)


def _scan(folder: Path, progress: bool = False) -> dict[str, list[_Header]]:
    """DICOM files under ``folder`` (recursively) by SeriesInstanceUID, each series ordered
    along its slice normal (then by file name)."""
    paths = sorted(p for p in Path(folder).rglob("*") if p.is_file())
    series: dict[str, list[_Header]] = defaultdict(list)
    for path in tqdm(paths, desc=f"headers {Path(folder).name}", unit="file", disable=not progress):
        header = _header(path)
        if header is not None:
            series[header.series_uid].append(header)
    return {uid: sorted(headers, key=lambda h: (h.depth, h.path.name)) for uid, headers in series.items()}


# --- generic manifest -------------------------------------------------------------------------

def read_manifest(path: Path, labels: Sequence[str], spec: ModelSpec | None = None) -> list[StudyRecord]:
    """Studies listed in a manifest CSV (header row, one row per study):

    - ``study`` (required): folder of the study's DICOM files, searched recursively (files that
      are not DICOM are ignored); relative paths are relative to the manifest's folder.
    - one column per name in ``labels`` (required): 0 or 1, the study label.
    - ``series_instance_uid`` (optional): which series to use when the folder holds several;
      empty or absent, the folder must hold exactly one.
    - for a model of several input slots (``spec`` with more than one slot, e.g. axspa-sij's
      ``t1`` and ``fs``): ``series_<slot>``, one column per slot, names the slot's
      SeriesInstanceUID in the study folder; one slot may be left empty when the folder's only
      other series is its series. ``neuroread route explain FOLDER`` says which series the node
      would route to each slot. The first slot's series carries the per-slice labels and the
      mask.
    - ``slice_labels`` (optional): a CSV of per-slice labels (relative to the manifest's folder):
      column ``sop_instance_uid`` plus one 0/1 column per name in ``labels``, one row for every
      slice of the series, in any order.
    - ``group`` (optional): what must not be split across folds (e.g. the patient); default: ``study``.
    - ``mask`` (optional): the study's lesion label map, a file SimpleITK reads (NIfTI ``.nii``/
      ``.nii.gz``, NRRD, MHA; relative to the manifest's folder), 3-D, one integer per voxel: 0
      background, each lesion its own id (1, 2, ...). It must be in the series' patient
      coordinates (NIfTI's RAS is turned into DICOM's LPS on reading, so a file from dcm2niix,
      ITK-SNAP or 3D Slicer is in place) but may be on any grid: :meth:`StudyRecord.load_mask`
      resamples it onto the series' (nearest neighbour); parts outside the file's extent are 0.
      A file whose only id is 1 is read as binary (no instance ids): its lesions are its
      connected components (26-connected), so a detector sees touching lesions as one (and one
      lesion in unconnected pieces as several). The file does not say lesion types: each id is
      typed :data:`UNTYPED_LESION` in ``mask_types`` (for the head-CT recipe, ``any`` blood of no
      subtype). An all-zero file is a study without lesions; empty cell or no column: no mask.
      Checked on reading (ValueError naming the manifest line and the file): the file exists,
      SimpleITK reads it, its pixel type is a scalar integer, it is 3-D, no id is negative.

    Extra columns are ignored.
    """
    path = Path(path)
    fields, rows = _read_csv(path)
    missing = [c for c in ("study", *labels) if c not in fields]
    if missing:
        raise ValueError(f"manifest {path}: missing column(s) {missing}; it has {fields}")
    names = tuple(labels)
    if not names:
        raise ValueError(f"manifest {path}: no labels given")
    several = spec is not None and len(spec.slots) > 1
    records = []
    for line, row in enumerate(rows, start=2):
        where = f"manifest {path.name} line {line}"
        folder = path.parent / row["study"]
        if not folder.is_dir():
            raise FileNotFoundError(f"{where}: study folder {folder} does not exist")
        scanned = _scan(folder)
        wanted = (row.get("series_instance_uid") or "").strip()
        others: tuple[tuple[str, tuple[Path, ...]], ...] = ()
        if several:
            chosen = _fill_slots(spec, scanned, row, where)
            headers = scanned[chosen[spec.slots[0].name]]
            others = tuple((slot.name, tuple(h.path for h in scanned[chosen[slot.name]])) for slot in spec.slots[1:])
        elif wanted:
            if wanted not in scanned:
                raise ValueError(f"{where}: series {wanted} not in {folder}; found {sorted(scanned)}")
            headers = scanned[wanted]
        elif len(scanned) == 1:
            headers = next(iter(scanned.values()))
        else:
            raise ValueError(f"{where}: {folder} holds {len(scanned)} series ({sorted(scanned)}); "
                             "name one in column series_instance_uid")
        uids, slice_labels = None, None
        if (row.get("slice_labels") or "").strip():
            uids, slice_labels = _slice_label_file(path.parent / row["slice_labels"], names,
                                                   {h.sop_uid for h in headers}, where)
        mask, mask_ids, components = None, (), False
        if (row.get("mask") or "").strip():
            mask = path.parent / row["mask"].strip()
            mask_ids, components = _mask_file(mask, where)
        records.append(StudyRecord(
            study_id=row["study"], files=tuple(h.path for h in headers), n_slices=sum(h.frames for h in headers),
            label_names=names, labels=np.array([_binary(row[n], f"{where} column {n}") for n in names], np.float32),
            slice_uids=uids, slice_labels=slice_labels, group=(row.get("group") or "").strip(),
            description=headers[0].description, mask=mask,
            mask_types=tuple((i, UNTYPED_LESION) for i in mask_ids), mask_components=components,
            other_series=others))
    log.info("manifest %s: %d studies, %d with a lesion mask", path.name, len(records),
             sum(r.mask is not None for r in records))
    return sorted(records, key=lambda r: r.study_id)


def _fill_slots(spec: ModelSpec, scanned: Mapping[str, list[_Header]], row: Mapping[str, str],
                where: str) -> dict[str, str]:
    """Slot → SeriesInstanceUID for one manifest row of a model of several slots: the row's
    ``series_<slot>`` cells, and a slot left empty gets the folder's one series no other slot
    named (read_manifest)."""
    chosen: dict[str, str] = {}
    for slot in spec.slots:
        uid = (row.get(f"series_{slot.name}") or "").strip()
        if uid and uid not in scanned:
            raise ValueError(f"{where}: column series_{slot.name} names series {uid}, not in the study folder; "
                             f"found {sorted(scanned)}")
        if uid:
            chosen[slot.name] = uid
    empty = [slot.name for slot in spec.slots if slot.name not in chosen]
    rest = sorted(set(scanned) - set(chosen.values()))
    if len(empty) == 1 and len(rest) == 1:
        chosen[empty[0]] = rest[0]
    elif empty:
        columns = ", ".join(f"series_{slot.name}" for slot in spec.slots)
        raise ValueError(f"{where}: {spec.name} reads one series per slot ({', '.join(s.name for s in spec.slots)}) "
                         f"and the study folder holds {len(scanned)} ({', '.join(sorted(scanned))}); name each "
                         f"slot's SeriesInstanceUID in columns {columns} (`neuroread route explain FOLDER` says "
                         "which series the node would route to each slot)")
    return chosen


def _mask_file(path: Path, where: str) -> tuple[tuple[int, ...], bool]:
    """The lesion ids of a manifest's mask file and whether it is binary (lesions: its connected
    components); ValueError naming ``where`` and the file unless it is a 3-D integer label map."""
    import SimpleITK as sitk

    if not path.is_file():
        raise ValueError(f"{where}: mask file {path} does not exist")
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        reason = str(exc).rpartition("ERROR: ")[2].strip() or str(exc)
        raise ValueError(f"{where}: mask file {path} is not an image SimpleITK can read ({reason})") from exc
    pixel = reader.GetPixelID()
    if pixel not in {getattr(sitk, name) for name in _INTEGER_PIXELS} or reader.GetNumberOfComponents() != 1:
        raise ValueError(f"{where}: mask file {path} has pixel type {sitk.GetPixelIDValueAsString(pixel)}; a "
                         "lesion mask needs one integer per voxel (0 background, one id per lesion; a float "
                         "file of whole numbers can be cast, e.g. sitk.Cast(image, sitk.sitkUInt16))")
    if reader.GetDimension() != 3:
        raise ValueError(f"{where}: mask file {path} is {reader.GetDimension()}-D (size {reader.GetSize()}); "
                         "a lesion mask must be 3-D")
    image = reader.Execute()
    values = sitk.GetArrayViewFromImage(image)
    ids = np.unique(values[values != 0])
    if ids.size and ids[0] < 0:
        raise ValueError(f"{where}: mask file {path} has negative ids {ids[ids < 0][:5].tolist()}; "
                         "0 is background and each lesion a positive id")
    if ids.tolist() == [1]:
        _, count = _components(image)
        return tuple(range(1, count + 1)), True
    return tuple(int(i) for i in ids), False


def _slice_label_file(path: Path, names: tuple[str, ...], series_uids: set[str],
                      where: str) -> tuple[tuple[str, ...], np.ndarray]:
    fields, rows = _read_csv(path)
    missing = [c for c in ("sop_instance_uid", *names) if c not in fields]
    if missing:
        raise ValueError(f"{where}: slice label file {path} lacks column(s) {missing}")
    uids = tuple(row["sop_instance_uid"].strip() for row in rows)
    if set(uids) != series_uids or len(uids) != len(series_uids):
        absent, extra = sorted(series_uids - set(uids)), sorted(set(uids) - series_uids)
        raise ValueError(f"{where}: slice label file {path} must have one row per slice of the series: "
                         f"{len(absent)} slice(s) without a row (e.g. {absent[:2]}), {len(extra)} row(s) for "
                         f"unknown or repeated UIDs (e.g. {extra[:2]})")
    matrix = np.array([[_binary(row[n], f"{path.name} line {k + 2} column {n}") for n in names]
                       for k, row in enumerate(rows)], np.float32)
    return uids, matrix


# --- RSNA Intracranial Hemorrhage Detection ---------------------------------------------------

def read_rsna(labels_csv: Path, dicom_dir: Path, labels: Sequence[str] = RSNA_LABELS,
              progress: bool = False) -> list[StudyRecord]:
    """Series of the RSNA layout (module docstring). Series none of whose images is in the
    CSV (e.g. test images in the same folder) are skipped; so are series only partly
    labelled, with a warning naming them. Exact duplicate CSV rows are accepted; a row that
    contradicts another raises."""
    labels_csv = Path(labels_csv)
    by_key = {v: k for k, v in RSNA_COLUMNS.items()}
    names = _check_labels(labels, by_key, f"RSNA {labels_csv.name}")
    table = _rsna_table(labels_csv)
    records, unlabelled, partial = [], 0, []
    for series_uid, headers in _scan(dicom_dir, progress).items():
        have = [h.sop_uid in table for h in headers]
        if not any(have):
            unlabelled += 1
            continue
        if not all(have):
            partial.append(series_uid)
            continue
        rows = []
        for h in headers:
            absent = [by_key[n] for n in names if by_key[n] not in table[h.sop_uid]]
            if absent:
                raise ValueError(f"RSNA {labels_csv.name}: image {h.sop_uid} has no row for {absent}")
            rows.append([table[h.sop_uid][by_key[n]] for n in names])
        matrix = np.array(rows, np.float32)
        records.append(StudyRecord(
            study_id=series_uid, files=tuple(h.path for h in headers), n_slices=len(headers), label_names=names,
            labels=matrix.max(axis=0), slice_uids=tuple(h.sop_uid for h in headers), slice_labels=matrix,
            group=headers[0].patient, description=headers[0].description))
    if partial:
        log.warning("RSNA: skipped %d series with only some images labelled: %s", len(partial), ", ".join(partial[:5]))
    log.info("RSNA: %d labelled series, %d series without labels skipped", len(records), unlabelled)
    if not records:
        raise ValueError(f"RSNA: no image under {dicom_dir} is labelled in {labels_csv}")
    return sorted(records, key=lambda r: r.study_id)


def _rsna_table(path: Path) -> dict[str, dict[str, int]]:
    """``{image id: {subtype: 0/1}}`` from ``ID,Label`` rows such as ``ID_12cadc6af_epidural,0``."""
    fields, rows = _read_csv(path)
    if fields[:2] != ["ID", "Label"]:
        raise ValueError(f"RSNA {path.name}: expected columns ID,Label, got {fields}")
    table: dict[str, dict[str, int]] = defaultdict(dict)
    for line, row in enumerate(rows, start=2):
        image, _, subtype = row["ID"].rpartition("_")
        if subtype not in RSNA_COLUMNS or not image:
            raise ValueError(f"RSNA {path.name} line {line}: ID {row['ID']!r} is not <image id>_<subtype> "
                             f"with a subtype of {', '.join(RSNA_COLUMNS)}")
        value = _binary(row["Label"], f"RSNA {path.name} line {line}")
        if table[image].setdefault(subtype, value) != value:
            raise ValueError(f"RSNA {path.name} line {line}: {row['ID']} is {value} here and "
                             f"{table[image][subtype]} on an earlier line")
    return table


# --- CQ500 ------------------------------------------------------------------------------------

_READER_COLUMN = re.compile(r"^(R\d+):(.+)$")


def _cq500_key(name: str) -> str:
    """``CQ500-CT-0`` (reads.csv) and ``CQ500CT0 CQ500CT0`` (folder) both become ``cq500ct0``."""
    return name.split()[0].replace("-", "").lower() if name.split() else ""


def read_cq500(reads_csv: Path, root: Path, labels: Sequence[str] = CQ500_LABELS,
               progress: bool = False) -> list[StudyRecord]:
    """One record per CT series under ``root``'s study folders, labelled by the majority of
    the readers in ``reads_csv`` (a label is 1 when more than half the readers marked it).
    Rows without a folder and folders without a row are skipped with a warning."""
    reads_csv = Path(reads_csv)
    by_key = {v: k for k, v in CQ500_COLUMNS.items()}
    names = _check_labels(labels, by_key, f"CQ500 {reads_csv.name}")
    fields, rows = _read_csv(reads_csv)
    readers = sorted({m.group(1) for m in map(_READER_COLUMN.match, fields) if m})
    needed = [f"{r}:{by_key[n]}" for r in readers for n in names]
    missing = [c for c in ("name", *needed) if c not in fields]
    if not readers or missing:
        raise ValueError(f"CQ500 {reads_csv.name}: missing column(s) {missing or 'R1:... (no reader columns)'}")
    folders = {_cq500_key(p.name): p for p in Path(root).iterdir() if p.is_dir()}
    records, absent = [], []
    for line, row in enumerate(rows, start=2):
        folder = folders.pop(_cq500_key(row["name"]), None)
        if folder is None:
            absent.append(row["name"])
            continue
        votes = np.array([[_binary(row[f"{r}:{by_key[n]}"], f"CQ500 {reads_csv.name} line {line} {r}:{by_key[n]}")
                           for n in names] for r in readers])
        study_labels = (2 * votes.sum(axis=0) > len(readers)).astype(np.float32)
        for series_uid, headers in sorted(_scan(folder, progress).items()):
            if headers[0].modality != "CT":
                continue
            records.append(StudyRecord(
                study_id=f"{row['name']}/{series_uid}", files=tuple(h.path for h in headers),
                n_slices=sum(h.frames for h in headers), label_names=names, labels=study_labels,
                group=row["name"], description=headers[0].description))
    if absent:
        log.warning("CQ500: %d read(s) without a study folder under %s: %s", len(absent), root, ", ".join(absent[:5]))
    if folders:
        log.warning("CQ500: %d folder(s) without reads: %s", len(folders), ", ".join(p.name for p in folders.values()))
    if not records:
        raise ValueError(f"CQ500: no CT series under {root} matches a row of {reads_csv}")
    return sorted(records, key=lambda r: r.study_id)
