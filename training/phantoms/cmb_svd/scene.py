"""cmb-svd rendering: the scene a subject's series samples, and the microbleed mask it gives."""
from __future__ import annotations

import numpy as np

from ..acquisition import mix
from ..anatomy import load_template
from ..geometry import soft_inside
from ..head import head_tissues
from .sites import _sites
from .subject import Subject


def _scene(subject: Subject):
    """The function :func:`render` samples: signal and microbleed darkening at patient points ``p``."""
    t = load_template()
    sites = _sites()
    sig = subject.signal
    bleeds = subject.microbleeds
    centres = np.array([b.centre for b in bleeds], np.float32).reshape(-1, 3)
    sid = subject.siderosis
    w = subject.warp
    rot = w.rotation.astype(np.float32)
    shift = (w.centre @ w.rotation).astype(np.float32)
    inv_scale, tc = (1.0 / w.scale).astype(np.float32), w.template_centre.astype(np.float32)

    def scene(p: np.ndarray) -> dict[str, np.ndarray]:
        rough = ((p @ rot) - shift) * inv_scale + tc  # the warp's affine part, in float32
        inside = sites.inside_head(rough)
        q = w(p[inside])
        tis = head_tissues(t, q, subject.head)
        s = mix(tis, sig) * subject.modulation.sample(q, cval=1.0)
        dark = np.zeros(len(q), np.float32) if subject.mimics_in_modulation else subject.mimics.sample(q)
        if sid is not None:
            patch = soft_inside(np.linalg.norm(q - sid["centre"].astype(np.float32), axis=-1) - sid["radius"], 4.0)
            lining = np.clip(6.0 * tis["gm"] * tis["csf"] - 0.3, 0.0, 1.0)  # the pial surface of the sulci
            dark = np.maximum(dark, sid["depth"] * patch * lining)
        mb = np.zeros(len(q), np.float32)
        idw = np.zeros_like(mb)
        if len(bleeds) and len(q):
            lo, hi = q.min(0), q.max(0)
            for i, (b, c) in enumerate(zip(bleeds, centres), start=1):
                reach = b.r_app * 2.0 + 1.0
                if np.any(c < lo - reach) or np.any(c > hi + reach):
                    continue
                d = np.linalg.norm(q - c, axis=-1)
                width = max((b.r_app - b.r_true) / 3.0, 0.2)
                v = b.depth * soft_inside(d - b.r_app, width)
                mb = np.maximum(mb, v)
                idw = np.where(v > 0.01, v * i, idw)
        s = s * (1.0 - dark) * (1.0 - mb)
        out = {}
        for name, value in (("signal", s), ("mb", mb), ("mb_idw", idw)):
            full = np.zeros(p.shape[:-1], np.float32)
            full[inside] = value
            out[name] = full
        return out

    return scene


def _microbleed_mask(mb: np.ndarray, idw: np.ndarray, n: int) -> np.ndarray:
    """Microbleed ids where the darkening is at least 35%; a fainter bleed keeps its darkest voxel."""
    ids = np.rint(idw / np.maximum(mb, 1e-6)).astype(np.int32)
    mask = np.where(mb >= 0.35, ids, 0).astype(np.uint16)
    for i in range(1, n + 1):
        if not np.any(mask == i):
            cand = np.where(ids == i, mb, 0.0)
            if cand.max() > 0.05:
                mask[np.unravel_index(int(np.argmax(cand)), mask.shape)] = i
    return mask
