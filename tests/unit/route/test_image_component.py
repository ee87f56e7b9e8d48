"""The image component of a series (node/route/mr_sequence.py ``image_component``) and the
``image_component`` routing field: of an SWI package only the magnitude is routed to an SWI slot,
its phase images and minimum intensity projections stay unrouted with the reason."""
from __future__ import annotations

import json
from io import BytesIO

import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from neuroread.models.spec import IMAGE_COMPONENTS, Code, InputSlot, Label, ModelSpec, MultiLabel
from neuroread.node.route.mr_sequence import PHASE_IMAGE_TYPES, PROJECTION_IMAGE_TYPES, classify, image_component
from neuroread.node.route.rules import DERIVED_FIELDS, Leaf, default_routes, explain, load_routes, match_series

MR_IMAGE = "1.2.840.10008.5.1.4.1.1.4"
ENHANCED_MR = "1.2.840.10008.5.1.4.1.1.4.1"
# A 3D spoiled gradient echo with a long TE: the SWI class from its parameters alone.
_SWI_PARAMETERS = dict(ScanningSequence="GR", SequenceVariant=["SP", "OSP"], MRAcquisitionType="3D",
                       RepetitionTime=27.0, EchoTime=20.0, FlipAngle=15.0)


def _read_back(ds: Dataset, sop_class: str) -> Dataset:
    """``ds`` written to bytes and read again, so that values are what pydicom gives a reader
    (a multi-valued ImageType as a MultiValue of strings, a single value as a string)."""
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    buffer = BytesIO()
    pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
    buffer.seek(0)
    return pydicom.dcmread(buffer)


def _swi_series(image_type: str | None, description: str = "", **more) -> Dataset:
    """A classic MR header of one series of an SWI package; ``image_type`` as a scanner writes it
    (backslash-separated), None for no ImageType at all."""
    ds = Dataset()
    ds.Modality = "MR"
    ds.SeriesInstanceUID = generate_uid()
    ds.BodyPartExamined = "HEAD"
    ds.SeriesDescription = description
    for keyword, value in {**_SWI_PARAMETERS, **more}.items():
        setattr(ds, keyword, value)
    if image_type is not None:
        ds.ImageType = image_type.split("\\")
    return _read_back(ds, MR_IMAGE)


def _enhanced_swi(component: str, frame_type: str = r"ORIGINAL\PRIMARY\M\NONE", technique: str = "NONE") -> Dataset:
    """An Enhanced MR SWI header: ComplexImageComponent at the top level (Enhanced MR Image
    module) and in each frame's MR Image Frame Type macro, as a scanner writes it."""
    ds = Dataset()
    ds.Modality = "MR"
    ds.SeriesInstanceUID = generate_uid()
    ds.BodyPartExamined = "HEAD"
    ds.SeriesDescription = "SWI"
    ds.ImageType = frame_type.split("\\")
    ds.ComplexImageComponent = component
    ds.VolumeBasedCalculationTechnique = technique
    ds.AcquisitionContrast = "T2_STAR"
    ds.MRAcquisitionType = "3D"
    ds.EchoPulseSequence = "GRADIENT"
    ds.NumberOfFrames = 3
    frames = []
    for number in range(1, 4):
        frame_type_item = Dataset()
        frame_type_item.FrameType = frame_type.split("\\")
        frame_type_item.ComplexImageComponent = component
        frame_type_item.VolumeBasedCalculationTechnique = technique
        echo = Dataset()
        echo.EffectiveEchoTime = 20.0
        content = Dataset()
        content.InStackPositionNumber = number
        frame = Dataset()
        frame.FrameContentSequence = [content]
        frame.MRImageFrameTypeSequence = [frame_type_item]
        frame.MREchoSequence = [echo]
        frames.append(frame)
    timing = Dataset()
    timing.RepetitionTime = 27.0
    timing.FlipAngle = 15.0
    shared = Dataset()
    shared.MRTimingAndRelatedParametersSequence = [timing]
    ds.SharedFunctionalGroupsSequence = [shared]
    ds.PerFrameFunctionalGroupsSequence = frames
    return _read_back(ds, ENHANCED_MR)


