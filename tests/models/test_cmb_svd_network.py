"""The cmb-svd network: torchvision's Mask R-CNN at one scale, the stride-4 level, its size, a
training step that learns, the subtype MIL's attention, and the 3D merging of slice detections
on hand-made examples."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from neuroread.models.cmb_svd.config import CMBConfig
from neuroread.models.cmb_svd.merge import SliceDetection, merge_detections
from neuroread.models.cmb_svd.network import GEOMETRY, FixedScaleTransform, MicrobleedNet, SubtypeMIL


def test_presets_round_trip_and_bad_values_are_named():
    assert CMBConfig.paper().instance_width == 1024 + len(GEOMETRY)  # the paper's MIL reads the ROI features
    assert CMBConfig.demo().instance_width == len(GEOMETRY)
    for config in (CMBConfig.paper(), CMBConfig.demo()):
        assert CMBConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="anchor_sizes"):
        CMBConfig(fpn_stages=(1, 2, 3), anchor_sizes=(4, 8))
    with pytest.raises(ValueError, match="input_size"):
        CMBConfig(input_size=300)
    with pytest.raises(ValueError, match="detection_threshold"):
        CMBConfig(detection_threshold=1.5)
    with pytest.raises(ValueError, match=r"unknown keys 'fpn_chanels' \(did you mean 'fpn_channels'\?\)"):
        CMBConfig.from_dict({"fpn_chanels": 8})


def test_the_transform_never_resizes_and_the_pyramid_keeps_stride_four():
    transform = FixedScaleTransform(288)
    assert transform.min_size == (288,) and transform.max_size == 288
    batch, _ = transform([torch.zeros(3, 160, 160), torch.zeros(3, 288, 288)])
    assert batch.image_sizes == [(160, 160), (288, 288)]  # torchvision's default would make both 800 px
    net = MicrobleedNet(CMBConfig.demo(), 12).eval()
    features = net.detector.backbone(torch.zeros(1, 3, 288, 288))
    assert [tuple(f.shape[-2:]) for f in features.values()] == [(72, 72), (36, 36), (18, 18), (9, 9)]
    assert net.detector.transform.__class__ is FixedScaleTransform
    params = sum(p.numel() for p in net.parameters())
    assert params * 4 < 5 * 2 ** 20, f"demo network of {params} parameters does not fit 5 MB"
    heads = sum(p.numel() for p in net.detector.roi_heads.parameters())
    assert heads > params / 3  # the heads dominate, as the issue expects; the backbone is the smaller part


def _blob_case(size: int = 96) -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    images, targets = [], []
    rng = np.random.default_rng(0)
    for i in range(4):
        img = rng.normal(0, 0.1, (3, size, size)).astype(np.float32)
        r, c = 20 + 12 * i, 30 + 9 * i
        yy, xx = np.mgrid[:size, :size]
        blob = (yy - r) ** 2 + (xx - c) ** 2 <= 9
        img[:, blob] = -2.0
        rows, cols = np.flatnonzero(blob.any(1)), np.flatnonzero(blob.any(0))
        images.append(torch.from_numpy(img))
        targets.append({"boxes": torch.tensor([[cols[0], rows[0], cols[-1] + 1, rows[-1] + 1]], dtype=torch.float32),
                        "labels": torch.tensor([1]), "masks": torch.from_numpy(blob[None].astype(np.uint8))})
    return images, targets


def test_a_training_step_lowers_the_detector_losses():
    torch.manual_seed(0)
    net = MicrobleedNet(CMBConfig.demo(), 12).train()
    images, targets = _blob_case()
    opt = torch.optim.AdamW(net.detector.parameters(), lr=1e-3)
    losses = []
    for _ in range(12):
        parts = net.detector(images, targets)
        total = sum(parts.values())
        opt.zero_grad()
        total.backward()
        opt.step()
        losses.append(float(total))
    assert set(parts) == {"loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg"}
    assert np.mean(losses[-3:]) < 0.7 * np.mean(losses[:3])


def test_detect_gives_each_detection_its_box_head_representation():
    torch.manual_seed(0)
    net = MicrobleedNet(CMBConfig.demo(), 12).eval()
    found = net.detect(torch.randn(2, 3, 96, 96))
    for det in found:
        n = len(det.scores)
        assert det.boxes.shape == (n, 4) and det.masks.shape == (n, 96, 96)
        assert det.representations.shape == (n, CMBConfig.demo().representation)
    boxes = [found[0].boxes[:2], found[1].boxes[:1]]
    again = net.representations(torch.randn(2, 3, 96, 96), boxes)
    assert [tuple(r.shape) for r in again] == [(len(boxes[0]), 128), (len(boxes[1]), 128)]


def test_the_mil_attends_over_its_bag_and_reads_context_alone_when_empty():
    torch.manual_seed(0)
    mil = SubtypeMIL(16 + len(GEOMETRY), 5, 8, 3, 0.0).eval()
    bag = torch.randn(6, 16 + len(GEOMETRY))
    context = torch.randn(2, 5)
    out = mil([bag, bag[:0]], context)
    assert out.logits.shape == (2, 3) and torch.allclose(out.probabilities.sum(1), torch.ones(2))
    assert out.weights[0].shape == (6,) and abs(float(out.weights[0].sum()) - 1) < 1e-6
    assert out.weights[1].numel() == 0
    perm = torch.randperm(6)
    shuffled = mil([bag[perm], bag[:0]], context)
    assert torch.allclose(shuffled.logits, out.logits, atol=1e-6)  # a bag, not a sequence
    assert torch.allclose(shuffled.weights[0], out.weights[0][perm], atol=1e-6)
    other = mil([bag[:0], bag[:0]], torch.stack([context[1], context[1]]))
    assert torch.allclose(other.logits[0], out.logits[1], atol=1e-6)  # an empty bag: the context decides


def test_the_mil_standardises_with_the_training_set_not_per_sample():
    torch.manual_seed(0)
    mil = SubtypeMIL(len(GEOMETRY), 3, 8, 3, 0.0).eval()
    context = torch.tensor([[0.05, 2.0, 3.0], [-0.01, 2.0, 3.0], [0.02, 1.0, 1.0]])
    bags = [torch.randn(4, len(GEOMETRY)), torch.randn(2, len(GEOMETRY)), torch.randn(0, len(GEOMETRY))]
    mil.fit_scaling(torch.cat(bags), context)
    assert torch.allclose(mil.context_mean, context.mean(0)) and torch.allclose(mil.context_std, context.std(0, False))
    with torch.no_grad():  # logits linear in the standardised context: a signal six hundredths apart moves them
        mil.classifier.weight.zero_()
        mil.classifier.weight[0, -3] = 1.0
        out = mil([bags[2], bags[2]], context[:2])
    expected = (context[0, 0] - context[1, 0]) / mil.context_std[0]
    assert torch.allclose(out.logits[0, 0] - out.logits[1, 0], expected, atol=1e-5) and float(expected) > 2
    state = mil.state_dict()
    assert {"context_mean", "context_std", "instance_mean", "instance_std"} <= set(state)  # in the checkpoint


def test_the_false_positive_filter_is_the_fitted_trees_as_tensors():
    from sklearn.ensemble import HistGradientBoostingClassifier

    from neuroread.models.cmb_svd.candidates import CANDIDATE_FEATURES, CandidateFilter

    rng = np.random.default_rng(0)
    x = rng.normal(size=(600, len(CANDIDATE_FEATURES))).astype(np.float32)
    y = x[:, 0] + x[:, 5] ** 2 + 0.5 * rng.normal(size=600) > 1
    trees = HistGradientBoostingClassifier(max_iter=40, max_leaf_nodes=9, early_stopping=False, random_state=0).fit(x, y)
    unfitted = CandidateFilter()
    scores = rng.uniform(size=5)
    assert not unfitted.fitted and np.array_equal(unfitted.probabilities(x[:5], scores), scores)  # passes scores
    fitted = CandidateFilter()
    fitted.load_sklearn(trees)
    test = rng.normal(size=(300, len(CANDIDATE_FEATURES))).astype(np.float32)
    expected = trees.predict_proba(test)[:, 1]
    assert np.abs(fitted.probabilities(test, np.zeros(300)) - expected).max() < 1e-9
    loaded = CandidateFilter()  # buffers sized from the state dict, as a checkpoint loads
    loaded.load_state_dict(fitted.state_dict())
    assert loaded.fitted and np.abs(loaded.probabilities(test, np.zeros(300)) - expected).max() < 1e-9
    with pytest.raises(ValueError, match="binary classifier"):
        CandidateFilter(n_features=3).load_sklearn(trees)
    net = MicrobleedNet(CMBConfig.demo(), 12)
    assert any(k.startswith("candidates.") for k in net.state_dict())  # one state dict, one checkpoint


def test_candidate_features_measure_shape_signal_and_place():
    from neuroread.models.cmb_svd.candidates import CANDIDATE_FEATURES, candidate_features
    from neuroread.models.cmb_svd.merge import Microbleed3D

    scaled = np.ones((10, 30, 30), np.float32)
    mask = np.zeros_like(scaled, bool)
    mask[4:6, 10:13, 10:14] = True  # 2 slices, 3 rows, 4 columns
    scaled[mask] = 0.25
    scaled[4, 10, 10] = 0.1
    bleed = Microbleed3D(mask, 0.9, np.zeros(0, np.float32), 4, 2)
    f = dict(zip(CANDIDATE_FEATURES, candidate_features([bleed], scaled, (0.5, 0.8, 2.0), np.array([[-12.0, 3, 4]]))[0]))
    assert f["detector_score"] == pytest.approx(0.9) and f["slice_detections"] == 2
    assert f["log_volume_mm3"] == pytest.approx(np.log(24 * 0.5 * 0.8 * 2.0))
    assert f["extent_z_mm"] == 4.0 and f["extent_long_mm"] == pytest.approx(2.4) and f["extent_short_mm"] == 2.0
    assert f["min_signal"] == pytest.approx(0.1) and f["mean_signal"] == pytest.approx((23 * 0.25 + 0.1) / 24)
    assert f["ring_signal"] == pytest.approx(1.0)  # white matter around it
    assert (f["template_abs_x"], f["template_y"], f["template_z"]) == (12.0, 3.0, 4.0)
    assert candidate_features([], scaled, (1, 1, 1), np.zeros((0, 3))).shape == (0, len(CANDIDATE_FEATURES))


def _det(k: int, rows: slice, cols: slice, score: float, shape=(40, 40)) -> SliceDetection:
    mask = np.zeros(shape, bool)
    mask[rows, cols] = True
    return SliceDetection(k, mask, score, np.full(4, score, np.float32))


def test_slice_detections_merge_into_microbleeds_and_vessels_are_dropped():
    spacing = (1.0, 1.0, 1.5)  # (column, row, slice) mm
    shape = (30, 40, 40)
    dets = [
        # a microbleed over slices 3-6, missed on slice 5 (a one-slice gap is bridged)
        _det(3, slice(10, 13), slice(10, 13), 0.6), _det(4, slice(9, 14), slice(9, 14), 0.9),
        _det(6, slice(10, 13), slice(11, 14), 0.7),
        # a second one on slice 4 beside the first, not touching it: its own microbleed
        _det(4, slice(10, 13), slice(20, 23), 0.8), _det(5, slice(10, 13), slice(20, 23), 0.5),
        # a vein crossing the slices end-on: a 2-pixel dot on 12 slices
        *[_det(k, slice(30, 32), slice(30, 32), 0.95) for k in range(10, 22)],
        # far apart through the slices: two microbleeds, not one
        _det(25, slice(30, 33), slice(5, 8), 0.4), _det(28, slice(30, 33), slice(5, 8), 0.45),
    ]
    found = merge_detections(dets, shape, spacing)
    assert [m.slices.tolist() for m in found] == [[3, 4, 6], [4, 5], [25], [28]]
    first = found[0]
    assert first.score == 0.9 and first.best_slice == 4 and first.members == 3
    assert first.voxels == 9 + 25 + 9 and np.array_equal(first.representation, np.full(4, 0.9, np.float32))
    assert not found[0].mask[:, 10:13, 20:23].any()  # the neighbour is not in it
    # without the gap allowed the first one splits in two
    assert len(merge_detections(dets, shape, spacing, gap=0)) == 5
    # a permissive elongation keeps the vein
    assert len(merge_detections(dets, shape, spacing, max_elongation=20)) == 5
    with pytest.raises(ValueError, match="slice of the series' grid"):
        merge_detections([_det(0, slice(0, 2), slice(0, 2), 0.5, shape=(8, 8))], shape, spacing)
