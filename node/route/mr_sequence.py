"""The MR sequence class of a series, read from its acquisition parameters.

A series is labelled T1, T2, FLAIR, STIR, T2FS (fat-suppressed T2: SPAIR, SPIR, fat sat),
SWI, DWI, PD or UNKNOWN from what the scanner wrote about how it acquired the images:
ScanningSequence, SequenceVariant, ScanOptions, RepetitionTime, EchoTime, InversionTime,
FlipAngle, MRAcquisitionType, ImageType and the diffusion b-value (the standard
DiffusionBValue or the Siemens, GE and Philips private tags).

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

Enhanced MR (Enhanced MR Image Storage, 1.2.840.10008.5.1.4.1.1.4.1, and legacy-converted
multi-frame MR) has no ScanningSequence, SequenceVariant, ScanOptions, EchoTime or
InversionTime; :class:`HeaderReader` finds each attribute at the top level, else in the Shared
Functional Groups Sequence (5200,9229), else in the Per-frame Functional Groups Sequence
(5200,9230) (the rules are in its docstring), and these stand in for the classic ones:

- TR, flip angle, echo train length: RepetitionTime, FlipAngle, EchoTrainLength of the MR
  Timing and Related Parameters Sequence; TE: EffectiveEchoTime of the MR Echo Sequence;
- TI: InversionTimes (0018,9079) of the MR Modifier Sequence (its first value), and its
  InversionRecovery YES counts as ScanningSequence IR;
- EchoPulseSequence SPIN, GRADIENT or BOTH counts as ScanningSequence SE, GR or both;
  EchoPlanarPulseSequence YES as EP, and an echo planar series without diffusion evidence is
  UNKNOWN whatever its echo (classic headers keep their rule: EP alone);
- the b-value: DiffusionBValue of the MR Diffusion Sequence, the largest any frame carries;
  AcquisitionContrast (0008,9209) DIFFUSION is diffusion evidence like ImageType DIFFUSION;
- fat suppression: SpectrallySelectedSuppression FAT or FAT_AND_WATER, or the MR Modifier's
  SpectrallySelectedExcitation WATER (water excitation);
- SteadyStatePulseSequence FREE_PRECESSION, TRANSVERSE or TIME_REVERSED marks a refocused
  gradient echo (TrueFISP, FISP, PSIF), whose contrast is mixed: UNKNOWN, never the spoiled-T1
  rule; LONGITUDINAL or NONE (spoiled) and Spoiling leave the gradient echo rules as they are;
- Spoiling, MagnetizationTransfer (MR Imaging Modifier Sequence) and SteadyStatePulseSequence
  also fill SequenceVariant SP, MTC and SS/TRSS, as a classic header would state them;
- AcquisitionContrast FLUID_ATTENUATED, STIR, T1, T2 or PROTON_DENSITY, the scanner's own
  statement of the contrast, decides only when the parameters are missing or incomplete
  (``basis="parameters"``, said so in the reasons); it never overrides them.

The reasons of an Enhanced MR series end with the keywords that were read and where.

Beside the class, :func:`image_component` says which part of an acquisition a series shows:
MAGNITUDE, PHASE or PROJECTION (a minimum or maximum intensity projection). One SWI
acquisition arrives as several series of the SWI class, and a model takes only the magnitude.
"""
from __future__ import annotations

import math
import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from pydicom.dataset import Dataset

