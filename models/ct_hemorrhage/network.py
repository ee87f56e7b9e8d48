"""DrCT2's networks and loss (Wang, Fu, Li, Pei, "Diagnosis after Zooming in", Medical Physics 2022).

Three parts, as in the paper's section V:

- **Primary network** (DrCT1): a VGG16 encoder gives one vector per sampled slice (adaptive
  max pooling of the last feature maps); **feature attention** (eq. 3: softmax over the
  feature dimensions, merged element-wise); **dependencies learning** (a bidirectional GRU over
  the slices with the output layer of eq. 4); **slice attention** (eq. 5-6: a fully connected
  layer to one score per slice, softmax over the slices, merged element-wise); three fully
  connected layers (ReLU, dropout) to one logit per label.
- **Attention proposal slices (APS) network**: the ``key_slices`` slices with the highest slice
  attention, zoomed by bilinear interpolation (eq. 7-10), the same VGG16 encoder, batch
  normalisation, a fully connected layer, dependencies learning, three fully connected layers.
- **Knowledge fusion**: the two feature matrices summed, three fully connected layers, the final
  multi-label prediction.

Where the paper leaves a choice open, this module takes one and says so where it is made:

- *What the heads read.* Slice attention "fuses" the step outputs with their weights by
  element-wise multiplication, which gives a matrix (one weighted row per slice), and "weighted
  feature vectors pass through three fully connected layers". Two readings, chosen by
  :attr:`DrCT2Config.pooling`: ``"flatten"`` (the paper configuration) reads the matrix
  flattened, so each slice position has weights of its own; ``"attention"`` (the demo) reads
  the sum of its rows, the attention-weighted mean of the slices (the APS head the mean of its
  rows; fusion the sum of the key slices' attention-weighted primary rows plus the mean of the
  APS rows), so a lesion counts the same at any position. Flattened heads
  need many studies to see lesions at every position; on a few hundred phantoms they learnt
  the training set (held-out any-hemorrhage AUC 0.83 against 0.93 for the attention sum).
- *Which matrices fusion sums.* Summing needs equal shapes, and the primary matrix has ``slices``
  rows while the APS matrix has ``key_slices``. Fusion sums, row by row, the primary network's
  slice-attention-weighted rows *of the key slices* and the APS network's dependencies-learning
  output for the same slices (same order, same width), so each row joins what the two networks
  learnt about one slice at two scales. Gradients of the fusion loss reach the slice attention
  through these rows.
- *One encoder.* The paper's ``P`` (eq. 9) is "the VGG16 model pre-trained on ImageNet", frozen
  in the primary network; both networks use the same module, so a frozen encoder is stored once.
  When it is trained (the demo configuration) it sits in the primary parameter group.
- *Eq. 4's output layer* ``g(W_y[a→, a←] + b_y)``: a fully connected layer of the GRU's width,
  ``g = tanh``. The GRU's hidden size, the APS fully connected width and the heads' widths are
  not given in the paper; :meth:`DrCT2Config.paper` states ours.
- *Input scaling.* ImageNet weights expect ImageNet-normalised inputs, so the network takes CT
  windows in [0, 1] and normalises them with the mean and standard deviation torchvision
  publishes with its VGG16 weights.

The spatial maps (the "highlighted areas" of the paper's Figure 2) weight the primary encoder's
last convolutional feature maps of a slice by that slice's feature attention.

**Lesion head** (``DrCT2Config.lesion_head``, the demo network's; not the paper's): a 1×1
convolution on the encoder's last feature maps giving each cell a probability per label. It is
the head that learns the lesions' pixels during the encoder's pre-training (on data with lesion
masks, e.g. the phantoms), kept and frozen with the encoder rather than dropped, and it takes
no part in the decision: :meth:`DrCT2.lesion_maps` reads it on the key slices as a second,
sharper explanation (on held-out phantoms its peak falls on a lesion about 85 % of the time,
the feature-attention map's about 55 %).
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models import VGG16_Weights
from torchvision.models.vgg import make_layers

from .config import DrCT2Config

__all__ = ["DrCT2", "DrCT2Config", "DrCT2Loss", "DrCT2Output", "drct2_loss", "load_backbone", "make_optimizer"]

# The input normalisation torchvision publishes with its ImageNet VGG16 weights.
_IMAGENET_MEAN: tuple[float, ...] = tuple(VGG16_Weights.IMAGENET1K_V1.transforms().mean)
_IMAGENET_STD: tuple[float, ...] = tuple(VGG16_Weights.IMAGENET1K_V1.transforms().std)


def _pooled_width(config: DrCT2Config) -> int:
    """The input width of the APS and fusion heads: one row (attention pooling) or k rows flattened."""
    width = 2 * config.gru_hidden
    return width if config.pooling == "attention" else config.key_slices * width


@dataclass(frozen=True)
class DrCT2Output:
    """What one forward pass gives, for the loss, the prediction and the explanations.

    Shapes for a batch of B series of m slices, ``key_slices`` k, L labels, C feature channels:

    - ``primary_logits``, ``aps_logits``, ``fusion_logits``: [B, L]; the final prediction is the
      fusion's (:attr:`probabilities`).
    - ``slice_attention``: [B, m], non-negative, each row summing to 1 (eq. 6).
    - ``feature_attention``: [B, m, C], non-negative, summing to 1 over C (eq. 3).
    - ``key_slices``: [B, k] int64, the k slices of highest slice attention in ascending
      slice order (ties to the lower index): the ones the APS network zoomed in on.
    - ``conv_maps``: [B, m, C, h, w], the primary encoder's last convolutional feature maps
      (after ReLU, before the last max pool; h = w = input_size / 2^(pools - 1)), for
      :meth:`DrCT2.spatial_maps`; ``None`` from :meth:`DrCT2.decode`, which never sees images.
    """

    primary_logits: Tensor
    aps_logits: Tensor
    fusion_logits: Tensor
    slice_attention: Tensor
    feature_attention: Tensor
    key_slices: Tensor
    conv_maps: Tensor | None

    @property
    def probabilities(self) -> Tensor:
        """The final multi-label prediction: the fusion's probability per label, [B, L]."""
        return torch.sigmoid(self.fusion_logits)

    @property
    def primary_probabilities(self) -> Tensor:
        return torch.sigmoid(self.primary_logits)

    @property
    def aps_probabilities(self) -> Tensor:
        return torch.sigmoid(self.aps_logits)


