"""Training: the shared loop (:mod:`neuroread.training.loop`), the head-CT recipe and its stages,
checkpoints with their card, and the ``train`` / ``train-demo`` / ``evaluate`` / ``bench`` commands.

Everything trains tiny DrCT2 networks (4 slices of 32 px, a two-conv backbone; 24 slices for the
decode check) for one or two epochs on the session's four small phantoms. Where the loop needs
more patients (a stratified validation fifth needs five of a class), the four phantoms are listed
again under other patient ids: the splits see more patients, the data stay four series.
"""
from __future__ import annotations

import collections
import csv
import dataclasses
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from neuroread.cli import main
from neuroread.models import default_registry
from neuroread.models.checkpoint import load_checkpoint
from neuroread.models.ct_hemorrhage.model import HemorrhageModel
from neuroread.models.ct_hemorrhage.network import DrCT2, DrCT2Config
from neuroread.models.weights import WeightsCatalog
from neuroread.training.datasets import RSNA_LABELS, StudyRecord, read_phantoms
from neuroread.training.evaluate import evaluate
from neuroread.training.loop import deterministic, fit, model_of, run_stages, train
from neuroread.training.recipes import names, recipe
from neuroread.training.recipes.ct_hemorrhage import RECIPE, RECIPE_CQ500, Settings
from neuroread.training.recipes.ct_hemorrhage.data import load_slices, stack
from neuroread.training.recipes.ct_hemorrhage.stages import encode_records, image_stage
from neuroread.training.thresholds import best_f1_threshold

TINY = {"slices": 4, "key_slices": 2, "input_size": 32, "zoom_size": 64, "backbone": [4, "M", 8, "M"],
        "gru_hidden": 4, "aps_fc": 8, "head": [8, 4], "freeze_backbone": False, "name": "tiny"}
FROZEN = {**TINY, "backbone_batch_norm": True, "freeze_backbone": True, "name": "tiny-frozen"}


@pytest.fixture(scope="module")
def records(phantom_sets) -> list[StudyRecord]:
    """The four small ct-hemorrhage phantoms (seed 7: normal, EDH, normal, IVH), RSNA labels, with
    their hemorrhage masks, as ``neuroread train --format phantoms`` reads them."""
    recs = read_phantoms(phantom_sets["ct-hemorrhage"], labels=RSNA_LABELS, mask="hemorrhage")
    assert [int(r.labels[0]) for r in recs] == [0, 1, 0, 1]
    assert [len(r.mask_types) for r in recs] == [0, 1, 0, 1]
    return recs


def _patients(records: list[StudyRecord], copies: int) -> list[StudyRecord]:
    """``records`` listed ``copies`` times, each listing another patient."""
    return [dataclasses.replace(r, study_id=f"{r.study_id}#{k}", group=f"patient-{k}-{i}")
            for k in range(copies) for i, r in enumerate(records)]


def _settings(**changes) -> Settings:
    values = {"network": TINY, "epochs": 1, "batch_size": 2, "seed": 0, "threads": 1, "augment": False, **changes}
    return RECIPE.settings("demo", **values)


def _as_the_node(path, name: str = "ct-hemorrhage") -> tuple[HemorrhageModel, dict[str, float]]:
    """The weights at ``path`` loaded as the node loads them, and the thresholds its runner then
    applies to the findings (the card's)."""
    registry = default_registry()
    catalog = WeightsCatalog(registry, {name: path})
    model = registry.create(name)
    model.load(catalog.path(name))
    return model, {lb.name: lb.threshold for lb in catalog.spec(name).labels}


# --- the loop ---------------------------------------------------------------------------------

