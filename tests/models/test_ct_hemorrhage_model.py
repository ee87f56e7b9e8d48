"""The head-CT hemorrhage model entries: specs and codes, weights loading, predict on a phantom CT.

Tiny random weights (seeded) in a real checkpoint file written here (the committed demo weights
are not needed); the phantom is read as the node reads it.
"""
from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from pydicom.sr.codedict import codes

from neuroread.models import UCUM_RATIO, ModelRegistry, MultiLabel
from neuroread.models.checkpoint import load_checkpoint, save_checkpoint, state_dict_sha256
from neuroread.models.ct_hemorrhage import model as cth
from neuroread.models.ct_hemorrhage.model import (
    DEMO_WEIGHTS,
    ENTRIES,
    ENTRY,
    ENTRY_CQ500,
    SLICE_ATTENTION,
    SPEC,
    SPEC_CQ500,
    HemorrhageModel,
    paper_config,
)
from neuroread.models.ct_hemorrhage.network import DrCT2, DrCT2Config
from neuroread.models.ct_hemorrhage.preprocess import prepare, sample_indices, square_record
from neuroread.models.volume import load_series
from neuroread.node.encode import EncodeInfo, encode_result, validate
from neuroread.node.route.rules import default_routes, match_series
from neuroread.training.datasets import CQ500_LABELS, RSNA_LABELS

M = 8


def _config(n_labels: int) -> DrCT2Config:
    return DrCT2Config(n_labels=n_labels, slices=M, key_slices=4, input_size=32, zoom_size=64,
                       backbone=(4, "M", 8, "M"), gru_hidden=4, aps_fc=8, head=(8, 4), freeze_backbone=False,
                       name="test")


def _net(config: DrCT2Config, seed: int = 0) -> DrCT2:
    torch.manual_seed(seed)
    return DrCT2(config)


def _save(path, spec=SPEC, labels=None, config=None, seed=0, demo=True):
    config = config or _config(len(spec.labels))
    return save_checkpoint(path, model=spec.name, config=config.to_dict(),
                           labels=labels or [lb.name for lb in spec.labels], state_dict=_net(config, seed).state_dict(),
                           architecture=config.to_dict(), training_data="none: random weights (test)", demo=demo)


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    path = tmp_path_factory.mktemp("cth-weights") / "tiny.pt"
    _save(path)
    return path


@pytest.fixture(scope="module")
def ct(phantom_sets):
    """The first small ct-hemorrhage phantom as the node reads it, with its source files."""
    study = sorted(p.parent for p in phantom_sets["ct-hemorrhage"].glob("*/truth.json"))[0]
    files = sorted((study / "S01").glob("*.dcm"))
    return load_series(files), files


@pytest.fixture(scope="module")
def run(weights, ct):
    model = HemorrhageModel(SPEC)
    model.load(weights)
    vol = ct[0]
    return model, vol, model.predict({"ct": vol})


def _network_view(model: HemorrhageModel, vol):
    """What the network itself says of ``vol``: the sampled slice indices, its output, the
    slice attention per sampled position."""
    x, sampled = prepare(vol.array, M, model.net.config.input_size)
    with torch.inference_mode():
        out = model.net(x[None])
    return sampled, out, out.slice_attention[0].double().numpy()


