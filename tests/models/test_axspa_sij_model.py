"""The axspa-sij model behind the contract, on a sacroiliac phantom with an untrained network:
two slots, the assessment, Grad-CAM of each branch on its series' own grid, key T1 slices,
the network left as found, the same answer twice. (Registered with its demo weights later.)"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from neuroread.models.axspa_sij.config import MSFAConfig
from neuroread.models.axspa_sij.model import SPEC, AxSpAModel, SacroiliacNet
from neuroread.models.spec import ModelCard
from neuroread.models.volume import load_series


@pytest.fixture(scope="module")
def study(phantom_sets):
    case = sorted(p.parent for p in phantom_sets["axspa-sij"].glob("*/truth.json"))[0]
    truth = json.loads((case / "truth.json").read_text())
    return {key: load_series(sorted(p for p in (case / s["folder"]).iterdir() if p.is_file()))
            for key, s in truth["series"].items()}


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    net = SacroiliacNet(MSFAConfig.demo())
    return AxSpAModel.from_network(net, ModelCard({}, "0" * 64, "untrained (test)", demo=True))


def test_a_study_gets_its_assessment_maps_on_both_series_and_key_t1_slices(model, study):
    before = {k: v.clone() for k, v in model.net.state_dict().items()}
    result = model.predict(study)
    result.check(SPEC, study)
    (c,) = result.classifications
    assert c.outcome == "diagnosis" and sum(p.probability for p in c.probabilities) == pytest.approx(1.0)
    t1, fs = study["t1"], study["fs"]
    by = {(h.branch, h.series_instance_uid): h for h in result.heatmaps}
    assert set(by) == {("t1", t1.series_instance_uid), ("fs", fs.series_instance_uid),
                       ("", t1.series_instance_uid), ("", fs.series_instance_uid)}  # "": the fused decision's
    for (_, uid), h in by.items():
        series = t1 if uid == t1.series_instance_uid else fs
        assert h.kind == "gradcam" and h.explains == c.decided
        assert h.array.shape == series.array.shape and h.array.min() >= 0 and h.array.max() <= 1
    assert 1 <= len(result.key_slices) <= 5
    assert all(k.series_instance_uid == t1.series_instance_uid for k in result.key_slices)
    assert [k.rank for k in result.key_slices] == list(range(1, len(result.key_slices) + 1))
    assert all(torch.equal(before[k], v) for k, v in model.net.state_dict().items())  # Grad-CAM left it as found
    assert not any(m._forward_hooks or m._backward_hooks for m in model.net.modules())
    again = model.predict(study)
    assert [p.probability for p in again.classifications[0].probabilities] == [p.probability for p in c.probabilities]
    assert all(np.array_equal(a.array, b.array) for a, b in zip(again.heatmaps, result.heatmaps))


def test_it_needs_both_series_and_its_weights(study):
    with pytest.raises(RuntimeError, match="predict before load"):
        AxSpAModel().predict(study)
    net = SacroiliacNet(MSFAConfig.demo())
    model = AxSpAModel.from_network(net, ModelCard({}, "0" * 64, "untrained (test)", demo=True))
    with pytest.raises(ValueError, match=r"input slots \['fs', 't1'\]"):
        model.predict({"t1": study["t1"]})