# ---------------------------------------------------------------- the classification
MAGNITUDES = {
    "siemens": r"DERIVED\PRIMARY\SWI\NORM\DIS2D",
    "ge": r"ORIGINAL\PRIMARY\SWAN\NONE",
    "philips": r"ORIGINAL\PRIMARY\M_SWI\M\SWI",
    "siemens-magnitude-source": r"ORIGINAL\PRIMARY\M\ND",
}
PHASES = {
    "siemens": r"ORIGINAL\PRIMARY\P\ND",
    "ge": r"ORIGINAL\PRIMARY\SWAN\PHASE",
    "philips-swi": r"ORIGINAL\PRIMARY\P_SWI\P\SWI",
    "philips-phase-map": r"ORIGINAL\PRIMARY\PHASE MAP\P\FFE",
    "phase-minip": r"DERIVED\SECONDARY\P\MNIP",  # phase wins over projection
}
PROJECTIONS = {
    "siemens": r"DERIVED\SECONDARY\MNIP",
    "siemens-swi-minip": r"DERIVED\PRIMARY\SWI\MNIP\DIS2D",  # projection wins over magnitude
    "ge": r"DERIVED\SECONDARY\MIN_IP",
    "philips": r"DERIVED\PRIMARY\MINIP\M\SWI",
    "mip": r"DERIVED\SECONDARY\MIP",
    "maxip": r"DERIVED\SECONDARY\MAXIP",
    "projection-image": r"DERIVED\SECONDARY\PROJECTION IMAGE",
}


@pytest.mark.parametrize("vendor", sorted(MAGNITUDES))
def test_vendor_swi_magnitudes_are_magnitude(vendor):
    ds = _swi_series(MAGNITUDES[vendor])
    assert image_component(ds) == "MAGNITUDE"
    assert classify(ds).sequence == "SWI"


@pytest.mark.parametrize("variant", sorted(PHASES))
def test_phase_image_types_are_phase(variant):
    ds = _swi_series(PHASES[variant])
    assert isinstance(ds.ImageType, pydicom.multival.MultiValue)  # as pydicom reads it
    assert image_component(ds) == "PHASE"


@pytest.mark.parametrize("variant", sorted(PROJECTIONS))
def test_projection_image_types_are_projection(variant):
    assert image_component(_swi_series(PROJECTIONS[variant])) == "PROJECTION"


@pytest.mark.parametrize("token", sorted(PHASE_IMAGE_TYPES | PROJECTION_IMAGE_TYPES))
def test_every_token_decides_alone(token):
    expected = "PHASE" if token in PHASE_IMAGE_TYPES else "PROJECTION"
    assert image_component(_swi_series(f"ORIGINAL\\PRIMARY\\{token}")) == expected


@pytest.mark.filterwarnings("ignore:Invalid value for VR CS")
def test_values_are_read_ignoring_case_and_spaces():
    """Tolerant when reading: a lower-case or padded value still counts."""
    assert image_component(_swi_series(r"original\primary\pha")) == "PHASE"
    assert image_component(_swi_series(r"DERIVED\SECONDARY\ minip ")) == "PROJECTION"


def test_single_valued_or_absent_image_type():
    assert image_component(_swi_series("PHASE")) == "PHASE"  # one value: pydicom gives a str
    assert image_component(_swi_series(None)) == "MAGNITUDE"
    assert image_component(_swi_series(r"ORIGINAL\PRIMARY")) == "MAGNITUDE"


@pytest.mark.parametrize("description", ["SWI_minIP", "SWI phase", "Pha_Images", "mIP", "swi_mag"])
def test_misleading_description_never_decides(description):
    assert image_component(_swi_series(MAGNITUDES["siemens"], description)) == "MAGNITUDE"
    assert image_component(_swi_series(PHASES["siemens"], description)) == "PHASE"
    assert image_component(_swi_series(PROJECTIONS["siemens"], description)) == "PROJECTION"


@pytest.mark.parametrize("component, frame_type, technique, expected", [
    ("MAGNITUDE", r"ORIGINAL\PRIMARY\M\NONE", "NONE", "MAGNITUDE"),
    ("PHASE", r"ORIGINAL\PRIMARY\M\NONE", "NONE", "PHASE"),  # ComplexImageComponent alone decides
    ("MIXED", r"ORIGINAL\PRIMARY\MIXED\NONE", "NONE", "PHASE"),  # magnitude and phase frames in one series
    ("MAGNITUDE", r"DERIVED\PRIMARY\M\NONE", "MIN_IP", "PROJECTION"),
    ("PHASE", r"DERIVED\PRIMARY\M\NONE", "MIN_IP", "PHASE"),
])
def test_enhanced_mr_complex_image_component_and_projection(component, frame_type, technique, expected):
    ds = _enhanced_swi(component, frame_type, technique)
    assert image_component(ds) == expected
    assert classify(ds).sequence == "SWI"
    del ds.ComplexImageComponent, ds.VolumeBasedCalculationTechnique  # then the per-frame macros decide
    assert image_component(ds) == expected


