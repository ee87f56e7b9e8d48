"""The transfer attention network: shapes, attention normalisation, focal loss by hand, a step
that learns, the configuration as a value, the ImageNet backbone file, explainers that leave it
as found."""
from __future__ import annotations

import math

import pytest
import torch
from torchvision.models import resnet50

from neuroread.models.explain import GradCAM, NetworkState
from neuroread.models.ms_csvd.config import TANConfig
from neuroread.models.ms_csvd.network import TransferAttentionNet, class_alpha, focal_loss

TINY = TANConfig(widths=(4, 8, 8, 8), block="basic", layers=(1, 1, 1, 1), strides=(1, 2, 1, 1), input_size=32,
                 pool_hidden=8, name="tiny")


def _batch(b: int = 3, s: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(b, s, 3, TINY.input_size, TINY.input_size, generator=g)
    mask = torch.ones(b, s, dtype=torch.bool)
    if b > 1:
        mask[1, 3:] = False  # a series of three slices padded to five
    return x, mask


def test_shapes_and_attention_normalisation():
    torch.manual_seed(0)
    net = TransferAttentionNet(TINY).eval()
    x, mask = _batch()
    out = net(x, mask)
    assert out.logits.shape == (3, 2) and out.probabilities.sum(1).allclose(torch.ones(3))
    # slice pooling: a distribution over each series' real slices, nothing on padding
    assert out.slice_weights.shape == (3, 5)
    assert out.slice_weights.sum(1).allclose(torch.ones(3)) and bool((out.slice_weights[1, 3:] == 0).all())
    # spatial attention: one map per slice on the feature grid, in (0, 1); its pooling weights sum to one
    assert out.spatial.shape == (3, 5, TINY.grid, TINY.grid) == (3, 5, 4, 4)
    real = out.spatial[mask]
    assert bool((real > 0).all() and (real < 1).all()) and bool((out.spatial[1, 3:] == 0).all())
    maps = net.backbone((x[0] - net.mean) / net.std)
    vectors, spatial = net.attend(maps)
    refined = maps * net.channel(maps) * spatial[:, None]
    weights = spatial / spatial.sum((1, 2), keepdim=True)
    assert weights.sum((1, 2)).allclose(torch.ones(5))
    assert vectors.allclose((refined * weights[:, None]).sum((2, 3)), atol=1e-6)
    # padding changes nothing: the three-slice series alone gives the same decision
    alone = net(x[1, :3])
    assert alone.logits.allclose(out.logits[1:2], atol=1e-5)
    # one series without a batch dimension; a series with no real slice is refused
    assert net(x[0]).logits.shape == (1, 2)
    with pytest.raises(ValueError, match="real slice"):
        net(x, torch.zeros(3, 5, dtype=torch.bool))


def test_without_attention_the_slices_are_averaged():
    net = TransferAttentionNet(_no_attention()).eval()
    x, mask = _batch()
    out = net(x, mask)
    assert out.spatial is None and net.channel is None and net.pool is None
    assert out.slice_weights[1].tolist() == pytest.approx([1 / 3] * 3 + [0, 0])


def _no_attention() -> TANConfig:
    data = TINY.to_dict()
    data.pop("paper")
    return TANConfig.from_dict({**data, "attention": False})


def test_focal_loss_against_a_hand_computed_value():
    logits = torch.tensor([[2.0, 0.0], [0.5, 1.5]])
    target = torch.tensor([0, 0])
    alpha = torch.tensor([0.75, 0.25])
    # p_0 of each row by hand: softmax
    p1 = math.exp(2.0) / (math.exp(2.0) + 1.0)          # 0.880797
    p2 = math.exp(0.5) / (math.exp(0.5) + math.exp(1.5))  # 0.268941
    hand = (-(0.75 * (1 - p1) ** 2 * math.log(p1)) - (0.75 * (1 - p2) ** 2 * math.log(p2))) / 2
    assert focal_loss(logits, target, alpha, gamma=2.0).item() == pytest.approx(hand, rel=1e-6)
    # 0.75 * 0.014209 * 0.126928 = 0.001353 and 0.75 * 0.534447 * 1.313262 = 0.526399; mean 0.263876
    assert hand == pytest.approx(0.263876, abs=1e-6)
    # gamma 0 without alpha is the cross-entropy
    assert focal_loss(logits, target, None, 0.0).item() == pytest.approx(
        torch.nn.functional.cross_entropy(logits, target).item(), rel=1e-6)
    with pytest.raises(ValueError, match="gamma"):
        focal_loss(logits, target, gamma=-1.0)


def test_alpha_from_the_class_frequencies():
    # the paper's cohort: MS 112, cSVD 321 → the rarer class weighs more, the two sum to one
    alpha = class_alpha([112, 321])
    assert alpha.tolist() == pytest.approx([321 / 433, 112 / 433], rel=1e-6)
    assert class_alpha([0, 5]).tolist() == [0.0, 1.0]
    with pytest.raises(ValueError):
        class_alpha([0, 0])


def test_a_training_step_lowers_the_loss():
    torch.manual_seed(0)
    net = TransferAttentionNet(TINY).train()
    x, mask = _batch(4, 4)
    mask[:] = True
    y = torch.tensor([0, 1, 0, 1])
    x[y == 1] = x[y == 1] * 0.5  # something to tell the classes by
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    alpha = class_alpha([2, 2])
    losses = []
    for _ in range(8):
        loss = focal_loss(net(x, mask).logits, y, alpha)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] * 0.7, losses