def test_deterministic_restores_torch_as_it_found_it():
    switch, warn, threads = (torch.are_deterministic_algorithms_enabled(),
                             torch.is_deterministic_algorithms_warn_only_enabled(), torch.get_num_threads())
    torch.manual_seed(123)
    expected_after = torch.rand(2)
    torch.manual_seed(5)
    expected_inside = torch.rand(2)
    torch.manual_seed(123)
    other = 1 if threads != 1 else 2
    with deterministic(5, threads=other):
        assert torch.are_deterministic_algorithms_enabled() and torch.get_num_threads() == other
        assert torch.equal(torch.rand(2), expected_inside)  # seeded
    assert torch.equal(torch.rand(2), expected_after)  # the caller's generator went on as if untouched
    assert (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
            torch.get_num_threads()) == (switch, warn, threads)
    with pytest.raises(RuntimeError, match="inside"), deterministic(0, threads=other):
        raise RuntimeError("inside")
    assert (torch.are_deterministic_algorithms_enabled(), torch.get_num_threads()) == (switch, threads)


def test_image_stage_steps_lower_the_loss_on_a_fixed_batch(records):
    settings = _settings(network={**TINY, "dropout": 0.0}, epochs=6, batch_size=4)  # one batch: all four
    with deterministic(0, threads=1):
        net = DrCT2(settings.network_config())
        history = run_stages([image_stage(net, records, settings)], progress=False)
    losses = [row["total"] for row in history]
    assert [row["stage"] for row in history] == ["network"] * 6 and [row["epoch"] for row in history] == [1, 2, 3, 4, 5, 6]
    assert all(set(row) >= {"primary", "aps", "fusion"} for row in history)
    assert losses[-1] < losses[0] - 1e-3, losses
    assert all(b < a for a, b in zip(losses, losses[1:])), losses
    assert not net.training  # the stage leaves the network in eval mode


@pytest.mark.parametrize("network, changes", [
    (TINY, {"augment": True}),
    (FROZEN, {"augment": True, "pretrain_epochs": 1, "pretrain_batch": 16, "balance": True}),
], ids=["trained-encoder", "pretrained-frozen-balanced"])
def test_same_seed_gives_identical_weights_and_another_seed_does_not(records, network, changes):
    def settings(seed: int = 0) -> Settings:  # 24 slices at m = 8: two extra sets per series
        return _settings(epochs=2, network={**network, "slices": 8}, seed=seed, **changes)
    switch = torch.are_deterministic_algorithms_enabled()
    first, again, other = (fit(RECIPE, settings(seed), records[:2], progress=False) for seed in (0, 0, 1))
    a, b, c = (t.net.state_dict() for t in (first, again, other))
    assert list(a) == list(b)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)
    stages = ["decoder"] * 2 if network is FROZEN else ["network"] * 2
    assert [row["stage"] for row in first.history] == (["encoder"] if network is FROZEN else []) + stages
    assert first.history == again.history and first.history != other.history
    assert first.validation == {} and first.thresholds == dict.fromkeys(RSNA_LABELS, 0.5)  # no validation records
    assert torch.are_deterministic_algorithms_enabled() == switch  # the context restored torch's switch


def test_fit_chooses_each_label_threshold_on_the_validation_records(records):
    settings = _settings(epochs=2)
    trained = fit(RECIPE, settings, records[:2], records[2:], progress=False)  # validation: normal, IVH
    assert set(trained.thresholds) == set(RSNA_LABELS)
    assert all(0.0 < t < 1.0 for t in trained.thresholds.values())
    model = model_of(RECIPE, trained.net, settings)
    probabilities = []
    for record in records[2:]:
        volume, _ = record.load()
        probabilities.append([f.probability for f in model.predict({"ct": volume}).findings])
    probabilities = np.array(probabilities)
    targets = np.stack([r.labels for r in records[2:]])
    for j, label in enumerate(RSNA_LABELS):  # best F1 on the validation pair; no positive there: 0.5
        assert trained.thresholds[label] == pytest.approx(best_f1_threshold(probabilities[:, j], targets[:, j]))
        if not targets[:, j].any():
            assert trained.thresholds[label] == 0.5
    assert trained.thresholds["any"] != 0.5  # one positive, one negative: a midpoint was chosen
    metrics = trained.validation
    assert metrics["n_studies"] == 2.0 and metrics["support.any"] == 1.0 and metrics["support.ivh"] == 1.0
    for key in ("f1_macro", "auc_macro", "auc.any", "key_slice.n_studies", "key_slice.positive_studies",
                "pointing.n"):
        assert key in metrics, key
    assert trained.seconds > 0