def test_specs_use_training_label_keys_and_coded_labels():
    assert [lb.name for lb in SPEC.labels] == list(RSNA_LABELS) == list(cth.RSNA_KEYS)
    assert [lb.name for lb in SPEC_CQ500.labels] == list(CQ500_LABELS) == list(cth.CQ500_KEYS)
    by_name = {lb.name: lb.code for lb in SPEC_CQ500.labels}
    ich = codes.SCT.IntracranialHemorrhage
    assert (by_name["any"].value, by_name["any"].scheme) == (ich.value, "SCT") == ("1386000", "SCT")
    assert {k: by_name[k].value for k in ("iph", "sdh", "sah")} == {"iph": "274100004", "sdh": "35486000",
                                                                     "sah": "21454007"}
    assert {by_name[k].scheme for k in ("ivh", "edh", "fracture", "mass_effect", "midline_shift")} == {"99NEUROREAD"}
    assert len({(c.value, c.scheme) for c in by_name.values()}) == 9
    assert all(lb.threshold == 0.5 for lb in SPEC_CQ500.labels) and SPEC.labels == SPEC_CQ500.labels[:6]
    slot, = SPEC.slots
    assert (slot.name, slot.modality, slot.body_parts, slot.min_slices) == ("ct", "CT", ("HEAD", "BRAIN", "SKULL"), 10)
    assert slot.same_frame_of_reference_as is None
    for spec in (SPEC, SPEC_CQ500):  # one multi-label outcome, no exclusive classes
        assert spec.outcomes == (MultiLabel(spec.labels),) and spec.multi_class == ()
        assert spec.targets == tuple(lb.name for lb in spec.labels)
    assert SPEC.explanations == ("lesion_map", "attention") and SPEC.version == "1.0.0"
    assert (paper_config(SPEC).slices, paper_config(SPEC_CQ500).slices) == (28, 32)
    assert (paper_config(SPEC).n_labels, paper_config(SPEC_CQ500).n_labels) == (6, 9)
    assert paper_config(SPEC).pooling == "flatten"
    with pytest.raises(ValueError, match="no paper configuration for model 'tiny'"):
        paper_config(dataclasses.replace(SPEC, name="tiny"))
    registry = ModelRegistry(ENTRIES)
    assert registry.names() == ["ct-hemorrhage", "ct-hemorrhage-cq500"]
    assert registry.create("ct-hemorrhage-cq500").spec is SPEC_CQ500


def test_entries_name_their_committed_demo_weights():
    """Only ct-hemorrhage comes with demo weights (beside its module); its CQ500 variant needs
    configured ones. (Whether the file is there is the registry-wide contract test's business.)"""
    assert ENTRY.spec is SPEC and ENTRY_CQ500.spec is SPEC_CQ500
    assert ENTRY.demo_weights == DEMO_WEIGHTS == Path(cth.__file__).parent / "weights" / "ct-hemorrhage-demo.pt"
    assert ENTRY_CQ500.demo_weights is None
    assert isinstance(ENTRY.factory(), HemorrhageModel) and ENTRY.factory().net is None


def test_the_default_routes_take_a_head_ct_and_leave_other_series(ct):
    vol, files = ct
    header = pydicom.dcmread(files[0], stop_before_pixels=True)
    routes = default_routes(SPEC) + default_routes(SPEC_CQ500)
    assert str(header.BodyPartExamined) == "HEAD"
    decision = match_series(header, len(files), routes)
    assert [r.model for r in decision.matched] == ["ct-hemorrhage", "ct-hemorrhage-cq500"]
    assert not match_series(header, 3, routes).routed  # a scout-sized series
    chest = copy.deepcopy(header)
    chest.BodyPartExamined = "CHEST"
    assert not match_series(chest, len(files), routes).routed


def test_predict_honours_the_contract_with_one_finding_per_label(run, weights):
    model, vol, result = run
    result.check(SPEC, {"ct": vol})
    assert (result.model, result.version) == ("ct-hemorrhage", "1.0.0")
    assert [(f.label, f.code, f.threshold) for f in result.findings] == [(lb.name, lb.code, 0.5) for lb in SPEC.labels]
    assert all(0.0 < f.probability < 1.0 for f in result.findings)
    _, out, _ = _network_view(model, vol)
    assert [f.probability for f in result.findings] == pytest.approx(out.probabilities[0].tolist())
    assert result.card == model.card and result.card.demo
    assert result.card.weights_sha256 == state_dict_sha256(load_checkpoint(weights, SPEC.name).state_dict)
    assert result.card.architecture["name"] == "test"
    assert result.lesions == () and result.tables == () and result.classifications == ()


def test_slice_scores_give_every_sampled_slice_its_attention(run):
    model, vol, result = run
    scores, = result.slice_scores
    assert (scores.series_instance_uid, scores.concept, scores.unit) == (vol.series_instance_uid, SLICE_ATTENTION,
                                                                        UCUM_RATIO)
    sampled, _, attention = _network_view(model, vol)
    assert len(set(sampled.tolist())) == M  # 24 slices, m = 8: no repeats
    assert list(scores.slice_indices) == sample_indices(vol.array.shape[0], M).tolist() == sampled.tolist()
    assert list(scores.scores) == pytest.approx(attention.tolist())
    assert all(a > 0 for a in scores.scores) and sum(scores.scores) == pytest.approx(1.0, abs=1e-6)