from neuroread.models.spec import IMAGE_COMPONENTS, MR_SEQUENCES

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
_SWI_IMAGE_TYPES = frozenset({"SWI", "SWAN", "M_SWI", "MNIP"})  # a minIP is of the class too; image_component tells it apart
MAGNITUDE, PHASE, PROJECTION = IMAGE_COMPONENTS
# ImageType / FrameType values (one value between backslashes, upper-case) that mark a phase
# image, and those that mark a projection; see image_component.
PHASE_IMAGE_TYPES = frozenset({"P", "PHASE", "P_SWI", "PHA", "PHASE MAP"})
PROJECTION_IMAGE_TYPES = frozenset({"MNIP", "MINIP", "MIN_IP", "MIP", "MAXIP", "MAX_IP", "PROJECTION IMAGE"})
# Enhanced MR ComplexImageComponent (0008,9208) terms of a series holding phase images (MIXED:
# frames of several components in one series, which is no magnitude series either).
_PHASE_COMPONENTS = frozenset({"PHASE", "MIXED"})
# Enhanced MR VolumeBasedCalculationTechnique (0008,9207) terms of a projection.
_PROJECTION_TECHNIQUES = frozenset({"MIN_IP", "MAX_IP"})
_FAT_SAT_OPTIONS = frozenset({"FS", "SFS", "FAT_SAT", "FATSAT", "SPAIR", "SPIR", "CHESS", "WE"})
_FAT_SAT_NAME = re.compile(r"spair|spir|fatsat|fat_sat|_fs\b", re.IGNORECASE)
# Enhanced MR SteadyStatePulseSequence (0018,9017) terms of a refocused (not spoiled) gradient echo.
_REFOCUSED_STEADY_STATES = frozenset({"FREE_PRECESSION", "TRANSVERSE", "TIME_REVERSED"})
# Enhanced MR AcquisitionContrast (0008,9209) terms that name a class; consulted only when the
# parameters do not decide (DIFFUSION is strong evidence, handled with the b-value).
_CONTRAST_CLASSES = {"FLUID_ATTENUATED": "FLAIR", "STIR": "STIR", "T1": "T1", "T2": "T2", "PROTON_DENSITY": "PD"}
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
class Found:
    """One attribute as :meth:`HeaderReader.find` found it: its value and where, in words
    (``"top level"``, ``"shared MRModifierSequence"``, ``"per-frame MREchoSequence, 28 of 30 frames"``)."""

    value: object
    where: str


class HeaderReader:
    """The attributes of one header, classic or Enhanced MR, by keyword.

    :meth:`find` looks, in this order, and an empty value counts as absent:

    1. at the top level (classic MR, and the Enhanced MR image and pulse sequence modules);
    2. in the first item of the Shared Functional Groups Sequence (5200,9229): the first of its
       functional group macros (MR Timing and Related Parameters, MR Echo, MR Modifier, MR
       Imaging Modifier, MR Diffusion, MR Image Frame Type, ... and the Unassigned Shared
       Converted Attributes of a legacy-converted series) whose first item holds the keyword;
    3. in the Per-frame Functional Groups Sequence (5200,9230): the value most frames carry,
       ties going to the earliest frame, frames without it not counted. This, rather than the
       first frame's value, so that an odd first frame (a b=0 or a reference frame) does not
       speak for the series. With ``largest=True`` it is the largest number any frame carries
       instead (the diffusion b-value: a diffusion series holds b=0 frames beside the others).

    Nothing is copied or converted up front: the frames are walked per keyword asked for.
    """

    def __init__(self, ds: Dataset) -> None:
        if not isinstance(ds, Dataset):
            raise ValueError(f"HeaderReader needs a pydicom Dataset, got {type(ds).__name__}")
        self._ds = ds
        shared = _items(ds, "SharedFunctionalGroupsSequence")
        self._shared = _macros(shared[0]) if shared else []
        self._frames = [_macros(frame) for frame in _items(ds, "PerFrameFunctionalGroupsSequence")]

    @property
    def enhanced(self) -> bool:
        """Whether the header has functional groups (Enhanced or legacy-converted MR)."""
        return bool(self._shared or self._frames)

    def find(self, keyword: str, largest: bool = False) -> Found | None:
        """``keyword``'s value and where it was found, or None; see the class docstring."""
        if not isinstance(keyword, str) or not keyword:
            raise ValueError(f"HeaderReader.find: keyword must be a non-empty string, got {keyword!r}")
        if _present(self._ds, keyword):
            return Found(self._ds[keyword].value, "top level")
        for macro, item in self._shared:
            if _present(item, keyword):
                return Found(item[keyword].value, f"shared {macro}")
        return self._per_frame(keyword, largest)

    def _per_frame(self, keyword: str, largest: bool) -> Found | None:
        seen: dict[str, list] = {}  # value key -> [count, value, macro], in frame order
        for macros in self._frames:
            for macro, item in macros:
                if _present(item, keyword):
                    value = item[keyword].value
                    entry = seen.setdefault(_show(value), [0, value, macro])
                    entry[0] += 1
                    break
        if not seen:
            return None
        carrying = sum(count for count, _, _ in seen.values())
        total = len(self._frames)
        if largest:
            numbers = [(_number(value), value, macro) for _, value, macro in seen.values()]
            numbers = [n for n in numbers if n[0] is not None]
            if numbers:
                _, value, macro = max(numbers, key=lambda n: n[0])
                return Found(value, f"per-frame {macro}, largest in {carrying} of {total} frames")
        count, value, macro = max(seen.values(), key=lambda entry: entry[0])  # max keeps the first of a tie
        return Found(value, f"per-frame {macro}, {count} of {total} frames")