class DrCT2Loss(NamedTuple):
    """Eq. 11: ``total = primary + aps + fusion`` (scalars; ``total`` carries the gradient)."""

    total: Tensor
    primary: Tensor
    aps: Tensor
    fusion: Tensor


def _head(in_features: int, widths: tuple[int, int], n_labels: int, dropout: float) -> nn.Sequential:
    """Three fully connected layers: ReLU and dropout after the first two, logits out."""
    return nn.Sequential(
        nn.Linear(in_features, widths[0]),
        nn.ReLU(),
        nn.Dropout(dropout),
        nn.Linear(widths[0], widths[1]),
        nn.ReLU(),
        nn.Dropout(dropout),
        nn.Linear(widths[1], n_labels),
    )


class DependenciesLearning(nn.Module):
    """Section V.A.2: a bidirectional GRU over the slices and eq. 4's output layer (tanh).

    [B, n, in_features] → [B, n, 2·hidden].
    """

    def __init__(self, in_features: int, hidden: int) -> None:
        super().__init__()
        self.gru = nn.GRU(in_features, hidden, batch_first=True, bidirectional=True)
        self.output = nn.Linear(2 * hidden, 2 * hidden)

    def forward(self, x: Tensor) -> Tensor:
        steps, _ = self.gru(x)
        return torch.tanh(self.output(steps))


class PrimaryOutput(NamedTuple):
    logits: Tensor
    feature_attention: Tensor
    slice_attention: Tensor
    weighted: Tensor


