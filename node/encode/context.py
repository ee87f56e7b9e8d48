"""What every result object needs: the node's identity, the job's context, stamps.

:class:`EncodeInfo` names the equipment that writes the objects; :class:`Job` gathers what
one encoding needs (the result, its spec, the source instances per series, UIDs, a
deterministic date/time) so that each object module is a plain function of it.
"""
from __future__ import annotations

import datetime
import functools
from dataclasses import dataclass, field

import highdicom as hd
import pydicom
from pydicom.sr.codedict import codes
from pydicom.valuerep import DA, DT, TM

from neuroread.models import ModelResult, ModelSpec
from neuroread.models.places import Place
from neuroread.models.places import places as find_places

from .uids import UidFactory

# Kinds of result object, in the order series numbers are given (base + 1 + position).
KINDS = ("sr", "ko", "seg", "pm", "sc", "report")
PRIVATE_SCHEME = "99NEUROREAD"
DEMO_TEXT = "DEMO WEIGHTS - synthetic training data - not for clinical use"
#: What the reports say, as a comment, when the weights are demo weights.
DEMO_COMMENT = f"{DEMO_TEXT}. The weights were trained on synthetic phantoms; no clinical accuracy is claimed."
# Used when no source carries a date: fixed, so results stay deterministic.
FALLBACK_STAMP = datetime.datetime(2000, 1, 1, 0, 0, 0)


def _check_lo(name: str, value: str, *, empty_ok: bool = False) -> None:
    if not isinstance(value, str) or (not value and not empty_ok):
        raise ValueError(f"EncodeInfo.{name} must be a non-empty string, got {value!r}")
    if len(value) > 64 or "\\" in value or any(ord(c) < 32 for c in value):
        raise ValueError(f"EncodeInfo.{name} must fit a DICOM LO (64 characters, no backslash): {value!r}")


@dataclass(frozen=True)
class EncodeInfo:
    """The equipment that writes result objects (the node), and where its series are numbered.

    ``series_number_base`` + 1..6 numbers the SR, KOS, SEG, PM, SC and text report series.
    """

    manufacturer: str = "neuroread"
    device_name: str = "neuroread node"
    software_version: str = "0.1.0"
    device_serial_number: str = "0"
    institution_name: str = ""
    series_number_base: int = 900

    def __post_init__(self) -> None:
        for name in ("manufacturer", "device_name", "software_version", "device_serial_number"):
            _check_lo(name, getattr(self, name))
        _check_lo("institution_name", self.institution_name, empty_ok=True)
        if not 0 <= self.series_number_base <= 2**31 - 1 - len(KINDS):
            raise ValueError(f"EncodeInfo.series_number_base must be in [0, 2^31-7], got {self.series_number_base}")

    def series_number(self, kind: str) -> int:
        return self.series_number_base + 1 + KINDS.index(kind)