def test_key_slices_are_the_five_of_highest_attention_ranked(run):
    _, vol, result = run
    scores = result.slice_scores[0]
    attention = dict(zip(scores.slice_indices, scores.scores))
    expected = sorted(attention, key=lambda k: (-attention[k], k))[:5]
    assert [ks.slice_index for ks in result.key_slices] == expected
    assert [ks.rank for ks in result.key_slices] == [1, 2, 3, 4, 5]
    assert [ks.score for ks in result.key_slices] == pytest.approx([attention[k] for k in expected])
    assert all(ks.sop_instance_uid == vol.sop_instance_uids[ks.slice_index]
               and ks.series_instance_uid == vol.series_instance_uid for ks in result.key_slices)


def test_heatmap_explains_any_in_unit_range_on_the_key_slices_only(run):
    _, vol, result = run
    heat, = result.heatmaps
    assert heat.kind == "attention" and heat.series_instance_uid == vol.series_instance_uid
    assert (heat.explains, heat.value_range, heat.signed, heat.branch) == ("any", (0.0, 1.0), False, "")
    assert heat.array.dtype == np.float32 and heat.array.shape == vol.array.shape
    assert "5 key slices" in heat.description and len(heat.description) <= 64  # a PM's LUT Explanation
    key = sorted(ks.slice_index for ks in result.key_slices)
    covered = np.flatnonzero(heat.array.reshape(len(heat.array), -1).any(axis=1)).tolist()
    assert covered == key
    assert not heat.array[[k for k in range(len(heat.array)) if k not in key]].any()  # zero off the key slices
    assert heat.array.min() >= 0.0 and 0.9 < heat.array.max() <= 1.0
    for k in key:  # each key slice's map has contrast (scaled to [0, 1] before resizing)
        assert heat.array[k].max() > 0.9 and heat.array[k].min() < 0.1


def test_heatmap_is_the_networks_spatial_maps_mapped_back_onto_the_series_grid(run):
    model, vol, result = run
    sampled, out, _ = _network_view(model, vol)
    key = [ks.slice_index for ks in result.key_slices]
    positions = torch.tensor([[int(np.flatnonzero(sampled == k)[0]) for k in key]])
    maps = model.net.spatial_maps(out, positions)[0]
    rows, cols = vol.array.shape[1:]
    expected = square_record(rows, cols, model.net.config.input_size).inverse(maps, clip=(0.0, 1.0)).numpy()
    np.testing.assert_allclose(result.heatmaps[0].array[key], expected, rtol=0, atol=1e-6)


def test_predict_is_deterministic(run):
    model, vol, result = run
    again = model.predict({"ct": vol})
    assert again.findings == result.findings and again.key_slices == result.key_slices
    assert again.slice_scores == result.slice_scores
    assert np.array_equal(again.heatmaps[0].array, result.heatmaps[0].array)


def test_a_series_shorter_than_m_scores_a_repeated_slice_by_its_best_position(run):
    model, vol, _ = run
    short = dataclasses.replace(vol, array=vol.array[8:13], sop_instance_uids=vol.sop_instance_uids[8:13])
    result = model.predict({"ct": short})
    result.check(SPEC, {"ct": short})
    sampled, _, attention = _network_view(model, short)
    assert sampled.tolist() == sample_indices(5, M).tolist() and len(set(sampled.tolist())) == 5  # some twice
    best = {k: max(a for j, a in zip(sampled, attention) if j == k) for k in range(5)}
    scores, = result.slice_scores
    assert scores.slice_indices == (0, 1, 2, 3, 4)  # one score per slice, repeats merged
    assert list(scores.scores) == pytest.approx([best[k] for k in range(5)])
    assert sum(scores.scores) < 1.0 - 1e-3  # the best repeat, not the sum of repeats (which would add up to 1)
    assert sorted(ks.slice_index for ks in result.key_slices) == [0, 1, 2, 3, 4]
    assert [ks.score for ks in result.key_slices] == pytest.approx(sorted(best.values(), reverse=True))
    assert [ks.score for ks in result.key_slices] == pytest.approx([best[ks.slice_index] for ks in result.key_slices])
    assert result.heatmaps[0].array.shape == (5, 128, 128)