class PrimaryNetwork(nn.Module):
    """The primary network's decoder (DrCT1): feature attention, dependencies learning, slice attention, head.

    Reads the encoder's vectors [B, m, C]; gives logits [B, L], feature attention [B, m, C],
    slice attention [B, m] and the slice-attention-weighted matrix [B, m, 2·gru_hidden].
    """

    def __init__(self, config: DrCT2Config) -> None:
        super().__init__()
        width = 2 * config.gru_hidden
        self.dependencies = DependenciesLearning(config.features, config.gru_hidden)
        self.mapping = nn.Linear(width, 1)  # eq. 5
        self.pooling = config.pooling
        self.head = _head(width if config.pooling == "attention" else config.slices * width, config.head,
                          config.n_labels, config.dropout)

    def forward(self, vectors: Tensor) -> PrimaryOutput:
        feature_attention = torch.softmax(vectors, dim=-1)  # eq. 3, no parameters
        steps = self.dependencies(vectors * feature_attention)
        slice_attention = torch.softmax(self.mapping(steps).squeeze(-1), dim=-1)  # eq. 6
        weighted = steps * slice_attention.unsqueeze(-1)
        pooled = weighted.sum(1) if self.pooling == "attention" else weighted.flatten(1)
        return PrimaryOutput(self.head(pooled), feature_attention, slice_attention, weighted)


class APSNetwork(nn.Module):
    """The APS network after the encoder: batch normalisation, a fully connected layer (ReLU),
    dependencies learning, head.

    Reads the zoomed key slices' vectors [B, k, C]; gives logits [B, L] and its feature matrix
    [B, k, 2·gru_hidden].
    """

    def __init__(self, config: DrCT2Config) -> None:
        super().__init__()
        self.norm = nn.BatchNorm1d(config.features)
        self.fc = nn.Linear(config.features, config.aps_fc)
        self.dependencies = DependenciesLearning(config.aps_fc, config.gru_hidden)
        self.pooling = config.pooling
        self.head = _head(_pooled_width(config), config.head, config.n_labels, config.dropout)

    def forward(self, vectors: Tensor) -> tuple[Tensor, Tensor]:
        normed = self.norm(vectors.flatten(0, 1)).view_as(vectors)
        steps = self.dependencies(torch.relu(self.fc(normed)))
        return self.head(steps.mean(1) if self.pooling == "attention" else steps.flatten(1)), steps