@dataclass(frozen=True)
class Acquisition:
    """What the classifier reads of one instance's header, normalised (tokens upper-case).

    The fields after ``description`` are set from Enhanced MR attributes only (see the module
    docstring); a classic header leaves them at their defaults."""

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
    inversion_recovery: bool = False  # InversionRecovery YES
    echo_planar: bool = False  # EchoPlanarPulseSequence YES
    water_excitation: bool = False  # SpectrallySelectedExcitation WATER
    steady_state: str = ""  # SteadyStatePulseSequence
    contrast: str = ""  # AcquisitionContrast
    sources: tuple[str, ...] = ()  # "keyword (where)" of what was read from an Enhanced MR header

    @classmethod
    def from_dataset(cls, ds: Dataset) -> "Acquisition":
        header = HeaderReader(ds)
        sources: list[str] = []

        def get(keyword: str, largest: bool = False):
            found = header.find(keyword, largest)
            if found is None:
                return None
            if header.enhanced:
                sources.append(f"{keyword} ({found.where})")
            return found.value

        def flag(keyword: str) -> str:
            return str(get(keyword) or "").strip().upper()

        scanning = _tokens(get("ScanningSequence"))
        variant = _tokens(get("SequenceVariant"))
        echo_pulse = flag("EchoPulseSequence")
        if echo_pulse in ("SPIN", "BOTH"):
            scanning |= {"SE"}
        if echo_pulse in ("GRADIENT", "BOTH"):
            scanning |= {"GR"}
        echo_planar = flag("EchoPlanarPulseSequence") == "YES"
        if echo_planar:
            scanning |= {"EP"}
        steady_state = flag("SteadyStatePulseSequence")
        if steady_state in ("FREE_PRECESSION", "TRANSVERSE", "LONGITUDINAL"):
            variant |= {"SS"}
        elif steady_state == "TIME_REVERSED":
            variant |= {"TRSS"}
        if flag("Spoiling") not in ("", "NONE"):
            variant |= {"SP"}
        if flag("MagnetizationTransfer") not in ("", "NONE"):
            variant |= {"MTC"}
        te = get("EchoTime")
        ti = get("InversionTime")
        b_value, b_source = _b_value(ds, get)
        return cls(
            modality=str(ds.get("Modality", "") or "").upper(),
            scanning=scanning,
            variant=variant,
            options=_tokens(get("ScanOptions")),
            image_type=_tokens(ds.get("ImageType")) | _tokens(get("FrameType")),
            acquisition_type=str(get("MRAcquisitionType") or "").upper(),
            tr=_number(get("RepetitionTime")),
            te=_number(te if te is not None else get("EffectiveEchoTime")),
            ti=_number(ti if ti is not None else get("InversionTimes")),
            flip=_number(get("FlipAngle")),
            b_value=b_value,
            b_source=b_source,
            fat_suppressed_enhanced=bool(_tokens(get("SpectrallySelectedSuppression")) & {"FAT", "FAT_AND_WATER"}),
            sequence_name=str(get("SequenceName") or get("PulseSequenceName") or ""),
            description=str(ds.get("SeriesDescription", "") or ""),
            inversion_recovery=flag("InversionRecovery") == "YES",
            echo_planar=echo_planar,
            water_excitation=flag("SpectrallySelectedExcitation") == "WATER",
            steady_state=steady_state,
            contrast=flag("AcquisitionContrast"),
            sources=tuple(dict.fromkeys(sources)),
        )


