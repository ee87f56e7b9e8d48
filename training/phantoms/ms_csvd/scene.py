"""The subject in the scanner: the FLAIR grid, atrophic ventricles, and the scene that the
renderer samples (tissue and lesion fractions at patient points)."""
from __future__ import annotations

import numpy as np
from scipy.spatial.transform import Rotation

from .. import anatomy, head
from ..geometry import Grid, SubjectWarp
from .field import _LesionField, _sample_aligned

_BRAIN_CENTRE = np.array([0.0, 17.0, 6.0])  # template LPS mm, the middle of the brain
_VERTEX_Z = 82.0  # template z of the top of the brain


def _ventricle_widening(centres: list[np.ndarray], amount: float):
    """Template-space displacement that pulls points across toward each lateral ventricle's
    long axis (left-right and up-down, not along it): in the patient the ventricles look wider
    and taller (atrophy ex vacuo) while the midline stays put. ``amount`` < 0.5."""
    centres = [np.asarray(c, np.float32) for c in centres]
    sigma = np.array([12.0, 30.0, 14.0], np.float32)
    a = np.float32(amount)
    across = np.array([1.0, 0.0, 1.0], np.float32)

    def displacement(q: np.ndarray) -> np.ndarray:
        out = np.zeros_like(q)
        for c in centres:
            d = q - c
            w = np.exp(-0.5 * np.sum((d / sigma) ** 2, axis=-1, keepdims=True))
            out -= a * d * across * w
        return out

    return displacement


def _grid(rng: np.random.Generator, warp: SubjectWarp, size: str) -> Grid:
    """An axial FLAIR slab from the vertex down, roughly aligned to the head (AC-PC)."""
    if size == "full":
        pixel = rng.uniform(0.7, 0.9)
        fov = rng.uniform(205.0, 245.0)
        n = min((256, 288, 320), key=lambda m: abs(m * pixel - fov))
        thickness = float(rng.choice([3.0, 4.0, 5.0]))
        spacing = thickness * float(rng.choice([1.0, 1.1, 1.2, 1.3]))
        coverage = rng.uniform(140.0, 160.0)
        nz = int(np.clip(np.ceil(coverage / spacing), 25, 40))
    else:
        n = int(rng.choice([96, 112, 128], p=[0.45, 0.4, 0.15]))
        pixel = rng.uniform(210.0, 240.0) / n
        nz = int(rng.integers(16, 23))
        spacing = rng.uniform(140.0, 155.0) / nz
        thickness = spacing * rng.uniform(0.8, 1.0)
    pixel = round(float(pixel), 4)
    spacing, thickness = round(float(spacing), 3), round(float(thickness), 3)
    extent = nz * spacing / warp.scale[2]
    top = _VERTEX_Z + rng.uniform(0.0, 6.0)
    centre_t = np.array([0.0, _BRAIN_CENTRE[1], top - extent / 2])
    centre = warp.to_patient(centre_t) + rng.normal(0.0, 2.0, 3)
    tilt = Rotation.from_euler("xyz", rng.normal(0.0, [3.0, 1.5, 1.5]), degrees=True).as_matrix()
    return Grid.centred(centre, (nz, n, n), (pixel, pixel), spacing, thickness, warp.rotation @ tilt)


def _scene(t: anatomy.BrainTemplate, params: head.HeadParams, lesions: _LesionField, warp: SubjectWarp):
    """Tissue and lesion fractions at patient points; lesion ids of the sub-sample that holds most."""
    is_lacune = lesions.is_lacune

    reach = params.csf_gap_mm + 2.0 * params.skull_mm + params.scalp_mm + 4.0  # beyond: air only

    def scene(points: np.ndarray) -> dict[str, np.ndarray]:
        q = warp(points)
        head_ = _sample_aligned(t.envelope, q, cval=1e3) < reach
        if head_.all():
            fr = head.head_tissues(t, q, params)
        else:  # the head's tissues only where there is a head (a third of a FLAIR's field is air)
            sub = head.head_tissues(t, q[head_], params)
            fr = {k: np.zeros(q.shape[:-1], np.float32) for k in sub}
            for k, v in sub.items():
                fr[k][head_] = v
            fr["air"][~head_] = 1.0
        les = lesions.sample(q)
        par = fr["gm"] + fr["wm"]
        keep = np.clip(1.0 - les["bright"] - les["cavity"], 0.0, 1.0)
        bright, cavity = par * les["bright"], par * les["cavity"]
        fr["gm"] = fr["gm"] * keep
        fr["wm"] = fr["wm"] * keep
        fr["csf"] = fr["csf"] + cavity
        fr["lesion_sig"] = par * les["bright_sig"]
        fr["bright"] = bright
        fr["cavity"] = cavity
        # render() averages over the sub-samples (axis 0); an id broadcast over them survives.
        for key, amount, lacune in (("bright_id", bright, False), ("cavity_id", cavity, True)):
            best = np.take_along_axis(les["ids"], np.argmax(amount, axis=0)[None], axis=0)[0]
            best = np.where(is_lacune[best] == lacune, best, 0)
            fr[key] = np.broadcast_to(best.astype(np.float32), amount.shape)
        return fr

    return scene
