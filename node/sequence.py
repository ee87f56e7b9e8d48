"""The MR sequence class of a series, read from its acquisition parameters.

A series is labelled T1, T2, FLAIR, STIR, T2FS (fat-suppressed T2: SPAIR, SPIR, fat sat),
SWI, DWI, PD or UNKNOWN from what the scanner wrote about how it acquired the images:
ScanningSequence, SequenceVariant, ScanOptions, RepetitionTime, EchoTime, InversionTime,
FlipAngle, MRAcquisitionType, ImageType and the diffusion b-value (the standard
DiffusionBValue or the Siemens, GE and Philips private tags). Enhanced (multi-frame) MR
headers are read through their shared and first per-frame functional groups.

The evidence has an order, and a weaker kind is consulted only when the stronger ones are
missing (parameters that are present and fit no class, e.g. a 2D T2* gradient echo or a BOLD
echo planar series, give UNKNOWN and are not overridden):

1. parameters and ImageType (``basis="parameters"``);
2. SequenceName, e.g. ``*swi3d1r`` or ``ep_b1000`` (``basis="sequence name"``);
3. SeriesDescription (``basis="description"``): free text typed by people, often empty or
   wrong, so it never overrides the parameters; a disagreeing description is only noted.

Thresholds (milliseconds, valid at 1.5 T and 3 T): inversion time <= 400 nulls fat (STIR),
>= 1400 nulls fluid (FLAIR), between is T1-weighted inversion recovery (MPRAGE, T1-FLAIR);
spin echo with TR < 1200 and TE < 30 is T1, with TR >= 1200 it is T2 when TE >= 50 and PD
below; a gradient echo with TE >= 15 and flip <= 40 degrees acquired in 3D is SWI.
"""
from __future__ import annotations

import math
import re
import struct
from dataclasses import dataclass

from pydicom.dataset import Dataset

from models.spec import MR_SEQUENCES

UNKNOWN = "UNKNOWN"
SEQUENCE_CLASSES = (*MR_SEQUENCES, UNKNOWN)
BASES = ("parameters", "sequence name", "description", "none")

STIR_MAX_TI = 400.0
FLAIR_MIN_TI = 1400.0
LONG_TR = 1200.0
T1_MAX_TE = 30.0
T2_MIN_TE = 50.0
SWI_MIN_TE = 15.0
SWI_MAX_FLIP = 40.0

_DWI_IMAGE_TYPES = frozenset({"DIFFUSION", "ADC", "TRACEW", "TRACE", "EADC", "DWI", "CALC_BVALUE"})
_SWI_IMAGE_TYPES = frozenset({"SWI", "SWAN", "M_SWI", "MNIP"})
_FAT_SAT_OPTIONS = frozenset({"FS", "SFS", "FAT_SAT", "FATSAT", "SPAIR", "SPIR", "CHESS", "WE"})
_FAT_SAT_NAME = re.compile(r"spair|spir|fatsat|fat_sat|_fs\b", re.IGNORECASE)
# (group, private creator, element offset, label) of vendor b-value tags.
_PRIVATE_B_VALUES = (
    (0x0019, "SIEMENS MR HEADER", 0x0C, "Siemens (0019,100C)"),
    (0x0043, "GEMS_PARM_01", 0x39, "GE (0043,1039)"),
    (0x2001, "Philips Imaging DD 001", 0x03, "Philips (2001,1003)"),
)
# Weak hints, first match wins: SequenceName, then SeriesDescription.
_NAME_HINTS = (
    (re.compile(r"ep_b\d|ep2d_diff|epse.*diff|dwi|diff", re.I), "DWI"),
    (re.compile(r"swi|swan", re.I), "SWI"),
    (re.compile(r"flair", re.I), "FLAIR"),
    (re.compile(r"stir", re.I), "STIR"),
    (re.compile(r"spair|spir", re.I), "T2FS"),
    (re.compile(r"tfl3d|mprage|bravo|t1tfe|fspgr|spgr|fl3d|vibe", re.I), "T1"),
)
_DESCRIPTION_HINTS = (
    (re.compile(r"dwi|diffusion|\badc\b|trace", re.I), "DWI"),
    (re.compile(r"swi|swan|suscept", re.I), "SWI"),
    (re.compile(r"flair|dark.?fluid", re.I), "FLAIR"),
    (re.compile(r"stir|tirm", re.I), "STIR"),
    (re.compile(r"t2.*(spair|spir|fs\b|fat.?sat)|spair|spir", re.I), "T2FS"),
    (re.compile(r"\bpd|proton", re.I), "PD"),
    (re.compile(r"t1|mprage|bravo|tfe|spgr", re.I), "T1"),
    (re.compile(r"t2", re.I), "T2"),
)


