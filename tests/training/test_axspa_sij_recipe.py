"""The axspa-sij recipe: studies of two series read by slot (phantoms, manifests chosen by the
node's own rules), the crop with its margin, the localiser and MSFANet stages, the hybrid loss's
weights learned or left alone, and the localiser's error measured against the truth."""
from __future__ import annotations

import csv
import dataclasses
import json
import shutil

import numpy as np
import pytest
import torch

from neuroread.models.axspa_sij.localiser import overview_grid
from neuroread.models.axspa_sij.model import LESION_KINDS
from neuroread.models.axspa_sij.preprocess import prepare
from neuroread.models.checkpoint import save_checkpoint
from neuroread.training.datasets import read_manifest
from neuroread.training.evaluate import collect
from neuroread.training.loop import fit, model_of, run_stages
from neuroread.training.recipes.axspa_sij import DEMO_PLAN, RECIPE
from neuroread.training.recipes.axspa_sij.data import centre_crops, load_study, margins, random_crops, truth_joints
from neuroread.training.recipes.axspa_sij.stages import measure, stages

TINY = {"input_shape": [6, 32, 24], "voxel_mm": [10.0, 7.0, 7.0], "widths": [4, 4, 4], "attention_dim": 4,
        "localiser_width": 2, "name": "tiny"}


@pytest.fixture(scope="module")
def records(phantom_sets):
    out, _ = RECIPE.read_records(phantom_sets["axspa-sij"], "phantoms", progress=False)
    return out


def _truth(record):
    return json.loads((record.files[0].parent.parent / "truth.json").read_text())


def test_settings_name_what_is_wrong(tmp_path):
    with pytest.raises(ValueError, match="did you mean 'hybrid'"):
        RECIPE.settings("demo", loss="hybird")
    with pytest.raises(ValueError, match="did you mean 'demo'"):
        RECIPE.settings("dmeo")
    with pytest.raises(ValueError, match="unknown keys 'fuson'"):
        RECIPE.settings("demo", network={"fuson": "concat"})
    with pytest.raises(ValueError, match="shift_mm must be at most 40"):
        RECIPE.settings("demo", shift_mm=60)
    with pytest.raises(ValueError, match="localiser_weights: .* is not a file"):
        RECIPE.settings("demo", localiser_weights=tmp_path / "none.pt")
    ablation = RECIPE.settings("demo", network={"fusion": "concat", "sequences": ["t1"]}, loss="ce")
    assert ablation.network_config().fusion == "concat" and ablation.network_config().sequences == ("t1",)
    assert "ablation" in ablation.describe() and "concatenation" in ablation.describe()
    assert RECIPE.settings("paper").network_config().input_shape == (24, 320, 224)
    assert DEMO_PLAN.heldout_seed != DEMO_PLAN.phantom_seed


def test_a_record_is_the_study_with_one_series_per_slot(records):
    assert len(records) == 4
    for record in records:
        truth = _truth(record)
        assert record.label_names == ("axspa", "non_axspa") and record.labels.tolist() == [
            float(truth["label"] == "axspa"), float(truth["label"] != "axspa")]
        assert record.mask.name.startswith("lesions_t1") and [s for s, _ in record.other_series] == ["fs"]
        t1, _ = record.load()
        fs = record.load_others()["fs"]
        assert t1.series_instance_uid == truth["series"]["t1"]["series_instance_uid"]
        assert fs.series_instance_uid == truth["series"]["fs"]["series_instance_uid"]


def test_the_crop_has_a_margin_and_its_centre_is_the_nodes_crop(records):
    settings = RECIPE.settings("demo", network=TINY, shift_mm=14.0)
    config = settings.network_config()
    assert margins(config, 14.0) == (2, 4, 4)
    record = next(r for r in records if _truth(r)["label"] == "axspa")
    study = load_study(record, config, settings.shift_mm)
    assert study.lesion is not None and study.lesion.any() and study.lesion.shape == study.crop.shape[1:]
    assert tuple(study.crop.shape) == (2, 10, 40, 32) and study.crop.dtype == torch.float16
    joints, boxes = truth_joints(record)
    t1, _ = record.load()
    grid = overview_grid(t1)
    assert np.allclose(grid.index_to_lps(study.joints.numpy().astype(float)), np.stack([joints.left, joints.right]),
                       atol=1e-3)
    node = prepare(t1, record.load_others()["fs"], joints.centre, config).inputs
    assert np.allclose(centre_crops(study.crop[None], config.input_shape)[0].numpy(), node, atol=2e-3)
    windows, masks = random_crops(study.crop[None].repeat(8, 1, 1, 1, 1), config.input_shape,
                                  torch.Generator().manual_seed(0), masks=study.lesion[None].repeat(8, 1, 1, 1))
    assert tuple(windows.shape) == (8, 2, *config.input_shape) and tuple(masks.shape) == (8, *config.input_shape)
    assert len({w.numpy().tobytes() for w in windows}) > 1  # shifted or flipped differently
    # the lesion mask travels with its window: the same voxels of the same shift and flip
    wide = study.crop[None].repeat(8, 1, 1, 1, 1)
    marked = wide.clone()
    marked[:, 1][study.lesion[None].repeat(8, 1, 1, 1) > 0] = 7.0
    again, masks = random_crops(marked, config.input_shape, torch.Generator().manual_seed(0),
                                masks=study.lesion[None].repeat(8, 1, 1, 1))
    assert torch.equal(again[:, 1] == 7.0, masks > 0)
    # each voxel says its lesion's kind, from the truth's types
    kinds = {LESION_KINDS[int(k) - 1] for k in study.lesion.unique() if k > 0}
    assert kinds and kinds <= {les["type"] for les in _truth(record)["lesions"]}


