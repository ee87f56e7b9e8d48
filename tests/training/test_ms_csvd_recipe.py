"""The ms-csvd recipe: settings refused by name, the proxy task training the attention as a
lesion-cell detector, and the end-to-end stage fine-tuning what the proxy trained at the lower rate."""
from __future__ import annotations

import pytest
import torch

from neuroread.training.loop import run_stages
from neuroread.training.recipes.ms_csvd import DEMO_PLAN, RECIPE
from neuroread.training.recipes.ms_csvd.stages import network_stage, proxy_stage

TINY = {"widths": [4, 8, 8, 8], "input_size": 64, "pool_hidden": 8, "max_slices": 12, "name": "tiny"}


def test_settings_name_what_is_wrong(tmp_path):
    with pytest.raises(ValueError, match="did you mean 'demo'"):
        RECIPE.settings("dmeo")
    with pytest.raises(ValueError, match="pretrain_data: .* is not a folder"):
        RECIPE.settings("demo", pretrain_data=tmp_path / "nowhere")
    with pytest.raises(ValueError, match="unknown keys 'widht'"):
        RECIPE.settings("demo", network={"widht": [1, 2, 3, 4]})
    with pytest.raises(ValueError, match="batch_size must be at least 2"):
        RECIPE.settings("demo", batch_size=1)
    assert RECIPE.settings("demo").pretrain_epochs == 6 and RECIPE.settings("paper").pretrain_epochs == 0
    assert RECIPE.settings("demo", network={"attention": False}).network_config().attention is False
    assert RECIPE.settings("demo", network={"preset": "paper", "attention": False}).network_config().is_resnet50
    # the demo plan's proxy phantoms are other studies than the training and held-out ones
    assert len({DEMO_PLAN.phantom_seed, DEMO_PLAN.heldout_seed, DEMO_PLAN.proxy_seed}) == 3
    assert DEMO_PLAN.proxy_studies > 0 and "proxy task" in DEMO_PLAN.describe()


def test_the_proxy_task_trains_the_attention_and_the_diagnosis_fine_tunes_it_slowly(phantom_sets):
    records, _ = RECIPE.read_records(phantom_sets["ms-csvd"], "phantoms", progress=False)
    settings = RECIPE.settings("demo", network=TINY, epochs=1, batch_size=2, threads=1, pretrain_epochs=1)
    torch.manual_seed(0)
    net = RECIPE.build(settings)
    spatial_before = net.spatial.conv.weight.detach().clone()
    pool_before = net.pool.score[0].weight.detach().clone()
    learnt: set[str] = set()
    history = run_stages([proxy_stage(net, records, settings, progress=False, learnt=learnt)], progress=False)
    assert learnt == {"backbone", "attention"} and {"slices", "cells"} <= set(history[0])
    assert not torch.equal(net.spatial.conv.weight, spatial_before)  # the map learnt lesion cells
    assert torch.equal(net.pool.score[0].weight, pool_before)  # the slice pooling is not part of the proxy task
    stage = network_stage(net, records, settings, progress=False, learnt=learnt)
    stage.start()
    slow, fast = stage.optimizer().param_groups
    assert slow["lr"] == settings.backbone_lr and fast["lr"] == settings.lr
    slow_ids = {id(p) for p in slow["params"]}
    assert all(id(p) in slow_ids for m in (net.backbone, net.channel, net.spatial) for p in m.parameters())
    assert not any(id(p) in slow_ids for m in (net.pool, net.classifier) for p in m.parameters())
    # from scratch, nothing is pre-trained: every part learns at the full rate
    scratch = network_stage(RECIPE.build(settings), records, settings, progress=False, learnt=set())
    scratch.start()
    assert scratch.optimizer().param_groups[0]["params"] == []


def test_a_proxy_stage_on_its_own_studies_runs_once_per_process_with_the_same_result(phantom_sets):
    from neuroread.training.loop import fit
    from neuroread.training.recipes.ms_csvd import stages

    records, _ = RECIPE.read_records(phantom_sets["ms-csvd"], "phantoms", progress=False)
    settings = RECIPE.settings("demo", network=TINY, epochs=1, batch_size=2, threads=1, pretrain_epochs=1,
                               pretrain_data=phantom_sets["ms-csvd"])
    stages._PROXY_RESULTS.clear()
    first = fit(RECIPE, settings, records, progress=False)
    assert [row["stage"] for row in first.history] == ["proxy", "network"] and len(stages._PROXY_RESULTS) == 1
    again = fit(RECIPE, settings, records, progress=False)  # a later fold: the proxy stage is not repeated
    assert [row["stage"] for row in again.history] == ["network"]
    assert all(torch.equal(v, again.net.state_dict()[k]) for k, v in first.net.state_dict().items())
    other = fit(RECIPE, RECIPE.settings("demo", network=TINY, epochs=1, batch_size=2, threads=1, pretrain_epochs=1,
                                        pretrain_data=phantom_sets["ms-csvd"], seed=1), records, progress=False)
    assert other.history[0]["stage"] == "proxy" and len(stages._PROXY_RESULTS) == 2  # another seed: run again
    stages._PROXY_RESULTS.clear()
