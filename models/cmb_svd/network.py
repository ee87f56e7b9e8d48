"""The microbleed network: torchvision's Mask R-CNN on 2.5D SWI slices, and the subtype's MIL.

The paper (abstract only) has "a Mask R-CNN for detecting CMBs and a multi-instance learning
(MIL) network for classifying CSVD". The rest is filled with what the field does, and said here:

- **Detector**: torchvision's :class:`~torchvision.models.detection.MaskRCNN`, built from its
  own parts: a ResNet trunk (:class:`~neuroread.models.backbones.ResNetTrunk`) under
  torchvision's ``BackboneWithFPN`` with the stride-4 stage in the pyramid, anchors sized for
  2-10 mm lesions, torchvision's ``TwoMLPHead``/``FastRCNNPredictor`` and
  ``MaskRCNNHeads``/``MaskRCNNPredictor`` at the configuration's widths, two classes
  (background, microbleed). Input: the slice and its two neighbours as the three channels
  (2.5D: a microbleed is round through the slices, a vessel runs on).
- :class:`FixedScaleTransform`: torchvision's transform with ``min_size = max_size =`` the
  input size and no resizing at all: the preprocessing already put every slice at the model's
  pixel size, so a training crop and a whole canvas are seen at the same scale (the default
  would resize to 800 px and cost about 8×). Normalisation is the preprocessing's (mean 0,
  standard deviation 1 here).
- **Subtype** (:class:`SubtypeMIL`): gated attention-based MIL pooling (Ilse, Tomczak, Welling,
  ICML 2018) over the bag of microbleeds, each encoded from its box-head representation (paper
  configuration; the demo's leaves it out, see its config) and its geometry (location class, size, template position, detector score); beside it the whole
  scan's context (regional white-matter signal, counts per location class) encoded by its own
  layer; one logit per subtype from both, with a flag for an empty bag. A scan without any
  microbleed is classified from its context alone (its bag vector is zero, its flag one).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from ..backbones import ResNetTrunk
from .candidates import CandidateFilter
from .config import CMBConfig

GEOMETRY = ("lobar", "deep", "infratentorial", "log_volume", "template_x", "template_y", "template_z", "score")


class FixedScaleTransform(GeneralizedRCNNTransform):
    """torchvision's detection transform at one fixed scale: ``min_size = max_size = size`` and
    images passed through unresized (module docstring); batching pads to a multiple of 32."""

    def __init__(self, size: int) -> None:
        super().__init__(min_size=size, max_size=size, image_mean=[0.0, 0.0, 0.0], image_std=[1.0, 1.0, 1.0],
                         size_divisible=32)

    def resize(self, image: Tensor, target: dict[str, Tensor] | None = None):
        return image, target


def build_detector(config: CMBConfig) -> MaskRCNN:
    """torchvision's Mask R-CNN at ``config`` (see :class:`~neuroread.models.cmb_svd.config.CMBConfig`)."""
    trunk = ResNetTrunk(config.block, config.layers, config.widths, config.strides)
    levels = [str(i) for i in range(len(config.fpn_stages))]
    backbone = BackboneWithFPN(trunk, {f"layer{s}": name for s, name in zip(config.fpn_stages, levels)},
                               list(config.feature_widths), config.fpn_channels, extra_blocks=LastLevelMaxPool())
    anchors = AnchorGenerator(tuple(tuple(int(round(s * o)) for o in config.anchor_octaves) for s in config.anchor_sizes),
                              ((1.0,),) * len(config.anchor_sizes))
    net = MaskRCNN(
        backbone, num_classes=None, min_size=config.input_size, max_size=config.input_size,
        image_mean=[0.0] * 3, image_std=[1.0] * 3,
        rpn_anchor_generator=anchors,
        rpn_pre_nms_top_n_test=config.rpn_pre_nms_test, rpn_post_nms_top_n_test=config.rpn_post_nms_test,
        rpn_pre_nms_top_n_train=1000, rpn_post_nms_top_n_train=500, rpn_batch_size_per_image=128,
        box_roi_pool=MultiScaleRoIAlign(levels, output_size=7, sampling_ratio=2),
        box_head=TwoMLPHead(config.fpn_channels * 7 * 7, config.representation),
        box_predictor=FastRCNNPredictor(config.representation, 2),
        box_score_thresh=config.score_floor, box_nms_thresh=0.3,
        box_detections_per_img=config.detections_per_slice, box_batch_size_per_image=128,
        mask_roi_pool=MultiScaleRoIAlign(levels, output_size=14, sampling_ratio=2),
        mask_head=MaskRCNNHeads(config.fpn_channels, list(config.mask_layers), 1),
        mask_predictor=MaskRCNNPredictor(config.mask_layers[-1], config.mask_layers[-1], 2),
    )
    net.transform = FixedScaleTransform(config.input_size)
    return net


@dataclass
class SliceDetections:
    """A slice's detections on the canvas: ``boxes [n, 4]`` (x0, y0, x1, y1 px), ``scores [n]``,
    ``masks [n, S, S]`` (probabilities pasted on the canvas) and the box head's
    ``representations [n, R]``."""

    boxes: Tensor
    scores: Tensor
    masks: Tensor
    representations: Tensor


