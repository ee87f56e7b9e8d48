"""The head-CT hemorrhage model entries: specs and codes, weights loading, predict on a phantom CT.

Tiny random weights (seeded) in a real checkpoint file; the phantom is read as the node reads it.
"""
from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pydicom
import pytest
import torch
from pydicom.sr.codedict import codes

from neuroread.models import ModelRegistry
from neuroread.models.checkpoint import load_checkpoint, save_checkpoint, state_dict_sha256
from neuroread.models.ct_hemorrhage import model as cth
from neuroread.models.ct_hemorrhage.model import (
    ENTRIES,
    SPEC,
    SPEC_CQ500,
    HemorrhageModel,
    demo_weights_path,
    paper_config,
)
from neuroread.models.ct_hemorrhage.network import DrCT2, DrCT2Config
from neuroread.models.ct_hemorrhage.preprocess import resize_square, sample_indices
from neuroread.models.volume import load_series
from neuroread.node.encode import EncodeInfo, encode_result, validate
from neuroread.node.route.rules import default_routes, match_series
from neuroread.training.datasets import CQ500_LABELS, RSNA_LABELS

M = 8


def _config(n_labels: int) -> DrCT2Config:
    return DrCT2Config(n_labels=n_labels, slices=M, key_slices=4, input_size=32, zoom_size=64,
                       backbone=(4, "M", 8, "M"), gru_hidden=4, aps_fc=8, head=(8, 4), freeze_backbone=False,
                       name="test")


