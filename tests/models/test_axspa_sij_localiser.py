"""The sacroiliac joint localiser: its overview grid, integral regression on a known heatmap,
and training steps on phantoms that bring its joints closer to the truth boxes' centres."""
from __future__ import annotations

import json

import numpy as np
import torch

from neuroread.models.axspa_sij.localiser import (
    OVERVIEW_MM,
    OVERVIEW_SHAPE,
    SIDES,
    JointLocaliser,
    Joints,
    index_distance_mm,
    locate,
    overview,
    overview_grid,
)
from neuroread.models.volume import load_series


def _studies(phantom_sets):
    out = []
    for case in sorted(p.parent for p in phantom_sets["axspa-sij"].glob("*/truth.json")):
        truth = json.loads((case / "truth.json").read_text())
        folder = case / truth["series"]["t1"]["folder"]
        t1 = load_series(sorted(p for p in folder.iterdir() if p.is_file()))
        out.append((t1, np.array([truth["joint_roi"][s]["lps_centre"] for s in SIDES])))
    return out


def test_the_overview_covers_the_t1_around_its_centre(phantom_sets):
    t1, joints = _studies(phantom_sets)[0]
    grid = overview_grid(t1)
    assert grid.shape == OVERVIEW_SHAPE and grid.spacing == tuple(OVERVIEW_MM[::-1])
    middle = (np.array(OVERVIEW_SHAPE, float) - 1) / 2
    assert np.allclose(grid.index_to_lps(middle), t1.index_to_lps((np.array(t1.array.shape, float) - 1) / 2))
    image, _ = overview(t1)
    assert image.shape == (1, *OVERVIEW_SHAPE) and 0 <= image.min() and image.max() <= 1
    index = grid.lps_to_index(joints)
    assert ((index >= 0) & (index <= np.array(OVERVIEW_SHAPE) - 1)).all()  # both joints are in view


class _Peaked(JointLocaliser):
    """The localiser with a heatmap peaked where the test says."""

    def __init__(self, peaks):
        super().__init__(width=2)
        self.peaks = peaks

    def logits(self, x):
        out = torch.full((x.shape[0], 2, 16, 16, 16), -50.0)
        for j, (d, h, w) in enumerate(self.peaks):
            out[:, j, d, h, w] = 50.0
        return out


def test_integral_regression_returns_the_heatmap_peak_in_overview_indices():
    net = _Peaked([(3, 5, 10), (12, 0, 15)])
    found = net(torch.zeros(1, 1, *OVERVIEW_SHAPE))[0]
    # a 1/4 in-plane cell k covers overview indices 4k .. 4k + 3: its centre is 4k + 1.5
    assert torch.allclose(found, torch.tensor([[3.0, 21.5, 41.5], [12.0, 1.5, 61.5]]), atol=1e-4)
    assert float(index_distance_mm(found[:1], torch.tensor([[4.0, 21.5, 40.5]]))[0]) == 5.0 + 4.0


def test_training_steps_bring_the_joints_closer_and_locate_answers_in_patient_coordinates(phantom_sets):
    studies = _studies(phantom_sets)
    images, targets = [], []
    for t1, joints in studies:
        image, grid = overview(t1)
        images.append(image)
        targets.append(grid.lps_to_index(joints))
    x = torch.from_numpy(np.stack(images))
    y = torch.from_numpy(np.stack(targets)).float()
    torch.manual_seed(0)
    net = JointLocaliser(width=4)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    first = None
    for _ in range(40):
        opt.zero_grad()
        loss = index_distance_mm(net(x), y).mean()
        loss.backward()
        opt.step()
        first = float(loss) if first is None else first
    net.eval()
    last = float(index_distance_mm(net(x), y).mean())
    assert last < 0.6 * first, (first, last)
    found = locate(net, studies[0][0])
    assert isinstance(found, Joints) and found.left.shape == (3,)
    assert np.allclose(found.centre, (found.left + found.right) / 2)
