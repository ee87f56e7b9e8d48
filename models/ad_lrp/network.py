"""A 3D CNN that tells Alzheimer's disease from a control on a T1 in MNI space.

After the paper's family (``../shared/papers/ad-lrp.txt`` gives a 3D CNN and no more; see
:meth:`~neuroread.models.ad_lrp.config.ADConfig.paper`): blocks of a 3×3×3 convolution, batch
norm, ReLU and 2×2×2 max pooling, then dropout, a fully connected layer with ReLU, dropout and
the output layer, two logits (AD, control).

Built for LRP (:class:`neuroread.models.explain.LRP`, zennit): every operation is a module
(``nn.ReLU``, ``nn.MaxPool3d``, ``nn.Flatten``), so each gets its rule or passes the
relevance as its gradient; each batch norm comes straight after its convolution in module
order, so zennit's ``SequentialMergeBatchNorm`` merges it there; no residual additions (which
would need zennit's ``Sum`` module). The convolutions have no bias of their own (batch norm
has one), so with batch norm merged the biases are the merged ones and the fully connected
layers'.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .config import ADConfig


class AlzheimerNet(nn.Module):
    """``forward(x [B, 1, *config.grid_shape])`` → logits ``[B, 2]`` (AD, control)."""

    def __init__(self, config: ADConfig) -> None:
        super().__init__()
        self.config = config
        layers: list[nn.Module] = []
        cin = 1
        for width in config.widths:
            layers += [nn.Conv3d(cin, width, 3, padding=1, bias=False), nn.BatchNorm3d(width), nn.ReLU(),
                       nn.MaxPool3d(2)]
            cin = width
        self.features = nn.Sequential(*layers)
        flat = cin * math.prod(config.feature_shape)
        self.classifier = nn.Sequential(nn.Flatten(), nn.Dropout(config.dropout), nn.Linear(flat, config.hidden),
                                        nn.ReLU(), nn.Dropout(config.dropout), nn.Linear(config.hidden, config.n_classes))

    def forward(self, x: Tensor) -> Tensor:
        expected = (1, *self.config.grid_shape)
        if x.ndim != 5 or tuple(x.shape[1:]) != expected:
            raise ValueError(f"AlzheimerNet takes [B, {', '.join(map(str, expected))}] (a T1 on the MNI grid at "
                             f"{self.config.voxel_mm:g} mm), got {list(x.shape)}")
        return self.classifier(self.features(x))

    @torch.no_grad()
    def probabilities(self, x: Tensor) -> Tensor:
        return torch.softmax(self(x), dim=1)
