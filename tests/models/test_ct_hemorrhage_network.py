"""DrCT2 networks and loss: shapes, attention normalisation, key slices, the two poolings,
training step, weights.

Everything runs on tiny configurations (a few slices, 32-pixel slices, a two-conv backbone)
except the paper preset's structure (built, never run: one forward of it takes minutes on this
CPU) and one forward pass of the demo preset.
"""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from neuroread.models.ct_hemorrhage.config import POOLINGS, VGG16_LAYOUT
from neuroread.models.ct_hemorrhage.network import DrCT2, DrCT2Config, DrCT2Output, drct2_loss, make_optimizer

TINY = DrCT2Config(
    n_labels=3,
    slices=6,
    key_slices=3,
    input_size=32,
    zoom_size=64,
    backbone=(4, "M", 8, "M"),
    gru_hidden=4,
    aps_fc=8,
    head=(8, 4),
    freeze_backbone=False,
    name="test",
)
ATTENTION = dataclasses.replace(TINY, pooling="attention")


def _model(config: DrCT2Config = TINY, seed: int = 0) -> DrCT2:
    torch.manual_seed(seed)
    return DrCT2(config)


def _batch(config: DrCT2Config = TINY, batch: int = 2, seed: int = 1) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(batch, config.slices, 3, config.input_size, config.input_size, generator=gen)


def _gru_params(inputs: int, hidden: int) -> int:
    """Parameters of a one-layer bidirectional GRU (three gates, two biases each)."""
    return 2 * 3 * (inputs * hidden + hidden * hidden + 2 * hidden)


def _head_params(inputs: int, widths: tuple[int, int], labels: int) -> int:
    return inputs * widths[0] + widths[0] + widths[0] * widths[1] + widths[1] + widths[1] * labels + labels


def test_tiny_forward_shapes():
    out = _model().eval()(_batch())
    assert out.primary_logits.shape == out.aps_logits.shape == out.fusion_logits.shape == (2, 3)
    assert out.slice_attention.shape == (2, 6)
    assert out.feature_attention.shape == (2, 6, 8)
    assert out.key_slices.shape == (2, 3) and out.key_slices.dtype == torch.int64
    # 32 → conv → 'M' → 16 → conv → (maps kept here) → 'M' → 8
    assert out.conv_maps.shape == (2, 6, 8, 16, 16)
    for probs in (out.probabilities, out.primary_probabilities, out.aps_probabilities):
        assert probs.shape == (2, 3) and bool(((probs > 0) & (probs < 1)).all())
    assert torch.equal(out.probabilities, torch.sigmoid(out.fusion_logits))


@pytest.mark.parametrize(("pooling", "widths"), [("flatten", (6 * 8, 3 * 8, 3 * 8)), ("attention", (8, 8, 8))])
def test_the_heads_read_the_flattened_matrix_or_its_attention_weighted_sum(pooling, widths):
    """Primary, APS and fusion heads (2·gru_hidden = 8 per row, 6 slices, 3 key slices): flattened
    rows (the paper) or one row, the rows summed (attention-weighted mean; APS rows averaged)."""
    model = _model(dataclasses.replace(TINY, pooling=pooling)).eval()
    assert (model.primary.head[0].in_features, model.aps.head[0].in_features,
            model.fusion[0].in_features) == widths
    seen: dict[str, object] = {}
    hooks = [model.primary.register_forward_hook(lambda _m, _a, out: seen.__setitem__("primary", out)),
             model.aps.dependencies.register_forward_hook(lambda _m, _a, out: seen.__setitem__("aps", out)),
             model.aps.head.register_forward_pre_hook(lambda _m, a: seen.__setitem__("aps_head", a[0])),
             model.fusion.register_forward_pre_hook(lambda _m, a: seen.__setitem__("fusion", a[0]))]
    try:
        with torch.no_grad():
            out = model(_batch())
    finally:
        for hook in hooks:
            hook.remove()
    weighted, aps = seen["primary"].weighted, seen["aps"]
    assert weighted.shape == (2, 6, 8) and aps.shape == (2, 3, 8)
    rows = torch.arange(2).unsqueeze(1)
    key_rows = weighted[rows, out.key_slices]
    if pooling == "attention":
        primary_in, aps_in, fusion_in = weighted.sum(1), aps.mean(1), key_rows.sum(1) + aps.mean(1)
    else:
        primary_in, aps_in, fusion_in = weighted.flatten(1), aps.flatten(1), (key_rows + aps).flatten(1)
    with torch.no_grad():
        torch.testing.assert_close(out.primary_logits, model.primary.head(primary_in))
    torch.testing.assert_close(seen["aps_head"], aps_in)
    torch.testing.assert_close(seen["fusion"], fusion_in)


