"""The MR sequence classifier on Enhanced MR headers (node/sequence.py): the parameters live in
the shared and per-frame functional groups, not at the top level, and there is no
ScanningSequence, EchoTime, InversionTime or RepetitionTime at the top level."""
from __future__ import annotations

from io import BytesIO

import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from neuroread.models.spec import Code, InputSlot, Label, ModelSpec, MultiLabel
from neuroread.node.route.mr_sequence import HeaderReader, classify
from neuroread.node.route.rules import Route, default_routes, explain, match_series

ENHANCED_MR = "1.2.840.10008.5.1.4.1.1.4.1"
LEGACY_CONVERTED_MR = "1.2.840.10008.5.1.4.1.1.4.4"
TIMING, ECHO, MODIFIER = "MRTimingAndRelatedParametersSequence", "MREchoSequence", "MRModifierSequence"
IMAGING, DIFFUSION, FRAME_TYPE = "MRImagingModifierSequence", "MRDiffusionSequence", "MRImageFrameTypeSequence"


def _item(attrs: dict) -> Dataset:
    item = Dataset()
    for keyword, value in attrs.items():
        setattr(item, keyword, value)
    return item


def _enhanced(top: dict, shared: dict[str, dict], frames: list[dict[str, dict]],
              sop_class: str = ENHANCED_MR) -> Dataset:
    """An Enhanced MR header as a scanner writes it, written to bytes and read back with pydicom.

    ``top``: top-level attributes (Enhanced MR Image and MR Pulse Sequence modules); ``shared``
    and each of ``frames``: functional group macro keyword -> the attributes of its one item."""
    ds = Dataset()
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = generate_uid()
    ds.SeriesInstanceUID = "1.2.826.0.1.3680043.8.498.2"
    ds.Modality = "MR"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "NONE"]
    ds.NumberOfFrames = len(frames)
    for keyword, value in top.items():
        setattr(ds, keyword, value)
    group = Dataset()
    for macro, attrs in shared.items():
        setattr(group, macro, [_item(attrs)])
    ds.SharedFunctionalGroupsSequence = [group]
    per_frame = []
    for number, macros in enumerate(frames, start=1):
        frame = Dataset()
        frame.FrameContentSequence = [_item({"InStackPositionNumber": number, "DimensionIndexValues": [1, number]})]
        for macro, attrs in macros.items():
            setattr(frame, macro, [_item(attrs)])
        per_frame.append(frame)
    ds.PerFrameFunctionalGroupsSequence = per_frame
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    buffer = BytesIO()
    pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
    buffer.seek(0)
    return pydicom.dcmread(buffer)


def _frames(n: int, contrast: str, echo_ms: float, **more: dict) -> list[dict[str, dict]]:
    """``n`` frames with the MR Image Frame Type and MR Echo macros (and ``more`` macros)."""
    frame_type = {"FrameType": ["ORIGINAL", "PRIMARY", "M", "NONE"], "AcquisitionContrast": contrast,
                  "PixelPresentation": "MONOCHROME", "VolumetricProperties": "VOLUME",
                  "VolumeBasedCalculationTechnique": "NONE", "ComplexImageComponent": "MAGNITUDE"}
    return [{FRAME_TYPE: frame_type, ECHO: {"EffectiveEchoTime": echo_ms}, **more} for _ in range(n)]


def _pulse(echo: str, acquisition: str = "2D", **more) -> dict:
    """The MR Pulse Sequence module, with no fat suppression, steady state or echo planar unless ``more`` says."""
    return {"PulseSequenceName": "", "MRAcquisitionType": acquisition, "EchoPulseSequence": echo,
            "MultipleSpinEcho": "NO", "MultiPlanarExcitation": "NO", "PhaseContrast": "NO",
            "TimeOfFlightContrast": "NO", "SteadyStatePulseSequence": "NONE", "EchoPlanarPulseSequence": "NO",
            "SaturationRecovery": "NO", "SpectrallySelectedSuppression": "NONE", **more}


