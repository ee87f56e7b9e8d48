"""Where the sacroiliac joints are: a learned localiser, so the crop needs no radiologist.

The paper crops around a region of interest a radiologist drew (1.2); a node has none. The
localiser reads the T1 on a coarse grid over its whole field of view (:func:`overview_grid`:
the series' orientation, ``OVERVIEW_SHAPE`` voxels of ``OVERVIEW_MM``, centred on the series)
and finds each joint's centre by **integral regression** (Sun et al., ECCV 2018): a small 3D
network gives one heatmap per joint (left, right), a softmax over its voxels, and the
expected voxel position under it is the joint's centre, trained with the L1 distance in mm to
the truth. The crop is centred on the two joints' midpoint (:meth:`Joints.centre`).

Why learned: the joints' look (a thin cartilage line between the sacrum and the ilium, at an
angle that follows the sacral tilt) is easy to learn and hard to describe by hand robustly,
and the phantoms give every joint's box. Its error against the phantoms' truth boxes is in
the model card.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..result import SeriesVolume
from ..transforms.grid import VoxelGrid, resample_onto
from .preprocess import unit_scale

OVERVIEW_SHAPE = (16, 64, 64)  # slices, rows, columns
OVERVIEW_MM = (5.0, 4.0, 4.0)  # 80 × 256 × 256 mm: a sacroiliac field of view with room around it
SIDES = ("left", "right")


def overview_grid(t1: SeriesVolume) -> VoxelGrid:
    """The localiser's grid: ``OVERVIEW_SHAPE`` voxels of ``OVERVIEW_MM`` in the T1's
    orientation, centred on the T1's own centre."""
    matrix = np.asarray(t1.direction, float).reshape(3, 3)
    centre = t1.index_to_lps((np.array(t1.array.shape, float) - 1.0) / 2.0)
    spacing = tuple(float(v) for v in OVERVIEW_MM[::-1])
    half = (np.array(OVERVIEW_SHAPE[::-1], float) - 1.0) / 2.0 * np.array(spacing)
    return VoxelGrid(OVERVIEW_SHAPE, spacing, tuple(np.asarray(centre) - matrix @ half), tuple(matrix.ravel()))


def overview(t1: SeriesVolume) -> tuple[np.ndarray, VoxelGrid]:
    """The T1 on :func:`overview_grid`, in [0, 1] (``[1, D, H, W]`` float32), and the grid."""
    grid = overview_grid(t1)
    low, high = unit_scale(t1)
    values = resample_onto(t1, grid)
    return np.clip((values - low) / (high - low), 0.0, 1.0)[None].astype(np.float32), grid


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv3d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm3d(cout), nn.ReLU(inplace=True),
                         nn.Conv3d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm3d(cout), nn.ReLU(inplace=True))


class JointLocaliser(nn.Module):
    """``forward(x [B, 1, 16, 64, 64]) -> [B, 2, 3]``: each joint's expected (slice, row,
    column) index on the overview grid (integral regression, module docstring).

    Three blocks of two 3×3×3 convolutions with batch norm and ReLU (``width``, 2×, 4×
    channels) with in-plane max pooling after the first two, a context convolution dilated
    in-plane, and a 1×1×1 convolution to one heatmap per joint at 1/4 in-plane; the expectation
    is taken there and its row and column scaled back to overview indices."""

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.encoder = nn.ModuleList([_block(1, width), _block(width, 2 * width), _block(2 * width, 4 * width)])
        self.context = nn.Sequential(
            nn.Conv3d(4 * width, 4 * width, 3, padding=(1, 2, 2), dilation=(1, 2, 2), bias=False),
            nn.BatchNorm3d(4 * width), nn.ReLU(inplace=True))
        self.heatmap = nn.Conv3d(4 * width, len(SIDES), 1)

    def logits(self, x: Tensor) -> Tensor:
        """Heatmap logits ``[B, 2, D, H/4, W/4]``."""
        y = x
        for i, block in enumerate(self.encoder):
            y = block(y)
            if i < 2:
                y = F.max_pool3d(y, (1, 2, 2))
        return self.heatmap(self.context(y))

    def forward(self, x: Tensor) -> Tensor:
        logits = self.logits(x)
        b, j, d, h, w = logits.shape
        p = torch.softmax(logits.flatten(2), dim=-1).view(b, j, d, h, w)
        zs = torch.arange(d, dtype=p.dtype, device=p.device)
        ys = (torch.arange(h, dtype=p.dtype, device=p.device) + 0.5) * (x.shape[-2] / h) - 0.5  # 1/4 → full index
        xs = (torch.arange(w, dtype=p.dtype, device=p.device) + 0.5) * (x.shape[-1] / w) - 0.5
        return torch.stack([(p.sum((3, 4)) * zs).sum(-1), (p.sum((2, 4)) * ys).sum(-1), (p.sum((2, 3)) * xs).sum(-1)],
                           dim=-1)


def index_distance_mm(predicted: Tensor, truth: Tensor) -> Tensor:
    """L1 distance in mm between overview indices ``[..., 3]`` (the training loss, per joint)."""
    scale = torch.tensor(OVERVIEW_MM, dtype=predicted.dtype, device=predicted.device)
    return ((predicted - truth).abs() * scale).sum(-1)


class Joints(NamedTuple):
    """The localiser's answer in patient coordinates (LPS mm)."""

    left: np.ndarray
    right: np.ndarray

    @property
    def centre(self) -> np.ndarray:
        """The midpoint of the two joints: where the crop is centred."""
        return (self.left + self.right) / 2.0


@torch.no_grad()
def locate(net: JointLocaliser, t1: SeriesVolume, device: torch.device | str = "cpu") -> Joints:
    """Both joints' centres on ``t1`` (the network in eval mode)."""
    image, grid = overview(t1)
    index = net.eval()(torch.from_numpy(image[None]).to(device))[0].double().cpu().numpy()
    left, right = grid.index_to_lps(index)
    return Joints(left, right)