def _position_free(config: DrCT2Config, seed: int = 0) -> DrCT2:
    """A network whose recurrences are replaced by the same layer on every slice, so nothing but
    the pooling can tell one slice position from another."""
    model = _model(config, seed)
    width = 2 * config.gru_hidden
    model.primary.dependencies = nn.Sequential(nn.Linear(config.features, width), nn.Tanh())
    model.aps.dependencies = nn.Sequential(nn.Linear(config.aps_fc, width), nn.Tanh())
    return model.eval()


def test_attention_pooling_counts_a_lesion_the_same_at_any_slice_position():
    gen = torch.Generator().manual_seed(5)
    base, zoomed_base = torch.rand(2, 8, generator=gen)
    lesion, zoomed_lesion = base + 3.0, zoomed_base + 3.0  # bright on every feature

    def series(position: int, normal: torch.Tensor, odd: torch.Tensor) -> torch.Tensor:
        x = normal.expand(1, 6, 8).clone()
        x[0, position] = odd
        return x

    logits = {}
    for pooling in POOLINGS:
        model = _position_free(dataclasses.replace(TINY, pooling=pooling))
        with torch.no_grad():
            logits[pooling] = [model.decode(series(p, base, lesion), series(p, zoomed_base, zoomed_lesion))
                               for p in (1, 4)]
    near, far = logits["attention"]
    for name in ("primary_logits", "aps_logits", "fusion_logits"):
        torch.testing.assert_close(getattr(near, name), getattr(far, name), rtol=1e-5, atol=1e-6)
    near, far = logits["flatten"]  # the flattened heads weigh each position on its own
    assert float((near.primary_logits - far.primary_logits).abs().max()) > 1e-4  # float noise is ~1e-7


def test_attention_normalisation_and_feature_attention_is_softmax_of_pooled_maps():
    out = _model().eval()(_batch())
    assert bool((out.slice_attention >= 0).all())
    torch.testing.assert_close(out.slice_attention.sum(dim=1), torch.ones(2))
    assert bool((out.feature_attention >= 0).all())
    torch.testing.assert_close(out.feature_attention.sum(dim=2), torch.ones(2, 6))
    # Eq. 3 on the adaptive max pooling of the last maps (the final 2×2 pool covers every pixel).
    pooled = out.conv_maps.amax(dim=(3, 4))
    torch.testing.assert_close(out.feature_attention, torch.softmax(pooled, dim=2))


def test_key_slices_are_the_top_attended_in_slice_order():
    out = _model().eval()(_batch(batch=4))
    for row in range(4):
        attention, key = out.slice_attention[row].detach(), out.key_slices[row]
        expected = sorted(torch.argsort(attention, descending=True)[:3].tolist())
        assert key.tolist() == expected
        others = [i for i in range(6) if i not in expected]
        assert float(attention[key].min()) >= float(attention[others].max())