def test_enhanced_frame_type_phase_token():
    ds = _enhanced_swi("MAGNITUDE")
    del ds.ImageType, ds.ComplexImageComponent
    for frame in ds.PerFrameFunctionalGroupsSequence:
        item = frame.MRImageFrameTypeSequence[0]
        item.FrameType = ["ORIGINAL", "PRIMARY", "P", "NONE"]
        del item.ComplexImageComponent
    assert image_component(ds) == "PHASE"


# ---------------------------------------------------------------- routing
_CODE = Code("404684003", "SCT", "Clinical finding")
_SWI_SPEC = ModelSpec("swi-test", "0.1.0", "test",
                      (InputSlot("swi", "MR", ("SWI",), ("HEAD", "BRAIN"), 5, image_components=("MAGNITUDE",)),),
                      (MultiLabel((Label("cmb", _CODE),)),))


def test_image_component_is_a_derived_field():
    assert "image_component" in DERIVED_FIELDS
    leaf = Leaf("image_component", "in", ("MAGNITUDE",))
    assert leaf.describe() == "image_component in ['MAGNITUDE']"


def test_default_route_takes_the_swi_magnitude_only():
    (route,) = default_routes(_SWI_SPEC, ["pacs"])
    assert Leaf("image_component", "in", ("MAGNITUDE",)) in route.match.children
    magnitude = match_series(_swi_series(MAGNITUDES["siemens"], "SWI_minIP"), 72, [route])
    assert magnitude.routed, explain(magnitude)
    phase = match_series(_swi_series(PHASES["siemens"], "SWI"), 72, [route])
    minip = match_series(_swi_series(PROJECTIONS["siemens"], "SWI"), 72, [route])
    for decision, component in ((phase, "PHASE"), (minip, "PROJECTION")):
        assert not decision.routed
        assert decision.sequence.sequence == "SWI"  # the class alone would have routed it
        expected = f"image_component is '{component}', not one of ['MAGNITUDE']"
        assert expected in decision.reason
        text = explain(decision)
        assert expected in text and "result: UNROUTED" in text
        assert "image_component in ['MAGNITUDE']" in text  # the rule as explain shows it


def test_slot_without_image_components_routes_every_component():
    (route,) = default_routes(ModelSpec("any-swi", "0.1.0", "test", (InputSlot("swi", "MR", ("SWI",)),),
                                        (MultiLabel((Label("cmb", _CODE),)),)))
    assert all(leaf.field != "image_component" for leaf in route.match.children)
    for image_type in (MAGNITUDES["ge"], PHASES["ge"], PROJECTIONS["ge"]):
        assert match_series(_swi_series(image_type), 10, [route]).routed


def test_configured_route_on_image_component():
    (route,) = load_routes([{"name": "swi-phase", "model": "m", "slot": "s",
                             "match": {"all": [{"sequence": "SWI"}, {"image_component": "phase"}]}}])
    assert match_series(_swi_series(PHASES["philips-swi"]), 10, [route]).routed
    decision = match_series(_swi_series(MAGNITUDES["philips"]), 10, [route])
    assert "image_component is 'MAGNITUDE', not 'phase'" in decision.reason


def test_cmb_phantom_swi_series_are_magnitudes_whatever_their_description(phantom_sets):
    """The phantoms describe some SWI magnitudes misleadingly (e.g. "SWI_minIP") on purpose."""
    routes = default_routes(_SWI_SPEC)
    seen = 0
    for truth_file in sorted(phantom_sets["cmb-svd"].glob("*/truth.json")):
        truth = json.loads(truth_file.read_text())
        for entry in truth["series"].values():
            files = sorted((truth_file.parent / entry["folder"]).glob("*.dcm"))
            ds = pydicom.dcmread(files[0], stop_before_pixels=True)
            assert image_component(ds) == "MAGNITUDE", (ds.SeriesDescription, list(ds.ImageType))
            if entry["kind"] == "SWI":
                decision = match_series(ds, len(files), routes)
                assert decision.routed, explain(decision)
                seen += 1
    assert seen >= 1


# ---------------------------------------------------------------- the slot
def test_input_slot_validates_image_components():
    assert InputSlot("swi", "MR", ("SWI",), image_components=IMAGE_COMPONENTS).image_components == IMAGE_COMPONENTS
    with pytest.raises(ValueError, match=r"InputSlot 'swi': unknown image components \['REAL'\]"):
        InputSlot("swi", "MR", ("SWI",), image_components=("MAGNITUDE", "REAL"))
    with pytest.raises(ValueError, match="InputSlot 'swi': image_components must be a tuple"):
        InputSlot("swi", "MR", ("SWI",), image_components="MAGNITUDE")
