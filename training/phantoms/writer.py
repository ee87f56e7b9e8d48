"""A phantom :class:`~neuroread.training.phantoms.study.Study` as files, the way a PACS exports it.

One folder per study: one folder per series with one DICOM file per instance (CT Image or
MR Image storage, explicit VR little endian), ``truth.json`` and ``masks/*.nii.gz`` (each
mask on its series' own grid, with that grid's geometry, so it overlays the DICOM series in
any viewer that reads NIfTI).

These objects are the classic single-frame CT/MR Image IODs that scanners send. highdicom
writes derived objects (SEG, SR, PM, SC, KOS, legacy-converted enhanced images) but has no
constructor for original CT/MR images, so they are built here with pydicom, module by
module, and checked with dciodvfy in the tests.

Every byte is a function of the study: UIDs are derived from (task, case, series, instance)
and dates come from the synthetic visit, so the same seed gives identical files.
"""
from __future__ import annotations

import json
import uuid
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, MRImageStorage

from .study import Series, Study

SYNTHETIC_NOTE = "neuroread synthetic phantom - not a patient"
_SOP_CLASS = {"CT": CTImageStorage, "MR": MRImageStorage}


_UID_NAMESPACE = uuid.UUID("5a0e3c52-8f0e-4b1c-9a57-6e6575726f72")  # neuroread phantoms


def uid(*parts: object) -> str:
    """A deterministic UID from the given parts: 2.25 + a name-based (v5) UUID (PS3.5 B.2)."""
    return f"2.25.{uuid.uuid5(_UID_NAMESPACE, chr(31).join(map(str, parts))).int}"


_IMPLEMENTATION_UID = uid("neuroread-phantoms", "implementation", 1)


def study_uids(study: Study) -> dict[str, str]:
    base = ("neuroread-phantom", study.task, study.case_id)
    out = {"study": uid(*base, "study"), "frame_of_reference": uid(*base, "for")}
    for s in study.series:
        out[s.key] = uid(*base, "series", s.key)
    return out


def _fmt_date(d) -> str:
    return d.strftime("%Y%m%d")


def _fmt_time(t) -> str:
    return t.strftime("%H%M%S")


def _ds(value: float) -> str:
    """A DS value with as many significant digits as 16 characters allow."""
    for digits in range(10, 4, -1):
        text = f"{value:.{digits}g}"
        if len(text) <= 16:
            return text
    return f"{value:.4e}"


def _common(study: Study, uids: dict[str, str], series: Series, number: int) -> Dataset:
    ident = study.identity
    sc = ident.scanner
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = _SOP_CLASS[series.modality]
    # Patient
    ds.PatientName = ident.patient_name
    ds.PatientID = ident.patient_id
    ds.PatientBirthDate = _fmt_date(ident.birth_date)
    ds.PatientSex = ident.sex
    ds.PatientIdentityRemoved = "NO"
    # General study / patient study
    ds.StudyInstanceUID = uids["study"]
    ds.StudyDate = _fmt_date(ident.study_date)
    ds.StudyTime = _fmt_time(ident.study_time)
    ds.ReferringPhysicianName = ident.referring
    ds.StudyID = ident.accession[-6:]
    ds.AccessionNumber = ident.accession
    ds.StudyDescription = study.study_description
    ds.PatientAge = f"{ident.age_years:03d}Y"
    # General series
    ds.Modality = series.modality
    ds.SeriesInstanceUID = uids[series.key]
    ds.SeriesNumber = number
    ds.SeriesDate = ds.StudyDate
    ds.SeriesTime = _fmt_time(ident.study_time.replace(minute=(ident.study_time.minute + number) % 60))
    ds.SeriesDescription = series.description
    ds.ProtocolName = series.protocol or series.description
    ds.BodyPartExamined = series.body_part
    ds.PatientPosition = series.patient_position
    # Frame of reference (one per study: all series share the patient's position)
    ds.FrameOfReferenceUID = uids["frame_of_reference"]
    ds.PositionReferenceIndicator = ""
    # General equipment
    ds.Manufacturer = sc.manufacturer
    ds.InstitutionName = ident.institution
    ds.StationName = sc.station
    ds.ManufacturerModelName = sc.model
    ds.DeviceSerialNumber = "PHANTOM"
    ds.SoftwareVersions = sc.software
    # General image / acquisition
    ds.ImageType = list(series.image_type)
    ds.AcquisitionNumber = 1
    ds.ImageComments = SYNTHETIC_NOTE
    ds.BurnedInAnnotation = "NO"
    ds.LossyImageCompression = "00"
    # Image pixel
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = int(series.grid.shape[1]), int(series.grid.shape[2])
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1 if series.pixels.dtype == np.int16 else 0
    # Image plane
    ds.PixelSpacing = [_ds(v) for v in series.grid.pixel_spacing]
    ds.ImageOrientationPatient = [_ds(round(v, 8)) for v in series.grid.orientation]
    ds.SliceThickness = _ds(series.grid.thickness)
    ds.SpacingBetweenSlices = _ds(series.grid.slice_spacing)
    # VOI LUT
    ds.WindowCenter = _ds(series.window[0])
    ds.WindowWidth = _ds(series.window[1])
    ds.WindowCenterWidthExplanation = "DEFAULT"
    for keyword, value in series.attributes.items():
        setattr(ds, keyword, value)
    if series.modality == "CT":
        ds.RescaleIntercept = _ds(series.rescale[1])
        ds.RescaleSlope = _ds(series.rescale[0])
        ds.RescaleType = "HU"
    return ds