def test_aps_network_reads_the_key_slices_zoomed():
    model = _model().eval()
    x = _batch()
    seen: list[torch.Tensor] = []
    first_conv = model.backbone[0]
    handle = first_conv.register_forward_pre_hook(lambda _module, args: seen.append(args[0].clone()))
    try:
        out = model(x)
    finally:
        handle.remove()
    assert len(seen) == 2
    normalised = (x - model.mean) / model.std
    chosen = torch.stack([normalised[b, out.key_slices[b]] for b in range(2)]).flatten(0, 1)
    expected = F.interpolate(chosen, size=(64, 64), mode="bilinear", align_corners=False)
    assert seen[1].shape == (6, 3, 64, 64)
    torch.testing.assert_close(seen[1], expected)


def test_eval_is_deterministic_and_initialisation_follows_the_seed():
    x = _batch()
    a, b = _model(seed=3).eval(), _model(seed=3).eval()
    first, second, third = a(x), a(x), b(x)
    assert torch.equal(first.fusion_logits, second.fusion_logits)
    assert torch.equal(first.fusion_logits, third.fusion_logits)
    assert torch.equal(first.key_slices, third.key_slices)
    assert not torch.equal(first.fusion_logits, _model(seed=4).eval()(x).fusion_logits)


def test_forward_refuses_wrong_input_shape():
    model = _model()
    with pytest.raises(ValueError, match=r"expects input \[batch, 6, 3, 32, 32\], got \[2, 5, 3, 32, 32\]"):
        model(torch.rand(2, 5, 3, 32, 32))
    with pytest.raises(ValueError, match="floating-point"):
        model(torch.zeros(1, 6, 3, 32, 32, dtype=torch.uint8))


def test_loss_matches_hand_computed_values():
    logits = torch.zeros(1, 2)
    out = DrCT2Output(
        primary_logits=logits,
        aps_logits=torch.tensor([[2.0, -1.0]]),
        fusion_logits=torch.tensor([[1.0, 0.0]]),
        slice_attention=torch.ones(1, 2) / 2,
        feature_attention=torch.ones(1, 2, 1),
        key_slices=torch.tensor([[0, 1]]),
        conv_maps=torch.ones(1, 2, 1, 1, 1),
    )
    target = torch.tensor([[1.0, 0.0]])
    loss = drct2_loss(out, target)
    s = lambda v: 1 / (1 + math.exp(-v))  # noqa: E731
    aps = ((s(2.0) - 1) ** 2 + s(-1.0) ** 2) / 2
    fusion = (math.log(1 + math.exp(-1.0)) + math.log(2)) / 2
    assert float(loss.primary) == pytest.approx(0.25)
    assert float(loss.aps) == pytest.approx(aps)
    assert float(loss.fusion) == pytest.approx(fusion)
    assert float(loss.total) == pytest.approx(0.25 + aps + fusion)
    with pytest.raises(ValueError, match=r"target shape \[1, 3\]"):
        drct2_loss(out, torch.zeros(1, 3))


def test_gradient_steps_reduce_the_loss():
    model = _model().train()
    x = _batch(batch=4)
    target = torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 0.0], [1.0, 1.0, 0.0], [0.0, 1.0, 1.0]])
    optimizer = make_optimizer(model)
    losses = []
    for _ in range(5):
        torch.manual_seed(7)  # the same dropout masks every step: one fixed objective
        loss = drct2_loss(model(x), target)
        losses.append(loss.total.item())
        optimizer.zero_grad()
        loss.total.backward()
        optimizer.step()
    assert all(later < earlier for earlier, later in zip(losses, losses[1:])), losses


def test_optimizer_groups_hold_the_paper_learning_rates_and_every_trainable_parameter_once():
    model = _model()
    optimizer = make_optimizer(model)
    assert [(g["name"], g["lr"]) for g in optimizer.param_groups] == [
        ("primary", 0.0005),
        ("aps", 0.0003),
        ("fusion", 0.0005),
    ]
    grouped = [id(p) for g in optimizer.param_groups for p in g["params"]]
    assert len(grouped) == len(set(grouped))
    assert set(grouped) == {id(p) for p in model.parameters()}
    primary = {id(p) for p in optimizer.param_groups[0]["params"]}
    assert {id(p) for p in model.backbone.parameters()} <= primary