@dataclass(frozen=True)
class SequenceClass:
    """The class of a series, the evidence kind it rests on and the reasons, in words."""

    sequence: str
    basis: str
    reasons: tuple[str, ...]

    def __post_init__(self) -> None:
        if self.sequence not in SEQUENCE_CLASSES:
            raise ValueError(f"SequenceClass.sequence must be one of {SEQUENCE_CLASSES}, got {self.sequence!r}")
        if self.basis not in BASES:
            raise ValueError(f"SequenceClass.basis must be one of {BASES}, got {self.basis!r}")


@dataclass(frozen=True)
class Acquisition:
    """What the classifier reads of one instance's header, normalised (tokens upper-case)."""

    modality: str = "MR"
    scanning: frozenset[str] = frozenset()
    variant: frozenset[str] = frozenset()
    options: frozenset[str] = frozenset()
    image_type: frozenset[str] = frozenset()
    acquisition_type: str = ""
    tr: float | None = None
    te: float | None = None
    ti: float | None = None
    flip: float | None = None
    b_value: float | None = None
    b_source: str = ""
    fat_suppressed_enhanced: bool = False
    sequence_name: str = ""
    description: str = ""

    @classmethod
    def from_dataset(cls, ds: Dataset) -> "Acquisition":
        scanning = _tokens(_lookup(ds, "ScanningSequence"))
        echo_pulse = str(_lookup(ds, "EchoPulseSequence") or "").upper()  # Enhanced MR
        if echo_pulse in ("SPIN", "BOTH"):
            scanning |= {"SE"}
        if echo_pulse in ("GRADIENT", "BOTH"):
            scanning |= {"GR"}
        if str(_lookup(ds, "InversionRecovery") or "").upper() == "YES":
            scanning |= {"IR"}
        b_value, b_source = _b_value(ds)
        suppression = _tokens(_lookup(ds, "SpectrallySelectedSuppression"))
        return cls(
            modality=str(ds.get("Modality", "") or "").upper(),
            scanning=scanning,
            variant=_tokens(_lookup(ds, "SequenceVariant")),
            options=_tokens(_lookup(ds, "ScanOptions")),
            image_type=_tokens(ds.get("ImageType")) | _tokens(_lookup(ds, "FrameType")),
            acquisition_type=str(_lookup(ds, "MRAcquisitionType") or "").upper(),
            tr=_number(_lookup(ds, "RepetitionTime")),
            te=_number(_lookup(ds, "EchoTime")) if "EchoTime" in ds else _number(_lookup(ds, "EffectiveEchoTime")),
            ti=_number(_lookup(ds, "InversionTime")) if "InversionTime" in ds else _number(_lookup(ds, "InversionTimes")),
            flip=_number(_lookup(ds, "FlipAngle")),
            b_value=b_value,
            b_source=b_source,
            fat_suppressed_enhanced=bool(suppression & {"FAT", "FAT_AND_WATER"}),
            sequence_name=str(_lookup(ds, "SequenceName") or _lookup(ds, "PulseSequenceName") or ""),
            description=str(ds.get("SeriesDescription", "") or ""),
        )


def classify(ds: Dataset) -> SequenceClass:
    """The sequence class of the series ``ds`` (one representative instance's header)."""
    return classify_acquisition(Acquisition.from_dataset(ds))


def classify_acquisition(acq: Acquisition) -> SequenceClass:
    """The class from normalised parameters; see the module docstring for the order of evidence."""
    if acq.modality != "MR":
        return SequenceClass(UNKNOWN, "none", (f"Modality is {acq.modality or 'absent'}, not MR: no sequence class",))
    found, reasons = _from_parameters(acq)
    if found is not None:
        hint = _hint(acq.description, _DESCRIPTION_HINTS)
        if hint is not None and hint != found:
            reasons.append(f"SeriesDescription {acq.description!r} suggests {hint}; ignored, the parameters decide")
        return SequenceClass(found, "parameters", tuple(reasons))
    hint = _hint(acq.sequence_name, _NAME_HINTS)
    if hint is not None:
        reasons.append(f"SequenceName {acq.sequence_name!r} suggests {hint} (weak evidence)")
        return SequenceClass(hint, "sequence name", tuple(reasons))
    hint = _hint(acq.description, _DESCRIPTION_HINTS)
    if hint is not None:
        reasons.append(f"SeriesDescription {acq.description!r} suggests {hint} (last resort, low weight)")
        return SequenceClass(hint, "description", tuple(reasons))
    reasons.append("no parameter, SequenceName or SeriesDescription evidence decides the class")
    return SequenceClass(UNKNOWN, "none", tuple(reasons))