def test_validation_metrics_are_measured_at_the_chosen_thresholds(records):
    """The validation metrics are those of the operating point stored with the weights: the
    findings decided at the chosen thresholds, not at the spec's 0.5."""
    settings = _settings(epochs=2)
    trained = fit(RECIPE, settings, records[:2], records[2:], progress=False)
    assert trained.thresholds["any"] != 0.5
    for label, threshold in trained.thresholds.items():
        assert trained.validation[f"threshold.{label}"] == pytest.approx(threshold)
    model = model_of(RECIPE, trained.net, settings)
    at_chosen = evaluate(model, records[2:], thresholds=trained.thresholds, progress=False)
    assert trained.validation == pytest.approx(at_chosen)
    assert evaluate(model, records[2:], progress=False)["threshold.any"] == 0.5  # the spec's, without them


def _card(path):
    return load_checkpoint(path, "ct-hemorrhage").card


def test_train_with_one_fold_scores_the_validation_fifth(records, tmp_path):
    data = _patients(records, 3)  # 12 series of 12 patients
    report = train(RECIPE, _settings(), data, tmp_path / "ct.pt", source="test phantoms", folds=1, progress=False,
                   command="pytest")
    ckpt = load_checkpoint(tmp_path / "ct.pt", "ct-hemorrhage")
    card = ckpt.card
    assert card.weights_sha256 == report.sha256 and card.demo is False
    assert ckpt.labels == RSNA_LABELS and ckpt.config["name"] == "tiny" and card.architecture == ckpt.config
    assert card.metrics == pytest.approx(report.metrics) and card.thresholds == pytest.approx(report.thresholds)
    assert set(card.thresholds) == set(RSNA_LABELS) and all(0 < t < 1 for t in card.thresholds.values())
    assert report.folds == () and "cv.folds" not in card.metrics
    n_validation = int(card.metrics["n_studies"])
    assert 2 <= n_validation <= 3  # a fifth of twelve patients, stratified
    text = card.training_data
    assert text.startswith("test phantoms: 12 series of 12 patients; positive series per label: any 6, iph 0")
    assert f"weights trained on {12 - n_validation} series, thresholds chosen on a validation fifth of {n_validation}" in text
    assert f"Metrics: the validation fifth ({n_validation} series), the same series the thresholds were chosen on" in text
    assert "seed 0" in text and "Command: pytest." in text
    HemorrhageModel.from_network(RECIPE.spec(), DrCT2(DrCT2Config.from_dict(ckpt.config)), card)  # the config fits
    assert _as_the_node(tmp_path / "ct.pt")[1] == pytest.approx(card.thresholds)  # and the node loads the file


def test_train_with_two_folds_reports_the_mean_of_the_folds(records, tmp_path):
    data = _patients(records, 5)  # each fold's training half: five patients of each class
    report = train(RECIPE, _settings(), data, tmp_path / "ct.pt", source="test phantoms", folds=2, progress=False)
    assert len(report.folds) == 2
    # every series is tested exactly once, and each fold holds both classes ('any' stratified)
    assert sum(f["n_studies"] for f in report.folds) == 20.0
    assert [f["support.any"] for f in report.folds] == [5.0, 5.0]
    assert [f["key_slice.n_without_lesion"] for f in report.folds] == [5.0, 5.0]  # the normals have no lesion slice
    assert all(0.0 <= f["key_slice.top4_lesion_fraction"] <= 1.0 for f in report.folds)  # 4 slices: 4 key slices
    card = _card(tmp_path / "ct.pt")
    assert card.metrics == pytest.approx(report.metrics)
    assert card.metrics["cv.folds"] == 2.0
    for key in ("n_studies", "f1_macro", "auc.any", "key_slice.n_studies", "key_slice.positive_studies"):
        assert card.metrics[key] == pytest.approx(np.mean([f[key] for f in report.folds])), key
    assert card.thresholds == pytest.approx(report.thresholds) and set(card.thresholds) == set(RSNA_LABELS)
    assert ("Metrics: mean over 2-fold cross-validation (seed 0, stratified, patients kept whole; thresholds "
            "chosen inside each fold)") in card.training_data


