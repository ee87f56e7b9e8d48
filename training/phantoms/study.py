"""What a phantom study is, before it becomes files.

A task generator returns a :class:`Study`: the series (voxels on their own grids plus the
acquisition attributes a scanner would write), the masks (each on one series' grid) and
the truth. :mod:`neuroread.training.phantoms.writer` turns it into DICOM files, NIfTI masks and a
``truth.json``.
"""
from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .geometry import Grid

MODALITIES = ("CT", "MR")


@dataclass
class Series:
    """One acquired series.

    ``pixels`` are the stored values (``uint16`` or ``int16``, shape = ``grid.shape``);
    for CT the modality values are ``pixels * rescale[0] + rescale[1]`` in HU.
    ``kind`` is what the series really is (``CT``, ``FLAIR``, ``SWI``, ``T1``, ``STIR``…),
    recorded in the truth only: the headers must tell it on their own.
    ``attributes`` are extra DICOM attributes by keyword (acquisition parameters).
    """

    key: str
    kind: str
    modality: str
    grid: Grid
    pixels: np.ndarray
    description: str
    image_type: list[str]
    window: tuple[float, float]
    attributes: dict[str, Any] = field(default_factory=dict)
    rescale: tuple[float, float] = (1.0, 0.0)
    body_part: str = "HEAD"
    patient_position: str = "HFS"
    protocol: str = ""

    def __post_init__(self) -> None:
        if self.modality not in MODALITIES:
            raise ValueError(f"Series.modality must be one of {MODALITIES}, got {self.modality!r}")
        if self.pixels.shape != self.grid.shape:
            raise ValueError(f"Series {self.key!r}: pixels {self.pixels.shape} != grid {self.grid.shape}")
        if self.pixels.dtype not in (np.uint16, np.int16):
            raise ValueError(f"Series {self.key!r}: pixels must be uint16 or int16, got {self.pixels.dtype}")
        if not self.key.isidentifier():
            raise ValueError(f"Series.key must be an identifier, got {self.key!r}")


@dataclass(frozen=True)
class Scanner:
    """The equipment a series comes from (General Equipment module)."""

    manufacturer: str
    model: str
    software: str
    station: str
    field_strength: float | None = None  # tesla, MR only
    style: str = "siemens"  # wording style of descriptions: siemens | ge | philips


@dataclass(frozen=True)
class Identity:
    """Patient and visit: synthetic people, realistic shape."""

    patient_name: str
    patient_id: str
    birth_date: _dt.date
    sex: str
    study_date: _dt.date
    study_time: _dt.time
    accession: str
    institution: str
    referring: str
    scanner: Scanner

    @property
    def age_years(self) -> int:
        d, b = self.study_date, self.birth_date
        return d.year - b.year - ((d.month, d.day) < (b.month, b.day))


@dataclass
class Study:
    """One phantom study with its truth.

    ``label`` is the study's class for the task (used for balance); ``labels`` the
    multi-label truth (0/1 per label, for tasks with several labels, else one entry);
    ``masks`` maps a mask name to (series key, integer array on that series' grid): 0 is
    background, each lesion has its own id (1, 2, …) so one label map holds one mask per
    lesion; ``mask_contrast`` says, per mask, whether its lesions are ``brighter`` or
    ``darker`` than their surroundings on that series (checked by the tests);
    ``truth`` holds everything else (lesion lists, per-slice labels, regions changed).
    """

    task: str
    case_id: str
    label: str
    labels: dict[str, int]
    identity: Identity
    study_description: str
    series: list[Series]
    masks: dict[str, tuple[str, np.ndarray]] = field(default_factory=dict)
    mask_contrast: dict[str, str] = field(default_factory=dict)
    truth: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        keys = [s.key for s in self.series]
        if len(set(keys)) != len(keys):
            raise ValueError(f"Study {self.case_id}: duplicate series keys {keys}")
        by_key = {s.key: s for s in self.series}
        for name, (key, arr) in self.masks.items():
            if key not in by_key:
                raise ValueError(f"mask {name!r} names unknown series {key!r}")
            if arr.shape != by_key[key].grid.shape:
                raise ValueError(f"mask {name!r} shape {arr.shape} != series {key!r} grid")
        for name, sign in self.mask_contrast.items():
            if name not in self.masks or sign not in ("brighter", "darker"):
                raise ValueError(f"mask_contrast[{name!r}] = {sign!r}: needs a known mask and brighter|darker")

    def series_by_key(self, key: str) -> Series:
        for s in self.series:
            if s.key == key:
                return s
        raise KeyError(key)
