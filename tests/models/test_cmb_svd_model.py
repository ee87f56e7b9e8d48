"""The cmb-svd model with its committed demo weights on a full-size SWI phantom: microbleeds with
their masks, coded location classes, sizes and MIL weights; counts per location; the subtype;
key slices; what it refuses; and the canvas it reads slices on."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from neuroread.models import default_registry
from neuroread.models.cmb_svd.model import CLASSES, KEY_SLICES, LOCATION_CODES, SPEC
from neuroread.models.cmb_svd.preprocess import MIN_SLICES, UnusableSeries, prepare
from neuroread.training.detection import detection_metrics
from neuroread.training.recipes.cmb_svd import RECIPE


@pytest.fixture(scope="module")
def swi(phantom_sets):
    record = RECIPE.read_records(phantom_sets["cmb-svd"], "phantoms", progress=False)[0][0]
    volume, _ = record.load()
    truth = json.loads((record.mask.parent.parent / "truth.json").read_text())
    return volume, record.load_mask(volume), truth


@pytest.fixture(scope="module")
def model():
    m = default_registry().create("cmb-svd")
    m.load(default_registry().entry("cmb-svd").demo_weights)
    return m


@pytest.fixture(scope="module")
def result(model, swi):
    return model.predict({"swi": swi[0]})


def test_the_microbleeds_are_found_with_their_masks_on_the_swi_grid(result, swi):
    volume, ids, truth = swi
    result.check(SPEC, {"swi": volume})
    assert result.card.demo and len(result.lesions) >= 1
    scores = detection_metrics([([les.mask for les in result.lesions], ids)])
    assert scores["n_matched"] >= 3 and scores["fp_per_scan"] <= 2, scores  # held-out recall is 0.65 (the card)
    weights = [les.instance_weight for les in result.lesions]
    assert abs(sum(weights) - 1) < 1e-6 and min(weights) > 0  # the MIL's attention over the bag
    for i, les in enumerate(result.lesions, start=1):
        assert les.location in LOCATION_CODES.values()
        assert les.tracking_id.startswith(f"microbleed {i} ")
        assert les.mask.shape == volume.array.shape and les.volume_mm3 == pytest.approx(
            les.mask.sum() * np.prod(volume.spacing))
        centre = volume.index_to_lps(np.argwhere(les.mask).mean(axis=0))
        assert np.allclose(centre, les.centroid_lps)
        (diameter,) = les.measurements
        assert diameter.unit.value == "mm" and 1.0 < diameter.value < 20.0
    (table,) = result.tables
    counts = {row.code.meaning: row.values[0] for row in table.rows}
    assert sum(v for k, v in counts.items() if k != "All locations") == counts["All locations"] == len(result.lesions)


def test_the_subtype_and_its_explanation(result, swi):
    (c,) = result.classifications
    assert [p.name for p in c.probabilities] == list(CLASSES) and c.decided in CLASSES
    (heat,) = result.heatmaps
    assert heat.kind == "instance_weight" and heat.explains == c.decided
    assert heat.array.max() == pytest.approx(1.0)
    inside = np.zeros(heat.array.shape, bool)
    for les in result.lesions:
        inside |= les.mask
    assert not heat.array[~inside].any()  # the map paints the microbleeds and nothing else


def test_key_slices_cross_the_most_microbleeds(result):
    crossing = np.stack([les.mask.any(axis=(1, 2)) for les in result.lesions]).sum(axis=0)
    keys = sorted(result.key_slices, key=lambda k: k.rank)
    assert 1 <= len(keys) <= KEY_SLICES
    assert [k.score for k in keys] == sorted((k.score for k in keys), reverse=True)
    assert keys[0].score == crossing.max() and all(crossing[k.slice_index] == k.score for k in keys)


def test_what_it_cannot_read_is_refused_with_the_reason(model, swi):
    volume = swi[0]
    short = dataclasses.replace(volume, array=volume.array[:10], sop_instance_uids=volume.sop_instance_uids[:10])
    with pytest.raises(UnusableSeries, match=f"needs at least {MIN_SLICES} axial SWI slices"):
        model.predict({"swi": short})
    with pytest.raises(ValueError, match="no signal"):
        model.predict({"swi": dataclasses.replace(volume, array=np.zeros_like(volume.array))})


def test_the_canvas_keeps_the_geometry_and_maps_go_back(swi):
    volume, ids, _ = swi
    prep = prepare(volume, 0.8, 288)
    assert prep.canvas.shape == (volume.array.shape[0], 288, 288)
    centre = np.array([3.0, (volume.array.shape[1] - 1) / 2, (volume.array.shape[2] - 1) / 2])
    assert np.allclose(prep.grid.index_to_lps([3.0, 143.5, 143.5]), volume.index_to_lps(centre), atol=1e-6)
    lesion = ids == ids.max()
    k = int(np.argmax(lesion.sum(axis=(1, 2))))
    on_canvas = prep.to_canvas(lesion.astype(np.uint8))[k].astype(np.float32)
    back = prep.plane_to_source(on_canvas) >= 0.5
    overlap = (back & lesion[k]).sum() / max((back | lesion[k]).sum(), 1)
    assert overlap > 0.5  # nearest onto the canvas and linear back: the same microbleed


def test_the_anatomical_screen_keeps_parenchymal_foci_and_drops_calcification_sites():
    from neuroread.models.cmb_svd.model import screen
    from neuroread.training.phantoms.anatomy import load_template

    t = load_template()
    left_gp, thalamus = t.region_centroid("Left_Pallidum"), t.region_centroid("Right_Thalamus_Proper")
    inside = t.region_points("Left_Lateral_Ventricle")
    ventricle = inside[len(inside) // 2]
    mirrored = left_gp * np.array([-1.0, 1.0, 1.0]) + np.array([1.0, -1.5, 0.5])
    keep = screen(np.stack([left_gp, mirrored, thalamus, ventricle]))
    assert keep.tolist() == [False, False, True, False]  # a symmetric pallidal pair, a thalamic focus, a ventricle
    assert screen(np.stack([left_gp, thalamus])).tolist() == [True, True]  # one pallidal focus alone is kept
    assert screen(np.zeros((0, 3))).tolist() == []
