"""The ms-csvd model: the brain slices it reads, what it refuses, and a result that explains the
decided class on the series' own grid (tiny weights trained on the session's FLAIR phantoms)."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from neuroread.models import default_registry
from neuroread.models.ms_csvd.model import CLASSES, KEY_SLICES, SPEC, MSCSVDModel
from neuroread.models.ms_csvd.preprocess import MIN_BRAIN_SLICES, UnusableSeries, brain_slices, prepare, sample
from neuroread.training.phantoms.baseline import load_truth
from neuroread.training.recipes.ms_csvd import RECIPE


@pytest.fixture(scope="module")
def flair(phantom_sets):
    records, _ = RECIPE.read_records(phantom_sets["ms-csvd"], "phantoms", progress=False)
    return records[0].load()[0]


@pytest.fixture(scope="module")
def model(ms_csvd_weights):
    m = default_registry().create("ms-csvd")
    m.load(ms_csvd_weights)
    return m


def test_the_slices_through_the_brain_leave_out_vertex_and_skull_base(flair):
    brain, sections = brain_slices(flair)
    n = flair.array.shape[0]
    assert MIN_BRAIN_SLICES <= len(brain) < n
    assert brain.tolist() == list(range(brain[0], brain[-1] + 1))  # one run, the middle of the head
    left_out = [k for k in range(n) if k not in brain]
    assert sections[left_out].max() < sections[brain].min()  # the smaller sections, at the ends
    assert sections[brain].min() >= 0.6 * sections.max()
    prep = prepare(flair, 64, 12)
    assert prep.images.shape == (len(prep.slices), 3, 64, 64) and len(prep.slices) == min(12, len(brain))
    assert set(prep.slices.tolist()) <= set(brain.tolist()) and 0 <= float(prep.images.min())
    assert sample(np.arange(30), 5).tolist() == [0, 7, 14, 22, 29]


def test_a_flair_without_enough_brain_slices_is_refused_with_its_reason(flair, model):
    top = dataclasses.replace(flair, array=flair.array[-6:], sop_instance_uids=flair.sop_instance_uids[-6:])
    with pytest.raises(UnusableSeries, match=r"only \d of its 6 slices go through the brain"):
        brain_slices(top)
    with pytest.raises(ValueError, match="needs at least 6 axial FLAIR slices through the brain"):
        model.predict({"flair": top})
    blank = dataclasses.replace(flair, array=np.zeros_like(flair.array))
    with pytest.raises(ValueError, match="no signal"):
        model.predict({"flair": blank})


def test_the_result_explains_the_decided_class_on_the_series_grid(flair, model):
    result = model.predict({"flair": flair})
    result.check(SPEC, {"flair": flair})
    (c,) = result.classifications
    assert [p.name for p in c.probabilities] == list(CLASSES) and c.decided in CLASSES
    assert result.card.demo
    (scores,) = result.slice_scores
    assert sum(scores.scores) == pytest.approx(1.0, abs=1e-5)
    ranked = sorted(zip(scores.scores, scores.slice_indices), key=lambda t: -t[0])[:KEY_SLICES]
    assert [k.slice_index for k in result.key_slices] == [i for _, i in ranked]
    assert [k.rank for k in result.key_slices] == list(range(1, KEY_SLICES + 1))
    kinds = [h.kind for h in result.heatmaps]
    assert kinds == ["attention", "gradcam"] and result.ranked_heatmaps(flair.series_instance_uid)[0].kind == "attention"
    read = set(scores.slice_indices)
    for h in result.heatmaps:
        assert h.explains == c.decided and h.array.shape == flair.array.shape and h.value_range == (0.0, 1.0)
        off = [k for k in range(flair.array.shape[0]) if k not in read]
        assert not h.array[off].any(), f"{h.kind}: values on slices the network did not read"
        assert h.array[sorted(read)].max() > 0
    # the map is back on the slice's grid: nothing outside the head's square padding region
    assert result.heatmaps[0].array.shape[1:] == flair.array.shape[1:]


def test_weights_of_another_model_or_shape_are_refused(tmp_path, weights, ms_csvd_weights):
    m = MSCSVDModel()
    with pytest.raises(RuntimeError, match="predict before load"):
        m.predict({})
    with pytest.raises(ValueError):
        m.load(weights)  # ct-hemorrhage's
    m.load(ms_csvd_weights)
    assert m.net.config.name == "tiny"


def test_the_phantom_truth_has_the_lesions_the_pointing_game_reads(phantom_sets):
    records, _ = RECIPE.read_records(phantom_sets["ms-csvd"], "phantoms", progress=False)
    for record in records:
        volume, _ = record.load()
        ids = record.load_mask(volume)
        truth = load_truth(record.files[0].parent.parent)
        assert ids.shape == volume.array.shape
        bright = {r["id"] for r in truth["lesions"] if r["mask"] == "lesions"}
        assert set(np.unique(ids[ids > 0]).tolist()) <= bright