def _from_parameters(acq: Acquisition) -> tuple[str | None, list[str]]:
    """A class and its reasons. UNKNOWN: the parameters are clear and fit no class (weaker
    evidence is not consulted); None: they are missing or incomplete, weaker evidence may decide."""
    reasons: list[str] = []
    if acq.b_value is not None and acq.b_value > 0:
        return "DWI", [f"diffusion b-value {acq.b_value:g} s/mm² in {acq.b_source}"]
    dwi_types = acq.image_type & _DWI_IMAGE_TYPES
    if dwi_types:
        return "DWI", [f"ImageType has {', '.join(sorted(dwi_types))}"]
    if "EP" in acq.scanning and acq.b_value is not None:
        return "DWI", [f"echo planar with b-value 0 in {acq.b_source} (the b=0 images of a diffusion series)"]
    swi_types = acq.image_type & _SWI_IMAGE_TYPES
    if swi_types:
        return "SWI", [f"ImageType has {', '.join(sorted(swi_types))}"]

    fat = _fat_suppression(acq)
    inversion = "IR" in acq.scanning or "IR" in acq.options or (acq.ti is not None and acq.ti > 0)
    if inversion:
        why = _inversion_evidence(acq)
        if acq.ti is None:
            if "GR" in acq.scanning and acq.te is not None and acq.te < 10:
                return "T1", [f"{why}, gradient echo with TE {acq.te:g} ms and no InversionTime: inversion-prepared T1"]
            return None, [f"{why} but no InversionTime: cannot tell FLAIR, STIR or T1 apart"]
        if fat and acq.ti >= FLAIR_MIN_TI:
            reasons.append(f"{fat} ignored: the inversion time decides")
        if acq.ti >= FLAIR_MIN_TI:
            return "FLAIR", [f"{why} with TI {acq.ti:g} ms >= {FLAIR_MIN_TI:g} ms: fluid nulled (FLAIR)", *reasons]
        if acq.ti <= STIR_MAX_TI:
            return "STIR", [f"{why} with TI {acq.ti:g} ms <= {STIR_MAX_TI:g} ms: fat nulled (STIR)"]
        kind = "gradient echo (MPRAGE-like)" if "GR" in acq.scanning else "spin echo (T1-FLAIR-like)"
        return "T1", [f"{why} with TI {acq.ti:g} ms between {STIR_MAX_TI:g} and {FLAIR_MIN_TI:g} ms, {kind}: T1-weighted"]

    if "EP" in acq.scanning and "SE" not in acq.scanning and "GR" not in acq.scanning:
        return UNKNOWN, ["echo planar without a diffusion b-value or diffusion ImageType (fMRI or perfusion?)"]
    if "GR" in acq.scanning and "SE" not in acq.scanning:
        return _gradient_echo(acq)
    if "SE" in acq.scanning:
        return _spin_echo(acq, fat)
    if not acq.scanning:
        return None, ["ScanningSequence is absent"]
    return None, [f"ScanningSequence {'/'.join(sorted(acq.scanning))} is not one the classifier knows"]


def _inversion_evidence(acq: Acquisition) -> str:
    if "IR" in acq.scanning:
        return "inversion recovery (ScanningSequence IR)"
    if "IR" in acq.options:
        return "inversion recovery (ScanOptions IR)"
    return "inversion recovery (InversionTime present)"


def _fat_suppression(acq: Acquisition) -> str:
    """Words naming the evidence of fat suppression, or '' when there is none."""
    options = acq.options & _FAT_SAT_OPTIONS
    if options:
        return f"fat suppression (ScanOptions {'/'.join(sorted(options))})"
    if acq.fat_suppressed_enhanced:
        return "fat suppression (SpectrallySelectedSuppression)"
    if "WATER" in acq.image_type:
        return "fat suppression (ImageType WATER, Dixon)"
    if _FAT_SAT_NAME.search(acq.sequence_name):
        return f"fat suppression (SequenceName {acq.sequence_name!r})"
    return ""


