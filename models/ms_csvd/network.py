"""The transfer attention network (MS vs cSVD on FLAIR) and its focal loss.

The paper (abstract only) has "a pre-trained convolutional neural network to extract the
texture features of the images", "two attention modules" whose maps explain the model, and
end-to-end training with focal loss. The rest is filled with what the field does, and said here:

- **Backbone**: torchvision's ResNet (:class:`Backbone`, a subclass that builds its stages with
  torchvision's own ``_make_layer`` and blocks at configurable widths and strides). With
  ResNet-50's values its parameters carry torchvision's names, so the ImageNet file
  (``resnet50-*.pth``) loads into it (:func:`load_backbone`). Each slice is one image; the
  grey FLAIR slice is repeated on the three channels and normalised with the ImageNet mean
  and standard deviation, as an ImageNet backbone expects.
- **Two attention modules** after the last stage: CBAM's (Woo et al., ECCV 2018) channel
  attention (a shared two-layer MLP on the average- and max-pooled features, summed, sigmoid)
  and then its spatial attention (a 7×7 convolution on the channel-wise mean and max, sigmoid).
  Why CBAM: of the usual pairs it is the one with exactly two modules, one per axis, and its
  spatial module yields a map per slice on the slice's own grid, which is the explanation the
  paper shows; squeeze-and-excitation has no spatial map, self-attention (non-local) maps are
  per query position and have no single map to show.
- **Slice vector**: the attention-refined features pooled with the spatial attention as
  weights (its map normalised to sum to one over the slice): the slice vector is the mean of
  the features *where the map looks*, so the map says where the decision's evidence comes from.
  (CBAM itself averages the gated features uniformly; with a uniform map both agree.)
- **Patient decision**: attention-based pooling of the slice vectors (Ilse, Tomczak, Welling,
  ICML 2018): a score per slice ``w·tanh(V h)``, softmax over the slices of the series, the
  patient vector the weighted sum; then dropout and a linear layer to one logit per class,
  softmax: a multi-class outcome. The slices it weighs most are the key images.
- **Without attention** (``TANConfig.attention = False``, the paper's comparison): the same
  backbone, each slice average-pooled, the slices averaged.
- **Focal loss** (Lin et al., ICCV 2017), multi-class: ``-α_y (1 - p_y)^γ log p_y`` per series,
  mean over the batch, α per class from the class frequencies (:func:`class_alpha`), γ = 2.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..backbones import ResNetTrunk
from .config import TANConfig

# torchvision's ImageNet normalisation (the ResNet weights' transforms)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Backbone(ResNetTrunk):
    """The shared :class:`~neuroread.models.backbones.ResNetTrunk` at the configuration's block,
    stage depths, widths and strides."""

    def __init__(self, config: TANConfig) -> None:
        super().__init__(config.block, config.layers, config.widths, config.strides)


class ChannelAttention(nn.Module):
    """CBAM's channel attention: ``sigmoid(MLP(avgpool F) + MLP(maxpool F))``, one weight per channel."""

    def __init__(self, channels: int, reduction: int) -> None:
        super().__init__()
        hidden = max(1, channels // reduction)
        self.mlp = nn.Sequential(nn.Conv2d(channels, hidden, 1), nn.ReLU(inplace=True), nn.Conv2d(hidden, channels, 1))

    def forward(self, x: Tensor) -> Tensor:
        """``[N, C, h, w]`` → weights ``[N, C, 1, 1]`` in (0, 1)."""
        return torch.sigmoid(self.mlp(F.adaptive_avg_pool2d(x, 1)) + self.mlp(F.adaptive_max_pool2d(x, 1)))


class SpatialAttention(nn.Module):
    """CBAM's spatial attention: ``sigmoid(conv_k([mean_c F, max_c F]))``, one weight per cell."""

    def __init__(self, kernel: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel, padding=kernel // 2)

    def logits(self, x: Tensor) -> Tensor:
        """``[N, C, h, w]`` → the map before its sigmoid, ``[N, 1, h, w]`` (what the proxy task trains)."""
        return self.conv(torch.cat([x.mean(1, keepdim=True), x.amax(1, keepdim=True)], 1))

    def forward(self, x: Tensor) -> Tensor:
        """``[N, C, h, w]`` → map ``[N, 1, h, w]`` in (0, 1)."""
        return torch.sigmoid(self.logits(x))


class SlicePooling(nn.Module):
    """Attention-based MIL pooling (Ilse et al. 2018): a softmax over the slices of
    ``w·tanh(V h_s)``; returns the weighted sum and the weights."""

    def __init__(self, features: int, hidden: int) -> None:
        super().__init__()
        self.score = nn.Sequential(nn.Linear(features, hidden), nn.Tanh(), nn.Linear(hidden, 1))

    def forward(self, vectors: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """``vectors [B, S, C]`` and ``mask [B, S]`` (True: a real slice, False: padding) →
        (``[B, C]``, weights ``[B, S]``, zero on padding, summing to one per series)."""
        scores = self.score(vectors).squeeze(-1).masked_fill(~mask, float("-inf"))
        weights = torch.softmax(scores, dim=1)
        return torch.einsum("bs,bsc->bc", weights, vectors), weights


@dataclass
class TANOutput:
    """One forward pass over a batch of series: ``logits [B, K]``, the slice weights ``[B, S]``
    (zero on padding), the spatial attention ``[B, S, h, w]`` in (0, 1) (``None`` without
    attention) and the mask of real slices ``[B, S]``."""

    logits: Tensor
    slice_weights: Tensor
    spatial: Tensor | None
    mask: Tensor

    @property
    def probabilities(self) -> Tensor:
        return torch.softmax(self.logits, dim=1)


class TransferAttentionNet(nn.Module):
    """Backbone → channel attention → spatial attention → attention-weighted slice pooling →
    classifier (see the module docstring). ``forward`` takes slices ``[B, S, 3, H, W]`` in [0, 1]
    (each series padded to S slices) with ``mask [B, S]``, or one series ``[S, 3, H, W]``."""

    def __init__(self, config: TANConfig, backbone_weights: Path | None = None) -> None:
        super().__init__()
        self.config = config
        self.backbone = Backbone(config)
        if backbone_weights is not None:
            load_backbone(self.backbone, Path(backbone_weights))
        c = config.features
        self.channel = ChannelAttention(c, config.reduction) if config.attention else None
        self.spatial = SpatialAttention(config.spatial_kernel) if config.attention else None
        self.pool = SlicePooling(c, config.pool_hidden) if config.attention else None
        self.dropout = nn.Dropout(config.dropout)
        self.classifier = nn.Linear(c, config.n_classes)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def feature_maps(self, images: Tensor) -> Tensor:
        """Slices ``[N, 3, H, W]`` (or grey ``[N, 1, H, W]``, broadcast to three) in [0, 1] →
        the backbone's last feature maps ``[N, C, h, w]``, after ImageNet normalisation."""
        return self.backbone((images - self.mean) / self.std)

    def slice_features(self, images: Tensor) -> tuple[Tensor, Tensor | None]:
        """Slices ``[N, 3, H, W]`` in [0, 1] → (slice vectors ``[N, C]``, spatial maps ``[N, h, w]`` or None)."""
        return self.attend(self.feature_maps(images))

    def attend(self, maps: Tensor) -> tuple[Tensor, Tensor | None]:
        """The last feature maps ``[N, C, h, w]`` → (slice vectors, spatial maps) (see the module docstring)."""
        if self.channel is None:
            return maps.mean((2, 3)), None
        refined = maps * self.channel(maps)
        spatial = self.spatial(refined)
        refined = refined * spatial
        weights = spatial / spatial.sum((2, 3), keepdim=True)
        return (refined * weights).sum((2, 3)), spatial[:, 0]

    def forward(self, x: Tensor, mask: Tensor | None = None) -> TANOutput:
        if x.ndim == 4:
            x = x.unsqueeze(0)
            mask = None if mask is None else mask.view(1, -1)
        if x.ndim != 5 or x.shape[2] != 3:
            raise ValueError(f"TransferAttentionNet takes slices [B, S, 3, H, W], got {tuple(x.shape)}")
        b, s = x.shape[:2]
        if mask is None:
            mask = torch.ones(b, s, dtype=torch.bool, device=x.device)
        if mask.shape != (b, s) or not bool(mask.any(1).all()):
            raise ValueError(f"mask must be [B, S] = {(b, s)} with a real slice in every series, got {tuple(mask.shape)}")
        index = mask.flatten().nonzero().squeeze(1)
        vectors, spatial = self.slice_features(x.flatten(0, 1)[index])
        return self.decide(vectors, spatial, mask)

    def decide(self, vectors: Tensor, spatial: Tensor | None, mask: Tensor) -> TANOutput:
        """Slice vectors of the real slices (in mask order) → the series' decision."""
        b, s = mask.shape
        index = mask.flatten().nonzero().squeeze(1)
        padded = vectors.new_zeros(b * s, vectors.shape[1]).index_copy(0, index, vectors).view(b, s, -1)
        if self.pool is not None:
            pooled, weights = self.pool(padded, mask)
        else:
            weights = mask.float() / mask.sum(1, keepdim=True)
            pooled = torch.einsum("bs,bsc->bc", weights, padded)
        maps = None
        if spatial is not None:
            maps = spatial.new_zeros(b * s, *spatial.shape[1:]).index_copy(0, index, spatial).view(b, s, *spatial.shape[1:])
        return TANOutput(self.classifier(self.dropout(pooled)), weights, maps, mask)


def load_backbone(backbone: Backbone, path: Path) -> None:
    """Load a torchvision ResNet state dict file (e.g. ImageNet ``resnet50-*.pth``) into ``backbone``.

    Read with ``weights_only=True``; ``fc.*`` is dropped; every other tensor must fit (a
    ResNet-50 file for the paper configuration). Raises naming the file and the mismatch."""
    if not path.is_file():
        raise FileNotFoundError(f"ResNet backbone weights not found at {path}: give the local path of a torchvision "
                                "ResNet state dict (e.g. the ImageNet file resnet50-0676ba61.pth); nothing is downloaded")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, Mapping):
        raise ValueError(f"{path} holds a {type(state).__name__}, not a state dict")
    wanted = {k: v for k, v in state.items() if not k.startswith("fc.")}
    try:
        backbone.load_state_dict(wanted)
    except RuntimeError as err:
        raise ValueError(f"{path} does not fit the configured backbone: {err}") from err


def class_alpha(counts: Sequence[int]) -> Tensor:
    """Focal loss α per class from the training series per class: inverse frequencies scaled to
    sum to one (MS 112 vs cSVD 321 → α_MS 0.741, α_cSVD 0.259). A class with no series gets 0."""
    n = torch.as_tensor(list(counts), dtype=torch.float64)
    if n.ndim != 1 or len(n) < 2 or bool((n < 0).any()) or not bool((n > 0).any()):
        raise ValueError(f"class_alpha needs a non-negative count per class (some positive), got {list(counts)}")
    inverse = torch.where(n > 0, 1.0 / n.clamp_min(1), torch.zeros_like(n))
    return (inverse / inverse.sum()).float()


def focal_loss(logits: Tensor, target: Tensor, alpha: Tensor | None = None, gamma: float = 2.0) -> Tensor:
    """Multi-class focal loss, mean over the batch: ``-α_y (1 - p_y)^γ log p_y``.

    ``logits [B, K]``, ``target [B]`` class indices, ``alpha [K]`` (None: 1 for every class),
    ``gamma >= 0`` (0 with α = 1 is the cross-entropy). Computed from ``log_softmax`` (stable)."""
    if gamma < 0:
        raise ValueError(f"focal_loss: gamma must be >= 0, got {gamma}")
    log_p = F.log_softmax(logits.float(), dim=1).gather(1, target.view(-1, 1)).squeeze(1)
    loss = -((1.0 - log_p.exp()) ** gamma) * log_p
    if alpha is not None:
        loss = loss * alpha.to(logits.device)[target]
    return loss.mean()
