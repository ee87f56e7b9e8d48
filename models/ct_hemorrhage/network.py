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

import difflib
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models import VGG16_Weights
from torchvision.models.vgg import cfgs, make_layers

PAPER = "Wang, Fu, Li, Pei. Diagnosis after Zooming in (DrCT2). Medical Physics 2022, doi:10.1002/mp.15871"
VGG16_LAYOUT: tuple[int | str, ...] = tuple(cfgs["D"])
POOLINGS = ("flatten", "attention")
# The input normalisation torchvision publishes with its ImageNet VGG16 weights.
_IMAGENET_MEAN: tuple[float, ...] = tuple(VGG16_Weights.IMAGENET1K_V1.transforms().mean)
_IMAGENET_STD: tuple[float, ...] = tuple(VGG16_Weights.IMAGENET1K_V1.transforms().std)


@dataclass(frozen=True)
class DrCT2Config:
    """The architecture of a DrCT2 network; a checkpoint's model card carries :meth:`to_dict`.

    ``slices`` is the number m of slices sampled per series (paper: 28 RSNA, 32 CQ500),
    ``key_slices`` the number m_key the APS network zooms in on (paper: 16), ``input_size`` the
    side of each slice (224) and ``zoom_size`` its side once zoomed (512). ``backbone`` is a
    torchvision VGG channel list (ints are 3×3 convolutions with ReLU, ``"M"`` a 2×2 max pool;
    the paper's is VGG16's, ``cfgs["D"]``). ``gru_hidden`` is the hidden size of each direction
    of both bidirectional GRUs, ``aps_fc`` the width of the APS network's fully connected layer
    after batch normalisation, ``head`` the widths of the first two of each head's three fully
    connected layers (the third has ``n_labels`` outputs), ``dropout`` the dropout rate after
    them. ``pooling`` is what the heads read: ``"flatten"`` (the weighted matrix flattened) or
    ``"attention"`` (its rows summed: the attention-weighted mean; see the module docstring).
    ``lesion_head`` adds the 1×1 lesion head of the module docstring (needs lesion masks to train).
    ``name`` says which configuration this is (``"paper"``, ``"demo"`` or another).
    """

    n_labels: int
    slices: int = 28
    key_slices: int = 16
    input_size: int = 224
    zoom_size: int = 512
    backbone: tuple[int | str, ...] = VGG16_LAYOUT
    backbone_batch_norm: bool = False
    freeze_backbone: bool = True
    gru_hidden: int = 256
    aps_fc: int = 512
    head: tuple[int, int] = (256, 128)
    dropout: float = 0.5
    pooling: str = "flatten"
    lesion_head: bool = False
    name: str = "custom"

    def __post_init__(self) -> None:
        for key in ("n_labels", "slices", "key_slices", "input_size", "zoom_size", "gru_hidden", "aps_fc"):
            value = getattr(self, key)
            if not _is_int(value) or value < 1:
                raise ValueError(f"DrCT2Config.{key} must be a positive integer, got {value!r}")
        for key in ("backbone_batch_norm", "freeze_backbone", "lesion_head"):
            if not isinstance(getattr(self, key), bool):
                raise ValueError(f"DrCT2Config.{key} must be true or false, got {getattr(self, key)!r}")
        if not isinstance(self.name, str) or not self.name.strip():
            raise ValueError(f"DrCT2Config.name must be a non-empty string, got {self.name!r}")
        # Batch normalisation in the APS network needs more than one value per feature in training.
        if not 2 <= self.key_slices <= self.slices:
            raise ValueError(f"DrCT2Config.key_slices must be in [2, slices={self.slices}], got {self.key_slices}")
        self._check_backbone()
        scale = 2 ** self.backbone.count("M")
        for key in ("input_size", "zoom_size"):
            if getattr(self, key) % scale:
                raise ValueError(
                    f"DrCT2Config.{key} must be a multiple of {scale} (the backbone halves it "
                    f"{self.backbone.count('M')} times and no max pool may drop a row), got {getattr(self, key)}"
                )
        if self.zoom_size < self.input_size:
            raise ValueError(f"DrCT2Config.zoom_size ({self.zoom_size}) must not be below input_size ({self.input_size})")
        if not (isinstance(self.head, tuple) and len(self.head) == 2 and all(_is_int(w) and w >= 1 for w in self.head)):
            raise ValueError(f"DrCT2Config.head must be two positive widths, got {self.head!r}")
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)) or not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"DrCT2Config.dropout must be in [0, 1), got {self.dropout!r}")
        if self.pooling not in POOLINGS:
            raise ValueError(f"DrCT2Config.pooling must be one of {POOLINGS}, got {self.pooling!r}")

    def _check_backbone(self) -> None:
        layout = self.backbone
        if not isinstance(layout, tuple) or not any(_is_int(c) for c in layout):
            raise ValueError(f"DrCT2Config.backbone must be a tuple of channel counts and 'M', got {layout!r}")
        bad = [c for c in layout if not (c == "M" or (_is_int(c) and c >= 1))]
        if bad:
            raise ValueError(f"DrCT2Config.backbone: entries must be positive channel counts or 'M', got {bad}")
        if layout[-1] != "M":
            raise ValueError(f"DrCT2Config.backbone must end with a max pool 'M' as VGG16's does, got {layout!r}")

    @property
    def features(self) -> int:
        """Width of one slice's feature vector: the channels of the last convolution (VGG16: 512)."""
        return [c for c in self.backbone if _is_int(c)][-1]

    @classmethod
    def paper(cls, n_labels: int, slices: int = 28) -> DrCT2Config:
        """The paper's configuration: frozen ImageNet VGG16, 224 zoomed to 512, 16 key slices.

        ``slices`` is 28 for RSNA-style series and 32 for CQ500-style ones. Not given by the
        paper and chosen here: GRU hidden size 256 per direction (so each step's output has
        VGG16's 512 dimensions), an APS fully connected layer of 512, heads of 256 and 128.
        """
        return cls(n_labels=n_labels, slices=slices, name="paper")

    @classmethod
    def demo(
        cls,
        n_labels: int,
        slices: int = 24,
        key_slices: int = 8,
        input_size: int = 128,
        zoom_size: int = 256,
        width_divisor: int = 8,
    ) -> DrCT2Config:
        """A smaller configuration for demo weights trained on this CPU from phantoms.

        The VGG16 layout with every channel count divided by ``width_divisor``, batch
        normalisation after each convolution (torchvision's VGG16-BN variant) and its fourth max
        pool left out, so that at 128 px the last feature maps (the spatial maps' grid) are 16×16
        (8 px per cell, 15 mm on a phantom) rather than 8×8; fewer slices (24, all of a small
        phantom's: the five key slices can then be any five) and a lower resolution (128 zoomed
        to 256: the paper's zoom-in, at about half the scale); heads on the attention-weighted
        mean of the slices (``pooling="attention"``, see the module docstring), and the lesion head.
        No ImageNet
        weights exist for this narrow encoder, so it is pre-trained on labelled phantom slices
        and their lesion masks in their place (:mod:`neuroread.training.recipes.ct_hemorrhage.stages`)
        and then frozen, as the paper freezes its ImageNet VGG16. Everything else is the paper's.

        (Trained end to end from scratch instead, on the same phantoms and CPU budget, it did not
        learn: held-out macro-F1 0.13, AUC 0.46.)
        """
        if not _is_int(width_divisor) or width_divisor < 1:
            raise ValueError(f"width_divisor must be a positive integer, got {width_divisor!r}")
        layout = [c if c == "M" else max(1, int(c) // width_divisor) for c in VGG16_LAYOUT]
        del layout[[i for i, c in enumerate(layout) if c == "M"][3]]  # the fourth max pool
        width = [c for c in layout if _is_int(c)][-1]
        return cls(
            n_labels=n_labels,
            slices=slices,
            key_slices=key_slices,
            input_size=input_size,
            zoom_size=zoom_size,
            backbone=tuple(layout),
            backbone_batch_norm=True,
            freeze_backbone=True,
            gru_hidden=max(1, width // 2),
            aps_fc=width,
            head=(width, max(1, width // 2)),
            pooling="attention",
            lesion_head=True,
            name="demo",
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields (tuples as lists), plus the paper; :meth:`from_dict` reads it back."""
        out: dict[str, Any] = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}
        out["paper"] = PAPER
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DrCT2Config:
        """The configuration :meth:`to_dict` wrote (e.g. read back from a model card); its ``paper`` note is skipped."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known - {"paper"})
        if unknown:
            hints = {k: difflib.get_close_matches(k, known, n=1) for k in unknown}
            said = ", ".join(f"{k!r}" + (f" (did you mean {h[0]!r}?)" if h else "") for k, h in hints.items())
            raise ValueError(f"DrCT2Config: unknown keys {said}; known: {sorted(known)}")
        if "n_labels" not in data:
            raise ValueError("DrCT2Config: 'n_labels' is missing")
        values = {k: tuple(v) if k in ("backbone", "head") and isinstance(v, list) else v for k, v in data.items() if k in known}
        return cls(**values)


def _pooled_width(config: DrCT2Config) -> int:
    """The input width of the APS and fusion heads: one row (attention pooling) or k rows flattened."""
    width = 2 * config.gru_hidden
    return width if config.pooling == "attention" else config.key_slices * width


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


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