def test_the_stages_train_the_localiser_then_msfanet_with_learned_loss_weights(records, tmp_path):
    settings = RECIPE.settings("demo", network=TINY, epochs=2, batch_size=2, localiser_epochs=2, localiser_batch=2,
                               lr=1e-2, threads=1)
    torch.manual_seed(0)
    net = RECIPE.build(settings)
    localiser_before = net.localiser.heatmap.weight.detach().clone()
    history = run_stages(stages(net, records, settings, progress=False), progress=False)
    assert [row["stage"] for row in history] == ["localiser"] * 2 + ["msfanet"] * 2
    assert history[-1]["lesion"] > 0  # deep supervision by the phantoms' lesion masks
    assert not torch.equal(net.localiser.heatmap.weight, localiser_before)
    assert not torch.equal(net.loss.log_variance, torch.zeros(3))  # the β are learned, and never 0
    assert all(w > 0 for w in net.loss.weights.values())
    measured = measure(net, records, settings)
    assert measured["localiser.studies"] == 4 and measured["localiser.error_mm.p95"] >= measured[
        "localiser.error_mm.median"] > 0
    assert 0 <= measured["localiser.boxes_in_crop"] <= 1 and set(measured) >= {"loss.beta.fuse", "loss.beta.t1"}

    # the cross-entropy ablation leaves the loss weights alone; a given localiser is taken as it is
    path = tmp_path / "ax.pt"
    save_checkpoint(path, model="axspa-sij", config=net.config.to_dict(), labels=RECIPE.outputs(),
                    state_dict=net.state_dict(), architecture=net.config.to_dict(), training_data="test", demo=True)
    ce = RECIPE.settings("demo", network=TINY, epochs=1, batch_size=2, loss="ce", localiser_weights=path, threads=1)
    other = RECIPE.build(ce)
    history = run_stages(stages(other, records, ce, progress=False), progress=False)
    assert [row["stage"] for row in history] == ["msfanet"]
    assert torch.equal(other.loss.log_variance, torch.zeros(3))
    assert all(torch.equal(v, net.localiser.state_dict()[k]) for k, v in other.localiser.state_dict().items())
    assert "loss.beta.fuse" not in measure(other, records, ce)


def test_evaluation_runs_the_model_on_both_series(records):
    settings = RECIPE.settings("demo", network=TINY, epochs=1, batch_size=2, localiser_epochs=1, localiser_batch=2,
                               threads=1)
    trained = fit(RECIPE, settings, records, progress=False)
    col = collect(model_of(RECIPE, trained.net, settings), records, progress=False)
    probs, truth = col.classes["diagnosis"]
    assert len(probs) == 4 and sorted(set(truth)) <= [0, 1]
    alone = [dataclasses.replace(r, other_series=()) for r in records[:1]]
    with pytest.raises(ValueError, match=r"also needs \['fs'\]"):
        collect(model_of(RECIPE, trained.net, settings), alone, progress=False)


def _manifest(tmp_path, studies, extra=None):
    path = tmp_path / "manifest.csv"
    rows = []
    for study in studies:
        truth = json.loads((study / "truth.json").read_text())
        row = {"study": study.name, "axspa": int(truth["label"] == "axspa"), "non_axspa": int(truth["label"] != "axspa")}
        row.update((extra or {}).get(study.name, {}))
        rows.append(row)
    fields = list(dict.fromkeys(k for row in rows for k in row))
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fields)
        writer.writeheader()
        writer.writerows(rows)
    return path


def test_a_manifest_names_each_slots_series(phantom_sets, tmp_path):
    from neuroread.models.axspa_sij.model import SPEC

    studies = sorted(p.parent for p in phantom_sets["axspa-sij"].glob("*/truth.json"))
    for study in studies:
        shutil.copytree(study, tmp_path / study.name, ignore=shutil.ignore_patterns("truth.json", "masks"))
    truths = [json.loads((s / "truth.json").read_text()) for s in studies]
    named = {s.name: {"series_t1": t["series"]["t1"]["series_instance_uid"],
                      "series_fs": t["series"]["fs"]["series_instance_uid"]} for s, t in zip(studies, truths)}
    # the second study names its T1 only: the folder's other series is its fat-suppressed one
    named[studies[1].name].pop("series_fs")
    records = read_manifest(_manifest(tmp_path, studies, named), ("axspa", "non_axspa"), spec=SPEC)
    for record, truth in zip(records, truths):
        t1, _ = record.load()
        assert t1.series_instance_uid == truth["series"]["t1"]["series_instance_uid"]
        assert record.load_others()["fs"].series_instance_uid == truth["series"]["fs"]["series_instance_uid"]
    # no columns, or a named series that is not there: refused, naming what to write
    with pytest.raises(ValueError, match=r"line 2: axspa-sij reads one series per slot \(t1, fs\) and the study folder "
                                         r"holds 2 .* columns series_t1, series_fs \(`neuroread route explain"):
        read_manifest(_manifest(tmp_path, studies[:1]), ("axspa", "non_axspa"), spec=SPEC)
    wrong = _manifest(tmp_path, studies[:1], {studies[0].name: {"series_t1": "1.2.3"}})
    with pytest.raises(ValueError, match="column series_t1 names series 1.2.3, not in the study folder"):
        read_manifest(wrong, ("axspa", "non_axspa"), spec=SPEC)