def write_series(study: Study, uids: dict[str, str], series: Series, number: int, folder: Path) -> list[str]:
    """Write one file per slice; returns the SOP Instance UIDs in slice order."""
    folder.mkdir(parents=True, exist_ok=True)
    template = _common(study, uids, series, number)
    out = []
    for k in range(series.grid.shape[0]):
        ds = Dataset()
        ds.update(template)
        sop_uid = uid("neuroread-phantom", study.task, study.case_id, series.key, k)
        ds.SOPInstanceUID = sop_uid
        ds.InstanceCreationDate = ds.StudyDate
        ds.InstanceCreationTime = ds.SeriesTime
        ds.ContentDate = ds.StudyDate
        ds.ContentTime = ds.SeriesTime
        ds.AcquisitionDate = ds.StudyDate
        ds.InstanceNumber = k + 1
        pos = series.grid.position(k)
        ds.ImagePositionPatient = [_ds(round(float(v), 5)) for v in pos]
        ds.SliceLocation = _ds(round(float(pos @ series.grid.slice_dir), 5))
        plane = np.ascontiguousarray(series.pixels[k])
        ds.SmallestImagePixelValue = int(plane.min())
        ds.LargestImagePixelValue = int(plane.max())
        ds.PixelData = plane.tobytes()
        ds["SmallestImagePixelValue"].VR = "SS" if plane.dtype == np.int16 else "US"
        ds["LargestImagePixelValue"].VR = "SS" if plane.dtype == np.int16 else "US"
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = ds.SOPClassUID
        meta.MediaStorageSOPInstanceUID = sop_uid
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.ImplementationClassUID = _IMPLEMENTATION_UID
        meta.ImplementationVersionName = "NEUROREAD_PH1"
        ds.file_meta = meta
        ds.save_as(folder / f"IM{k + 1:04d}.dcm", enforce_file_format=True)
        out.append(sop_uid)
    return out


def write_study(study: Study, out_dir: Path) -> dict:
    """Write the study under ``out_dir / case_id``; returns its manifest row."""
    root = Path(out_dir) / study.case_id
    uids = study_uids(study)
    series_truth = {}
    for number, series in enumerate(study.series, start=1):
        folder_name = f"S{number:02d}"
        sops = write_series(study, uids, series, number, root / folder_name)
        series_truth[series.key] = {
            "folder": folder_name,
            "kind": series.kind,
            "series_instance_uid": uids[series.key],
            "series_number": number,
            "sop_instance_uids": sops,
            "shape": list(series.grid.shape),
            "description": series.description,
        }
    mask_files = {}
    if study.masks:
        (root / "masks").mkdir(parents=True, exist_ok=True)
    for name, (key, array) in sorted(study.masks.items()):
        grid = study.series_by_key(key).grid
        dtype = np.uint8 if array.max(initial=0) < 256 else np.uint16
        rel = f"masks/{name}.nii.gz"
        sitk.WriteImage(grid.to_sitk(array.astype(dtype)), str(root / rel), useCompression=True)
        mask_files[name] = {"file": rel, "series": key, "contrast": study.mask_contrast.get(name)}
    truth = {
        "task": study.task,
        "case_id": study.case_id,
        "label": study.label,
        "labels": study.labels,
        "study_instance_uid": uids["study"],
        "frame_of_reference_uid": uids["frame_of_reference"],
        "series": series_truth,
        "masks": mask_files,
        "synthetic": SYNTHETIC_NOTE,
        **study.truth,
    }
    (root / "truth.json").write_text(json.dumps(truth, indent=1, sort_keys=True, default=_json_default) + "\n")
    return {
        "case_id": study.case_id,
        "study_dir": study.case_id,
        "task": study.task,
        "label": study.label,
        **{f"label_{k}": v for k, v in study.labels.items()},
        "study_instance_uid": uids["study"],
        "n_series": len(study.series),
    }


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
