"""Backbones shared by the models: torchvision's ResNet at configurable widths and strides."""
from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

BLOCKS = ("basic", "bottleneck")


class ResNetTrunk(ResNet):
    """torchvision's ResNet trunk (stem and four stages; no pooling, no fc) at the given
    ``widths`` and ``strides``, with ``layers`` blocks per stage of type ``block`` (``basic`` or
    ``bottleneck``).

    It reuses torchvision's stem, ``_make_layer`` and blocks, and initialises as torchvision's
    ``ResNet.__init__`` does (He-normal convolutions, batch norms at one and zero). At ResNet-18
    or -50 values its parameters carry torchvision's names, so torchvision's files load into it;
    its children (``conv1`` … ``layer4``) are what torchvision's ``BackboneWithFPN`` reads."""

    def __init__(self, block: str, layers: Sequence[int], widths: Sequence[int], strides: Sequence[int]) -> None:
        nn.Module.__init__(self)
        if block not in BLOCKS:
            raise ValueError(f"block must be one of {BLOCKS}, got {block!r}")
        kind = Bottleneck if block == "bottleneck" else BasicBlock
        self._norm_layer = nn.BatchNorm2d
        self.inplanes, self.dilation, self.groups, self.base_width = widths[0], 1, 1, 64
        self.conv1 = nn.Conv2d(3, self.inplanes, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(self.inplanes)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1, self.layer2, self.layer3, self.layer4 = (
            self._make_layer(kind, w, n, stride=s) for w, n, s in zip(widths, layers, strides))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))