def classify(ds: Dataset) -> SequenceClass:
    """The sequence class of the series ``ds`` (one representative instance's header)."""
    return classify_acquisition(Acquisition.from_dataset(ds))


def classify_acquisition(acq: Acquisition) -> SequenceClass:
    """The class from normalised parameters; see the module docstring for the order of evidence."""
    if acq.modality != "MR":
        return SequenceClass(UNKNOWN, "none", (f"Modality is {acq.modality or 'absent'}, not MR: no sequence class",))
    read = [f"read from the Enhanced MR header: {', '.join(acq.sources)}"] if acq.sources else []
    found, reasons = _from_parameters(acq)
    if found is None and acq.contrast in _CONTRAST_CLASSES:
        found = _CONTRAST_CLASSES[acq.contrast]
        reasons.append(f"AcquisitionContrast {acq.contrast}: the scanner states {found} contrast "
                       "(decides only because the parameters do not)")
    if found is not None:
        hint = _hint(acq.description, _DESCRIPTION_HINTS)
        if hint is not None and hint != found:
            reasons.append(f"SeriesDescription {acq.description!r} suggests {hint}; ignored, the parameters decide")
        return SequenceClass(found, "parameters", tuple(reasons + read))
    hint = _hint(acq.sequence_name, _NAME_HINTS)
    if hint is not None:
        reasons.append(f"SequenceName {acq.sequence_name!r} suggests {hint} (weak evidence)")
        return SequenceClass(hint, "sequence name", tuple(reasons + read))
    hint = _hint(acq.description, _DESCRIPTION_HINTS)
    if hint is not None:
        reasons.append(f"SeriesDescription {acq.description!r} suggests {hint} (last resort, low weight)")
        return SequenceClass(hint, "description", tuple(reasons + read))
    reasons.append("no parameter, SequenceName or SeriesDescription evidence decides the class")
    return SequenceClass(UNKNOWN, "none", tuple(reasons + read))


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
    if acq.contrast == "DIFFUSION":
        return "DWI", ["AcquisitionContrast DIFFUSION"]
    swi_types = acq.image_type & _SWI_IMAGE_TYPES
    if swi_types:
        return "SWI", [f"ImageType has {', '.join(sorted(swi_types))}"]

    fat = _fat_suppression(acq)
    inversion = ("IR" in acq.scanning or "IR" in acq.options or acq.inversion_recovery
                 or (acq.ti is not None and acq.ti > 0))
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

    if "EP" in acq.scanning and (acq.echo_planar or ("SE" not in acq.scanning and "GR" not in acq.scanning)):
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
    if acq.inversion_recovery:
        return "inversion recovery (InversionRecovery YES)"
    return "inversion recovery (InversionTime present)"


def _fat_suppression(acq: Acquisition) -> str:
    """Words naming the evidence of fat suppression, or '' when there is none."""
    options = acq.options & _FAT_SAT_OPTIONS
    if options:
        return f"fat suppression (ScanOptions {'/'.join(sorted(options))})"
    if acq.fat_suppressed_enhanced:
        return "fat suppression (SpectrallySelectedSuppression)"
    if acq.water_excitation:
        return "fat suppression (SpectrallySelectedExcitation WATER)"
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
    if acq.steady_state in _REFOCUSED_STEADY_STATES:
        return UNKNOWN, [f"refocused gradient echo (SteadyStatePulseSequence {acq.steady_state}) with TR "
                         f"{_fmt(acq.tr, ' ms')}, TE {acq.te:g} ms: mixed T2/T1 contrast, no class fits"]
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