def _gradient_echo(acq: Acquisition) -> tuple[str | None, list[str]]:
    if acq.te is None:
        return None, ["gradient echo without EchoTime"]
    flip_ok = acq.flip is None or acq.flip <= SWI_MAX_FLIP
    if acq.te >= SWI_MIN_TE and flip_ok:
        what = f"gradient echo with TE {acq.te:g} ms >= {SWI_MIN_TE:g} ms and flip {_fmt(acq.flip, '°')}"
        if acq.acquisition_type == "3D":
            return "SWI", [f"3D {what}: susceptibility-weighted"]
        return UNKNOWN, [f"{acq.acquisition_type or 'non-3D'} {what}: T2*-weighted, which has no class of its own"]
    if acq.te < 10 and ((acq.tr is not None and acq.tr < 100) or "MP" in acq.variant):
        prep = "magnetization-prepared " if "MP" in acq.variant else "spoiled "
        return "T1", [f"{prep}gradient echo with TR {_fmt(acq.tr, ' ms')}, TE {acq.te:g} ms: T1-weighted"]
    return UNKNOWN, [f"gradient echo with TR {_fmt(acq.tr, ' ms')}, TE {acq.te:g} ms, flip {_fmt(acq.flip, '°')}: no class fits"]


def _spin_echo(acq: Acquisition, fat: str) -> tuple[str | None, list[str]]:
    if acq.tr is None or acq.te is None:
        return None, ["spin echo without RepetitionTime or EchoTime"]
    timing = f"spin echo with TR {acq.tr:g} ms, TE {acq.te:g} ms"
    note = [f"{fat} noted"] if fat else []
    if acq.tr < LONG_TR:
        if acq.te < T1_MAX_TE:
            return "T1", [f"{timing} (TR < {LONG_TR:g}, TE < {T1_MAX_TE:g}): T1-weighted", *note]
        return UNKNOWN, [f"{timing}: short TR with long TE, mixed weighting, no class fits"]
    if acq.te >= T2_MIN_TE:
        if fat:
            return "T2FS", [f"{timing} (TR >= {LONG_TR:g}, TE >= {T2_MIN_TE:g}): T2-weighted, with {fat}"]
        return "T2", [f"{timing} (TR >= {LONG_TR:g}, TE >= {T2_MIN_TE:g}): T2-weighted, no fat suppression"]
    return "PD", [f"{timing} (TR >= {LONG_TR:g}, TE < {T2_MIN_TE:g}): proton-density-weighted", *note]


def _hint(text: str, hints: tuple[tuple[re.Pattern, str], ...]) -> str | None:
    for pattern, name in hints:
        if text and pattern.search(text):
            return name
    return None


def _fmt(value: float | None, unit: str) -> str:
    return "absent" if value is None else f"{value:g}{unit}"


def _lookup(ds: Dataset, keyword: str):
    """``keyword``'s value at the top level, else in the Enhanced MR functional groups."""
    if keyword in ds:
        return ds[keyword].value
    for groups in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
        seq = ds.get(groups)
        if not seq:
            continue
        for element in seq[0]:
            if element.VR == "SQ" and element.value and keyword in element.value[0]:
                return element.value[0][keyword].value
    return None


def _tokens(value) -> frozenset[str]:
    if value is None:
        return frozenset()
    items = value.split("\\") if isinstance(value, str) else [str(v) for v in value]
    return frozenset(t.strip().upper() for t in items if t and t.strip())


def _number(value) -> float | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace").strip("\x00 ").split("\\")[0]
    elif not isinstance(value, (str, int, float)):
        if len(value) == 0:
            return None
        value = value[0]
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _b_value(ds: Dataset) -> tuple[float | None, str]:
    """The diffusion b-value and where it was found (standard tag first, then vendors')."""
    b = _number(_lookup(ds, "DiffusionBValue"))
    if b is not None:
        return b, "DiffusionBValue"
    for group, creator, offset, label in _PRIVATE_B_VALUES:
        try:
            element = ds.private_block(group, creator)[offset]
        except KeyError:
            continue
        value = element.value
        if isinstance(value, bytes) and group == 0x2001 and len(value) == 4:
            b = struct.unpack("<f", value)[0]  # Philips FL read without its VR
        else:
            b = _number(value)
        if b is None:
            continue
        if b >= 1e9:
            b = b % 1e9  # GE adds 10^9 to the b-value in (0043,1039)
        return b, label
    return None, ""