def test_frozen_backbone_gets_no_gradient_and_stays_out_of_the_optimizer():
    model = _model(dataclasses.replace(TINY, freeze_backbone=True)).train()
    loss = drct2_loss(model(_batch()), torch.ones(2, 3))
    loss.total.backward()
    assert all(p.grad is None and not p.requires_grad for p in model.backbone.parameters())
    for part in (model.primary, model.aps, model.fusion):
        for name, p in part.named_parameters():
            assert p.grad is not None and bool(p.grad.abs().sum() > 0), name
    grouped = {id(p) for g in make_optimizer(model).param_groups for p in g["params"]}
    assert not grouped & {id(p) for p in model.backbone.parameters()}
    assert grouped == {id(p) for p in model.parameters() if p.requires_grad}


def test_backbone_weights_load_from_a_local_torchvision_state_dict(tmp_path):
    torch.manual_seed(11)
    source = torchvision.models.vgg.make_layers(list(TINY.backbone))
    state = {f"features.{k}": v for k, v in source.state_dict().items()}
    state["classifier.0.weight"] = torch.zeros(2, 2)  # a full VGG file's classifier is ignored
    path = tmp_path / "vgg.pth"
    torch.save(state, path)
    model = DrCT2(TINY, backbone_weights=path)
    assert torch.equal(model.backbone[0].weight, source[0].weight)
    assert torch.equal(model.backbone[3].bias, source[3].bias)

    with pytest.raises(FileNotFoundError, match="nothing is downloaded"):
        DrCT2(TINY, backbone_weights=tmp_path / "missing.pth")
    torch.save({"classifier.0.weight": torch.zeros(2, 2)}, tmp_path / "no_features.pth")
    with pytest.raises(ValueError, match="no 'features"):
        DrCT2(TINY, backbone_weights=tmp_path / "no_features.pth")
    wider = dataclasses.replace(TINY, backbone=(5, "M", 8, "M"))
    with pytest.raises(ValueError, match="does not fit the configured backbone"):
        DrCT2(wider, backbone_weights=path)


def test_paper_preset_is_torchvision_vgg16_and_loads_its_state_dict(tmp_path):
    config = DrCT2Config.paper(6)
    assert (config.slices, config.key_slices, config.input_size, config.zoom_size) == (28, 16, 224, 512)
    assert (config.dropout, config.freeze_backbone, config.name, config.features) == (0.5, True, "paper", 512)
    assert DrCT2Config.paper(9, slices=32).slices == 32

    torch.manual_seed(0)
    vgg = torchvision.models.vgg16(weights=None).features
    path = tmp_path / "vgg16_features.pth"
    torch.save({f"features.{k}": v for k, v in vgg.state_dict().items()}, path)
    model = DrCT2(config, backbone_weights=path)

    assert [type(m) for m in model.backbone] == [type(m) for m in vgg]
    assert [p.shape for p in model.backbone.parameters()] == [p.shape for p in vgg.parameters()]
    assert sum(p.numel() for p in model.backbone.parameters()) == 14_714_688
    assert torch.equal(model.backbone[28].weight, vgg[28].weight)
    assert not any(p.requires_grad for p in model.backbone.parameters())

    width = 512  # 2 × GRU hidden 256
    expected = (
        _gru_params(512, 256) + (width * width + width) + (width + 1) + _head_params(28 * width, (256, 128), 6)  # primary
        + 2 * 512 + (512 * 512 + 512) + _gru_params(512, 256) + (width * width + width)  # APS up to its head
        + _head_params(16 * width, (256, 128), 6)  # APS head
        + _head_params(16 * width, (256, 128), 6)  # fusion
    )
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == expected


