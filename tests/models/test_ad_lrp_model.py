"""ad-lrp behind the model contract: a 3D T1 phantom in any plane → diagnosis, signed LRP and
guided-backpropagation maps on the series' own grid, key slices and relevance per atlas region;
series it cannot read are refused with the reason; the region metrics by hand."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from neuroread.models.ad_lrp import regions
from neuroread.models.ad_lrp.model import COLUMNS, DIAGNOSIS, SPEC, ADModel
from neuroread.models.ad_lrp.preprocess import UnusableSeries, prepare, to_series
from neuroread.models.atlas import load_atlas, template_grid
from neuroread.training.datasets import read_phantoms


@pytest.fixture(scope="module")
def model(ad_weights) -> ADModel:
    m = ADModel()
    m.load(ad_weights, "cpu")
    return m


@pytest.fixture(scope="module")
def records(phantom_sets):
    return read_phantoms(phantom_sets["ad-lrp"], ("ad", "cn"), series="t1", mask="regions")


@pytest.fixture(scope="module")
def volumes(records):
    return [r.load()[0] for r in records]


def test_predict_on_a_phantom_keeps_the_contract_and_is_deterministic(model, volumes):
    vol = volumes[0]
    result = model.predict({"t1": vol})
    result.check(SPEC, {"t1": vol})
    (c,) = result.classifications
    assert c.concept == DIAGNOSIS.concept and [p.name for p in c.probabilities] == ["ad", "cn"]
    assert abs(sum(p.probability for p in c.probabilities) - 1.0) < 1e-6
    kinds = {h.kind: h for h in result.heatmaps}
    assert set(kinds) == {"lrp", "guided_backprop"}
    lrp = kinds["lrp"]
    assert lrp.signed and lrp.explains == "ad" and lrp.array.shape == vol.array.shape
    assert lrp.value_range[0] == -lrp.value_range[1] and np.abs(lrp.array).max() == pytest.approx(lrp.value_range[1])
    assert (lrp.array > 0).any() and (lrp.array < 0).any()  # evidence for and against AD
    assert 1 <= len(result.key_slices) <= 5
    # the key slices hold the most positive relevance
    positive = np.clip(lrp.array, 0, None).reshape(len(lrp.array), -1).sum(1)
    assert [k.slice_index for k in result.key_slices] == list(np.argsort(-positive, kind="stable")[:len(result.key_slices)])
    (table,) = result.tables
    assert table.columns == COLUMNS and len(table.rows) == model.net.config.top_regions
    gains = [row.values[0] for row in table.rows]
    assert gains == sorted(gains, reverse=True)
    names = set(load_atlas().names.values())
    assert all(row.code.scheme == "99NEUROREAD" and row.code.value.startswith("NMM")
               and row.code.meaning.replace(" ", "_") in names for row in table.rows)
    again = model.predict({"t1": vol})
    assert np.array_equal(again.heatmaps[0].array, lrp.array) and again.tables == result.tables


def test_maps_go_back_onto_the_series_through_the_registration(model, records, volumes):
    """A map that is 1 in the template's hippocampi comes back onto the phantom where the
    phantom's own truth (its regions mask, through the subject's warp) says its hippocampi are."""
    vol = volumes[1]
    prep = prepare(vol, model.net.config.step)
    ids = [i for i, n in load_atlas().names.items() if n.endswith("Hippocampus")]
    on_series = to_series(prep.labels, vol, prep, "nearest")  # as predict takes the regions back
    assert on_series.dtype == prep.labels.dtype
    back = np.isin(on_series, ids)
    assert back.shape == vol.array.shape
    hippocampus = np.isin(records[1].load_mask(vol), ids)
    dice = 2 * (back & hippocampus).sum() / (back.sum() + hippocampus.sum())
    assert dice > 0.5, dice


def test_series_it_cannot_read_are_refused_with_the_reason(model, volumes):
    vol = volumes[0]
    thick = dataclasses.replace(vol, spacing=(vol.spacing[0], vol.spacing[1], 5.0))
    with pytest.raises(UnusableSeries, match=r"slices 5.0 mm apart: the model needs a 3D T1"):
        model.predict({"t1": thick})
    rng = np.random.default_rng(0)
    noise = dataclasses.replace(vol, array=rng.integers(0, 50, vol.array.shape).astype(vol.array.dtype))
    with pytest.raises(ValueError, match="registration to the MNI template failed|covers"):
        model.predict({"t1": noise})
    half = dataclasses.replace(vol, array=vol.array[: len(vol.array) // 3].copy(),
                               sop_instance_uids=vol.sop_instance_uids[: len(vol.array) // 3])
    with pytest.raises(UnusableSeries, match=r"covers \d+ % of the brain|registration"):
        model.predict({"t1": half})


def test_template_grid_is_the_atlas_grid_every_step():
    atlas = load_atlas()
    grid = template_grid(2)
    assert grid.shape == (50, 61, 48)  # (k, j, i)
    assert np.allclose(grid.index_to_lps(np.array([0, 0, 1])) - grid.index_to_lps(np.zeros(3)),
                       atlas.affine[:3, 0] * 2)


def test_region_metrics_by_hand():
    labels = np.zeros((4, 4, 4), np.int16)
    labels[0] = 10  # 16 voxels
    labels[1, :2] = 20  # 8 voxels
    labels[2, 0, 0] = 30  # 1 voxel
    relevance = np.zeros(labels.shape)
    relevance[0] = 0.5
    relevance[1, :2] = 2.0
    relevance[2, 0, 0] = 9.0
    names = {10: "A", 20: "B", 30: "C", 40: "absent"}
    plain = regions.measure(relevance, labels, names)
    assert [(r.id, r.voxels, r.relevance, r.density, r.gain) for r in plain] == [
        (10, 16, 8.0, 0.5, None), (20, 8, 16.0, 2.0, None), (30, 1, 9.0, 9.0, None)]
    reference = {10: 0.25, 20: 4.0, 30: 0.0}  # C's controls carry nothing: the floor stands in
    floor = regions.GAIN_FLOOR * np.mean([0.25, 4.0, 0.0])
    measured = regions.measure(relevance, labels, names, reference)
    assert [r.gain for r in measured] == pytest.approx([2.0, 0.5, 9.0 / floor])
    assert [r.id for r in regions.ranked(measured, 2, min_voxels=2)] == [10, 20]  # C too small to rank
    assert [r.id for r in regions.ranked(measured, 5, min_voxels=1)] == [30, 10, 20]
    assert regions.reference_densities([plain, regions.measure(relevance * 3, labels, names)]) == \
        {10: pytest.approx(1.0), 20: pytest.approx(4.0), 30: pytest.approx(18.0)}
