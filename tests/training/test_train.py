"""Training DrCT2: a step lowers the loss, runs are reproducible, checkpoints carry their card,
cross-validation reports every fold, and the ``train`` / ``train-demo`` commands.

Everything but the two slow tests trains a tiny network (4 slices of 32 px, a two-conv
backbone) for one or two epochs on the session's four small phantoms.
"""
from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest
import torch

from neuroread.cli import main
from neuroread.models.checkpoint import load_checkpoint
from neuroread.models.ct_hemorrhage.network import DrCT2, make_optimizer
from neuroread.training.datasets import RSNA_LABELS, SeriesDataset, collate, read_phantoms
from neuroread.training.demo import DemoPlan, train_demo
from neuroread.training.encoder import encode_records, load_slices, pretrain_encoder
from neuroread.training.train import TrainConfig, cross_validate, deterministic, train, train_once, train_step

TINY = {"slices": 4, "key_slices": 2, "input_size": 32, "zoom_size": 64, "backbone": [4, "M", 8, "M"],
        "gru_hidden": 4, "aps_fc": 8, "head": [8, 4], "freeze_backbone": False, "name": "tiny"}


@pytest.fixture(scope="module")
def records(phantom_sets):
    """The four small ct-hemorrhage phantoms (seed 7: two with a bleed, two without), RSNA labels."""
    recs = read_phantoms(phantom_sets["ct-hemorrhage"], labels=RSNA_LABELS)
    assert [int(r.labels[0]) for r in recs] == [0, 1, 0, 1]
    return recs


def _config(**changes) -> TrainConfig:
    return TrainConfig(**{"model": "ct-hemorrhage", "epochs": 1, "batch_size": 2, "seed": 0, "threads": 1,
                          "augment": False, "network": TINY, **changes})


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "neuroread.cli", *args], capture_output=True, text=True)


def test_gradient_steps_lower_the_loss_on_a_fixed_batch(records):
    config = _config(network={**TINY, "dropout": 0.0})
    net_config = config.network_config()
    dataset = SeriesDataset(records, net_config.slices, net_config.input_size)
    x, y, _ = collate([dataset[i] for i in range(len(dataset))])
    with deterministic(0, threads=1):
        model = DrCT2(net_config)
        optimizer = make_optimizer(model)
        losses = [float(train_step(model, optimizer, x, y).total) for _ in range(6)]
    assert losses[-1] < losses[0] - 1e-3, losses
    assert all(b < a for a, b in zip(losses, losses[1:])), losses


FROZEN = {**TINY, "backbone_batch_norm": True, "freeze_backbone": True, "name": "tiny-frozen"}


@pytest.mark.parametrize("network, pretrain", [(TINY, 0), (FROZEN, 1)], ids=["trained-encoder", "pretrained-frozen"])
def test_same_seed_gives_identical_weights_and_another_seed_does_not(records, network, pretrain):
    def config(seed: int = 0) -> TrainConfig:  # 24 slices at m = 8: two extra sets per series
        return _config(epochs=2, augment=True, network={**network, "slices": 8}, pretrain_epochs=pretrain, seed=seed)
    switch = torch.are_deterministic_algorithms_enabled()
    first = train_once(records[:2], None, config(), progress=False)
    again = train_once(records[:2], None, config(), progress=False)
    other = train_once(records[:2], None, config(seed=1), progress=False)
    a, b, c = (r.model.state_dict() for r in (first, again, other))
    assert list(a) == list(b)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)
    assert len(first.history) == 2 and first.history == again.history
    assert first.evaluation is None
    assert torch.are_deterministic_algorithms_enabled() == switch  # the context restored torch's switch


def test_encoder_pretraining_learns_the_slices_then_stays_frozen(records):
    network = TrainConfig(network=FROZEN, pretrain_epochs=1).network_config()
    stacks = load_slices(records, network.input_size, progress=False)
    assert [tuple(s.images.shape) for s in stacks] == [(24, 3, 32, 32)] * 4
    assert all(s.slice_labels.shape == (24, 6) for s in stacks)
    with deterministic(0, threads=1):
        model = DrCT2(network)
        before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
        losses = pretrain_encoder(model, stacks, epochs=4, lr=3e-3, progress=False)
    assert losses[-1] < losses[0], losses
    after = model.backbone.state_dict()
    assert not torch.equal(before["0.weight"], after["0.weight"])  # the convolutions learnt
    assert not torch.equal(before["1.running_mean"], after["1.running_mean"])  # batch norm saw the slices
    assert not model.backbone.training and not any(p.requires_grad for p in model.backbone.parameters())
    encoded = encode_records(model, records, stacks=stacks, progress=False)
    streamed = encode_records(model, records, progress=False)  # read again, one record at a time
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(encoded, streamed))
    assert [tuple(v.shape) for v, _ in encoded] == [(24, 8)] * 4 and [tuple(z.shape) for _, z in encoded] == [(24, 8)] * 4
    with torch.no_grad():  # the vectors are those forward() computes for the same slices
        x = stacks[1].images[10:14].unsqueeze(0)
        full = model.eval()(x)
        cached = model.decode(encoded[1][0][10:14].unsqueeze(0), encoded[1][1][10:14].unsqueeze(0))
    torch.testing.assert_close(cached.fusion_logits, full.fusion_logits, rtol=1e-5, atol=1e-6)


