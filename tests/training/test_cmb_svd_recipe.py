"""The cmb-svd recipe: settings refused by name, crops that hold their microbleed, bags encoded
as the model encodes detections, and a fit end to end (detector, MIL, operating point) on the
session's SWI phantoms whose checkpoint the node's model loads."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from neuroread.models.cmb_svd.network import GEOMETRY
from neuroread.training.recipes.cmb_svd import DEMO_PLAN, RECIPE
from neuroread.training.recipes.cmb_svd.data import load_study
from neuroread.training.recipes.cmb_svd.stages import _crop, annotated_bag

TINY = {"widths": [4, 8, 8, 8], "fpn_channels": 8, "representation": 16, "mask_layers": [8], "mil_hidden": 8,
        "pixel_mm": 2.4, "input_size": 96, "name": "tiny"}


def test_settings_name_what_is_wrong():
    with pytest.raises(ValueError, match="did you mean 'demo'"):
        RECIPE.settings("dmeo")
    with pytest.raises(ValueError, match="unknown keys 'fpn_chanels'"):
        RECIPE.settings("demo", network={"fpn_chanels": 8})
    with pytest.raises(ValueError, match="crop must be a multiple of 32"):
        RECIPE.settings("demo", crop=100)
    with pytest.raises(ValueError, match="crop 320 is larger than the network's canvas 288"):
        RECIPE.settings("demo", crop=320)
    with pytest.raises(ValueError, match="instance_keep must be in"):
        RECIPE.settings("demo", instance_keep=1.5)
    assert RECIPE.settings("paper").network_config().fpn_channels == 256
    assert DEMO_PLAN.size == "full" and DEMO_PLAN.heldout_seed != DEMO_PLAN.phantom_seed


@pytest.fixture(scope="module")
def records(phantom_sets):
    return RECIPE.read_records(phantom_sets["cmb-svd"], "phantoms", progress=False)[0]


def test_crops_hold_their_microbleed_with_its_box_and_mask(records):
    settings = RECIPE.settings("demo", network=TINY, crop=64)
    study = load_study(records[0], settings.network_config())
    assert study.canvas.shape[1:] == (96, 96) and len(study.positives) > 0
    generator = torch.Generator().manual_seed(0)
    for k in study.positives[:3]:
        image, target = _crop(study, int(k), 64, generator, positive=True)
        assert image.shape == (3, 64, 64) and len(target["boxes"]) >= 1
        for box, mask in zip(target["boxes"], target["masks"]):
            rows, cols = np.flatnonzero(mask.numpy().any(1)), np.flatnonzero(mask.numpy().any(0))
            assert box.tolist() == [cols[0], rows[0], cols[-1] + 1, rows[-1] + 1]
    # hard negatives: dark spots in tissue, never on or next to an annotated microbleed
    from scipy import ndimage

    assert len(study.spots) > 0
    distance = ndimage.distance_transform_cdt(study.ids == 0, metric="taxicab")  # as the dilation counts
    assert all(distance[k, r, c] > 4 for k, r, c in study.spots)
    image, target = _crop(study, study.spots[0], 64, generator, positive="spot")
    assert image.shape == (3, 64, 64)
    negative = next(k for k in study.head if k not in set(study.positives.tolist()))
    image, target = _crop(study, negative, 64, generator, positive=False)
    assert target["boxes"].shape == (0, 4) and target["masks"].shape == (0, 64, 64)


def test_a_fit_trains_detector_and_mil_and_chooses_an_operating_point(records, tmp_path):
    from neuroread.models.checkpoint import save_checkpoint
    from neuroread.models.cmb_svd.model import MicrobleedModel
    from neuroread.training.loop import fit

    settings = RECIPE.settings("demo", network=TINY, epochs=1, batch_size=2, crop=64, mil_epochs=2, threads=1)
    torch.manual_seed(0)
    net = RECIPE.build(settings)
    mil_before = net.subtype.classifier.weight.detach().clone()
    bag = annotated_bag(net, records[0])
    assert bag.instances.shape == (len(bag.classes), len(GEOMETRY)) and len(bag.classes) > 0  # demo: no ROI features
    assert settings.network_config().instance_width == len(GEOMETRY)
    assert set(bag.classes) <= {"lobar", "deep", "infratentorial"}
    trained = fit(RECIPE, settings, records[:3], records[3:], progress=False)
    assert {row["stage"] for row in trained.history} == {"detector", "subtype"}
    assert not torch.equal(trained.net.subtype.classifier.weight, mil_before)
    assert float(trained.net.subtype.context_std.min()) > 0 and trained.net.subtype.context_mean.abs().sum() > 0
    threshold = trained.net.config.detection_threshold
    assert 0 < threshold < 1  # chosen on the validation study
    out = tmp_path / "cmb-svd-tiny.pt"
    config = RECIPE.checkpoint_config(trained.net, settings)
    assert config["detection_threshold"] == threshold
    save_checkpoint(out, model="cmb-svd", config=config, labels=RECIPE.outputs(), state_dict=trained.net.state_dict(),
                    architecture=config, training_data="three test phantoms", demo=True)
    model = MicrobleedModel()
    model.load(out)
    assert model.net.config.detection_threshold == threshold
    volume, _ = records[3].load()
    result = model.predict({"swi": volume})
    assert result.classifications[0].outcome == "subtype"


def test_the_operating_point_is_chosen_on_probabilities_from_trees_that_never_saw_the_scan():
    from neuroread.training.recipes.cmb_svd.stages import FOLDS, filter_out_of_fold

    rng = np.random.default_rng(0)
    scan_of = np.repeat(np.arange(8), 30)
    x = rng.normal(size=(len(scan_of), 12)).astype(np.float32)
    y = x[:, 3] + 0.3 * rng.normal(size=len(x)) > 0.5
    settings = RECIPE.settings("demo", filter_trees=30)
    p = filter_out_of_fold(x, y, scan_of, settings)
    assert p.shape == y.shape and 0 <= p.min() and p.max() <= 1
    assert p[y].mean() > 0.6 > 0.3 > p[~y].mean()  # the trees learnt the feature
    flipped = y.copy()
    flipped[scan_of == 0] = ~flipped[scan_of == 0]  # scan 0's labels change ...
    q = filter_out_of_fold(x, flipped, scan_of, settings)
    same_fold = (scan_of % FOLDS) == 0
    assert np.array_equal(q[same_fold], p[same_fold])  # ... its own fold's probabilities do not
    assert not np.array_equal(q[scan_of == 1], p[scan_of == 1])  # another fold's trees learnt from it
    one_kind = filter_out_of_fold(x, np.zeros(len(x), bool), scan_of, settings)
    assert np.array_equal(one_kind, x[:, 0])  # nothing to learn: the detector's score stays