def _modifier(inversion_ms: float | None = None, spoiling: str = "NONE", excitation: str = "NONE") -> dict:
    attrs = {"InversionRecovery": "NO" if inversion_ms is None else "YES", "FlowCompensation": "NONE",
             "Spoiling": spoiling, "T2Preparation": "NO", "SpectrallySelectedExcitation": excitation,
             "SpatialPresaturation": "NONE", "PartialFourier": "NO", "ParallelAcquisition": "NO"}
    if inversion_ms is not None:
        attrs["InversionTimes"] = [inversion_ms]
    return attrs


def _shared(tr: float, flip: float, train: int, modifier: dict, mt: str = "NONE") -> dict[str, dict]:
    return {TIMING: {"RepetitionTime": tr, "FlipAngle": flip, "EchoTrainLength": train},
            MODIFIER: modifier,
            IMAGING: {"MagnetizationTransfer": mt, "BloodSignalNulling": "NO", "Tagging": "NONE",
                      "TransmitterFrequency": 123.2, "PixelBandwidth": 200.0}}


def flair_3d() -> Dataset:
    """A 3D FLAIR (SPACE-like): spin echo, inversion 1800 ms, TE per frame; its names mislead."""
    return _enhanced({**_pulse("SPIN", "3D", PulseSequenceName="*tfl3d1_16"), "AcquisitionContrast": "T2",
                      "SeriesDescription": "t1_mprage", "BodyPartExamined": "HEAD"},
                     _shared(5000, 120, 250, _modifier(1800)), _frames(24, "FLUID_ATTENUATED", 387))


def mprage() -> Dataset:
    return _enhanced({**_pulse("GRADIENT", "3D", SteadyStatePulseSequence="LONGITUDINAL"), "AcquisitionContrast": "T1"},
                     _shared(2300, 9, 1, _modifier(900, spoiling="RF")), _frames(4, "T1", 2.3))


def t1_spin_echo() -> Dataset:
    return _enhanced({**_pulse("SPIN"), "AcquisitionContrast": "T1"}, _shared(550, 90, 3, _modifier()),
                     _frames(4, "T1", 12))


def t1_spoiled_gradient_echo() -> Dataset:
    return _enhanced({**_pulse("GRADIENT", "3D", SteadyStatePulseSequence="LONGITUDINAL"), "AcquisitionContrast": "T1"},
                     _shared(8.2, 12, 1, _modifier(spoiling="RF_AND_GRADIENT")), _frames(4, "T1", 3.2))


def t2_tse() -> Dataset:
    return _enhanced({**_pulse("SPIN"), "AcquisitionContrast": "T2"}, _shared(4500, 150, 15, _modifier()),
                     _frames(4, "T2", 100))


def t2_fat_suppressed() -> Dataset:
    return _enhanced({**_pulse("SPIN", SpectrallySelectedSuppression="FAT"), "AcquisitionContrast": "T2"},
                     _shared(3800, 150, 17, _modifier()), _frames(4, "T2", 80))


def t2_water_excitation() -> Dataset:
    return _enhanced({**_pulse("SPIN"), "AcquisitionContrast": "T2"},
                     _shared(3800, 150, 17, _modifier(excitation="WATER")), _frames(4, "T2", 80))


def stir() -> Dataset:
    return _enhanced({**_pulse("SPIN"), "AcquisitionContrast": "STIR"}, _shared(4000, 150, 13, _modifier(160)),
                     _frames(4, "STIR", 40))


def swi() -> Dataset:
    """3D gradient echo, TE 20 ms, flip 15°; PulseSequenceName fl3d would hint T1 if it were read."""
    return _enhanced({**_pulse("GRADIENT", "3D", PulseSequenceName="*fl3d1r", SteadyStatePulseSequence="LONGITUDINAL"),
                      "AcquisitionContrast": "T2_STAR"},
                     _shared(28, 15, 1, _modifier(spoiling="RF")), _frames(4, "T2_STAR", 20))