def test_encoder_pretraining_needs_slice_labels_and_vectors_need_a_frozen_encoder(records):
    stacks = [dataclasses.replace(s, slice_labels=None) for s in load_slices(records[:1], 32, progress=False)]
    with pytest.raises(ValueError, match="pretrain_epochs > 0 needs per-slice labels"):
        pretrain_encoder(DrCT2(TrainConfig(network=FROZEN, pretrain_epochs=1).network_config()), stacks,
                         epochs=1, lr=1e-3, progress=False)
    with pytest.raises(ValueError, match="needs a frozen encoder"):
        encode_records(DrCT2(TrainConfig(network=TINY).network_config()), records[:1], progress=False)


def test_train_with_two_folds_writes_a_checkpoint_with_its_card(records, tmp_path):
    out = tmp_path / "ct.pt"
    report = train(records, _config(), out, source="four test phantoms", folds=2, progress=False)

    cv = report.cross_validation
    assert cv is not None and len(cv.folds) == 2 and report.holdout is None
    assert sorted(i for split in cv.splits for i in split.test) == [0, 1, 2, 3]
    for split, fold in zip(cv.splits, cv.folds):
        assert fold.classification.n_studies == 2
        assert sorted(int(records[i].labels[0]) for i in split.test) == [0, 1]  # stratified on 'any'
        assert fold.key_slices is not None and fold.key_slices.n_studies == 2
        assert fold.key_slices.n_without_lesion == 1  # the normal study has no lesion slice
        assert 0.0 <= fold.key_slices.top5_lesion_fraction <= 1.0

    ckpt = load_checkpoint(out, "ct-hemorrhage")
    assert ckpt.card.weights_sha256 == report.sha256
    assert ckpt.labels == RSNA_LABELS
    assert ckpt.config["name"] == "tiny" and ckpt.config["slices"] == 4
    assert ckpt.card.architecture == ckpt.config
    assert ckpt.card.demo is False
    metrics = ckpt.card.metrics
    assert metrics == pytest.approx(report.metrics)
    assert metrics["cv.folds"] == 2.0 and metrics["n_studies"] == 2.0
    assert metrics["support.any"] == 1.0 and metrics["key_slice.n_studies"] == 2.0
    assert "key_slice.top5_lesion_fraction" in metrics and "auc.any" in metrics
    data = ckpt.card.training_data
    assert data.startswith("four test phantoms: 4 series of 4 patients")
    assert "any 2, iph" in data and "4 series with per-slice labels" in data
    assert "seed 0" in data and "2-fold cross-validation" in data
    # the final model, trained on all four, is what was saved
    model = DrCT2(TrainConfig(network=TINY).network_config())
    model.load_state_dict(ckpt.state_dict)


def test_cross_validate_gives_one_evaluation_per_fold(records):
    cv = cross_validate(records, 2, _config(), progress=False)
    assert len(cv.folds) == 2
    mean = cv.mean()
    assert mean["cv.folds"] == 2.0
    for key in ("n_studies", "f1_macro", "key_slice.n_studies", "key_slice.top5_lesion_fraction"):
        assert mean[key] == pytest.approx(sum(f.to_dict()[key] for f in cv.folds) / 2)


def test_config_refuses_bad_values_naming_them():
    with pytest.raises(ValueError, match="unknown model 'ct-hemorage'.*Did you mean ct-hemorrhage"):
        TrainConfig(model="ct-hemorage", network="demo")
    with pytest.raises(ValueError, match=r"unknown preset 'papr' \(did you mean 'paper'\?\)"):
        TrainConfig(network="papr")
    with pytest.raises(ValueError, match="backbone_weights.*--backbone-weights.*--pretrain-epochs"):
        TrainConfig(network="paper")
    with pytest.raises(ValueError, match="backbone_weights.*--pretrain-epochs"):
        TrainConfig(network="demo", pretrain_epochs=0)
    with pytest.raises(ValueError, match="TrainConfig.pretrain_epochs must be a non-negative integer, got -1"):
        TrainConfig(network="demo", pretrain_epochs=-1)
    assert TrainConfig(network="demo").pretrain_epochs == 3 and TrainConfig(network=TINY).pretrain_epochs == 0
    assert "pre-trained 3 epochs on the per-slice labels" in TrainConfig(network="demo").describe()
    assert TrainConfig(network="paper", pretrain_epochs=2).pretrain_epochs == 2  # slices instead of ImageNet
    with pytest.raises(ValueError, match="TrainConfig.epochs must be a positive integer, got 0"):
        TrainConfig(network="demo", epochs=0)
    with pytest.raises(ValueError, match="n_labels=9 but ct-hemorrhage has 6 labels"):
        TrainConfig(network={**TINY, "n_labels": 9})
    assert TrainConfig(model="ct-hemorrhage-cq500", network="demo").network_config().n_labels == 9