def test_train_with_heldout_records_measures_on_them_as_the_node_would(records, tmp_path):
    out = tmp_path / "ct.pt"
    report = train(RECIPE, _settings(), _patients(records, 3), out, source="test phantoms", folds=1,
                   heldout=records, heldout_source="the four phantoms", progress=False)
    card = _card(out)
    assert card.metrics["n_studies"] == 4.0 and card.metrics["support.any"] == 2.0
    assert ("Metrics: 4 held-out series never seen in training or threshold choice (the four phantoms)"
            in card.training_data)
    # the card's metrics are what the node produces with these weights and their thresholds
    model, thresholds = _as_the_node(out)
    assert evaluate(model, records, thresholds=thresholds, progress=False) == pytest.approx(report.metrics)


def test_train_refuses_too_few_patients_and_bad_folds(records, tmp_path):
    with pytest.raises(ValueError, match="a validation fifth needs at least 5 patients of each class .* got 2 of class 0, 2 of class 1"):
        train(RECIPE, _settings(), records, tmp_path / "x.pt", source="s", folds=1, progress=False)
    with pytest.raises(ValueError, match=r"folds must be a positive integer \(1: one held-out fifth\), got 0"):
        train(RECIPE, _settings(), records, tmp_path / "x.pt", source="s", folds=0, progress=False)
    with pytest.raises(ValueError, match="train: no records"):
        train(RECIPE, _settings(), [], tmp_path / "x.pt", source="s", folds=1, progress=False)
    assert not (tmp_path / "x.pt").exists()


def test_training_refuses_records_with_other_labels(records):
    with pytest.raises(ValueError, match="training records carry labels .* the settings name"):
        fit(RECIPE_CQ500, RECIPE_CQ500.settings("demo", network=TINY, epochs=1), records, progress=False)


# --- the head-CT recipe's stages --------------------------------------------------------------

def _encoder(records, settings):
    """A fresh frozen-encoder network and its encoder stage (the first of the recipe's stages)."""
    net = DrCT2(settings.network_config())
    stages = RECIPE.stages(net, records, settings, progress=False)
    assert [s.name for s in stages] == ["encoder", "decoder"]
    return net, stages[0]


def test_encoder_pretraining_learns_slices_and_lesions_then_stays_frozen(records):
    settings = _settings(network=FROZEN, pretrain_epochs=4, pretrain_batch=16, precision="fp32")
    with deterministic(0, threads=1):
        net, encoder = _encoder(records, settings)
        before = {k: v.clone() for k, v in net.backbone.state_dict().items()}
        history = run_stages([encoder], progress=False)
    assert [row["epoch"] for row in history] == [1, 2, 3, 4]
    assert all(set(row) == {"stage", "epoch", "total", "slices", "masks"} for row in history)  # masks are used
    assert all(row["masks"] > 0 for row in history)
    totals = [row["total"] for row in history]
    assert totals[-1] < totals[0], totals
    after = net.backbone.state_dict()
    assert not torch.equal(before["0.weight"], after["0.weight"])  # the convolutions learnt
    assert not torch.equal(before["1.running_mean"], after["1.running_mean"])  # batch norm saw the slices
    assert not net.backbone.training and not any(p.requires_grad for p in net.backbone.parameters())
    net.train()  # the decoder's training mode keeps a frozen encoder in eval mode
    assert not net.backbone.training


