"""Demo weights (:mod:`neuroread.training.demo`): a tiny plan (10 training and 10 held-out phantoms
in a temporary cache, a tiny frozen-encoder network, one epoch per stage) run through
``train_demo`` as ``neuroread train-demo`` runs the real one. The phantoms take most of the time."""
from __future__ import annotations

import json
import logging
import re

import pytest
import torch

from neuroread.models.checkpoint import load_checkpoint
from neuroread.training.datasets import RSNA_LABELS
from neuroread.training.demo import DemoPlan, card_path, train_demo

TINY_FROZEN = {"slices": 4, "key_slices": 2, "input_size": 32, "zoom_size": 64, "backbone": [4, "M", 8, "M"],
               "gru_hidden": 4, "aps_fc": 8, "head": [8, 4], "backbone_batch_norm": True, "freeze_backbone": True,
               "name": "tiny-frozen"}
PLAN = DemoPlan(task="ct-hemorrhage", studies=10, heldout_studies=10,
                settings={"network": TINY_FROZEN, "epochs": 1, "pretrain_epochs": 1, "pretrain_batch": 32,
                          "batch_size": 4, "seed": 0, "threads": 1})


@pytest.mark.slow
def test_train_demo_writes_weights_and_their_card(tmp_path, caplog, monkeypatch):
    cache = tmp_path / "cache"
    out = tmp_path / "w" / "ct-hemorrhage-demo.pt"
    report = train_demo("ct-hemorrhage", out, progress=False, cache_dir=cache, plan=PLAN)

    # the two phantom sets, complete, and no partial folder left behind
    assert sorted(p.name for p in cache.iterdir()) == ["ct-hemorrhage-small-s20220601-n10",
                                                       "ct-hemorrhage-small-s20221107-n10"]
    assert all(len(list(p.glob("*/truth.json"))) == 10 and (p / "manifest.csv").is_file() for p in cache.iterdir())

    ckpt = load_checkpoint(out, "ct-hemorrhage")
    assert ckpt.card.demo is True and ckpt.card.weights_sha256 == report.sha256
    assert ckpt.labels == RSNA_LABELS and ckpt.config["name"] == "tiny-frozen"
    assert ckpt.card.metrics == pytest.approx(report.metrics) and ckpt.card.thresholds == pytest.approx(report.thresholds)
    text = ckpt.card.training_data
    assert text.startswith("synthetic phantoms, not for clinical use (neuroread phantoms ct-hemorrhage --n 10 "
                           "--seed 20220601 --size small (training and validation); --n 10 --seed 20221107 (held out))")
    assert ("Metrics: 10 held-out series never seen in training or threshold choice (fresh phantoms, seed 20221107)"
            in text)
    assert "Command: neuroread train-demo ct-hemorrhage." in text

    card = json.loads(card_path(out).read_text())
    assert card_path(out) == out.with_name("ct-hemorrhage-demo.pt.card.json")
    assert card["model"] == "ct-hemorrhage" and card["weights"] == out.name and card["sha256"] == report.sha256
    assert card["command"] == "neuroread train-demo ct-hemorrhage"
    assert re.fullmatch(r"[0-9a-f]{40}(\+dirty)?|unknown", card["commit"]), card["commit"]
    assert card["heldout_metrics"] == pytest.approx(report.metrics)
    assert card["heldout_metrics"]["n_studies"] == 10.0
    for key in ("f1_macro", "auc.any", "key_slice.positive_studies"):
        assert key in card["heldout_metrics"], key
    assert set(card["thresholds"]) == set(RSNA_LABELS) and all(0 < t < 1 for t in card["thresholds"].values())
    assert card["thresholds"] == pytest.approx(report.thresholds)
    assert card["plan"]["studies"] == 10 and card["plan"]["heldout_seed"] == 20221107
    assert card["plan"]["settings"]["network"] == TINY_FROZEN
    assert "tiny-frozen network" in card["settings"] and card["synthetic"].endswith("not for clinical use")

    # again, to the default place ($NEUROREAD_WEIGHTS): the cached phantoms are reused, the weights are the same
    monkeypatch.setenv("NEUROREAD_WEIGHTS", str(tmp_path / "built"))
    caplog.set_level(logging.INFO, logger="neuroread.training.demo")
    again = train_demo("ct-hemorrhage", progress=False, cache_dir=cache, plan=PLAN)
    assert again.path == tmp_path / "built" / "ct-hemorrhage-demo.pt"
    assert caplog.text.count("reusing 10 phantoms") == 2
    second = load_checkpoint(again.path, "ct-hemorrhage")
    assert all(torch.equal(ckpt.state_dict[k], second.state_dict[k]) for k in ckpt.state_dict)
    assert again.metrics == report.metrics and again.thresholds == report.thresholds
    assert card_path(again.path).is_file()


def test_demo_plans_and_train_demo_refuse_bad_requests(tmp_path):
    with pytest.raises(ValueError, match="DemoPlan.heldout_seed must differ from phantom_seed"):
        DemoPlan(task="ct-hemorrhage", studies=10, heldout_studies=10, phantom_seed=3, heldout_seed=3)
    with pytest.raises(ValueError, match="DemoPlan.studies must be an integer >= 10, got 9"):
        DemoPlan(task="ct-hemorrhage", studies=9)
    with pytest.raises(ValueError, match="DemoPlan.heldout_studies must be an integer >= 10, got True"):
        DemoPlan(task="ct-hemorrhage", heldout_studies=True)
    with pytest.raises(ValueError, match="no training recipe for model 'no-such-model'"):
        train_demo("no-such-model", tmp_path / "x.pt", progress=False, cache_dir=tmp_path / "cache", plan=PLAN)
    bad = DemoPlan(task="ct-hemorrhage", studies=10, heldout_studies=10, settings={"epochs": 0})
    with pytest.raises(ValueError, match="Settings.epochs must be a positive integer, got 0"):
        train_demo("ct-hemorrhage", tmp_path / "x.pt", progress=False, cache_dir=tmp_path / "cache", plan=bad)
    assert not (tmp_path / "cache").exists() and not (tmp_path / "x.pt").exists()  # refused before any work