def test_demo_preset_is_vgg16_bn_at_an_eighth_without_its_fourth_pool_and_runs_one_series():
    config = DrCT2Config.demo(9)
    assert config.name == "demo" and config.to_dict()["name"] == "demo" and config.pooling == "attention"
    assert config.backbone == (8, 8, "M", 16, 16, "M", 32, 32, 32, "M", 64, 64, 64, 64, 64, 64, "M")
    assert config.backbone.count("M") == 4 == VGG16_LAYOUT.count("M") - 1
    assert [c for c in config.backbone if c != "M"] == [c // 8 for c in VGG16_LAYOUT if c != "M"]
    assert (config.slices, config.key_slices, config.input_size, config.zoom_size) == (24, 8, 128, 256)
    assert (config.gru_hidden, config.aps_fc, config.head) == (32, 64, (64, 32))
    assert config.freeze_backbone and config.backbone_batch_norm  # pre-trained on phantom slices, then frozen
    model = _model(config).eval()
    assert sum(p.numel() * 4 for p in model.parameters()) < 5 * 1024 * 1024  # float32 weights under 5 MB
    with torch.no_grad():
        out = model(_batch(config, batch=1))
    assert out.fusion_logits.shape == (1, 9)
    assert out.key_slices.shape == (1, 8)
    # 128 px through three pools to the last convolutions: 16×16 maps (the fourth pool follows them)
    assert out.conv_maps.shape == (1, 24, 64, 16, 16)
    assert model.spatial_maps(out).shape == (1, 8, 128, 128)


def test_spatial_maps_shape_and_range():
    model = _model().eval()
    out = model(_batch())
    maps = model.spatial_maps(out)
    assert maps.shape == (2, 3, 32, 32)
    assert not maps.requires_grad
    for b in range(2):
        for k in range(3):
            assert float(maps[b, k].min()) == 0.0 and float(maps[b, k].max()) == pytest.approx(1.0)
    assert model.spatial_maps(out, torch.tensor([[5], [0]])).shape == (2, 1, 32, 32)
    with pytest.raises(ValueError, match=r"indices must be in \[0, 6\)"):
        model.spatial_maps(out, torch.tensor([[6], [0]]))


def test_spatial_map_follows_the_attended_channel():
    """A hot spot in the channel feature attention favours lights up; one in the other channel does not."""
    model = _model()
    maps = torch.zeros(1, 6, 8, 4, 4)
    maps[0, 2, 1, 1, 3] = 5.0  # channel 1: top right quarter row 1
    maps[0, 2, 0, 3, 0] = 5.0  # channel 0: bottom left
    attention = torch.full((1, 6, 8), 0.01)
    attention[0, 2, 1] = 0.93
    out = DrCT2Output(
        primary_logits=torch.zeros(1, 3),
        aps_logits=torch.zeros(1, 3),
        fusion_logits=torch.zeros(1, 3),
        slice_attention=torch.full((1, 6), 1 / 6),
        feature_attention=attention,
        key_slices=torch.tensor([[0, 2, 4]]),
        conv_maps=maps,
    )
    spatial = model.spatial_maps(out)
    row, col = divmod(int(spatial[0, 1].argmax()), 32)
    assert 8 <= row < 16 and 24 <= col < 32  # the 4×4 cell (1, 3) upsampled to 32×32
    assert float(spatial[0, 1, 28, 2]) < 0.05  # the other channel's spot is nearly dark
    assert torch.equal(spatial[0, 0], torch.zeros(32, 32))  # slice 0 has no contrast


@pytest.mark.parametrize("config", [TINY, ATTENTION, DrCT2Config.paper(6, slices=32), DrCT2Config.demo(9)],
                         ids=["tiny", "attention", "paper", "demo"])
def test_config_round_trips_through_its_dict(config):
    data = config.to_dict()
    assert data["paper"].startswith("Wang, Fu, Li, Pei")
    assert isinstance(data["backbone"], list) and isinstance(data["head"], list)
    assert DrCT2Config.from_dict(data) == config


def test_config_from_dict_names_unknown_and_missing_keys():
    data = TINY.to_dict()
    data["key_slice"] = 4
    with pytest.raises(ValueError, match="'key_slice' \\(did you mean 'key_slices'\\?\\)"):
        DrCT2Config.from_dict(data)
    with pytest.raises(ValueError, match="'n_labels' is missing"):
        DrCT2Config.from_dict({"slices": 28})
    older = TINY.to_dict()
    del older["pooling"]  # written before the heads had a choice: the paper's flattened matrix
    assert DrCT2Config.from_dict(older).pooling == "flatten"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"key_slices": 7}, r"key_slices must be in \[2, slices=6\], got 7"),
        ({"key_slices": 1}, r"key_slices must be in \[2, slices=6\], got 1"),
        ({"input_size": 30}, r"input_size must be a multiple of 4"),
        ({"zoom_size": 16}, r"zoom_size \(16\) must not be below input_size \(32\)"),
        ({"dropout": 1.0}, r"dropout must be in \[0, 1\), got 1.0"),
        ({"backbone": (4, "M", 8)}, r"must end with a max pool 'M'"),
        ({"backbone": (4, "X", 8, "M")}, r"entries must be positive channel counts or 'M', got \['X'\]"),
        ({"n_labels": 0}, r"n_labels must be a positive integer, got 0"),
        ({"gru_hidden": True}, r"gru_hidden must be a positive integer, got True"),
        ({"head": (8,)}, r"head must be two positive widths"),
        ({"freeze_backbone": "yes"}, r"freeze_backbone must be true or false"),
        ({"pooling": "mean"}, r"pooling must be one of \('flatten', 'attention'\), got 'mean'"),
    ],
)
def test_config_refuses_invalid_values(change, message):
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(TINY, **change)