@pytest.mark.parametrize("case", ["mask_weight 0", "no mask files"])
def test_encoder_pretraining_without_masks_uses_slice_labels_only(records, case):
    if case == "mask_weight 0":
        settings, recs = _settings(network=FROZEN, pretrain_epochs=1, mask_weight=0.0), records
    else:
        settings, recs = _settings(network=FROZEN, pretrain_epochs=1), [
            dataclasses.replace(r, mask=None, mask_types=()) for r in records]
    with deterministic(0, threads=1):
        net, encoder = _encoder(recs, settings)
        (row,) = run_stages([encoder], progress=False)
    assert set(row) == {"stage", "epoch", "total", "slices"}
    assert row["total"] == pytest.approx(row["slices"])


def test_the_lesion_head_learns_the_masks_is_kept_frozen_and_refuses_data_without_masks(records):
    settings = _settings(network={**FROZEN, "lesion_head": True}, pretrain_epochs=2, precision="fp32")
    with deterministic(0, threads=1):
        net, encoder = _encoder(records, settings)
        before = net.lesion.weight.detach().clone()
        run_stages([encoder], progress=False)
    assert not torch.equal(before, net.lesion.weight)  # it is the head the masks trained, kept in the network
    assert not any(p.requires_grad for p in net.lesion.parameters())
    assert "lesion.weight" in net.state_dict()
    bare = [dataclasses.replace(r, mask=None, mask_types=()) for r in records]
    net, encoder = _encoder(bare, settings)
    with pytest.raises(ValueError, match="lesion head .* learns from lesion masks: 0 of 4 training series have one"):
        run_stages([encoder], progress=False)


def test_each_encoder_epoch_takes_every_lesion_slice_and_a_share_of_the_others(records):
    settings = _settings(network=FROZEN, pretrain_epochs=1, negatives=0.25, pretrain_batch=1000, precision="fp32")
    net, encoder = _encoder(records, settings)
    encoder.start()
    (x, y, m), = list(encoder.batches(0))  # one batch holds the whole epoch
    lesion_slices = sum(int((r.slice_labels.max(axis=1) > 0).sum()) for r in records)
    others = sum(r.n_slices for r in records) - lesion_slices
    assert int((y.max(dim=1).values > 0).sum()) == lesion_slices
    assert len(y) == len(x) == len(m) == lesion_slices + round(0.25 * others)
    with pytest.raises(ValueError, match="negatives must be in"):
        _settings(negatives=0.0)


def test_encoder_pretraining_needs_slice_labels(records):
    bare = [dataclasses.replace(r, slice_uids=None, slice_labels=None) for r in records[:2]]
    net, encoder = _encoder(bare, _settings(network=FROZEN, pretrain_epochs=1))
    with pytest.raises(ValueError, match="pretrain_epochs > 0 needs per-slice labels"):
        run_stages([encoder], progress=False)


def test_encoded_vectors_from_stacks_equal_streamed_ones(records):
    stacks = load_slices(records, 32, masks=False, progress=False)
    assert [tuple(s.images.shape) for s in stacks] == [(24, 3, 32, 32)] * 4 and all(s.masks is None for s in stacks)
    with deterministic(0, threads=1):
        net = DrCT2(Settings(network=FROZEN, pretrain_epochs=1).network_config())
        encoded = encode_records(net, records, stacks=stacks, batch_size=10, progress=False)
        streamed = encode_records(net, records, progress=False)  # read again, one record at a time
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(encoded, streamed))
    assert [tuple(v.shape) for v, _ in encoded] == [(24, 8)] * 4 and [tuple(z.shape) for _, z in encoded] == [(24, 8)] * 4
    assert not torch.equal(encoded[0][0], encoded[0][1])  # the zoomed slices give other vectors
    with pytest.raises(ValueError, match="3 slice stacks for 4 records"):
        encode_records(net, records, stacks=stacks[:3], progress=False)
    with pytest.raises(ValueError, match="needs a frozen encoder"):
        encode_records(DrCT2(_settings().network_config()), records[:1], progress=False)


