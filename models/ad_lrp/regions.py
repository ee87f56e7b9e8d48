"""Relevance per brain region: summed relevance, relevance density and relevance gain.

After the paper's size-corrected metrics, on the Neuromorphometrics atlas in MNI space (the
network's grid, where relevance is computed):

- **summed relevance** of a region: the LRP relevance of its voxels added up (logit units: the
  relevance of the whole input sums to the AD logit, less what biases absorb);
- **relevance density**: the summed relevance over the region's voxels on the network's grid
  (relevance per voxel), so a large region does not win by size;
- **relevance gain**: the density over the training controls' mean density in the region
  (:attr:`ADConfig.reference_density`, stored with the weights): how much more evidence for AD
  the region carries than it does in people without AD. Where the controls' mean is below
  :data:`GAIN_FLOOR` of the typical (mean absolute) control density, the floor stands in, so a
  region the controls leave at zero does not divide by ~0.

Regions with fewer than ``min_voxels`` voxels on the grid are measured but not ranked.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

GAIN_FLOOR = 0.1


@dataclass(frozen=True)
class RegionRelevance:
    """One atlas region's relevance in one series (see the module docstring); ``gain`` is
    ``None`` without reference densities."""

    id: int
    name: str
    voxels: int
    relevance: float
    density: float
    gain: float | None


def densities(relevance: np.ndarray, labels: np.ndarray, ids: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """(voxels, summed relevance) of each region id in ``ids`` (``relevance`` and ``labels`` on one grid)."""
    if relevance.shape != labels.shape:
        raise ValueError(f"relevance {relevance.shape} and labels {labels.shape} must share a grid")
    top = int(max(int(labels.max(initial=0)), max(ids, default=0))) + 1
    flat = labels.ravel().astype(np.int64)
    counts = np.bincount(flat, minlength=top)
    sums = np.bincount(flat, weights=relevance.ravel().astype(np.float64), minlength=top)
    index = np.asarray(ids, np.int64)
    return counts[index], sums[index]


def measure(relevance: np.ndarray, labels: np.ndarray, names: Mapping[int, str],
            reference: Mapping[int, float] | None = None) -> list[RegionRelevance]:
    """Every atlas region of ``names`` present on ``labels``, in id order (module docstring)."""
    ids = sorted(int(i) for i in names)
    voxels, sums = densities(relevance, labels, ids)
    floor = _floor(reference)
    out = []
    for rid, n, total in zip(ids, voxels, sums):
        if n == 0:
            continue
        density = float(total) / float(n)
        gain = None
        if reference:
            gain = density / max(float(reference.get(rid, 0.0)), floor)
        out.append(RegionRelevance(rid, names[rid], int(n), float(total), density, gain))
    return out


def _floor(reference: Mapping[int, float] | None) -> float:
    if not reference:
        return 0.0
    typical = float(np.mean(np.abs(list(reference.values()))))
    return max(GAIN_FLOOR * typical, 1e-12)


def ranked(regions: Sequence[RegionRelevance], top: int, min_voxels: int) -> list[RegionRelevance]:
    """The ``top`` regions of at least ``min_voxels`` voxels by relevance gain (by density when
    there is no gain), highest first; ties by atlas id."""
    usable = [r for r in regions if r.voxels >= min_voxels]
    return sorted(usable, key=lambda r: (-(r.gain if r.gain is not None else r.density), r.id))[:top]


def reference_densities(per_series: Sequence[Sequence[RegionRelevance]]) -> dict[int, float]:
    """The mean density per region over series (the training controls'): id → density."""
    totals: dict[int, list[float]] = {}
    for regions in per_series:
        for r in regions:
            totals.setdefault(r.id, []).append(r.density)
    return {rid: float(np.mean(values)) for rid, values in sorted(totals.items())}