def _save(path, spec=SPEC, labels=None, config=None, seed=0, demo=True):
    config = config or _config(len(spec.labels))
    torch.manual_seed(seed)
    net = DrCT2(config)
    return save_checkpoint(path, model=spec.name, config=config.to_dict(),
                           labels=labels or [lb.name for lb in spec.labels], state_dict=net.state_dict(),
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
    assert SPEC.explanations == ("attention",) and SPEC.multi_label and SPEC.version == "1.0.0"
    assert (paper_config(SPEC).slices, paper_config(SPEC_CQ500).slices) == (28, 32)
    assert (paper_config(SPEC).n_labels, paper_config(SPEC_CQ500).n_labels) == (6, 9)
    registry = ModelRegistry(ENTRIES)
    assert registry.names() == ["ct-hemorrhage", "ct-hemorrhage-cq500"]
    assert registry.create("ct-hemorrhage-cq500").spec is SPEC_CQ500


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
    assert result.card == model.card and result.card.demo
    assert result.card.weights_sha256 == state_dict_sha256(load_checkpoint(weights, SPEC.name).state_dict)
    assert result.card.architecture["name"] == "test" and result.lesions == ()


def test_table_lists_every_sampled_position_with_its_attention(run):
    _, vol, result = run
    table, = result.tables
    assert table.name == "slice attention" and len(table.rows) == M
    assert table.columns == ("sampled position", "slice index", "SOP Instance UID", "attention")
    positions, indices, uids, attention = zip(*table.rows)
    assert list(positions) == list(range(M))
    assert list(indices) == sample_indices(vol.array.shape[0], M).tolist()
    assert list(uids) == [vol.sop_instance_uids[k] for k in indices]
    assert all(a > 0 for a in attention) and sum(attention) == pytest.approx(1.0, abs=1e-6)


def test_key_slices_are_the_five_of_highest_attention_ranked(run):
    _, vol, result = run
    attention = {k: a for _, k, _, a in result.tables[0].rows}  # 24 slices, m = 8: no repeats
    expected = sorted(attention, key=lambda k: (-attention[k], k))[:5]
    assert [ks.slice_index for ks in result.key_slices] == expected
    assert [ks.rank for ks in result.key_slices] == [1, 2, 3, 4, 5]
    assert [ks.score for ks in result.key_slices] == pytest.approx([attention[k] for k in expected])
    assert all(ks.sop_instance_uid == vol.sop_instance_uids[ks.slice_index]
               and ks.series_instance_uid == vol.series_instance_uid for ks in result.key_slices)


def test_heatmap_is_on_the_key_slices_only_and_in_unit_range(run):
    _, vol, result = run
    heat, = result.heatmaps
    assert heat.kind == "attention" and heat.series_instance_uid == vol.series_instance_uid
    assert heat.array.dtype == np.float32 and heat.array.shape == vol.array.shape
    assert "5 key slices" in heat.description and len(heat.description) <= 64  # a PM's LUT Explanation
    covered = np.flatnonzero(heat.array.reshape(len(heat.array), -1).any(axis=1)).tolist()
    assert covered == sorted(ks.slice_index for ks in result.key_slices)
    assert heat.array.min() >= 0.0 and 0.9 < heat.array.max() <= 1.0
    for ks in result.key_slices:  # each key slice's map has contrast (scaled to [0, 1] before resizing)
        assert heat.array[ks.slice_index].max() > 0.9 and heat.array[ks.slice_index].min() < 0.1


def test_predict_is_deterministic(run):
    model, vol, result = run
    again = model.predict({"ct": vol})
    assert again.findings == result.findings and again.key_slices == result.key_slices
    assert again.tables == result.tables
    assert np.array_equal(again.heatmaps[0].array, result.heatmaps[0].array)


def test_a_series_shorter_than_m_scores_a_repeated_slice_by_its_best_position(run):
    model, vol, _ = run
    short = dataclasses.replace(vol, array=vol.array[8:13], sop_instance_uids=vol.sop_instance_uids[8:13])
    result = model.predict({"ct": short})
    result.check(SPEC, {"ct": short})
    rows = result.tables[0].rows
    assert len(rows) == M and [r[1] for r in rows] == sample_indices(5, M).tolist()
    assert len({r[1] for r in rows}) == 5  # every slice sampled, some twice
    pooled = {k: max(r[3] for r in rows if r[1] == k) for k in range(5)}
    assert sorted(ks.slice_index for ks in result.key_slices) == [0, 1, 2, 3, 4]
    assert [ks.score for ks in result.key_slices] == pytest.approx(sorted(pooled.values(), reverse=True))
    assert [ks.score for ks in result.key_slices] == pytest.approx([pooled[ks.slice_index] for ks in result.key_slices])
    assert result.heatmaps[0].array.shape == (5, 128, 128)


def test_the_heatmap_undoes_the_square_padding_and_resize():
    rows, cols, size = 60, 90, 32  # wide: padded with 15 rows above and below, then 90 -> 32
    image = np.zeros((1, 1, rows, cols), np.float32)
    image[0, 0, 40:50, 10:22] = 1.0
    square = resize_square(torch.from_numpy(image), size)[:, 0]
    back = cth._to_series_grid(square, rows, cols)[0]
    assert back.shape == (rows, cols) and back.min() >= 0.0 and back.max() <= 1.0
    centre = np.argwhere(back >= 0.5 * back.max()).mean(axis=0)
    assert centre == pytest.approx([44.5, 15.5], abs=1.0)


def test_wrong_weights_are_refused_naming_the_problem(tmp_path, weights):
    model = HemorrhageModel(SPEC)
    swapped = tmp_path / "swapped.pt"
    _save(swapped, labels=["iph", "any", "ivh", "sdh", "edh", "sah"])
    with pytest.raises(ValueError, match=r"labels \['iph', 'any'.*are not ct-hemorrhage's \['any', 'iph'"):
        model.load(swapped)
    with pytest.raises(ValueError, match="holds weights for 'ct-hemorrhage', not 'ct-hemorrhage-cq500'"):
        HemorrhageModel(SPEC_CQ500).load(weights)
    wrong_width = tmp_path / "wide.pt"
    config = _config(6)
    torch.manual_seed(0)
    state = DrCT2(dataclasses.replace(config, gru_hidden=6)).state_dict()
    save_checkpoint(wrong_width, model=SPEC.name, config=config.to_dict(), labels=list(cth.RSNA_KEYS),
                    state_dict=state, architecture={}, training_data="mismatched", demo=True)
    with pytest.raises(ValueError, match="does not fit its own configuration"):
        model.load(wrong_width)
    with pytest.raises(ValueError, match="unknown torch device 'gpu0'"):
        model.load(weights, device="gpu0")
    assert model.net is None  # nothing half-loaded
    with pytest.raises(RuntimeError, match="predict before load"):
        model.predict({})


def test_demo_weights_come_from_the_weights_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("NEUROREAD_WEIGHTS", str(tmp_path / "cache"))
    path = demo_weights_path("ct-hemorrhage-cq500")
    assert path == tmp_path / "cache" / "ct-hemorrhage-cq500-demo.pt"
    model = HemorrhageModel(SPEC_CQ500)
    with pytest.raises(ValueError, match=r"no demo weights for ct-hemorrhage-cq500 at .*cache.*"
                                         r"run `neuroread train-demo ct-hemorrhage-cq500`"):
        model.load(None)
    _save(path, spec=SPEC_CQ500, demo=True)
    model.load(None)
    assert model.card.demo and model.net.config.n_labels == 9
    monkeypatch.delenv("NEUROREAD_WEIGHTS")
    assert str(demo_weights_path("ct-hemorrhage")).endswith(".cache/neuroread/weights/ct-hemorrhage-demo.pt")


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
    assert {k: kinds.count(k) for k in kinds} == {
        "Comprehensive 3D SR Storage": 1, "Key Object Selection Document Storage": 1, "Parametric Map Storage": 1,
        "Secondary Capture Image Storage": 6}  # five key-slice overlays and the report page
    sr, = (ds for ds in objects if ds.Modality == "SR")
    texts = [str(item.TextValue) for item in _items(sr) if "TextValue" in item]
    assert sum(t.startswith("slice attention: ") for t in texts) == M  # one group per table row
    for ds in objects:
        assert validate(ds, dciodvfy=dciodvfy) == [], ds.SOPClassUID.name