def test_train_refuses_records_with_other_labels(records):
    with pytest.raises(ValueError, match="records carry labels .* the configuration names"):
        train_once(records, None, _config(model="ct-hemorrhage-cq500"), progress=False)


@pytest.mark.parametrize("command", [["train"], ["train-demo"]])
def test_train_commands_have_help_with_examples(command):
    res = _cli(*command, "--help")
    assert res.returncode == 0, res.stderr
    assert f"usage: neuroread {command[0]}" in res.stdout
    assert f"neuroread {command[0]} ct-hemorrhage" in res.stdout  # an example in the epilog


def test_train_names_the_bad_option(tmp_path, capsys):
    res = _cli("train", "ct-hemorrhage", "--data", str(tmp_path), "--format", "dicom", "--out", "x.pt")
    assert res.returncode == 2
    assert "argument --format: invalid choice: 'dicom'" in res.stderr
    base = ["train", "ct-hemorrhage", "--preset", "demo", "--out", str(tmp_path / "x.pt")]
    assert main([*base, "--data", str(tmp_path), "--format", "rsna"]) == 2
    assert "--format rsna needs --labels-csv" in capsys.readouterr().err
    assert main([*base, "--data", str(tmp_path / "absent"), "--format", "phantoms"]) == 2
    assert f"--data {tmp_path / 'absent'} does not exist" in capsys.readouterr().err
    assert main([*base, "--data", str(tmp_path), "--format", "manifest", "--labels-csv", "x.csv"]) == 2
    assert "--labels-csv applies to --format rsna or cq500, not manifest" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([*base, "--data", str(tmp_path), "--format", "phantoms", "--epochs", "0"])
    assert "argument --epochs: must be at least 1, got 0" in capsys.readouterr().err
    assert not (tmp_path / "x.pt").exists()


@pytest.mark.slow
def test_train_command_writes_a_demo_network_checkpoint(phantom_sets, tmp_path):
    out = tmp_path / "ct.pt"
    res = _cli("train", "ct-hemorrhage", "--data", str(phantom_sets["ct-hemorrhage"]), "--format", "phantoms",
               "--preset", "demo", "--folds", "2", "--epochs", "1", "--batch-size", "2", "--no-augment",
               "--threads", "2", "--out", str(out), "-q")
    assert res.returncode == 0, res.stderr
    assert "fold 2: macro P" in res.stdout and f"wrote {out} (sha256 " in res.stdout
    ckpt = load_checkpoint(out, "ct-hemorrhage")
    assert ckpt.config["name"] == "demo" and ckpt.card.metrics["cv.folds"] == 2.0
    assert "neuroread phantoms under" in ckpt.card.training_data


@pytest.mark.slow
def test_train_demo_caches_its_phantoms_and_marks_the_weights_as_demo(tmp_path, caplog):
    plan = DemoPlan(studies=10, epochs=1, batch_size=4, threads=2, network=TINY)
    out = tmp_path / "w" / "ct-hemorrhage-demo.pt"
    report = train_demo("ct-hemorrhage", out, progress=False, cache_dir=tmp_path / "cache", plan=plan)
    sets = list((tmp_path / "cache").iterdir())
    assert [p.name for p in sets] == ["ct-hemorrhage-small-s20220601-n10"]  # no partial folder left
    assert len(list(sets[0].glob("*/truth.json"))) == 10
    ckpt = load_checkpoint(out, "ct-hemorrhage")
    assert ckpt.card.demo is True and ckpt.card.weights_sha256 == report.sha256
    assert "synthetic phantoms, not for clinical use" in ckpt.card.training_data
    assert "held-out 2 series" in ckpt.card.training_data
    assert ckpt.card.metrics["n_studies"] == 2.0
    assert report.holdout is not None and report.cross_validation is None

    caplog.set_level("INFO", logger="neuroread.training.demo")
    again = train_demo("ct-hemorrhage", tmp_path / "again.pt", progress=False, cache_dir=tmp_path / "cache",
                       plan=plan)
    assert "reusing 10 phantoms" in caplog.text
    assert again.metrics == report.metrics
    second = load_checkpoint(tmp_path / "again.pt", "ct-hemorrhage")
    assert all(torch.equal(ckpt.state_dict[k], second.state_dict[k]) for k in ckpt.state_dict)  # same plan
    assert second.card.metrics == ckpt.card.metrics

    with pytest.raises(ValueError, match="unknown model 'ms-csvd'"):
        train_demo("ms-csvd", tmp_path / "x.pt", progress=False, cache_dir=tmp_path / "cache", plan=plan)