@pytest.mark.parametrize("pooling", ["attention", "flatten"])
def test_decode_on_encoded_vectors_equals_forward_on_the_images(records, pooling):
    """The demo network's shape (24 slices, 8 key slices, batch norm, no fourth max pool, frozen),
    at an eighth of its width and a quarter of its size."""
    demo = Settings(network="demo").network_config()
    assert (demo.slices, demo.key_slices, demo.pooling, demo.freeze_backbone) == (24, 8, "attention", True)
    config = dataclasses.replace(DrCT2Config.demo(6, input_size=32, zoom_size=64, width_divisor=64), pooling=pooling)
    assert config.backbone.count("M") == 4 and config.features == 8
    images = stack(records[1], 32, masks=False).images
    with deterministic(0, threads=1), torch.no_grad():
        net = DrCT2(config).eval()
        (vectors, zoomed), = encode_records(net, records[1:2], progress=False)
        full = net(images.unsqueeze(0))
        cached = net.decode(vectors.unsqueeze(0), zoomed.unsqueeze(0))
    assert torch.equal(cached.key_slices, full.key_slices)
    for name in ("primary_logits", "aps_logits", "fusion_logits", "slice_attention"):
        torch.testing.assert_close(getattr(cached, name), getattr(full, name), rtol=1e-5, atol=1e-6)


def test_label_balanced_sampling_draws_rare_labels_more_often(records):
    # two bleeds (EDH, IVH) among eight series: 'any' 1/4, each subtype 1/8 -> bleed weight 4, normal 1
    data = [records[1], records[3]] + _patients([records[0], records[2]], 3)
    draws = {}
    for balance in (False, True):
        settings = _settings(network=FROZEN, pretrain_epochs=1, balance=balance, batch_size=2)
        stages = RECIPE.stages(DrCT2(settings.network_config()), data, settings, progress=False)
        decoder = stages[-1]
        assert decoder.name == "decoder"
        draws[balance] = collections.Counter(i for epoch in range(100) for batch in decoder.batches(epoch)
                                             for i, _ in batch)
    assert sum(draws[False].values()) == sum(draws[True].values()) == 800
    assert set(draws[False].values()) == {100}  # without: every series once per epoch
    bleeds = (draws[True][0] + draws[True][1]) / 800
    assert bleeds == pytest.approx(8 / 14, abs=0.07)  # with: 2 x 4 against 6 x 1
    assert min(draws[True][0], draws[True][1]) > 2 * max(draws[True][i] for i in range(2, 8))  # 4 to 1 expected


def test_settings_refuse_bad_values_naming_them():
    with pytest.raises(ValueError, match="ct-hemorage.*Did you mean ct-hemorrhage"):
        Settings(model="ct-hemorage", network="demo")
    with pytest.raises(ValueError, match=r"Settings.network: unknown preset 'papr' \(did you mean 'paper'\?\)"):
        Settings(network="papr")
    with pytest.raises(ValueError, match="Settings.backbone_weights.*backbone_weights=FILE.*pretrain_epochs=N"):
        Settings(network="paper")
    with pytest.raises(ValueError, match="Settings.backbone_weights"):
        Settings(network="demo", pretrain_epochs=0)
    for field, value, message in [
        ("epochs", 0, "Settings.epochs must be a positive integer, got 0"),
        ("batch_size", True, "Settings.batch_size must be a positive integer, got True"),
        ("pretrain_batch", 0, "Settings.pretrain_batch must be a positive integer, got 0"),
        ("pretrain_epochs", -1, "Settings.pretrain_epochs must be a non-negative integer, got -1"),
        ("seed", 1.5, "Settings.seed must be a non-negative integer, got 1.5"),
        ("threads", 0, "Settings.threads must be a positive integer or None, got 0"),
        ("primary_lr", 0, "Settings.primary_lr must be a positive learning rate, got 0"),
        ("pretrain_lr", "fast", "Settings.pretrain_lr must be a positive learning rate, got 'fast'"),
        ("mask_weight", -1.0, "Settings.mask_weight must be a number >= 0, got -1.0"),
        ("precision", "fp16", r"Settings.precision must be one of \('auto', 'fp32', 'bf16'\), got 'fp16'"),
        ("device", "gpu0", "Settings.device: 'gpu0' is not a torch device"),
    ]:
        with pytest.raises(ValueError, match=message):
            Settings(network="demo", **{field: value})
    with pytest.raises(ValueError, match="Settings.network: n_labels=9 but ct-hemorrhage has 6 labels"):
        Settings(network={**TINY, "n_labels": 9})
    with pytest.raises(ValueError, match="unknown keys 'slice'.*did you mean 'slices'"):
        Settings(network={**TINY, "slice": 4})
    # the defaults: the paper's, and the demo preset pre-trains its encoder on slices and masks
    assert Settings(network="demo").pretrain_epochs == 8 and Settings(network=TINY).pretrain_epochs == 0
    assert Settings(network="paper", pretrain_epochs=2).pretrain_epochs == 2  # slices instead of ImageNet
    described = Settings(network="demo", precision="fp32", balance=True).describe()
    assert "pre-trained 8 epochs on per-slice labels and lesion masks (weight 1" in described
    assert "float32" in described and "label-balanced sampling on" in described
    assert "lesion masks" not in Settings(network="demo", mask_weight=0).describe()
    assert Settings(model="ct-hemorrhage-cq500", network="demo").network_config().n_labels == 9
    assert Settings(precision="bf16", network="demo").bf16 and not Settings(precision="fp32", network="demo").bf16


