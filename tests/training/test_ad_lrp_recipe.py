"""The ad-lrp recipe: settings, records registered once, a fit that stores the training controls'
relevance per region with the weights, and the card's relevance measurements."""
from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
import torch

from neuroread.models.ad_lrp.config import ADConfig
from neuroread.models.checkpoint import load_checkpoint
from neuroread.training.loop import fit
from neuroread.training.recipes.ad_lrp import RECIPE, data, stages

TINY = {"widths": [2, 4, 4, 4], "hidden": 8, "name": "tiny"}


@pytest.fixture(scope="module")
def records(phantom_sets):
    out, source = RECIPE.read_records(phantom_sets["ad-lrp"], "phantoms", progress=False)
    assert "phantoms" in source
    return out


def test_settings_name_what_is_wrong():
    with pytest.raises(ValueError, match="Settings.batch_size must be at least 2"):
        RECIPE.settings("demo", batch_size=1)
    with pytest.raises(ValueError, match=r"unknown preset 'dmeo' \(did you mean 'demo'\?\)"):
        RECIPE.settings("dmeo")
    with pytest.raises(ValueError, match="Settings.shift must be a non-negative integer"):
        RECIPE.settings("demo", shift=-1)
    with pytest.raises(ValueError, match="unknown keys 'widht'"):
        RECIPE.settings("demo", network={"widht": [2, 2]})
    assert RECIPE.settings("demo").network_config() == ADConfig.demo()
    assert RECIPE.settings("paper").network_config().step == 1
    assert "MNI grid at 3 mm" in RECIPE.describe(RECIPE.settings("demo"))


def test_records_are_registered_once_and_carry_what_the_generator_changed(records):
    samples = data.load_all(records, 2, workers=2, progress=False)
    again = data.load_all(records, 2, progress=False)
    assert all(a is b for a, b in zip(samples, again))  # from the per-process cache
    assert [s.study_id for s in samples] == [r.study_id for r in records]
    for s, r in zip(samples, records):
        assert s.image.shape == (1, 48, 61, 50) and s.image.dtype == torch.float16
        assert s.label == int(np.argmax(r.labels))
        if s.label == 0:  # AD: the generator shrank the medial temporal regions and enlarged the horns
            assert any("Hippocampus" in name for name in _names(s.atrophied)) and s.enlarged
        else:
            assert not s.atrophied and not s.enlarged
    one = data.load_all(records[:1], 2, workers=1, progress=False)[0]
    assert torch.equal(one.image, samples[0].image)


def _names(ids):
    from neuroread.models.atlas import load_atlas

    names = load_atlas().names
    return [names[i] for i in ids]


def test_a_fit_stores_the_controls_reference_density_and_the_card_measures_relevance(records, tmp_path):
    settings = RECIPE.settings("demo", network=TINY, epochs=2, batch_size=2, threads=1)
    trained = fit(RECIPE, settings, records, progress=False)
    config = trained.net.config
    assert len(config.reference_ids) == len(config.reference_density) > 100  # every atlas region on the grid
    assert any(v != 0 for v in config.reference_density)
    # the same controls' relevance, measured again, gives the stored densities
    controls = [s for s in data.load_all(records, 2, progress=False) if s.label == 1]
    again = stages.reference_density(trained.net, controls)
    assert list(again) == list(config.reference_ids)
    assert np.allclose(list(again.values()), config.reference_density, atol=1e-8)
    # and they travel in the checkpoint's configuration, the card's architecture
    out = tmp_path / "tiny.pt"
    from neuroread.models.checkpoint import save_checkpoint

    saved = RECIPE.checkpoint_config(trained.net, settings)
    save_checkpoint(out, model="ad-lrp", config=saved, labels=RECIPE.outputs(), state_dict=trained.net.state_dict(),
                    architecture=saved, training_data="test", demo=True)
    card = load_checkpoint(out, "ad-lrp").card
    assert ADConfig.from_dict(card.architecture).reference_density == config.reference_density
    measured = RECIPE.measure(trained.net, records, settings)
    for key in ("regions.ad_top5_atrophied", "regions.ad_top5_changed", "regions.ad_top5_atrophied_share",
                "regions.ad_top1_atrophied", "relevance.control_to_ad", "relevance.mean_ad", "relevance.mean_control",
                "lrp.conservation"):
        assert key in measured and np.isfinite(measured[key]), key
    assert 0.0 <= measured["regions.ad_top5_atrophied"] <= measured["regions.ad_top5_changed"] <= 1.0
    assert measured["regions.ad_series"] == sum(int(np.argmax(r.labels)) == 0 for r in records)


def test_a_manifest_of_3d_t1_studies_trains_like_phantoms(phantom_sets, tmp_path):
    """A site's data: study folders of DICOM files and a manifest with ad/cn columns, no truth
    files. The records read the same series with the same labels; prepared, they are the same
    inputs; without a phantom truth they carry no changed regions (the card's region metrics need
    phantoms)."""
    studies = sorted(p.parent for p in phantom_sets["ad-lrp"].glob("*/truth.json"))
    with open(tmp_path / "manifest.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, ["study", "ad", "cn"])
        writer.writeheader()
        for study in studies:
            shutil.copytree(study, tmp_path / study.name, ignore=shutil.ignore_patterns("truth.json", "masks"))
            label = json.loads((study / "truth.json").read_text())["label"]
            writer.writerow({"study": study.name, "ad": int(label == "ad"), "cn": int(label == "cn")})
    records, source = RECIPE.read_records(tmp_path / "manifest.csv", "manifest", progress=False)
    phantoms, _ = RECIPE.read_records(phantom_sets["ad-lrp"], "phantoms", progress=False)
    assert source.startswith("manifest") and len(records) == len(phantoms) == len(studies)
    for record, phantom in zip(records, phantoms):
        assert record.label_names == ("ad", "cn") and np.array_equal(record.labels, phantom.labels)
        (ours,), (theirs,) = data.load_all([record], 2, progress=False), data.load_all([phantom], 2, progress=False)
        assert torch.equal(ours.image, theirs.image) and ours.label == theirs.label
        assert not ours.atrophied and not ours.enlarged
    with pytest.raises(ValueError, match="unknown data format 'nifti' for ad-lrp"):
        RECIPE.read_records(tmp_path / "manifest.csv", "nifti", progress=False)