class DrCT2(nn.Module):
    """DrCT2: primary network, APS network and knowledge fusion over one shared VGG encoder.

    ``backbone_weights`` is the local path of a torchvision VGG state dict (the ``features.*``
    tensors are used, ``classifier.*`` ignored), e.g. the ImageNet file torchvision publishes for
    ``vgg16``; nothing is ever downloaded. Without it the encoder starts as torchvision's VGG
    initialises it (and a checkpoint's state dict is expected to follow). With
    ``config.freeze_backbone`` the encoder's parameters never get gradients.
    """

    inference_chunk = 2  # images per encoder pass without gradients (see _encode; 2 measured fastest of 2, 4, 8)

    def __init__(self, config: DrCT2Config, backbone_weights: Path | None = None) -> None:
        super().__init__()
        self.config = config
        self.backbone = make_layers(list(config.backbone), batch_norm=config.backbone_batch_norm)
        _init_like_vgg(self.backbone)
        if backbone_weights is not None:
            load_backbone(self.backbone, Path(backbone_weights))
        if config.freeze_backbone:
            self.backbone.requires_grad_(False)
        self.primary = PrimaryNetwork(config)
        self.aps = APSNetwork(config)
        self.fusion = _head(_pooled_width(config), config.head, config.n_labels, config.dropout)
        self.lesion = nn.Conv2d(config.features, config.n_labels, 1) if config.lesion_head else None
        if self.lesion is not None and config.freeze_backbone:
            self.lesion.requires_grad_(False)
        self.register_buffer("mean", torch.tensor(_IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(_IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: Tensor) -> DrCT2Output:
        """Run the three networks on a batch of sampled series.

        ``x``: float [B, m, 3, S, S], m = ``config.slices``, S = ``config.input_size``; the three
        channels are CT windows scaled to [0, 1] (windowing happens before the network).
        Returns a :class:`DrCT2Output`. In training mode dropout is active and batch
        normalisation uses the batch's statistics; in ``eval()`` mode the output is a
        deterministic function of ``x``. Key-slice selection is a hard top-k (no gradient
        flows through the choice; the fusion loss reaches the slice attention through the
        weighted rows of the chosen slices).
        """
        cfg = self.config
        expected = (cfg.slices, 3, cfg.input_size, cfg.input_size)
        if x.ndim != 5 or tuple(x.shape[1:]) != expected:
            raise ValueError(f"DrCT2 expects input [batch, {', '.join(map(str, expected))}], got {list(x.shape)}")
        if not x.is_floating_point():
            raise ValueError(f"DrCT2 expects a floating-point input, got {x.dtype}")
        batch = x.shape[0]
        images = (x.flatten(0, 1) - self.mean) / self.std
        conv_maps, vectors = self._encode(images)
        rows = torch.arange(batch, device=x.device).unsqueeze(1)

        def zoomed_vectors(key: Tensor) -> Tensor:
            chosen = images.view(batch, cfg.slices, *images.shape[1:])[rows, key].flatten(0, 1)
            return self._encode(chosen, zoom=cfg.zoom_size, keep_maps=False)[1].view(batch, cfg.key_slices, -1)

        return self._decode(vectors.view(batch, cfg.slices, -1), zoomed_vectors,
                            conv_maps.view(batch, cfg.slices, *conv_maps.shape[1:]))

    def decode(self, vectors: Tensor, zoomed_vectors: Tensor) -> DrCT2Output:
        """The three networks from encoder vectors computed beforehand, as :meth:`forward` would
        run them on the images these vectors came from.

        ``vectors``: [B, m, C], :meth:`encode_slices`' first output for the m sampled slices;
        ``zoomed_vectors``: [B, m, C], its second output for the same slices (only the key
        slices' rows are read). With a frozen encoder the vectors never change, so training can
        encode every slice once and run only this part per step (:mod:`neuroread.training.recipes.ct_hemorrhage.stages`).
        ``conv_maps`` of the result is ``None``.
        """
        cfg = self.config
        expected = (cfg.slices, cfg.features)
        for name, value in (("vectors", vectors), ("zoomed_vectors", zoomed_vectors)):
            if value.ndim != 3 or tuple(value.shape[1:]) != expected:
                raise ValueError(f"DrCT2.decode: {name} must be [batch, {cfg.slices}, {cfg.features}], "
                                 f"got {list(value.shape)}")
        if zoomed_vectors.shape[0] != vectors.shape[0]:
            raise ValueError(f"DrCT2.decode: batch sizes differ ({vectors.shape[0]} vs {zoomed_vectors.shape[0]})")
        rows = torch.arange(vectors.shape[0], device=vectors.device).unsqueeze(1)
        return self._decode(vectors, lambda key: zoomed_vectors[rows, key], None)

    def _decode(self, vectors: Tensor, zoomed_vectors: Callable[[Tensor], Tensor],
                conv_maps: Tensor | None) -> DrCT2Output:
        """Primary network, key-slice choice, APS network on ``zoomed_vectors(key)`` ([B, k, C]), fusion."""
        cfg = self.config
        primary = self.primary(vectors)
        key = _top_slices(primary.slice_attention.detach(), cfg.key_slices)
        aps_logits, aps_matrix = self.aps(zoomed_vectors(key))
        rows = torch.arange(vectors.shape[0], device=vectors.device).unsqueeze(1)
        if cfg.pooling == "attention":  # the attention-weighted primary rows sum to a mean; the APS rows are averaged
            fused = (primary.weighted[rows, key] + aps_matrix / cfg.key_slices).sum(1)
        else:
            fused = (primary.weighted[rows, key] + aps_matrix).flatten(1)
        return DrCT2Output(
            primary_logits=primary.logits,
            aps_logits=aps_logits,
            fusion_logits=self.fusion(fused),
            slice_attention=primary.slice_attention,
            feature_attention=primary.feature_attention,
            key_slices=key,
            conv_maps=conv_maps,
        )

    @torch.no_grad()
    def encode_slices(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Encoder vectors of single slices for :meth:`decode`: ``x`` [n, 3, S, S] (CT windows in
        [0, 1], S = ``input_size``) gives ([n, C] at S, [n, C] zoomed to ``zoom_size``), the
        vectors :meth:`forward` computes for sampled and for zoomed key slices."""
        cfg = self.config
        if x.ndim != 4 or tuple(x.shape[1:]) != (3, cfg.input_size, cfg.input_size):
            raise ValueError(f"encode_slices expects [n, 3, {cfg.input_size}, {cfg.input_size}], got {list(x.shape)}")
        images = (x - self.mean) / self.std
        return self._encode(images, keep_maps=False)[1], self._encode(images, zoom=cfg.zoom_size, keep_maps=False)[1]

    def train(self, mode: bool = True) -> DrCT2:
        """As :meth:`nn.Module.train`, except that a frozen encoder stays in eval mode: its batch
        normalisation (if any) keeps the statistics it was frozen with."""
        super().train(mode)
        if self.config.freeze_backbone:
            self.backbone.eval()
        return self

    def _encode(self, images: Tensor, *, zoom: int | None = None, keep_maps: bool = True
                ) -> tuple[Tensor | None, Tensor]:
        """VGG features of [n, 3, s, s] (bilinearly zoomed to ``zoom`` first when given): the last
        conv maps [n, C, h, w] (``None`` unless ``keep_maps``) and one vector per image [n, C].

        The vector is the adaptive max pooling (to 1×1) of the encoder's output, as the paper
        pools VGG16's 512×7×7 maps; the maps are kept from just before the last max pool.
        Without gradients (inference) the images go through in groups of :attr:`inference_chunk`,
        zoomed group by group, in channels-last memory layout: every image is encoded on its own
        (batch normalisation in eval mode has no cross-image term), so the result is the same up
        to float rounding, the largest activations are those of one group rather than of all key
        slices at the zoomed size (the paper's 16 slices at 512 px: 1 GB per VGG16 layer), and
        oneDNN's convolutions run about 30 % faster on channels-last tensors (``neuroread bench``).
        """
        inference = not torch.is_grad_enabled()
        chunk = self.inference_chunk if inference else len(images)
        maps, vectors = [], []
        for part in images.split(max(1, chunk)):
            if zoom is not None:
                part = F.interpolate(part, size=(zoom, zoom), mode="bilinear", align_corners=False)
            if inference:  # oneDNN's convolutions run near matrix-multiply speed on channels-last images
                part = part.contiguous(memory_format=torch.channels_last)
            m = self.backbone[:-1](part)
            # The maximum over the last max pool's output is the maximum over its input (2×2 windows tile
            # the even-sized maps), so the pool is skipped: the paper's global max pooling of VGG16's output.
            vectors.append(m.amax(dim=(2, 3)))
            if keep_maps:
                maps.append(m)
        return (torch.cat(maps) if keep_maps else None), torch.cat(vectors)

    @torch.no_grad()
    def spatial_maps(self, output: DrCT2Output, slices: Tensor | None = None) -> Tensor:
        """Where on each slice the primary network looked: [B, k, S, S] in [0, 1].

        For each slice in ``slices`` ([B, k] indices; default ``output.key_slices``), the sum
        over channels of the last convolutional feature maps weighted by that slice's feature
        attention, upsampled bilinearly to ``input_size`` and scaled to [0, 1] per map (a map
        with no contrast is all zeros).
        """
        if output.conv_maps is None:
            raise ValueError("spatial_maps needs the conv maps of DrCT2.forward; DrCT2.decode does not keep any")
        index = output.key_slices if slices is None else slices
        batch, m = output.slice_attention.shape
        if index.ndim != 2 or index.shape[0] != batch:
            raise ValueError(f"spatial_maps: slices must be [batch={batch}, k], got {list(index.shape)}")
        if index.numel() and (int(index.min()) < 0 or int(index.max()) >= m):
            raise ValueError(f"spatial_maps: slice indices must be in [0, {m}), got {index.tolist()}")
        rows = torch.arange(batch, device=index.device).unsqueeze(1)
        maps = torch.einsum("bkchw,bkc->bkhw", output.conv_maps[rows, index], output.feature_attention[rows, index])
        size = self.config.input_size
        maps = F.interpolate(maps, size=(size, size), mode="bilinear", align_corners=False)
        low = maps.amin(dim=(2, 3), keepdim=True)
        span = maps.amax(dim=(2, 3), keepdim=True) - low
        return torch.where(span > 0, (maps - low) / span.clamp_min(torch.finfo(maps.dtype).tiny), torch.zeros_like(maps))


    @torch.no_grad()
    def lesion_maps(self, output: DrCT2Output, slices: Tensor, label: int = 0) -> Tensor:
        """The lesion head's probability of ``label``'s lesions per cell on each slice in ``slices``
        ([B, k] indices): [B, k, S, S] in [0, 1], upsampled bilinearly to ``input_size``."""
        if self.lesion is None:
            raise ValueError("lesion_maps needs a network with a lesion head (DrCT2Config.lesion_head)")
        if output.conv_maps is None:
            raise ValueError("lesion_maps needs the conv maps of DrCT2.forward; DrCT2.decode does not keep any")
        batch = output.conv_maps.shape[0]
        rows = torch.arange(batch, device=slices.device).unsqueeze(1)
        chosen = output.conv_maps[rows, slices]  # [B, k, C, h, w]
        logits = self.lesion(chosen.flatten(0, 1))[:, label].view(batch, slices.shape[1], *chosen.shape[-2:])
        size = self.config.input_size
        return F.interpolate(torch.sigmoid(logits), size=(size, size), mode="bilinear", align_corners=False)


def _top_slices(attention: Tensor, k: int) -> Tensor:
    """The k slices of highest attention per row, in ascending slice order; ties go to the lower index."""
    order = torch.sort(attention, dim=1, descending=True, stable=True).indices[:, :k]
    return order.sort(dim=1).values


def _init_like_vgg(features: nn.Sequential) -> None:
    """Initialise convolutions and batch norms as torchvision's ``VGG.__init__`` does."""
    for module in features.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)


def load_backbone(features: nn.Sequential, path: Path) -> None:
    """Load the ``features.*`` tensors of a torchvision VGG state dict file into ``features``.

    The file is read with ``weights_only=True``; its layout must match ``features`` exactly
    (a VGG16 file for the paper's configuration).
    """
    if not path.is_file():
        raise FileNotFoundError(
            f"VGG backbone weights not found at {path}: give the local path of a torchvision VGG16 "
            "state dict (e.g. the ImageNet file vgg16-397923af.pth); nothing is downloaded"
        )
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, Mapping):
        raise ValueError(f"{path} holds a {type(state).__name__}, not a state dict")
    wanted = {k.removeprefix("features."): v for k, v in state.items() if k.startswith("features.")}
    if not wanted:
        raise ValueError(f"{path} has no 'features.*' tensors; expected a torchvision VGG state dict")
    try:
        features.load_state_dict(wanted)
    except RuntimeError as err:
        raise ValueError(f"{path} does not fit the configured backbone: {err}") from err


def drct2_loss(output: DrCT2Output, target: Tensor) -> DrCT2Loss:
    """The paper's loss (eq. 11-13): MSE of the primary and APS probabilities plus BCE of the fusion.

    ``target``: [B, L] in {0, 1} (float). Each part is a mean over series and labels; the BCE
    is computed from logits for numerical stability.
    """
    if target.shape != output.fusion_logits.shape:
        raise ValueError(f"drct2_loss: target shape {list(target.shape)} != logits {list(output.fusion_logits.shape)}")
    target = target.to(output.fusion_logits.dtype)
    primary = F.mse_loss(output.primary_probabilities, target)
    aps = F.mse_loss(output.aps_probabilities, target)
    fusion = F.binary_cross_entropy_with_logits(output.fusion_logits, target)
    return DrCT2Loss(primary + aps + fusion, primary, aps, fusion)


def make_optimizer(model: DrCT2, primary_lr: float = 5e-4, aps_lr: float = 3e-4) -> torch.optim.Adam:
    """Adam with the paper's learning rates: ``primary_lr`` for the primary network (and the
    encoder, when it is trained) and for fusion, ``aps_lr`` for the APS network.

    Frozen parameters are left out. Each parameter group carries its ``name``.
    """
    groups = [
        ("primary", primary_lr, [*model.backbone.parameters(), *model.primary.parameters()]),
        ("aps", aps_lr, list(model.aps.parameters())),
        ("fusion", primary_lr, list(model.fusion.parameters())),
    ]
    return torch.optim.Adam(
        [{"name": name, "lr": lr, "params": [p for p in params if p.requires_grad]} for name, lr, params in groups]
    )