def dwi() -> Dataset:
    """Spin echo EPI; the first frame is b=0, three frames b=1000 (per-frame MR Diffusion Sequence)."""
    frames = _frames(4, "DIFFUSION", 89)
    for frame, b in zip(frames, (0.0, 1000.0, 1000.0, 1000.0)):
        frame[DIFFUSION] = {"DiffusionBValue": b, "DiffusionDirectionality": "NONE" if b == 0 else "ISOTROPIC"}
    return _enhanced({**_pulse("SPIN", EchoPlanarPulseSequence="YES", SpectrallySelectedSuppression="FAT"),
                      "AcquisitionContrast": "DIFFUSION"},
                     _shared(5200, 90, 1, _modifier()), frames)


# (builder, class, substrings the reasons must hold: the rule and the parameters it read)
CASES = {
    "flair_3d": (flair_3d, "FLAIR", ["InversionRecovery YES", "TI 1800 ms >= 1400 ms",
                                     "InversionTimes (shared MRModifierSequence)",
                                     "EffectiveEchoTime (per-frame MREchoSequence, 24 of 24 frames)"]),
    "mprage": (mprage, "T1", ["InversionRecovery YES", "TI 900 ms", "gradient echo (MPRAGE-like)",
                              "EchoPulseSequence (top level)", "InversionTimes (shared MRModifierSequence)"]),
    "t1_spin_echo": (t1_spin_echo, "T1", ["spin echo with TR 550 ms, TE 12 ms",
                                          "RepetitionTime (shared MRTimingAndRelatedParametersSequence)",
                                          "EffectiveEchoTime (per-frame MREchoSequence"]),
    "t1_spoiled_gradient_echo": (t1_spoiled_gradient_echo, "T1", [
        "spoiled gradient echo with TR 8.2 ms, TE 3.2 ms", "Spoiling (shared MRModifierSequence)",
        "FlipAngle (shared MRTimingAndRelatedParametersSequence)"]),
    "t2_tse": (t2_tse, "T2", ["spin echo with TR 4500 ms, TE 100 ms", "no fat suppression", "EchoPulseSequence"]),
    "t2_fat_suppressed": (t2_fat_suppressed, "T2FS", ["fat suppression (SpectrallySelectedSuppression)",
                                                      "SpectrallySelectedSuppression (top level)"]),
    "t2_water_excitation": (t2_water_excitation, "T2FS", ["fat suppression (SpectrallySelectedExcitation WATER)"]),
    "stir": (stir, "STIR", ["InversionRecovery YES", "TI 160 ms <= 400 ms", "InversionTimes (shared MRModifierSequence)"]),
    "swi": (swi, "SWI", ["3D gradient echo with TE 20 ms >= 15 ms and flip 15°",
                         "MRAcquisitionType (top level)", "EffectiveEchoTime (per-frame MREchoSequence"]),
    "dwi": (dwi, "DWI", ["diffusion b-value 1000 s/mm² in DiffusionBValue",
                         "DiffusionBValue (per-frame MRDiffusionSequence, largest in 4 of 4 frames)"]),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_enhanced_mr_is_classified_from_its_functional_groups(name):
    build, expected, words = CASES[name]
    ds = build()
    for keyword in ("EchoTime", "RepetitionTime", "InversionTime", "ScanningSequence", "FlipAngle"):
        assert keyword not in ds
    result = classify(ds)
    assert (result.sequence, result.basis) == (expected, "parameters"), result
    text = " | ".join(result.reasons)
    for word in words:
        assert word in text, (word, result.reasons)
    assert result.reasons[-1].startswith("read from the Enhanced MR header: ")
    assert "gradient echo without EchoTime" not in text and "SequenceName '" not in text


def test_empty_top_level_attributes_do_not_hide_the_functional_groups():
    """Some converters leave the classic type 2 attributes empty at the top level of a multi-frame
    header; the classifier used to stop there ("gradient echo without EchoTime") and guess T1
    from PulseSequenceName *fl3d1r."""
    ds = swi()
    ds.EchoTime, ds.RepetitionTime, ds.InversionTime, ds.ScanningSequence = "", "", "", ""
    result = classify(ds)
    assert (result.sequence, result.basis) == ("SWI", "parameters"), result
    assert "EffectiveEchoTime (per-frame MREchoSequence, 4 of 4 frames)" in result.reasons[-1]


def test_per_frame_value_is_the_one_most_frames_carry():
    """An odd first frame (TE 10 ms) does not speak for the series (TE 100 ms in 3 of 4 frames)."""
    ds = t2_tse()
    ds.PerFrameFunctionalGroupsSequence[0].MREchoSequence[0].EffectiveEchoTime = 10.0
    result = classify(ds)
    assert result.sequence == "T2" and "TE 100 ms" in result.reasons[0]
    assert "EffectiveEchoTime (per-frame MREchoSequence, 3 of 4 frames)" in result.reasons[-1]


def test_ties_go_to_the_earliest_frame_and_b_value_is_the_largest():
    ds = t2_tse()
    for frame, te in zip(ds.PerFrameFunctionalGroupsSequence, (30.0, 90.0, 30.0, 90.0)):
        frame.MREchoSequence[0].EffectiveEchoTime = te
    found = HeaderReader(ds).find("EffectiveEchoTime")
    assert (found.value, found.where) == (30.0, "per-frame MREchoSequence, 2 of 4 frames")
    b = HeaderReader(dwi()).find("DiffusionBValue", largest=True)
    assert b.value == 1000.0 and "largest" in b.where
    assert HeaderReader(dwi()).find("DiffusionBValue").value == 1000.0  # the most frames too
    assert HeaderReader(t2_tse()).find("DiffusionBValue") is None


def test_top_level_then_shared_then_per_frame():
    ds = t2_tse()
    ds.PerFrameFunctionalGroupsSequence[0].MRTimingAndRelatedParametersSequence = [_item({"RepetitionTime": 500.0})]
    reader = HeaderReader(ds)
    assert (reader.find("RepetitionTime").value, reader.find("RepetitionTime").where) == (
        4500.0, "shared MRTimingAndRelatedParametersSequence")
    assert reader.find("EchoPulseSequence").where == "top level"
    ds.RepetitionTime = 600.0  # a top-level value wins, as in a classic header
    assert HeaderReader(ds).find("RepetitionTime").value == 600.0
    ds.RepetitionTime = ""  # empty counts as absent
    assert HeaderReader(ds).find("RepetitionTime").value == 4500.0


def test_dwi_from_b0_first_frame_alone_and_from_acquisition_contrast():
    ds = dwi()
    for frame in ds.PerFrameFunctionalGroupsSequence:
        frame.MRDiffusionSequence[0].DiffusionBValue = 0.0  # a b=0-only series
    result = classify(ds)
    assert result.sequence == "DWI" and "echo planar with b-value 0" in result.reasons[0]
    for frame in ds.PerFrameFunctionalGroupsSequence:
        del frame.MRDiffusionSequence
    result = classify(ds)
    assert result.sequence == "DWI" and result.reasons[0] == "AcquisitionContrast DIFFUSION"


@pytest.mark.parametrize("echo", ["SPIN", "GRADIENT"])
def test_echo_planar_without_diffusion_is_unknown(echo):
    """BOLD or perfusion EPI: clear parameters that fit no class, whatever the echo."""
    ds = _enhanced({**_pulse(echo, EchoPlanarPulseSequence="YES"), "AcquisitionContrast": "UNKNOWN"},
                   _shared(2000, 90, 1, _modifier()), _frames(4, "UNKNOWN", 30))
    result = classify(ds)
    assert (result.sequence, result.basis) == ("UNKNOWN", "parameters")
    assert "echo planar without a diffusion b-value" in result.reasons[0]


def test_refocused_steady_state_gradient_echo_is_not_called_t1():
    """TrueFISP: TR 4 ms, TE 2 ms would pass the spoiled-T1 rule; SteadyStatePulseSequence says otherwise."""
    ds = _enhanced({**_pulse("GRADIENT", SteadyStatePulseSequence="FREE_PRECESSION", PulseSequenceName="*tfl2d1"),
                    "AcquisitionContrast": "MIXED"}, _shared(4.0, 60, 1, _modifier()), _frames(4, "MIXED", 2.0))
    result = classify(ds)
    assert (result.sequence, result.basis) == ("UNKNOWN", "parameters")
    assert "SteadyStatePulseSequence FREE_PRECESSION" in result.reasons[0]


def test_acquisition_contrast_decides_only_when_the_parameters_do_not():
    ds = flair_3d()
    del ds.SharedFunctionalGroupsSequence[0].MRModifierSequence[0].InversionTimes
    ds.AcquisitionContrast = "FLUID_ATTENUATED"
    result = classify(ds)
    assert (result.sequence, result.basis) == ("FLAIR", "parameters")
    assert "no InversionTime" in result.reasons[0] and "AcquisitionContrast FLUID_ATTENUATED" in result.reasons[1]
    ds = t2_tse()
    ds.AcquisitionContrast = "T1"  # wrong, and the parameters are complete
    assert classify(ds).sequence == "T2" and "AcquisitionContrast" not in classify(ds).reasons[0]


def test_legacy_converted_mr_reads_the_unassigned_converted_attributes():
    classic = {"ScanningSequence": ["SE", "IR"], "SequenceVariant": ["SK", "SP", "MP"], "ScanOptions": "IR",
               "EchoTime": 90.0, "InversionTime": 2500.0, "RepetitionTime": 9000.0, "FlipAngle": 150.0}
    ds = _enhanced({"MRAcquisitionType": "2D"}, {"UnassignedSharedConvertedAttributesSequence": classic},
                   [{} for _ in range(3)], sop_class=LEGACY_CONVERTED_MR)
    result = classify(ds)
    assert result.sequence == "FLAIR" and "ScanningSequence IR" in result.reasons[0]
    assert "InversionTime (shared UnassignedSharedConvertedAttributesSequence)" in result.reasons[-1]


def test_classic_reasons_name_no_enhanced_source():
    ds = Dataset()
    ds.Modality = "MR"
    ds.ScanningSequence, ds.RepetitionTime, ds.EchoTime, ds.InversionTime = ["SE", "IR"], 9000, 90, 2500
    assert classify(ds).reasons == ("inversion recovery (ScanningSequence IR) with TI 2500 ms >= 1400 ms: "
                                    "fluid nulled (FLAIR)",)


def test_header_reader_is_validated():
    with pytest.raises(ValueError, match="HeaderReader needs a pydicom Dataset, got dict"):
        HeaderReader({"EchoTime": 90})
    with pytest.raises(ValueError, match="keyword must be a non-empty string"):
        HeaderReader(Dataset()).find("")


_CODE = Code("404684003", "SCT", "Clinical finding")
_MS_SPEC = ModelSpec("ms-test", "0.1.0", "test", (InputSlot("flair", "MR", ("FLAIR",), ("HEAD", "BRAIN"), 5),),
                     (MultiLabel((Label("ms", _CODE),)),))


def test_enhanced_flair_routes_through_match_series():
    """One multi-frame instance of 24 frames: slices count frames, the class comes from the groups."""
    ds = flair_3d()
    routes = [*default_routes(_MS_SPEC, ["pacs"]),
              Route.from_dict({"name": "t1-only", "model": "m", "slot": "s", "match": {"sequence": "T1"}})]
    decision = match_series(ds, 1, routes)
    assert [(r.model, r.slot) for r in decision.matched] == [("ms-test", "flair")], explain(decision)
    assert decision.sequence.sequence == "FLAIR" and decision.sequence.basis == "parameters"
    text = explain(decision)
    assert "sequence: FLAIR (from parameters)" in text and "TI 1800 ms >= 1400 ms" in text
    assert "InversionTimes (shared MRModifierSequence)" in text
    assert "'t1_mprage' suggests T1; ignored" in text