def test_recipes_are_found_by_model_name():
    assert names() == ["ad-lrp", "axspa-sij", "cmb-svd", "ct-hemorrhage", "ct-hemorrhage-cq500", "ms-csvd"]
    assert recipe("ct-hemorrhage") is RECIPE and recipe("ct-hemorrhage-cq500") is RECIPE_CQ500
    assert RECIPE.outputs() == RSNA_LABELS and len(RECIPE_CQ500.outputs()) == 9
    with pytest.raises(ValueError, match=r"no training recipe for model 'ct-hemorage' \(trainable: ad-lrp, axspa-sij, cmb-svd, ct-hemorrhage, "
                                         r"ct-hemorrhage-cq500, ms-csvd\). Did you mean ct-hemorrhage\?"):
        recipe("ct-hemorage")


# --- the commands -----------------------------------------------------------------------------

def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "neuroread.cli", *args], capture_output=True, text=True)


@pytest.mark.parametrize("command", ["train", "train-demo", "evaluate", "bench"])
def test_training_commands_have_help_with_examples(command):
    res = _cli(command, "--help")
    assert res.returncode == 0, res.stderr
    assert f"usage: neuroread {command}" in res.stdout
    assert "examples:" in res.stdout and f"  neuroread {command} ct-hemorrhage" in res.stdout