@pytest.mark.parametrize("pooling", POOLINGS)
def test_decode_from_encoded_slices_matches_forward(pooling):
    """Training with a frozen encoder runs decode() on vectors encoded once per slice; it must
    give what forward() gives on the images (same key slices, same logits), with either pooling."""
    config = dataclasses.replace(TINY, backbone_batch_norm=True, freeze_backbone=True, pooling=pooling)
    model = _model(config).eval()
    x = _batch(config)
    with torch.no_grad():
        full = model(x)
        vectors, zoomed = model.encode_slices(x.flatten(0, 1))
        cached = model.decode(vectors.view(2, 6, -1), zoomed.view(2, 6, -1))
    assert torch.equal(cached.key_slices, full.key_slices)
    for name in ("primary_logits", "aps_logits", "fusion_logits", "slice_attention", "feature_attention"):
        torch.testing.assert_close(getattr(cached, name), getattr(full, name), rtol=1e-5, atol=1e-6)
    assert cached.conv_maps is None
    with pytest.raises(ValueError, match="conv maps"):
        model.spatial_maps(cached)
    with pytest.raises(ValueError, match=r"zoomed_vectors must be \[batch, 6, 8\]"):
        model.decode(vectors.view(2, 6, -1), zoomed[:6].view(1, 6, -1)[:, :, :4])
    with pytest.raises(ValueError, match="encode_slices expects"):
        model.encode_slices(x)


def test_frozen_encoder_keeps_its_batch_norm_statistics_in_training():
    config = dataclasses.replace(TINY, backbone_batch_norm=True, freeze_backbone=True)
    model = _model(config)
    before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    model.train()
    assert model.training and model.primary.training and not model.backbone.training
    optimizer = make_optimizer(model)
    loss = drct2_loss(model(_batch(config)), torch.ones(2, 3))
    loss.total.backward()
    optimizer.step()
    after = model.backbone.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # weights and running statistics
    unfrozen = _model(dataclasses.replace(config, freeze_backbone=False)).train()
    assert unfrozen.backbone.training