def image_component(ds: Dataset) -> str:
    r"""MAGNITUDE, PHASE or PROJECTION: which part of an acquisition the series ``ds`` shows.

    Sites send an SWI acquisition as several series, all of the SWI class: the
    susceptibility-weighted magnitude, the phase images and minimum intensity projections. The
    scanners say which is which in ImageType (Enhanced MR also in FrameType,
    ComplexImageComponent and VolumeBasedCalculationTechnique, found as :class:`HeaderReader`
    finds them); the values are compared whole, between backslashes, ignoring case:

    - magnitude: Siemens ``DERIVED\PRIMARY\SWI\NORM\DIS2D`` (M in the third value of its other
      series), GE ``ORIGINAL\PRIMARY\SWAN\NONE``, Philips ``ORIGINAL\PRIMARY\M_SWI\M\SWI``;
    - phase (:data:`PHASE_IMAGE_TYPES`): Siemens ``ORIGINAL\PRIMARY\P\ND``, GE ``...\PHASE``,
      Philips ``...\P_SWI\P\SWI`` or ``...\PHASE MAP\P\FFE``; Enhanced MR ComplexImageComponent
      PHASE, or MIXED (frames of several components in one series);
    - projection (:data:`PROJECTION_IMAGE_TYPES`): Siemens ``DERIVED\SECONDARY\MNIP``, others
      MIN_IP, MINIP, MIP, MAXIP or ``PROJECTION IMAGE``; Enhanced MR VolumeBasedCalculationTechnique
      MIN_IP or MAX_IP.

    Phase wins over projection (a projection of phase images is still phase), projection over
    magnitude; a series with none of this evidence, ImageType absent included, is MAGNITUDE.
    SeriesDescription is never read: people type "minIP" on a magnitude series and the reverse.
    """
    header = HeaderReader(ds)

    def value(keyword: str):
        found = header.find(keyword)
        return None if found is None else found.value

    types = _tokens(ds.get("ImageType")) | _tokens(value("FrameType"))
    if types & PHASE_IMAGE_TYPES or _tokens(value("ComplexImageComponent")) & _PHASE_COMPONENTS:
        return PHASE
    if types & PROJECTION_IMAGE_TYPES or _tokens(value("VolumeBasedCalculationTechnique")) & _PROJECTION_TECHNIQUES:
        return PROJECTION
    return MAGNITUDE


def _hint(text: str, hints: tuple[tuple[re.Pattern, str], ...]) -> str | None:
    for pattern, name in hints:
        if text and pattern.search(text):
            return name
    return None


def _fmt(value: float | None, unit: str) -> str:
    return "absent" if value is None else f"{value:g}{unit}"


def _items(ds: Dataset, keyword: str) -> list[Dataset]:
    """The items of the sequence attribute ``keyword`` (none when absent, empty or not a sequence)."""
    if keyword not in ds:
        return []
    element = ds[keyword]
    if element.VR != "SQ" or not element.value:
        return []
    return list(element.value)


def _macros(group: Dataset) -> list[tuple[str, Dataset]]:
    """(keyword, first item) of every functional group macro sequence in one group item."""
    macros = []
    for element in group:
        if element.VR == "SQ" and element.value:
            macros.append((element.keyword or str(element.tag), element.value[0]))
    return macros


def _present(ds: Dataset, keyword: str) -> bool:
    """Whether ``keyword`` is in ``ds`` with a value (an empty string or sequence is absent)."""
    if keyword not in ds:
        return False
    value = ds[keyword].value
    return value is not None and not (isinstance(value, (str, bytes, Sequence)) and len(value) == 0)


def _show(value) -> str:
    """A value as text, to tell per-frame values apart."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        return str(value)
    return "\\".join(str(v) for v in value)


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


def _b_value(ds: Dataset, get) -> tuple[float | None, str]:
    """The diffusion b-value and where it was found (standard tag first, the largest any
    frame carries, then vendors'); ``get(keyword, largest)`` reads the standard one."""
    b = _number(get("DiffusionBValue", True))
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