@dataclass(frozen=True)
class Job:
    """One encoding: the result, its spec, the source instances of each input series.

    ``series[uid]`` lists a series' instances in the order of the model's volume slices.
    """

    result: ModelResult
    spec: ModelSpec
    info: EncodeInfo
    series: dict[str, list[pydicom.Dataset]]
    uids: UidFactory
    stamp: datetime.datetime
    evidence: list[pydicom.Dataset] = field(default_factory=list)

    @property
    def demo(self) -> bool:
        return self.result.card.demo

    @functools.cached_property
    def places(self) -> list[Place]:
        """Where the result's findings, decided classes and lesions are (:func:`neuroread.models.places.places`),
        computed once per encoding: the SR draws them and the text report names them."""
        return find_places(self.result, {uid: [str(ds.SOPInstanceUID) for ds in instances]
                                         for uid, instances in self.series.items()})

    @property
    def target_places(self) -> dict[str, Place]:
        """The places of findings and decided classes, by label or class name."""
        return {p.target: p for p in self.places if p.lesion is None and p.table_row is None}

    @property
    def lesion_places(self) -> dict[int, Place]:
        """The places of lesions, by the lesion's index in the result."""
        return {p.lesion: p for p in self.places if p.lesion is not None}

    @property
    def table_places(self) -> dict[tuple[int, int], Place]:
        """The places of table rows with a mask, by (table index, row index)."""
        return {p.table_row: p for p in self.places if p.table_row is not None}

    @property
    def reference(self) -> pydicom.Dataset:
        """The instance whose patient and study modules every result copies."""
        return self.evidence[0]

    def algorithm_parameters(self) -> dict[str, str]:
        params = {f"threshold_{lb.name}": f"{lb.threshold:g}" for lb in self.spec.labels}
        params["weights_sha256"] = self.result.card.weights_sha256
        params["demo_weights"] = "yes" if self.demo else "no"
        params["training_data"] = self.result.card.training_data[:200]
        return params

    def algorithm_identification(self) -> hd.AlgorithmIdentificationSequence:
        """The model as highdicom's Algorithm Identification Sequence (SEG, PM)."""
        return hd.AlgorithmIdentificationSequence(
            name=self.spec.name, family=codes.cid7162.ArtificialIntelligence, version=self.spec.version,
            source=self.info.manufacturer, parameters=self.algorithm_parameters(),
        )

    def contributing_equipment(self) -> list[hd.ContributingEquipment]:
        """The algorithm as processing equipment (IHE AI Results), with a deterministic time."""
        return [hd.ContributingEquipment(
            manufacturer=self.info.manufacturer,
            purpose_of_reference=codes.DCM.ProcessingEquipment,
            manufacturer_model_name=self.spec.name,
            software_versions=self.spec.version,
            device_serial_number=self.info.device_serial_number,
            contribution_datetime=self.stamp,
            contribution_description=(f"AI algorithm {self.spec.name} {self.spec.version}"
                                      + (f"; {DEMO_TEXT}" if self.demo else "")),
        )]

    def common_kwargs(self, kind: str, index: int = 0) -> dict:
        """Series/instance identity shared by every highdicom constructor."""
        return dict(
            series_instance_uid=self.uids.series(kind),
            series_number=self.info.series_number(kind),
            sop_instance_uid=self.uids.instance(kind, index),
            instance_number=index + 1,
            manufacturer=self.info.manufacturer,
            contributing_equipment=self.contributing_equipment(),
        )

    def instances_of(self, series_uid: str) -> list[pydicom.Dataset]:
        try:
            return self.series[series_uid]
        except KeyError:
            raise ValueError(f"result refers to series {series_uid}, which is not among the sources "
                             f"{sorted(self.series)}") from None


def source_stamp(datasets: list[pydicom.Dataset]) -> datetime.datetime:
    """A deterministic date/time for results: the latest source content (or series, study) time."""
    best: datetime.datetime | None = None
    for ds in datasets:
        for date_kw, time_kw in (("ContentDate", "ContentTime"), ("SeriesDate", "SeriesTime"),
                                 ("StudyDate", "StudyTime")):
            date = ds.get(date_kw)
            if not date:
                continue
            try:
                day = DA(date)
                tm = TM(ds.get(time_kw) or "000000")
            except ValueError:
                continue
            when = datetime.datetime.combine(day, tm.replace(microsecond=0))
            best = when if best is None or when > best else best
            break
    return best if best is not None else FALLBACK_STAMP


def freeze_dates(ds: pydicom.Dataset, stamp: datetime.datetime) -> None:
    """Replace the wall-clock dates highdicom writes by ``stamp`` (results stay reproducible), and
    give every result a Series Date/Time (viewers list and sort series by it; OHIF shows
    "Invalid date" without one)."""
    day, tm = DA(stamp.date()), TM(stamp.time())
    ds.SeriesDate, ds.SeriesTime = day, tm
    for date_kw, time_kw in (("InstanceCreationDate", "InstanceCreationTime"), ("ContentDate", "ContentTime"),
                             ("DateOfSecondaryCapture", "TimeOfSecondaryCapture")):
        if date_kw in ds:
            setattr(ds, date_kw, day)
        if time_kw in ds:
            setattr(ds, time_kw, tm)
    for item in ds.get("ContributingEquipmentSequence", []):
        if "ContributionDateTime" in item:
            item.ContributionDateTime = DT(stamp)


def ensure_laterality(ds: pydicom.Dataset) -> None:
    """An empty Laterality (General Series, Type 2C) where highdicom writes none.

    dciodvfy asks for it when Body Part Examined does not rule out a paired structure; the
    results are whole-series objects, so no laterality applies: the value stays empty.
    """
    if "Laterality" not in ds and "ImageLaterality" not in ds:
        ds.Laterality = None


def freeze_dimension_uid(ds: pydicom.Dataset, uid: str) -> None:
    """Replace the random Dimension Organization UID highdicom draws (multi-frame objects)."""
    for keyword in ("DimensionOrganizationSequence", "DimensionIndexSequence"):
        for item in ds.get(keyword, []):
            if "DimensionOrganizationUID" in item:
                item.DimensionOrganizationUID = uid
