"""Route stage: the MR sequence classifier and the routing rules (node/sequence.py, node/route.py)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
import yaml
from pydicom.dataset import Dataset

from neuroread.models.spec import Code, InputSlot, Label, ModelSpec, MultiLabel
from neuroread.node.route.mr_sequence import SequenceClass, classify
from neuroread.node.route.rules import (
    AllOf,
    Leaf,
    Route,
    default_routes,
    explain,
    explain_path,
    load_routes,
    match_series,
    read_series_headers,
)
from neuroread.training.phantoms.acquisition import mr_attributes
from neuroread.training.phantoms.geometry import Grid
from neuroread.training.phantoms.study import Scanner
from support.tiny_model import SPEC as TINY_SPEC

MR_TASKS = ("ms-csvd", "cmb-svd", "axspa-sij", "ad-lrp")


def _header(modality: str = "MR", **attrs) -> Dataset:
    ds = Dataset()
    ds.Modality = modality
    ds.SeriesInstanceUID = "1.2.826.0.1.3680043.8.498.1"
    for keyword, value in attrs.items():
        setattr(ds, keyword, value)
    return ds


def _phantom_series(set_dir: Path):
    """(truth kind, first instance's header, instance count) for every series of a phantom set."""
    for truth_file in sorted(set_dir.glob("*/truth.json")):
        truth = json.loads(truth_file.read_text())
        for entry in truth["series"].values():
            files = sorted((truth_file.parent / entry["folder"]).glob("*.dcm"))
            yield entry["kind"], pydicom.dcmread(files[0], stop_before_pixels=True), len(files)


# ---------------------------------------------------------------- classifier: phantoms
@pytest.mark.parametrize("task", MR_TASKS)
def test_every_phantom_mr_series_is_classified_from_its_parameters(phantom_sets, task):
    seen = 0
    for kind, ds, _ in _phantom_series(phantom_sets[task]):
        result = classify(ds)
        assert (result.sequence, result.basis) == (kind, "parameters"), (ds.SeriesDescription, result)
        assert result.reasons
        seen += 1
    assert seen >= 4


@pytest.mark.parametrize("task", MR_TASKS)
def test_empty_or_misleading_description_never_overrides_parameters(phantom_sets, task):
    for kind, ds, _ in _phantom_series(phantom_sets[task]):
        for text in ("", "T1 cor", "ax FLAIR", "SWI minIP", "t2_stir_cor", "DWI b1000"):
            ds.SeriesDescription = text
            result = classify(ds)
            assert result.sequence == kind, (text, result)
        ds.SeriesDescription = "T1 cor" if kind != "T1" else "FLAIR"
        assert any("ignored" in r for r in classify(ds).reasons)


_GRID = Grid((4, 8, 8), (1.0, 1.0), 1.0, 1.0, np.zeros(3), np.array([1.0, 0, 0]), np.array([0, 1.0, 0]))
_SCANNERS = {
    "siemens": Scanner("SIEMENS", "Prisma", "syngo MR XA30", "MRC1", 3.0, "siemens"),
    "ge": Scanner("GE MEDICAL SYSTEMS", "SIGNA Premier", "MR29", "GEMR1", 1.5, "ge"),
    "philips": Scanner("Philips Medical Systems", "Ingenia", "5.7", "PHMR1", 3.0, "philips"),
}
_PHANTOM_SEQUENCES = {"FLAIR": "FLAIR", "SWI": "SWI", "T1_MPRAGE": "T1", "T1_TSE": "T1", "STIR": "STIR", "T2_SPAIR": "T2FS"}


@pytest.mark.parametrize("style", sorted(_SCANNERS))
@pytest.mark.parametrize("sequence", sorted(_PHANTOM_SEQUENCES))
def test_each_vendors_attributes_classify(style, sequence):
    """Every vendor habit the phantoms write (Philips' FS on FLAIR, TR 8 ms MPRAGE…), several draws."""
    for seed in range(6):
        attrs, image_type = mr_attributes(np.random.default_rng(seed), sequence, _SCANNERS[style], _GRID)
        ds = _header(ImageType=image_type, SeriesDescription="", **attrs)
        assert classify(ds).sequence == _PHANTOM_SEQUENCES[sequence], (style, sequence, seed, attrs)


# ---------------------------------------------------------------- classifier: hand-made headers
_EPI = dict(ScanningSequence="EP", SequenceVariant=["SK", "SP"], ScanOptions=["PFP", "FS"], MRAcquisitionType="2D",
            RepetitionTime=5200, EchoTime=89, FlipAngle=90, ImageType=["ORIGINAL", "PRIMARY", "M", "ND"])


def _private(ds: Dataset, group: int, creator: str, offset: int, vr: str, value) -> Dataset:
    ds.private_block(group, creator, create=True).add_new(offset, vr, value)
    return ds


@pytest.mark.parametrize("make, source", [
    (lambda: _header(DiffusionBValue=1000.0, **_EPI), "DiffusionBValue"),
    (lambda: _private(_header(SequenceName="*ep_b1000t", **_EPI), 0x0019, "SIEMENS MR HEADER", 0x0C, "IS", "1000"), "Siemens"),
    (lambda: _private(_header(**_EPI), 0x0043, "GEMS_PARM_01", 0x39, "IS", ["1000001000", "8", "0", "0"]), "GE"),
    (lambda: _private(_header(**_EPI), 0x2001, "Philips Imaging DD 001", 0x03, "FL", 800.0), "Philips"),
])
def test_dwi_from_b_values_of_each_vendor(make, source):
    result = classify(make())
    assert result.sequence == "DWI" and result.basis == "parameters"
    assert source in result.reasons[0]
    assert "s/mm²" in result.reasons[0] and ("1000" in result.reasons[0] or "800" in result.reasons[0])


def test_dwi_from_adc_image_type_and_from_b0_echo_planar():
    adc = _header(**{**_EPI, "ImageType": ["DERIVED", "PRIMARY", "DIFFUSION", "ADC"]})
    assert classify(adc).sequence == "DWI"
    b0 = _header(DiffusionBValue=0.0, **_EPI)
    assert classify(b0).sequence == "DWI"
    bold = _header(**_EPI, SeriesDescription="DWI", SequenceName="epfid2d1_64")  # no diffusion evidence at all
    result = classify(bold)
    assert (result.sequence, result.basis) == ("UNKNOWN", "parameters")


_TSE = dict(ScanningSequence="SE", SequenceVariant=["SK", "SP", "OSP"], MRAcquisitionType="2D", FlipAngle=150,
            ImageType=["ORIGINAL", "PRIMARY", "M", "NORM"])


@pytest.mark.parametrize("attrs, expected", [
    (dict(RepetitionTime=4000, EchoTime=100, ScanOptions="SAT1", **_TSE), "T2"),
    (dict(RepetitionTime=5000, EchoTime=85, ScanOptions="FAST_GEMS", **_TSE), "T2"),
    (dict(RepetitionTime=3000, EchoTime=30, ScanOptions="", **_TSE), "PD"),
    (dict(RepetitionTime=3000, EchoTime=35, ScanOptions=["FS"], **_TSE), "PD"),  # PD fat-sat stays PD
    (dict(RepetitionTime=3500, EchoTime=70, ScanOptions=["FS"], **_TSE), "T2FS"),
    (dict(RepetitionTime=3500, EchoTime=70, ScanOptions="", SequenceName="TSE_SPAIR", **_TSE), "T2FS"),
    (dict(RepetitionTime=600, EchoTime=10, ScanOptions="", **_TSE), "T1"),
    (dict(RepetitionTime=4000, EchoTime=90, ScanOptions="", **{**_TSE, "ImageType": ["DERIVED", "PRIMARY", "DIXON", "WATER"]}), "T2FS"),
    # GE 3D spoiled gradient echo (FSPGR) and a Philips T1 TFE without IR in ScanningSequence
    (dict(ScanningSequence="GR", SequenceVariant=["SS", "SP"], MRAcquisitionType="3D", RepetitionTime=8.2,
          EchoTime=3.2, FlipAngle=12, ImageType=["ORIGINAL", "PRIMARY", "OTHER"]), "T1"),
    (dict(ScanningSequence="GR", SequenceVariant=["MP"], MRAcquisitionType="3D", RepetitionTime=8.1,
          EchoTime=3.7, FlipAngle=8, ImageType=["ORIGINAL", "PRIMARY", "OTHER"]), "T1"),
    # 3D gradient echo with long TE, no SWI ImageType (e.g. a SWI magnitude exported plain)
    (dict(ScanningSequence="GR", SequenceVariant="SP", MRAcquisitionType="3D", RepetitionTime=35,
          EchoTime=25, FlipAngle=15, ImageType=["ORIGINAL", "PRIMARY", "M"]), "SWI"),
    # T1-FLAIR (spin echo IR with intermediate TI) and a 3D FLAIR (SPACE)
    (dict(ScanningSequence=["SE", "IR"], SequenceVariant="SK", RepetitionTime=2000, EchoTime=9,
          InversionTime=860, FlipAngle=90), "T1"),
    (dict(ScanningSequence="SE", SequenceVariant=["SK", "SP", "MP"], ScanOptions="IR", MRAcquisitionType="3D",
          RepetitionTime=5000, EchoTime=390, InversionTime=1800, FlipAngle=120), "FLAIR"),
])
def test_hand_made_headers(attrs, expected):
    result = classify(_header(**attrs))
    assert result.sequence == expected, result
    assert result.basis == "parameters"


def test_misleading_description_is_noted_but_ignored():
    result = classify(_header(RepetitionTime=4000, EchoTime=100, SeriesDescription="t1_tse_tra", **_TSE))
    assert result.sequence == "T2"
    assert any("'t1_tse_tra' suggests T1; ignored" in r for r in result.reasons)


def test_enhanced_mr_reads_functional_groups():
    ds = _header(ImageType=["ORIGINAL", "PRIMARY", "M", "NONE"], EchoPulseSequence="SPIN", InversionRecovery="YES",
                 MRAcquisitionType="3D")
    timing = Dataset()
    timing.RepetitionTime = 5000.0
    timing.FlipAngle = 120.0
    echo = Dataset()
    echo.EffectiveEchoTime = 390.0
    modifier = Dataset()
    modifier.InversionTimes = [1800.0]
    shared = Dataset()
    shared.MRTimingAndRelatedParametersSequence = [timing]
    shared.MREchoSequence = [echo]
    shared.MRModifierSequence = [modifier]
    ds.SharedFunctionalGroupsSequence = [shared]
    assert classify(ds).sequence == "FLAIR"
    frame = Dataset()
    diffusion = Dataset()
    diffusion.DiffusionBValue = 1000.0
    frame.MRDiffusionSequence = [diffusion]
    ds.PerFrameFunctionalGroupsSequence = [frame]
    assert classify(ds).sequence == "DWI"


def test_weak_evidence_only_when_parameters_are_missing():
    by_name = classify(_header(SequenceName="*swi3d1r", SeriesDescription="T1 ax"))
    assert (by_name.sequence, by_name.basis) == ("SWI", "sequence name")
    by_text = classify(_header(SeriesDescription="AX FLAIR"))
    assert (by_text.sequence, by_text.basis) == ("FLAIR", "description")
    nothing = classify(_header())
    assert (nothing.sequence, nothing.basis) == ("UNKNOWN", "none")
    assert "ScanningSequence is absent" in nothing.reasons[0]
    # 2D T2* gradient echo: clear parameters that fit no class; the description does not decide
    t2star = classify(_header(ScanningSequence="GR", SequenceVariant="SP", MRAcquisitionType="2D",
                              RepetitionTime=700, EchoTime=20, FlipAngle=20, SeriesDescription="SWI"))
    assert (t2star.sequence, t2star.basis) == ("UNKNOWN", "parameters")
    ct = classify(_header("CT", SeriesDescription="FLAIR"))
    assert ct.sequence == "UNKNOWN" and "not MR" in ct.reasons[0]


def test_sequence_class_is_validated():
    with pytest.raises(ValueError, match="sequence must be one of"):
        SequenceClass("T3", "parameters", ())
    with pytest.raises(ValueError, match="basis must be one of"):
        SequenceClass("T1", "guess", ())


# ---------------------------------------------------------------- rules: operators and logic
def _route(match, name="r", **extra) -> Route:
    return Route.from_dict({"name": name, "model": "m", "slot": "s", "match": match, **extra})


def _matches(match, ds: Dataset, instances: int = 20) -> bool:
    return match_series(ds, instances, [_route(match)]).routed


_FLAIR = dict(ScanningSequence=["SE", "IR"], SequenceVariant=["SK", "SP", "MP"], ScanOptions="IR", MRAcquisitionType="2D",
              RepetitionTime=9000, EchoTime=90, InversionTime=2500, FlipAngle=150, BodyPartExamined="HEAD",
              ImageType=["ORIGINAL", "PRIMARY", "M", "ND"], SeriesDescription="t2_tirm_tra_dark-fluid",
              MagneticFieldStrength=1.5, Manufacturer="SIEMENS")


def test_exact_value_ignores_case_and_compares_numbers_numerically():
    ds = _header(**_FLAIR)
    assert _matches({"Manufacturer": "Siemens"}, ds)
    assert _matches({"MagneticFieldStrength": 1.5}, ds)
    assert _matches({"MagneticFieldStrength": {"equals": "1.5"}}, ds)
    assert not _matches({"MagneticFieldStrength": 3}, ds)
    assert not _matches({"Manufacturer": "GE"}, ds)
    assert _matches({"body_part": "HEAD"}, ds) and _matches({"sequence": "FLAIR"}, ds)


def test_list_of_values_and_in_operator():
    ds = _header(**_FLAIR)
    assert _matches({"sequence": ["T1", "FLAIR"]}, ds)
    assert _matches({"sequence": {"in": ["FLAIR"]}}, ds)
    assert not _matches({"sequence": ["T1", "SWI"]}, ds)
    assert _matches({"ImageType": ["ND"]}, ds)  # a multi-valued attribute matches by any of its values


def test_regex_searches_each_value_and_the_whole():
    ds = _header(**_FLAIR)
    assert _matches({"SeriesDescription": {"regex": "dark.fluid"}}, ds)
    assert not _matches({"SeriesDescription": {"regex": "^dark"}}, ds)
    assert _matches({"ImageType": {"regex": r"^ORIGINAL\\PRIMARY"}}, ds)
    assert _matches({"SeriesDescription": {"regex": "(?i)TIRM"}}, ds)


def test_numeric_range():
    ds = _header(**_FLAIR)
    assert _matches({"InversionTime": {"min": 1800, "max": 3000}}, ds)
    assert _matches({"InversionTime": {"min": 2500}}, ds) and _matches({"InversionTime": {"max": 2500}}, ds)
    assert not _matches({"InversionTime": {"max": 400}}, ds)
    assert _matches({"instances": {"min": 20}}, ds, 20) and not _matches({"instances": {"min": 21}}, ds, 20)
    assert not _matches({"SeriesDescription": {"min": 1}}, ds)  # not a number
    decision = match_series(ds, 20, [_route({"EchoTrainLength": {"min": 1}})])
    assert "EchoTrainLength is absent" in decision.reason


def test_and_or_and_nesting():
    ds = _header(**_FLAIR)
    assert _matches({"all": [{"modality": "MR"}, {"sequence": "FLAIR"}]}, ds)
    assert not _matches({"all": [{"modality": "MR"}, {"sequence": "T1"}]}, ds)
    assert _matches({"any": [{"sequence": "T1"}, {"sequence": "FLAIR"}]}, ds)
    assert not _matches({"any": [{"sequence": "T1"}, {"modality": "CT"}]}, ds)
    nested = {"all": [{"modality": "MR"}, {"any": [{"body_part": "BRAIN"}, {"SeriesDescription": {"regex": "tra"}}]}]}
    assert _matches(nested, ds)
    assert not _matches({"modality": "MR", "sequence": "T1"}, ds)  # several keys in one mapping: AND
    assert _matches({"modality": "MR", "sequence": "FLAIR"}, ds)


def test_priority_order_ties_keep_order_and_several_destinations():
    ds = _header(**_FLAIR)
    items = [
        {"name": "late", "priority": 50, "match": {"modality": "MR"}, "model": "a", "slot": "x", "destinations": ["pacs"]},
        {"name": "first", "priority": 5, "match": {"sequence": "FLAIR"}, "model": "a", "slot": "x",
         "destinations": ["pacs", "archive", "folder"]},
        {"name": "tie-1", "priority": 20, "match": {"modality": "MR"}, "model": "b", "slot": "y"},
        {"name": "tie-2", "priority": 20, "match": {"modality": "MR"}, "model": "c", "slot": "z"},
        {"name": "never", "priority": 1, "match": {"modality": "CT"}, "model": "d", "slot": "w"},
    ]
    routes = load_routes(items)
    assert [r.name for r in routes] == ["never", "first", "tie-1", "tie-2", "late"]
    decision = match_series(ds, 20, [Route.from_dict(i) for i in items])  # as configured: match_series sorts
    assert [r.name for r in decision.matched] == ["first", "tie-1", "tie-2", "late"]
    assert [r.name for r in decision.assignments] == ["first", "tie-1", "tie-2"]  # 'late' shadowed for a.x
    assert decision.matched[0].destinations == ("pacs", "archive", "folder")


# ---------------------------------------------------------------- rules: validation
@pytest.mark.parametrize("item, message", [
    ({"name": "flair-ms", "model": "m", "slot": "s", "match": {"SeriesDescription": {"regexp": "x"}}},
     "route 'flair-ms': match.SeriesDescription: unknown operator 'regexp' (did you mean 'regex'?)"),
    ({"name": "flair-ms", "model": "m", "slot": "s", "match": {"all": [{"modality": "MR"}, {"SeriesDescriptio": "x"}]}},
     "route 'flair-ms': match.all[1].SeriesDescriptio: unknown field 'SeriesDescriptio' ... (did you mean 'SeriesDescription'?)"),
    ({"name": "flair-ms", "model": "m", "slot": "s", "match": {"Sequence": "FLAIR"}},
     "did you mean 'sequence'"),
    ({"name": "r1", "model": "m", "slot": "s", "match": {"modality": "MR"}, "destination": ["pacs"]},
     "route 'r1': unknown key 'destination' (did you mean 'destinations'?)"),
    ({"name": "r1", "model": "m", "match": {"modality": "MR"}}, "route 'r1': missing key 'slot'"),
    ({"model": "m", "slot": "s", "match": {"modality": "MR"}}, "routes[0]: missing key 'name'"),
    ({"name": "r1", "model": "m", "slot": "s", "match": {"SeriesDescription": {"regex": "("}}},
     "route 'r1': match.SeriesDescription: invalid regex '('"),
    ({"name": "r1", "model": "m", "slot": "s", "match": {"EchoTime": {"min": 90, "max": 10}}},
     "route 'r1': match.EchoTime: min 90 is greater than max 10"),
    ({"name": "r1", "model": "m", "slot": "s", "match": {"EchoTime": {"min": "long"}}}, "min must be a number"),
    ({"name": "r1", "model": "m", "slot": "s", "match": {"EchoTime": {"min": 1, "regex": "x"}}}, "one operator per field"),
    ({"name": "r1", "model": "m", "slot": "s", "match": {"any": []}}, "route 'r1': match.any: must be a non-empty list"),
    ({"name": "r1", "model": "m", "slot": "s", "match": {"sequence": []}}, "an empty list matches nothing"),
    ({"name": "r1", "model": "m", "slot": "s", "match": {"sequence": True}}, "must be a string or a number"),
    ({"name": "r1", "model": "m", "slot": "s", "match": {}}, "a condition must be a non-empty mapping"),
    ({"name": "r1", "model": "m", "slot": "s", "match": {"ReferencedImageSequence": "x"}}, "is a sequence attribute"),
    ({"name": "r1", "model": "m", "slot": "s", "match": {"modality": "MR"}, "priority": "high"},
     "route 'r1': priority must be an integer"),
    ({"name": "r1", "model": "m", "slot": "s", "match": {"modality": "MR"}, "destinations": "pacs"},
     "route 'r1': destinations must be a list of names"),
    ({"name": "r1", "model": "m", "slot": "s", "match": {"modality": "MR"}, "destinations": ["pacs", "pacs"]},
     "destinations named twice"),
])
def test_invalid_routes_name_the_route_and_the_key(item, message):
    """``message``: the substrings the error must contain, separated by ' ... '."""
    with pytest.raises(ValueError) as caught:
        load_routes([item])
    for part in message.split(" ... "):
        assert part in str(caught.value)


def test_routes_checked_against_models_and_destinations():
    specs = {TINY_SPEC.name: TINY_SPEC}
    good = {"name": "ct", "model": "tiny-test", "slot": "ct", "match": {"modality": "CT"}, "destinations": ["pacs"]}
    assert load_routes([good], specs, {"pacs"})[0].model == "tiny-test"
    with pytest.raises(ValueError, match="route 'ct': unknown model 'tiny-tset' .*did you mean 'tiny-test'"):
        load_routes([{**good, "model": "tiny-tset"}], specs)
    with pytest.raises(ValueError, match="route 'ct': model 'tiny-test' has no slot 'flair'; its slots: ct"):
        load_routes([{**good, "slot": "flair"}], specs)
    with pytest.raises(ValueError, match="route 'ct': unknown destination 'pacs2'"):
        load_routes([{**good, "destinations": ["pacs2"]}], specs, {"pacs", "folder"})
    with pytest.raises(ValueError, match="route 'ct': the name is used by another route"):
        load_routes([good, good])
    with pytest.raises(ValueError, match="routes must be a list"):
        load_routes({"name": "ct"})


def test_routes_from_yaml_text():
    text = """
routes:
  - name: flair-ms
    priority: 10
    match:
      all:
        - modality: MR
        - sequence: [FLAIR]
        - any:
            - BodyPartExamined: [HEAD, BRAIN]
            - SeriesDescription: {regex: "(?i)brain"}
        - slices: {min: 10}
    model: ms-csvd
    slot: flair
    destinations: [pacs, folder]
"""
    (route,) = load_routes(yaml.safe_load(text)["routes"])
    assert route.destinations == ("pacs", "folder") and route.priority == 10
    assert match_series(_header(**_FLAIR), 24, [route]).routed
    assert not match_series(_header(**_FLAIR), 9, [route]).routed


# ---------------------------------------------------------------- unrouted and explain
def test_unrouted_reason_names_each_route_tried_and_why():
    ds = _header(**{**_FLAIR, "BodyPartExamined": "PELVIS"})
    routes = [_route({"sequence": "SWI"}, name="swi-cmb"),
              _route({"all": [{"sequence": "FLAIR"}, {"body_part": ["HEAD", "BRAIN"]}]}, name="flair-ms")]
    decision = match_series(ds, 20, routes)
    assert not decision.routed and decision.matched == ()
    assert "no route matched (2 tried)" in decision.reason
    assert "'swi-cmb': sequence is 'FLAIR', not 'SWI'" in decision.reason
    assert "'flair-ms': body_part is 'PELVIS', not one of ['HEAD', 'BRAIN']" in decision.reason
    assert match_series(ds, 20, []).reason == "no routes are configured"


def test_explain_text():
    ds = _header(**_FLAIR)
    routes = [_route({"sequence": "T1"}, name="t1-ad", priority=5),
              _route({"all": [{"sequence": "FLAIR"}, {"slices": {"min": 10}}]}, name="flair-ms",
                     destinations=["pacs", "folder"])]
    text = explain(match_series(ds, 24, routes))
    assert "series 1.2.826.0.1.3680043.8.498.1: MR, 24 instance(s)" in text
    assert "sequence: FLAIR (from parameters)" in text
    assert "TI 2500 ms >= 1400 ms" in text
    assert "[no] t1-ad (priority 5)" in text and "sequence is 'FLAIR', not 'T1'" in text
    assert "[MATCH] flair-ms (priority 100) -> m.s, to pacs, folder" in text
    assert "slices 24 is within [10, inf]" in text
    assert "result: routed to m slot s by 'flair-ms', destinations: pacs, folder" in text
    assert text.index("t1-ad") < text.index("flair-ms")
    unrouted = explain(match_series(ds, 5, routes))
    assert "result: UNROUTED: no route matched (2 tried)" in unrouted
    assert "slices 5 is not within [10, inf]" in unrouted


def test_explain_path_reads_a_phantom_study_and_skips_non_dicom(phantom_sets, tmp_path):
    study = sorted(p for p in phantom_sets["axspa-sij"].iterdir() if p.is_dir())[0]
    truth = json.loads((study / "truth.json").read_text())
    found = read_series_headers(study)  # truth.json and masks are skipped
    assert sorted(str(ds.SeriesInstanceUID) for ds, _ in found) == sorted(
        s["series_instance_uid"] for s in truth["series"].values())
    assert all(n == len(truth["series"][k]["sop_instance_uids"]) for k in truth["series"]
               for ds, n in found if str(ds.SeriesInstanceUID) == truth["series"][k]["series_instance_uid"])
    text = explain_path(study, default_routes(_SIJ_SPEC, ["pacs"]))
    assert text.count("result: routed to sij-test") == 2
    assert "slot t1 by 'sij-test/t1'" in text and "slot fs by 'sij-test/fs'" in text
    (tmp_path / "notes.txt").write_text("not dicom")
    assert explain_path(tmp_path, []) == f"no DICOM series found under {tmp_path}"


# ---------------------------------------------------------------- default routes from model specs
_CODE = Code("404684003", "SCT", "Clinical finding")
_MS_SPEC = ModelSpec("ms-test", "0.1.0", "test", (InputSlot("flair", "MR", ("FLAIR",), ("HEAD", "BRAIN"), 5),),
                     (MultiLabel((Label("ms", _CODE),)),))
_SIJ_SPEC = ModelSpec("sij-test", "0.1.0", "test",
                      (InputSlot("t1", "MR", ("T1",), ("PELVIS", "SSPINE"), 5),
                       InputSlot("fs", "MR", ("STIR", "T2FS"), ("PELVIS", "SSPINE"), 5)),
                      (MultiLabel((Label("axspa", _CODE),)),))


def test_default_routes_from_tiny_ct_spec():
    (route,) = default_routes(TINY_SPEC, ["pacs"])
    assert (route.name, route.model, route.slot, route.destinations) == ("tiny-test/ct", "tiny-test", "ct", ("pacs",))
    ct = _header("CT", BodyPartExamined="HEAD")
    assert match_series(ct, 3, [route]).routed
    decision = match_series(ct, 2, [route])
    assert not decision.routed and "slices 2 is not within [3, inf]" in decision.reason
    assert not match_series(_header(**_FLAIR), 30, [route]).routed


def test_default_routes_from_mr_spec_on_phantoms(phantom_sets):
    routes = default_routes(_MS_SPEC) + default_routes(_SIJ_SPEC)
    assert all(isinstance(r.match, AllOf) and isinstance(r.match.children[0], Leaf) for r in routes)
    expected = {"FLAIR": ("ms-test", "flair"), "T1": ("sij-test", "t1"), "STIR": ("sij-test", "fs"), "T2FS": ("sij-test", "fs")}
    for task in ("ms-csvd", "axspa-sij"):
        for kind, ds, n in _phantom_series(phantom_sets[task]):
            decision = match_series(ds, n, routes)
            assert [(r.model, r.slot) for r in decision.matched] == [expected[kind]], explain(decision)
    for kind, ds, n in _phantom_series(phantom_sets["ad-lrp"]):  # head 3D T1: wrong body part for the SIJ model
        decision = match_series(ds, n, routes)
        assert not decision.routed and "body_part is 'HEAD', not one of ['PELVIS', 'SSPINE']" in decision.reason