def test_from_network_wraps_a_network_in_memory(run, weights):
    model, vol, result = run
    net = _net(_config(6)).train()
    wrapped = HemorrhageModel.from_network(SPEC, net, model.card)
    assert wrapped.net is net and not net.training and wrapped.card is model.card
    again = wrapped.predict({"ct": vol})
    assert again.findings == result.findings and again.slice_scores == result.slice_scores
    with pytest.raises(ValueError, match="ct-hemorrhage-cq500: network has 6 outputs for 9 labels"):
        HemorrhageModel.from_network(SPEC_CQ500, net, model.card)
    with pytest.raises(ValueError, match="unknown torch device 'gpu0'"):
        HemorrhageModel.from_network(SPEC, net, model.card, device="gpu0")


def test_wrong_weights_and_devices_are_refused_naming_the_problem(tmp_path, weights):
    model = HemorrhageModel(SPEC)
    swapped = tmp_path / "swapped.pt"
    _save(swapped, labels=["iph", "any", "ivh", "sdh", "edh", "sah"])
    with pytest.raises(ValueError, match=r"labels \['iph', 'any'.*are not ct-hemorrhage's \['any', 'iph'"):
        model.load(swapped)
    with pytest.raises(ValueError, match="holds weights for 'ct-hemorrhage', not 'ct-hemorrhage-cq500'"):
        HemorrhageModel(SPEC_CQ500).load(weights)
    wrong_width = tmp_path / "wide.pt"
    config = _config(6)
    state = _net(dataclasses.replace(config, gru_hidden=6)).state_dict()
    save_checkpoint(wrong_width, model=SPEC.name, config=config.to_dict(), labels=list(cth.RSNA_KEYS),
                    state_dict=state, architecture={}, training_data="mismatched", demo=True)
    with pytest.raises(ValueError, match="does not fit its own configuration"):
        model.load(wrong_width)
    with pytest.raises(ValueError, match=r"weights file .*missing\.pt does not exist"):
        model.load(tmp_path / "missing.pt")
    with pytest.raises(ValueError, match="unknown torch device 'gpu0'"):
        model.load(weights, device="gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="torch device 'cuda'.*no CUDA device"):
            model.load(weights, device="cuda")
    assert model.net is None and model.card is None  # nothing half-loaded
    with pytest.raises(RuntimeError, match="predict before load"):
        model.predict({})


def test_predict_refuses_other_input_slots(run):
    model, vol, _ = run
    with pytest.raises(ValueError, match=r"takes one input slot 'ct', got \['t1'\]"):
        model.predict({"t1": vol})


def _items(owner):
    for item in owner.get("ContentSequence", []):
        yield item
        yield from _items(item)


def test_the_result_encodes_into_valid_dicom(run, ct, dciodvfy):
    _, vol, result = run
    by_uid = {ds.SOPInstanceUID: ds for ds in map(pydicom.dcmread, ct[1])}
    sources = [by_uid[uid] for uid in vol.sop_instance_uids]
    info = EncodeInfo(manufacturer="neuroread", device_name="neuroread test node", software_version="0.1.0")
    objects = encode_result(result, SPEC, {"ct": sources}, node_info=info)
    kinds = [ds.SOPClassUID.name for ds in objects]
    # a Measurement Report only when "any" is present (its lesion map gives it a place)
    drawn = 1 if next(f for f in result.findings if f.label == "any").present else 0
    assert {k: kinds.count(k) for k in kinds} == {k: v for k, v in {
        "Comprehensive 3D SR Storage": drawn, "Enhanced SR Storage": 1, "Key Object Selection Document Storage": 1,
        "Parametric Map Storage": 1, "Secondary Capture Image Storage": 6}.items() if v}  # five overlays, the report page
    text, = (ds for ds in objects if ds.SOPClassUID.name == "Enhanced SR Storage")
    attention = [item for item in _items(text) if item.ValueType == "NUM"
                 and item.ConceptNameCodeSequence[0].get("CodeValue") == SLICE_ATTENTION.value]
    assert len(attention) == M  # one measurement per slice score
    for ds in objects:
        assert validate(ds, dciodvfy=dciodvfy) == [], ds.SOPClassUID.name
