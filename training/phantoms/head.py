"""A whole head around the template brain: tissue fractions at any point.

Layers outward from the brain envelope: extra-axial CSF (wider with age and atrophy), the
skull's inner table, diploe and outer table (thicker at the occiput and frontal bone,
thinner over the temporal squama, varying per subject), scalp with a subcutaneous fat
layer, then air. Inside the envelope the template's GM/WM probabilities give the tissue;
what is neither is CSF (ventricles, sulci, cisterns).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .anatomy import BrainTemplate
from .geometry import soft_inside

TISSUES = ("gm", "wm", "csf", "bone", "diploe", "scalp", "fat", "air")


@dataclass(frozen=True)
class HeadParams:
    """Per-subject shell sizes (mm) and the shape of the skull's thickness variation."""

    csf_gap_mm: float
    skull_mm: float
    scalp_mm: float
    fat_share: float
    sulcal_widening: float  # 0: template sulci; 1: markedly widened (atrophy)
    thickness_coeffs: tuple[float, ...]

    def __post_init__(self) -> None:
        for name in ("csf_gap_mm", "skull_mm", "scalp_mm"):
            if getattr(self, name) <= 0:
                raise ValueError(f"HeadParams.{name} must be positive, got {getattr(self, name)}")
        if not 0 <= self.fat_share < 1:
            raise ValueError(f"HeadParams.fat_share must be in [0, 1), got {self.fat_share}")


def random_head(rng: np.random.Generator, age: float, atrophy: float = 0.0) -> HeadParams:
    """Head shells for a subject of ``age`` years; ``atrophy`` (0..1) widens the CSF spaces."""
    ageing = np.clip((age - 40.0) / 50.0, 0.0, 1.0)
    return HeadParams(
        csf_gap_mm=float(0.8 + 1.5 * ageing + 2.0 * atrophy + rng.uniform(0.0, 0.8)),
        skull_mm=float(rng.uniform(5.0, 8.5)),
        scalp_mm=float(rng.uniform(4.0, 8.0)),
        fat_share=float(rng.uniform(0.25, 0.55)),
        sulcal_widening=float(np.clip(0.3 * ageing + 0.8 * atrophy + rng.uniform(-0.1, 0.1), 0.0, 1.0)),
        thickness_coeffs=tuple(float(v) for v in rng.normal(0.0, 0.08, size=6)),
    )


def _thickness_factor(q: np.ndarray, coeffs: tuple[float, ...]) -> np.ndarray:
    """Regional skull thickness: thicker occiput/frontal, thinner temporal squama, per subject."""
    r = np.linalg.norm(q, axis=-1) + 1e-3
    u = q / r[..., None]
    x, y, z = u[..., 0], u[..., 1], u[..., 2]
    temporal = (x**2) * np.clip(1.0 - 3.0 * z**2, 0.0, 1.0)
    base = 1.0 + 0.25 * np.abs(y) - 0.45 * temporal
    c = coeffs
    return base * (1.0 + c[0] * x + c[1] * y + c[2] * z + c[3] * x * y + c[4] * y * z + c[5] * (z**2 - 0.33))


def head_tissues(
    template: BrainTemplate, q: np.ndarray, params: HeadParams, q_brain: np.ndarray | None = None
) -> dict[str, np.ndarray]:
    """Fractions (summing to 1) of each tissue in :data:`TISSUES` at template points ``q``.

    ``q_brain``, when given, is where the brain is sampled instead of ``q`` (a mass effect
    displaces the brain inside a skull that stays put).
    """
    qb = q if q_brain is None else q_brain
    d = template.envelope.sample(q, order=1, cval=1e3)
    # Much of a field of view is air: evaluate the tissues only where the head can be.
    reach = params.csf_gap_mm + 1.6 * params.skull_mm + params.scalp_mm + 3.0
    head = d < reach
    if not head.all():
        out = {k: np.zeros(q.shape[:-1], np.float32) for k in TISSUES}
        out["air"][~head] = 1.0
        if head.any():
            part = head_tissues(template, q[head], params, None if q_brain is None else qb[head])
            for k, v in part.items():
                out[k][head] = v
        return out
    brain = np.clip(template.brain.sample(qb, order=1), 0.0, 1.0)
    gm = template.gm.sample(qb, order=1)
    wm = template.wm.sample(qb, order=1)
    # Atrophy/ageing: thin the grey matter at the sulci (low-probability GM becomes CSF).
    t = 0.4 * params.sulcal_widening
    if t > 0:
        gm = np.where(wm > 0.5, gm, np.clip((gm - t) / (1.0 - t), 0.0, 1.0))
    scale = np.where(gm + wm > 1.0, 1.0 / np.maximum(gm + wm, 1e-6), 1.0)
    gm, wm = gm * scale * brain, wm * scale * brain
    tissue = gm + wm

    gap = params.csf_gap_mm
    skull = params.skull_mm * _thickness_factor(q, params.thickness_coeffs)
    inner = soft_inside(d - gap, 0.4)  # inside the inner skull surface
    outer_bone = soft_inside(d - gap - skull, 0.4)
    inner_table = soft_inside(d - gap - 0.28 * skull, 0.4)
    outer_table = soft_inside(d - gap - 0.72 * skull, 0.4)
    scalp_out = soft_inside(d - gap - skull - params.scalp_mm, 0.5)
    fat_in = soft_inside(d - gap - skull - params.scalp_mm * (1.0 - params.fat_share) * 0.5, 0.5)
    fat_out = soft_inside(d - gap - skull - params.scalp_mm * (1.0 - 0.5 * (1.0 - params.fat_share)), 0.5)

    inner_cavity = np.maximum(inner, tissue)
    csf = np.clip(inner_cavity - tissue, 0.0, 1.0)
    bone = np.clip((inner_table - inner_cavity).clip(0) + (outer_bone - outer_table).clip(0), 0.0, 1.0)
    diploe = np.clip(outer_table - inner_table, 0.0, 1.0)
    fat = np.clip(fat_out - fat_in, 0.0, 1.0)
    scalp = np.clip(scalp_out - outer_bone - fat, 0.0, 1.0)
    total = gm + wm + csf + bone + diploe + scalp + fat
    air = np.clip(1.0 - total, 0.0, 1.0)
    norm = np.maximum(total + air, 1e-6)
    return {
        "gm": gm / norm,
        "wm": wm / norm,
        "csf": csf / norm,
        "bone": bone / norm,
        "diploe": diploe / norm,
        "scalp": scalp / norm,
        "fat": fat / norm,
        "air": air / norm,
    }