@dataclass
class MILOutput:
    """Per scan: ``logits [B, K]``, ``probabilities [B, K]`` (softmax) and the attention
    ``weights`` over each bag's instances (a list of ``[m_b]``, summing to one; empty for an
    empty bag)."""

    logits: Tensor
    probabilities: Tensor
    weights: list[Tensor]


class SubtypeMIL(nn.Module):
    """Gated attention MIL over microbleeds plus the scan's context (module docstring).

    Instance and context features are standardised with the training bags' means and standard
    deviations (buffers that :meth:`fit_scaling` sets before training; identity until then),
    not per sample: a per-sample normalisation would mix the regional signal (a few hundredths)
    with the counts (units) and drown the signal. The classifier is linear on the pooled bag
    vector, the empty-bag flag and the standardised context, so the context reaches the logits
    directly (as in a logistic regression) and the bag adds to it."""

    def __init__(self, width: int, n_context: int, hidden: int, n_classes: int, dropout: float) -> None:
        super().__init__()
        self.instance = nn.Sequential(nn.Linear(width, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU())
        self.attention_v = nn.Linear(hidden, hidden)
        self.attention_u = nn.Linear(hidden, hidden)
        self.attention_w = nn.Linear(hidden, 1)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(hidden + 1 + n_context, n_classes)
        self.hidden = hidden
        for name, size in (("instance_mean", width), ("instance_std", width), ("context_mean", n_context),
                           ("context_std", n_context)):
            self.register_buffer(name, torch.zeros(size) if name.endswith("mean") else torch.ones(size))

    @torch.no_grad()
    def fit_scaling(self, instances: Tensor, context: Tensor) -> None:
        """Set the standardisation from the training set's instances ``[M, width]`` and contexts ``[B, C]``."""
        for name, values in (("instance", instances), ("context", context)):
            if len(values):
                getattr(self, f"{name}_mean").copy_(values.mean(0))
                getattr(self, f"{name}_std").copy_(values.std(0, unbiased=False).clamp_min(1e-3))

    def forward(self, bags: Sequence[Tensor], context: Tensor) -> MILOutput:
        """``bags``: per scan ``[m, width]`` (``m`` may be 0); ``context [B, C]``."""
        vectors, weights = [], []
        for bag in bags:
            if bag.shape[0] == 0:
                vectors.append(torch.cat([context.new_zeros(self.hidden), context.new_ones(1)]))
                weights.append(context.new_zeros(0))
                continue
            h = self.instance((bag - self.instance_mean) / self.instance_std)
            score = self.attention_w(torch.tanh(self.attention_v(h)) * torch.sigmoid(self.attention_u(h)))[:, 0]
            a = torch.softmax(score, dim=0)
            vectors.append(torch.cat([self.dropout((a[:, None] * h).sum(0)), context.new_zeros(1)]))
            weights.append(a)
        scaled = (context - self.context_mean) / self.context_std
        logits = self.classifier(torch.cat([torch.stack(vectors), scaled], dim=1))
        return MILOutput(logits, torch.softmax(logits, dim=1), weights)


class MicrobleedNet(nn.Module):
    """The detector and the subtype MIL in one module (one state dict, one checkpoint)."""

    def __init__(self, config: CMBConfig, n_context: int) -> None:
        super().__init__()
        self.config = config
        self.n_context = n_context
        self.detector = build_detector(config)
        self.candidates = CandidateFilter()
        self.subtype = SubtypeMIL(config.instance_width, n_context, config.mil_hidden, config.n_classes, config.dropout)

    @torch.no_grad()
    def detect(self, images: Tensor) -> list[SliceDetections]:
        """Detections of a batch ``[N, 3, S, S]`` of 2.5D canvases (eval mode), with each kept
        detection's box-head representation (what the MIL reads)."""
        det = self.detector
        sizes = [tuple(img.shape[-2:]) for img in images]
        batch, _ = det.transform(list(images))
        features = det.backbone(batch.tensors)
        proposals, _ = det.rpn(batch, features)
        found, _ = det.roi_heads(features, proposals, batch.image_sizes)
        boxes = [f["boxes"] for f in found]
        reps = det.roi_heads.box_head(det.roi_heads.box_roi_pool(features, boxes, batch.image_sizes))
        found = det.transform.postprocess(found, batch.image_sizes, sizes)
        out, start = [], 0
        for f in found:
            n = len(f["boxes"])
            out.append(SliceDetections(f["boxes"], f["scores"], f["masks"][:, 0], reps[start:start + n]))
            start += n
        return out

    @torch.no_grad()
    def representations(self, images: Tensor, boxes: Sequence[Tensor]) -> list[Tensor]:
        """The box head's representation of given ``boxes`` (per image, canvas px) on ``images``."""
        det = self.detector
        batch, _ = det.transform(list(images))
        features = det.backbone(batch.tensors)
        reps = det.roi_heads.box_head(det.roi_heads.box_roi_pool(features, list(boxes), batch.image_sizes))
        return list(torch.split(reps, [len(b) for b in boxes]))