def test_configuration_round_trips_and_names_bad_keys():
    demo = TANConfig.demo()
    assert TANConfig.from_dict(demo.to_dict()) == demo
    assert demo.grid == 20 and demo.features == 64
    paper = TANConfig.paper()
    assert paper.is_resnet50 and paper.features == 2048 and paper.grid == 7
    with pytest.raises(ValueError, match="did you mean 'widths'"):
        TANConfig.from_dict({"width": [1, 2, 3, 4]})
    with pytest.raises(ValueError, match="spatial_kernel"):
        TANConfig(spatial_kernel=4)
    with pytest.raises(ValueError, match="multiple of"):
        TANConfig(input_size=100)


def test_the_paper_backbone_takes_torchvision_resnet50_weights(tmp_path):
    torch.manual_seed(0)
    imagenet = resnet50()  # random values, torchvision's layout and names (the ImageNet file has the same)
    path = tmp_path / "resnet50.pth"
    torch.save(imagenet.state_dict(), path)
    net = TransferAttentionNet(TANConfig.paper(), backbone_weights=path)
    assert torch.equal(net.backbone.layer4[2].conv3.weight, imagenet.layer4[2].conv3.weight)
    with pytest.raises(ValueError, match="does not fit"):
        TransferAttentionNet(TANConfig.demo(), backbone_weights=path)
    with pytest.raises(FileNotFoundError, match="nothing is downloaded"):
        TransferAttentionNet(TANConfig.paper(), backbone_weights=tmp_path / "missing.pth")


def test_grad_cam_on_the_last_stage_leaves_the_network_as_found():
    torch.manual_seed(0)
    net = TransferAttentionNet(TINY).train()
    for p in net.classifier.parameters():
        p.requires_grad_(False)
    state = NetworkState(net)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    x, _ = _batch(1, 4)
    with GradCAM(net, "backbone.layer4", output=lambda o: o.logits) as cam:
        maps = cam(x, 1, size=(TINY.input_size, TINY.input_size))
    assert maps.shape == (4, TINY.input_size, TINY.input_size) and bool((maps >= 0).all())
    assert state.changes() == [] and net.training
    assert not any(p.requires_grad for p in net.classifier.parameters())
    assert all(p.grad is None for p in net.parameters())
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
