"""The Alzheimer's 3D CNN and its explanations: shapes, LRP leaving the network as it found it,
and relevance conservation with and without biases."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from neuroread.models.ad_lrp.config import ADConfig
from neuroread.models.ad_lrp.network import AlzheimerNet
from neuroread.models.explain import LRP, GuidedBackprop

SMALL = ADConfig(widths=(2, 4, 4, 4), hidden=8, name="test")


def _net(config: ADConfig = SMALL, seed: int = 0) -> AlzheimerNet:
    torch.manual_seed(seed)
    net = AlzheimerNet(config)
    with torch.no_grad():  # running statistics as a trained network has them, not the initial 0 and 1
        for m in net.modules():
            if isinstance(m, nn.BatchNorm3d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return net.eval()


def _input(config: ADConfig = SMALL, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, 1, *config.grid_shape, generator=g)


def test_grid_and_logits_shapes_for_both_presets():
    assert ADConfig.demo().grid_shape == (48, 61, 50) and ADConfig.paper().grid_shape == (96, 121, 100)
    assert ADConfig.demo().voxel_mm == 3.0 and ADConfig.paper().voxel_mm == 1.5
    assert ADConfig.demo().feature_shape == (3, 3, 3)
    net = _net()
    assert net(_input()).shape == (2, 2)
    with pytest.raises(ValueError, match=r"AlzheimerNet takes \[B, 1, 48, 61, 50\].*3 mm"):
        net(torch.zeros(1, 1, 40, 61, 50))


def test_config_refuses_bad_values_by_name():
    with pytest.raises(ValueError, match="ADConfig.step must be 1"):
        ADConfig(step=3)
    with pytest.raises(ValueError, match="ADConfig.composite"):
        ADConfig(composite="alpha1beta0")
    with pytest.raises(ValueError, match="reference_density must be one number per reference_ids"):
        ADConfig(reference_ids=(48, 47), reference_density=(0.1,))
    with pytest.raises(ValueError, match="ADConfig.widths must be 2 to 5"):
        ADConfig(widths=(2,) * 6)
    with pytest.raises(ValueError, match=r"unknown keys 'widht'"):
        ADConfig.from_dict({"widht": [1, 2]})
    config = ADConfig(reference_ids=(48,), reference_density=(0.25,))
    assert ADConfig.from_dict(config.to_dict()) == config


def test_lrp_and_guided_backprop_leave_the_network_as_they_found_it():
    net, x = _net(), _input()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    parameters = [id(p) for p in net.parameters()]
    out = net(x)
    with LRP(net, "epsilon_plus_flat") as lrp:
        relevance = lrp(x, 0)
    with GuidedBackprop(net) as gbp:
        guided = gbp(x, 0)
    assert relevance.shape == x.shape == guided.shape
    assert not torch.equal(relevance, guided)
    after = net.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert [id(p) for p in net.parameters()] == parameters
    for name, m in net.named_modules():
        assert not m._forward_hooks and not m._forward_pre_hooks and not m._backward_hooks, name
    assert all(p.grad is None for p in net.parameters())
    assert torch.equal(net(x), out)


def test_relevance_is_conserved_without_biases():
    """No bias anywhere (batch norm without shift or mean, linear layers without bias): every
    rule of EpsilonPlusFlat is conservative, so each series' relevance sums to its AD logit."""
    net = _net()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm3d):
                m.bias.zero_()
                m.running_mean.zero_()
            if isinstance(m, nn.Linear):
                m.bias.zero_()
    x = _input()
    logits = net(x)[:, 0]
    assert (logits.abs() > 1e-3).all()
    with LRP(net, "epsilon_plus_flat") as lrp:
        sums = lrp(x, 0).flatten(1).sum(1)
    torch.testing.assert_close(sums, logits, rtol=1e-3, atol=1e-5)


def test_biases_take_their_share_of_the_relevance():
    """With biases the relevance is not conserved, by what they absorb. In a network whose
    only bias is the output layer's (epsilon rule there, flat below), the input's relevance
    sums to the logit minus that bias: ``Σ R = z · (z − b) / (z + ε)``."""
    torch.manual_seed(3)
    net = nn.Sequential(nn.Linear(6, 5, bias=False), nn.ReLU(), nn.Linear(5, 2)).eval()
    with torch.no_grad():
        net[2].bias.copy_(torch.tensor([0.7, -0.4]))
    x = torch.randn(4, 6)
    z = net(x)[:, 0]
    with LRP(net, "epsilon_plus_flat", canonize_batch_norm=False) as lrp:
        sums = lrp(x, 0).sum(1)
    expected = z * (z - 0.7) / (z + 1e-6 * torch.sign(z))
    torch.testing.assert_close(sums, expected, rtol=1e-4, atol=1e-5)
    assert (sums - z).abs().min() > 0.5  # not conserved: the bias took its share

    # the 3D CNN with its merged batch-norm shifts and linear biases: the sum moves off the logit
    cnn, x3 = _net(), _input()
    with LRP(cnn, "epsilon_plus_flat") as lrp:
        with_bias = lrp(x3, 0).flatten(1).sum(1)
    assert not torch.allclose(with_bias, cnn(x3)[:, 0], rtol=1e-2)