def test_train_settings_help_lists_each_models_settings(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--settings-help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "ct-hemorrhage: presets paper, demo; formats phantoms, manifest, rsna, cq500" in out
    assert "ct-hemorrhage-cq500: presets paper, demo" in out
    for setting in ("network='paper'", "epochs=100", "balance=False", "pretrain_epochs=None", "pretrain_batch=32",
                    "mask_weight=1.0", "precision='auto'", "backbone_weights=None"):
        assert setting in out, setting
    assert "``balance`` draws training series" in out  # the settings' meaning, from their docstring


def test_train_names_the_bad_option(phantom_sets, tmp_path, capsys):
    phantoms = str(phantom_sets["ct-hemorrhage"])
    base = ["train", "ct-hemorrhage", "--preset", "demo", "--out", str(tmp_path / "x.pt"), "-q"]

    def error(*args: str) -> str:
        assert main([*base, *args]) == 2
        return capsys.readouterr().err

    assert "unknown data format 'dicom'; formats: phantoms, manifest, rsna, cq500" in error(
        "--data", phantoms, "--format", "dicom")
    assert "--format rsna needs --labels-csv" in error("--data", str(tmp_path), "--format", "rsna")
    assert f"--data {tmp_path / 'absent'} does not exist" in error("--data", str(tmp_path / "absent"),
                                                                   "--format", "phantoms")
    assert "--labels-csv applies to --format rsna or cq500, not manifest" in error(
        "--data", str(tmp_path), "--format", "manifest", "--labels-csv", "x.csv")
    assert "--set epocs: not a setting (did you mean epochs?); settings: " in error(
        "--data", phantoms, "--format", "phantoms", "--set", "epocs=3")
    assert "--set 'epochs': expected KEY=VALUE" in error("--data", phantoms, "--format", "phantoms", "--set", "epochs")
    assert "Settings.mask_weight must be a number >= 0, got -1" in error(
        "--data", phantoms, "--format", "phantoms", "--set", "mask_weight=-1")
    # 1e-3 is a number (YAML 1.1 alone would read it as text): refused as negative, not as text
    assert "Settings.mask_weight must be a number >= 0, got -0.001" in error(
        "--data", phantoms, "--format", "phantoms", "--set", "mask_weight=-1e-3")
    assert "--preset papr: ct-hemorrhage's presets are paper, demo" in error(
        "--data", phantoms, "--format", "phantoms", "--preset", "papr")
    assert "needs at least 5 patients of each class (stratum) of the split, got 2 of class 0, 2 of class 1" in error(
        "--data", phantoms, "--format", "phantoms", "--set", f"network={json.dumps(TINY)}", "--folds", "1")
    assert "n_splits=5 is more than the 4 patients" in error(  # the default: 5-fold cross-validation
        "--data", phantoms, "--format", "phantoms", "--set", f"network={json.dumps(TINY)}")
    with pytest.raises(SystemExit):
        main([*base, "--data", phantoms, "--format", "phantoms", "--epochs", "0"])
    assert "argument --epochs: must be at least 1, got 0" in capsys.readouterr().err
    assert not (tmp_path / "x.pt").exists()


def test_train_then_evaluate_commands(phantom_sets, tmp_path, capsys):
    """``train`` on a manifest (the four phantoms listed as twelve patients) measured on the four
    phantoms held out, then ``evaluate`` of the written weights on them: the same metrics."""
    phantoms = phantom_sets["ct-hemorrhage"]
    studies = sorted(p.parent for p in phantoms.glob("*/truth.json"))
    manifest = tmp_path / "manifest.csv"
    with open(manifest, "w", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(["study", *RSNA_LABELS, "group"])
        for copy in range(3):
            for study in studies:
                truth = json.loads((study / "truth.json").read_text())
                writer.writerow([str(study), *(truth["labels"][n] for n in RSNA_LABELS), f"{study.name}-{copy}"])
    out = tmp_path / "ct.pt"
    assert main(["train", "ct-hemorrhage", "--data", str(manifest), "--format", "manifest", "--preset", "demo",
                 "--set", f"network={json.dumps(TINY)}", "--folds", "1", "--epochs", "1", "--batch-size", "2",
                 "--threads", "1", "--heldout", str(phantoms), "--heldout-format", "phantoms",
                 "--out", str(out), "-q"]) == 0
    printed = capsys.readouterr().out
    assert "training ct-hemorrhage (demo network) on 12 series: manifest" in printed
    assert f"wrote {out} (sha256 " in printed and "thresholds: any " in printed
    card = _card(out)
    assert card.metrics["n_studies"] == 4.0 and "4 held-out series never seen" in card.training_data
    assert "Command: neuroread train ct-hemorrhage --preset demo." in card.training_data

    assert main(["evaluate", "ct-hemorrhage", "--data", str(phantoms), "--weights", str(out),
                 "--out", str(tmp_path / "m.json"), "-q"]) == 0
    assert f"ct-hemorrhage with {out} on 4 series" in capsys.readouterr().out
    written = json.loads((tmp_path / "m.json").read_text())
    assert written["weights"] == str(out)
    assert written["metrics"] == pytest.approx(card.metrics)
