"""The committed demo weights reach what their card says, on fresh phantoms no training saw.

For every registered model with committed demo weights and a training recipe with a demo
plan: 40 phantoms of its task (16 where the plan's phantoms are full-size) with a seed neither the training nor the card's held-out
set used are run through the model's ``predict`` (the card's thresholds applied, as the node
does: :func:`neuroread.training.evaluate.evaluate`), and the headline metrics must come within
:data:`TOLERANCE` of the card's. 40 studies cannot pin a metric down to the card's second
decimal (the card's own held-out sets are 128 to 160 studies): this catches weights that are not the
card's, preprocessing that drifted from training, or a broken map back onto the series, not a
point of F1.
"""
from __future__ import annotations

import json

import pytest

from neuroread.models import default_registry
from neuroread.models.weights import Weights
from neuroread.training.demo import card_path, phantom_set
from neuroread.training.evaluate import evaluate
from neuroread.training.recipes import names as trainable
from neuroread.training.recipes import recipe as recipe_of

FRESH_SEED = 31337
FRESH_STUDIES = 40
FRESH_FULL_SIZE = 16  # full-size phantoms (clinical matrices) take ten times longer to make and to read
TOLERANCE = 0.15
HEADLINE = ("f1_macro", "auc_macro", "key_slice.difficult", "key_slice.top5_lesion_fraction", "pointing.hit_rate",
            "diagnosis.balanced_accuracy", "diagnosis.auc", "subtype.auc_weighted", "detection.recall", "detection.dice")

REGISTRY = default_registry()
MODELS = [n for n in REGISTRY.names() if n in trainable() and REGISTRY.entry(n).demo_weights is not None]


@pytest.mark.slow
@pytest.mark.parametrize("name", MODELS)
def test_committed_demo_weights_reach_their_card_on_fresh_phantoms(name, tmp_path_factory):
    entry = REGISTRY.entry(name)
    assert entry.demo_weights.is_file(), f"{name}: its demo weights are not committed ({entry.demo_weights})"
    card = json.loads(card_path(entry.demo_weights).read_text())
    weights = Weights.read(entry.demo_weights, name)
    assert card["sha256"] == weights.sha256, "the card describes other weights than the committed file"
    assert card["thresholds"] == weights.meta.card.thresholds and card["heldout_metrics"] == weights.meta.card.metrics
    recipe = recipe_of(name)
    plan = recipe.demo_plan
    assert FRESH_SEED not in (plan.phantom_seed, plan.heldout_seed)
    studies = FRESH_STUDIES if plan.size == "small" else FRESH_FULL_SIZE
    folder = phantom_set(plan.task, studies, FRESH_SEED, plan.size, tmp_path_factory.mktemp("fresh"), progress=False)
    records, _ = recipe.read_records(folder, "phantoms", progress=False)
    model = REGISTRY.create(name)
    model.load(entry.demo_weights, "cpu")
    effective = weights.effective_spec(REGISTRY.spec(name))
    measured = evaluate(model, records, thresholds={lb.name: lb.threshold for lb in effective.labels}, progress=False)
    claimed = card["heldout_metrics"]
    short = {k: (round(measured.get(k, float("nan")), 3), round(claimed[k], 3)) for k in HEADLINE
             if k in claimed and not measured.get(k, -1.0) >= claimed[k] - TOLERANCE}
    assert not short, f"{name}: metrics on {studies} fresh phantoms (measured, card) below the card by more " \
                      f"than {TOLERANCE}: {short}"
